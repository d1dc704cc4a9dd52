// reference_recurrent.cpp — the mLSTM recurrence as a plain loop over time (LibTorch ops, batched over
// B and H): the ground truth for the chunkwise form and the kernels, and the decode step.
//
// Decisions:
//  * Math in fp32 (fp64 for fp64 inputs) whatever the input dtype; h is cast back to q's dtype.
//  * The per-step update is written exactly as the formulas in mlstm.h (no algebraic shortcuts), so this
//    file stays the readable definition of the op.
//  * Resets use torch::where (not a multiply by 0/1), so a non-finite state before a reset cannot leak
//    NaN into the next document.
//  * Argument validation for both references lives here (mlstm_detail::check_sequence).
#include <cmath>

#include "../common/op_inputs.h"
#include "mlstm_internal.h"
#include "subq/core/error.h"

namespace subq::ops {

using torch::Tensor;
using detail::compute_dtype;
using detail::expect_optional_mask;
using detail::expect_shape;

MlstmState MlstmState::zeros(int64_t batch, int64_t heads, int64_t dk, int64_t dv, const torch::TensorOptions& opts) {
  return {torch::zeros({batch, heads, dk, dv}, opts), torch::zeros({batch, heads, dk}, opts),
          torch::zeros({batch, heads}, opts)};
}

namespace mlstm_detail {

namespace {
void check_state(const char* op, const MlstmState& s, const Dims& d, const char* what) {
  if (!s.defined()) return;
  if (!s.c.defined() || !s.n.defined() || !s.m.defined())
    throw InputError(str(op, ": ", what, " must give all of c, n and m (or none of them for the zero state)"));
  expect_shape(op, str(what, ".c").c_str(), s.c, {d.b, d.h, d.dk, d.dv}, "[B, H, Dk, Dv]");
  expect_shape(op, str(what, ".n").c_str(), s.n, {d.b, d.h, d.dk}, "[B, H, Dk]");
  expect_shape(op, str(what, ".m").c_str(), s.m, {d.b, d.h}, "[B, H]");
}
}  // namespace

Dims check_sequence(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& igate,
                    const Tensor& fgate, const MlstmState& initial, const Tensor& reset,
                    const char* state_name) {
  detail::expect_ndim(op, "q", q, 4, "[B, H, T, Dk]");
  Dims d{q.size(0), q.size(1), q.size(2), q.size(3), 0};
  detail::expect_ndim(op, "v", v, 4, "[B, H, T, Dv]");
  d.dv = v.size(3);
  expect_shape(op, "k", k, {d.b, d.h, d.t, d.dk}, "[B, H, T, Dk] (like q)");
  expect_shape(op, "v", v, {d.b, d.h, d.t, -1}, "[B, H, T, Dv]");
  if (d.dk < 1 || d.dv < 1) throw InputError(str(op, ": head dims must be >= 1, got Dk = ", d.dk, ", Dv = ", d.dv));
  expect_shape(op, "igate", igate, {d.b, d.h, d.t}, "[B, H, T]");
  expect_shape(op, "fgate", fgate, {d.b, d.h, d.t}, "[B, H, T]");
  if (k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type())
    throw InputError(str(op, ": q, k and v must share one dtype, got ", c10::toString(q.scalar_type()), ", ",
                         c10::toString(k.scalar_type()), ", ", c10::toString(v.scalar_type())));
  check_state(op, initial, d, state_name);
  expect_optional_mask(op, "reset", reset, {d.b, d.t}, "[B, T]");
  detail::expect_same_device(op, q, "q", {k, v, igate, fgate, initial.c, initial.n, initial.m, reset},
                             {"k", "v", "igate", "fgate", "the state's c", "the state's n", "the state's m", "reset"});
  return d;
}

MlstmState initial_state(const MlstmState& initial, const Dims& d, torch::ScalarType ct, const torch::Device& dev) {
  if (!initial.defined()) return MlstmState::zeros(d.b, d.h, d.dk, d.dv, torch::TensorOptions().dtype(ct).device(dev));
  return {initial.c.to(ct), initial.n.to(ct), initial.m.to(ct)};
}

}  // namespace mlstm_detail

namespace {

// One step on compute-dtype tensors: q, k [B,H,Dk], v [B,H,Dv], ig, fg [B,H], reset [B] bool or undefined.
// Returns h [B,H,Dv] and replaces `s` by the new state.
Tensor step_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ig, const Tensor& fg,
                 const Tensor& reset, MlstmState& s) {
  Tensor c = s.c, n = s.n, m = s.m;
  if (reset.defined()) {
    Tensor r = reset.view({-1, 1});  // [B, 1]
    c = torch::where(r.unsqueeze(-1).unsqueeze(-1), 0.0, c);
    n = torch::where(r.unsqueeze(-1), 0.0, n);
    m = torch::where(r, 0.0, m);
  }
  Tensor lf = torch::log_sigmoid(fg);
  Tensor m_new = torch::maximum(lf + m, ig);
  Tensor f_act = torch::exp(lf + m - m_new);
  Tensor i_act = torch::exp(ig - m_new);
  Tensor c_new = f_act.unsqueeze(-1).unsqueeze(-1) * c + i_act.unsqueeze(-1).unsqueeze(-1) * (k.unsqueeze(-1) * v.unsqueeze(-2));
  Tensor n_new = f_act.unsqueeze(-1) * n + i_act.unsqueeze(-1) * k;
  Tensor q_hat = q * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  Tensor num = torch::matmul(q_hat.unsqueeze(-2), c_new).squeeze(-2);  // [B, H, Dv]
  Tensor qn = (q_hat * n_new).sum(-1);                                 // [B, H]
  Tensor den = torch::maximum(qn.abs(), torch::exp(-m_new)) + kMlstmEps;
  s = {c_new, n_new, m_new};
  return num / den.unsqueeze(-1);
}

}  // namespace

