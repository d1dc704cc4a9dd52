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

}  // namespace subq::ops::detail
