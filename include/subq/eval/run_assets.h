// run_assets.h — finding what a trained run needs outside its checkpoint: the run directory of a
// checkpoint, and the tokenizer its config names (for generate, export and eval).
//
// Paths in a config (data.tokenizer, data.train, ...) are relative to the directory `subq train` ran
// in. A later command may run elsewhere, so a relative path that does not exist from the current
// directory is retried against the working directory run.json recorded for the run's launches (newest
// first).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "subq/core/run_config.h"
#include "subq/data/tokenizer.h"

namespace subq::eval {

// `path` as given when it exists, else relative to a recorded launch directory of `run_dir` where it
// exists; "" when found nowhere.
std::string resolve_run_path(const std::string& path, const std::string& run_dir);

// <run>/checkpoints/step-<N> -> <run>; any other directory -> its parent's parent only when that holds a
// config.yaml or run.json, else "".
std::string run_dir_of_checkpoint(const std::string& checkpoint_dir);

// The tokenizer of a run: `override_path` when non-empty, else cfg.data.tokenizer resolved as above.
// InputError naming the places tried and the fix (--tokenizer) when it cannot be found.
data::Tokenizer load_run_tokenizer(const RunConfig& cfg, const std::string& run_dir, const std::string& override_path,
                                   std::string* resolved_path = nullptr);

// Ids in [0, limit) the tokenizer cannot decode (holes in its id range), for GenerateOptions::suppress_tokens.
std::vector<int64_t> undecodable_ids(const data::Tokenizer& tok, int64_t limit);

}  // namespace subq::eval
