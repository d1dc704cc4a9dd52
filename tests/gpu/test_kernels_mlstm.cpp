// test_kernels_mlstm.cpp — the mLSTM CUDA kernels (label gpu; skipped without a GPU or without kernels in
// the build) against the chunkwise LibTorch reference run in fp32 on the same (already rounded) inputs: h
// and the final state (C, n, m) over T = 1, 63, 64, 65, 1000, 4096, (Dk, Dv) in {64, 128, 256}^2 corners
// including the 340M xLSTM's (128, 256), with and without resets and initial states; fp16; strided inputs
// laid out like the xLSTM layer's; every gradient (q, k, v, both gates, the initial C, n, m) from the
// backward kernels over the same shapes, and from the recompute backward for a loss on the final state;
// the SUBQ_OPS_IMPL dispatch; the decode kernel; document isolation.
//
// Tolerances (DESIGN.md): relative RMS ||a - b|| / ||b|| < 5e-3 for bf16/fp16 outputs and final states,
// < 1e-2 for gradients; the stabiliser m < 1e-5 (the kernels compute the recurrent m exactly, in fp32);
// fp32 decode steps < 1e-5. NaN never passes. Every case prints one line with its shape and the error of
// every tensor. A gradient the fp32 reference cannot resolve (its own distance to the reference evaluated in
// fp64 exceeds the tolerance: df~ at T = 1 without a carried state) is checked against the fp64 evaluation.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "mlstm_gpu_cases.h"
#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq_catch.h"

