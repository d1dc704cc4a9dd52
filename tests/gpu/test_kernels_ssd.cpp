// test_kernels_ssd.cpp — the SSD CUDA kernels (label gpu; skipped without a GPU or without kernels in the
// build) against the chunkwise LibTorch reference run in fp32 on the same (already rounded) inputs:
// outputs, final states and the gradients of x, dt, A, B, C, D and the initial state, over T = 1, 63, 64,
// 65, 1000, 4096, P and N in {64, 128}, G in {1, 2}, with and without resets and initial states, slow
// decays (state carried over many chunks) and fast ones; fp16 and P = 256 cases; strided inputs laid out
// like the Mamba-2 mixer's; the SUBQ_OPS_IMPL dispatch; the decode kernel; document isolation.
//
// Tolerances (DESIGN.md): relative RMS ||a - b|| / ||b|| < 5e-3 for bf16/fp16 outputs and final states,
// < 1e-2 for gradients; fp32 decode steps < 1e-5. NaN never passes (rel_rms of a non-finite tensor is NaN).
// Every case prints one line with its shape and the error of every tensor, so a failing log says which
// tensor, shape and setting went wrong.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/ssd.h"
#include "subq_catch.h"

namespace {

using subq::test::rel_rms;
using torch::Tensor;

struct Case {
  int64_t b = 2, h = 2, g = 1, t = 64, p = 64, n = 64;
  bool init = false, reset = false, D = true, fast = false;
  torch::ScalarType dtype = torch::kBFloat16;
};

std::string describe(const Case& c) {
  return subq::str(c10::toString(c.dtype), " B", c.b, " H", c.h, " G", c.g, " T", c.t, " P", c.p, " N", c.n,
                   c.init ? " init" : "", c.reset ? " reset" : "", c.D ? " D" : " noD", c.fast ? " fast" : " slow");
}

// "" when the kernels can run here (a CUDA GPU, kernels built for it), else why not.
std::string why_skip() {
  if (!torch::cuda::is_available()) return "no CUDA GPU visible";
  auto o = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  return subq::ops::ssd_cuda_unsupported(torch::zeros({1, 1, 1, 64}, o), torch::zeros({1, 1, 1, 64}, o));
}

struct Inputs {
  Tensor x, dt, A, B, C, D, h0, reset;  // on the GPU; x, B, C in the case's dtype, the rest fp32
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  using subq::test::randn;
  auto dev = torch::kCUDA;
  Inputs in;
  in.x = randn({c.b, c.h, c.t, c.p}, seed + 1).to(dev, c.dtype);
  in.B = randn({c.b, c.g, c.t, c.n}, seed + 2).to(dev, c.dtype);
  in.C = randn({c.b, c.g, c.t, c.n}, seed + 3).to(dev, c.dtype);
  // slow: dt ~ softplus(N(-1.5, 0.5)), A in [-1.05, -0.05] (the state survives many chunks);
  // fast: Mamba-2's initialisation ranges, dt ~ softplus(N(-3, 1)), A in [-16, -1].
  Tensor z = randn({c.b, c.h, c.t}, seed + 4);
  in.dt = (c.fast ? torch::softplus(z - 3.0) : torch::softplus(z * 0.5 - 1.5)).to(dev, torch::kFloat32);
  Tensor u = (randn({c.h}, seed + 5).abs().clamp_max(3.0) / 3.0);
  in.A = (c.fast ? -(1.0 + 15.0 * u) : -(0.05 + u)).to(dev, torch::kFloat32);
  if (c.D) in.D = randn({c.h}, seed + 6).to(dev, torch::kFloat32);
  if (c.init) in.h0 = randn({c.b, c.h, c.p, c.n}, seed + 7).to(dev, torch::kFloat32);
  if (c.reset) in.reset = subq::test::chunk_edge_resets(c.b, c.t, seed + 8).to(dev);
  return in;
}

struct Report : subq::test::ErrorReport {
  Report() : ErrorReport("ssd-kernel") {}
};

// Runs the kernel and the fp32 reference on the same values; compares outputs, final states and gradients
// of sum(y * Wy) + sum(final * Wf) (Wy rounded to the case's dtype so that both see the same dy).
void compare_case(const Case& c, uint64_t seed) {
  INFO(describe(c));
  const Inputs in = make_inputs(c, seed);
  const Tensor Wy = subq::test::randn({c.b, c.h, c.t, c.p}, seed + 11).to(torch::kCUDA, c.dtype).to(torch::kFloat32);
  const Tensor Wf = subq::test::randn({c.b, c.h, c.p, c.n}, seed + 12).to(torch::kCUDA, torch::kFloat32);

  std::vector<Tensor> k_leaves = {in.x, in.dt, in.A, in.B, in.C};
  std::vector<Tensor> r_leaves = {in.x.to(torch::kFloat32), in.dt, in.A, in.B.to(torch::kFloat32), in.C.to(torch::kFloat32)};
  std::vector<std::string> names = {"dx", "ddt", "dA", "dB", "dC"};
  if (c.D) {
    k_leaves.push_back(in.D);
    r_leaves.push_back(in.D);
    names.push_back("dD");
  }
  if (c.init) {
    k_leaves.push_back(in.h0);
    r_leaves.push_back(in.h0);
    names.push_back("dh0");
  }
  for (auto& t : k_leaves) t = t.detach().clone().requires_grad_(true);
  for (auto& t : r_leaves) t = t.detach().clone().requires_grad_(true);
  auto run = [&](bool kernel, const std::vector<Tensor>& l) {
    const Tensor D = c.D ? l[5] : Tensor();
    const Tensor h0 = c.init ? l[c.D ? 6 : 5] : Tensor();
    return kernel ? subq::ops::ssd_cuda(l[0], l[1], l[2], l[3], l[4], D, h0, in.reset)
                  : subq::ops::ssd_chunkwise(l[0], l[1], l[2], l[3], l[4], D, h0, in.reset, 64);
  };
  const subq::ops::SsdResult got = run(true, k_leaves);
  const subq::ops::SsdResult want = run(false, r_leaves);
  REQUIRE(got.y.scalar_type() == c.dtype);
  REQUIRE(got.final_state.scalar_type() == torch::kFloat32);

  Report rep;
  rep.add("y", got.y, want.y, 5e-3);
  rep.add("final", got.final_state, want.final_state, 5e-3);
  auto loss = [&](const subq::ops::SsdResult& r) { return (r.y.to(torch::kFloat32) * Wy).sum() + (r.final_state * Wf).sum(); };
  const auto gk = torch::autograd::grad({loss(got)}, k_leaves);
  const auto gr = torch::autograd::grad({loss(want)}, r_leaves);
  for (size_t i = 0; i < names.size(); ++i) {
    REQUIRE(gk[i].defined());
    CHECK(gk[i].scalar_type() == k_leaves[i].scalar_type());
    rep.add(names[i], gk[i], gr[i], 1e-2);
  }
  rep.check(describe(c));
}

}  // namespace

