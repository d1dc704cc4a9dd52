// reference_parallel.cpp — short_conv_parallel: the short causal convolution over a whole sequence at once with
// LibTorch ops (the reference of the CUDA kernel, and the path on CPU and for calls with a cache).
//
// Decisions:
//  * The cache (or zeros) is prepended as K-1 left context, so "causal padding" and "continue from a
//    cache" are one code path: xp = [cache; x], y[t] = sum_j w[:, j] xp[t + j].
//  * Without resets this is torch's depthwise conv1d (groups = C; cuDNN on GPU). With resets it is K
//    shifted, masked multiply-adds: tap j reads lag (K-1-j) and is visible at t only when t's document
//    started at least that many tokens before t (start_t = last reset <= t, via a cumulative max).
//    K is small (4), so this costs K elementwise passes and no [B, T, C, K] unfold.
//  * The returned cache is xp's last K-1 rows, zeroed where they precede the last document's start.
#include "../common/op_inputs.h"
#include "short_conv_internal.h"
#include "subq/core/error.h"

namespace subq::ops {

using torch::Tensor;

ShortConvResult short_conv_parallel(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& cache,
                           const Tensor& reset) {
  const char* op = "short_conv";
  detail::expect_ndim(op, "x", x, 3, "[B, T, C]");
  const auto d = short_conv_detail::check(op, x, weight, bias, cache, reset, {x.size(0), x.size(1)},
                                          "[B, T]");
  const auto ct = detail::compute_dtype(x.scalar_type());
  const auto dev = x.device();
  const Tensor xc = x.to(ct), wc = weight.to(ct), bc = bias.defined() ? bias.to(ct) : Tensor();
  const Tensor xp = torch::cat({short_conv_detail::initial_cache(cache, d, ct, dev), xc}, 1);  // [B, T+K-1, C]
  const int64_t K = d.k, T = d.t;
  if (T == 0) return {torch::zeros({d.b, 0, d.c}, x.options()), xp};

  Tensor y, cache_out = xp.narrow(1, T, K - 1);
  if (!reset.defined()) {
    const std::vector<int64_t> one{1}, zero{0};
    y = torch::conv1d(xp.transpose(1, 2), wc.unsqueeze(1), bc, /*stride=*/one, /*padding=*/at::IntArrayRef(zero),
                      /*dilation=*/one, /*groups=*/d.c)
            .transpose(1, 2);
  } else {
    const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(dev);
    const Tensor pos = torch::arange(T, long_opts);
    // start of t's document; -K when the row has no reset up to t (everything, cache included, visible)
    const Tensor start = std::get<0>(torch::cummax(torch::where(reset, pos, -K), 1));  // [B, T]
    const Tensor age = pos - start;  // tokens of t's document before t (>= K when no reset)
    y = torch::zeros({d.b, T, d.c}, xc.options());
    for (int64_t j = 0; j < K; ++j) {
      const int64_t lag = K - 1 - j;
      const Tensor tap = xp.narrow(1, j, T) * wc.select(1, j);
      y = y + (lag == 0 ? tap : torch::where(age.ge(lag).unsqueeze(-1), tap, 0.0));
    }
    if (bc.defined()) y = y + bc;
    // cache row i holds position T-(K-1)+i; keep it when it belongs to the last document
    const Tensor keep = torch::arange(T - (K - 1), T, long_opts).unsqueeze(0).ge(start.select(1, T - 1).unsqueeze(1));
    cache_out = torch::where(keep.unsqueeze(-1), cache_out, 0.0);
  }
  if (silu) y = torch::silu(y);
  SUBQ_CHECK(y.sizes() == x.sizes() && cache_out.sizes() == at::IntArrayRef({d.b, K - 1, d.c}),
             "short_conv produced y ", detail::shape_str(y.sizes()), ", cache ", detail::shape_str(cache_out.sizes()));
  return {y.to(x.scalar_type()), cache_out};
}

}  // namespace subq::ops