namespace {

using subq::test::rel_rms;
using torch::Tensor;

using subq::test::mlstm_cases::Case;
using subq::test::mlstm_cases::describe;
using subq::test::mlstm_cases::Inputs;

std::string why_skip() {
  if (!torch::cuda::is_available()) return "no CUDA GPU visible";
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  return subq::ops::mlstm_cuda_unsupported(torch::zeros({1, 1, 1, 64}, o), torch::zeros({1, 1, 1, 64}, o));
}

// The inputs (tests/mlstm_gpu_cases.h: drawn on the CPU, then moved, so the CPU replay
// tests/unit/test_mlstm_gpu_cases_emulated.cpp sees the same bits).
Inputs make_inputs(const Case& c, uint64_t seed) {
  return subq::test::mlstm_cases::make_inputs(c, seed, torch::Device(torch::kCUDA));
}

struct Report : subq::test::ErrorReport {
  Report() : ErrorReport("mlstm-kernel") {}
};

subq::ops::MlstmResult reference(const Inputs& in) {
  const auto f32 = torch::kFloat32;
  return subq::ops::mlstm_chunkwise(in.q.to(f32), in.k.to(f32), in.v.to(f32), in.ig, in.fg, in.init, in.reset, 64);
}

void compare_forward(const Case& c, uint64_t seed) {
  INFO(describe(c));
  torch::NoGradGuard ng;
  const Inputs in = make_inputs(c, seed);
  const auto got = subq::ops::mlstm_cuda(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset);
  const auto want = reference(in);
  REQUIRE(got.h.scalar_type() == c.dtype);
  REQUIRE(got.state.c.scalar_type() == torch::kFloat32);
  Report rep;
  rep.add("h", got.h, want.h, 5e-3);
  rep.add("C", got.state.c, want.state.c, 5e-3);
  rep.add("n", got.state.n, want.state.n, 5e-3);
  rep.add("m", got.state.m, want.state.m, 1e-5);
  rep.check(describe(c));
}

// Gradients of sum(h * Wh) (+ losses on the final state when `state_loss`: the recompute backward) from the
// kernels vs autograd of the fp32 reference on the same values.
void compare_grads(const Case& c, uint64_t seed, bool state_loss) {
  INFO(describe(c) << (state_loss ? " state loss" : ""));
  const Inputs in = make_inputs(c, seed);
  std::vector<Tensor> kl = {in.q, in.k, in.v, in.ig, in.fg};
  std::vector<Tensor> rl = {in.q.to(torch::kFloat32), in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.ig, in.fg};
  std::vector<std::string> names = {"dq", "dk", "dv", "dig", "dfg"};
  if (c.init) {
    for (const auto& t : {in.init.c, in.init.n, in.init.m}) {
      kl.push_back(t);
      rl.push_back(t);
    }
    names.insert(names.end(), {"dc0", "dn0", "dm0"});
  }
  for (auto& t : kl) t = t.detach().clone().requires_grad_(true);
  for (auto& t : rl) t = t.detach().clone().requires_grad_(true);
  auto state_of = [&](const std::vector<Tensor>& l) {
    return c.init ? subq::ops::MlstmState{l[5], l[6], l[7]} : subq::ops::MlstmState{};
  };
  const auto got = subq::ops::mlstm_cuda(kl[0], kl[1], kl[2], kl[3], kl[4], state_of(kl), in.reset);
  const auto want = subq::ops::mlstm_chunkwise(rl[0], rl[1], rl[2], rl[3], rl[4], state_of(rl), in.reset, 64);
  const Tensor Wh = subq::test::mlstm_cases::loss_weight_h(c, seed, torch::Device(torch::kCUDA));
  const Tensor Wc = subq::test::mlstm_cases::loss_weight_c(c, seed, torch::Device(torch::kCUDA));
  auto loss = [&](const subq::ops::MlstmResult& r) {
    Tensor l = (r.h.to(torch::kFloat32) * Wh).sum();
    if (state_loss) l = l + (r.state.c * Wc).sum() + r.state.n.sum() + r.state.m.sum();
    return l;
  };
  const auto gk = torch::autograd::grad({loss(got)}, kl);
  const auto gr = torch::autograd::grad({loss(want)}, rl);
  // The truth is the fp32 reference, except where that reference cannot resolve a gradient: when the kernels
  // miss it, the reference is also evaluated in fp64 on the same (rounded) inputs, and where the fp32
  // reference itself is farther than the tolerance from the fp64 one (at T = 1 without a carried state, df~ is
  // only the 1e-6 exp(m) term, 1e-7..1e-11, and the fp32 autograd through the stabiliser is noise), the
  // kernels are compared with the fp64 reference instead. Everywhere else fp32 and fp64 agree to ~3e-5.
  std::vector<Tensor> g64;
  auto fp64_grads = [&] {
    std::vector<Tensor> l64;
    for (const auto& t : rl) l64.push_back(t.detach().to(torch::kFloat64).requires_grad_(true));
    const auto r = subq::ops::mlstm_chunkwise(l64[0], l64[1], l64[2], l64[3], l64[4], state_of(l64), in.reset, 64);
    Tensor l = (r.h * Wh.to(torch::kFloat64)).sum();
    if (state_loss) l = l + (r.state.c * Wc.to(torch::kFloat64)).sum() + r.state.n.sum() + r.state.m.sum();
    return torch::autograd::grad({l}, l64);
  };
  Report rep;
  rep.add("h", got.h, want.h, 5e-3);
  constexpr double gtol = 1e-2;
  for (size_t i = 0; i < kl.size(); ++i) {
    REQUIRE(gk[i].defined());
    CHECK(gk[i].scalar_type() == kl[i].scalar_type());
    const double e32 = rel_rms(gk[i], gr[i]);
    if (e32 < gtol) {
      rep.add(names[i], gk[i], gr[i], gtol);
      continue;
    }
    if (g64.empty()) g64 = fp64_grads();
    const double ref_off = rel_rms(gr[i], g64[i]);
    if (ref_off > gtol)
      rep.add_value(names[i], rel_rms(gk[i].to(torch::kFloat64), g64[i]), gtol,
                    subq::str(" (vs the fp64 reference: the fp32 one is ", ref_off, " off it)"));
    else
      rep.add(names[i], gk[i], gr[i], gtol);
  }
  rep.check(subq::str("gradients ", describe(c), state_loss ? " state loss (recompute)" : " (kernels)"));
}

}  // namespace

TEST_CASE("mlstm kernels match the reference: h and final state", "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  const std::vector<std::pair<int64_t, int64_t>> dims = {{64, 64}, {128, 128}, {128, 256}, {256, 256}, {256, 64}};
  uint64_t seed = 100;
  for (int64_t t : {1, 63, 64, 65, 1000, 4096}) {
    for (const auto& [dk, dv] : dims) {
      Case plain;
      plain.t = t;
      plain.dk = dk;
      plain.dv = dv;
      compare_forward(plain, seed += 100);
      Case full = plain;  // initial state, packed documents, closing gates
      full.h = 3;
      full.init = full.reset = full.closing = true;
      compare_forward(full, seed += 100);
    }
  }
  Case f16;
  f16.dtype = torch::kFloat16;
  f16.t = 1000;
  f16.dk = 128;
  f16.dv = 256;
  f16.init = f16.reset = true;
  compare_forward(f16, 9100);
  Case big;  // the benchmark shape's heads at a shorter length
  big.b = 2;
  big.h = 16;
  big.t = 2048;
  big.dk = big.dv = 128;
  compare_forward(big, 9200);
}

