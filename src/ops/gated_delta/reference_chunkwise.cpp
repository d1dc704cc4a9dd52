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
// the decay matrices and both output matmuls run for all chunks at once. The chunk-parallel parts are
// detail::gated_delta_chunks / gated_delta_chunk_output, shared with the CUDA path (gated_delta_cuda.cpp),
// which replaces only the loop over chunks by its scan kernels.
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

namespace detail {

GatedDeltaChunks gated_delta_chunks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& reset,
                                    int64_t chunk_size, bool l2_normalize_qk, torch::ScalarType ct,
                                    const UnitLowerSolve& solve) {
  GatedDeltaChunks c;
  const int64_t bs = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t cs = std::min(chunk_size, T);  // a chunk longer than T only pads
  const int64_t nc = (T + cs - 1) / cs, tp = nc * cs;
  c.chunk = cs;
  c.chunks = nc;
  c.time = T;

  auto [qn, kn] = gated_delta_prepare_qk(q.to(ct), k.to(ct), l2_normalize_qk);
  c.qc = pad_time(qn, 2, tp).reshape({bs, H, nc, cs, dk});
  c.kc = pad_time(kn, 2, tp).reshape({bs, H, nc, cs, dk});
  torch::Tensor vc = pad_time(v.to(ct), 2, tp).reshape({bs, H, nc, cs, dv});
  torch::Tensor gc = pad_time(g.to(ct), 2, tp).reshape({bs, H, nc, cs});
  torch::Tensor bc = pad_time(beta.to(ct), 2, tp).reshape({bs, H, nc, cs});

  ChunkSegments seg;
  torch::Tensor same;
  if (reset.defined()) {
    seg = chunk_segments(pad_time(reset, 1, tp), cs);
    same = seg.same_segment.view({bs, 1, nc, cs, cs});
  }
  c.decay = torch::exp(segsum(gc, same));  // D, [B,H,nc,cs,cs], 0 above the diagonal
  torch::Tensor cum = gc.cumsum(-1);
  c.gamma_in = torch::exp(cum);                    // [B,H,nc,cs]
  c.gamma_end = torch::exp(cum.select(-1, cs - 1));  // [B,H,nc]
  if (reset.defined()) {
    c.gamma_in = c.gamma_in * seg.from_carry.view({bs, 1, nc, cs}).to(ct);
    c.gamma_end = c.gamma_end * seg.passes.view({bs, 1, nc}).to(ct);
  }

  // UT transform for all chunks: (I + A) [U~ | W] = [diag(beta) V | diag(beta e^Gamma) K].
  torch::Tensor kk = torch::matmul(c.kc, c.kc.transpose(-1, -2));
  torch::Tensor A = (kk * c.decay * bc.unsqueeze(-1)).tril(-1);
  torch::Tensor rhs = torch::cat({vc * bc.unsqueeze(-1), c.kc * (bc * c.gamma_in).unsqueeze(-1)}, -1);
  torch::Tensor x;
  if (solve) {
    x = solve(A, rhs);
  } else {
    torch::Tensor eye = torch::eye(cs, q.options().dtype(ct));
    x = torch::linalg_solve_triangular(A + eye, rhs, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  }
  c.u_tilde = x.narrow(-1, 0, dv);  // [B,H,nc,cs,dv]
  c.w = x.narrow(-1, dv, dk);       // [B,H,nc,cs,dk]
  c.k_end = c.kc * c.decay.select(-2, cs - 1).unsqueeze(-1);  // D_Ci k_i, [B,H,nc,cs,dk]
  return c;
}

torch::Tensor gated_delta_chunk_output(const GatedDeltaChunks& c, const torch::Tensor& u_all,
                                       const torch::Tensor& states_in) {
  const int64_t bs = c.qc.size(0), H = c.qc.size(1), dv = u_all.size(-1);
  torch::Tensor o = torch::matmul(c.qc * c.gamma_in.unsqueeze(-1), states_in.transpose(-1, -2)) +
                    torch::matmul(torch::matmul(c.qc, c.kc.transpose(-1, -2)) * c.decay, u_all);
  return o.reshape({bs, H, c.chunks * c.chunk, dv}).narrow(2, 0, c.time);
}

}  // namespace detail

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
  const detail::GatedDeltaChunks c =
      detail::gated_delta_chunks(q, k, v, g, beta, reset, options.chunk_size, options.l2_normalize_qk, ct);

  // Carried state across chunks (the only sequential part).
  std::vector<torch::Tensor> carried, us;
  carried.reserve(static_cast<size_t>(c.chunks));
  us.reserve(static_cast<size_t>(c.chunks));
  for (int64_t i = 0; i < c.chunks; ++i) {
    carried.push_back(s);
    torch::Tensor u = c.u_tilde.select(2, i) - torch::matmul(c.w.select(2, i), s.transpose(-1, -2));  // [B,H,cs,dv]
    us.push_back(u);
    s = c.gamma_end.select(-1, i).unsqueeze(-1).unsqueeze(-1) * s +
        torch::matmul(u.transpose(-1, -2), c.k_end.select(2, i));
  }
  torch::Tensor o = detail::gated_delta_chunk_output(c, torch::stack(us, 2), torch::stack(carried, 2));
  return {o.to(q.scalar_type()), s};
}

}  // namespace subq::ops
