// test_gated_delta_v2_fwd_emulated.cpp — the fused Gated DeltaNet forward (v2: prep_fwd, scan_fwd, out_fwd of
// src/ops/gated_delta/gdn_v2_fwd.cuh) on the CPU under the emulator of tests/emu/cuda_emu.h, driven by the real
// Torch glue (detail::gated_delta_kernel_path, which dispatches bf16 / fp16 operands to v2) through an
// emulated launcher table.
//
// Checked against the fp32 chunkwise reference on the same (bf16- / fp16-rounded) inputs: o and the final
// state (DESIGN.md bar 5e-3 relative RMS), the saved tensors of the v2 contract (gated_delta_v2.h: tinv, w,
// u, states vs the reference's chunk tensors and carried states), and every gradient (q, k, v, g, beta,
// initial state; bar 1e-2) through the v2 autograd Function and the v2 backward kernels (the launchers of
// tests/emu/gdn_v2_emu_launchers.h: one table with both halves). Every emulated launch pre-fills its outputs with NaN, so
// an element never written fails; launches run with threads in ascending and in descending order and with
// cp.async copies performed at issue and at wait (missing barriers / waits show up in one of them).
//
// Shapes are small (the emulator runs every thread as a user-level context) but cover several chunks, a
// ragged last chunk, T = 1, T < 64, resets inside chunks and at chunk starts (also at t = 0), initial state,
// Dk = 64 / 128 / 256, Dv = 32 / 64 / 96, beta in [0, 1] and [0, 2], in-op q/k normalisation, bf16 and fp16.
// Needs the CUDA headers (bf16 types): skipped in builds without CUDA.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "op_testing.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "ops/gated_delta/gated_delta_v2.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/gdn_v2_emu_launchers.h"

