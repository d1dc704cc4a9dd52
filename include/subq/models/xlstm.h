// xlstm.h — xLSTM language model (registered as model.arch = "xlstm"): a stack of mLSTM blocks in the
// xLSTM-7B form and, by model.xlstm.pattern "a:b", sLSTM blocks in NX-AI's form.
//
//   tokens -> embeddings -> n_layers x block -> out_norm (RMSNorm) -> lm_head (or the tied embedding)
//          -> logit soft-cap c*tanh(x/c) (model.logit_softcap; 30 in the xLSTM configs)
//   mLSTM block:  x += mLSTMLayer(RMSNorm(x));  x += SwiGLU(RMSNorm(x))
//     mLSTMLayer: q, k = W x (width qk_dim_factor * d), v = W x (width v_dim_factor * d), split over n_heads;
//                 i~, f~ = cap(W x + b) per head (cap = gate_softcap * tanh(./gate_softcap));
//                 h = mLSTM(q, k, v, i~, f~) (ops::mlstm_chunkwise; ops::mlstm_step when decoding);
//                 y = out_proj(sigmoid(W_o x) * MultiHeadNorm(h))
//   sLSTM block:  x += sLSTMLayer(RMSNorm(x));  x += SwiGLU(RMSNorm(x))
//     sLSTMLayer: x_c = SiLU(causal depthwise conv(x)) (slstm_conv_kernel taps; x_c = x without conv);
//                 pre = [W_z x, W_i x_c, W_f x_c, W_o x] + b with block-diagonal (per-head) W;
//                 h = sLSTM(pre, R) (ops::slstm_recurrent / slstm_step, block-diagonal R);
//                 y = MultiHeadNorm(h)   (no output projection, as NX-AI's sLSTMLayer)
//   MultiHeadNorm: LayerNorm over each head's channels (mean-centred, no bias) times one weight per
//   channel — transformers' xLSTMMultiHeadLayerNorm / NX-AI's MultiHeadLayerNorm.
//
// Parameter names are those of transformers' xLSTMForCausalLM (model_type "xlstm", = NX-AI's xLSTM-7B
// "xlstm_large"), so exporting an mLSTM-only model is the identity on names:
//   backbone.embeddings.weight, backbone.out_norm.weight, lm_head.weight (absent when tied),
//   backbone.blocks.{i}.norm_mlstm.weight, backbone.blocks.{i}.mlstm_layer.{q,k,v,ogate_preact,out_proj}.weight,
//   backbone.blocks.{i}.mlstm_layer.{igate_preact,fgate_preact}.{weight,bias},
//   backbone.blocks.{i}.mlstm_layer.multihead_norm.weight, backbone.blocks.{i}.norm_ffn.weight,
//   backbone.blocks.{i}.ffn.{proj_up_gate,proj_up,proj_down}.weight.
// sLSTM blocks (no transformers equivalent) use the analogous names, NX-AI's sLSTMLayer module names
// under "slstm_layer":
//   backbone.blocks.{i}.norm_slstm.weight,
//   backbone.blocks.{i}.slstm_layer.conv1d.{weight [d, K], bias [d]}       (only with slstm_conv_kernel > 0)
//   backbone.blocks.{i}.slstm_layer.{zgate,igate,fgate,ogate}.weight [H, Dh, Dh] (out, in; NX-AI's
//                                                                     LinearHeadwiseExpand layout)
//   backbone.blocks.{i}.slstm_layer.slstm_cell.recurrent_kernel [4, H, Dh, Dh]  (gates z, i, f, o: ops::slstm)
//   backbone.blocks.{i}.slstm_layer.slstm_cell.bias [4, H, Dh]
//   backbone.blocks.{i}.slstm_layer.group_norm.weight [d]
//   backbone.blocks.{i}.norm_ffn.weight, backbone.blocks.{i}.ffn.{proj_up_gate,proj_up,proj_down}.weight.
//
// Packed documents: forward's doc_start is the reset mask of every recurrence and of the sLSTM conv, so
// documents in one row never see each other's state. Decoding keeps O(1) state per layer (mLSTM C, n, m;
// sLSTM h, c, n, m and the conv's last K-1 inputs); its length is not bounded by the model (max_len is only
// checked to be positive) and neither is forward's (no positional tables), so length generalisation can be
// evaluated beyond model.max_seq_len.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "subq/models/model.h"
#include "subq/models/transformer.h"
#include "subq/ops/mlstm.h"
#include "subq/ops/slstm.h"

