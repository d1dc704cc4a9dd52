// data_config.h — the `data:` section: what a run trains and evaluates on. Every key is documented here.
#pragma once

#include <cstdint>
#include <string>

#include "subq/core/schema.h"

namespace subq::data {

struct DataConfig {
  std::string task = "code";
  std::string train = "data/cache/code/train";
  std::string val = "data/cache/code/val";
  std::string tokenizer = "data/cache/code/tokenizer.json";
  int64_t seq_len = 256;
  int64_t prefetch = 4;
  bool shuffle = true;

  static void describe(config::Section<DataConfig>& s) {
    s.field("task", &DataConfig::task, "workload: code (causal LM on token shards)").choices({"code"});
    s.field("train", &DataConfig::train, "training token shards: a directory of .bin shards (from `subq prepare code`)")
        .non_empty();
    s.field("val", &DataConfig::val, "held-out token shards for eval; \"\" = no eval");
    s.field("tokenizer", &DataConfig::tokenizer, "tokenizer.json (HF format) used for the shards, eval bytes and generation");
    s.field("seq_len", &DataConfig::seq_len, "tokens per training sequence (windows of seq_len+1)").min(1);
    s.field("prefetch", &DataConfig::prefetch, "batches prepared ahead by the background loader").min(0);
    s.field("shuffle", &DataConfig::shuffle,
            "train windows in a seeded random order (permuted per epoch, window boundaries shifted per epoch); "
            "false = in file order (debugging)");
  }
};

}  // namespace subq::data
