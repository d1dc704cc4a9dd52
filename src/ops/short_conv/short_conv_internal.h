// short_conv_internal.h — argument checks shared by the short convolution's two forms (private to
// src/ops/short_conv/), so both accept and reject the same inputs with the same messages.
#pragma once

#include "subq/ops/short_conv.h"

namespace subq::ops::short_conv_detail {

struct Dims {
  int64_t b = 0, t = 0, c = 0, k = 0;
};

// x3 is x viewed as [B, T, C] (a step's [B, C] as T = 1; its layout is checked by the caller); checks
// weight [C, K], bias [C], cache [B, K-1, C], reset (reset_sizes / reset_layout), dtypes and devices.
Dims check(const char* op, const torch::Tensor& x3, const torch::Tensor& weight,
           const torch::Tensor& bias, const torch::Tensor& cache, const torch::Tensor& reset,
           const std::vector<int64_t>& reset_sizes, const char* reset_layout);

// The incoming cache in the compute dtype (zeros when undefined), [B, K-1, C].
torch::Tensor initial_cache(const torch::Tensor& cache, const Dims& d, torch::ScalarType ct, const torch::Device& dev);

}  // namespace subq::ops::short_conv_detail

namespace subq::ops::detail {
struct ShortConvLaunchers;
// short_conv_cuda()'s path (autograd function + cache) with the given launchers and no support checks
// (used with emulated launchers on CPU tensors in tests).
ShortConvResult short_conv_with_kernels(const ShortConvLaunchers& launchers, const torch::Tensor& x,
                                        const torch::Tensor& weight, const torch::Tensor& bias, bool silu,
                                        const torch::Tensor& reset);
}  // namespace subq::ops::detail
