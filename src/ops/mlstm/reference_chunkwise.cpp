// reference_chunkwise.cpp — the mLSTM in chunkwise form (LibTorch ops, autograd-able, any device): the
// portable training path. Results equal mlstm_recurrent up to rounding, including the stabiliser m_t.
//
// Derivation (per row and head; chunk of L positions starting with the carried state C_p, n_p, m_p;
// lf = logsigmoid(f~)). Unrolling the recurrence, every contribution to C_t has a log-weight:
//   the carried state:  beta_t + m_p,            beta_t = sum_{r=0..t} lf_r   (chunk start to t)
//   token s <= t:       D_ts = seg_ts + i~_s,    seg_ts = sum_{r=s+1..t} lf_r
// and the recurrent stabiliser is exactly their maximum: m_t = max(beta_t + m_p, max_s D_ts). Scaling
// every weight by exp(-m_t) gives the recurrent C_t, n_t, hence the same h_t (the exp(-m_t) floor of the
// denominator needs this exact m_t, which is why the usual per-chunk stabiliser is not used).
// Resets inside a chunk: a position after a reset at r sees the zero state (m = 0) instead of the carried
// one; its history log-weight is the "phantom" sum_{r'=r..t} lf_r' + 0, which enters the max (and so the
// exp(-m_t) floor) but multiplies a zero state, and token weights D_ts across a reset are masked (-inf).
// The chunk-end state is the same formula at the last position, computed for all chunks at once from
// the chunk alone (C_loc, n_loc with their own max m_loc) and combined with the carried state in a short
// loop over chunks: m_end = max(history weight, m_loc).
//
// chunkwise_parts() returns the numerator and denominator of h separately (h = num / den): the tests use
// them to measure the two paths of a gradient (through num and through den), whose sum is the gradient.
// With hold_m it detaches every stabiliser (m_t, the chunk maxima and the carried m; only m0's scaling of the
// initial state keeps its gradient): the function whose gradients the CUDA backward kernels compute.
// with_qn_abs adds sum_s |S_ts| + w_t |q^_t . n_p|, the size of the terms of qn_t (h_t's conditioning).
// Cost: everything except that state loop is batched over all chunks (Q K^T, the decay matrix, C_loc and
// the outputs are single batched matmuls over [B, H, NC, ...]); seg is a masked cumulative sum (no
// differences of long cumulative sums, which lose precision when the forget gates are small).
// A ragged last chunk is padded with lf = 0 (no decay) and masked tokens, so padding changes neither the
// outputs nor the final state; a sequence shorter than the chunk uses one chunk of its own length.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/op_inputs.h"
#include "mlstm_internal.h"
#include "subq/core/error.h"