MlstmResult mlstm_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& igate,
                            const Tensor& fgate, const MlstmState& initial, const Tensor& reset) {
  const char* op = "mlstm_recurrent";
  auto d = mlstm_detail::check_sequence(op, q, k, v, igate, fgate, initial, reset);
  auto ct = compute_dtype(q.scalar_type());
  MlstmState s = mlstm_detail::initial_state(initial, d, ct, q.device());
  Tensor qc = q.to(ct), kc = k.to(ct), vc = v.to(ct), ic = igate.to(ct), fc = fgate.to(ct);
  std::vector<Tensor> hs;
  hs.reserve(static_cast<size_t>(d.t));
  for (int64_t t = 0; t < d.t; ++t) {
    Tensor r = reset.defined() ? reset.select(1, t) : Tensor();
    hs.push_back(step_impl(qc.select(2, t), kc.select(2, t), vc.select(2, t), ic.select(2, t), fc.select(2, t), r, s));
  }
  Tensor h = d.t > 0 ? torch::stack(hs, 2) : torch::zeros({d.b, d.h, 0, d.dv}, qc.options());
  return {h.to(q.scalar_type()), s};
}

MlstmResult mlstm_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& igate, const Tensor& fgate,
                       const MlstmState& state, const Tensor& reset) {
  // Validate as a length-1 sequence so the messages and rules are the sequence ones, with step layouts.
  const char* op = "mlstm_step";
  detail::expect_ndim(op, "q", q, 3, "[B, H, Dk]");
  detail::expect_ndim(op, "v", v, 3, "[B, H, Dv]");
  expect_shape(op, "k", k, {q.size(0), q.size(1), q.size(2)}, "[B, H, Dk] (like q)");
  expect_shape(op, "v", v, {q.size(0), q.size(1), -1}, "[B, H, Dv]");
  expect_shape(op, "igate", igate, {q.size(0), q.size(1)}, "[B, H]");
  expect_shape(op, "fgate", fgate, {q.size(0), q.size(1)}, "[B, H]");
  expect_optional_mask(op, "reset", reset, {q.size(0)}, "[B]");
  auto d = mlstm_detail::check_sequence(op, q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), igate.unsqueeze(2),
                                        fgate.unsqueeze(2), state, reset.defined() ? reset.unsqueeze(1) : Tensor(), "state");
  auto ct = compute_dtype(q.scalar_type());
  MlstmState s = mlstm_detail::initial_state(state, d, ct, q.device());
  Tensor h = step_impl(q.to(ct), k.to(ct), v.to(ct), igate.to(ct), fgate.to(ct), reset, s);
  return {h.to(q.scalar_type()), s};
}

}  // namespace subq::ops
