// device.h — choosing the compute device and dtype from run.device / run.dtype, and describing the
// machine (`subq version`).
#pragma once

#include <string>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace subq {

// "auto" -> cuda:0 when a GPU is visible, else cpu; "cuda" -> cuda:0. InputError when CUDA is asked for
// and none is available.
torch::Device resolve_device(const std::string& spec);
// "auto" -> bf16 on CUDA, fp32 on CPU. Returns the compute dtype (parameters stay fp32).
torch::ScalarType resolve_dtype(const std::string& spec, const torch::Device& dev);

// Mixed precision for a scope: while alive, ops on `device` run under at::autocast with `compute` as the
// lower-precision dtype (bf16), parameters staying fp32. A no-op when compute is fp32. Nests; restores
// the previous autocast state and clears the cast cache on exit.
class AutocastGuard {
 public:
  AutocastGuard(const torch::Device& device, torch::ScalarType compute);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_;
  bool prev_enabled_ = false;
  torch::ScalarType prev_dtype_ = torch::kFloat32;
};

// LibTorch / CUDA / NCCL versions, GPUs seen and whether a subq kernel runs on each.
nlohmann::json machine_info(bool probe_kernels);

}  // namespace subq
