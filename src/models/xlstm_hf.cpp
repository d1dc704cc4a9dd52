// xlstm_hf.cpp — the xLSTM's Hugging Face exporter: transformers' xLSTMForCausalLM (model_type "xlstm",
// NX-AI's xLSTM-7B architecture, "xlstm_large").
//
// subq's xLSTM already uses transformers' parameter names for mLSTM blocks (backbone.*, lm_head.weight),
// so the tensors are exported under their own names. What needs care is config.json:
//  * transformers' xLSTM has only mLSTM blocks: a model with any sLSTM block is refused (InputError).
//  * mode "inference" with the native PyTorch kernels (chunkwise--native_autograd, native_sequence__native,
//    native step), so the export runs on CPU and on any GPU without NX-AI's Triton kernels; inference mode
//    takes any sequence length (full chunks, then the step-by-step kernel for the rest) and carries the
//    state across calls, as generation needs. weight_mode "single" = separate q/k/v/gate linears.
//  * The SwiGLU width: transformers derives it as round_up(hidden_size * ffn_proj_factor,
//    ffn_round_up_to_multiple_of) in Python floats. When our d_ff equals the xLSTM-7B rule (2.667, 64) that
//    pair is written; otherwise ffn_proj_factor = d_ff / d_model with a multiple that d_ff is a multiple
//    of (64, else d_ff itself), so the rounding lands exactly on d_ff; the exporter recomputes the rule as
//    Python does and refuses (InternalError) if it would not.
//  * transformers' xLSTMCache sizes its states from round_up(d_model * factor, 64) while the layers use
//    int(d_model * factor): when those differ every forward with the (default) cache fails, so such
//    models are refused, naming the sizes to change.
//  * Tied embeddings: transformers' xLSTMForCausalLM does not tie its lm_head (tie_word_embeddings has no
//    effect), so lm_head.weight is written as a copy of the embedding and tie_word_embeddings = false.
//  * Soft caps: its config requires float caps (None is rejected), so a model without gate or logit
//    soft-capping (0) cannot be represented and is refused.
//  * eps (the mLSTM denominator's 1e-6) is ops::kMlstmEps; norm_eps is model.norm_eps for the RMSNorms and
//    the per-head norm, as in our model.
#include <cmath>
#include <map>
#include <string>
#include <tuple>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/models/hf_export.h"
#include "subq/models/xlstm.h"
#include "subq/ops/mlstm.h"

namespace subq::models {

namespace {

// transformers' round_up_to_next_multiple_of(x, m) = int(((x + m - 1) // m) * m) on a Python float x.
int64_t py_round_up(double x, int64_t m) {
  const double md = static_cast<double>(m);
  return static_cast<int64_t>(std::floor((x + md - 1.0) / md) * md);
}

nlohmann::json id_or_null(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

HfExportParts export_xlstm(const ModelConfig& c, const TensorMap& w, const HfTokenIds& ids) {
  std::string slstm_blocks;
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.xlstm.is_slstm(i)) slstm_blocks += (slstm_blocks.empty() ? "" : ", ") + std::to_string(i);
  if (!slstm_blocks.empty())
    throw InputError(str("model.xlstm.pattern = \"", c.xlstm.pattern, "\" gives sLSTM blocks (", slstm_blocks,
                         "); transformers' xLSTMForCausalLM (the xLSTM-7B architecture) has only mLSTM blocks, so this "
                         "model cannot be exported to it. Only mLSTM-only models (pattern \"1:0\") export"));
  if (c.logit_softcap <= 0 || c.xlstm.gate_softcap <= 0)
    throw InputError(str("model.logit_softcap = ", c.logit_softcap, ", model.xlstm.gate_softcap = ", c.xlstm.gate_softcap,
                         ": transformers' xLSTM always soft-caps logits and gates (its config rejects \"no cap\"), so a "
                         "model trained without a cap (0) would compute different logits there; export a model "
                         "trained with both caps > 0"));
  const auto dm = xlstm_dims(c);
  const int64_t d = c.d_model;
  for (auto [factor, width, key] : {std::tuple{c.xlstm.qk_dim_factor, dm.qk_dim, "qk_dim_factor"},
                                    std::tuple{c.xlstm.v_dim_factor, dm.v_dim, "v_dim_factor"}}) {
    const int64_t cache_width = py_round_up(static_cast<double>(d) * factor, 64);
    if (cache_width != width)
      throw InputError(str("model.xlstm.", key, " * model.d_model = ", static_cast<double>(d) * factor,
                           ": transformers' xLSTM builds its layers with width ", width, " but sizes its cache by ",
                           "rounding up to a multiple of 64 (", cache_width, "), so the exported model would fail at ",
                           "its first forward. Export models whose d_model * ", key, " is a multiple of 64"));
  }

  // The SwiGLU width as transformers derives it.
  const int64_t ff = dm.ffn_dim;
  double ffn_factor = 2.667;
  int64_t ffn_multiple = 64;
  if (py_round_up(static_cast<double>(d) * ffn_factor, ffn_multiple) != ff) {
    ffn_factor = static_cast<double>(ff) / static_cast<double>(d);
    ffn_multiple = ff % 64 == 0 ? 64 : ff;
  }
  if (py_round_up(static_cast<double>(d) * ffn_factor, ffn_multiple) != ff)
    throw InternalError(str("xLSTM export: ffn_proj_factor ", ffn_factor, " x ", d, " rounded to ", ffn_multiple,
                            " does not give d_ff = ", ff));

  // Every name the model has must be an xLSTMForCausalLM name; lm_head is added for tied models.
  std::map<std::string, std::vector<int64_t>> expect;
  expect["backbone.embeddings.weight"] = {c.vocab_size, d};
  expect["backbone.out_norm.weight"] = {d};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string b = str("backbone.blocks.", i, ".");
    expect[b + "norm_mlstm.weight"] = {d};
    expect[b + "mlstm_layer.q.weight"] = {dm.qk_dim, d};
    expect[b + "mlstm_layer.k.weight"] = {dm.qk_dim, d};
    expect[b + "mlstm_layer.v.weight"] = {dm.v_dim, d};
    expect[b + "mlstm_layer.ogate_preact.weight"] = {dm.v_dim, d};
    expect[b + "mlstm_layer.igate_preact.weight"] = {c.n_heads, d};
    expect[b + "mlstm_layer.igate_preact.bias"] = {c.n_heads};
    expect[b + "mlstm_layer.fgate_preact.weight"] = {c.n_heads, d};
    expect[b + "mlstm_layer.fgate_preact.bias"] = {c.n_heads};
    expect[b + "mlstm_layer.multihead_norm.weight"] = {dm.v_dim};
    expect[b + "mlstm_layer.out_proj.weight"] = {d, dm.v_dim};
    expect[b + "norm_ffn.weight"] = {d};
    expect[b + "ffn.proj_up_gate.weight"] = {ff, d};
    expect[b + "ffn.proj_up.weight"] = {ff, d};
    expect[b + "ffn.proj_down.weight"] = {d, ff};
  }
  if (!c.tie_embeddings) expect["lm_head.weight"] = {c.vocab_size, d};

