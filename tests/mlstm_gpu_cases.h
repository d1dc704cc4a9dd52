// mlstm_gpu_cases.h — the inputs of the mLSTM kernel GPU test (tests/gpu/test_kernels_mlstm.cpp), shared with
// the CPU tests that replay its cases through the kernel emulator (tests/unit/test_mlstm_gpu_cases_emulated.cpp),
// so a GPU failure can be reproduced value for value on a machine without a GPU.
//
// Every tensor is drawn on the CPU from a seeded generator (subq::test::randn / rand_mask) and only then
// moved to the requested device, so the GPU test and the CPU replay see identical bits. The case lists and
// their seeds (grad_cases(), the order the GPU test walks them in) live here for the same reason: changing
// them changes both sides at once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "op_testing.h"
#include "ops/mlstm/mlstm_internal.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"

namespace subq::test::mlstm_cases {

struct Case {
  int64_t b = 2, h = 2, t = 64, dk = 64, dv = 64;
  bool init = false, reset = false, closing = false;
  torch::ScalarType dtype = torch::kBFloat16;
};

inline std::string describe(const Case& c) {
  return subq::str(c10::toString(c.dtype), " B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv,
                   c.init ? " init" : "", c.reset ? " reset" : "", c.closing ? " closing" : " open");
}

struct Inputs {
  torch::Tensor q, k, v, ig, fg, reset;  // q, k, v in the case's dtype, gates fp32
  subq::ops::MlstmState init;
};

// open: the xLSTM regime (forget gates near 1, f~ ~ N(3, 1); input gates ~ N(0, 2)): the state lives over
// many chunks. closing: f~ ~ N(0, 3), input gates ~ N(0, 4): the stabiliser switches between its branches
// all the time.
inline Inputs make_inputs(const Case& c, uint64_t seed, torch::Device dev) {
  using subq::test::randn;
  Inputs in;
  in.q = randn({c.b, c.h, c.t, c.dk}, seed + 1).to(dev, c.dtype);
  in.k = randn({c.b, c.h, c.t, c.dk}, seed + 2).to(dev, c.dtype);
  in.v = randn({c.b, c.h, c.t, c.dv}, seed + 3).to(dev, c.dtype);
  in.ig = randn({c.b, c.h, c.t}, seed + 4, c.closing ? 4.0 : 2.0).to(dev, torch::kFloat32);
  in.fg = randn({c.b, c.h, c.t}, seed + 5, c.closing ? 3.0 : 1.0, c.closing ? 0.0 : 3.0).to(dev, torch::kFloat32);
  if (c.init)
    in.init = {randn({c.b, c.h, c.dk, c.dv}, seed + 6).to(dev, torch::kFloat32),
               randn({c.b, c.h, c.dk}, seed + 7).to(dev, torch::kFloat32),
               randn({c.b, c.h}, seed + 8).to(dev, torch::kFloat32)};
  if (c.reset) in.reset = subq::test::chunk_edge_resets(c.b, c.t, seed + 9).to(dev);
  return in;
}

// The loss weights of the gradient comparison: loss = sum(h * Wh) (+ sum(C * Wc) + sum(n) + sum(m) for a
// loss on the final state). Wh is rounded to the case's dtype (then fp32).
inline torch::Tensor loss_weight_h(const Case& c, uint64_t seed, torch::Device dev) {
  return subq::test::randn({c.b, c.h, c.t, c.dv}, seed + 11).to(dev, c.dtype).to(torch::kFloat32);
}
inline torch::Tensor loss_weight_c(const Case& c, uint64_t seed, torch::Device dev) {
  return subq::test::randn({c.b, c.h, c.dk, c.dv}, seed + 12).to(dev, torch::kFloat32);
}

struct GradCase {
  Case c;
  uint64_t seed = 0;
  bool state_loss = false;
};

// The gradient cases of the GPU test, in its order, with their seeds: T in {1, 63, 65, 1000, 4096} x the
// head-dim corners x {open gates, no state; initial state + resets + closing gates with H = 3}, then an
// fp16 case and a loss on the final state (the recompute backward).
inline std::vector<GradCase> grad_cases() {
  const std::vector<std::pair<int64_t, int64_t>> dims = {{64, 64}, {128, 128}, {128, 256}, {256, 256}, {256, 64}};
  std::vector<GradCase> out;
  uint64_t seed = 20000;
  for (int64_t t : {1, 63, 65, 1000, 4096}) {
    for (const auto& [dk, dv] : dims) {
      Case plain;
      plain.t = t;
      plain.dk = dk;
      plain.dv = dv;
      out.push_back({plain, seed += 100, false});
      Case full = plain;
      full.h = 3;
      full.init = full.reset = full.closing = true;
      out.push_back({full, seed += 100, false});
    }
  }
  Case f16;
  f16.dtype = torch::kFloat16;
  f16.t = 700;
  f16.dk = 128;
  f16.dv = 256;
  f16.init = f16.reset = true;
  out.push_back({f16, 29000, false});
  Case st;
  st.t = 300;
  st.dk = 128;
  st.dv = 256;
  st.init = st.reset = true;
  out.push_back({st, 29100, true});
  return out;
}

// ---- diagnostics: the size of the terms a gradient sums ------------------------------------------------
// (Used by the CPU replay to show how much a checked value cancels; the GPU test's criterion is DESIGN.md's
// plain relative RMS error against the fp32 reference.)
// A gradient g of the loss sum(h * Wh) is the sum of two paths, g = g_num + g_den: through the numerator and
// through the denominator of h_t = num_t / den_t (den_t = max(|q^_t . n_t|, exp(-m_t)) + 1e-6). Where |qn_t|
// is the max, h_t does not change when num_t and qn_t are scaled together, and the two paths cancel: at T = 1
// exactly (up to the 1e-6 term), and partly wherever one contribution dominates a token's state. The
// denominator path also carries dh_t . h_t, an inner product over Dv terms that can cancel; and m0's gradient
// is the inner product <C0, dC0> + <n0, dn0> over Dk (Dv + 1) terms. scale = the larger, over the reference's
// formulation (m through the max) and the m-held one, of ||g_num|| + ||g_den|| + ||g_den_abs|| (g_den_abs:
// the denominator path with dh_t . h_t replaced by sum_j |dh_tj h_tj|), for dm0 at least the RMS size of its
// inner product's terms. scale / ||g|| is the cancellation factor: an implementation that errs by u relative
// to the terms errs by u x that factor relative to g.
struct GradScale {
  double norm = 0;   // ||g_ref||
  double scale = 0;  // the bound's scale (see above)
  torch::Tensor g_num, g_den;  // the reference's two paths (zeros where a path does not reach the leaf)
};

// Leaves: q, k, v, igate, fgate (, c0, n0, m0) as the reference takes them (fp32, on any device); g_ref: the
// reference's gradients of sum(h * wh) in the same order.
inline std::vector<GradScale> gradient_scales(const std::vector<torch::Tensor>& leaves, const torch::Tensor& reset,
                                              const torch::Tensor& wh, const std::vector<torch::Tensor>& g_ref) {
  std::vector<torch::Tensor> l;
  for (const auto& t : leaves) l.push_back(t.detach().clone().requires_grad_(true));
  const bool init = l.size() == 8;
  const subq::ops::MlstmState s = init ? subq::ops::MlstmState{l[5], l[6], l[7]} : subq::ops::MlstmState{};
  enum class Path { kNum, kDen, kDenAbs };
  auto path = [&](Path which, bool hold_m) {
    const auto p =
        subq::ops::mlstm_detail::chunkwise_parts(l[0], l[1], l[2], l[3], l[4], s, reset, 64, "gradient_scales", hold_m);
    torch::Tensor loss;
    if (which == Path::kNum)
      loss = (p.num / p.den.detach().unsqueeze(-1) * wh).sum();
    else if (which == Path::kDen)
      loss = (p.num.detach() / p.den.unsqueeze(-1) * wh).sum();
    else
      loss = ((p.num.detach() * wh).abs().sum(-1) / p.den).sum();
    return torch::autograd::grad({loss}, l, {}, /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
  };
  auto norm = [](const torch::Tensor& t) { return t.defined() ? t.detach().to(torch::kDouble).norm().item<double>() : 0.0; };
  std::vector<GradScale> out(l.size());
  for (bool hold_m : {false, true}) {
    const auto gn = path(Path::kNum, hold_m), gd = path(Path::kDen, hold_m), ga = path(Path::kDenAbs, hold_m);
    for (size_t i = 0; i < l.size(); ++i) {
      out[i].norm = norm(g_ref[i]);
      out[i].scale = std::max(out[i].scale, norm(gn[i]) + norm(gd[i]) + norm(ga[i]));
      if (!hold_m) {
        auto or_zero = [&](const torch::Tensor& g) { return g.defined() ? g.detach() : torch::zeros_like(l[i]).detach(); };
        out[i].g_num = or_zero(gn[i]);
        out[i].g_den = or_zero(gd[i]);
      }
    }
  }
  if (init) {
    const torch::Tensor c0 = leaves[5].detach().to(torch::kDouble), n0 = leaves[6].detach().to(torch::kDouble);
    const torch::Tensor dc0 = g_ref[5].detach().to(torch::kDouble), dn0 = g_ref[6].detach().to(torch::kDouble);
    const torch::Tensor per_bh = (c0 * dc0).pow(2).sum({-1, -2}).sqrt() + (n0 * dn0).pow(2).sum(-1).sqrt();
    out[7].scale = std::max(out[7].scale, per_bh.pow(2).sum().sqrt().item<double>());
  }
  return out;
}

// The same idea for h: h_t = num_t / den_t, and where |qn_t| is the max of the denominator a relative error u
// in the terms of qn_t (the token weights exp(cum_t - cum_s + i~_s - m_t), whose exponents the kernels form in
// fp32 from chunk-local prefix sums) moves h_t by u |h_t| sum_s |S_ts| / |qn_t|: h_t is ill-conditioned
// where qn_t is a cancelling sum (on the H200, one token of 24,576 with |qn| = 8.5e-4 made h's relative RMS
// error 5.2e-3). Scale: per token |h_t| max(1, qn_abs_t / den_t), i.e. ||h|| wherever qn_t does not cancel.
inline GradScale output_scale(const std::vector<torch::Tensor>& leaves, const torch::Tensor& reset) {
  torch::NoGradGuard ng;
  const bool init = leaves.size() == 8;
  const subq::ops::MlstmState s =
      init ? subq::ops::MlstmState{leaves[5], leaves[6], leaves[7]} : subq::ops::MlstmState{};
  const auto p = subq::ops::mlstm_detail::chunkwise_parts(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], s,
                                                          reset, 64, "output_scale", false, true);
  const torch::Tensor h = (p.num / p.den.unsqueeze(-1)).to(torch::kDouble);
  const torch::Tensor factor = torch::clamp_min(p.qn_abs.to(torch::kDouble) / p.den.to(torch::kDouble), 1.0);
  GradScale out;
  out.norm = h.norm().item<double>();
  out.scale = (h * factor.unsqueeze(-1)).norm().item<double>();
  return out;
}

// ||got - want|| / scale: the quantity the gradient check bounds by its tolerance (NaN never passes).
inline double scaled_error(const torch::Tensor& got, const torch::Tensor& want, const GradScale& s) {
  torch::NoGradGuard ng;
  const torch::Tensor a = got.detach().to(torch::kCPU, torch::kDouble), b = want.detach().to(torch::kCPU, torch::kDouble);
  if (!subq::test::all_finite(a) || !subq::test::all_finite(b) || !std::isfinite(s.scale)) return std::nan("");
  const double e = (a - b).norm().item<double>();
  return s.scale > 0 ? e / s.scale : e;
}

}  // namespace subq::test::mlstm_cases
