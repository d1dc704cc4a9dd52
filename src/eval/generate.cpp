// generate.cpp — see generate.h.
//
// Decisions:
//  * Finished sequences keep being fed (their last sampled token) so the batch stays rectangular; their
//    outputs are dropped. Batched decoding of many samples costs about one sample's latency on a GPU.
//  * One host read-back per token (the sampled ids): needed for the end-of-sequence check and
//    streaming, and it makes the measured prefill/decode times real (no queued GPU work left over).
//  * Ids the tokenizer cannot decode (a padded model vocabulary, holes in the id range) are removed
//    before sampling by narrowing the logits to vocab_limit columns and setting suppressed ids to -inf,
//    so sampled indices stay token ids and an untrained model cannot emit undecodable tokens.
#include "subq/eval/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/log.h"

namespace subq::eval {

int64_t GenerateResult::new_tokens() const {
  int64_t n = 0;
  for (const auto& t : tokens) n += static_cast<int64_t>(t.size());
  return n;
}

GenerateResult generate(models::LanguageModel& model, const std::vector<int64_t>& prompt_in,
                        const GenerateOptions& opts, const TokenCallback& on_token) {
  validate(opts.sampling);
  if (opts.num_samples < 1) throw UsageError(str("num-samples must be >= 1, got ", opts.num_samples));
  if (opts.max_new_tokens < 0) throw UsageError(str("max-new-tokens must be >= 0, got ", opts.max_new_tokens));
  std::vector<int64_t> prompt = prompt_in;
  if (prompt.empty()) {
    if (!opts.eos_id)
      throw UsageError("the prompt is empty and the tokenizer has no end-of-text token to start from; give a prompt");
    prompt.push_back(*opts.eos_id);
  }
  const int64_t V = model.config().vocab_size;
  for (int64_t t : prompt)
    if (t < 0 || t >= V)
      throw InputError(str("prompt token id ", t, " is outside the model's vocabulary [0, ", V,
                           "): the tokenizer does not match this model (check data.tokenizer or --tokenizer)"));
  const int64_t P = static_cast<int64_t>(prompt.size());
  const int64_t max_len = model.config().max_seq_len;
  if (P + 1 > max_len)
    throw UsageError(str("the prompt has ", P, " tokens but the model handles at most model.max_seq_len = ", max_len,
                         " positions (prompt + at least one new token); shorten the prompt"));
  int64_t max_new = opts.max_new_tokens;
  if (P + max_new > max_len) {
    max_new = max_len - P;
    log::warn(str("max-new-tokens clipped to ", max_new, ": prompt (", P, ") + new tokens must fit model.max_seq_len = ",
                  max_len));
  }

  const int64_t B = opts.num_samples;
  GenerateResult res;
  res.tokens.assign(static_cast<size_t>(B), {});
  res.stopped_at_eos.assign(static_cast<size_t>(B), false);
  res.prompt_tokens = P;
  if (max_new == 0) return res;

  auto params = model.parameters();
  SUBQ_CHECK(!params.empty(), "model has no parameters");
  const torch::Device device = params.front().device();
  const bool was_training = model.is_training();
  model.eval();
  c10::InferenceMode inference;
  AutocastGuard autocast(device, opts.compute);
  at::Generator gen = make_generator(opts.seed);
  using clk = std::chrono::steady_clock;

  auto t0 = clk::now();
  auto state = model.new_decode_state(B, P + max_new);
  torch::Tensor prompt_t =
      torch::tensor(prompt, torch::TensorOptions().dtype(torch::kInt64)).unsqueeze(0).expand({B, P}).contiguous().to(device);
  const int64_t limit = opts.vocab_limit > 0 ? std::min(opts.vocab_limit, V) : V;
  torch::Tensor suppress;
  if (!opts.suppress_tokens.empty()) {
    std::vector<int64_t> ids;
    for (int64_t t : opts.suppress_tokens)
      if (t >= 0 && t < limit) ids.push_back(t);
    if (!ids.empty()) suppress = torch::tensor(ids, torch::TensorOptions().dtype(torch::kInt64)).to(device);
  }
  // [B, t, V] -> the last position's logits, restricted to producible ids: [B, limit] fp32.
  auto last_logits = [&](const torch::Tensor& l) {
    torch::Tensor x = l.select(1, l.size(1) - 1).narrow(1, 0, limit).to(torch::kFloat32);
    if (suppress.defined()) x = x.index_fill(1, suppress, -std::numeric_limits<float>::infinity());
    return x;
  };
  torch::Tensor logits = last_logits(model.step(prompt_t, *state));
  std::vector<bool> done(static_cast<size_t>(B), false);
  int64_t n_done = 0;
  for (int64_t i = 0; i < max_new; ++i) {
    torch::Tensor next = sample_next(logits, opts.sampling, gen);  // [B] CPU int64 (synchronises)
    if (i == 0) {
      res.prefill_s = std::chrono::duration<double>(clk::now() - t0).count();
      t0 = clk::now();
    }
    auto a = next.accessor<int64_t, 1>();
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      if (opts.eos_id && a[b] == *opts.eos_id) {
        done[b] = true;
        res.stopped_at_eos[b] = true;
        ++n_done;
        continue;
      }
      res.tokens[b].push_back(a[b]);
      if (on_token) on_token(b, a[b]);
    }
    if (n_done == B || i + 1 == max_new) break;
    logits = last_logits(model.step(next.unsqueeze(1).to(device), *state));
    ++res.decode_steps;
  }
  res.decode_s = std::chrono::duration<double>(clk::now() - t0).count();
  if (was_training) model.train();
  return res;
}

}  // namespace subq::eval
