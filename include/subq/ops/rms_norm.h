// rms_norm.h — RMS normalisation, plain and gated, as the models use it: a LibTorch reference and a fused
// CUDA kernel (forward and backward) behind one dispatching entry.
//
//   h = x * SiLU(z)            (gated form; h = x without z)
//   per row and group of Dg = D / groups features: r = 1 / sqrt(mean(h^2) + eps),  n = h * r
//   out = weight * n~          n~ = n rounded to x's dtype (the models' convention: "normalise in fp32,
//                              cast back, then scale"), so out has the dtype of weight * x
// x [..., D] (fp32, bf16 or fp16); z like x or undefined; weight [D].
// The plain form is the block / final RMSNorm of every model (groups = 1); the gated form with groups is
// Mamba-2's gated group-wise norm.
//
// Dispatch (SUBQ_OPS_IMPL, see ops_impl.h): the kernel when rms_norm_cuda_unsupported() is empty (CUDA
// tensors, D / groups <= 2048), else the reference; =reference always the reference; =cuda like auto. The kernel computes in fp32, keeps only x, z and
// the per-(row, group) r for the backward, and returns gradients for x, z and weight.
//
// Example:
//   auto y = subq::ops::rms_norm(x, w, 1e-6);                        // the block norm
//   auto o = subq::ops::rms_norm(y, w2, 1e-6, z, /*groups=*/1);      // Mamba-2's gated norm
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace subq::ops {

// The dispatching entry (what models call).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps, const torch::Tensor& z = {},
                       int64_t groups = 1);

// LibTorch ops, autograd-able, any device (the kernel's reference).
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                                 const torch::Tensor& z = {}, int64_t groups = 1);

// The fused CUDA kernel (src/ops/norm/rms_norm_cuda.cu); throws InputError when unsupported.
torch::Tensor rms_norm_cuda(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                            const torch::Tensor& z = {}, int64_t groups = 1);

// "" when rms_norm_cuda can run these arguments, else why not.
std::string rms_norm_cuda_unsupported(const torch::Tensor& x, const torch::Tensor& weight,
                                      const torch::Tensor& z = {}, int64_t groups = 1);

}  // namespace subq::ops
