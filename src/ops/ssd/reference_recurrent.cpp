// reference_recurrent.cpp — the SSD (Mamba-2) recurrence step by step: the ground truth for the
// chunkwise form and the kernels, and the decode step (ssd_step).
//
// Non-obvious decisions:
//  * One ssd_step per token, batched over B and H; autograd records the loop, so gradients of this form
//    are the reference gradients in the tests.
//  * A reset multiplies the carried state by 0 before the token (the zero state is all zeros for SSD).
#include "ops/common/chunk_decay.h"
#include "ops/ssd/ssd_internal.h"
#include "subq/core/error.h"
#include "subq/ops/ssd.h"

namespace subq::ops {

namespace {

// The step in the compute dtype; inputs already converted. x_t [B,H,P], dt_t [B,H], A [H], B_t/C_t [B,H,N]
// (per head), D [H] or undefined, state [B,H,P,N].
std::pair<torch::Tensor, torch::Tensor> step_impl(const torch::Tensor& x_t, const torch::Tensor& dt_t,
                                                  const torch::Tensor& A, const torch::Tensor& B_t,
                                                  const torch::Tensor& C_t, const torch::Tensor& D,
                                                  const torch::Tensor& state) {
  torch::Tensor decay = torch::exp(dt_t * A).unsqueeze(-1).unsqueeze(-1);    // [B,H,1,1]
  torch::Tensor input = (x_t * dt_t.unsqueeze(-1)).unsqueeze(-1) * B_t.unsqueeze(-2);  // [B,H,P,N]
  torch::Tensor h = decay * state + input;
  torch::Tensor y = torch::matmul(h, C_t.unsqueeze(-1)).squeeze(-1);  // [B,H,P]
  if (D.defined()) y = y + D.unsqueeze(-1) * x_t;
  return {y, h};
}

}  // namespace

SsdResult ssd_step(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                   const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                   const torch::Tensor& state) {
  const std::string op = "ssd_step";
  detail::SsdDims d = detail::ssd_step_check(op, x_t, dt_t, A, B_t, C_t, D, state);
  auto ct = detail::compute_dtype({&x_t, &dt_t, &A, &B_t, &C_t, &D, &state});
  torch::Tensor h = state.defined() ? state.to(ct)
                                    : torch::zeros({d.batch, d.heads, d.head_dim, d.state_dim},
                                                   x_t.options().dtype(ct));
  auto [y, h_new] = step_impl(x_t.to(ct), dt_t.to(ct), A.to(ct), detail::ssd_groups_to_heads(B_t.to(ct), d.heads),
                              detail::ssd_groups_to_heads(C_t.to(ct), d.heads), D.defined() ? D.to(ct) : D, h);
  return {y.to(x_t.scalar_type()), h_new};
}

SsdResult ssd_recurrent(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                        const torch::Tensor& initial_state, const torch::Tensor& reset) {
  detail::SsdDims d = detail::ssd_check("ssd_recurrent", x, dt, A, B, C, D, initial_state, reset);
  auto ct = detail::compute_dtype({&x, &dt, &A, &B, &C, &D, &initial_state});
  torch::Tensor xc = x.to(ct), dtc = dt.to(ct), Ac = A.to(ct);
  torch::Tensor Bh = detail::ssd_groups_to_heads(B.to(ct), d.heads);  // [B,H,T,N]
  torch::Tensor Ch = detail::ssd_groups_to_heads(C.to(ct), d.heads);
  torch::Tensor Dc = D.defined() ? D.to(ct) : D;
  torch::Tensor keep;  // [B,T,1,1,1]: 0 where a document starts
  if (reset.defined()) keep = reset.logical_not().to(ct).view({d.batch, d.time, 1, 1, 1});
  torch::Tensor h = initial_state.defined()
                        ? initial_state.to(ct)
                        : torch::zeros({d.batch, d.heads, d.head_dim, d.state_dim}, x.options().dtype(ct));
  std::vector<torch::Tensor> ys;
  ys.reserve(static_cast<size_t>(d.time));
  for (int64_t t = 0; t < d.time; ++t) {
    if (keep.defined()) h = h * keep.select(1, t);
    auto [y, h_new] = step_impl(xc.select(2, t), dtc.select(2, t), Ac, Bh.select(2, t), Ch.select(2, t), Dc, h);
    h = h_new;
    ys.push_back(y);
  }
  torch::Tensor y = ys.empty() ? torch::zeros_like(xc) : torch::stack(ys, 2);
  return {y.to(x.scalar_type()), h};
}

}  // namespace subq::ops
