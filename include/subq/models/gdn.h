// gdn.h — Gated DeltaNet language model (registered as model.arch = "gdn"), following
// flash-linear-attention's GatedDeltaNetForCausalLM (fla 0.6.0: fla/models/gated_deltanet,
// fla/layers/gated_deltanet.py) in structure, parameter names and initialisation.
//
// Architecture (DESIGN.md "Gated DeltaNet"):
//   embeddings -> n_layers x [x += GatedDeltaNet(RMSNorm(x)); x += SwiGLU(RMSNorm(x))] -> RMSNorm -> lm_head
// GatedDeltaNet layer, with H = n_heads, dk = gdn.head_dim, dv = gdn.expand_v * dk:
//   q, k = x W_q, x W_k (H*dk each), v = x W_v (H*dv); each through a causal depthwise conv
//   (gdn.conv_kernel taps, no bias) + SiLU (plain SiLU when gdn.use_short_conv is off);
//   log alpha = g = -exp(A_log) * softplus(x W_a + dt_bias) (one per head); beta = sigmoid(x W_b), or
//   2 sigmoid(x W_b) with gdn.allow_neg_eigval; o = gated delta rule (q, k L2-normalised, q scaled by
//   dk^-1/2); o = RMSNorm_per_head(o) * SiLU(x W_g) (fla's FusedRMSNormGated, weight of size dv shared by
//   the heads); out = o W_o. No biases anywhere.
//
// Parameter names are fla's without the "model." prefix, so exporting is a rename:
//   embeddings.weight, layers.{i}.attn_norm.weight,
//   layers.{i}.attn.{q_proj,k_proj,v_proj,a_proj,b_proj,g_proj,o_proj}.weight,
//   layers.{i}.attn.{q_conv1d,k_conv1d,v_conv1d}.weight ([C, 1, K], torch Conv1d layout),
//   layers.{i}.attn.A_log, layers.{i}.attn.dt_bias ([H]), layers.{i}.attn.o_norm.weight ([dv]),
//   layers.{i}.mlp_norm.weight, layers.{i}.mlp.{gate_proj,up_proj,down_proj}.weight, norm.weight,
//   lm_head.weight (absent when tie_embeddings).
//
// Packed documents: forward's doc_start is the reset mask of every short conv and every recurrence, so no
// state crosses a document boundary inside a packed row.
//
// model.gdn.recompute: activation checkpointing per block in training (forward with grad mode on and no
// decode cache): only each block's input is kept for backward, where the block runs again.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "subq/models/model.h"
#include "subq/models/transformer.h"

namespace subq::models {

// Per-layer decoding cache: the three conv caches ([B, K-1, C] fp32, the last K-1 projected inputs) and
// the recurrent state S ([B, H, dv, dk] fp32). Undefined tensors mean "zeros" (a fresh sequence).
struct GdnLayerCache {
  torch::Tensor conv_q, conv_k, conv_v, state;
};

struct GdnDecodeState : DecodeState {
  std::vector<GdnLayerCache> layers;
  int64_t batch = 0, max_len = 0;
};

// Causal depthwise conv + SiLU with a torch-Conv1d-shaped weight [C, 1, K] (fla's ShortConvolution with
// bias = False), computed by subq::ops::short_conv.
class GdnShortConvImpl : public torch::nn::Module {
 public:
  GdnShortConvImpl(int64_t channels, int64_t kernel);
  // x [B, T, C]. Training/prefill (T >= 1): reset optional [B, T] bool; cache (optional) is read and
  // replaced by the new cache. Decoding one token uses step().
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset = {}, torch::Tensor* cache = nullptr);
  torch::Tensor step(const torch::Tensor& x_t, torch::Tensor& cache);  // x_t [B, C] -> [B, C]
  torch::Tensor weight;
};
TORCH_MODULE(GdnShortConv);

