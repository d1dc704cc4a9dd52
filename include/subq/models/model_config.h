// model_config.h — the `model:` section: architecture and sizes. Every key is documented here.
//
// One section serves every architecture: shared sizes at the top level, architecture-specific knobs
// in their own sub-sections (model.xlstm, model.mamba2, model.gdn), read only by that architecture.
// Derived sizes use 0 to mean "derive" (n_kv_heads = n_heads, d_ff from the SwiGLU 8/3 rule, vocab_size
// from the tokenizer).
//
// Which shared keys each architecture reads:
//   transformer: all of them.
//   xlstm:  d_model, n_layers (blocks), n_heads (mLSTM and sLSTM heads), d_ff/ffn_multiple_of (SwiGLU of
//           every block), norm_eps, tie_embeddings, init_std (only with xlstm.small_init = false),
//           logit_softcap (30 in the xLSTM configs).
//   mamba2: d_model, n_layers (mixer blocks; Mamba-2 has no MLP), norm_eps, tie_embeddings, init_std,
//           logit_softcap (off by default; not exportable); its heads are derived: expand * d_model /
//           mamba2.head_dim (n_heads is ignored).
//   gdn:    d_model, n_layers, n_heads (with gdn.head_dim: key width n_heads * head_dim), d_ff (SwiGLU),
//           norm_eps, tie_embeddings, init_std.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "subq/core/schema.h"

namespace subq::models {

// model.xlstm — xLSTM (DESIGN.md "mLSTM", "sLSTM"): blocks in repeating groups of `a` mLSTM blocks
// followed by `b` sLSTM blocks ("a:b"; "1:0" = mLSTM only, "7:1" puts sLSTM at blocks 7, 15, ...).
struct XlstmConfig {
  std::string pattern = "1:0";
  double qk_dim_factor = 0.5;      // q, k width = factor * d_model (split over heads)
  double v_dim_factor = 1.0;       // v width = factor * d_model
  double gate_softcap = 15.0;      // i~, f~ soft-capped at c*tanh(x/c); 0 = off
  double igate_bias_init = -10.0;  // mLSTM input-gate bias init
  int64_t chunk_size = 64;         // mLSTM chunkwise form
  int64_t slstm_conv_kernel = 4;   // causal conv (+SiLU) feeding the sLSTM i, f gates; 0 = none
  bool small_init = true;          // input-side weights ~ N(0, sqrt(2 / (5 d_model))) as NX-AI; false = init_std

  // (a, b) from pattern; throws nothing (check() validates the string).
  std::pair<int64_t, int64_t> ratio() const {
    auto c = pattern.find(':');
    return {std::stoll(pattern.substr(0, c)), std::stoll(pattern.substr(c + 1))};
  }
  // True when block `i` (0-based) is an sLSTM block.
  bool is_slstm(int64_t i) const {
    auto [a, b] = ratio();
    return b > 0 && (i % (a + b)) >= a;
  }

  static void describe(config::Section<XlstmConfig>& s) {
    s.field("pattern", &XlstmConfig::pattern,
            "block pattern \"a:b\": repeating groups of a mLSTM blocks then b sLSTM blocks (\"1:0\" = mLSTM "
            "only, \"1:1\" alternates, \"7:1\" as in the paper's code models)")
        .non_empty();
    s.field("qk_dim_factor", &XlstmConfig::qk_dim_factor, "mLSTM q/k width as a fraction of d_model").min(0, false);
    s.field("v_dim_factor", &XlstmConfig::v_dim_factor, "mLSTM v width as a fraction of d_model").min(0, false);
    s.field("gate_softcap", &XlstmConfig::gate_softcap, "soft-cap of the mLSTM gate pre-activations; 0 = off").min(0);
    s.field("igate_bias_init", &XlstmConfig::igate_bias_init, "initial bias of the mLSTM input gate");
    s.field("chunk_size", &XlstmConfig::chunk_size, "chunk length of the chunkwise mLSTM").min(1);
    s.field("slstm_conv_kernel", &XlstmConfig::slstm_conv_kernel,
            "taps of the causal conv (+SiLU) before the sLSTM input/forget gates; 0 = no conv").min(0);
    s.field("small_init", &XlstmConfig::small_init,
            "embeddings, lm_head and the input-side projections (q, k, v, SwiGLU up, sLSTM gates) drawn from "
            "N(0, sqrt(2 / (5 d_model))) (\"small init\", as NX-AI's xLSTM); false = N(0, model.init_std)");
    s.check("pattern", [](const XlstmConfig& x) {
      const auto& p = x.pattern;
      auto c = p.find(':');
      auto digits = [](const std::string& t) {
        return !t.empty() && t.size() < 6 && t.find_first_not_of("0123456789") == std::string::npos;
      };
      if (c == std::string::npos || !digits(p.substr(0, c)) || !digits(p.substr(c + 1)))
        return "pattern \"" + p + "\" is not of the form \"a:b\" with whole numbers (e.g. \"7:1\", \"1:0\")";
      auto [a, b] = x.ratio();
      if (a + b == 0) return std::string("pattern \"0:0\" has no blocks; use e.g. \"1:0\"");
      return std::string();
    });
  }
};

// model.mamba2 — Mamba-2 (DESIGN.md "Mamba-2 (SSD)"); defaults are the reference implementation's.
struct Mamba2Config {
  int64_t d_state = 128;
  int64_t expand = 2;
  int64_t head_dim = 64;
  int64_t n_groups = 1;
  int64_t conv_kernel = 4;
  int64_t chunk_size = 256;
  double dt_min = 1e-3, dt_max = 0.1, dt_init_floor = 1e-4;
  double a_init_min = 1.0, a_init_max = 16.0;
  bool recompute = false;  // activation checkpointing per block (training memory vs ~1/3 more compute)

