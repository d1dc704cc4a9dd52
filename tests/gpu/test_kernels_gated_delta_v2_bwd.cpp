// test_kernels_gated_delta_v2_bwd.cpp — the Gated DeltaNet v2 backward kernels (gdn_v2_bwd.cu through
// detail::gated_delta_v2_backward and the production launcher table) on the GPU, independent of the v2
// forward: GdnV2Saved is built from the fp32 reference pieces (tests/gated_delta_v2_testing.h) and the
// gradients are compared with autograd of gated_delta_chunkwise (fp32) on the same rounded inputs, with
// DESIGN.md's gradient tolerance (1e-2 relative RMS). Also: two runs give bit-identical gradients (no
// atomics), outputs are finite, and the target shape's backward time is printed (not asserted).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "gated_delta_v2_testing.h"
#include "op_testing.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

namespace {

using torch::Tensor;
namespace d = subq::ops::detail;

std::string why_skip() {
  if (!torch::cuda::is_available()) return "no CUDA GPU visible";
  auto o = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  return subq::ops::gated_delta_cuda_unsupported(torch::zeros({1, 1, 1, 64}, o), torch::zeros({1, 1, 1, 64}, o));
}

struct Case {
  int64_t b = 1, h = 2, t = 64, dk = 64, dv = 64;
  bool init = false, reset = false, neg = false, o_only = false, final_only = false;
  torch::ScalarType dtype = torch::kBFloat16;
};

std::string describe(const Case& c) {
  return subq::str(c10::toString(c.dtype), " B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv,
                   c.init ? " init" : "", c.reset ? " reset" : "", c.neg ? " beta[0,2]" : "",
                   c.o_only ? " o-only" : "", c.final_only ? " final-only" : "");
}

void run_case(const Case& c) {
  INFO(describe(c));
  using subq::test::randn;
  namespace F = torch::nn::functional;
  const uint64_t seed = 77 + static_cast<uint64_t>(c.t + c.dk * 3 + c.dv);
  auto cuda = [](const Tensor& t) { return t.to(torch::kCUDA); };
  const Tensor q = cuda((F::normalize(randn({c.b, c.h, c.t, c.dk}, seed).to(torch::kFloat32),
                                      F::NormalizeFuncOptions().dim(-1)) /
                         std::sqrt(static_cast<double>(c.dk)))
                            .to(c.dtype));
  const Tensor k = cuda(
      F::normalize(randn({c.b, c.h, c.t, c.dk}, seed + 1).to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1))
          .to(c.dtype));
  const Tensor v = cuda(randn({c.b, c.h, c.t, c.dv}, seed + 2).to(c.dtype));
  const Tensor g = cuda(-F::softplus(randn({c.b, c.h, c.t}, seed + 3, 1.0, -2.0)).to(torch::kFloat32));
  const Tensor beta =
      cuda(torch::sigmoid(randn({c.b, c.h, c.t}, seed + 4)).to(torch::kFloat32) * (c.neg ? 2.0 : 1.0));
  const Tensor s0 = c.init ? cuda(randn({c.b, c.h, c.dv, c.dk}, seed + 5, 0.5).to(torch::kFloat32)) : Tensor();
  const Tensor reset = c.reset ? cuda(subq::test::chunk_edge_resets(c.b, c.t, seed + 6)) : Tensor();
  const Tensor d_o = c.final_only ? Tensor() : cuda(randn({c.b, c.h, c.t, c.dv}, seed + 7).to(c.dtype));
  const Tensor dfinal =
      c.o_only ? Tensor() : cuda(randn({c.b, c.h, c.dv, c.dk}, seed + 8, 0.3).to(torch::kFloat32));

  std::vector<Tensor> x{q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32), g.clone(), beta.clone()};
  if (c.init) x.push_back(s0.clone());
  for (auto& t : x) t.requires_grad_(true);
  std::vector<Tensor> want;
  {
    const auto r = subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], c.init ? x[5] : Tensor(), reset);
    Tensor loss = torch::zeros({}, x[0].options());
    if (d_o.defined()) loss = loss + (r.o * d_o.to(torch::kFloat32)).sum();
    if (dfinal.defined()) loss = loss + (r.final_state * dfinal).sum();
    want = torch::autograd::grad({loss}, x, {}, false, false, /*allow_unused=*/true);
  }
  const d::GdnV2Saved s = subq::test::make_v2_saved(q, k, v, g, beta, s0, reset);
  const auto& L = d::gated_delta_cuda_launchers();
  const d::GdnV2Grads got = d::gated_delta_v2_backward(L, s, d_o, dfinal);
  const d::GdnV2Grads again = d::gated_delta_v2_backward(L, s, d_o, dfinal);
  torch::cuda::synchronize();
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
  const Tensor outs[] = {got.dq, got.dk, got.dv, got.dg, got.dbeta, got.ds0};
  const Tensor outs2[] = {again.dq, again.dk, again.dv, again.dg, again.dbeta, again.ds0};
  for (size_t i = 0; i < x.size(); ++i) {
    INFO(names[i]);
    REQUIRE(outs[i].defined());
    CHECK(torch::equal(outs[i], outs2[i]));  // deterministic
    if (c.final_only && i == 0) {
      CHECK(torch::equal(outs[i].to(torch::kFloat32), torch::zeros_like(outs[i], torch::kFloat32)));
      continue;
    }
    const Tensor w = want[i].defined() ? want[i] : torch::zeros_like(x[i]);
    const double e = subq::test::rel_rms(outs[i].to(torch::kCPU, torch::kFloat64), w.to(torch::kCPU, torch::kFloat64));
    std::fprintf(stderr, "[v2 bwd] %s %s rel RMS %.3e\n", describe(c).c_str(), names[i], e);
    CHECK(e < 1e-2);
  }
}

