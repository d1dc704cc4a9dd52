// mlstm_internal.h — pieces shared by the two mLSTM references (private to src/ops/mlstm/): argument
// validation and the initial-state preparation, so both forms accept and reject exactly the same inputs.
#pragma once

#include "subq/ops/mlstm.h"

namespace subq::ops::mlstm_detail {

struct Dims {
  int64_t b = 0, h = 0, t = 0, dk = 0, dv = 0;
};

// Checks shapes, dtypes and devices of a sequence call (q, k, v [B,H,T,*], gates [B,H,T], initial state,
// reset [B,T]); throws InputError naming the argument. Returns the sizes.
Dims check_sequence(const char* op, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial,
                    const torch::Tensor& reset, const char* state_name = "initial");

// The initial state in the compute dtype `ct` (zeros when `initial` is undefined).
MlstmState initial_state(const MlstmState& initial, const Dims& d, torch::ScalarType ct, const torch::Device& dev);

// mlstm_chunkwise() before its last division: h = num / den[..., None] with num [B, H, T, Dv] and den [B, H, T] in
// the compute dtype (den = max(|q^ . n_t|, exp(-m_t)) + eps), and the final state. Autograd-able.
// hold_m: every stabiliser m is a constant for autograd (only m0's scaling of the initial state keeps its
// gradient) — the function the CUDA backward kernels differentiate (docs/perf/mlstm.md, "Backward").
struct ChunkwiseParts {
  torch::Tensor num, den;
  MlstmState state;
  torch::Tensor qn_abs;  // with_qn_abs: [B, H, T], the sum of |terms| of qn_t = q^_t . n_t (else undefined)
};
ChunkwiseParts chunkwise_parts(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial,
                               const torch::Tensor& reset, int64_t chunk_size, const char* op,
                               bool hold_m = false, bool with_qn_abs = false);

}  // namespace subq::ops::mlstm_detail

namespace subq::ops::detail {

struct MlstmLaunchers;

// What mlstm_cuda() / mlstm_step_cuda() run after their checks, with the given launchers and no device or
// support checks (the inputs must pass check_sequence and the launchers' own requirements). On CPU tensors
// the stream handed to the launchers is null (used with the CPU emulator in tests).
MlstmResult mlstm_kernels_autograd(const MlstmLaunchers& launchers, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& igate, const torch::Tensor& fgate,
                                   const MlstmState& initial, const torch::Tensor& reset);
MlstmResult mlstm_step_kernels(const MlstmLaunchers& launchers, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& igate, const torch::Tensor& fgate,
                               const MlstmState& state, const torch::Tensor& reset);

// The gradient through the stabiliser m that the backward kernels leave out (they hold every m_t constant;
// derivation at the definition in mlstm_cuda.cpp): from the per-token dh_t . h_t, 1 / den_t and m_t ([B, H, T]),
// the gate pre-activations ([B, H, T]), the initial m0 ([B, H] or undefined) and the reset flags ([B, T] bool
// or undefined), the contributions to di~, df~ (in fgate's dtype) and dm0 (undefined without m0).
struct MlstmStabiliserGrads {
  torch::Tensor dig, dfg, dm0;
};
MlstmStabiliserGrads mlstm_stabiliser_grads(const torch::Tensor& dh_dot_h, const torch::Tensor& inv_den,
                                            const torch::Tensor& m_tok, const torch::Tensor& igate,
                                            const torch::Tensor& fgate, const torch::Tensor& m0,
                                            const torch::Tensor& reset);

}  // namespace subq::ops::detail
