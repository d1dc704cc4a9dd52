// transformer.h — the Llama-style Transformer baseline (registered as model.arch = "transformer").
//
// Architecture: token embedding -> n_layers x [x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))] ->
// RMSNorm -> lm_head (or the tied embedding) -> optional logit soft-cap c*tanh(x/c). Attention is
// grouped-query (n_kv_heads key/value heads shared by n_heads/n_kv_heads query heads each) with RoPE in
// the Hugging Face Llama "rotate_half" convention, through at::scaled_dot_product_attention (flash /
// cuDNN / efficient kernels on GPU). No biases anywhere.
//
// Parameter names are the Hugging Face Llama names without the "model." prefix, so exporting is a
// rename only:
//   embed_tokens.weight, layers.{i}.input_layernorm.weight, layers.{i}.self_attn.{q,k,v,o}_proj.weight,
//   layers.{i}.post_attention_layernorm.weight, layers.{i}.mlp.{gate,up,down}_proj.weight, norm.weight,
//   lm_head.weight (absent when tie_embeddings).
//
// Documents inside a packed window are not isolated: attention spans the whole window and positions run
// 0..T-1 (doc_start is ignored), as in Llama/GPT pre-training; the model learns separators.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/container/modulelist.h>

#include "subq/models/model.h"

namespace subq::models {

// RMSNorm computed in fp32 and cast back to the input dtype before the (fp32) weight multiplies, as
// Hugging Face Llama does: y = weight * (x / sqrt(mean(x^2) + eps)).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary tables: cos/sin of position * inv_freq, inv_freq[i] = 1 / theta^(2i / head_dim),
// duplicated over both halves of the head dim (rotate_half layout). Not parameters or buffers, so they
// never appear in checkpoints (they are recomputed from the config).
struct RopeTables {
  torch::Tensor cos, sin;  // [max_len, head_dim] fp32
};
RopeTables make_rope_tables(int64_t head_dim, int64_t max_len, double theta, const torch::Device& device);
// x: [B, H, T, hd]; cos/sin: [T, hd] rows for the positions of x; computed in x's dtype (as HF does).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// Per-layer KV cache used by incremental decoding.
struct TransformerDecodeState : DecodeState {
  std::vector<torch::Tensor> k, v;  // per layer [B, n_kv_heads, max_len, head_dim], allocated on first use
  int64_t batch = 0, max_len = 0;
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& cfg);
  // x: [B, T, d]; cos/sin: rows for positions pos..pos+T-1. With a cache (k_cache/v_cache defined) the new
  // keys/values are written at [pos, pos+T) and attention covers [0, pos+T).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        torch::Tensor* k_cache = nullptr, torch::Tensor* v_cache = nullptr, int64_t pos = 0);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t d_model, int64_t d_ff);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGLU);

class TransformerBlockImpl : public torch::nn::Module {
 public:
  explicit TransformerBlockImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        torch::Tensor* k_cache = nullptr, torch::Tensor* v_cache = nullptr, int64_t pos = 0);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  SwiGLU mlp{nullptr};
};
TORCH_MODULE(TransformerBlock);

// Parameter count of a Transformer with this config, without building it (equals num_params()).
int64_t transformer_param_count(const ModelConfig& cfg);

class Transformer : public LanguageModel {
 public:
  // Builds and initialises the model (fp32, CPU): normal(0, init_std) for linears and embeddings, o_proj
  // and down_proj scaled by 1/sqrt(2 n_layers), norms 1. vocab_size must be resolved (> 0).
  explicit Transformer(const ModelConfig& cfg);

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& doc_start = {}) override;
  std::unique_ptr<DecodeState> new_decode_state(int64_t batch, int64_t max_len) override;
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) override;
  // 6 * N_matmul + 12 * n_layers * seq_len * d_attn, where N_matmul counts every weight used in a matmul
  // (all projections and the output head, tied or not; not the embedding lookup) and d_attn = n_heads *
  // head_dim. The attention term is the PaLM convention: QK^T and AV for all T keys (forward 2 x 2 T d per
  // layer and token, x3 for backward), not halved for causality.
  double flops_per_token(int64_t seq_len) const override;
  // Parameters that take part in matmuls (see flops_per_token).
  int64_t matmul_params() const;

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_embeddings

 private:
  torch::Tensor run(const torch::Tensor& tokens, int64_t pos, TransformerDecodeState* cache);
  const RopeTables& rope_on(const torch::Device& device, int64_t needed);
  RopeTables rope_;
  std::vector<TransformerBlock> blocks_;
};

}  // namespace subq::models
