// checkpoint.h — checkpoints: <run>/checkpoints/step-<N>/ holding
//   model.safetensors      fp32 master weights (names = the model's named_parameters / buffers)
//   optimizer.safetensors  optimizer state (per-parameter moments and step counts)
//   trainer_state.json     step, tokens seen, data cursor (BatchSource::state), RNG states, config
//   COMPLETE               written last; a directory without it is ignored (and cleaned up)
// Each checkpoint is written to step-<N>.tmp-* and renamed into place; keep-last-k deletes the oldest
// complete ones. Resume picks the newest complete checkpoint.
//
// trainer_state.json (format 1):
//   {"format": 1, "step": N, "tokens": T, "data": <BatchSource::state()>,
//    "rng": {"cpu": "<base64 generator state>", "cuda": ["<base64>", ...]},
//    "config": "<resolved config as YAML>", "saved": "<UTC time>", ...trainer extras}
// The RNG entries are the raw bytes of the default generators' get_state() tensors, base64-encoded.
//
// Loading a trained model elsewhere (generate, export, eval) is one call:
//   auto m = subq::train::load_model("runs/quickstart");        // latest checkpoint of the run
//   m.model->forward(tokens);                                     // m.config is the run's config
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "subq/core/run_config.h"
#include "subq/core/safetensors.h"
#include "subq/models/model.h"

namespace subq::train {

class AdamW;

struct CheckpointRef {
  std::string path;
  int64_t step = 0;
};

// Complete checkpoints of a run directory, oldest first.
std::vector<CheckpointRef> list_checkpoints(const std::string& run_dir);
std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir);

// Resolves what the user named: a checkpoint directory, or a run directory (its latest checkpoint).
// InputError when there is none.
CheckpointRef resolve_checkpoint(const std::string& run_or_checkpoint);

// Loads model.safetensors into `model` (names and shapes must match; InputError lists mismatches).
void load_model_weights(torch::nn::Module& model, const std::string& checkpoint_dir);

// Writes step-<step> of run_dir: model weights, optimizer state (when given), trainer_state.json, then
// COMPLETE; in a temporary directory renamed into place (an existing step-<step> is replaced only once
// the new one is complete). Then deletes the oldest complete checkpoints beyond keep_last (>= 1).
// Returns the checkpoint directory. `optimizer_state`, when given, is written instead of the optimizer's own
// state_tensors() (with its metadata): the full state a data-parallel run gathered from its ZeRO-1 shards.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const torch::nn::Module& model,
                            const AdamW* optimizer, const nlohmann::json& trainer_state, int64_t keep_last,
                            const TensorMap* optimizer_state = nullptr);

// Removes what an interrupted save left behind in run_dir/checkpoints: step-<N>.tmp-* directories and
// step-<N> directories without COMPLETE. A step-<N>.old-* (a replaced checkpoint whose replacement did
// not land) is moved back to step-<N>. Returns the number of entries removed or restored.
int64_t clean_incomplete_checkpoints(const std::string& run_dir);

// trainer_state.json of a checkpoint (InputError when missing or malformed).
nlohmann::json read_trainer_state(const std::string& checkpoint_dir);

// The resolved config a checkpoint was trained with, with `overrides` ("key.path=value") applied.
RunConfig checkpoint_config(const std::string& checkpoint_dir, const std::vector<std::string>& overrides = {});

struct LoadedModel {
  std::shared_ptr<models::LanguageModel> model;  // fp32, CPU, weights loaded
  RunConfig config;                              // the run's config (+ overrides)
  CheckpointRef checkpoint;
};
// resolve_checkpoint + checkpoint_config + models::create_model + load_model_weights.
LoadedModel load_model(const std::string& run_or_checkpoint, const std::vector<std::string>& overrides = {});

// The default generators' states (CPU and every visible CUDA device), as stored in trainer_state.json,
// and back. Restoring checks sizes; a checkpoint saved with more CUDA devices than visible restores the
// visible ones (with a warning).
nlohmann::json capture_rng_state();
void restore_rng_state(const nlohmann::json& rng);

// base64 (RFC 4648, with padding) for the binary bits of JSON files.
std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text);  // InputError on malformed input

}  // namespace subq::train