namespace subq::models {

// Derived widths of an xLSTM config; ConfigError (naming the keys to change) when they do not split over
// the heads. q/k and v widths are int(d_model * factor), as transformers' xLSTMLayer computes them.
struct XlstmDims {
  int64_t qk_dim = 0, v_dim = 0;            // mLSTM q/k and v widths
  int64_t qk_head_dim = 0, v_head_dim = 0;  // per head
  int64_t slstm_head_dim = 0;               // d_model / n_heads
  int64_t ffn_dim = 0;                      // SwiGLU hidden width
};
XlstmDims xlstm_dims(const ModelConfig& cfg);

// Parameter count of an xLSTM with this config, without building it (equals num_params()).
int64_t xlstm_param_count(const ModelConfig& cfg);

// LayerNorm over the last dim of each head (mean-centred, no bias, fp32 statistics, result cast back to the
// input dtype) then times a per-channel weight: x [..., H, Dh] -> [..., H * Dh].
class MultiHeadNormImpl : public torch::nn::Module {
 public:
  MultiHeadNormImpl(int64_t heads, int64_t head_dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  int64_t heads_, head_dim_;
  double eps_;
};
TORCH_MODULE(MultiHeadNorm);

// SwiGLU with transformers' xLSTM names: proj_down(silu(proj_up_gate(x)) * proj_up(x)).
class XlstmFeedForwardImpl : public torch::nn::Module {
 public:
  XlstmFeedForwardImpl(int64_t d_model, int64_t d_ff);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear proj_up_gate{nullptr}, proj_up{nullptr}, proj_down{nullptr};
};
TORCH_MODULE(XlstmFeedForward);

// Recurrent state of one block while decoding (only the fields of the block's type are used; undefined
// tensors mean the zero state).
struct XlstmLayerState {
  ops::MlstmState mlstm;
  ops::SlstmState slstm;
  torch::Tensor conv;  // sLSTM conv cache [B, K-1, d]
};

struct XlstmDecodeState : DecodeState {
  std::vector<XlstmLayerState> layers;
  int64_t batch = 0;
};

class MlstmLayerImpl : public torch::nn::Module {
 public:
  explicit MlstmLayerImpl(const ModelConfig& cfg);
  // x [B, T, d]; reset [B, T] bool or undefined. With `state`, the recurrence starts from *state (undefined =
  // zero) and *state becomes the final state; T == 1 then uses ops::mlstm_step. Returns [B, T, d].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset, ops::MlstmState* state = nullptr);
  // The soft-capped gate pre-activations [B, T, H] in fp32 (the gate linears run outside autocast).
  std::pair<torch::Tensor, torch::Tensor> gates(const torch::Tensor& x);

  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, ogate_preact{nullptr}, igate_preact{nullptr},
      fgate_preact{nullptr}, out_proj{nullptr};
  MultiHeadNorm multihead_norm{nullptr};

