// reference_chunkwise.cpp — the gated delta rule in chunkwise (WY / UT transform) form with LibTorch
// ops: the portable training path (CPU and any GPU), autograd-able, any T and chunk size.
//
// Derivation (one chunk, local steps t = 1..C, carried state S_0, Gamma_t = sum_{r<=t} g_r,
// D_ti = exp(Gamma_t - Gamma_i) for i <= t). Write the update as S_t = alpha_t S_{t-1} + u_t k_t^T with
// the "pseudo-value" u_t = beta_t (v_t - alpha_t S_{t-1} k_t). Unrolling S_{t-1} inside the chunk gives
//   u_t + sum_{i<t} beta_t D_ti (k_t . k_i) u_i = beta_t v_t - beta_t exp(Gamma_t) S_0 k_t,
// i.e. (I + A) U = diag(beta) V - diag(beta exp(Gamma)) K S_0^T with A strictly lower triangular,
// A_ti = beta_t D_ti (k_t . k_i). One unit-lower-triangular solve per chunk (all chunks batched) gives
//   U~ = (I + A)^-1 diag(beta) V   and   W = (I + A)^-1 diag(beta exp(Gamma)) K,   U = U~ - W S_0^T.
// Then   o_t = exp(Gamma_t) S_0 q_t + sum_{i<=t} D_ti (q_t . k_i) u_i       (O = diag(e^Gamma) Q S_0^T
//        + (Q K^T o D) U) and the chunk's end state S_C = exp(Gamma_C) S_0 + sum_i D_Ci u_i k_i^T.
// Only U = U~ - W S_0^T and S_C depend on the carried state: that is the loop over chunks; the solve,
// the decay matrices and both output matmuls run for all chunks at once.
// Non-obvious decisions:
//  * D comes from the stable segsum construction (ops/common/chunk_decay.h), exp(Gamma_t) from a direct
//    cumulative sum: no exponent is a difference of two large cumulative sums, and nothing is divided by
//    a decay (decays can underflow to 0 over a chunk; the formulas stay finite).
//  * Resets: D is masked across documents (which also removes cross-document terms from A and from the
//    end-state row D_C.), exp(Gamma_t) is masked for tokens after a reset in the chunk (they do not see
//    S_0, in W and in O), and exp(Gamma_C) is masked when the chunk contains a reset.
//  * The last chunk is zero-padded: k = v = q = 0, g = 0, beta = 0 leave the state unchanged.
//  * The solve is torch::linalg_solve_triangular(unitriangular) on [V beta | K beta e^Gamma] together.
#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"

