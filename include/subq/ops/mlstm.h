// mlstm.h — the mLSTM recurrence (xLSTM-7B form), as LibTorch-ops references: a recurrent loop (the ground
// truth, and `mlstm_step` for decoding) and a chunkwise form (the portable fast path for training).
//
// Per batch row b and head h, with q^ = q / sqrt(Dk) and lf_t = logsigmoid(f~_t):
//   m_t  = max(lf_t + m_{t-1}, i~_t)                      stabiliser (log scale of the state)
//   f'_t = exp(lf_t + m_{t-1} - m_t),  i'_t = exp(i~_t - m_t)
//   C_t  = f'_t C_{t-1} + i'_t k_t v_t^T                  [Dk, Dv]
//   n_t  = f'_t n_{t-1} + i'_t k_t                        [Dk]
//   h_t  = C_t^T q^_t / (max(|n_t^T q^_t|, exp(-m_t)) + 1e-6)
// i~ and f~ are the gate pre-activations (the layer has already soft-capped them); the exponential input
// gate and sigmoid forget gate are applied here.
//
// Shapes ("head-first"): q, k [B, H, T, Dk]; v [B, H, T, Dv]; igate, fgate [B, H, T]; h [B, H, T, Dv].
// dtypes: q, k, v share one float dtype (fp32, bf16, fp16 or fp64), which h is returned in; the gates may be
// any float dtype. Math runs in fp32 (fp64 when q is fp64); states are fp32 (fp64 for fp64 inputs).
//
// Zero state: C = 0, n = 0, m = 0 — the state NX-AI's mlstm_kernels native recurrent step starts from when
// no initial state is given (mlstm_kernels/torch/recurrent/native_sequence.py). In unscaled terms
// (C~ = exp(m) C, n~ = exp(m) n) the output is h_t = C~_t^T q^_t / (max(|n~_t^T q^_t|, 1) + 1e-6 exp(m_t)),
// so from the zero state the initial m only enters through the 1e-6 term; it is kept for fidelity.
//
// Packed sequences (reset): optional bool [B, T]; reset[b, t] = true replaces the state of row b by the
// zero state immediately before token t is consumed (t = 0 discards `initial`). The final state is the
// state after token T-1, i.e. it belongs to the last document of each row. Example, one row holding
// documents "abc" and "de":  tokens [a b c d e], reset [1 0 0 1 0]  gives exactly the outputs of running
// "abc" and "de" separately from the zero state, and the final state of "de".
//
// CUDA kernels (src/ops/mlstm/mlstm_cuda_*.cu, design and numbers in docs/perf/mlstm.md): mlstm_cuda
// (chunkwise forward and backward, chunk size 64, as one autograd function) and mlstm_step_cuda (fused
// decode step). Models call the dispatching entries mlstm() and mlstm_decode(): they take the kernel when
// SUBQ_OPS_IMPL (subq/ops/ops_impl.h) allows and the call is supported, else the references.
//
// Example:
//   auto q = torch::randn({2, 4, 100, 64}), k = torch::randn({2, 4, 100, 64}), v = torch::randn({2, 4, 100, 128});
//   auto i = torch::randn({2, 4, 100}), f = torch::randn({2, 4, 100}) + 3;
//   auto out = subq::ops::mlstm_chunkwise(q, k, v, i, f);        // out.h [2, 4, 100, 128]
//   // continue by decoding: q_t, k_t [2, 4, 64], v_t [2, 4, 128], i_t, f_t [2, 4]
//   auto step = subq::ops::mlstm_step(q_t, k_t, v_t, i_t, f_t, out.state);   // step.h [2, 4, 128]
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace subq::ops {

inline constexpr double kMlstmEps = 1e-6;           // added to the denominator of h
inline constexpr int64_t kMlstmDefaultChunk = 64;

struct MlstmState {
  torch::Tensor c;  // [B, H, Dk, Dv] matrix memory (scaled by exp(-m))
  torch::Tensor n;  // [B, H, Dk]     normaliser   (scaled by exp(-m))
  torch::Tensor m;  // [B, H]         stabiliser
  bool defined() const { return c.defined() || n.defined() || m.defined(); }
  // The zero state (C = 0, n = 0, m = 0); `opts` gives dtype and device.
  static MlstmState zeros(int64_t batch, int64_t heads, int64_t dk, int64_t dv, const torch::TensorOptions& opts);
};

struct MlstmResult {
  torch::Tensor h;    // [B, H, T, Dv] (mlstm_step: [B, H, Dv]) in q's dtype
  MlstmState state;   // after the last token, in the compute dtype
};

// Recurrent reference: a loop over t. `initial` undefined (all three fields) = the zero state; otherwise
// all three fields must be given.
MlstmResult mlstm_recurrent(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial = {},
                            const torch::Tensor& reset = {});

// Chunkwise reference: identical results (up to rounding) with batched matmuls; any T (the last chunk is
// padded internally), resets handled by masks inside chunks. chunk_size >= 1.
MlstmResult mlstm_chunkwise(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial = {},
                            const torch::Tensor& reset = {}, int64_t chunk_size = kMlstmDefaultChunk);

// One decoding step: q, k [B, H, Dk]; v [B, H, Dv]; igate, fgate [B, H]; optional reset [B] (reset the
// row's state before this token). Returns h [B, H, Dv] and the new state.
MlstmResult mlstm_step(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& state = {},
                       const torch::Tensor& reset = {});

// The dispatching entry for sequences (what models call). With SUBQ_OPS_IMPL=auto (the default):
// mlstm_cuda when mlstm_cuda_unsupported(q, v) is empty — in training only once the backward kernels have
// passed their GPU test (the policy and its state: mlstm() in src/ops/mlstm/mlstm_cuda.cpp and
// docs/perf/mlstm.md) — else mlstm_chunkwise(..., chunk_size);
// =reference: always mlstm_chunkwise; =cuda: always mlstm_cuda (throws when unsupported). chunk_size
// applies to the reference only (the kernels use 64). Same arguments, result and autograd behaviour as
// mlstm_chunkwise (up to bf16 rounding).
MlstmResult mlstm(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& igate,
                  const torch::Tensor& fgate, const MlstmState& initial = {}, const torch::Tensor& reset = {},
                  int64_t chunk_size = kMlstmDefaultChunk);

// The CUDA kernels as one torch::autograd::Function: forward = a sequential scan over 64-token chunks
// carrying the fp32 state (C, n, m) with the exact recurrent stabiliser, then per-chunk outputs; backward =
// a per-token pre-pass, a reverse scan of the state gradients, then per-chunk gradients of q, k, v, both gates
// and the initial state with m held constant, plus m's own path (it reaches h only through the 1e-6 exp(m)
// term; added as a suffix sum along the stabiliser's argmax chain): the exact gradient. When the final state has a
// gradient (a loss on it), the backward instead recomputes the forward with mlstm_chunkwise under autograd
// and returns its gradients. Returns h in q's dtype and the final state in fp32. Throws
// subq::InputError when unsupported (see mlstm_cuda_unsupported).
MlstmResult mlstm_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial = {},
                       const torch::Tensor& reset = {});

// "" when mlstm_cuda can run q [B, H, T, Dk], v [B, H, T, Dv] (given arguments that pass the usual checks),
// else why not: kernels built (nvcc at configure time), q on a CUDA device with a kernel image (sm_90a by
// default, SUBQ_CUDA_ARCHS), q / k / v in bf16 or fp16, Dk and Dv in {64, 128, 256}, T >= 1,
// B, H <= 65535. Any strides with a contiguous last dimension and 16-byte aligned rows are used in place;
// other layouts are copied. Gates and the initial state may have any float dtype.
std::string mlstm_cuda_unsupported(const torch::Tensor& q, const torch::Tensor& v);

// The fused decode step (mlstm_step semantics and arguments) on CUDA; q, k, v in fp32, bf16 or fp16, any
// head dims. No backward: throws when gradients are required.
MlstmResult mlstm_step_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& state = {},
                            const torch::Tensor& reset = {});

// The dispatching decode step: mlstm_step_cuda when SUBQ_OPS_IMPL allows, the tensors are on CUDA in
// fp32/bf16/fp16 and no gradient is needed, else mlstm_step.
MlstmResult mlstm_decode(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                         const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& state = {},
                         const torch::Tensor& reset = {});

}  // namespace subq::ops