TEST_CASE("mlstm backward kernels match the reference's gradients", "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  // T in {1, 63, 65, 1000, 4096} x head-dim corners x {open, init + resets + closing}, fp16, a state loss
  // (tests/mlstm_gpu_cases.h; the CPU replay test_mlstm_gpu_cases_emulated runs the same list)
  for (const auto& gc : subq::test::mlstm_cases::grad_cases()) compare_grads(gc.c, gc.seed, gc.state_loss);
}

TEST_CASE("mlstm kernels read strided inputs in place (the xLSTM layer's layout) and copy misaligned ones",
          "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  torch::NoGradGuard ng;
  const int64_t bs = 2, T = 300, H = 4, Dk = 64, Dv = 128, width = H * (2 * Dk + Dv);
  const Tensor proj = subq::test::randn({bs, T, width + 8}, 21).to(torch::kCUDA, torch::kBFloat16);
  const Tensor ig = subq::test::randn({bs, T, H}, 22).to(torch::kCUDA, torch::kFloat32).transpose(1, 2);
  const Tensor fg = subq::test::randn({bs, T, H}, 23, 1.0, 3.0).to(torch::kCUDA, torch::kFloat32).transpose(1, 2);
  for (int64_t offset : {0, 1}) {
    INFO("offset " << offset);
    const Tensor base = proj.narrow(-1, offset, width);
    const Tensor q = base.narrow(-1, 0, H * Dk).view({bs, T, H, Dk}).transpose(1, 2);
    const Tensor k = base.narrow(-1, H * Dk, H * Dk).view({bs, T, H, Dk}).transpose(1, 2);
    const Tensor v = base.narrow(-1, 2 * H * Dk, H * Dv).view({bs, T, H, Dv}).transpose(1, 2);
    REQUIRE(!q.is_contiguous());
    const auto strided = subq::ops::mlstm_cuda(q, k, v, ig, fg);
    const auto packed = subq::ops::mlstm_cuda(q.contiguous(), k.contiguous(), v.contiguous(), ig.contiguous(),
                                              fg.contiguous());
    CHECK(torch::equal(strided.h, packed.h));
    CHECK(torch::equal(strided.state.c, packed.state.c));
    const auto ref = subq::ops::mlstm_chunkwise(q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32), ig, fg);
    Report rep;
    rep.add("h", strided.h, ref.h, 5e-3);
    rep.add("C", strided.state.c, ref.state.c, 5e-3);
    rep.check(subq::str("strided offset ", offset));
  }
}