  HfExportParts out;
  for (const auto& [name, t] : w) {
    auto it = expect.find(name);
    if (it == expect.end())
      throw InternalError(str("the xLSTM exporter has no mapping for weight '", name,
                              "' (a model change without an exporter update?)"));
    if (t.sizes().vec() != it->second)
      throw InternalError(str("weight ", name, " has shape ", t.sizes(), ", expected ", torch::IntArrayRef(it->second)));
    out.tensors[name] = t;
  }
  for (const auto& [name, shape] : expect)
    if (!w.count(name)) throw InternalError(str("the model has no weight '", name, "' that the xLSTM export needs"));
  if (c.tie_embeddings) out.tensors["lm_head.weight"] = w.at("backbone.embeddings.weight").clone();

  out.config = {
      {"architectures", {"xLSTMForCausalLM"}},
      {"model_type", "xlstm"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", d},
      {"embedding_dim", d},
      {"num_hidden_layers", c.n_layers},
      {"num_blocks", c.n_layers},
      {"num_heads", c.n_heads},
      {"use_bias", false},
      {"norm_reduction_force_float32", true},
      {"tie_word_embeddings", false},
      {"add_out_norm", true},
      {"norm_eps", c.norm_eps},
      {"qk_dim_factor", c.xlstm.qk_dim_factor},
      {"v_dim_factor", c.xlstm.v_dim_factor},
      {"chunkwise_kernel", "chunkwise--native_autograd"},
      {"sequence_kernel", "native_sequence__native"},
      {"step_kernel", "native"},
      {"mode", "inference"},
      {"chunk_size", c.xlstm.chunk_size},
      {"return_last_states", true},
      {"autocast_kernel_dtype", "bfloat16"},
      {"eps", ops::kMlstmEps},
      {"inference_state_dtype", "float32"},
      {"ffn_proj_factor", ffn_factor},
      {"ffn_round_up_to_multiple_of", ffn_multiple},
      {"gate_soft_cap", c.xlstm.gate_softcap},
      {"output_logit_soft_cap", c.logit_softcap},
      {"weight_mode", "single"},
      {"max_inference_chunksize", 16384},
      {"use_cache", true},
      {"bos_token_id", id_or_null(ids.bos)},
      {"eos_token_id", id_or_null(ids.eos)},
      {"pad_token_id", id_or_null(ids.pad)},
  };
  return out;
}

}  // namespace

SUBQ_REGISTER_HF_EXPORTER("xlstm", export_xlstm);

}  // namespace subq::models
