// ssd_checks.cpp — argument checks for the SSD ops (see ssd_internal.h).
#include "ops/common/chunk_decay.h"
#include "ops/ssd/ssd_internal.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

SsdDims ssd_check(const std::string& op, const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                  const torch::Tensor& initial_state, const torch::Tensor& reset) {
  check_float(op, "x", x);
  if (x.dim() != 4) throw InputError(str(op, ": x has ", x.dim(), " dimensions; expected [B, H, T, P]"));
  check_float(op, "B", B);
  if (B.dim() != 4) throw InputError(str(op, ": B has ", B.dim(), " dimensions; expected [B, G, T, N]"));
  SsdDims d{x.size(0), x.size(1), x.size(2), x.size(3), B.size(1), B.size(3)};
  if (d.groups < 1 || d.heads % d.groups != 0)
    throw InputError(str(op, ": B has G = ", d.groups, " groups but x has H = ", d.heads,
                         " heads; H must be a multiple of G (each group serves H / G consecutive heads)"));
  check_shape(op, "B", B, {d.batch, d.groups, d.time, d.state_dim}, "[B, G, T, N]");
  check_float(op, "C", C);
  check_shape(op, "C", C, {d.batch, d.groups, d.time, d.state_dim}, "[B, G, T, N]");
  if (B.scalar_type() != x.scalar_type() || C.scalar_type() != x.scalar_type())
    throw InputError(str(op, ": x, B and C have dtypes ", x.scalar_type(), ", ", B.scalar_type(), ", ",
                         C.scalar_type(), "; cast them to one dtype"));
  check_float(op, "dt", dt);
  check_shape(op, "dt", dt, {d.batch, d.heads, d.time}, "[B, H, T]");
  check_float(op, "A", A);
  check_shape(op, "A", A, {d.heads}, "[H]");
  if (D.defined()) {
    check_float(op, "D", D);
    check_shape(op, "D", D, {d.heads}, "[H]");
    check_same_device(op, "D", D, x);
  }
  if (initial_state.defined()) {
    check_float(op, "initial_state", initial_state);
    check_shape(op, "initial_state", initial_state, {d.batch, d.heads, d.head_dim, d.state_dim}, "[B, H, P, N]");
    check_same_device(op, "initial_state", initial_state, x);
  }
  for (auto [name, t] : {std::pair<const char*, const torch::Tensor*>{"dt", &dt}, {"A", &A}, {"B", &B}, {"C", &C}})
    check_same_device(op, name, *t, x);
  check_reset(op, reset, d.batch, d.time, x);
  return d;
}

torch::Tensor ssd_groups_to_heads(const torch::Tensor& t, int64_t heads) {
  const int64_t g = t.size(1);
  if (g == heads) return t;
  std::vector<int64_t> sizes = t.sizes().vec();
  std::vector<int64_t> expanded = sizes;
  expanded.insert(expanded.begin() + 2, heads / g);
  std::vector<int64_t> out = sizes;
  out[1] = heads;
  return t.unsqueeze(2).expand(expanded).reshape(out);
}

SsdDims ssd_step_check(const std::string& op, const torch::Tensor& x_t, const torch::Tensor& dt_t,
                       const torch::Tensor& A, const torch::Tensor& B_t, const torch::Tensor& C_t,
                       const torch::Tensor& D, const torch::Tensor& state) {
  check_float(op, "x_t", x_t);
  check_float(op, "B_t", B_t);
  if (x_t.dim() != 3) throw InputError(str(op, ": x_t has ", x_t.dim(), " dimensions; expected [B, H, P]"));
  if (B_t.dim() != 3) throw InputError(str(op, ": B_t has ", B_t.dim(), " dimensions; expected [B, G, N]"));
  return ssd_check(op, x_t.unsqueeze(2), dt_t.defined() ? dt_t.unsqueeze(-1) : dt_t, A, B_t.unsqueeze(2),
                   C_t.defined() ? C_t.unsqueeze(2) : C_t, D, state, {});
}

}  // namespace subq::ops::detail
