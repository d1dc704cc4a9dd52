// reference_chunkwise.cpp — the SSD (Mamba-2) recurrence in chunkwise form with LibTorch ops: the
// portable training path (CPU and any GPU), autograd-able, any T and chunk size.
//
// Per chunk of C tokens with a_t = Delta_t A and local segment sums S_ts = sum_{s<r<=t} a_r:
//   L        = exp(S) on s <= t (0 above the diagonal and across documents)
//   Y_intra  = (C B^T o L) (Delta x)                         all chunks in one batched matmul
//   state_c  = sum_s L[C-1, s] (Delta_s x_s) B_s^T            chunk's own contribution at its end
//   H_{c+1}  = exp(sum_chunk a) H_c + state_c                 the only loop (over chunks)
//   Y_inter  = exp(cumsum a)_t H_c C_t                         carried state read by every token
// Non-obvious decisions:
//  * Groups are never expanded to heads: C B^T is formed per group ([B, G, nc, C, C]) and broadcast
//    over the H/G heads of the group; heads are a separate tensor dimension [B, G, H/G, ...].
//  * The last chunk is zero-padded (Delta = 0 gives a = 0 and no input, so the state passes unchanged).
//  * Resets: L is masked across documents (-inf before exp, see ops/common/chunk_decay.h); the carried
//    state is masked for tokens after a reset in the chunk and dropped at the chunk's end when the chunk
//    contains a reset. L's last row then also masks earlier documents out of the chunk's end state.
//  * Segment sums use the stable segsum construction; exp(cumsum a) is a direct cumulative sum (no
//    differences), so no exponent loses precision to cancellation.
#include "ops/common/chunk_decay.h"
#include "ops/ssd/ssd_internal.h"
#include "subq/core/error.h"
#include "subq/ops/ssd.h"

namespace subq::ops {

SsdResult ssd_chunkwise(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                        const torch::Tensor& initial_state, const torch::Tensor& reset, int64_t chunk_size) {
  const std::string op = "ssd_chunkwise";
  detail::SsdDims d = detail::ssd_check(op, x, dt, A, B, C, D, initial_state, reset);
  detail::check_chunk_size(op, chunk_size);
  auto ct = detail::compute_dtype({&x, &dt, &A, &B, &C, &D, &initial_state});
  const int64_t bs = d.batch, H = d.heads, G = d.groups, hg = H / G, P = d.head_dim, N = d.state_dim;
  if (d.time == 0) {
    torch::Tensor h0 = initial_state.defined() ? initial_state.to(ct)
                                               : torch::zeros({bs, H, P, N}, x.options().dtype(ct));
    return {torch::zeros_like(x), h0};
  }
  const int64_t cs = std::min(chunk_size, d.time);  // a chunk longer than T only pads
  const int64_t nc = (d.time + cs - 1) / cs, tp = nc * cs;

  torch::Tensor xc = detail::pad_time(x.to(ct), 2, tp).reshape({bs, G, hg, nc, cs, P});
  torch::Tensor dtc = detail::pad_time(dt.to(ct), 2, tp).reshape({bs, G, hg, nc, cs});
  torch::Tensor Bc = detail::pad_time(B.to(ct), 2, tp).reshape({bs, G, nc, cs, N});
  torch::Tensor Cc = detail::pad_time(C.to(ct), 2, tp).reshape({bs, G, nc, cs, N});
  torch::Tensor a = dtc * A.to(ct).reshape({1, G, hg, 1, 1});  // [B,G,hg,nc,cs] log-decays

  detail::ChunkSegments seg;
  torch::Tensor same;  // [B,1,1,nc,cs,cs]
  if (reset.defined()) {
    seg = detail::chunk_segments(detail::pad_time(reset, 1, tp), cs);
    same = seg.same_segment.view({bs, 1, 1, nc, cs, cs});
  }
  torch::Tensor L = torch::exp(detail::segsum(a, same));          // [B,G,hg,nc,cs,cs]
  torch::Tensor CB = torch::matmul(Cc, Bc.transpose(-1, -2));      // [B,G,nc,cs,cs]
  torch::Tensor xdt = xc * dtc.unsqueeze(-1);                      // [B,G,hg,nc,cs,P]
  torch::Tensor y = torch::matmul(CB.unsqueeze(2) * L, xdt);       // intra-chunk, [B,G,hg,nc,cs,P]

  // Each chunk's contribution to the state at its end: sum_s L[cs-1, s] xdt_s B_s^T.
  torch::Tensor to_end = L.select(-2, cs - 1);                     // [B,G,hg,nc,cs]
  torch::Tensor chunk_states =
      torch::einsum("bghcsp,bgcsn->bghcpn", {xdt * to_end.unsqueeze(-1), Bc});  // [B,G,hg,nc,P,N]
  torch::Tensor cum = a.cumsum(-1);
  torch::Tensor decay_in = torch::exp(cum);                         // [B,G,hg,nc,cs] from chunk start
  torch::Tensor chunk_decay = torch::exp(cum.select(-1, cs - 1));   // [B,G,hg,nc]
  if (reset.defined()) {
    decay_in = decay_in * seg.from_carry.view({bs, 1, 1, nc, cs}).to(ct);
    chunk_decay = chunk_decay * seg.passes.view({bs, 1, 1, nc}).to(ct);
  }

  // Inter-chunk recurrence (sequential over chunks only).
  torch::Tensor h = initial_state.defined() ? initial_state.to(ct).reshape({bs, G, hg, P, N})
                                            : torch::zeros({bs, G, hg, P, N}, x.options().dtype(ct));
  std::vector<torch::Tensor> carried;
  carried.reserve(static_cast<size_t>(nc));
  for (int64_t c = 0; c < nc; ++c) {
    carried.push_back(h);
    h = chunk_decay.select(-1, c).unsqueeze(-1).unsqueeze(-1) * h + chunk_states.select(3, c);
  }
  torch::Tensor states_in = torch::stack(carried, 3);  // [B,G,hg,nc,P,N]
  torch::Tensor y_inter = torch::einsum("bghcpn,bgctn->bghctp", {states_in, Cc}) * decay_in.unsqueeze(-1);
  y = y + y_inter;
  if (D.defined()) y = y + D.to(ct).reshape({1, G, hg, 1, 1, 1}) * xc;
  y = y.reshape({bs, H, tp, P}).narrow(2, 0, d.time);
  return {y.to(x.scalar_type()), h.reshape({bs, H, P, N})};
}

}  // namespace subq::ops
