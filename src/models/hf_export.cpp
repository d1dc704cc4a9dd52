// hf_export.cpp — see hf_export.h: the exporter registry, the folder writer, and the Transformer's
// exporter (Hugging Face LlamaForCausalLM).
//
// Decisions:
//  * subq's Transformer already uses Llama's parameter names (without "model.") and Llama's RoPE layout
//    (rotate_half), so its export is a rename: "model." + name, lm_head.weight unprefixed. No q/k
//    permutation is needed (that permutation exists only for checkpoints in Meta's interleaved layout).
//  * Tied embeddings: lm_head.weight is not written and tie_word_embeddings = true (HF ties on load).
//  * Logit soft-capping has no Llama equivalent; exporting such a model would load without error and
//    compute different logits, so it is refused.
//  * bos_token_id = eos_token_id: subq trains on documents joined by the end-of-text separator, so the
//    token "before" every document is that separator; generation from an empty prompt starts there.
//  * config.json carries the legacy keys (rope_theta, torch_dtype) that both transformers 4.x and 5.x
//    read; 5.x converts them to rope_parameters / dtype on load.
//  * The tokenizer.json is copied byte for byte (the exact file training used), with a
//    tokenizer_config.json naming PreTrainedTokenizerFast, so AutoTokenizer does not pick Llama's
//    SentencePiece-era slow tokenizer or add a BOS token.
#include "subq/models/hf_export.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <random>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/data/tokenizer.h"
#include "subq/models/model.h"

namespace fs = std::filesystem;

namespace subq::models {

namespace {
std::map<std::string, HfExporter>& registry() {
  static std::map<std::string, HfExporter> r;
  return r;
}

const char* hf_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: throw UsageError(str("export dtype must be fp32, bf16 or fp16, got ", c10::toString(t)));
  }
}

nlohmann::json id_or_null(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

// ---- Transformer -> LlamaForCausalLM ----
HfExportParts export_llama(const ModelConfig& c, const TensorMap& w, const HfTokenIds& ids) {
  if (c.logit_softcap > 0)
    throw InputError(str("model.logit_softcap = ", c.logit_softcap,
                         ": Hugging Face Llama has no logit soft-capping, so the exported model would compute different "
                         "logits. Export a model trained with model.logit_softcap = 0"));
  // Every name the Transformer has, in HF form.
  std::map<std::string, std::string> expect;  // subq name -> hf name
  expect["embed_tokens.weight"] = "model.embed_tokens.weight";
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string l = str("layers.", i, ".");
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
      expect[l + n] = "model." + l + n;
  }
  expect["norm.weight"] = "model.norm.weight";
  if (!c.tie_embeddings) expect["lm_head.weight"] = "lm_head.weight";

  HfExportParts out;
  for (const auto& [name, t] : w) {
    auto it = expect.find(name);
    if (it == expect.end())
      throw InternalError(str("the Llama exporter has no mapping for weight '", name,
                              "' (a model change without an exporter update?)"));
    out.tensors[it->second] = t;
  }
  for (const auto& [name, hf] : expect)
    if (!w.count(name)) throw InternalError(str("the model has no weight '", name, "' that the Llama export needs"));
  // Shapes the HF config implies.
  const int64_t d = c.d_model, hd = c.head_dim();
  auto check_shape = [&](const std::string& name, std::vector<int64_t> shape) {
    const auto& t = w.at(name);
    if (t.sizes().vec() != shape)
      throw InternalError(str("weight ", name, " has shape ", t.sizes(), ", expected ", torch::IntArrayRef(shape)));
  };
  check_shape("embed_tokens.weight", {c.vocab_size, d});
  check_shape("layers.0.self_attn.q_proj.weight", {c.n_heads * hd, d});
  check_shape("layers.0.self_attn.k_proj.weight", {c.kv_heads() * hd, d});
  check_shape("layers.0.mlp.gate_proj.weight", {c.ffn_dim(), d});

  out.config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", d},
      {"intermediate_size", c.ffn_dim()},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.kv_heads()},
      {"head_dim", hd},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_seq_len},
      {"initializer_range", c.init_std},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mlp_bias", false},
      {"pretraining_tp", 1},
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_cache", true},
      {"bos_token_id", id_or_null(ids.bos)},
      {"eos_token_id", id_or_null(ids.eos)},
      {"pad_token_id", id_or_null(ids.pad)},
  };
  return out;
}

}  // namespace

bool register_hf_exporter(const std::string& arch, HfExporter exporter) {
  registry()[arch] = std::move(exporter);
  return true;
}

const HfExporter* find_hf_exporter(const std::string& arch) {
  auto it = registry().find(arch);
  return it == registry().end() ? nullptr : &it->second;
}

std::vector<std::string> hf_exporter_archs() {
  std::vector<std::string> v;
  for (const auto& [k, _] : registry()) v.push_back(k);
  return v;
}