namespace subq::ops {

GatedDeltaResult gated_delta_chunkwise(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                       const torch::Tensor& g, const torch::Tensor& beta,
                                       const torch::Tensor& initial_state, const torch::Tensor& reset,
                                       const GatedDeltaOptions& options) {
  const std::string op = "gated_delta_chunkwise";
  detail::GatedDeltaDims d = detail::gated_delta_check(op, q, k, v, g, beta, initial_state, reset);
  detail::check_chunk_size(op, options.chunk_size);
  auto ct = detail::compute_dtype({&q, &k, &v, &g, &beta, &initial_state});
  const int64_t bs = d.batch, H = d.heads, dk = d.key_dim, dv = d.value_dim;
  torch::Tensor s = initial_state.defined() ? initial_state.to(ct)
                                            : torch::zeros({bs, H, dv, dk}, q.options().dtype(ct));
  if (d.time == 0) return {torch::zeros({bs, H, 0, dv}, q.options()), s};
  const int64_t cs = std::min(options.chunk_size, d.time);  // a chunk longer than T only pads
  const int64_t nc = (d.time + cs - 1) / cs, tp = nc * cs;

  auto [qn, kn] = detail::gated_delta_prepare_qk(q.to(ct), k.to(ct), options.l2_normalize_qk);
  torch::Tensor qc = detail::pad_time(qn, 2, tp).reshape({bs, H, nc, cs, dk});
  torch::Tensor kc = detail::pad_time(kn, 2, tp).reshape({bs, H, nc, cs, dk});
  torch::Tensor vc = detail::pad_time(v.to(ct), 2, tp).reshape({bs, H, nc, cs, dv});
  torch::Tensor gc = detail::pad_time(g.to(ct), 2, tp).reshape({bs, H, nc, cs});
  torch::Tensor bc = detail::pad_time(beta.to(ct), 2, tp).reshape({bs, H, nc, cs});

  detail::ChunkSegments seg;
  torch::Tensor same;
  if (reset.defined()) {
    seg = detail::chunk_segments(detail::pad_time(reset, 1, tp), cs);
    same = seg.same_segment.view({bs, 1, nc, cs, cs});
  }
  torch::Tensor decay = torch::exp(detail::segsum(gc, same));  // D, [B,H,nc,cs,cs], 0 above the diagonal
  torch::Tensor cum = gc.cumsum(-1);
  torch::Tensor gamma_in = torch::exp(cum);                    // [B,H,nc,cs]
  torch::Tensor gamma_end = torch::exp(cum.select(-1, cs - 1));  // [B,H,nc]
  if (reset.defined()) {
    gamma_in = gamma_in * seg.from_carry.view({bs, 1, nc, cs}).to(ct);
    gamma_end = gamma_end * seg.passes.view({bs, 1, nc}).to(ct);
  }

  // UT transform for all chunks: (I + A) [U~ | W] = [diag(beta) V | diag(beta e^Gamma) K].
  torch::Tensor kk = torch::matmul(kc, kc.transpose(-1, -2));
  torch::Tensor A = (kk * decay * bc.unsqueeze(-1)).tril(-1);
  torch::Tensor eye = torch::eye(cs, q.options().dtype(ct));
  torch::Tensor rhs = torch::cat({vc * bc.unsqueeze(-1), kc * (bc * gamma_in).unsqueeze(-1)}, -1);
  torch::Tensor x = torch::linalg_solve_triangular(A + eye, rhs, /*upper=*/false, /*left=*/true,
                                                   /*unitriangular=*/true);
  torch::Tensor u_tilde = x.narrow(-1, 0, dv);  // [B,H,nc,cs,dv]
  torch::Tensor w = x.narrow(-1, dv, dk);       // [B,H,nc,cs,dk]
  torch::Tensor k_end = kc * decay.select(-2, cs - 1).unsqueeze(-1);  // D_Ci k_i, [B,H,nc,cs,dk]

  // Carried state across chunks (the only sequential part).
  std::vector<torch::Tensor> carried, us;
  carried.reserve(static_cast<size_t>(nc));
  us.reserve(static_cast<size_t>(nc));
  for (int64_t c = 0; c < nc; ++c) {
    carried.push_back(s);
    torch::Tensor u = u_tilde.select(2, c) - torch::matmul(w.select(2, c), s.transpose(-1, -2));  // [B,H,cs,dv]
    us.push_back(u);
    s = gamma_end.select(-1, c).unsqueeze(-1).unsqueeze(-1) * s +
        torch::matmul(u.transpose(-1, -2), k_end.select(2, c));
  }
  torch::Tensor u_all = torch::stack(us, 2);          // [B,H,nc,cs,dv]
  torch::Tensor states_in = torch::stack(carried, 2);  // [B,H,nc,dv,dk]
  torch::Tensor o = torch::matmul(qc * gamma_in.unsqueeze(-1), states_in.transpose(-1, -2)) +
                    torch::matmul(torch::matmul(qc, kc.transpose(-1, -2)) * decay, u_all);
  o = o.reshape({bs, H, tp, dv}).narrow(2, 0, d.time);
  return {o.to(q.scalar_type()), s};
}

}  // namespace subq::ops
