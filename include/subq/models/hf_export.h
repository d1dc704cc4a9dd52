// hf_export.h — exporting a trained model as a Hugging Face folder (`subq export --format hf`).
//
// A folder holds config.json, model.safetensors, generation_config.json and, when a tokenizer is given,
// tokenizer.json + tokenizer_config.json + special_tokens_map.json, so that
//   AutoModelForCausalLM.from_pretrained(dir) / AutoTokenizer.from_pretrained(dir)
// load it with the public reference implementation of the architecture.
//
// What depends on the architecture (the config.json fields and the tensor names/layout) is a per-arch
// hook: an HfExporter registered under model.arch (SUBQ_REGISTER_HF_EXPORTER in the architecture's
// export file). The Transformer's exporter (LlamaForCausalLM) lives in hf_export.cpp; Mamba-2, xLSTM
// and Gated DeltaNet add theirs beside their models.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "subq/core/safetensors.h"
#include "subq/models/model_config.h"

namespace subq::data {
class Tokenizer;
}

namespace subq::models {

class LanguageModel;

// Special-token ids an exporter writes into config.json / generation_config.json.
struct HfTokenIds {
  std::optional<int64_t> bos, eos, pad;
};

struct HfExportParts {
  nlohmann::json config;             // config.json (architectures, model_type, sizes, ids, torch_dtype)
  TensorMap tensors;                 // model.safetensors: reference-implementation names -> tensors
};

// weights: the model's named parameters and buffers (subq names, fp32 CPU). An exporter maps every one
// of them (InternalError when one is left over: a mapping must not silently drop weights) and throws
// InputError for a model its target cannot represent.
using HfExporter =
    std::function<HfExportParts(const ModelConfig& cfg, const TensorMap& weights, const HfTokenIds& ids)>;

bool register_hf_exporter(const std::string& arch, HfExporter exporter);
// The exporter of an architecture, or nullptr.
const HfExporter* find_hf_exporter(const std::string& arch);
std::vector<std::string> hf_exporter_archs();

struct HfExportOptions {
  std::string out_dir;
  torch::ScalarType dtype = torch::kFloat32;  // weights dtype in model.safetensors: fp32, bf16 or fp16
  bool overwrite = false;                     // replace an existing non-empty out_dir
  std::string tokenizer_json_path;            // copied verbatim as tokenizer.json ("" = no tokenizer files)
};

// The model's weights as exporters receive them.
TensorMap model_weights(const LanguageModel& model);

// Writes the folder: everything goes to a temporary sibling directory that is renamed into place when
// complete (an existing folder is only replaced with overwrite, and only after the new one is written).
// `tok` gives the special ids (eos, and bos = eos: subq's documents start after the separator); it may
// be null (no tokenizer files, no ids). Returns the files written.
std::vector<std::string> export_hf(const LanguageModel& model, const data::Tokenizer* tok, const HfExportOptions& opts);

}  // namespace subq::models

#define SUBQ_HF_EXPORT_CONCAT2(a, b) a##b
#define SUBQ_HF_EXPORT_CONCAT(a, b) SUBQ_HF_EXPORT_CONCAT2(a, b)
#define SUBQ_REGISTER_HF_EXPORTER(arch, fn)                                                                \
  static const bool SUBQ_HF_EXPORT_CONCAT(subq_hf_exporter_registered_, __LINE__) =                        \
      ::subq::models::register_hf_exporter(arch, fn)
