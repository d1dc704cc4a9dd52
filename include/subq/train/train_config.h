// train_config.h — the `optim:`, `schedule:`, `train:` and `eval:` sections. Every key is documented here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "subq/core/schema.h"

namespace subq::train {

struct OptimConfig {
  std::string name = "adamw";
  double lr = 3e-4;
  std::vector<double> betas{0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;
  std::vector<std::string> no_decay{"bias", "norm", "embed"};
  double grad_clip = 1.0;
  std::string fused = "auto";

  static void describe(config::Section<OptimConfig>& s) {
    s.field("name", &OptimConfig::name, "optimizer").choices({"adamw"});
    s.field("lr", &OptimConfig::lr, "peak learning rate").min(0, false);
    s.field("betas", &OptimConfig::betas, "AdamW (beta1, beta2)").range(0, 1);
    s.field("eps", &OptimConfig::eps, "AdamW epsilon").min(0, false);
    s.field("weight_decay", &OptimConfig::weight_decay, "decoupled weight decay for parameters not in no_decay").min(0);
    s.field("no_decay", &OptimConfig::no_decay,
            "parameters whose name contains any of these substrings get no weight decay (1-D params never do)");
    s.field("grad_clip", &OptimConfig::grad_clip, "clip the global gradient norm to this; 0 = off").min(0);
    s.field("fused", &OptimConfig::fused, "fused AdamW kernel: auto (on CUDA), on, off").choices({"auto", "on", "off"});
    s.check("betas", [](const OptimConfig& o) {
      return o.betas.size() == 2 ? std::string() : std::string("must have exactly two values, e.g. [0.9, 0.95]");
    });
  }
};

struct ScheduleConfig {
  std::string kind = "cosine";
  int64_t warmup_steps = 100;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;

  static void describe(config::Section<ScheduleConfig>& s) {
    s.field("kind", &ScheduleConfig::kind,
            "learning-rate schedule after linear warmup: cosine (to min_lr_ratio), wsd (constant, then linear "
            "decay over the last decay_fraction), linear, constant")
        .choices({"cosine", "wsd", "linear", "constant"});
    s.field("warmup_steps", &ScheduleConfig::warmup_steps, "linear warmup steps from 0").min(0);
    s.field("min_lr_ratio", &ScheduleConfig::min_lr_ratio, "final lr as a fraction of optim.lr").range(0, 1);
    s.field("decay_fraction", &ScheduleConfig::decay_fraction, "wsd: fraction of train.steps spent decaying").range(0, 1);
  }
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  int64_t log_every = 10;
  int64_t ckpt_every = 500;
  int64_t keep_last = 3;
  std::string nan_policy = "skip";
  int64_t max_bad_steps = 10;

  static void describe(config::Section<TrainConfig>& s) {
    s.field("steps", &TrainConfig::steps, "optimizer steps to train for").min(1);
    s.field("batch_size", &TrainConfig::batch_size, "sequences per micro-batch (per process)").min(1);
    s.field("grad_accum", &TrainConfig::grad_accum, "micro-batches accumulated per optimizer step").min(1);
    s.field("log_every", &TrainConfig::log_every, "write metrics every N steps").min(1);
    s.field("ckpt_every", &TrainConfig::ckpt_every, "checkpoint every N steps (and at the end); 0 = only at the end").min(0);
    s.field("keep_last", &TrainConfig::keep_last, "complete checkpoints to keep; older ones are deleted").min(1);
    s.field("nan_policy", &TrainConfig::nan_policy,
            "on a non-finite loss or gradient: skip the step (up to max_bad_steps in a row), or stop")
        .choices({"skip", "stop"});
    s.field("max_bad_steps", &TrainConfig::max_bad_steps, "consecutive skipped steps before stopping").min(1);
  }
};

struct EvalConfig {
  int64_t every = 200;
  int64_t batches = 20;
  int64_t batch_size = 8;

  static void describe(config::Section<EvalConfig>& s) {
    s.field("every", &EvalConfig::every, "evaluate on data.val every N steps (and at the end); 0 = only at the end").min(0);
    s.field("batches", &EvalConfig::batches, "held-out batches per evaluation; 0 = the whole held-out set").min(0);
    s.field("batch_size", &EvalConfig::batch_size, "sequences per eval batch").min(1);
  }
};

}  // namespace subq::train
