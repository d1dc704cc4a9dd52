// profile.h — where the time of a training step goes: LibTorch's Kineto profiler around a stretch of
// work, aggregated by name into the device kernels that ran (CUDA activity, from CUPTI) and the CPU-side
// ATen / autograd operators (inclusive times: an op's time contains the ops it calls).
//
// Used by `subq bench train --profile N` (one extra step after the measured ones runs under the
// profiler; the measured numbers stay unprofiled). Example:
//   subq::train::StepProfiler p;
//   p.start();            // throws subq::InputError when a profiler is already running
//   ... one training step ...
//   nlohmann::json j = p.stop(20);   // {"kernels": [{"name", "ms", "calls", "share"}...], ...}
//   subq::train::log_profile(j);     // a readable table in the log
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>

namespace subq::train {

class StepProfiler {
 public:
  StepProfiler() = default;
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;
  ~StepProfiler();  // stops a running profile (results dropped)

  // Starts collecting CPU operators and, where CUDA is available, device kernels.
  void start();
  bool running() const { return running_; }
  // Stops (after synchronising the CUDA device when there is one) and returns the `top` entries of each
  // list by total time, plus totals:
  //   {"kernels": [{"name", "ms", "calls", "share"}], "kernel_ms": total over all kernels,
  //    "kernel_count": distinct kernels, "cpu_ops": [...inclusive...], "wall_ms": start-to-stop time,
  //    "cuda_activity": whether device kernels were collected}
  // "share" is a kernel's fraction of kernel_ms.
  nlohmann::json stop(int64_t top);

 private:
  bool running_ = false;
  bool cuda_ = false;
  int64_t t0_ns_ = 0;
};

// Logs a stop() result as two tables (kernels, then CPU operators).
void log_profile(const nlohmann::json& profile);

}  // namespace subq::train
