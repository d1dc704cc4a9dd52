// trainer.h — the training loop: model from the registry, AdamW + schedule, gradient accumulation,
// clipping, NaN policy, periodic eval and checkpoints, metrics, exact resume.
//
// train() owns the whole run: it seeds every generator from run.seed, builds the model (models::
// create_model(cfg.model), vocab_size already resolved by the caller), moves it to run.device in fp32
// (master weights) and runs the compute under bf16 autocast when run.dtype resolves to bf16 (the default
// on CUDA; fp32 on CPU). If the run directory holds a complete checkpoint and run.resume = auto, it
// continues from the newest one: weights, optimizer state, step, tokens, data cursor and RNG states, so
// that an interrupted run and an uninterrupted one produce bitwise-identical losses on the same machine
// (tested on CPU in fp32). run.resume = never refuses to start when checkpoints exist.
//
// One optimizer step = train.grad_accum micro-batches from the train source, each loss divided by
// grad_accum before backward (each micro-batch's loss is its mean over its targets). Evaluation is a
// function (eval::Evaluator) called every eval.every steps and at the end; it should score the same
// held-out batches each time (eval::source_evaluator does for an endless source; a pass over a finite
// held-out set does by construction).
//
// Data parallel: pass a distributed dist::Context (world > 1; see dist/context.h). Each rank then feeds
// its own batches (train.batch_size per micro-batch per rank: the global batch per optimizer step is
// batch_size x grad_accum x world), gradients are averaged over ranks (dist/data_parallel.h), the loss
// and metrics are reduced over ranks, evaluations are summed over the ranks' shares of the held-out set,
// and only rank 0 writes to the run directory (metrics, checkpoints; it decides and loads the resume for
// everybody). Without a context, or with a single-process one, nothing changes.
//
// Example:
//   subq::train::TrainData data{&train_loader, subq::eval::source_evaluator(val_source, 20, token_bytes)};
//   auto result = subq::train::train(cfg, run_dir, data);
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"
#include "subq/data/batch.h"
#include "subq/eval/lm_eval.h"

namespace subq::dist {
class Context;
}

namespace subq::train {

struct TrainData {
  data::BatchSource* train = nullptr;  // required; batches of train.batch_size x data.seq_len
  eval::Evaluator evaluate;            // optional: no eval without it
};

struct TrainHooks {
  // After each completed step: true stops the run there (after a checkpoint), as a signal would.
  std::function<bool(int64_t step)> should_stop;
  // Every step's record ({"step", "loss", "lr", "grad_norm", "skipped"}), log step or not.
  std::function<void(const nlohmann::json&)> on_step;
};

struct TrainResult {
  int64_t start_step = 0;  // 0 for a fresh run, else the checkpoint step resumed from
  int64_t step = 0;        // last completed step
  int64_t tokens = 0;      // tokens trained on (by all ranks), resumed history included
  bool finished = false;   // reached train.steps (false when stopped early)
  std::vector<double> losses;  // loss of every step run by this call (NaN for a skipped step)
  std::optional<eval::LmEvalResult> last_eval;
  std::string last_checkpoint;
  int64_t skipped_steps = 0;  // non-finite steps skipped in this call
  int64_t num_params = 0;
};

TrainResult train(const RunConfig& cfg, const RunDir& run_dir, const TrainData& data, const TrainHooks& hooks = {},
                  dist::Context* dist = nullptr);

// Asks a running train() to checkpoint and return at the end of the current step (async-signal-safe:
// apps call it from SIGINT/SIGTERM handlers). train() clears the request when it starts.
void request_stop();
bool stop_requested();

}  // namespace subq::train
