// gdn_hf.cpp — Hugging Face export of the Gated DeltaNet (model.arch = "gdn") as flash-linear-attention's
// GatedDeltaNetForCausalLM (model_type "gated_deltanet", fla 0.6.0; `import fla` registers it with
// transformers' Auto classes).
//
// Decisions:
//  * subq's parameter names are fla's without "model." (gdn.h), and the convs are stored in torch's
//    Conv1d layout [C, 1, K], so every tensor is a rename: "model." + name, lm_head.weight unprefixed.
//  * config.json spells out intermediate_size (hidden_ratio stays 4 for the record; fla uses
//    intermediate_size when given) and num_v_heads = null (no grouped values: subq has one value head
//    per key head), use_gate = true, conv_bias = false is fla's layer default (not a config key).
//  * fuse_norm, fuse_swiglu and fuse_cross_entropy are written false: the checkpoint's block norms, MLP
//    and loss then run as plain PyTorch modules (nn.RMSNorm, silu(gate) * up), which keeps the export
//    usable where fla's Triton kernels are not (see docs/models.md). The weights are the same either way,
//    so a GPU user may flip them to true for speed.
//  * Refused (InputError): logit soft-capping (fla has none) and head_dim > 256 (fla's chunk kernels
//    assert K <= 256, so the folder would load but never run in fla).
//  * bos_token_id = eos_token_id, as in the Llama export (documents start after the separator).
#include <map>

#include "subq/core/error.h"
#include "subq/models/gdn.h"
#include "subq/models/hf_export.h"

namespace subq::models {

namespace {

nlohmann::json id_or_null(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

HfExportParts export_gated_deltanet(const ModelConfig& c, const TensorMap& w, const HfTokenIds& ids) {
  if (c.logit_softcap > 0)
    throw InputError(str("model.logit_softcap = ", c.logit_softcap,
                         ": flash-linear-attention's GatedDeltaNet has no logit soft-capping, so the export would "
                         "compute different logits; export a model trained with model.logit_softcap = 0"));
  if (c.gdn.head_dim > 256)
    throw InputError(str("model.gdn.head_dim = ", c.gdn.head_dim,
                         ": flash-linear-attention's chunk kernels support head_dim <= 256 only, so the exported "
                         "model would not run there; train with head_dim <= 256 to export"));
  const int64_t d = c.d_model, H = c.n_heads, dk = c.gdn.head_dim, dv = gdn_value_head_dim(c);

  std::map<std::string, std::string> expect;  // subq name -> fla name
  expect["embeddings.weight"] = "model.embeddings.weight";
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string l = str("layers.", i, ".");
    std::vector<std::string> names{"attn_norm.weight",      "attn.q_proj.weight",   "attn.k_proj.weight",
                                   "attn.v_proj.weight",    "attn.a_proj.weight",   "attn.b_proj.weight",
                                   "attn.g_proj.weight",    "attn.o_proj.weight",   "attn.A_log",
                                   "attn.dt_bias",          "attn.o_norm.weight",   "mlp_norm.weight",
                                   "mlp.gate_proj.weight",  "mlp.up_proj.weight",   "mlp.down_proj.weight"};
    if (c.gdn.use_short_conv)
      for (const char* n : {"attn.q_conv1d.weight", "attn.k_conv1d.weight", "attn.v_conv1d.weight"}) names.push_back(n);
    for (const auto& n : names) expect[l + n] = "model." + l + n;
  }
  expect["norm.weight"] = "model.norm.weight";
  if (!c.tie_embeddings) expect["lm_head.weight"] = "lm_head.weight";

  HfExportParts out;
  for (const auto& [name, t] : w) {
    auto it = expect.find(name);
    if (it == expect.end())
      throw InternalError(str("the Gated DeltaNet exporter has no mapping for weight '", name,
                              "' (a model change without an exporter update?)"));
    out.tensors[it->second] = t;
  }
  for (const auto& [name, hf] : expect)
    if (!w.count(name))
      throw InternalError(str("the model has no weight '", name, "' that the Gated DeltaNet export needs"));

  // Shapes fla's GatedDeltaNet builds from this config.
  auto check_shape = [&](const std::string& name, std::vector<int64_t> shape) {
    const auto& t = w.at(name);
    if (t.sizes().vec() != shape)
      throw InternalError(str("weight ", name, " has shape ", t.sizes(), ", expected ", torch::IntArrayRef(shape)));
  };
  check_shape("embeddings.weight", {c.vocab_size, d});
  check_shape("layers.0.attn.q_proj.weight", {H * dk, d});
  check_shape("layers.0.attn.v_proj.weight", {H * dv, d});
  check_shape("layers.0.attn.a_proj.weight", {H, d});
  check_shape("layers.0.attn.A_log", {H});
  check_shape("layers.0.attn.o_norm.weight", {dv});
  check_shape("layers.0.mlp.gate_proj.weight", {c.ffn_dim(), d});
  if (c.gdn.use_short_conv) check_shape("layers.0.attn.v_conv1d.weight", {H * dv, 1, c.gdn.conv_kernel});

  out.config = {
      {"architectures", {"GatedDeltaNetForCausalLM"}},
      {"model_type", "gated_deltanet"},
      {"attn_mode", "chunk"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", d},
      {"num_hidden_layers", c.n_layers},
      {"num_heads", H},
      {"num_v_heads", nullptr},
      {"head_dim", dk},
      {"expand_v", c.gdn.expand_v},
      {"use_gate", true},
      {"output_gate_activation", "swish"},
      {"use_short_conv", c.gdn.use_short_conv},
      {"conv_size", c.gdn.conv_kernel},
      {"allow_neg_eigval", c.gdn.allow_neg_eigval},
      {"hidden_ratio", 4},
      {"intermediate_size", c.ffn_dim()},
      {"hidden_act", "swish"},
      {"norm_eps", c.norm_eps},
      {"max_position_embeddings", c.max_seq_len},
      {"initializer_range", c.init_std},
      {"attn", nullptr},
      {"attnres_block_size", nullptr},
      {"fuse_norm", false},
      {"fuse_swiglu", false},
      {"fuse_cross_entropy", false},
      {"fuse_linear_cross_entropy", false},
      {"use_l2warp", false},
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_cache", true},
      {"bos_token_id", id_or_null(ids.bos)},
      {"eos_token_id", id_or_null(ids.eos)},
      {"pad_token_id", id_or_null(ids.pad)},
  };
  return out;
}

}  // namespace

SUBQ_REGISTER_HF_EXPORTER("gdn", export_gated_deltanet);

}  // namespace subq::models
