// checkpoint.h — checkpoints: <run>/checkpoints/step-<N>/ holding
//   model.safetensors      fp32 master weights (names = the model's named_parameters / buffers)
//   optimizer.safetensors  optimizer state (per-parameter moments and step counts)
//   trainer_state.json     step, tokens seen, data cursor (BatchSource::state), RNG states, config
//   COMPLETE               written last; a directory without it is ignored (and cleaned up)
// Each checkpoint is written to step-<N>.tmp-* and renamed into place; keep-last-k deletes the oldest
// complete ones. Resume picks the newest complete checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

namespace subq::train {

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

}  // namespace subq::train
