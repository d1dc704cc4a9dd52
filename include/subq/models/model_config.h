// model_config.h — the `model:` section: architecture and sizes. Every key is documented here.
//
// One section serves every architecture: shared sizes at the top level, architecture-specific knobs
// in their own sub-sections as those architectures land. Derived sizes use 0 to mean "derive"
// (n_kv_heads = n_heads, d_ff from the SwiGLU 8/3 rule, vocab_size from the tokenizer).
#pragma once

#include <cstdint>
#include <string>

#include "subq/core/schema.h"

namespace subq::models {

struct ModelConfig {
  std::string arch = "transformer";
  int64_t vocab_size = 0;
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;
  int64_t d_ff = 0;
  int64_t ffn_multiple_of = 64;
  int64_t max_seq_len = 4096;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  double init_std = 0.02;
  double logit_softcap = 0.0;

  // Effective sizes after the "0 = derive" rules.
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t ffn_dim() const {
    if (d_ff > 0) return d_ff;
    int64_t h = (8 * d_model) / 3;
    return ((h + ffn_multiple_of - 1) / ffn_multiple_of) * ffn_multiple_of;
  }
  int64_t head_dim() const { return d_model / n_heads; }

  static void describe(config::Section<ModelConfig>& s) {
    s.field("arch", &ModelConfig::arch, "architecture (registry name); `subq version` lists those built in")
        .non_empty();
    s.field("vocab_size", &ModelConfig::vocab_size,
            "vocabulary size; 0 = take it from the tokenizer (data.tokenizer)").min(0);
    s.field("d_model", &ModelConfig::d_model, "hidden width").min(1);
    s.field("n_layers", &ModelConfig::n_layers, "number of blocks").min(1);
    s.field("n_heads", &ModelConfig::n_heads, "attention / recurrence heads per layer").min(1);
    s.field("n_kv_heads", &ModelConfig::n_kv_heads, "key/value heads (grouped-query attention); 0 = n_heads").min(0);
    s.field("d_ff", &ModelConfig::d_ff,
            "SwiGLU hidden width; 0 = 8/3 * d_model rounded up to ffn_multiple_of").min(0);
    s.field("ffn_multiple_of", &ModelConfig::ffn_multiple_of, "rounding for the derived d_ff").min(1);
    s.field("max_seq_len", &ModelConfig::max_seq_len, "longest sequence the model supports (RoPE tables, KV cache)").min(1);
    s.field("rope_theta", &ModelConfig::rope_theta, "RoPE base frequency").min(0, false);
    s.field("norm_eps", &ModelConfig::norm_eps, "RMSNorm epsilon").min(0, false);
    s.field("tie_embeddings", &ModelConfig::tie_embeddings, "share the input embedding and output projection");
    s.field("init_std", &ModelConfig::init_std, "std of the normal init of linear and embedding weights").min(0, false);
    s.field("logit_softcap", &ModelConfig::logit_softcap, "cap logits at c*tanh(x/c); 0 = off").min(0);
    s.check("n_heads", [](const ModelConfig& m) {
      return m.d_model % m.n_heads == 0
                 ? std::string()
                 : "d_model (" + std::to_string(m.d_model) + ") must be divisible by n_heads (" +
                       std::to_string(m.n_heads) + ")";
    });
    s.check("n_kv_heads", [](const ModelConfig& m) {
      return m.n_heads % m.kv_heads() == 0 ? std::string()
                                            : "n_heads (" + std::to_string(m.n_heads) +
                                                  ") must be a multiple of n_kv_heads (" +
                                                  std::to_string(m.kv_heads()) + ")";
    });
  }
};

}  // namespace subq::models
