// device.cpp — see device.h. CUDA runtime and NCCL queries are compiled in only when CUDA is built.
#include "subq/core/device.h"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "subq/core/error.h"
#include "subq/ops/cuda_probe.h"

#ifdef SUBQ_WITH_CUDA
#include <cuda_runtime.h>
#endif
#ifdef SUBQ_WITH_NCCL
#include <nccl.h>
#endif

namespace subq {

torch::Device resolve_device(const std::string& spec) {
  bool have = torch::cuda::is_available();
  if (spec == "auto") return have ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec.rfind("cuda", 0) == 0) {
    if (!have)
      throw InputError(str("run.device = ", spec, ": no CUDA GPU is visible to this process; use --set run.device=cpu"));
    int idx = 0;
    if (spec.size() > 5) idx = std::stoi(spec.substr(5));
    int n = static_cast<int>(torch::cuda::device_count());
    if (idx >= n) throw InputError(str("run.device = ", spec, ": only ", n, " GPU(s) visible (cuda:0..cuda:", n - 1, ")"));
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(idx));
  }
  throw InputError(str("run.device = ", spec, ": unknown device; use auto, cpu, cuda or cuda:N"));
}

torch::ScalarType resolve_dtype(const std::string& spec, const torch::Device& dev) {
  if (spec == "fp32") return torch::kFloat32;
  if (spec == "bf16") return torch::kBFloat16;
  if (spec == "auto") return dev.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  throw InputError(str("run.dtype = ", spec, ": use auto, fp32 or bf16"));
}

AutocastGuard::AutocastGuard(const torch::Device& device, torch::ScalarType compute) : type_(device.type()) {
  if (compute == torch::kFloat32) return;
  active_ = true;
  prev_enabled_ = at::autocast::is_autocast_enabled(type_);
  prev_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::set_autocast_dtype(type_, compute);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(type_, prev_enabled_);
  at::autocast::set_autocast_dtype(type_, prev_dtype_);
}

nlohmann::json machine_info(bool probe_kernels) {
  nlohmann::json j;
  j["libtorch"] = TORCH_VERSION;
  j["torch_cuda_available"] = torch::cuda::is_available();
#ifdef SUBQ_WITH_CUDA
  j["cuda_built"] = true;
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  j["cuda_runtime"] = str(rt / 1000, ".", (rt % 1000) / 10);
  j["cuda_driver"] = drv ? str(drv / 1000, ".", (drv % 1000) / 10) : std::string("none");
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  nlohmann::json gpus = nlohmann::json::array();
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    nlohmann::json g;
    g["index"] = i;
    g["name"] = p.name;
    g["compute_capability"] = str(p.major, ".", p.minor);
    g["memory_gib"] = static_cast<double>(p.totalGlobalMem) / (1ull << 30);
    g["sms"] = p.multiProcessorCount;
    if (probe_kernels) {
      std::string err = ops::cuda_probe(i);
      g["kernel_probe"] = err.empty() ? "ok" : err;
    }
    gpus.push_back(g);
  }
  cudaGetLastError();  // clear the error a machine without a driver leaves behind
  j["gpus"] = gpus;
#else
  j["cuda_built"] = false;
  j["gpus"] = nlohmann::json::array();
#endif
#ifdef SUBQ_WITH_NCCL
  int nv = 0;
  if (ncclGetVersion(&nv) == ncclSuccess) j["nccl"] = str(nv / 10000, ".", (nv % 10000) / 100, ".", nv % 100);
#else
  j["nccl"] = "not built";
#endif
  return j;
}

}  // namespace subq
