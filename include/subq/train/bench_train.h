// bench_train.h — `subq bench train`: training throughput of a config, measured with the trainer itself.
//
// The benchmark runs subq::train::train() — the very loop `subq train` runs (model from the registry,
// AdamW, autocast, clipping, host read-back per step) — for warmup + steps optimizer steps on synthetic
// tokens (uniform random ids, a small pool of batches already on the device, so data loading costs
// nothing) in a temporary run directory that is deleted afterwards. It logs every step, discards the
// warm-up steps, and reports medians over the measured ones: tokens/s, step time, MFU (GPU only: needs
// the GPU's peak FLOP/s), model FLOPs/token and achieved TFLOP/s, plus peak memory (CUDA caching-
// allocator peaks reset before the run; on CPU the process's peak RSS, reset through
// /proc/self/clear_refs where the kernel allows).
//
// The result is one JSON object with the commit, date, command, machine (GPU or CPU name, threads,
// LibTorch/CUDA versions) and the resolved config, for bench/results/.
//
// Data parallel (`subq launch --nproc N -- bench train ...`): every rank runs the loop on its own
// synthetic batches; tokens/s is the whole job's (all ranks), MFU per GPU, memory the worst rank's;
// "setup.world" says how many ranks. Rank 0 returns the result, the other ranks null.
// scripts/dist_scaling.sh turns runs at 1, 2, 4 GPUs into a scaling efficiency.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "subq/core/run_config.h"

namespace subq::dist {
class Context;
}

namespace subq::train {

struct BenchTrainOptions {
  int64_t steps = 20;          // measured steps (>= 1)
  int64_t warmup = 5;          // discarded steps before them (>= 1: the first step compiles/allocates)
  std::string work_dir;        // parent of the temporary run directory ("" = the system temp directory)
  std::vector<std::string> argv;  // the command, recorded in the result
};

// Runs the benchmark for `cfg` (model.vocab_size must be resolved, > 0). Returns the result JSON.
nlohmann::json bench_train(const RunConfig& cfg, const BenchTrainOptions& opts, dist::Context* dist = nullptr);

}  // namespace subq::train
