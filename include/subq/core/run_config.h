// run_config.h — the whole run configuration (what `subq train --config X.yaml` reads) and the `run:`
// section. The other sections are declared, and documented, next to the code that uses them.
#pragma once

#include <cstdint>
#include <string>

#include "subq/core/config.h"
#include "subq/data/data_config.h"
#include "subq/dist/dist_config.h"
#include "subq/models/model_config.h"
#include "subq/train/train_config.h"

namespace subq {

struct RunSection {
  std::string name = "";
  std::string out_dir = "runs";
  int64_t seed = 0;
  std::string device = "auto";
  std::string dtype = "auto";
  std::string resume = "auto";
  int64_t threads = 0;
  std::string log_level = "info";

  static void describe(config::Section<RunSection>& s) {
    s.field("name", &RunSection::name, "run name; \"\" = the config file's name (quickstart.yaml -> quickstart)");
    s.field("out_dir", &RunSection::out_dir, "parent directory of run directories: the run lives in out_dir/name")
        .non_empty();
    s.field("seed", &RunSection::seed, "seed for init, data order and sampling").min(0);
    s.field("device", &RunSection::device, "auto (cuda when available, else cpu), cpu, cuda, or cuda:N")
        .non_empty();
    s.field("dtype", &RunSection::dtype, "compute precision: auto (bf16 mixed precision on cuda, fp32 on cpu), fp32, bf16")
        .choices({"auto", "fp32", "bf16"});
    s.field("resume", &RunSection::resume,
            "auto: continue from the run directory's latest complete checkpoint if there is one; never: refuse to "
            "start when the run directory already has checkpoints")
        .choices({"auto", "never"});
    s.field("threads", &RunSection::threads, "CPU threads for tensor ops; 0 = all cores").min(0);
    s.field("log_level", &RunSection::log_level, "console log level").choices({"debug", "info", "warn", "error"});
    s.check("device", [](const RunSection& r) {
      const auto& d = r.device;
      if (d == "auto" || d == "cpu" || d == "cuda") return std::string();
      if (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.find_first_not_of("0123456789", 5) == std::string::npos)
        return std::string();
      return "'" + d + "' is not a device; use auto, cpu, cuda or cuda:N";
    });
  }
};

struct RunConfig {
  RunSection run;
  models::ModelConfig model;
  data::DataConfig data;
  train::OptimConfig optim;
  train::ScheduleConfig schedule;
  train::TrainConfig train;
  train::EvalConfig eval;
  dist::DistConfig dist;

  static void describe(config::Section<RunConfig>& s) {
    s.field("run", &RunConfig::run, "where the run lives and how it runs");
    s.field("model", &RunConfig::model, "architecture and sizes");
    s.field("data", &RunConfig::data, "training and held-out data");
    s.field("optim", &RunConfig::optim, "optimizer");
    s.field("schedule", &RunConfig::schedule, "learning-rate schedule");
    s.field("train", &RunConfig::train, "training loop");
    s.field("eval", &RunConfig::eval, "held-out evaluation during training");
    s.field("dist", &RunConfig::dist, "data-parallel training over several processes (ignored by a single process)");
    s.check("model.max_seq_len", [](const RunConfig& c) {
      if (c.data.task != "synthetic") return std::string();
      const int64_t need = c.data.synthetic.longest_len();
      if (need <= c.model.max_seq_len) return std::string();
      return std::to_string(c.model.max_seq_len) + " is shorter than the longest synthetic " +
             "sequence (" + std::to_string(need) + " tokens, the largest of data.synthetic.train_len, eval_lens and " +
             "train_eval_lens); raise model.max_seq_len to at least " + std::to_string(need) +
             " or drop the longer data.synthetic.eval_lens";
    });
  }
};

// Loads a run config (file + overrides); fills run.name from the file name when empty.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides);
// Several files merged in order, later ones winning (config::Source::layers), then the overrides; an
// empty run.name becomes the files' names joined by '-' (parity.yaml + models/gdn.yaml -> parity-gdn).
RunConfig load_run_config(const std::vector<std::string>& paths, const std::vector<std::string>& overrides);

}  // namespace subq