  static void describe(config::Section<Mamba2Config>& s) {
    s.field("d_state", &Mamba2Config::d_state, "SSM state size N per head").min(1);
    s.field("expand", &Mamba2Config::expand, "inner width = expand * d_model").min(1);
    s.field("head_dim", &Mamba2Config::head_dim, "head dim P; heads = expand * d_model / head_dim").min(1);
    s.field("n_groups", &Mamba2Config::n_groups, "B/C groups (heads per group = heads / n_groups)").min(1);
    s.field("conv_kernel", &Mamba2Config::conv_kernel, "taps of the causal depthwise conv on xBC").min(1);
    s.field("chunk_size", &Mamba2Config::chunk_size, "chunk length of the chunkwise SSD").min(1);
    s.field("dt_min", &Mamba2Config::dt_min, "lower end of the log-uniform init of softplus(dt_bias)").min(0, false);
    s.field("dt_max", &Mamba2Config::dt_max, "upper end of the log-uniform init of softplus(dt_bias)").min(0, false);
    s.field("dt_init_floor", &Mamba2Config::dt_init_floor, "floor of the initial dt").min(0, false);
    s.field("a_init_min", &Mamba2Config::a_init_min, "A_log = log(U(a_init_min, a_init_max))").min(0, false);
    s.field("a_init_max", &Mamba2Config::a_init_max, "see a_init_min").min(0, false);
    s.field("recompute", &Mamba2Config::recompute,
            "activation checkpointing: keep only each block's input for backward and recompute the block "
            "there (the chunkwise SSD's per-chunk blocks dominate training memory; costs one more forward)");
    s.check("dt_max", [](const Mamba2Config& m) {
      return m.dt_min <= m.dt_max ? std::string() : std::string("dt_max must be >= dt_min");
    });
    s.check("a_init_max", [](const Mamba2Config& m) {
      return m.a_init_min <= m.a_init_max ? std::string() : std::string("a_init_max must be >= a_init_min");
    });
  }
};

// model.gdn — Gated DeltaNet (DESIGN.md "Gated DeltaNet"); defaults follow flash-linear-attention.
struct GdnConfig {
  int64_t head_dim = 256;          // key (and query) dim per head; value dim = expand_v * head_dim
  double expand_v = 2.0;
  bool allow_neg_eigval = false;   // beta = 2 sigmoid(.) in [0, 2]: the [-1, 1] eigenvalue variant
  bool use_short_conv = true;      // causal conv (+SiLU) on q, k, v
  int64_t conv_kernel = 4;
  int64_t chunk_size = 64;         // chunkwise (WY/UT) form
  bool recompute = false;          // activation checkpointing per block (training memory vs ~1/3 more compute)

  static void describe(config::Section<GdnConfig>& s) {
    s.field("head_dim", &GdnConfig::head_dim, "query/key dim per head (the key width is n_heads * head_dim)").min(1);
    s.field("expand_v", &GdnConfig::expand_v, "value dim per head = expand_v * head_dim").min(0, false);
    s.field("allow_neg_eigval", &GdnConfig::allow_neg_eigval,
            "beta = 2 sigmoid(W_b x) so the transition's eigenvalues lie in [-1, 1] (the \"[-1,1]\" variant)");
    s.field("use_short_conv", &GdnConfig::use_short_conv, "causal depthwise conv + SiLU on q, k and v");
    s.field("conv_kernel", &GdnConfig::conv_kernel, "taps of the short convs").min(1);
    s.field("chunk_size", &GdnConfig::chunk_size, "chunk length of the chunkwise gated delta rule").min(1);
    s.field("recompute", &GdnConfig::recompute,
            "activation checkpointing: keep only each block's input for backward and recompute the block there "
            "(the chunkwise op's per-chunk states dominate training memory; ~1/3 more compute)");
  }
};

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
  XlstmConfig xlstm;
  Mamba2Config mamba2;
  GdnConfig gdn;

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
    s.field("xlstm", &ModelConfig::xlstm, "xLSTM settings (model.arch = xlstm)");
    s.field("mamba2", &ModelConfig::mamba2, "Mamba-2 settings (model.arch = mamba2)");
    s.field("gdn", &ModelConfig::gdn, "Gated DeltaNet settings (model.arch = gdn)");
    s.check("n_heads", [](const ModelConfig& m) {
      // Mamba-2 derives its heads and Gated DeltaNet sizes heads by gdn.head_dim, so only the others
      // split d_model over n_heads.
      return m.arch == "mamba2" || m.arch == "gdn" || m.d_model % m.n_heads == 0
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
