// run_dir.h — a run directory: resolved config, command, commit, log file, metrics, checkpoints.
//
//   <out_dir>/<name>/
//     config.yaml      the resolved config: every key, re-runnable as is (`subq train --config` it)
//     run.json         commit, command line, start time, host-independent facts about the run
//     train.log        the log of every launch (appended)
//     metrics.jsonl    one JSON object per log step / eval (written by the trainer)
//     checkpoints/     step-<N>/ (see train/checkpoint.h)
#pragma once

#include <string>
#include <vector>

#include "subq/core/run_config.h"

namespace subq {

struct RunDir {
  std::string path;
  std::string config_path() const { return path + "/config.yaml"; }
  std::string log_path() const { return path + "/train.log"; }
  std::string metrics_path() const { return path + "/metrics.jsonl"; }
  std::string checkpoints_path() const { return path + "/checkpoints"; }
};

// The run directory a config resolves to (does not create it).
std::string run_dir_path(const RunConfig& cfg);

// Creates the run directory, writes config.yaml and run.json, and starts logging to train.log.
// `argv` is recorded as the command. Throws RuntimeError when the directory cannot be written.
RunDir open_run_dir(const RunConfig& cfg, const std::vector<std::string>& argv);

// Current UTC time as ISO-8601 (2026-11-28T21:56:26Z).
std::string utc_now_iso();

}  // namespace subq
