// slstm.h — the sLSTM recurrence (scalar-memory xLSTM cell with exponential gating and a per-head
// recurrent weight). Recurrent only: R h_{t-1} is inside the nonlinearities, so the op is strictly
// sequential (this is what gives xLSTM its state tracking). A LibTorch-ops loop over time, batched over
// B, H and Dh; autograd goes through the loop.
//
// Per batch row, head h and unit j, with pre = W x_t + b given by the layer:
//   z~, i~, f~, o~ = pre_t + R h_{t-1}           (per head: h_{t-1}[h] (1 x Dh) @ R[g, h] (Dh x Dh))
//   m_t = max(i~_t, m_{t-1} + logsigmoid(f~_t))
//   i_t = exp(i~_t - m_t),  f_t = exp(m_{t-1} + logsigmoid(f~_t) - m_t)
//   c_t = f_t c_{t-1} + i_t tanh(z~_t),  n_t = f_t n_{t-1} + i_t,  h_t = sigmoid(o~_t) c_t / n_t
//
// Shapes: pre [B, T, 4, H, Dh], gates in the order z, i, f, o (kSlstmZ.. below) — one linear map of width
//   4 H Dh reshaped; R [4, H, Dh, Dh] with R[g, h, i, j] the weight from unit i of h_{t-1} to gate g's
//   unit j of head h; output h [B, T, H, Dh]. pre may be any float dtype (h is returned in it); R any
//   float dtype. Math in fp32 (fp64 for fp64 pre); states fp32 (fp64).
// State: h, c, n, m, each [B, H, Dh] (h is the previous output, fed back through R).
//
// Zero state: h = c = n = m = 0, as in NX-AI's xlstm (xlstm/blocks/slstm), whose cell treats a unit with
// n == 0 as fresh: its first stabiliser is m_t = i~_t, i.e. m_{t-1} = -inf, so f_t = 0, i_t = 1, n_t = 1
// and h_t = sigmoid(o~) tanh(z~). We do the same (per unit, on n == 0; reachable states have n >= 1
// after their first step). Mathematically h does not depend on this choice (c = n = 0), but with
// m_{t-1} = 0 instead, a very negative i~ would give c_t, n_t ~ exp(i~ - max(i~, lf)), denormal in fp32
// below about -87 and 0 (h = 0/0) below about -104; the fresh rule keeps n_t = 1.
//
// Packed sequences (reset): optional bool [B, T]; reset[b, t] = true replaces row b's state (all of h,
// c, n, m, so R h_{t-1} is 0 too) by the zero state right before token t (t = 0 discards `initial`).
// The final state belongs to the last document of each row. Example: tokens [a b c d e] with reset
// [1 0 0 1 0] give the outputs of "abc" and "de" run separately from the zero state.
//
// Example:
//   auto pre = torch::randn({2, 100, 4, 4, 32});                 // W x + b for z, i, f, o
//   auto r = torch::randn({4, 4, 32, 32}) * 0.1;
//   auto out = subq::ops::slstm_recurrent(pre, r);                // out.h [2, 100, 4, 32]
//   auto next = subq::ops::slstm_step(pre_next, r, out.state);    // pre_next [2, 4, 4, 32]
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace subq::ops {

// Gate index along the "4" dimension of pre and R.
inline constexpr int64_t kSlstmZ = 0, kSlstmI = 1, kSlstmF = 2, kSlstmO = 3;

struct SlstmState {
  torch::Tensor h;  // [B, H, Dh] previous output
  torch::Tensor c;  // [B, H, Dh] cell (scaled by exp(-m))
  torch::Tensor n;  // [B, H, Dh] normaliser (scaled by exp(-m)); 0 marks a fresh unit
  torch::Tensor m;  // [B, H, Dh] stabiliser
  bool defined() const { return h.defined() || c.defined() || n.defined() || m.defined(); }
  static SlstmState zeros(int64_t batch, int64_t heads, int64_t dh, const torch::TensorOptions& opts);
};

struct SlstmResult {
  torch::Tensor h;   // [B, T, H, Dh] (slstm_step: [B, H, Dh]) in pre's dtype
  SlstmState state;  // after the last token, in the compute dtype
};

// The sequence: pre [B, T, 4, H, Dh], r [4, H, Dh, Dh]; `initial` undefined = zero state (else all four
// fields); reset optional bool [B, T].
SlstmResult slstm_recurrent(const torch::Tensor& pre, const torch::Tensor& r, const SlstmState& initial = {},
                            const torch::Tensor& reset = {});

// One step: pre [B, 4, H, Dh]; reset optional bool [B].
SlstmResult slstm_step(const torch::Tensor& pre, const torch::Tensor& r, const SlstmState& state = {},
                       const torch::Tensor& reset = {});

}  // namespace subq::ops
