// schedule.cpp — see schedule.h for the formulas. Pure arithmetic in double, so a resumed run computes
// exactly the learning rates of an uninterrupted one.
#include "subq/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "subq/core/error.h"

namespace subq::train {

double lr_at(int64_t step, const ScheduleConfig& sched, double peak_lr, int64_t total_steps) {
  SUBQ_CHECK(total_steps >= 1);
  const int64_t s = std::clamp<int64_t>(step, 1, total_steps);
  const int64_t warmup = std::min(sched.warmup_steps, total_steps);
  const double lr_min = peak_lr * sched.min_lr_ratio;
  if (warmup > 0 && s <= warmup) return peak_lr * static_cast<double>(s) / warmup;
  if (sched.kind == "constant") return peak_lr;
  if (sched.kind == "wsd") {
    const int64_t decay = std::llround(sched.decay_fraction * static_cast<double>(total_steps));
    const int64_t decay_start = std::max(total_steps - decay, warmup);
    if (s <= decay_start || total_steps == decay_start) return peak_lr;
    const double frac = static_cast<double>(s - decay_start) / static_cast<double>(total_steps - decay_start);
    return peak_lr - (peak_lr - lr_min) * frac;
  }
  const int64_t span = total_steps - warmup;
  const double p = span > 0 ? static_cast<double>(s - warmup) / static_cast<double>(span) : 1.0;
  if (sched.kind == "cosine") return lr_min + (peak_lr - lr_min) * 0.5 * (1.0 + std::cos(M_PI * p));
  if (sched.kind == "linear") return peak_lr - (peak_lr - lr_min) * p;
  throw ConfigError(str("schedule.kind = '", sched.kind, "': use cosine, wsd, linear or constant"));
}

}  // namespace subq::train