namespace {

using torch::Tensor;
namespace d = subq::ops::detail;

emu::Options& g_opt = subq::test::gdn_v2_emu::g_opt;  // thread order / copy timing (set per pass)
// one table with the v2 forward and backward kernels: the gradient checks run through the real v2 backward
using subq::test::gdn_v2_emu::kEmulated;

// ---- cases ----
struct Case {
  int64_t b = 1, h = 1, t = 130, dk = 64, dv = 64;
  bool init = false, reset = false, edge = false, l2 = false, neg = false, f16 = false, slow = false;
};

// Sizes and flags ("init reset edge l2 neg f16 slow", any subset; bf16 unless f16; edge = resets at chunk
// edges; slow = decays near 1, so the carried state matters over several chunks, else ~exp(-8) per chunk).
Case make_case(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, const std::string& flags = "") {
  Case c;
  c.b = b, c.h = h, c.t = t, c.dk = dk, c.dv = dv;
  auto has = [&](const char* f) { return flags.find(f) != std::string::npos; };
  c.init = has("init"), c.reset = has("reset"), c.edge = has("edge"), c.l2 = has("l2"), c.neg = has("neg");
  c.f16 = has("f16");
  c.slow = has("slow");
  return c;
}

std::string describe(const Case& c) {
  return subq::str("B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv, c.init ? " init" : "",
                   c.reset ? " reset" : "", c.edge ? " edge-resets" : "", c.l2 ? " l2" : "", c.neg ? " beta[0,2]" : "",
                   c.f16 ? " fp16" : " bf16", c.slow ? " slow" : "");
}

struct Inputs {
  Tensor q, k, v, g, beta, s0, reset;  // q, k, v in the operand dtype
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  using subq::test::randn;
  namespace F = torch::nn::functional;
  Inputs in;
  const auto dt = c.f16 ? torch::kFloat16 : torch::kBFloat16;
  Tensor q = randn({c.b, c.h, c.t, c.dk}, seed, 1.0).to(torch::kFloat32);
  Tensor k = randn({c.b, c.h, c.t, c.dk}, seed + 1, 1.0).to(torch::kFloat32);
  if (!c.l2) {  // the op takes q, k as given: unit keys and scaled queries, as a model gives them
    q = F::normalize(q, F::NormalizeFuncOptions().dim(-1)) / std::sqrt(static_cast<double>(c.dk));
    k = F::normalize(k, F::NormalizeFuncOptions().dim(-1));
  }
  in.q = q.to(dt);
  in.k = k.to(dt);
  in.v = randn({c.b, c.h, c.t, c.dv}, seed + 2).to(dt);
  in.g = -F::softplus(randn({c.b, c.h, c.t}, seed + 3, c.slow ? 0.5 : 1.0, c.slow ? -4.0 : -2.0)).to(torch::kFloat32);
  in.beta = torch::sigmoid(randn({c.b, c.h, c.t}, seed + 4)).to(torch::kFloat32) * (c.neg ? 2.0 : 1.0);
  if (c.init) in.s0 = randn({c.b, c.h, c.dv, c.dk}, seed + 5, 0.5).to(torch::kFloat32);
  if (c.edge) {
    in.reset = subq::test::chunk_edge_resets(c.b, c.t, seed + 6);
  } else if (c.reset) {
    in.reset = subq::test::rand_mask({c.b, c.t}, seed + 6, 0.04);
    if (c.t > 70) {
      in.reset.index_put_({0, 66}, true);
      in.reset.index_put_({0, 69}, true);
    }
  }
  return in;
}

Tensor f32(const Tensor& t) { return t.defined() ? t.to(torch::kFloat32) : t; }

// The reference forward on the rounded inputs (fp32), q and k normalised in fp32 and rounded to the operand
// dtype when c.l2 (as the v2 glue does), so both sides see the same q, k.
struct Reference {
  Tensor q, k;  // the operand-dtype q, k the kernels see
  subq::ops::GatedDeltaResult r;
};
std::pair<Tensor, Tensor> kernel_qk(const Case& c, const Tensor& q, const Tensor& k) {
  if (!c.l2) return {q, k};
  auto [qn, kn] = d::gated_delta_prepare_qk(q.to(torch::kFloat32), k.to(torch::kFloat32), true);
  return {qn.to(q.scalar_type()), kn.to(k.scalar_type())};
}

void set_pass(int pass) {
  g_opt.order = (pass % 2 == 0) ? emu::Order::kAscending : emu::Order::kDescending;
  g_opt.copies = pass == 2 ? emu::Copies::kAtWait : emu::Copies::kAtIssue;
}

// Forward: o and final state through the glue, and the saved tensors of the contract.
void check_forward(const Case& c, const Inputs& in, int passes) {
  const auto [qk_q, qk_k] = kernel_qk(c, in.q, in.k);
  subq::ops::GatedDeltaOptions opts;  // reference on the already-normalised, rounded q, k
  const auto want = subq::ops::gated_delta_chunkwise(f32(qk_q), f32(qk_k), f32(in.v), in.g, in.beta, in.s0, in.reset,
                                                     opts);
  // Reference chunk tensors with 64-token chunks (C = T when T < 64) and the explicit (I + A)^-1.
  Tensor Tref;
  const d::UnitLowerSolve solve = [&Tref](const Tensor& A, const Tensor& R) {
    const int64_t C = A.size(-1);
    Tref = torch::linalg_inv(A.to(torch::kDouble) + torch::eye(C, torch::kDouble)).to(torch::kFloat32);
    return torch::matmul(Tref, R);
  };
  const auto ch = d::gated_delta_chunks(f32(qk_q), f32(qk_k), f32(in.v), in.g, in.beta, in.reset, 64, false,
                                        torch::kFloat32, solve);
  const int64_t C = ch.chunk, nc = ch.chunks, T = c.t;
  // carried states and U of the reference
  Tensor s = c.init ? in.s0 : torch::zeros({c.b, c.h, c.dv, c.dk});
  std::vector<Tensor> carried, us;
  for (int64_t i = 0; i < nc; ++i) {
    carried.push_back(s);
    Tensor u = ch.u_tilde.select(2, i) - torch::matmul(ch.w.select(2, i), s.transpose(-1, -2));
    us.push_back(u);
    s = ch.gamma_end.select(-1, i).unsqueeze(-1).unsqueeze(-1) * s + torch::matmul(u.transpose(-1, -2), ch.k_end.select(2, i));
  }
  auto unchunk = [&](const Tensor& t) { return t.reshape({c.b, c.h, nc * C, t.size(-1)}).narrow(2, 0, T); };
  const Tensor u_ref = unchunk(torch::stack(us, 2)), states_ref = torch::stack(carried, 2), w_ref = unchunk(ch.w);

  for (int pass = 0; pass < passes; ++pass) {
    set_pass(pass);
    INFO("pass " << pass);
    torch::NoGradGuard ng;
    const auto got = d::gated_delta_kernel_path(kEmulated, in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset, c.l2);
    REQUIRE(got.o.scalar_type() == in.q.scalar_type());
    REQUIRE(got.final_state.scalar_type() == torch::kFloat32);
    subq::test::ErrorReport rep(describe(c));
    rep.add("o", got.o, want.o, 5e-3);
    rep.add("final", got.final_state, want.final_state, 5e-3);
    if (c.l2 && pass == 0) {  // the GPU test's criterion: the reference normalises in fp32 without rounding
      subq::ops::GatedDeltaOptions l2;
      l2.l2_normalize_qk = true;
      const auto w32 = subq::ops::gated_delta_chunkwise(f32(in.q), f32(in.k), f32(in.v), in.g, in.beta, in.s0,
                                                        in.reset, l2);
      rep.add("o(fp32 norm)", got.o, w32.o, 5e-3);
      rep.add("final(fp32 norm)", got.final_state, w32.final_state, 5e-3);
    }
    // the saved tensors
    d::GdnV2Saved sv;
    const Tensor reset32 = in.reset.defined() ? in.reset.to(torch::kInt32) : Tensor();
    (void)d::gated_delta_v2_forward(kEmulated, qk_q, qk_k, in.v, in.g, in.beta, in.s0, reset32, &sv);
    REQUIRE(sv.tinv.sizes() == torch::IntArrayRef({c.b, c.h, nc, 64, 64}));
    rep.add("tinv", sv.tinv.narrow(-1, 0, C).narrow(-2, 0, C), Tref, 1e-5);
    if (C < 64) {  // rows / columns of the padded tokens: the identity's
      const Tensor pad = sv.tinv.narrow(-1, C, 64 - C).narrow(-2, C, 64 - C);
      CHECK(torch::equal(pad, torch::eye(64 - C).expand_as(pad)));
      CHECK(torch::equal(sv.tinv.narrow(-2, C, 64 - C).narrow(-1, 0, C), torch::zeros({c.b, c.h, nc, 64 - C, C})));
    }
    CHECK(torch::equal(sv.tinv.triu(1), torch::zeros_like(sv.tinv)));
    rep.add("w", sv.w, w_ref, 5e-3);
    rep.add("u", sv.u, u_ref, 5e-3);
    rep.add("states", sv.states, states_ref, 5e-3);
    CHECK(sv.states.scalar_type() == in.q.scalar_type());
    CHECK(sv.w.scalar_type() == in.q.scalar_type());
    CHECK(sv.u.scalar_type() == in.q.scalar_type());
    rep.check("forward");
  }
}

// Gradients through the v2 Function (o and final state in the loss) vs autograd of the fp32 reference on
// the same rounded inputs (fp32 leaves holding operand-dtype values; the kernel side casts them).
void check_grads(const Case& c, const Inputs& in) {
  set_pass(0);
  subq::ops::GatedDeltaOptions opts;
  opts.l2_normalize_qk = c.l2;
  const auto dt = in.q.scalar_type();
  std::vector<Tensor> inputs{f32(in.q), f32(in.k), f32(in.v), in.g, in.beta};
  if (c.init) inputs.push_back(in.s0);
  auto loss_of = [&](bool kernels) {
    return [&, kernels](const std::vector<Tensor>& x) {
      const Tensor s0 = c.init ? x[5] : Tensor();
      subq::ops::GatedDeltaResult r;
      if (kernels) {
        r = d::gated_delta_kernel_path(kEmulated, x[0].to(dt), x[1].to(dt), x[2].to(dt), x[3], x[4], s0, in.reset, c.l2);
      } else {
        // the reference sees the q, k the kernels see: normalised in fp32, rounded to the operand dtype
        Tensor q = x[0], k = x[1];
        if (c.l2) {
          auto [qn, kn] = d::gated_delta_prepare_qk(q, k, true);
          q = qn.to(dt).to(torch::kFloat32);
          k = kn.to(dt).to(torch::kFloat32);
        }
        r = subq::ops::gated_delta_chunkwise(q, k, x[2], x[3], x[4], s0, in.reset, {});
      }
      return subq::test::project({r.o, r.final_state});
    };
  };
  const auto got = subq::test::grads_of(loss_of(true), inputs);
  const auto want = subq::test::grads_of(loss_of(false), inputs);
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
  subq::test::ErrorReport rep(describe(c));
  for (size_t i = 0; i < inputs.size(); ++i) rep.add(names[i], got[i], want[i], 1e-2);
  rep.check("gradients");
  (void)opts;
}

void run_case(const Case& c, bool grads = true, int passes = 3) {
  INFO(describe(c));
  const Inputs in = make_inputs(c, 500 + static_cast<uint64_t>(c.t * 7 + c.dk + c.dv));
  check_forward(c, in, passes);
  if (grads) check_grads(c, in);
}

}  // namespace

