// metrics.cpp — see metrics.h.
//
// Peak FLOP/s figures are NVIDIA's published dense (non-sparse) tensor-core numbers for the SXM/OAM parts
// unless the name says otherwise. Device names are matched by substring, the longest match winning
// ("H100 PCIe" over "H100", "GB200" over "B200"). GPU memory comes from the
// device-generic allocator statistics (at::accelerator), so no CUDA headers are needed here; the GPU
// name needs the CUDA runtime and is compiled in only with CUDA.
#include "subq/train/metrics.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include <ATen/DeviceAccelerator.h>

#include "subq/core/error.h"
#include "subq/core/fs.h"

#ifdef SUBQ_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace subq::train {

std::optional<double> peak_flops(const std::string& gpu_name, torch::ScalarType compute) {
  struct Entry {
    const char* match;
    double bf16, tf32;
  };
  static const Entry table[] = {
      {"GH200", 989.4e12, 494.7e12},  {"H200", 989.4e12, 494.7e12},     {"H100 PCIe", 756.0e12, 378.0e12},
      {"H100 NVL", 835.5e12, 417.8e12}, {"H100", 989.4e12, 494.7e12},   {"H800", 989.4e12, 494.7e12},
      {"B200", 2250.0e12, 1100.0e12}, {"GB200", 2500.0e12, 1250.0e12},  {"A100", 312.0e12, 156.0e12},
      {"A800", 312.0e12, 156.0e12},   {"L40S", 362.1e12, 183.2e12},
      {"A10G", 70.0e12, 35.0e12},     {"RTX 4090", 165.2e12, 82.6e12},
  };
  // the longest matching name wins (GB200 over B200, H100 PCIe over H100)
  const Entry* best = nullptr;
  for (const auto& e : table)
    if (gpu_name.find(e.match) != std::string::npos && (!best || std::strlen(e.match) > std::strlen(best->match)))
      best = &e;
  if (!best) return std::nullopt;
  return compute == torch::kFloat32 ? best->tf32 : best->bf16;
}

std::string device_name(const torch::Device& device) {
  if (!device.is_cuda()) return device.str();
#ifdef SUBQ_WITH_CUDA
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device.has_index() ? device.index() : 0) == cudaSuccess) return p.name;
  cudaGetLastError();
#endif
  return device.str();
}

double peak_memory_gib(const torch::Device& device) {
  if (device.is_cuda()) {
    auto stats = at::accelerator::getDeviceStats(device.has_index() ? device.index() : 0);
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.allocated_bytes[agg].peak) / (1024.0 * 1024.0 * 1024.0);
  }
  // Linux: VmHWM in /proc/self/status, in kB
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0.0;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "VmHWM:", 6) == 0) {
      kb = std::strtod(line + 6, nullptr);
      break;
    }
  }
  std::fclose(f);
  return kb / (1024.0 * 1024.0);
}

MetricsWriter::MetricsWriter(std::string path) : path_(std::move(path)), out_(path_, std::ios::app) {
  if (!out_) throw RuntimeError(str("cannot open metrics file ", path_, " for appending"));
}

void MetricsWriter::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
  if (!out_) throw RuntimeError(str("cannot write metrics file ", path_, " (disk full?)"));
}

int64_t truncate_metrics_after(const std::string& path, int64_t step, const std::string& superseded_path) {
  if (!std::filesystem::exists(path)) return 0;
  std::istringstream in(fsx::read_file(path, "metrics file"));
  std::string keep, moved, line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    bool later = false;
    try {
      auto j = nlohmann::json::parse(line);
      later = j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step;
    } catch (const nlohmann::json::exception&) {
      later = false;  // a torn last line from a crash: keep it where it is
    }
    (later ? moved : keep) += line + "\n";
    n += later;
  }
  if (n == 0) return 0;
  {
    std::ofstream sup(superseded_path, std::ios::app);
    sup << moved;
    sup.flush();
    if (!sup) throw RuntimeError(str("cannot write ", superseded_path));
  }
  fsx::write_file_atomic(path, keep);
  return n;
}

}  // namespace subq::train