TEST_CASE("mlstm dispatch follows SUBQ_OPS_IMPL", "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  Case c;
  c.t = 200;
  c.init = c.reset = true;
  const Inputs in = make_inputs(c, 77);
  subq::test::OpsImplEnv env;
  auto set = [&env](const char* v) { env.set(v); };
  subq::ops::MlstmResult kernel, chunk;
  {
    torch::NoGradGuard ng;
    kernel = subq::ops::mlstm_cuda(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset);
    chunk = subq::ops::mlstm_chunkwise(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
    env.set(nullptr);
    auto r = subq::ops::mlstm(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
    CHECK(torch::equal(r.h, kernel.h));
    set("reference");
    r = subq::ops::mlstm(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
    CHECK(torch::equal(r.h, chunk.h));
    set("cuda");
    r = subq::ops::mlstm(in.q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
    CHECK(torch::equal(r.h, kernel.h));
    const Tensor q32 = in.q.to(torch::kFloat32);
    CHECK_THROWS_AS(subq::ops::mlstm(q32, in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.ig, in.fg),
                    subq::InputError);
  }
  // gradients needed: auto takes the kernels in training too (v1.1), reference keeps the reference
  const Tensor q = in.q.detach().clone().requires_grad_(true);
  set("auto");
  auto r = subq::ops::mlstm(q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
  CHECK(torch::equal(r.h.detach(), kernel.h));
  set("cuda");
  r = subq::ops::mlstm(q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
  CHECK(torch::equal(r.h.detach(), kernel.h));
  set("reference");
  r = subq::ops::mlstm(q, in.k, in.v, in.ig, in.fg, in.init, in.reset, 32);
  CHECK(torch::equal(r.h.detach(), chunk.h));
}

TEST_CASE("mlstm decode kernel matches mlstm_step; decoding T tokens matches the sequence kernel", "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  torch::NoGradGuard ng;
  using subq::test::randn;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& [dk, dv] : std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {128, 256}, {256, 256}, {40, 72}}) {
      INFO(c10::toString(dtype) << " Dk " << dk << " Dv " << dv);
      const int64_t bs = 3, H = 4;
      const Tensor q = randn({bs, H, dk}, 31).to(torch::kCUDA, dtype), k = randn({bs, H, dk}, 32).to(torch::kCUDA, dtype);
      const Tensor v = randn({bs, H, dv}, 33).to(torch::kCUDA, dtype);
      const Tensor ig = randn({bs, H}, 34, 2.0).to(torch::kCUDA, torch::kFloat32);
      const Tensor fg = randn({bs, H}, 35, 2.0, 1.0).to(torch::kCUDA, torch::kFloat32);
      const subq::ops::MlstmState s = {randn({bs, H, dk, dv}, 36).to(torch::kCUDA, torch::kFloat32),
                                       randn({bs, H, dk}, 37).to(torch::kCUDA, torch::kFloat32),
                                       randn({bs, H}, 38).to(torch::kCUDA, torch::kFloat32)};
      const Tensor reset = torch::tensor({false, true, false}).to(torch::kCUDA);
      const double tol = dtype == torch::kFloat32 ? 1e-5 : 5e-3;
      Report rep;
      auto kr = subq::ops::mlstm_step_cuda(q, k, v, ig, fg, s, reset);
      auto rr = subq::ops::mlstm_step(q, k, v, ig, fg, s, reset);
      rep.add("h", kr.h, rr.h, tol);
      rep.add("C", kr.state.c, rr.state.c, 1e-5);
      rep.add("n", kr.state.n, rr.state.n, 1e-5);
      rep.add("m", kr.state.m, rr.state.m, 1e-6);
      auto k0 = subq::ops::mlstm_step_cuda(q, k, v, ig, fg);
      auto r0 = subq::ops::mlstm_step(q, k, v, ig, fg);
      rep.add("h_zero_state", k0.h, r0.h, tol);
      rep.check(subq::str("decode ", c10::toString(dtype), " Dk", dk, " Dv", dv));
    }
  }
  Case c;  // T decode steps from an initial state == the sequence kernel's outputs and final state
  c.t = 150;
  c.h = 4;
  c.dk = 128;
  c.dv = 256;
  c.init = true;
  const Inputs in = make_inputs(c, 555);
  const auto seq = subq::ops::mlstm_cuda(in.q, in.k, in.v, in.ig, in.fg, in.init);
  subq::ops::MlstmState state = in.init;
  std::vector<Tensor> hs;
  for (int64_t t = 0; t < c.t; ++t) {
    auto r = subq::ops::mlstm_decode(in.q.select(2, t), in.k.select(2, t), in.v.select(2, t), in.ig.select(2, t),
                                     in.fg.select(2, t), state);
    state = r.state;
    hs.push_back(r.h);
  }
  Report rep;
  rep.add("h", torch::stack(hs, 2), seq.h, 5e-3);
  rep.add("C", state.c, seq.state.c, 5e-3);
  rep.add("m", state.m, seq.state.m, 1e-5);
  rep.check("decode 150 steps vs sequence kernel");
}

TEST_CASE("mlstm kernels keep packed documents apart", "[gpu][mlstm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("mLSTM kernels cannot run here: " << why);
  torch::NoGradGuard ng;
  Case c;
  c.b = 1;
  c.t = 300;
  c.dk = 128;
  c.dv = 128;
  c.init = true;
  const Inputs in = make_inputs(c, 4242);
  const int64_t start = 117;
  Tensor reset = torch::zeros({1, c.t}, torch::TensorOptions().dtype(torch::kBool).device(torch::kCUDA));
  reset.index_put_({0, start}, true);
  const auto packed = subq::ops::mlstm_cuda(in.q, in.k, in.v, in.ig, in.fg, in.init, reset);
  auto tail = [&](const Tensor& t) { return t.narrow(2, start, c.t - start); };
  const auto alone = subq::ops::mlstm_cuda(tail(in.q), tail(in.k), tail(in.v), tail(in.ig), tail(in.fg));
  Report rep;
  rep.add("h_doc2", tail(packed.h), alone.h, 5e-3);
  rep.add("C", packed.state.c, alone.state.c, 5e-3);
  rep.add("m", packed.state.m, alone.state.m, 1e-5);
  Tensor q2 = in.q.clone();
  q2.narrow(2, 0, start).normal_();
  const auto changed = subq::ops::mlstm_cuda(q2, in.k, in.v, in.ig, in.fg, in.init, reset);
  CHECK(torch::equal(tail(changed.h), tail(packed.h)));
  CHECK(torch::equal(changed.state.c, packed.state.c));
  rep.check("packed documents");
}
