// generate.h — autoregressive text generation through a model's decode cache.
//
// The prompt is prefilled in one step() call, then each new token costs one step() with [B, 1] tokens:
// O(1) work per token beyond attention over the cache (the Transformer's KV cache; the recurrent
// models' fixed-size state). num_samples sequences decode together as one batch sharing the prompt;
// a sequence that produced the end token stops (its later tokens are discarded) and generation ends when
// all have stopped or max_new_tokens is reached.
//
// Example:
//   subq::eval::GenerateOptions o;
//   o.sampling = {0.8, 50, 0.95};
//   o.max_new_tokens = 64;
//   o.eos_id = tok.eos_id();
//   auto r = subq::eval::generate(*model, prompt_ids, o);
//   std::string text = tok.decode(r.tokens[0]);
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include <torch/types.h>

#include "subq/eval/sampling.h"
#include "subq/models/model.h"

namespace subq::eval {

struct GenerateOptions {
  SamplingOptions sampling;           // temperature 0 = greedy
  int64_t max_new_tokens = 128;       // clipped to model.max_seq_len - prompt length (with a warning)
  int64_t num_samples = 1;            // sequences decoded together
  uint64_t seed = 0;                  // sampling generator seed
  std::optional<int64_t> eos_id;      // stop a sequence at this token (not included in its output)
  torch::ScalarType compute = torch::kFloat32;  // bf16 = autocast on the model's device, as in training
  int64_t vocab_limit = 0;            // > 0: only ids < vocab_limit are produced (the tokenizer's size when
                                      // the model's vocabulary is padded beyond it)
  std::vector<int64_t> suppress_tokens;  // ids never produced (holes in the tokenizer's id range)
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // per sample: the new tokens (eos excluded)
  std::vector<bool> stopped_at_eos;          // per sample
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;                  // step() calls after the prefill
  double prefill_s = 0, decode_s = 0;        // wall time of the prefill and of the decode loop
  int64_t new_tokens() const;                // summed over samples
};

// Called with (sample index, token) as each kept token is produced (for streaming output).
using TokenCallback = std::function<void(int64_t sample, int64_t token)>;

// Generates from `prompt` (token ids; an empty prompt starts from eos_id, the document separator the
// model saw before every document, and is a UsageError without one). The model runs in inference mode on
// the device of its parameters; UsageError when prompt + 1 token does not fit model.max_seq_len.
GenerateResult generate(models::LanguageModel& model, const std::vector<int64_t>& prompt, const GenerateOptions& opts,
                        const TokenCallback& on_token = {});

}  // namespace subq::eval