 private:
  int64_t heads_, qk_head_dim_, v_head_dim_, chunk_size_;
  double gate_softcap_;
};
TORCH_MODULE(MlstmLayer);

// Per-head (block-diagonal) linear map without bias: x [..., H * Din] -> [..., H, Dout],
// y[..., h, o] = sum_i weight[h, o, i] x[..., h, i] (NX-AI's LinearHeadwiseExpand, expansion 1).
class HeadwiseLinearImpl : public torch::nn::Module {
 public:
  HeadwiseLinearImpl(int64_t heads, int64_t in_per_head, int64_t out_per_head);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  int64_t heads_, in_per_head_;
};
TORCH_MODULE(HeadwiseLinear);

// Causal depthwise conv parameters (ops::short_conv layout: weight [C, K], weight[:, K-1] on the current token).
class CausalConvImpl : public torch::nn::Module {
 public:
  CausalConvImpl(int64_t channels, int64_t kernel);
  torch::Tensor weight, bias;
};
TORCH_MODULE(CausalConv);

// The sLSTM cell's own parameters: recurrent_kernel R [4, H, Dh, Dh] and bias b [4, H, Dh] (gates z, i, f, o).
class SlstmCellImpl : public torch::nn::Module {
 public:
  SlstmCellImpl(int64_t heads, int64_t head_dim);
  torch::Tensor recurrent_kernel, bias;
};
TORCH_MODULE(SlstmCell);

class SlstmLayerImpl : public torch::nn::Module {
 public:
  explicit SlstmLayerImpl(const ModelConfig& cfg);
  // As MlstmLayer::forward; the state carries the cell state and the conv cache.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset, XlstmLayerState* state = nullptr);

  CausalConv conv1d{nullptr};  // null when slstm_conv_kernel = 0
  HeadwiseLinear zgate{nullptr}, igate{nullptr}, fgate{nullptr}, ogate{nullptr};
  SlstmCell slstm_cell{nullptr};
  MultiHeadNorm group_norm{nullptr};

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(SlstmLayer);

// One residual block of either kind (the stack holds both behind this interface).
class XlstmBlock : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset, XlstmLayerState* state) = 0;
  virtual bool is_slstm() const = 0;
};

class MlstmBlock : public XlstmBlock {
 public:
  explicit MlstmBlock(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset, XlstmLayerState* state) override;
  bool is_slstm() const override { return false; }
  RMSNorm norm_mlstm{nullptr}, norm_ffn{nullptr};
  MlstmLayer mlstm_layer{nullptr};
  XlstmFeedForward ffn{nullptr};
};

class SlstmBlock : public XlstmBlock {
 public:
  explicit SlstmBlock(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& reset, XlstmLayerState* state) override;
  bool is_slstm() const override { return true; }
  RMSNorm norm_slstm{nullptr}, norm_ffn{nullptr};
  SlstmLayer slstm_layer{nullptr};
  XlstmFeedForward ffn{nullptr};
};

class XlstmBackboneImpl : public torch::nn::Module {
 public:
  explicit XlstmBackboneImpl(const ModelConfig& cfg);
  torch::nn::Embedding embeddings{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  RMSNorm out_norm{nullptr};
  std::vector<std::shared_ptr<XlstmBlock>> block_list;  // the same modules as `blocks`, typed
};
TORCH_MODULE(XlstmBackbone);

class Xlstm : public LanguageModel {
 public:
  // Builds and initialises the model (fp32, CPU); see xlstm.cpp for the initialisation and its sources.
  explicit Xlstm(const ModelConfig& cfg);

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& doc_start = {}) override;
  std::unique_ptr<DecodeState> new_decode_state(int64_t batch, int64_t max_len) override;
  torch::Tensor step(const torch::Tensor& tokens, DecodeState& state) override;
  // 6 * matmul_params() + the chunkwise mLSTM's matmuls: per mLSTM block, head and token (chunk L =
  // min(chunk_size, seq_len)), forward 2 L (Dqk + Dv) for the intra-chunk Q K^T and S V, 2 Dqk Dv for the
  // inter-chunk q C and 2 Dqk Dv for the chunk states, times 3 for forward + backward. The sLSTM's R h
  // products are matmul parameters (used once per token).
  double flops_per_token(int64_t seq_len) const override;
  // Parameters that take part in matmuls: all projections (gate linears, headwise sLSTM maps and R
  // included), and the output head (tied or not); not the embedding lookup, norms, biases or convs.
  int64_t matmul_params() const;

  XlstmBackbone backbone{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_embeddings

 private:
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& reset, XlstmDecodeState* state);
};

}  // namespace subq::models
