// reference_recurrent.cpp — the sLSTM recurrence as a LibTorch-ops loop over time (see slstm.h). There is
// no chunkwise form: R h_{t-1} sits inside the gate nonlinearities, so the op is strictly sequential.
//
// Decisions:
//  * The per-head recurrent matmul is one bmm per step over heads: h_{t-1} as [H, B, Dh] times R laid out
//    as [H, Dh, 4 Dh] (prepared once per call), so all four gates come from a single product.
//  * Fresh units (n == 0, the zero state) take m_t = i~_t and f_t = 0, as NX-AI's cell does. The forget
//    branch is made finite before exp on those units (torch::where on the argument, then on the result):
//    exp(m + lf - i~) can overflow there, and a where on an inf branch would give NaN gradients.
//  * Resets use torch::where, so nothing from before a reset (not even a NaN) reaches the next document.
//  * Math in fp32 (fp64 for fp64 pre); h is cast back to pre's dtype.
#include "../common/op_inputs.h"
#include "subq/core/error.h"
#include "subq/ops/slstm.h"

namespace subq::ops {

using torch::Tensor;

SlstmState SlstmState::zeros(int64_t batch, int64_t heads, int64_t dh, const torch::TensorOptions& opts) {
  return {torch::zeros({batch, heads, dh}, opts), torch::zeros({batch, heads, dh}, opts),
          torch::zeros({batch, heads, dh}, opts), torch::zeros({batch, heads, dh}, opts)};
}

namespace {

struct Dims {
  int64_t b = 0, t = 0, h = 0, dh = 0;
};

// Checks r, the state and reset against the sizes taken from pre.
void check_rest(const char* op, const Dims& d, const Tensor& pre, const Tensor& r, const SlstmState& s,
                const char* state_name, const Tensor& reset, const std::vector<int64_t>& reset_sizes,
                const char* reset_layout) {
  detail::expect_shape(op, "r", r, {4, d.h, d.dh, d.dh}, "[4, H, Dh, Dh]");
  if (s.defined()) {
    if (!s.h.defined() || !s.c.defined() || !s.n.defined() || !s.m.defined())
      throw InputError(str(op, ": ", state_name, " must give all of h, c, n and m (or none for the zero state)"));
    for (auto [t, name] : std::initializer_list<std::pair<const Tensor*, const char*>>{
             {&s.h, "h"}, {&s.c, "c"}, {&s.n, "n"}, {&s.m, "m"}})
      detail::expect_shape(op, str(state_name, ".", name).c_str(), *t, {d.b, d.h, d.dh}, "[B, H, Dh]");
  }
  detail::expect_optional_mask(op, "reset", reset, reset_sizes, reset_layout);
  detail::expect_same_device(op, pre, "pre", {r, s.h, s.c, s.n, s.m, reset},
                             {"r", "the state's h", "the state's c", "the state's n", "the state's m", "reset"});
}

SlstmState initial_state(const SlstmState& s, const Dims& d, torch::ScalarType ct, const torch::Device& dev) {
  if (!s.defined()) return SlstmState::zeros(d.b, d.h, d.dh, torch::TensorOptions().dtype(ct).device(dev));
  return {s.h.to(ct), s.c.to(ct), s.n.to(ct), s.m.to(ct)};
}

// R [4, H, Dh, Dh] -> [H, Dh, 4 Dh], column g * Dh + j.
Tensor head_major(const Tensor& r) {
  return r.permute({1, 2, 0, 3}).reshape({r.size(1), r.size(2), 4 * r.size(3)});
}

// One step on compute-dtype tensors: pre [B, 4, H, Dh], rh = head_major(R), reset [B] or undefined.
Tensor step_impl(const Tensor& pre, const Tensor& rh, const Tensor& reset, SlstmState& s) {
  Tensor h = s.h, c = s.c, n = s.n, m = s.m;
  if (reset.defined()) {
    Tensor rr = reset.view({-1, 1, 1});
    h = torch::where(rr, 0.0, h);
    c = torch::where(rr, 0.0, c);
    n = torch::where(rr, 0.0, n);
    m = torch::where(rr, 0.0, m);
  }
  const int64_t B = pre.size(0), H = pre.size(2), Dh = pre.size(3);
  SUBQ_CHECK(rh.dim() == 3 && rh.size(0) == H && rh.size(1) == Dh && rh.size(2) == 4 * Dh, "R as [H, Dh, 4 Dh] is ",
             detail::shape_str(rh.sizes()));
  // [H, B, Dh] @ [H, Dh, 4 Dh] -> [H, B, 4, Dh] -> [B, 4, H, Dh]
  Tensor rec = torch::bmm(h.transpose(0, 1), rh).view({H, B, 4, Dh}).permute({1, 2, 0, 3});
  Tensor g = pre + rec;
  Tensor z = g.select(1, kSlstmZ), ig = g.select(1, kSlstmI), fg = g.select(1, kSlstmF), og = g.select(1, kSlstmO);
  Tensor fresh = n.eq(0);
  Tensor log_fm = m + torch::log_sigmoid(fg);
  Tensor m_new = torch::where(fresh, ig, torch::maximum(ig, log_fm));
  Tensor f_act = torch::where(fresh, 0.0, torch::exp(torch::where(fresh, 0.0, log_fm - m_new)));
  Tensor i_act = torch::exp(ig - m_new);
  Tensor c_new = f_act * c + i_act * torch::tanh(z);
  Tensor n_new = f_act * n + i_act;
  Tensor h_new = torch::sigmoid(og) * c_new / n_new;
  s = {h_new, c_new, n_new, m_new};
  return h_new;
}

}  // namespace

SlstmResult slstm_recurrent(const Tensor& pre, const Tensor& r, const SlstmState& initial, const Tensor& reset) {
  const char* op = "slstm_recurrent";
  detail::expect_ndim(op, "pre", pre, 5, "[B, T, 4, H, Dh]");
  if (pre.size(2) != 4)
    throw InputError(str(op, ": pre must have shape [B, T, 4, H, Dh] (gates z, i, f, o), got ",
                         detail::shape_str(pre.sizes())));
  Dims d{pre.size(0), pre.size(1), pre.size(3), pre.size(4)};
  check_rest(op, d, pre, r, initial, "initial", reset, {d.b, d.t}, "[B, T]");
  const auto ct = detail::compute_dtype(pre.scalar_type());
  SlstmState s = initial_state(initial, d, ct, pre.device());
  const Tensor pc = pre.to(ct);
  const Tensor rh = head_major(r.to(ct));
  std::vector<Tensor> hs;
  hs.reserve(static_cast<size_t>(d.t));
  for (int64_t t = 0; t < d.t; ++t)
    hs.push_back(step_impl(pc.select(1, t), rh, reset.defined() ? reset.select(1, t) : Tensor(), s));
  Tensor h = d.t > 0 ? torch::stack(hs, 1) : torch::zeros({d.b, 0, d.h, d.dh}, pc.options());
  return {h.to(pre.scalar_type()), s};
}

SlstmResult slstm_step(const Tensor& pre, const Tensor& r, const SlstmState& state, const Tensor& reset) {
  const char* op = "slstm_step";
  detail::expect_ndim(op, "pre", pre, 4, "[B, 4, H, Dh]");
  if (pre.size(1) != 4)
    throw InputError(str(op, ": pre must have shape [B, 4, H, Dh] (gates z, i, f, o), got ",
                         detail::shape_str(pre.sizes())));
  Dims d{pre.size(0), 1, pre.size(2), pre.size(3)};
  check_rest(op, d, pre, r, state, "state", reset, {d.b}, "[B]");
  const auto ct = detail::compute_dtype(pre.scalar_type());
  SlstmState s = initial_state(state, d, ct, pre.device());
  Tensor h = step_impl(pre.to(ct), head_major(r.to(ct)), reset, s);
  return {h.to(pre.scalar_type()), s};
}

}  // namespace subq::ops