TEST_CASE("ssd kernels match the reference: outputs, final states, every gradient", "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  uint64_t seed = 100;
  for (int64_t t : {1, 63, 64, 65, 1000, 4096}) {
    for (int64_t p : {64, 128}) {
      for (int64_t n : {64, 128}) {
        Case plain;  // G = 1, nothing optional but D, slow decays
        plain.t = t;
        plain.p = p;
        plain.n = n;
        compare_case(plain, seed += 100);
        Case full;  // G = 2 (2 heads per group), initial state, packed documents, fast decays
        full.b = 2;
        full.h = 4;
        full.g = 2;
        full.t = t;
        full.p = p;
        full.n = n;
        full.init = full.reset = full.fast = true;
        compare_case(full, seed += 100);
      }
    }
  }
}

TEST_CASE("ssd kernels: fp16, P = 256, no D, many heads per group, batch 3", "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  std::vector<Case> cases;
  Case a;
  a.dtype = torch::kFloat16;
  a.t = 1000;
  a.p = 64;
  a.n = 128;
  a.init = a.reset = true;
  cases.push_back(a);
  Case b = a;
  b.t = 65;
  b.p = 128;
  b.n = 64;
  b.fast = true;
  cases.push_back(b);
  Case c;
  c.t = 1000;
  c.p = 256;
  c.n = 128;
  c.h = 3;
  c.init = c.reset = true;
  cases.push_back(c);
  Case d;
  d.t = 130;
  d.p = 64;
  d.n = 64;
  d.D = false;
  d.b = 3;
  cases.push_back(d);
  Case e;  // 8 heads share one group: head splits and the dB/dC sums over heads
  e.b = 1;
  e.h = 8;
  e.g = 1;
  e.t = 700;
  e.p = 64;
  e.n = 128;
  e.reset = e.init = true;
  cases.push_back(e);
  uint64_t seed = 9000;
  for (const auto& k : cases) compare_case(k, seed += 100);
}