TensorMap model_weights(const LanguageModel& model) {
  TensorMap w;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    w[p.key()] = p.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
  for (const auto& b : model.named_buffers(/*recurse=*/true))
    w[b.key()] = b.value().detach().to(torch::kCPU).contiguous();
  return w;
}

std::vector<std::string> export_hf(const LanguageModel& model, const data::Tokenizer* tok, const HfExportOptions& opts) {
  const ModelConfig& cfg = model.config();
  const HfExporter* exporter = find_hf_exporter(cfg.arch);
  if (!exporter) {
    std::string have;
    for (const auto& a : hf_exporter_archs()) have += (have.empty() ? "" : ", ") + a;
    throw InputError(str("no Hugging Face exporter for model.arch = ", cfg.arch, " yet (exporters exist for: ",
                         have.empty() ? "none" : have, ")"));
  }
  if (opts.out_dir.empty()) throw UsageError("export needs an output directory (--out DIR)");
  const char* dtype_name = hf_dtype_name(opts.dtype);

  HfTokenIds ids;
  std::string eos_token;
  if (tok) {
    if (tok->vocab_size() > cfg.vocab_size)
      throw InputError(str("the tokenizer has ", tok->vocab_size(), " ids but the model only ", cfg.vocab_size,
                           " embeddings: it is not the tokenizer this model was trained with (check --tokenizer)"));
    if (auto e = tok->eos_id()) {
      ids.eos = *e;
      ids.bos = *e;
      eos_token = tok->id_to_token(*e);
    }
  }
  HfExportParts parts = (*exporter)(cfg, model_weights(model), ids);
  parts.config["torch_dtype"] = dtype_name;
  for (auto& [name, t] : parts.tensors)
    if (t.is_floating_point()) t = t.to(opts.dtype).contiguous();

  // Destination checks before any work is written.
  fs::path out = fs::path(opts.out_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  std::error_code ec;
  const bool exists = fs::exists(out, ec);
  if (exists && !fs::is_directory(out, ec))
    throw UsageError(str("--out ", out.string(), " exists and is not a directory; choose another --out"));
  if (exists && !fs::is_empty(out, ec) && !opts.overwrite)
    throw UsageError(str("--out ", out.string(),
                         " exists and is not empty; choose another --out or pass --force to replace it"));
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path(), ec);
  const std::string suffix = str(::getpid(), "-", std::random_device{}());
  fs::path tmp = out.string() + ".tmp-" + suffix;
  fs::create_directories(tmp, ec);
  if (ec) throw RuntimeError(str("cannot create ", tmp.string(), ": ", ec.message()));

  std::vector<std::string> files;
  try {
    auto put = [&](const std::string& name, const std::string& text) {
      fsx::write_file_atomic((tmp / name).string(), text);
      files.push_back(name);
    };
    put("config.json", parts.config.dump(2) + "\n");
    nlohmann::json gen = {{"bos_token_id", id_or_null(ids.bos)},
                          {"eos_token_id", id_or_null(ids.eos)},
                          {"pad_token_id", id_or_null(ids.pad)}};
    put("generation_config.json", gen.dump(2) + "\n");
    save_safetensors((tmp / "model.safetensors").string(), parts.tensors, {{"format", "pt"}});
    files.push_back("model.safetensors");
    if (!opts.tokenizer_json_path.empty()) {
      put("tokenizer.json", fsx::read_file(opts.tokenizer_json_path, "tokenizer"));
      nlohmann::json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                           {"model_max_length", cfg.max_seq_len},
                           {"clean_up_tokenization_spaces", false}};
      nlohmann::json stm = nlohmann::json::object();
      if (!eos_token.empty()) {
        for (const char* k : {"eos_token", "bos_token"}) {
          tc[k] = eos_token;
          stm[k] = eos_token;
        }
      }
      put("tokenizer_config.json", tc.dump(2) + "\n");
      put("special_tokens_map.json", stm.dump(2) + "\n");
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  // Swap into place; an existing folder is moved aside first and removed only once the new one is there.
  fs::path old;
  if (exists) {
    old = out.string() + ".old-" + suffix;
    fs::rename(out, old, ec);
    if (ec) {
      std::error_code ec2;
      fs::remove_all(tmp, ec2);
      throw RuntimeError(str("cannot move the existing ", out.string(), " aside: ", ec.message()));
    }
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ec2;
    if (!old.empty()) fs::rename(old, out, ec2);
    throw RuntimeError(str("cannot rename ", tmp.string(), " to ", out.string(), ": ", ec.message()));
  }
  fsx::fsync_dir(out.parent_path().empty() ? "." : out.parent_path().string());
  if (!old.empty()) fs::remove_all(old, ec);
  return files;
}

SUBQ_REGISTER_HF_EXPORTER("transformer", export_llama);

}  // namespace subq::models