TEST_CASE("gated delta v2 forward: dispatch picks v2 for bf16 / fp16 and v1 for fp32", "[ops][gated_delta][v2]") {
  const Tensor q = torch::zeros({1, 1, 3, 64}), v = torch::zeros({1, 1, 3, 64});
  CHECK(d::gated_delta_v2_takes(kEmulated, q.to(torch::kBFloat16), v.to(torch::kBFloat16)));
  CHECK(d::gated_delta_v2_takes(kEmulated, q.to(torch::kFloat16), v.to(torch::kFloat16)));
  CHECK_FALSE(d::gated_delta_v2_takes(kEmulated, q, v));
  CHECK_FALSE(d::gated_delta_v2_takes(kEmulated, q.to(torch::kBFloat16), torch::zeros({1, 1, 3, 544}, torch::kBFloat16)));
  d::GatedDeltaLaunchers without_v2 = kEmulated;
  without_v2.v2_prep_fwd = nullptr;
  CHECK_FALSE(d::gated_delta_v2_takes(without_v2, q.to(torch::kBFloat16), v.to(torch::kBFloat16)));
}

TEST_CASE("gated delta v2 forward kernels through the glue, Dk = 64 (CPU emulation)", "[ops][gated_delta][v2]") {
  run_case(make_case(1, 2, 130, 64, 64));                         // 3 chunks, ragged last one
  run_case(make_case(1, 1, 300, 64, 64, "init slow"), true, 2);   // 5 chunks, the state carries across them
  run_case(make_case(1, 1, 1, 64, 64, "init"));                   // T = 1
  run_case(make_case(2, 1, 150, 64, 96, "init edge neg"));        // resets at chunk edges, Dv 96 (3 scan tiles)
  run_case(make_case(1, 1, 100, 64, 32, "reset f16"), true, 2);   // fp16, Dv 32
  run_case(make_case(1, 2, 64, 64, 128, "init"), true, 2);        // exactly one chunk, Dv 128 (two 64-wide slices)
  run_case(make_case(1, 1, 200, 64, 64, "init reset l2 f16"), false, 2);  // 4 chunks, fp16, in-op normalisation
}

