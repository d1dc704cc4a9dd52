// test_generate.cpp — generation through the decode cache against generation by repeated full forward
// passes (greedy and seeded sampling, one and several samples), end-of-text stops, length clipping, the
// vocabulary limit and suppressed ids, and input errors. Tiny random Transformers on the CPU.
#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "subq/core/error.h"
#include "subq/eval/generate.h"
#include "subq/models/model.h"
#include "subq_catch.h"

using namespace subq;

namespace {

std::shared_ptr<models::LanguageModel> tiny_model(uint64_t seed = 0) {
  models::ModelConfig c;
  c.arch = "transformer";
  c.vocab_size = 61;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.max_seq_len = 48;
  c.init_std = 0.3;  // large enough that logits are far from ties
  torch::manual_seed(seed);
  return models::create_model(c);
}

// The reference: every token costs a forward over the whole sequence so far (no cache). Rows decode as
// one batch and draw from the same generator exactly as generate() does.
std::vector<std::vector<int64_t>> reference(models::LanguageModel& m, const std::vector<int64_t>& prompt, int64_t rows,
                                            int64_t n_new, const eval::SamplingOptions& so, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = eval::make_generator(seed);
  auto seq = torch::tensor(prompt, torch::kInt64).unsqueeze(0).repeat({rows, 1});
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(rows));
  for (int64_t i = 0; i < n_new; ++i) {
    auto logits = m.forward(seq).select(1, seq.size(1) - 1);
    auto next = eval::sample_next(logits, so, gen);
    for (int64_t b = 0; b < rows; ++b) out[b].push_back(next[b].item<int64_t>());
    seq = torch::cat({seq, next.unsqueeze(1)}, 1);
  }
  return out;
}

}  // namespace

TEST_CASE("greedy generation through the cache equals greedy generation by full forwards", "[generate]") {
  auto m = tiny_model();
  std::vector<int64_t> prompt{3, 17, 5, 42, 8, 8, 1};
  eval::GenerateOptions o;
  o.sampling = {0.0, 0, 1.0};
  o.max_new_tokens = 30;
  auto r = eval::generate(*m, prompt, o);
  auto ref = reference(*m, prompt, 1, 30, o.sampling, 0);
  REQUIRE(r.tokens.size() == 1);
  CHECK(r.tokens[0] == ref[0]);
  CHECK(r.prompt_tokens == 7);
  CHECK(r.decode_steps == 29);  // one step() per new token after the prefill
  CHECK_FALSE(r.stopped_at_eos[0]);
  // Not all the same token: the comparison exercises the cache at many positions.
  CHECK(std::set<int64_t>(ref[0].begin(), ref[0].end()).size() > 3);
}

TEST_CASE("seeded sampling through the cache equals sampling by full forwards, per seed", "[generate]") {
  auto m = tiny_model(1);
  std::vector<int64_t> prompt{9, 2, 33};
  eval::GenerateOptions o;
  o.sampling = {0.9, 20, 0.95};
  o.max_new_tokens = 20;
  o.num_samples = 3;
  o.seed = 1234;
  auto r = eval::generate(*m, prompt, o);
  auto ref = reference(*m, prompt, 3, 20, o.sampling, 1234);
  for (int b = 0; b < 3; ++b) CHECK(r.tokens[b] == ref[b]);
  CHECK(r.tokens[0] != r.tokens[1]);  // samples are independent draws
  auto again = eval::generate(*m, prompt, o);
  CHECK(again.tokens == r.tokens);
  o.seed = 4321;
  CHECK(eval::generate(*m, prompt, o).tokens != r.tokens);
}

TEST_CASE("generation stops at the end token and clips to the model's length", "[generate]") {
  auto m = tiny_model();
  std::vector<int64_t> prompt{3, 17, 5, 42, 8, 8, 1};
  eval::GenerateOptions o;
  o.sampling = {0.0, 0, 1.0};
  o.max_new_tokens = 30;
  auto free_run = eval::generate(*m, prompt, o).tokens[0];
  // Make the 6th generated token the end token: output stops right before its first occurrence.
  const int64_t eos = free_run[5];
  size_t first = std::find(free_run.begin(), free_run.end(), eos) - free_run.begin();
  o.eos_id = eos;
  auto r = eval::generate(*m, prompt, o);
  CHECK(r.stopped_at_eos[0]);
  CHECK(r.tokens[0] == std::vector<int64_t>(free_run.begin(), free_run.begin() + first));

  o.eos_id.reset();
  o.max_new_tokens = 1000;  // prompt 7 + new must fit max_seq_len 48
  CHECK(eval::generate(*m, prompt, o).tokens[0].size() == 41);
  o.max_new_tokens = 0;
  CHECK(eval::generate(*m, prompt, o).tokens[0].empty());
}

TEST_CASE("vocabulary limit and suppressed ids are never produced", "[generate]") {
  auto m = tiny_model();
  std::vector<int64_t> prompt{3, 17, 5};
  eval::GenerateOptions o;
  o.sampling = {1.5, 0, 1.0};
  o.max_new_tokens = 40;
  o.num_samples = 4;
  o.vocab_limit = 10;
  o.suppress_tokens = {2, 3, 7};
  auto r = eval::generate(*m, prompt, o);
  std::set<int64_t> seen;
  for (const auto& s : r.tokens) seen.insert(s.begin(), s.end());
  CHECK(*seen.rbegin() < 10);
  for (int64_t t : {2, 3, 7}) CHECK(seen.count(t) == 0);
  CHECK(seen.size() >= 4);
}

TEST_CASE("generation input errors", "[generate]") {
  auto m = tiny_model();
  eval::GenerateOptions o;
  o.max_new_tokens = 4;
  CHECK_THROWS_AS(eval::generate(*m, std::vector<int64_t>(48, 1), o), UsageError);  // no room for one token
  CHECK_THROWS_AS(eval::generate(*m, {1, 61}, o), InputError);                       // id outside the vocabulary
  CHECK_THROWS_AS(eval::generate(*m, {}, o), UsageError);                            // empty prompt, no eos
  o.eos_id = 0;
  o.sampling = {0.0, 0, 1.0};
  CHECK(eval::generate(*m, {}, o).prompt_tokens == 1);  // starts from the separator
  o.num_samples = 0;
  CHECK_THROWS_AS(eval::generate(*m, {1}, o), UsageError);
  o.num_samples = 1;
  o.sampling.top_p = 0;
  CHECK_THROWS_AS(eval::generate(*m, {1}, o), UsageError);
  // The model's mode is restored.
  m->train();
  o.sampling = {0.0, 0, 1.0};
  eval::generate(*m, {1, 2}, o);
  CHECK(m->is_training());
}
