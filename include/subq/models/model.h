// model.h — the interface every architecture implements, and the model registry.
//
// A model maps token ids [B, T] to logits [B, T, V]. Decoding goes through a DecodeState that holds
// the model's cache (KV cache for attention, O(1) recurrent state for the linear recurrences):
// prefill with the prompt, then one token per step. Model files hold architecture only; training
// machinery stays in src/train.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "subq/models/model_config.h"

namespace subq::models {

// Per-sequence cache for incremental decoding; each architecture defines its own.
struct DecodeState {
  virtual ~DecodeState() = default;
  int64_t pos = 0;  // tokens consumed so far
};

class LanguageModel : public torch::nn::Module {
 public:
  // tokens: [B, T] int64. doc_start: optional [B, T] bool (see data/batch.h); architectures that
  // reset state per document use it, others may ignore it. Returns logits [B, T, V] in the compute
  // dtype of the autocast context (fp32 on CPU).
  virtual torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& doc_start = {}) = 0;

  // Decoding: a fresh cache for `batch` sequences of up to `max_len` tokens, then step() with [B, t]
  // tokens (t >= 1: a prompt prefill or one new token) returning logits [B, t, V]; the cache advances.
  virtual std::unique_ptr<DecodeState> new_decode_state(int64_t batch, int64_t max_len) = 0;
  virtual torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) = 0;

  // Matmul FLOPs per token for a forward+backward pass at this sequence length (6N + attention), for MFU.
  virtual double flops_per_token(int64_t seq_len) const = 0;

  const ModelConfig& config() const { return cfg_; }
  int64_t num_params() const;

 protected:
  explicit LanguageModel(ModelConfig cfg) : cfg_(std::move(cfg)) {}
  ModelConfig cfg_;
};

using ModelFactory = std::function<std::shared_ptr<LanguageModel>(const ModelConfig&)>;

struct ModelEntry {
  std::string name;         // model.arch
  std::string description;  // one line for --help / version
  ModelFactory create;
};

// Registers an architecture (call from a static initialiser in the model's .cpp via SUBQ_REGISTER_MODEL).
bool register_model(ModelEntry entry);
const std::vector<ModelEntry>& model_registry();
// Creates model.arch; InputError listing the registered names when it is unknown. The model is
// initialised (seeded by the caller through torch::manual_seed) and in fp32 on the CPU.
std::shared_ptr<LanguageModel> create_model(const ModelConfig& cfg);

}  // namespace subq::models

#define SUBQ_MODEL_CONCAT2(a, b) a##b
#define SUBQ_MODEL_CONCAT(a, b) SUBQ_MODEL_CONCAT2(a, b)
#define SUBQ_REGISTER_MODEL(...) \
  static const bool SUBQ_MODEL_CONCAT(subq_model_registered_, __LINE__) = ::subq::models::register_model(__VA_ARGS__)