namespace subq::ops {

using torch::Tensor;

mlstm_detail::ChunkwiseParts mlstm_detail::chunkwise_parts(const Tensor& q, const Tensor& k, const Tensor& v,
                                                            const Tensor& igate, const Tensor& fgate,
                                                            const MlstmState& initial, const Tensor& reset,
                                                            int64_t chunk_size, const char* op, bool hold_m,
                                                            bool with_qn_abs) {
  if (chunk_size < 1) throw InputError(str(op, ": chunk_size must be >= 1, got ", chunk_size));
  const auto d = mlstm_detail::check_sequence(op, q, k, v, igate, fgate, initial, reset);
  const auto ct = detail::compute_dtype(q.scalar_type());
  const auto dev = q.device();
  MlstmState s0 = mlstm_detail::initial_state(initial, d, ct, dev);
  if (d.t == 0)
    return {torch::zeros({d.b, d.h, 0, d.dv}, q.options().dtype(ct)), torch::ones({d.b, d.h, 0}, q.options().dtype(ct)),
            s0, with_qn_abs ? torch::zeros({d.b, d.h, 0}, q.options().dtype(ct)) : Tensor()};

  const int64_t B = d.b, H = d.h, L = std::min(chunk_size, d.t);
  const int64_t nc = (d.t + L - 1) / L, tp = nc * L, pad = tp - d.t;
  SUBQ_CHECK(L >= 1 && pad >= 0 && pad < L, "chunking T = ", d.t, " by ", L);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const auto bool_opts = torch::TensorOptions().dtype(torch::kBool).device(dev);
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(dev);

  // Pads the time axis (dim 2) with zeros up to tp and splits it into [nc, L].
  auto chunked = [&](const Tensor& x) {
    Tensor y = x;
    if (pad > 0) y = x.dim() == 4 ? torch::constant_pad_nd(x, {0, 0, 0, pad}, 0) : torch::constant_pad_nd(x, {0, pad}, 0);
    std::vector<int64_t> shape{B, H, nc, L};
    if (x.dim() == 4) shape.push_back(x.size(3));
    return y.reshape(shape);
  };
  const Tensor qc = chunked(q.to(ct) * (1.0 / std::sqrt(static_cast<double>(d.dk))));  // q^ [B,H,nc,L,Dk]
  const Tensor kc = chunked(k.to(ct));                                                 // [B,H,nc,L,Dk]
  const Tensor vc = chunked(v.to(ct));                                                 // [B,H,nc,L,Dv]
  const Tensor ig = chunked(igate.to(ct));                                             // [B,H,nc,L]
  const Tensor lf = chunked(torch::log_sigmoid(fgate.to(ct)));                         // [B,H,nc,L], 0 on padding

  // seg[..., t, s] = sum_{r=s+1..t} lf_r for s <= t (0 on the diagonal; garbage above it, masked below).
  const Tensor causal = torch::ones({L, L}, bool_opts).tril();
  const Tensor strict = torch::ones({L, L}, bool_opts).tril(-1);
  const Tensor seg = lf.unsqueeze(-1).expand({B, H, nc, L, L}).masked_fill(strict.logical_not(), 0.0).cumsum(-2);

  // mask: token s contributes at t; beta: history log-weight without m_p; carry: t still sees the carried
  // state (no reset in this chunk at or before t). Without resets: mask = causal, carry everywhere.
  Tensor mask = causal, beta, carry;
  if (reset.defined()) {
    Tensor rs = pad > 0 ? torch::cat({reset, torch::zeros({B, pad}, bool_opts)}, 1) : reset;
    rs = rs.reshape({B, 1, nc, L});
    const Tensor sid = rs.to(torch::kLong).cumsum(-1);  // segment id inside the chunk; 0 = carried segment
    mask = causal & sid.unsqueeze(-1).eq(sid.unsqueeze(-2));  // [B,1,nc,L,L]
    const Tensor last_reset = std::get<0>(torch::cummax(torch::where(rs, torch::arange(L, long_opts), -1), -1));
    carry = last_reset.lt(0);                                               // [B,1,nc,L]
    const Tensor from = last_reset.clamp_min(0).expand({B, H, nc, L});      // first position of t's history
    beta = seg.gather(-1, from.unsqueeze(-1)).squeeze(-1) + lf.gather(-1, from);  // sum_{r=from..t} lf_r
  } else {
    beta = lf.cumsum(-1);
  }
  // Log-weight of token s in the state at t; -inf where s does not contribute.
  const Tensor dlog = (seg + ig.unsqueeze(-2)).masked_fill(mask.logical_not(), neg_inf);  // [B,H,nc,L,L]

  // Each chunk's own contribution to its end state, stabilised by its own max.
  Tensor a = dlog.select(-2, L - 1);  // [B,H,nc,L]
  if (pad > 0) a = a.masked_fill(torch::arange(tp, long_opts).ge(d.t).view({nc, L}), neg_inf);
  Tensor m_loc = a.amax(-1);                                    // [B,H,nc] (finite: position T-1 is in it)
  if (hold_m) m_loc = m_loc.detach();
  const Tensor kw = kc * torch::exp(a - m_loc.unsqueeze(-1)).unsqueeze(-1);
  const Tensor c_loc = torch::matmul(kw.transpose(-1, -2), vc);  // [B,H,nc,Dk,Dv]
  const Tensor n_loc = kw.sum(-2);                               // [B,H,nc,Dk]
  const Tensor beta_end = beta.select(-1, L - 1);                // [B,H,nc]
  const Tensor carry_end = carry.defined() ? carry.select(-1, L - 1) : Tensor();  // [B,1,nc]

  // The only sequential part: the state entering each chunk.
  std::vector<Tensor> c_in, n_in, m_in;
  c_in.reserve(static_cast<size_t>(nc));
  n_in.reserve(static_cast<size_t>(nc));
  m_in.reserve(static_cast<size_t>(nc));
  Tensor c = s0.c, n = s0.n, m = s0.m;
  for (int64_t i = 0; i < nc; ++i) {
    c_in.push_back(c);
    n_in.push_back(n);
    m_in.push_back(m);
    const Tensor ce = carry_end.defined() ? carry_end.select(-1, i) : Tensor();  // [B,1]
    const Tensor g = beta_end.select(-1, i) + (ce.defined() ? torch::where(ce, m, 0.0) : m);
    const Tensor ml = m_loc.select(-1, i);
    Tensor m_new = torch::maximum(g, ml);
    if (hold_m) m_new = m_new.detach();
    Tensor w_prev = torch::exp(g - m_new);
    if (ce.defined()) w_prev = torch::where(ce, w_prev, 0.0);
    const Tensor w_loc = torch::exp(ml - m_new);
    c = w_prev.unsqueeze(-1).unsqueeze(-1) * c + w_loc.unsqueeze(-1).unsqueeze(-1) * c_loc.select(2, i);
    n = w_prev.unsqueeze(-1) * n + w_loc.unsqueeze(-1) * n_loc.select(2, i);
    m = m_new;
  }
  const Tensor c_prev = torch::stack(c_in, 2);  // [B,H,nc,Dk,Dv]
  const Tensor n_prev = torch::stack(n_in, 2);  // [B,H,nc,Dk]
  const Tensor m_prev = torch::stack(m_in, 2);  // [B,H,nc]

  // Outputs for all chunks at once.
  const Tensor g = beta + (carry.defined() ? torch::where(carry, m_prev.unsqueeze(-1), 0.0) : m_prev.unsqueeze(-1));
  Tensor m_t = torch::maximum(g, dlog.amax(-1));  // [B,H,nc,L] == the recurrent m_t
  if (hold_m) m_t = m_t.detach();
  Tensor w_inter = torch::exp(g - m_t);
  if (carry.defined()) w_inter = torch::where(carry, w_inter, 0.0);
  const Tensor s = torch::matmul(qc, kc.transpose(-1, -2)) * torch::exp(dlog - m_t.unsqueeze(-1));  // [B,H,nc,L,L]
  const Tensor num = torch::matmul(s, vc) + w_inter.unsqueeze(-1) * torch::matmul(qc, c_prev);    // [B,H,nc,L,Dv]
  const Tensor qn = s.sum(-1) + w_inter * torch::matmul(qc, n_prev.unsqueeze(-1)).squeeze(-1);    // [B,H,nc,L]
  const Tensor den = torch::maximum(qn.abs(), torch::exp(-m_t)) + kMlstmEps;
  Tensor num_t = num.reshape({B, H, tp, d.dv}), den_t = den.reshape({B, H, tp}), qn_abs;
  if (with_qn_abs)
    qn_abs = (s.abs().sum(-1) + w_inter * torch::matmul(qc, n_prev.unsqueeze(-1)).squeeze(-1).abs()).reshape({B, H, tp});
  if (pad > 0) {
    num_t = num_t.narrow(2, 0, d.t);
    den_t = den_t.narrow(2, 0, d.t);
    if (with_qn_abs) qn_abs = qn_abs.narrow(2, 0, d.t);
  }
  SUBQ_CHECK(num_t.sizes() == at::IntArrayRef({B, H, d.t, d.dv}) && c.sizes() == at::IntArrayRef({B, H, d.dk, d.dv}) &&
                 m.sizes() == at::IntArrayRef({B, H}),
             "chunkwise_parts produced num ", detail::shape_str(num_t.sizes()), ", c ", detail::shape_str(c.sizes()));
  return {num_t, den_t, {c, n, m}, qn_abs};
}

MlstmResult mlstm_chunkwise(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& igate,
                            const Tensor& fgate, const MlstmState& initial, const Tensor& reset, int64_t chunk_size) {
  const auto p = mlstm_detail::chunkwise_parts(q, k, v, igate, fgate, initial, reset, chunk_size, "mlstm_chunkwise");
  return {(p.num / p.den.unsqueeze(-1)).to(q.scalar_type()), p.state};
}

}  // namespace subq::ops
