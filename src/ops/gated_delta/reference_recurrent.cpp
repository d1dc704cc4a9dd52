// reference_recurrent.cpp — the gated delta rule step by step: the ground truth for the chunkwise form
// and the kernels, and the decode step (gated_delta_step).
//
// Non-obvious decisions:
//  * The step is written in "delta" form: S' = alpha S; S = S' + beta (v - S' k) k^T, which equals
//    alpha S (I - beta k k^T) + beta v k^T without ever forming the Dk x Dk matrix.
//  * A reset multiplies the carried state by 0 before the token (the zero state is all zeros).
#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"

namespace subq::ops {

namespace {

// In the compute dtype, q/k already prepared. q_t, k_t [B,H,Dk], v_t [B,H,Dv], g_t, beta_t [B,H],
// state [B,H,Dv,Dk]. Returns (o_t, new state).
std::pair<torch::Tensor, torch::Tensor> step_impl(const torch::Tensor& q_t, const torch::Tensor& k_t,
                                                  const torch::Tensor& v_t, const torch::Tensor& g_t,
                                                  const torch::Tensor& beta_t, const torch::Tensor& state) {
  torch::Tensor s = torch::exp(g_t).unsqueeze(-1).unsqueeze(-1) * state;
  torch::Tensor recalled = torch::matmul(s, k_t.unsqueeze(-1)).squeeze(-1);  // S' k, [B,H,Dv]
  torch::Tensor u = beta_t.unsqueeze(-1) * (v_t - recalled);
  s = s + u.unsqueeze(-1) * k_t.unsqueeze(-2);
  torch::Tensor o = torch::matmul(s, q_t.unsqueeze(-1)).squeeze(-1);
  return {o, s};
}

}  // namespace

GatedDeltaResult gated_delta_step(const torch::Tensor& q_t, const torch::Tensor& k_t, const torch::Tensor& v_t,
                                  const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                  const torch::Tensor& state, const GatedDeltaOptions& options) {
  const std::string op = "gated_delta_step";
  detail::GatedDeltaDims d = detail::gated_delta_step_check(op, q_t, k_t, v_t, g_t, beta_t, state);
  auto ct = detail::compute_dtype({&q_t, &k_t, &v_t, &g_t, &beta_t, &state});
  auto [q, k] = detail::gated_delta_prepare_qk(q_t.to(ct), k_t.to(ct), options.l2_normalize_qk);
  torch::Tensor s = state.defined() ? state.to(ct)
                                    : torch::zeros({d.batch, d.heads, d.value_dim, d.key_dim}, q_t.options().dtype(ct));
  auto [o, s_new] = step_impl(q, k, v_t.to(ct), g_t.to(ct), beta_t.to(ct), s);
  return {o.to(q_t.scalar_type()), s_new};
}

GatedDeltaResult gated_delta_recurrent(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                       const torch::Tensor& g, const torch::Tensor& beta,
                                       const torch::Tensor& initial_state, const torch::Tensor& reset,
                                       const GatedDeltaOptions& options) {
  detail::GatedDeltaDims d = detail::gated_delta_check("gated_delta_recurrent", q, k, v, g, beta, initial_state, reset);
  auto ct = detail::compute_dtype({&q, &k, &v, &g, &beta, &initial_state});
  auto [qc, kc] = detail::gated_delta_prepare_qk(q.to(ct), k.to(ct), options.l2_normalize_qk);
  torch::Tensor vc = v.to(ct), gc = g.to(ct), bc = beta.to(ct);
  torch::Tensor keep;  // [B,T,1,1,1]: 0 where a document starts
  if (reset.defined()) keep = reset.logical_not().to(ct).view({d.batch, d.time, 1, 1, 1});
  torch::Tensor s = initial_state.defined()
                        ? initial_state.to(ct)
                        : torch::zeros({d.batch, d.heads, d.value_dim, d.key_dim}, q.options().dtype(ct));
  std::vector<torch::Tensor> os;
  os.reserve(static_cast<size_t>(d.time));
  for (int64_t t = 0; t < d.time; ++t) {
    if (keep.defined()) s = s * keep.select(1, t);
    auto [o, s_new] = step_impl(qc.select(2, t), kc.select(2, t), vc.select(2, t), gc.select(2, t),
                                bc.select(2, t), s);
    s = s_new;
    os.push_back(o);
  }
  torch::Tensor o = os.empty() ? torch::zeros({d.batch, d.heads, 0, d.value_dim}, q.options().dtype(ct))
                               : torch::stack(os, 2);
  return {o.to(q.scalar_type()), s};
}

}  // namespace subq::ops
