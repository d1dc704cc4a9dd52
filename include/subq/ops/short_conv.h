// short_conv.h — the short causal depthwise convolution used before the recurrences (Mamba-2's conv on
// xBC, Gated DeltaNet's q/k/v convs, optional in xLSTM): per channel, a K-tap causal FIR filter, plus an
// optional bias and an optional fused SiLU. LibTorch references (autograd-able, any device) and a CUDA
// kernel with its own backward for bf16/fp16 training on the GPU.
//
//   y[b, t, c] = act( bias[c] + sum_{j=0..K-1} weight[c, j] * x[b, t - (K-1) + j, c] )
// so weight[c, K-1] multiplies the current token (torch's conv1d with groups = C and K-1 left padding,
// i.e. the Mamba / Hugging Face layout: an HF conv1d.weight [C, 1, K] is weight.squeeze(1)).
// Inputs before t = 0 come from `cache` (the previous call's last K-1 inputs), zeros when not given.
//
// Shapes: x [B, T, C] (any float dtype; y is returned in it); weight [C, K] (K >= 1, default 4);
//   bias [C] or undefined; cache [B, K-1, C] = the last K-1 inputs, oldest first (x[t-K+1] .. x[t-1]),
//   or undefined for zeros; returned cache: the last K-1 inputs after this call, in the compute dtype
//   (fp32; fp64 for fp64 x). Math in fp32 (fp64 for fp64 x).
//
// Packed sequences (reset): optional bool [B, T]; reset[b, t] = true starts a new document at t: no tap
// of a position >= t reads an input before t (nor the cache), exactly as if the document started from a
// zero cache. The returned cache belongs to the last document of each row (entries from before its start
// are zero). Example, K = 4, one row "abc" + "de": tokens [a b c d e], reset [1 0 0 1 0]: y at 'e' reads
// (0, 0, d, e), never c.
//
// Example:
//   auto x = torch::randn({2, 100, 256}), w = torch::randn({256, 4}), b = torch::randn({256});
//   auto out = subq::ops::short_conv(x, w, b, /*silu=*/true);            // out.y [2, 100, 256]
//   auto next = subq::ops::short_conv_step(x_next, w, b, true, out.cache); // x_next [2, 256]
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace subq::ops {

inline constexpr int64_t kShortConvDefaultKernel = 4;

struct ShortConvResult {
  torch::Tensor y;      // [B, T, C] (short_conv_step: [B, C]) in x's dtype
  torch::Tensor cache;  // [B, K-1, C] in the compute dtype
};

// The dispatching entry (what models call). With SUBQ_OPS_IMPL=auto (default): short_conv_cuda when
// short_conv_cuda_unsupported() is empty, else short_conv_parallel; =reference: always short_conv_parallel;
// =cuda: like auto (the variable forces the recurrence kernels; a model run that way may still have fp32
// or cached convolutions, which take the reference).
ShortConvResult short_conv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                           bool silu = false, const torch::Tensor& cache = {}, const torch::Tensor& reset = {});

// Parallel LibTorch form (torch conv1d when there is no reset; masked taps otherwise): the reference of
// the kernel, and what runs on CPU and for calls that continue from a cache.
ShortConvResult short_conv_parallel(const torch::Tensor& x, const torch::Tensor& weight,
                                    const torch::Tensor& bias = {}, bool silu = false,
                                    const torch::Tensor& cache = {}, const torch::Tensor& reset = {});

// CUDA kernel form (src/ops/short_conv/short_conv_cuda.cu): bf16/fp16 x on a CUDA device, even C, K in
// {2, 3, 4}, no cache; fp32 math; custom autograd (dx, dweight, dbias). The returned cache is fp32 like
// the reference's. Throws InputError when unsupported.
ShortConvResult short_conv_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                                bool silu = false, const torch::Tensor& reset = {});

// "" when short_conv_cuda can run (x [B, T, C], weight [C, K], the cache the call would pass), else why not.
std::string short_conv_cuda_unsupported(const torch::Tensor& x, const torch::Tensor& weight,
                                        const torch::Tensor& cache = {});

// Recurrent form: short_conv_step over t (the reference for the parallel form and for decoding).
ShortConvResult short_conv_recurrent(const torch::Tensor& x, const torch::Tensor& weight,
                                     const torch::Tensor& bias = {}, bool silu = false,
                                     const torch::Tensor& cache = {}, const torch::Tensor& reset = {});

// One decoding step: x [B, C]; cache [B, K-1, C] or undefined (zeros); reset optional bool [B] (start a
// new document with this token).
ShortConvResult short_conv_step(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {},
                                bool silu = false, const torch::Tensor& cache = {}, const torch::Tensor& reset = {});

}  // namespace subq::ops