TEST_CASE("ssd kernels read strided inputs in place (the Mamba-2 mixer's layout) and copy misaligned ones",
          "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  const int64_t bs = 2, T = 300, H = 4, P = 64, G = 2, N = 128, conv = H * P + 2 * G * N;
  const Tensor xBC = subq::test::randn({bs, T, conv + 8}, 21).to(torch::kCUDA, torch::kBFloat16);
  const Tensor delta = torch::softplus(subq::test::randn({bs, T, H}, 22) - 1.5).to(torch::kCUDA, torch::kFloat32);
  const Tensor A = -(0.1 + subq::test::randn({H}, 23).abs()).to(torch::kCUDA, torch::kFloat32);
  const Tensor D = subq::test::randn({H}, 24).to(torch::kCUDA, torch::kFloat32);
  for (int64_t offset : {0, 1}) {  // 1: every row starts 2 bytes off a 16-byte boundary -> copies
    INFO("offset " << offset);
    const Tensor base = xBC.narrow(-1, offset, conv);
    const Tensor x = base.narrow(-1, 0, H * P).view({bs, T, H, P}).permute({0, 2, 1, 3});
    const Tensor B = base.narrow(-1, H * P, G * N).view({bs, T, G, N}).transpose(1, 2);
    const Tensor C = base.narrow(-1, H * P + G * N, G * N).view({bs, T, G, N}).transpose(1, 2);
    const Tensor dt = delta.transpose(1, 2);
    REQUIRE(!x.is_contiguous());
    auto strided = subq::ops::ssd_cuda(x, dt, A, B, C, D);
    auto packed = subq::ops::ssd_cuda(x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), D);
    CHECK(torch::equal(strided.y, packed.y));
    CHECK(torch::equal(strided.final_state, packed.final_state));
    auto ref = subq::ops::ssd_chunkwise(x.to(torch::kFloat32), dt, A, B.to(torch::kFloat32), C.to(torch::kFloat32), D);
    Report rep;
    rep.add("y", strided.y, ref.y, 5e-3);
    rep.add("final", strided.final_state, ref.final_state, 5e-3);
    rep.check(subq::str("strided offset ", offset));
  }
}

TEST_CASE("ssd dispatch follows SUBQ_OPS_IMPL", "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  Case c;
  c.t = 200;
  c.init = c.reset = true;
  const Inputs in = make_inputs(c, 77);
  subq::test::OpsImplEnv env;
  auto set = [&env](const char* v) { env.set(v); };
  torch::NoGradGuard ng;
  const auto kernel = subq::ops::ssd_cuda(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset);
  const auto chunk = subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, 32);
  env.set(nullptr);
  auto r = subq::ops::ssd(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, 32);
  CHECK(torch::equal(r.y, kernel.y));
  set("auto");
  r = subq::ops::ssd(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, 32);
  CHECK(torch::equal(r.final_state, kernel.final_state));
  set("reference");
  r = subq::ops::ssd(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, 32);
  CHECK(torch::equal(r.y, chunk.y));
  set("cuda");
  r = subq::ops::ssd(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, 32);
  CHECK(torch::equal(r.y, kernel.y));
  const Tensor x32 = in.x.to(torch::kFloat32);
  CHECK_THROWS_AS(subq::ops::ssd(x32, in.dt, in.A, in.B.to(torch::kFloat32), in.C.to(torch::kFloat32)),
                  subq::InputError);
  set("auto");  // fp32 inputs: the reference
  r = subq::ops::ssd(x32, in.dt, in.A, in.B.to(torch::kFloat32), in.C.to(torch::kFloat32), in.D, in.h0, in.reset, 32);
  const auto ref32 =
      subq::ops::ssd_chunkwise(x32, in.dt, in.A, in.B.to(torch::kFloat32), in.C.to(torch::kFloat32), in.D, in.h0, in.reset, 32);
  CHECK(torch::equal(r.y, ref32.y));
  set("triton");
  CHECK_THROWS_AS(subq::ops::ssd(in.x, in.dt, in.A, in.B, in.C), subq::UsageError);
}

