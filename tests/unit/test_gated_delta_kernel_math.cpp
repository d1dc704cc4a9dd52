// test_gated_delta_kernel_math.cpp — the explicit backward of the chunkwise (WY / UT) gated delta rule,
// written out with LibTorch ops in fp64 on the CPU, against autograd of gated_delta_chunkwise: the reverse
// state scan of the CUDA kernels (gated_delta_cuda.h, the formulas scan_bwd implements), then the
// chunk-parallel gradients, including the backward through the triangular solve
// (X = T R with T = (I + A)^-1:  dR = T^T dX,  dA = strict_lower(-dR X^T)) and the decay chain
// (dgc from dD, de, dgamma, then dg = reverse cumulative sum of dgc). With resets, an initial state, a
// ragged last chunk and beta in [0, 2].
//
// Version 1 of the kernels runs the chunk-parallel part with LibTorch autograd; these formulas are the
// derivation for the fused chunk-parallel backward kernel (docs/perf/gated_delta.md, "Next steps"), checked
// here first, as test_ssd_kernel_math.cpp did for the SSD kernels. Also checks the dispatch entries on the
// CPU (they must run the references; the kernel entries must refuse with a reason).
#include <cstdlib>

#include "op_testing.h"
#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq/ops/ops_impl.h"
#include "subq_catch.h"

