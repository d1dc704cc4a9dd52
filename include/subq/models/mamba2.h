// mamba2.h — Mamba-2 (SSD), registered as model.arch = "mamba2" (DESIGN.md "Mamba-2 (SSD)").
//
// Architecture: token embedding -> n_layers x [x += Mixer(RMSNorm(x))] -> RMSNorm -> lm_head (or the tied
// embedding). No MLP. The mixer, with d_inner = expand * d_model, H = d_inner / head_dim heads, G = n_groups
// and N = d_state:
//   in_proj (no bias): d_model -> [z (d_inner) | xBC (d_inner + 2 G N) | dt (H)]
//   xBC = SiLU(causal depthwise conv_kernel-tap conv (with bias) of xBC)   (subq::ops::short_conv)
//   x = xBC[:d_inner] as [H, head_dim], B, C = the next two G*N blocks as [G, N]
//   Delta = softplus(dt + dt_bias), A = -exp(A_log)   (one scalar per head)
//   y = SSD(x, Delta, A, B, C) + D x                  (subq::ops::ssd / ssd_decode: CUDA kernels or the
//                                                      chunkwise reference / ssd_step, see subq/ops/ssd.h)
//   y = norm.weight * RMSNorm_groupwise(y * SiLU(z))   (G groups of d_inner / G channels; gate before norm)
//   out = out_proj(y) (no bias)
//
// Parameter names are Hugging Face transformers' Mamba2ForCausalLM names without the "backbone." prefix
// (as the Transformer drops Llama's "model."), so exporting is a rename:
//   embeddings.weight, layers.{i}.norm.weight,
//   layers.{i}.mixer.{in_proj.weight, conv1d.weight [C, 1, K], conv1d.bias, dt_bias, A_log, D, norm.weight,
//   out_proj.weight}, norm_f.weight, lm_head.weight (absent when tie_embeddings).
//
// Packed documents: doc_start is the reset mask of the conv and of the SSD state, so no state crosses a
// document boundary inside a packed row. Decoding keeps O(1) state per layer: the conv's last K-1 inputs and
// the SSD state [B, H, head_dim, d_state] (fp32).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "subq/models/model.h"
#include "subq/models/transformer.h"

namespace subq::models {

// Sizes derived from a ModelConfig with arch "mamba2".
struct Mamba2Dims {
  int64_t d_model, d_inner, heads, head_dim, groups, d_state, conv_dim, in_proj_dim, conv_kernel;
};
// Validates the mamba2 sizes (ConfigError naming the keys to change) and derives the rest.
Mamba2Dims mamba2_dims(const ModelConfig& cfg);
// Parameter count of a Mamba-2 model with this config, without building it (equals num_params()).
int64_t mamba2_param_count(const ModelConfig& cfg);

// Per-layer recurrent state for incremental decoding: O(1) in the sequence length.
struct Mamba2DecodeState : DecodeState {
  std::vector<torch::Tensor> conv;  // per layer [B, K-1, conv_dim] (fp32), undefined until the first step
  std::vector<torch::Tensor> ssm;   // per layer [B, H, head_dim, d_state] (fp32), undefined = zeros
  int64_t batch = 0, max_len = 0;
};

// The carried state of one mixer call (decode path); empty tensors mean "start from zeros".
struct Mamba2LayerState {
  torch::Tensor conv, ssm;
};

// Gated RMSNorm with gate before norm (norm_before_gate = false in mamba_ssm): y = weight * rmsnorm(x * SiLU(z))
// over G groups of the last dimension, in fp32, cast back to x's dtype before the weight multiplies (as
// transformers' MambaRMSNormGated). Its backward is hand-written and keeps only x, z and the per-group
// 1/rms for the backward pass (see mamba2.cpp).
class GatedRMSNormImpl : public torch::nn::Module {
 public:
  GatedRMSNormImpl(int64_t dim, int64_t groups, double eps);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z);
  torch::Tensor weight;

 private:
  int64_t groups_;
  double eps_;
};
TORCH_MODULE(GatedRMSNorm);

class Mamba2MixerImpl : public torch::nn::Module {
 public:
  explicit Mamba2MixerImpl(const ModelConfig& cfg);
  // x: [B, T, d_model]. reset: optional [B, T] bool (documents start). state: null for training/full
  // forward (zero initial state, no state returned); otherwise the carried state is read and replaced by
  // the state after the last token (T == 1 takes the single-step path).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset = {}, Mamba2LayerState* state = nullptr);

  torch::nn::Linear in_proj{nullptr}, out_proj{nullptr};
  torch::nn::Conv1d conv1d{nullptr};  // weight [conv_dim, 1, K] (the torch / HF layout), bias [conv_dim]
  torch::Tensor dt_bias, A_log, D;    // [H] each
  GatedRMSNorm norm{nullptr};

 private:
  Mamba2Dims d_;
  int64_t chunk_size_;
};
TORCH_MODULE(Mamba2Mixer);

class Mamba2BlockImpl : public torch::nn::Module {
 public:
  explicit Mamba2BlockImpl(const ModelConfig& cfg);
  // x (fp32 residual stream) + mixer(norm(x)).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset = {}, Mamba2LayerState* state = nullptr);
  RMSNorm norm{nullptr};
  Mamba2Mixer mixer{nullptr};
};
TORCH_MODULE(Mamba2Block);

class Mamba2 : public LanguageModel {
 public:
  // Builds and initialises the model (fp32, CPU) as mamba_ssm does (see mamba2.cpp). vocab_size must be
  // resolved (> 0).
  explicit Mamba2(const ModelConfig& cfg);

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& doc_start = {}) override;
  // The state does not grow with the sequence; max_len only bounds the tokens step() accepts (the interface's
  // contract, as for the Transformer's cache) and may exceed model.max_seq_len (length extrapolation).
  std::unique_ptr<DecodeState> new_decode_state(int64_t batch, int64_t max_len) override;
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) override;
  // 6 * matmul_params() + ssd_flops_per_token(seq_len): the chunkwise SSD's matmuls, forward + backward.
  double flops_per_token(int64_t seq_len) const override;
  // Parameters used in matmuls: in_proj, out_proj and the output head (tied or not), all layers.
  int64_t matmul_params() const;
  // Matmul FLOPs per token of the chunkwise SSD over all layers, forward + backward (3x forward), with the
  // chunk length min(chunk_size, seq_len): per layer and token, forward
  //   2 Q G N (C B^T)  +  2 Q H P ((C B^T o L) (Delta x))  +  2 H P N (chunk states)  +  2 H P N (state -> y)
  // for Q = chunk length (the reference forms the whole Q x Q block, so no causal halving).
  double ssd_flops_per_token(int64_t seq_len) const;

  torch::nn::Embedding embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm_f{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_embeddings

 private:
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& reset, Mamba2DecodeState* cache);
  std::vector<Mamba2Block> blocks_;
  Mamba2Dims d_;
};

}  // namespace subq::models
