// gated_delta_checks.cpp — argument checks and the optional in-op q/k normalisation (see
// gated_delta_internal.h).
#include <cmath>
#include <tuple>

#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

GatedDeltaDims gated_delta_check(const std::string& op, const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                 const torch::Tensor& initial_state, const torch::Tensor& reset) {
  check_float(op, "q", q);
  if (q.dim() != 4) throw InputError(str(op, ": q has ", q.dim(), " dimensions; expected [B, H, T, Dk]"));
  check_float(op, "v", v);
  if (v.dim() != 4) throw InputError(str(op, ": v has ", v.dim(), " dimensions; expected [B, H, T, Dv]"));
  GatedDeltaDims d{q.size(0), q.size(1), q.size(2), q.size(3), v.size(3)};
  check_float(op, "k", k);
  check_shape(op, "k", k, {d.batch, d.heads, d.time, d.key_dim}, "[B, H, T, Dk]");
  check_shape(op, "v", v, {d.batch, d.heads, d.time, d.value_dim}, "[B, H, T, Dv]");
  if (k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type())
    throw InputError(str(op, ": q, k and v have dtypes ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                         v.scalar_type(), "; cast them to one dtype"));
  check_float(op, "g", g);
  check_shape(op, "g", g, {d.batch, d.heads, d.time}, "[B, H, T]");
  check_float(op, "beta", beta);
  check_shape(op, "beta", beta, {d.batch, d.heads, d.time}, "[B, H, T]");
  if (initial_state.defined()) {
    check_float(op, "initial_state", initial_state);
    check_shape(op, "initial_state", initial_state, {d.batch, d.heads, d.value_dim, d.key_dim},
                "[B, H, Dv, Dk]");
    check_same_device(op, "initial_state", initial_state, q);
  }
  for (auto [name, t] : {std::pair<const char*, const torch::Tensor*>{"k", &k}, {"v", &v}, {"g", &g}, {"beta", &beta}})
    check_same_device(op, name, *t, q);
  check_reset(op, reset, d.batch, d.time, q);
  return d;
}

std::pair<torch::Tensor, torch::Tensor> gated_delta_prepare_qk(const torch::Tensor& q, const torch::Tensor& k,
                                                               bool normalize) {
  if (!normalize) return {q, k};
  auto l2 = [](const torch::Tensor& x) { return x * torch::rsqrt(x.square().sum(-1, true) + 1e-6); };
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return {l2(q) * scale, l2(k)};
}

GatedDeltaDims gated_delta_step_check(const std::string& op, const torch::Tensor& q_t, const torch::Tensor& k_t,
                                      const torch::Tensor& v_t, const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                      const torch::Tensor& state) {
  for (auto [name, t, want] : {std::tuple<const char*, const torch::Tensor*, int64_t>{"q_t", &q_t, 3},
                               {"k_t", &k_t, 3}, {"v_t", &v_t, 3}, {"g_t", &g_t, 2}, {"beta_t", &beta_t, 2}}) {
    check_float(op, name, *t);
    if (t->dim() != want)
      throw InputError(str(op, ": ", name, " has ", t->dim(), " dimensions; expected ", want,
                           want == 3 ? " ([B, H, D])" : " ([B, H])"));
  }
  return gated_delta_check(op, q_t.unsqueeze(2), k_t.unsqueeze(2), v_t.unsqueeze(2), g_t.unsqueeze(-1),
                           beta_t.unsqueeze(-1), state, {});
}

}  // namespace subq::ops::detail