namespace {

using torch::Tensor;

struct Grads {
  Tensor dq, dk, dv, dg, dbeta, ds0;
};

Tensor tr(const Tensor& t) { return t.transpose(-1, -2); }
Tensor rowsum(const Tensor& t) { return t.sum(-1); }

// Explicit gradients of sum(o * Wo) + sum(final * Wf) for gated_delta_chunkwise(q, k, v, g, beta, s0, reset)
// with chunk length L (fp64, q, k taken as given).
Grads explicit_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                        const Tensor& s0, const Tensor& reset, const Tensor& Wo, const Tensor& Wf, int64_t L) {
  torch::NoGradGuard ng;
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3), dv = v.size(3);
  const auto c = subq::ops::detail::gated_delta_chunks(q, k, v, g, beta, reset, L, false, torch::kDouble);
  const int64_t C = c.chunk, nc = c.chunks, tp = nc * C;
  const Tensor vc = subq::ops::detail::pad_time(v, 2, tp).reshape({B, H, nc, C, dv});
  const Tensor bc = subq::ops::detail::pad_time(beta, 2, tp).reshape({B, H, nc, C});
  const Tensor& Dm = c.decay;  // [B,H,nc,C,C]
  const Tensor& e = c.gamma_in;
  const Tensor KK = torch::matmul(c.kc, tr(c.kc));
  const Tensor A = (bc.unsqueeze(-1) * KK * Dm).tril(-1);
  const Tensor eye = torch::eye(C, q.options());
  const Tensor Tm = torch::linalg_solve_triangular(A + eye, eye.expand_as(A), false, true, true);  // (I + A)^-1

  // Forward scan (the kernel's scan_fwd).
  Tensor S = s0.defined() ? s0 : torch::zeros({B, H, dv, dk}, q.options());
  std::vector<Tensor> Ss, Us;
  for (int64_t i = 0; i < nc; ++i) {
    Ss.push_back(S);
    Tensor U = c.u_tilde.select(2, i) - torch::matmul(c.w.select(2, i), tr(S));
    Us.push_back(U);
    S = c.gamma_end.select(-1, i).unsqueeze(-1).unsqueeze(-1) * S + torch::matmul(tr(U), c.k_end.select(2, i));
  }
  const Tensor states = torch::stack(Ss, 2), U = torch::stack(Us, 2);

  // Output gradients: O = diag(e) Q S^T + (Q K^T o D) U.
  const Tensor dO = subq::ops::detail::pad_time(Wo, 2, tp).reshape({B, H, nc, C, dv});
  const Tensor QK = torch::matmul(c.qc, tr(c.kc));
  Tensor dQ = e.unsqueeze(-1) * torch::matmul(dO, states);            // diag(e) dO S
  Tensor de = rowsum(dO * torch::matmul(c.qc, tr(states)));           // rows of dO o (Q S^T)
  const Tensor dstates = torch::matmul(tr(dO), e.unsqueeze(-1) * c.qc);  // dO^T diag(e) Q, [.., dv, dk]
  const Tensor dOU = torch::matmul(dO, tr(U));                          // [.., C, C]
  const Tensor dP = dOU * Dm;
  dQ = dQ + torch::matmul(dP, c.kc);
  Tensor dK = torch::matmul(tr(dP), c.qc);
  Tensor dDm = dOU * QK;
  const Tensor dU_out = torch::matmul(tr(QK * Dm), dO);

  // Reverse scan (the kernel's scan_bwd): G = dL/dS_{c+1}.
  Tensor G = Wf.clone();
  std::vector<Tensor> dUt(nc), dW(nc), dKe(nc), dGam(nc);
  for (int64_t i = nc - 1; i >= 0; --i) {
    const Tensor Ke = c.k_end.select(2, i), Wc = c.w.select(2, i), Sc = states.select(2, i);
    const Tensor dU = dU_out.select(2, i) + torch::matmul(Ke, tr(G));
    dUt[i] = dU;
    dKe[i] = torch::matmul(U.select(2, i), G);
    dGam[i] = (G * Sc).sum({-1, -2});
    dW[i] = -torch::matmul(dU, Sc);
    G = c.gamma_end.select(-1, i).unsqueeze(-1).unsqueeze(-1) * G - torch::matmul(tr(dU), Wc) + dstates.select(2, i);
  }
  Grads out;
  out.ds0 = G;
  const Tensor dX_v = torch::stack(dUt, 2), dX_w = torch::stack(dW, 2);
  const Tensor dK_end = torch::stack(dKe, 2), dgamma = torch::stack(dGam, -1);

  // Through the solve: X = T R, R = [diag(b) V | diag(b e) K].
  const Tensor dR_v = torch::matmul(tr(Tm), dX_v), dR_w = torch::matmul(tr(Tm), dX_w);
  const Tensor dA = -(torch::matmul(dR_v, tr(c.u_tilde)) + torch::matmul(dR_w, tr(c.w))).tril(-1);
  Tensor dV = bc.unsqueeze(-1) * dR_v;
  Tensor db = rowsum(dR_v * vc) + e * rowsum(dR_w * c.kc);
  dK = dK + (bc * e).unsqueeze(-1) * dR_w;
  de = de + bc * rowsum(dR_w * c.kc);
  // A = strict_lower(diag(b) KK o D)
  const Tensor dKK = dA * bc.unsqueeze(-1) * Dm;
  db = db + rowsum(dA * KK * Dm);
  dDm = dDm + dA * bc.unsqueeze(-1) * KK;
  dK = dK + torch::matmul(dKK + tr(dKK), c.kc);
  // K_end = diag(D[last, :]) K
  const Tensor dlast = Dm.select(-2, C - 1);
  dK = dK + dlast.unsqueeze(-1) * dK_end;
  Tensor dDm_last = rowsum(dK_end * c.kc);  // gradient of D[last, s]
  dDm.select(-2, C - 1).add_(dDm_last);
  // Decays: D[t,s] = exp(gc_t - gc_s) (masked), e_t = exp(gc_t) (masked), gamma = exp(gc_last) (masked).
  const Tensor dDD = dDm * Dm;
  Tensor dgc = rowsum(dDD) - dDD.sum(-2) + de * e;
  dgc.select(-1, C - 1).add_(dgamma * c.gamma_end);
  const Tensor dgc_r = dgc.flip(-1).cumsum(-1).flip(-1);  // dg_r = sum_{t >= r} dgc_t

  auto unchunk = [&](const Tensor& t, int64_t d) { return t.reshape({B, H, tp, d}).narrow(2, 0, T); };
  out.dq = unchunk(dQ, dk);
  out.dk = unchunk(dK, dk);
  out.dv = unchunk(dV, dv);
  out.dg = dgc_r.reshape({B, H, tp}).narrow(2, 0, T);
  out.dbeta = db.reshape({B, H, tp}).narrow(2, 0, T);
  return out;
}

}  // namespace

