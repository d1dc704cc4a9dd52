// lm_data.cpp — see lm_data.h. Data parallel passes each process's rank and world to the loaders.
#include "subq/train/lm_data.h"

#include <filesystem>

#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/data/synthetic.h"

namespace subq::train {

std::optional<data::Tokenizer> load_run_tokenizer(const RunConfig& cfg) {
  if (cfg.data.tokenizer.empty()) return std::nullopt;
  if (!std::filesystem::exists(cfg.data.tokenizer))
    throw InputError(str("data.tokenizer = ", cfg.data.tokenizer, ": file not found; run `subq prepare code` first ",
                         "(it writes the tokenizer next to the shards) or point data.tokenizer at a tokenizer.json"));
  return data::Tokenizer::from_file(cfg.data.tokenizer);
}

namespace {
void resolve_synthetic(RunConfig& cfg) {
  const data::SyntheticTask task(cfg.data.synthetic);  // validates the task settings
  const int64_t v = task.vocab_size();
  if (cfg.model.vocab_size == 0) {
    cfg.model.vocab_size = v;
    log::info(str("model.vocab_size = ", v, " (synthetic task ", task.name(), ")"));
  } else if (cfg.model.vocab_size < v) {
    throw ConfigError(str("model.vocab_size = ", cfg.model.vocab_size, " is smaller than the vocabulary of synthetic task ",
                          task.name(), " (", v, " ids); set model.vocab_size to 0 (take it from the task) or at least ", v));
  }
  if (cfg.data.seq_len != cfg.data.synthetic.train_len) {
    log::debug(str("data.seq_len = ", cfg.data.synthetic.train_len, " (data.synthetic.train_len)"));
    cfg.data.seq_len = cfg.data.synthetic.train_len;
  }
}
}  // namespace

std::optional<data::Tokenizer> resolve_vocab_size(RunConfig& cfg) {
  if (cfg.data.task == "synthetic") {
    resolve_synthetic(cfg);
    return std::nullopt;
  }
  auto tok = load_run_tokenizer(cfg);
  if (cfg.model.vocab_size == 0) {
    if (!tok)
      throw ConfigError("model.vocab_size = 0 takes the vocabulary from data.tokenizer, but data.tokenizer is \"\"; "
                        "set one of them");
    const int64_t v = tok->vocab_size();
    cfg.model.vocab_size = (v + kVocabMultiple - 1) / kVocabMultiple * kVocabMultiple;
    log::info(str("model.vocab_size = ", cfg.model.vocab_size, " (tokenizer ", cfg.data.tokenizer, ": ", v,
                  " ids, rounded up to a multiple of ", kVocabMultiple, ")"));
  } else if (tok && tok->vocab_size() > cfg.model.vocab_size) {
    throw ConfigError(str("model.vocab_size = ", cfg.model.vocab_size, " is smaller than the vocabulary of ",
                          cfg.data.tokenizer, " (", tok->vocab_size(), " ids); set model.vocab_size to 0 (take it ",
                          "from the tokenizer) or at least ", tok->vocab_size()));
  }
  return tok;
}

namespace {
void check_shard_vocab(const data::ShardSet& s, const RunConfig& cfg, const char* key) {
  if (s.vocab_size() > static_cast<uint64_t>(cfg.model.vocab_size))
    throw InputError(str(key, " = ", s.path(), ": its shards were written with a vocabulary of ", s.vocab_size(),
                         " ids, more than model.vocab_size = ", cfg.model.vocab_size,
                         "; use the tokenizer the shards were made with (data.tokenizer) and model.vocab_size = 0"));
}
}  // namespace

LmData open_lm_data(const RunConfig& cfg, const torch::Device& device, bool with_train, bool with_val, int64_t rank,
                    int64_t world) {
  SUBQ_CHECK(cfg.model.vocab_size > 0, "resolve model.vocab_size first");
  LmData d;
  d.tokenizer = load_run_tokenizer(cfg);
  std::vector<int32_t> bytes;
  if (d.tokenizer) {
    bytes = data::token_byte_table(*d.tokenizer);
    d.token_bytes = eval::token_bytes_table(cfg.model.vocab_size, [&](int64_t id) {
      return id < static_cast<int64_t>(bytes.size()) ? static_cast<int64_t>(bytes[static_cast<size_t>(id)]) : 0;
    });
  }
  if (with_train) {
    d.train = std::make_unique<data::TokenWindowLoader>(data::LoaderOptions::from_config(
        cfg.data, cfg.train.batch_size, static_cast<uint64_t>(cfg.run.seed), rank, world, device));
    check_shard_vocab(d.train->shards(), cfg, "data.train");
  }
  if (with_val && !cfg.data.val.empty()) {
    d.val = std::make_unique<data::EvalWindows>(data::EvalOptions::from_config(cfg.data, cfg.eval, rank, world, device, bytes));
    check_shard_vocab(d.val->shards(), cfg, "data.val");
  }
  return d;
}

eval::Evaluator LmData::evaluator() {
  if (!val) return {};
  data::EvalWindows* v = val.get();
  torch::Tensor tb = token_bytes;
  return [v, tb](models::LanguageModel& model, torch::ScalarType compute) {
    v->reset();
    eval::LmEvalOptions o;
    o.batches = 0;  // EvalWindows applies eval.batches itself
    o.token_bytes = tb;
    o.compute = compute;
    return eval::evaluate_lm(model, [v]() { return v->next(); }, o);
  };
}

}  // namespace subq::train
