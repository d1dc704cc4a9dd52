// profile.cpp — see profile.h.
//
// Decisions:
//  * Kineto through LibTorch's C++ entry points (prepareProfiler / enableProfiler / disableProfiler), the
//    ones torch.profiler uses: no extra dependency, and the kernel names are the real CUDA kernel names
//    (cutlass / cuBLAS / ATen / subq kernels), which is what tells a slow step's story.
//  * Device kernels are summed by name over the profiled stretch; overlapping kernels (several streams)
//    are counted in full, so "share" is of summed kernel time, not of wall time (wall_ms is beside it).
//  * CPU operators are recorded on every thread the autograd engine uses (the profiler state travels
//    with autograd's thread-local state), with inclusive times; they are a secondary view.
//  * Long kernel names (templates) are cut at 160 characters in the log, kept whole in the JSON.
#include "subq/train/profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "subq/core/error.h"
#include "subq/core/log.h"

namespace subq::train {

namespace {

namespace kp = torch::autograd::profiler;
namespace pi = torch::profiler::impl;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

pi::ProfilerConfig kineto_config() { return pi::ProfilerConfig(pi::ProfilerState::KINETO); }

struct Agg {
  double ns = 0;
  int64_t calls = 0;
};

nlohmann::json top_entries(const std::map<std::string, Agg>& m, int64_t top, double total_ns) {
  std::vector<std::pair<std::string, Agg>> v(m.begin(), m.end());
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  nlohmann::json out = nlohmann::json::array();
  for (int64_t i = 0; i < static_cast<int64_t>(v.size()) && i < top; ++i)
    out.push_back({{"name", v[i].first},
                   {"ms", v[i].second.ns / 1e6},
                   {"calls", v[i].second.calls},
                   {"share", total_ns > 0 ? v[i].second.ns / total_ns : 0.0}});
  return out;
}

}  // namespace

StepProfiler::~StepProfiler() {
  if (running_) {
    try {
      kp::disableProfiler();
    } catch (...) {
    }
  }
}

void StepProfiler::start() {
  if (running_) throw InternalError("StepProfiler::start: already running");
  if (kp::isProfilerEnabledInMainThread())
    throw InputError("cannot profile: a LibTorch profiler is already running in this process");
  cuda_ = torch::cuda::is_available();
  std::set<pi::ActivityType> acts{pi::ActivityType::CPU};
  if (cuda_) acts.insert(pi::ActivityType::CUDA);
  const auto cfg = kineto_config();
  kp::prepareProfiler(cfg, acts);
  kp::enableProfiler(cfg, acts);
  running_ = true;
  t0_ns_ = now_ns();
}

nlohmann::json StepProfiler::stop(int64_t top) {
  if (!running_) throw InternalError("StepProfiler::stop: not running");
  if (cuda_) torch::cuda::synchronize();
  const double wall_ns = static_cast<double>(now_ns() - t0_ns_);
  running_ = false;
  std::unique_ptr<kp::ProfilerResult> res = kp::disableProfiler();
  std::map<std::string, Agg> kernels, cpu;
  double kernel_ns = 0, cpu_ns = 0;
  for (const auto& e : res->events()) {
    const double d = static_cast<double>(e.durationNs());
    if (e.deviceType() == c10::DeviceType::CUDA) {
      auto& a = kernels[e.name()];
      a.ns += d;
      a.calls += 1;
      kernel_ns += d;
    } else if (e.deviceType() == c10::DeviceType::CPU) {
      auto& a = cpu[e.name()];
      a.ns += d;
      a.calls += 1;
      cpu_ns += d;
    }
  }
  nlohmann::json j;
  j["cuda_activity"] = cuda_;
  j["wall_ms"] = wall_ns / 1e6;
  j["kernel_ms"] = kernel_ns / 1e6;
  j["kernel_count"] = static_cast<int64_t>(kernels.size());
  j["kernels"] = top_entries(kernels, top, kernel_ns);
  j["cpu_ops"] = top_entries(cpu, top, cpu_ns);
  j["note"] = "kernels: summed device time per kernel name over one training step; cpu_ops: inclusive host times";
  return j;
}

void log_profile(const nlohmann::json& p) {
  auto cut = [](std::string s) { return s.size() > 160 ? s.substr(0, 157) + "..." : s; };
  char buf[64];
  if (p.value("cuda_activity", false)) {
    log::info(str("profile: ", p["kernel_count"].get<int64_t>(), " distinct kernels, ", p["kernel_ms"].get<double>(),
                  " ms of kernel time in ", p["wall_ms"].get<double>(), " ms of wall time"));
    for (const auto& e : p["kernels"]) {
      std::snprintf(buf, sizeof buf, "%10.2f ms %5.1f%% %7lld x  ", e["ms"].get<double>(), 100 * e["share"].get<double>(),
                    static_cast<long long>(e["calls"].get<int64_t>()));
      log::info(str("  ", buf, cut(e["name"].get<std::string>())));
    }
  } else {
    log::info(str("profile: no CUDA device; ", p["wall_ms"].get<double>(), " ms of wall time"));
  }
  log::info("profile: CPU operators (inclusive host time)");
  for (const auto& e : p["cpu_ops"]) {
    std::snprintf(buf, sizeof buf, "%10.2f ms %7lld x  ", e["ms"].get<double>(),
                  static_cast<long long>(e["calls"].get<int64_t>()));
    log::info(str("  ", buf, cut(e["name"].get<std::string>())));
  }
}

}  // namespace subq::train