Case mk(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, const std::string& flags = "",
        torch::ScalarType dt = torch::kBFloat16) {
  Case c;
  c.b = b, c.h = h, c.t = t, c.dk = dk, c.dv = dv, c.dtype = dt;
  auto has = [&](const char* f) { return flags.find(f) != std::string::npos; };
  c.init = has("init"), c.reset = has("reset"), c.neg = has("neg"), c.o_only = has("o-only");
  c.final_only = has("final-only");
  return c;
}

}  // namespace

TEST_CASE("gated delta v2 backward kernels vs autograd of the reference (GPU)", "[gpu][gated_delta][v2]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("Gated DeltaNet kernels cannot run here: " << why);
  run_case(mk(1, 2, 1, 64, 64, "init"));
  run_case(mk(2, 2, 63, 64, 64, "reset"));
  run_case(mk(2, 2, 65, 128, 128, "init reset neg"));
  run_case(mk(1, 2, 1000, 128, 96, "init reset", torch::kFloat16));
  run_case(mk(2, 4, 4096, 128, 128, "init reset"));
  run_case(mk(1, 2, 700, 256, 512, "init reset neg"));
  run_case(mk(1, 2, 300, 256, 64, "reset"));
  run_case(mk(1, 2, 300, 64, 256, "init reset o-only"));
  run_case(mk(1, 2, 300, 128, 128, "init neg final-only"));
  // enough (b, h) pairs for the wide scan tiles on a 132-SM H200 (the cases above take the 32-row tile
  // wherever the wide one would leave more than half the SMs idle: gdn_v2_scan_bwd_rows)
  run_case(mk(4, 20, 130, 128, 128, "init reset"));
  run_case(mk(1, 12, 200, 256, 512, "init reset neg"));
}

TEST_CASE("gated delta v2 backward at the target shape: time (printed, not asserted) (GPU)", "[gpu][gated_delta][v2]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("Gated DeltaNet kernels cannot run here: " << why);
  using subq::test::randn;
  const int64_t B = 8, H = 16, T = 4096, D = 128;
  auto o = torch::TensorOptions().device(torch::kCUDA);
  // Saved tensors of plausible scale (their values do not change the kernels' work).
  d::GdnV2Saved s;
  s.q = (torch::randn({B, H, T, D}, o) * 0.01).to(torch::kBFloat16);
  s.k = (torch::randn({B, H, T, D}, o) * 0.09).to(torch::kBFloat16);
  s.v = torch::randn({B, H, T, D}, o).to(torch::kBFloat16);
  s.g = -torch::rand({B, H, T}, o) * 0.1;
  s.beta = torch::rand({B, H, T}, o);
  s.tinv = torch::eye(64, o).expand({B, H, T / 64, 64, 64}).contiguous();
  s.w = (torch::randn({B, H, T, D}, o) * 0.09).to(torch::kBFloat16);
  s.u = torch::randn({B, H, T, D}, o).to(torch::kBFloat16);
  s.states = torch::randn({B, H, T / 64, D, D}, o).to(torch::kBFloat16);
  const Tensor d_o = torch::randn({B, H, T, D}, o).to(torch::kBFloat16);
  const auto& L = d::gated_delta_cuda_launchers();
  for (int i = 0; i < 3; ++i) d::gated_delta_v2_backward(L, s, d_o, Tensor());
  torch::cuda::synchronize();
  const int reps = 10;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) d::gated_delta_v2_backward(L, s, d_o, Tensor());
  torch::cuda::synchronize();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
  std::fprintf(stderr, "[v2 bwd] B8 T4096 H16 D128 bf16: %.3f ms per backward (3 kernels + glue allocations)\n", ms);
  const d::GdnV2Grads r = d::gated_delta_v2_backward(L, s, d_o, Tensor());
  CHECK(subq::test::all_finite(r.dq));
  CHECK(subq::test::all_finite(r.dk));
  CHECK(subq::test::all_finite(r.dv));
  CHECK(subq::test::all_finite(r.dg));
}
