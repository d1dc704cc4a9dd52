// gated_delta_v2_testing.h — test helpers for the Gated DeltaNet v2 backward (gated_delta_v2.h), shared by
// the emulated test (tests/unit/test_gated_delta_v2_bwd_emulated.cpp) and the GPU test
// (tests/gpu/test_kernels_gated_delta_v2_bwd.cpp): what the v2 forward saves, built from the fp32 reference
// pieces (so the backward is tested without the v2 forward), and the backward's math in fp64 on those saved
// tensors (separates the kernels' own rounding from the contract's bf16 u, w, states).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "ops/gated_delta/gated_delta_v2.h"

namespace subq::test {

// Which saved tensors make_v2_saved rounds to the operand dtype (the contract: all three). Turning one off
// keeps it in fp32 (not a valid kernel input: for the fp64 attribution of errors in v2_fp64_on_saved only).
struct V2SavedRounding {
  bool w = true, u = true, states = true;
};

// What the v2 forward saves for q_op, k_op, v_op (operand dtype: bf16 / fp16), g, beta, s0 (or undefined),
// reset (bool [B, T] or undefined), computed in fp32 on their device and rounded where the contract says so.
inline subq::ops::detail::GdnV2Saved make_v2_saved(const torch::Tensor& q_op, const torch::Tensor& k_op,
                                                   const torch::Tensor& v_op, const torch::Tensor& g,
                                                   const torch::Tensor& beta, const torch::Tensor& s0,
                                                   const torch::Tensor& reset, const V2SavedRounding& rnd = {}) {
  using torch::Tensor;
  namespace d = subq::ops::detail;
  torch::NoGradGuard ng;
  const auto f32 = torch::kFloat32;
  const Tensor q = q_op.to(f32), k = k_op.to(f32), v = v_op.to(f32);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3), dv = v.size(3);
  Tensor tinv;
  const d::UnitLowerSolve solve = [&tinv](const torch::Tensor& A, const torch::Tensor& R) {
    const Tensor I = torch::eye(A.size(-1), A.options()).expand_as(A);
    tinv = torch::linalg_solve_triangular(I + A, I, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
    return torch::matmul(tinv, R);
  };
  const d::GatedDeltaChunks c = d::gated_delta_chunks(q, k, v, g, beta, reset, 64, false, f32, solve);
  const int64_t nc = c.chunks, C = c.chunk;
  Tensor S = s0.defined() ? s0.to(f32).clone() : torch::zeros({B, H, dv, dk}, q.options());
  std::vector<Tensor> states, us;
  for (int64_t i = 0; i < nc; ++i) {
    states.push_back(S);
    const Tensor U = c.u_tilde.select(2, i) - torch::matmul(c.w.select(2, i), S.transpose(-1, -2));
    us.push_back(U);
    S = c.gamma_end.select(2, i).unsqueeze(-1).unsqueeze(-1) * S + torch::matmul(U.transpose(-1, -2), c.k_end.select(2, i));
  }
  auto unchunk = [&](const Tensor& t) { return t.reshape({B, H, nc * C, t.size(-1)}).narrow(2, 0, T).contiguous(); };
  const auto dt = q_op.scalar_type();
  d::GdnV2Saved s;
  s.q = q_op.contiguous();
  s.k = k_op.contiguous();
  s.v = v_op.contiguous();
  s.g = g.to(f32).contiguous();
  s.beta = beta.to(f32).contiguous();
  if (reset.defined()) s.reset = reset.to(torch::kInt32).contiguous();
  s.has_s0 = s0.defined();
  Tensor t64 = torch::eye(64, q.options()).expand({B, H, nc, 64, 64}).clone();
  t64.narrow(-2, 0, C).narrow(-1, 0, C).copy_(tinv);
  s.tinv = t64;
  s.w = unchunk(c.w).to(rnd.w ? dt : f32);
  s.u = unchunk(torch::stack(us, 2)).to(rnd.u ? dt : f32);
  s.states = torch::stack(states, 2).to(rnd.states ? dt : f32).contiguous();
  return s;
}

// The backward's math in fp64 on the saved (rounded) tensors: what the kernels compute without their own
// roundings (P, G, dU, dW, Tinv, dRw in the operand dtype). The distance kernel <-> this separates the
// kernels' rounding from the contract's (bf16 u, w, states), which the comparison with autograd includes.
// Optional roundings (to s.q's dtype) of the kernels' intermediates, to attribute their errors.
struct V2KernelRounding {
  bool G = false;       // G (dstates) wherever it is an operand
  bool G_du = false;    // G only in dU's K G^T
  bool G_ke = false;    // G only in dK_end = U G
  bool G_dot = false;   // G only in <G, S_c>
  bool dU = false;      // dU (du)
  bool dW = false;      // dW (dw)
  bool Qe = false;      // diag(e) Q in the G update
  // from a list of names ("G G_du G_ke G_dot dU dW Qe")
  static V2KernelRounding of(const std::string& f) {
    auto has = [&](const char* n) {
      const std::string key = std::string(" ") + n + " ";
      return (" " + f + " ").find(key) != std::string::npos;
    };
    V2KernelRounding r;
    r.G = has("G"), r.G_du = has("G_du"), r.G_ke = has("G_ke"), r.G_dot = has("G_dot");
    r.dU = has("dU"), r.dW = has("dW"), r.Qe = has("Qe");
    return r;
  }
};

inline subq::ops::detail::GdnV2Grads v2_fp64_on_saved(const subq::ops::detail::GdnV2Saved& s,
                                                      const torch::Tensor& d_o, const torch::Tensor& dfinal,
                                                      const V2KernelRounding& kr = {}) {
  using torch::Tensor;
  const auto odt = s.q.scalar_type();
  auto rd = [odt](const Tensor& t, bool on) { return on ? t.to(odt).to(torch::kFloat64) : t; };
  namespace dd = subq::ops::detail;
  torch::NoGradGuard ng;
  const auto f64 = torch::kFloat64;
  auto tr = [](const Tensor& t) { return t.transpose(-1, -2); };
  auto rowsum = [](const Tensor& t) { return t.sum(-1); };
  const int64_t B = s.q.size(0), H = s.q.size(1), T = s.q.size(2), dk = s.q.size(3), dv = s.v.size(3);
  const dd::GatedDeltaChunks c =
      dd::gated_delta_chunks(s.q.to(f64), s.k.to(f64), s.v.to(f64), s.g.to(f64), s.beta.to(f64),
                             s.reset.defined() ? s.reset.to(torch::kBool) : Tensor(), 64, false, f64);
  const int64_t C = c.chunk, nc = c.chunks, tp = nc * C;
  auto chunk = [&](const Tensor& t) {
    return dd::pad_time(t.to(f64), 2, tp).reshape({B, H, nc, C, t.size(-1)});
  };
  const Tensor vc = chunk(s.v), U = chunk(s.u), W = chunk(s.w);
  const Tensor states = s.states.to(f64);
  const Tensor Tm = s.tinv.to(f64).narrow(-2, 0, C).narrow(-1, 0, C);
  const Tensor Ut = U + torch::matmul(W, tr(states));
  const Tensor bc = dd::pad_time(s.beta.to(f64), 2, tp).reshape({B, H, nc, C});
  const Tensor &Dm = c.decay, &e = c.gamma_in;
  const Tensor KK = torch::matmul(c.kc, tr(c.kc)), QK = torch::matmul(c.qc, tr(c.kc));
  const Tensor dO = d_o.defined() ? chunk(d_o) : torch::zeros({B, H, nc, C, dv}, vc.options());
  Tensor dQ = e.unsqueeze(-1) * torch::matmul(dO, states);
  Tensor de = rowsum(dO * torch::matmul(c.qc, tr(states)));
  const Tensor dstates = torch::matmul(tr(dO), rd(e.unsqueeze(-1) * c.qc, kr.Qe));
  const Tensor dOU = torch::matmul(dO, tr(U));
  const Tensor dP = dOU * Dm;
  dQ = dQ + torch::matmul(dP, c.kc);
  Tensor dK = torch::matmul(tr(dP), c.qc);
  Tensor dDm = dOU * QK;
  const Tensor dU_out = torch::matmul(tr(QK * Dm), dO);
  Tensor G = dfinal.defined() ? dfinal.to(f64) : torch::zeros({B, H, dv, dk}, vc.options());
  std::vector<Tensor> dUs(nc), dWs(nc), dKe(nc), dGam(nc);
  for (int64_t i = nc - 1; i >= 0; --i) {
    const Tensor Sc = states.select(2, i);
    const Tensor Gr = rd(G, kr.G);
    const Tensor dU = rd(dU_out.select(2, i) + torch::matmul(c.k_end.select(2, i), tr(rd(Gr, kr.G_du))), kr.dU);
    dUs[i] = dU;
    dKe[i] = torch::matmul(U.select(2, i), rd(Gr, kr.G_ke));
    dGam[i] = (rd(Gr, kr.G_dot) * Sc).sum({-1, -2});
    dWs[i] = rd(-torch::matmul(dU, Sc), kr.dW);
    G = c.gamma_end.select(-1, i).unsqueeze(-1).unsqueeze(-1) * G - torch::matmul(tr(dU), W.select(2, i)) +
        dstates.select(2, i);
  }
  const Tensor dX_v = torch::stack(dUs, 2), dX_w = torch::stack(dWs, 2);
  const Tensor dK_end = torch::stack(dKe, 2), dgamma = torch::stack(dGam, -1);
  const Tensor dR_v = torch::matmul(tr(Tm), dX_v), dR_w = torch::matmul(tr(Tm), dX_w);
  const Tensor dA = -(torch::matmul(dR_v, tr(Ut)) + torch::matmul(dR_w, tr(W))).tril(-1);
  const Tensor dV = bc.unsqueeze(-1) * dR_v;
  Tensor db = rowsum(dR_v * vc) + e * rowsum(dR_w * c.kc);
  dK = dK + (bc * e).unsqueeze(-1) * dR_w;
  de = de + bc * rowsum(dR_w * c.kc);
  const Tensor dKK = dA * bc.unsqueeze(-1) * Dm;
  db = db + rowsum(dA * KK * Dm);
  dDm = dDm + dA * bc.unsqueeze(-1) * KK;
  dK = dK + torch::matmul(dKK + tr(dKK), c.kc);
  dK = dK + Dm.select(-2, C - 1).unsqueeze(-1) * dK_end;
  dDm.select(-2, C - 1).add_(rowsum(dK_end * c.kc));
  const Tensor dDD = dDm * Dm;
  Tensor dgc = rowsum(dDD) - dDD.sum(-2) + de * e;
  dgc.select(-1, C - 1).add_(dgamma * c.gamma_end);
  const Tensor dg = dgc.flip(-1).cumsum(-1).flip(-1);
  auto unchunk = [&](const Tensor& t, int64_t d) { return t.reshape({B, H, tp, d}).narrow(2, 0, T); };
  dd::GdnV2Grads r;
  r.dq = unchunk(dQ, dk);
  r.dk = unchunk(dK, dk);
  r.dv = unchunk(dV, dv);
  r.dg = dg.reshape({B, H, tp}).narrow(2, 0, T);
  r.dbeta = db.reshape({B, H, tp}).narrow(2, 0, T);
  r.ds0 = G;
  return r;
}

}  // namespace subq::test
