// optimizer.h — AdamW with decoupled weight decay, no-decay groups, and state in safetensors; global
// gradient-norm clipping.
//
// Update for a parameter p with gradient g at its step t (t counted per parameter from 1):
//   p   <- p * (1 - lr * wd)                        (wd = optim.weight_decay, or 0 in the no-decay group)
//   m   <- beta1 m + (1 - beta1) g                  v <- beta2 v + (1 - beta2) g^2
//   p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// exactly torch.optim.AdamW. A parameter is in the no-decay group when it is 1-D (norm weights, biases)
// or its name contains one of optim.no_decay's substrings.
//
// Implementations: at::_fused_adamw_ (one kernel per group; LibTorch 2.11 provides it for CPU and CUDA)
// when optim.fused is "on", or "auto" on CUDA; otherwise a foreach implementation (at::_foreach_*
// ops, one launch per op for all tensors of a group). Both give the same result up to float rounding.
//
// State file (optimizer.safetensors): for every parameter name N, "N.exp_avg" and "N.exp_avg_sq" (the
// parameter's dtype and shape) and "N.step" (I64 scalar); metadata records the optimizer and its
// hyper-parameters. Loading is strict: every parameter needs its three entries with matching shapes.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "subq/core/safetensors.h"
#include "subq/train/train_config.h"

namespace subq::train {

class AdamW {
 public:
  // params: (name, parameter) pairs, e.g. module.named_parameters(); all on one device, floating point.
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const OptimConfig& cfg);
  // With the decay group of each parameter given (decay[i] for params[i]): for tensors that are slices of
  // parameters (ZeRO-1 shards), whose own shape and name do not tell.
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const OptimConfig& cfg,
        const std::vector<bool>& decay);
  // The rule above: does parameter `name` of shape p.sizes() get weight decay under `cfg`?
  static bool default_decay(const std::string& name, const torch::Tensor& p, const OptimConfig& cfg);

  // One update with learning rate `lr` for every parameter that has a gradient (others are untouched and
  // their step count does not advance).
  void step(double lr);
  // Drops every gradient (sets it undefined, so the next backward writes instead of accumulating).
  void zero_grad();

  bool fused() const { return fused_; }
  int64_t num_decay() const;     // parameters in the decay group
  int64_t num_no_decay() const;  // parameters in the no-decay group
  bool decays(const std::string& name) const;  // is this parameter in the decay group?
  const std::vector<torch::Tensor>& params() const { return params_; }

  // State as tensors named as described above (on the parameters' device), and back.
  TensorMap state_tensors() const;
  void load_state_tensors(const TensorMap& state, const std::string& what = "optimizer state");
  void save(const std::string& path) const;
  void load(const std::string& path);
  // Writes `state` (tensors named as state_tensors() names them, e.g. gathered from ZeRO-1 shards) with this
  // optimizer's metadata; reads and checks a state file without loading it (InputError on a foreign file).
  void save(const std::string& path, const TensorMap& state) const;
  static TensorMap read_state(const std::string& path);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, exp_avg, exp_avg_sq, step_t;  // step_t: fp32 scalar on the device (fused kernel)
    int64_t step = 0;
    bool decay = true;
  };
  void init(const std::vector<std::pair<std::string, torch::Tensor>>& params, const std::vector<bool>* decay);
  void step_group(std::vector<Slot*>& slots, double lr, double wd);
  OptimConfig cfg_;
  bool fused_ = false;
  std::vector<Slot> slots_;
  std::vector<torch::Tensor> params_;
};

// Whether optim.fused = `mode` ("auto", "on", "off") uses the fused kernel on `device`; ConfigError for
// "on" on a device without the fused kernel.
bool use_fused_adamw(const std::string& mode, const torch::Device& device);

// Global L2 norm of all gradients (parameters without one are skipped), as an fp32 0-d tensor on the
// parameters' device; when max_norm > 0 the gradients are scaled by min(1, max_norm / (norm + 1e-6)).
// Neither reads the norm back to the host.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// Multiplies every defined gradient by `factor` (clipping with a norm already read back to the host).
void scale_grads(const std::vector<torch::Tensor>& params, double factor);

}  // namespace subq::train
