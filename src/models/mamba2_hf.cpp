// mamba2_hf.cpp — the Hugging Face exporter of Mamba-2 (model.arch = "mamba2"): transformers'
// Mamba2ForCausalLM (model_type "mamba2").
//
// Decisions:
//  * subq's Mamba-2 uses Mamba2ForCausalLM's names without the "backbone." prefix and its layouts (in_proj
//    rows ordered [z | x B C | dt], conv1d.weight [C, 1, K]), so the export is a rename: "backbone." + name,
//    lm_head.weight unprefixed; tied embeddings write no lm_head.weight and tie_word_embeddings = true.
//  * config.json: residual_in_fp32 true (subq's residual stream is fp32), use_bias false, use_conv_bias true,
//    rms_norm true and norm_before_gate false (kept for readers of mamba_ssm-style configs; transformers
//    stores unknown keys and always gates before its group-wise norm), layer_norm_epsilon = model.norm_eps
//    (transformers uses it for every norm, the gated one included, as subq does).
//  * time_step_limit is not written: the default of transformers 4.x and 5.x is (0.0, inf), i.e. no clamp,
//    which is what subq computes. inf has no portable JSON form: 4.x writes the non-standard token
//    `Infinity`, 5.x writes {"__float__": "Infinity"} (which 4.x cannot read), nlohmann::json would write
//    null (rejected by 5.x's strict config), and a finite stand-in such as DBL_MAX makes torch.clamp raise
//    an overflow error once the model is loaded in fp32/bf16/fp16.
//  * rescale_prenorm_residual is written false although subq initialises out_proj that way (mamba_ssm's
//    scheme): it only describes an initialisation, and transformers 5.x applies it in _init_weights even to
//    loaded checkpoints (out_proj.weight /= sqrt(num_hidden_layers) after loading; checked with 5.24), which
//    would silently change the exported model.
//  * Refused (InputError): logit soft-capping (Mamba2ForCausalLM has none; the export would load and compute
//    different logits).
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/models/hf_export.h"
#include "subq/models/mamba2.h"

namespace subq::models {

namespace {

nlohmann::json id_or_null(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

HfExportParts export_mamba2(const ModelConfig& c, const TensorMap& w, const HfTokenIds& ids) {
  if (c.logit_softcap > 0)
    throw InputError(str("model.logit_softcap = ", c.logit_softcap,
                         ": Hugging Face Mamba2ForCausalLM has no logit soft-capping, so the exported model would "
                         "compute different logits. Export a model trained with model.logit_softcap = 0"));
  const Mamba2Dims d = mamba2_dims(c);

  // subq name -> (HF name, expected shape)
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> expect;
  expect["embeddings.weight"] = {"backbone.embeddings.weight", {c.vocab_size, c.d_model}};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string l = str("layers.", i, ".");
    const std::map<std::string, std::vector<int64_t>> shapes = {
        {"norm.weight", {d.d_model}},
        {"mixer.in_proj.weight", {d.in_proj_dim, d.d_model}},
        {"mixer.conv1d.weight", {d.conv_dim, 1, d.conv_kernel}},
        {"mixer.conv1d.bias", {d.conv_dim}},
        {"mixer.dt_bias", {d.heads}},
        {"mixer.A_log", {d.heads}},
        {"mixer.D", {d.heads}},
        {"mixer.norm.weight", {d.d_inner}},
        {"mixer.out_proj.weight", {d.d_model, d.d_inner}},
    };
    for (const auto& [n, shape] : shapes) expect[l + n] = {"backbone." + l + n, shape};
  }
  expect["norm_f.weight"] = {"backbone.norm_f.weight", {c.d_model}};
  if (!c.tie_embeddings) expect["lm_head.weight"] = {"lm_head.weight", {c.vocab_size, c.d_model}};

  HfExportParts out;
  for (const auto& [name, t] : w) {
    auto it = expect.find(name);
    if (it == expect.end())
      throw InternalError(str("the Mamba-2 exporter has no mapping for weight '", name,
                              "' (a model change without an exporter update?)"));
    if (t.sizes().vec() != it->second.second)
      throw InternalError(str("weight ", name, " has shape ", t.sizes(), ", expected ",
                              torch::IntArrayRef(it->second.second)));
    out.tensors[it->second.first] = t;
  }
  for (const auto& [name, hf] : expect)
    if (!w.count(name)) throw InternalError(str("the model has no weight '", name, "' that the Mamba-2 export needs"));

  const auto& m = c.mamba2;
  out.config = {
      {"architectures", {"Mamba2ForCausalLM"}},
      {"model_type", "mamba2"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layers},
      {"num_heads", d.heads},
      {"head_dim", d.head_dim},
      {"state_size", d.d_state},
      {"expand", m.expand},
      {"n_groups", d.groups},
      {"conv_kernel", d.conv_kernel},
      {"chunk_size", m.chunk_size},
      {"layer_norm_epsilon", c.norm_eps},
      {"hidden_act", "silu"},
      {"use_bias", false},
      {"use_conv_bias", true},
      {"residual_in_fp32", true},
      {"rms_norm", true},
      {"norm_before_gate", false},
      {"time_step_min", m.dt_min},
      {"time_step_max", m.dt_max},
      {"time_step_floor", m.dt_init_floor},
      {"initializer_range", c.init_std},
      {"rescale_prenorm_residual", false},  // see the top comment: true would rescale the loaded out_proj
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_cache", true},
      {"bos_token_id", id_or_null(ids.bos)},
      {"eos_token_id", id_or_null(ids.eos)},
      {"pad_token_id", id_or_null(ids.pad)},
  };
  return out;
}

}  // namespace

SUBQ_REGISTER_HF_EXPORTER("mamba2", export_mamba2);

}  // namespace subq::models
