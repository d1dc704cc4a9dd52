// reference_recurrent.cpp — the short causal convolution one token at a time: short_conv_step (the decode
// step) and short_conv_recurrent (the step over a sequence: the reference for the parallel form).
// Also the argument checks shared with reference_parallel.cpp.
//
// Decisions: the cache is a plain window of the last K-1 inputs (oldest first), so a step is
// cat(cache, x) . weight and the new cache is the window without its oldest entry; a reset replaces the
// cache by zeros before the token (torch::where, so nothing before the reset reaches the new document).
#include "../common/op_inputs.h"
#include "short_conv_internal.h"
#include "subq/core/error.h"

namespace subq::ops {

using torch::Tensor;

namespace short_conv_detail {

Dims check(const char* op, const Tensor& x3, const Tensor& weight, const Tensor& bias,
           const Tensor& cache, const Tensor& reset, const std::vector<int64_t>& reset_sizes,
           const char* reset_layout) {
  Dims d{x3.size(0), x3.size(1), x3.size(2), 0};
  detail::expect_ndim(op, "weight", weight, 2, "[C, K]");
  d.k = weight.size(1);
  detail::expect_shape(op, "weight", weight, {d.c, -1}, "[C, K] (C = x's channels)");
  if (d.k < 1) throw InputError(str(op, ": weight [C, K] needs K >= 1 taps, got K = 0"));
  if (bias.defined()) detail::expect_shape(op, "bias", bias, {d.c}, "[C]");
  if (cache.defined()) detail::expect_shape(op, "cache", cache, {d.b, d.k - 1, d.c}, "[B, K-1, C]");
  detail::expect_optional_mask(op, "reset", reset, reset_sizes, reset_layout);
  detail::expect_same_device(op, x3, "x", {weight, bias, cache, reset}, {"weight", "bias", "cache", "reset"});
  return d;
}

Tensor initial_cache(const Tensor& cache, const Dims& d, torch::ScalarType ct, const torch::Device& dev) {
  if (cache.defined()) return cache.to(ct);
  return torch::zeros({d.b, d.k - 1, d.c}, torch::TensorOptions().dtype(ct).device(dev));
}

}  // namespace short_conv_detail

namespace {

// One token on compute-dtype tensors: x [B, C], w [C, K], cache [B, K-1, C]; returns y [B, C] and
// replaces cache by the new window.
Tensor step_impl(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu, const Tensor& reset, Tensor& cache) {
  Tensor prev = reset.defined() ? torch::where(reset.view({-1, 1, 1}), 0.0, cache) : cache;
  Tensor window = torch::cat({prev, x.unsqueeze(1)}, 1);  // [B, K, C]
  Tensor y = (window * w.t().unsqueeze(0)).sum(1);
  if (bias.defined()) y = y + bias;
  if (silu) y = torch::silu(y);
  cache = window.narrow(1, 1, w.size(1) - 1);
  return y;
}

}  // namespace

ShortConvResult short_conv_step(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                                const Tensor& cache, const Tensor& reset) {
  const char* op = "short_conv_step";
  detail::expect_ndim(op, "x", x, 2, "[B, C]");
  auto d = short_conv_detail::check(op, x.unsqueeze(1), weight, bias, cache, reset, {x.size(0)}, "[B]");
  const auto ct = detail::compute_dtype(x.scalar_type());
  Tensor state = short_conv_detail::initial_cache(cache, d, ct, x.device());
  Tensor y = step_impl(x.to(ct), weight.to(ct), bias.defined() ? bias.to(ct) : Tensor(), silu, reset, state);
  return {y.to(x.scalar_type()), state};
}

ShortConvResult short_conv_recurrent(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                                     const Tensor& cache, const Tensor& reset) {
  const char* op = "short_conv_recurrent";
  detail::expect_ndim(op, "x", x, 3, "[B, T, C]");
  auto d = short_conv_detail::check(op, x, weight, bias, cache, reset, {x.size(0), x.size(1)}, "[B, T]");
  const auto ct = detail::compute_dtype(x.scalar_type());
  Tensor state = short_conv_detail::initial_cache(cache, d, ct, x.device());
  const Tensor xc = x.to(ct), wc = weight.to(ct), bc = bias.defined() ? bias.to(ct) : Tensor();
  std::vector<Tensor> ys;
  ys.reserve(static_cast<size_t>(d.t));
  for (int64_t t = 0; t < d.t; ++t)
    ys.push_back(step_impl(xc.select(1, t), wc, bc, silu, reset.defined() ? reset.select(1, t) : Tensor(), state));
  Tensor y = d.t > 0 ? torch::stack(ys, 1) : torch::zeros({d.b, 0, d.c}, xc.options());
  return {y.to(x.scalar_type()), state};
}

}  // namespace subq::ops