TEST_CASE("gated delta chunkwise backward formulas match autograd (fp64)", "[ops][gated_delta][kernels]") {
  using subq::test::randn;
  struct Shape {
    int64_t b, h, t, dk, dv, L;
    bool init, reset, neg;
  };
  for (const Shape& s : {Shape{1, 2, 37, 8, 6, 8, false, false, false}, Shape{2, 1, 45, 8, 4, 16, true, true, true},
                         Shape{1, 1, 64, 16, 16, 16, true, true, false}, Shape{2, 2, 5, 4, 8, 8, true, false, true}}) {
    INFO("B" << s.b << " H" << s.h << " T" << s.t << " Dk" << s.dk << " Dv" << s.dv << " L" << s.L << " init "
              << s.init << " reset " << s.reset << " neg " << s.neg);
    Tensor q = randn({s.b, s.h, s.t, s.dk}, 1), k = randn({s.b, s.h, s.t, s.dk}, 2);
    q = q / q.norm(2, -1, true) / std::sqrt(static_cast<double>(s.dk));
    k = k / k.norm(2, -1, true);
    const Tensor v = randn({s.b, s.h, s.t, s.dv}, 3);
    const Tensor g = -torch::softplus(randn({s.b, s.h, s.t}, 4, 1.0, -1.0));
    const Tensor beta = torch::sigmoid(randn({s.b, s.h, s.t}, 5)) * (s.neg ? 2.0 : 1.0);
    const Tensor s0 = s.init ? randn({s.b, s.h, s.dv, s.dk}, 6) : Tensor();
    Tensor reset;
    if (s.reset) {
      reset = subq::test::rand_mask({s.b, s.t}, 7, 0.1);
      reset.index_put_({0, 0}, true);
      reset.index_put_({0, 3}, true);
    }
    const Tensor Wo = randn({s.b, s.h, s.t, s.dv}, 8), Wf = randn({s.b, s.h, s.dv, s.dk}, 9);
    subq::ops::GatedDeltaOptions opts;
    opts.chunk_size = s.L;
    std::vector<Tensor> inputs{q, k, v, g, beta};
    if (s.init) inputs.push_back(s0);
    const auto want = subq::test::grads_of(
        [&](const std::vector<Tensor>& x) {
          const auto r = subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], s.init ? x[5] : Tensor(),
                                                          reset, opts);
          return (r.o * Wo).sum() + (r.final_state * Wf).sum();
        },
        inputs);
    const Grads got = explicit_backward(q, k, v, g, beta, s0, reset, Wo, Wf, s.L);
    subq::test::require_close("dq", got.dq, want[0], 1e-10);
    subq::test::require_close("dk", got.dk, want[1], 1e-10);
    subq::test::require_close("dv", got.dv, want[2], 1e-10);
    subq::test::require_close("dg", got.dg, want[3], 1e-10);
    subq::test::require_close("dbeta", got.dbeta, want[4], 1e-10);
    if (s.init) subq::test::require_close("ds0", got.ds0, want[5], 1e-10);
  }
}

TEST_CASE("gated delta dispatch on the CPU runs the references; kernel entries refuse", "[ops][gated_delta]") {
  using subq::test::randn;
  const Tensor q = randn({1, 2, 10, 64}, 1, 0.1).to(torch::kFloat32), k = randn({1, 2, 10, 64}, 2, 0.1).to(torch::kFloat32);
  const Tensor v = randn({1, 2, 10, 64}, 3).to(torch::kFloat32);
  const Tensor g = -torch::rand({1, 2, 10}), beta = torch::rand({1, 2, 10});
  subq::test::OpsImplEnv env;
  env.set(nullptr);
  subq::ops::GatedDeltaOptions o;
  o.chunk_size = 4;
  const auto ref = subq::ops::gated_delta_chunkwise(q, k, v, g, beta, {}, {}, o);
  CHECK(torch::equal(subq::ops::gated_delta(q, k, v, g, beta, {}, {}, o).o, ref.o));
  CHECK(!subq::ops::gated_delta_cuda_unsupported(q, v).empty());
  CHECK_THROWS_AS(subq::ops::gated_delta_cuda(q, k, v, g, beta), subq::InputError);
  const auto step = subq::ops::gated_delta_step(q.select(2, 0), k.select(2, 0), v.select(2, 0), g.select(2, 0),
                                                beta.select(2, 0), Tensor());
  const auto dec = subq::ops::gated_delta_decode(q.select(2, 0), k.select(2, 0), v.select(2, 0), g.select(2, 0),
                                                 beta.select(2, 0), Tensor());
  CHECK(torch::equal(dec.o, step.o));
  CHECK(torch::equal(dec.final_state, step.final_state));
  CHECK_THROWS_AS(subq::ops::gated_delta_step_cuda(q.select(2, 0), k.select(2, 0), v.select(2, 0), g.select(2, 0),
                                                   beta.select(2, 0), Tensor()),
                  subq::InputError);
  env.set("cuda");
  CHECK_THROWS_AS(subq::ops::gated_delta(q, k, v, g, beta), subq::InputError);
  env.set("reference");
  CHECK(torch::equal(subq::ops::gated_delta(q, k, v, g, beta, {}, {}, o).o, ref.o));
}
