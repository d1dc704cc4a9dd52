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

// LibTorch / CUDA / NCCL versions, GPUs seen and whether a subq kernel runs on each.
nlohmann::json machine_info(bool probe_kernels);

}  // namespace subq