TEST_CASE("ssd decode kernel matches ssd_step; decoding T tokens matches the sequence kernel", "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  torch::NoGradGuard ng;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (int64_t n : {64, 128, 36}) {
      INFO(c10::toString(dtype) << " N " << n);
      const int64_t bs = 3, H = 4, G = 2, P = 80;
      using subq::test::randn;
      const Tensor x = randn({bs, H, P}, 31).to(torch::kCUDA, dtype);
      const Tensor dt = torch::softplus(randn({bs, H}, 32) - 1.0).to(torch::kCUDA, torch::kFloat32);
      const Tensor A = -(0.1 + randn({H}, 33).abs()).to(torch::kCUDA, torch::kFloat32);
      const Tensor B = randn({bs, G, n}, 34).to(torch::kCUDA, dtype);
      const Tensor C = randn({bs, G, n}, 35).to(torch::kCUDA, dtype);
      const Tensor D = randn({H}, 36).to(torch::kCUDA, torch::kFloat32);
      const Tensor s = randn({bs, H, P, n}, 37).to(torch::kCUDA, torch::kFloat32);
      auto k = subq::ops::ssd_step_cuda(x, dt, A, B, C, D, s);
      auto r = subq::ops::ssd_step(x, dt, A, B, C, D, s);
      const double tol = dtype == torch::kFloat32 ? 1e-5 : 5e-3;
      Report rep;
      rep.add("y", k.y, r.y, tol);
      rep.add("state", k.final_state, r.final_state, 1e-5);
      auto k0 = subq::ops::ssd_step_cuda(x, dt, A, B, C, Tensor(), Tensor());
      auto r0 = subq::ops::ssd_step(x, dt, A, B, C, Tensor(), Tensor());
      rep.add("y_no_state", k0.y, r0.y, tol);
      rep.check(subq::str("decode ", c10::toString(dtype), " N", n));
    }
  }
  // T decode steps from an initial state == the sequence kernel's outputs and final state.
  Case c;
  c.t = 150;
  c.h = 4;
  c.g = 2;
  c.n = 128;
  c.init = true;
  const Inputs in = make_inputs(c, 555);
  const auto seq = subq::ops::ssd_cuda(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0);
  Tensor state = in.h0;
  std::vector<Tensor> ys;
  for (int64_t t = 0; t < c.t; ++t) {
    auto r = subq::ops::ssd_decode(in.x.select(2, t), in.dt.select(2, t), in.A, in.B.select(2, t), in.C.select(2, t),
                                   in.D, state);
    state = r.final_state;
    ys.push_back(r.y);
  }
  Report rep;
  rep.add("y", torch::stack(ys, 2), seq.y, 5e-3);
  rep.add("final", state, seq.final_state, 5e-3);
  rep.check("decode 150 steps vs sequence kernel");
}

TEST_CASE("ssd kernels keep packed documents apart", "[gpu][ssd]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP("SSD kernels cannot run here: " << why);
  torch::NoGradGuard ng;
  Case c;
  c.b = 1;
  c.t = 300;
  c.p = 64;
  c.n = 128;
  c.init = true;
  const Inputs in = make_inputs(c, 4242);
  const int64_t start = 117;  // the second document: tokens 117..299 (not chunk-aligned)
  Tensor reset = torch::zeros({1, c.t}, torch::TensorOptions().dtype(torch::kBool).device(torch::kCUDA));
  reset.index_put_({0, start}, true);
  const auto packed = subq::ops::ssd_cuda(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, reset);
  auto tail = [&](const Tensor& t, int64_t dim) { return t.narrow(dim, start, c.t - start); };
  const auto alone = subq::ops::ssd_cuda(tail(in.x, 2), tail(in.dt, 2), in.A, tail(in.B, 2), tail(in.C, 2), in.D);
  Report rep;
  rep.add("y_doc2", tail(packed.y, 2), alone.y, 5e-3);
  rep.add("final", packed.final_state, alone.final_state, 5e-3);
  // changing document 1 leaves document 2 untouched (bitwise: the kernels are deterministic)
  Tensor x2 = in.x.clone();
  x2.narrow(2, 0, start).normal_();
  const auto changed = subq::ops::ssd_cuda(x2, in.dt, in.A, in.B, in.C, in.D, in.h0, reset);
  CHECK(torch::equal(tail(changed.y, 2), tail(packed.y, 2)));
  CHECK(torch::equal(changed.final_state, packed.final_state));
  rep.check("packed documents");
}