TEST_CASE("gated delta v2 forward kernels through the glue, Dk = 128 (CPU emulation)", "[ops][gated_delta][v2]") {
  run_case(make_case(1, 1, 40, 128, 64, "init l2"));              // T < 64, in-op normalisation
  run_case(make_case(1, 1, 128, 128, 96, "init reset neg f16"), true, 2);
  run_case(make_case(1, 1, 256, 128, 128, "edge neg slow"), true, 1);  // the target's head dims
}

TEST_CASE("gated delta v2: gradients when only o or only the final state is used (CPU emulation)",
          "[ops][gated_delta][v2]") {
  const Case c = make_case(1, 1, 100, 64, 32, "init reset slow");
  const Inputs in = make_inputs(c, 4321);
  set_pass(0);
  const auto dt = in.q.scalar_type();
  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "o only" : "final state only"));
    auto loss_of = [&](bool kernels) {
      return [&, kernels](const std::vector<Tensor>& x) {
        const auto r = kernels ? d::gated_delta_kernel_path(kEmulated, x[0].to(dt), x[1].to(dt), x[2].to(dt), x[3], x[4],
                                                            x[5], in.reset, false)
                               : subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], x[5], in.reset);
        return subq::test::project({which == 0 ? r.o : r.final_state});
      };
    };
    const std::vector<Tensor> inputs{f32(in.q), f32(in.k), f32(in.v), in.g, in.beta, in.s0};
    const auto got = subq::test::grads_of(loss_of(true), inputs);
    const auto want = subq::test::grads_of(loss_of(false), inputs);
    const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
    for (size_t i = 0; i < inputs.size(); ++i) {
      INFO(names[i]);
      if (!want[i].defined()) {  // the input does not reach the loss (q for the final state): zero or undefined
        CHECK((!got[i].defined() || torch::equal(got[i], torch::zeros_like(got[i]))));
      } else {
        subq::test::require_close(names[i], got[i], want[i], 1e-2);
      }
    }
  }
}

TEST_CASE("gated delta v2 forward, long sequence (hidden: run by name; CPU emulation)", "[.][gated_delta][v2]") {
  run_case(make_case(1, 1, 4096, 128, 128, "init edge slow"), false, 1);
  run_case(make_case(1, 1, 1000, 128, 128, "init edge slow l2 neg"), false, 1);
}

TEST_CASE("gated delta v2 forward kernels through the glue, Dk = 256 (CPU emulation)", "[ops][gated_delta][v2]") {
  run_case(make_case(1, 1, 70, 256, 64, "init reset neg slow"), true, 2);
}

#else
TEST_CASE("gated delta v2 forward kernels (CPU emulation)", "[ops][gated_delta][v2]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif
