// schedule.h — learning-rate schedules (the `schedule:` section, train_config.h).
//
// Steps are counted from 1 (the first optimizer step is step 1). Warmup is linear from 0: step s <= W
// gets lr * s / W, so the first step already moves. After warmup, with p = (s - W) / (S - W) in [0, 1]
// (S = train.steps) and lr_min = lr * min_lr_ratio:
//   cosine    lr_min + (lr - lr_min) * (1 + cos(pi p)) / 2
//   linear    lr - (lr - lr_min) * p
//   constant  lr
//   wsd       lr until the last D = round(decay_fraction * S) steps, then linear from lr to lr_min: step s
//             in the decay gets lr - (lr - lr_min) * (s - (S - D)) / D (the last step reaches lr_min)
// Steps past S keep the final value.
#pragma once

#include <cstdint>

#include "subq/train/train_config.h"

namespace subq::train {

double lr_at(int64_t step, const ScheduleConfig& sched, double peak_lr, int64_t total_steps);

}  // namespace subq::train
