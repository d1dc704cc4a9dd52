// ssd_internal.h — argument checking shared by the SSD forms (recurrent, chunkwise, step).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

namespace subq::ops::detail {

struct SsdDims {
  int64_t batch, heads, time, head_dim, groups, state_dim;
};

// Checks every argument of ssd_recurrent / ssd_chunkwise (see subq/ops/ssd.h) and returns the sizes;
// throws subq::InputError naming the argument and the expected layout.
SsdDims ssd_check(const std::string& op, const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                  const torch::Tensor& initial_state, const torch::Tensor& reset);

// Checks the arguments of one decoding step (ssd_step / ssd_step_cuda: x_t [B, H, P], dt_t [B, H],
// B_t / C_t [B, G, N], state [B, H, P, N]) with the sequence rules, viewing the step as T = 1.
SsdDims ssd_step_check(const std::string& op, const torch::Tensor& x_t, const torch::Tensor& dt_t,
                       const torch::Tensor& A, const torch::Tensor& B_t, const torch::Tensor& C_t,
                       const torch::Tensor& D, const torch::Tensor& state);

struct SsdLaunchers;

// The CUDA kernels' autograd function (what ssd_cuda() runs after its checks) with the given launchers and
// no device or support checks: the inputs must pass ssd_check and the launchers' own requirements. On
// CPU tensors the stream handed to the launchers is null (used with the CPU emulator in tests).
// Returns y and the final state as ssd_cuda does.
std::pair<torch::Tensor, torch::Tensor> ssd_kernels_autograd(const SsdLaunchers& launchers, const torch::Tensor& x,
                                                             const torch::Tensor& dt, const torch::Tensor& A,
                                                             const torch::Tensor& B, const torch::Tensor& C,
                                                             const torch::Tensor& D, const torch::Tensor& initial_state,
                                                             const torch::Tensor& reset);

// [batch, G, ...] -> [batch, H, ...]: head h reads group h / (H / G) (copies when G < H; used by
// the recurrent forms only).
torch::Tensor ssd_groups_to_heads(const torch::Tensor& t, int64_t heads);

}  // namespace subq::ops::detail