// y = RMSNorm(o) * SiLU(gate) over the last dim (fla's FusedRMSNormGated, activation "swish"), computed
// in fp32 (fp64 for fp64 o) and returned in o's dtype. One autograd node with a hand-written backward
// that saves only o, gate and the per-row scale (see gdn.cpp, "Training memory").
class GdnGatedNormImpl : public torch::nn::Module {
 public:
  GdnGatedNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& o, const torch::Tensor& gate);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(GdnGatedNorm);

// The same function written with plain differentiable ops (the reference GdnGatedNorm is tested against).
torch::Tensor gdn_gated_rms_norm_reference(const torch::Tensor& o, const torch::Tensor& gate,
                                           const torch::Tensor& weight, double eps);

class GatedDeltaNetLayerImpl : public torch::nn::Module {
 public:
  explicit GatedDeltaNetLayerImpl(const ModelConfig& cfg);
  // x [B, T, d]. Without a cache: training / full forward (reset = doc_start, may be undefined). With a
  // cache: decoding from the cached state (prefill through the chunkwise op for T > 1, the step op for
  // T == 1); the cache is updated in place.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset = {}, GdnLayerCache* cache = nullptr);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, a_proj{nullptr}, b_proj{nullptr},
      g_proj{nullptr}, o_proj{nullptr};
  GdnShortConv q_conv1d{nullptr}, k_conv1d{nullptr}, v_conv1d{nullptr};  // null without use_short_conv
  torch::Tensor A_log, dt_bias;                                           // [H]
  GdnGatedNorm o_norm{nullptr};

 private:
  int64_t heads_, dk_, dv_, chunk_;
  bool neg_eigval_, short_conv_;
};
TORCH_MODULE(GatedDeltaNetLayer);

class GdnBlockImpl : public torch::nn::Module {
 public:
  explicit GdnBlockImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset = {}, GdnLayerCache* cache = nullptr);
  RMSNorm attn_norm{nullptr}, mlp_norm{nullptr};
  GatedDeltaNetLayer attn{nullptr};
  SwiGLU mlp{nullptr};
};
TORCH_MODULE(GdnBlock);

// Value head dim expand_v * head_dim; ConfigError when it is not a whole number.
int64_t gdn_value_head_dim(const ModelConfig& cfg);
// Parameter count of a Gated DeltaNet with this config, without building it (equals num_params()).
int64_t gdn_param_count(const ModelConfig& cfg);
// Parameters that take part in matmuls: every projection and the output head (tied or not); not the
// embedding lookup, the depthwise convs, norms, A_log or dt_bias.
int64_t gdn_matmul_params(const ModelConfig& cfg);

class GatedDeltaNet : public LanguageModel {
 public:
  // Builds and initialises the model (fp32, CPU) as fla's GatedDeltaNetPreTrainedModel._init_weights does
  // (see gdn.cpp). vocab_size must be resolved (> 0).
  explicit GatedDeltaNet(const ModelConfig& cfg);

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& doc_start = {}) override;
  std::unique_ptr<DecodeState> new_decode_state(int64_t batch, int64_t max_len) override;
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) override;
  // 6 * gdn_matmul_params + the chunkwise recurrence's matmul FLOPs, forward + backward (3x forward):
  //   3 * n_layers * H * (6 dk dv + C (5 dk + 3 dv)),  C = min(gdn.chunk_size, seq_len)
  // per token: per chunk of C tokens the form computes K K^T and Q K^T (2 C^2 dk each), (QK^T o D) U
  // (2 C^2 dv), the unit-triangular solve on C x (dv + dk) right-hand sides (C^2 (dv + dk)), W S^T, Q S^T
  // and the state update (2 C dk dv each).
  double flops_per_token(int64_t seq_len) const override;

  torch::nn::Embedding embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_embeddings

 private:
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& reset, GdnDecodeState* cache);
  std::vector<GdnBlock> blocks_;
};

}  // namespace subq::models
