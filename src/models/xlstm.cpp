// xlstm.cpp — the xLSTM language model (see xlstm.h for the architecture and the parameter names).
//
// Initialisation (d = d_model, L = n_layers, H = n_heads; "small" = N(0, sqrt(2 / (5 d))), the "small init"
// of Nguyen & Salazar used throughout NX-AI's code, or N(0, model.init_std) with xlstm.small_init = false;
// "wang" = N(0, 2 / (L sqrt(d))):
//   embeddings, lm_head: small                 (transformers xLSTMPreTrainedModel._init_weights; xlstm-jax)
//   mLSTM q, k, v: small; ogate_preact: 0      (transformers; xlstm-jax mLSTMLayerV1 "dense_o" zeros)
//   igate/fgate_preact: weight 0, bias igate_bias_init (-10) / linspace(3, 6, H)       (both)
//   out_proj: wang                              (both)
//   SwiGLU proj_up_gate, proj_up: small; proj_down: wang with dim d
//       — as xlstm-jax's GatedFeedForward, the code that trained xLSTM-7B. transformers' _init_weights
//       differs here: it zeroes proj_up_gate (its "gate" substring test also matches the FFN's
//       proj_up_gate, so the FFN starts as exactly 0) and uses sqrt(d_ff) in proj_down's wang std; we
//       follow the training code.
//   sLSTM (NX-AI xlstm/blocks/slstm, the paper's code): gate maps small (sLSTMLayer.reset_parameters uses
//       dim = d); R = 0 (sLSTMCellConfig.recurrent_weight_init "zeros"); bias 0 except the forget gate,
//       "powerlaw_blockdependent": f_j = 5 - 12 (j / (Dh - 1))^(0.3 + 1.3 i / (L - 1)) for unit j of every
//       head in block i of L; conv1d: torch's Conv1d default U(+-1/sqrt(K)) for weight and bias.
//   norms: weight 1 (NX-AI stores LayerNorm weights as 1 + w with w = 0; same function).
//
// Decisions:
//  * The per-head norm of the mLSTM output is a LayerNorm (mean-centred), not an RMSNorm: that is what
//    transformers' xLSTMMultiHeadLayerNorm (xLSTM-7B) computes, so the export reproduces it exactly.
//  * The sLSTM layer follows NX-AI's sLSTMLayer: block-diagonal (per-head) input maps, the conv feeding
//    only i and f, the group norm as output — there is no output projection (the block's SwiGLU mixes the
//    heads). The block's pre-norms are RMSNorms and its FFN the same SwiGLU as the mLSTM blocks (d_ff),
//    in the xLSTM-7B style; NX-AI's paper blocks use LayerNorm and a GeLU FFN of factor 4/3.
//  * The mLSTM gate pre-activations are computed in fp32 outside autocast (as xlstm-jax's gate_dtype
//    float32): in bf16 the -10 input-gate bias has a resolution of 1/16 and the soft-cap would act on
//    rounded values. They are tiny (d -> H) matmuls.
//  * The mLSTM recurrence goes through the dispatching ops::mlstm / ops::mlstm_decode: the CUDA kernels
//    where they apply (bf16/fp16 q, k, v on a GPU, head dims 64/128/256; see subq/ops/mlstm.h), else the
//    chunkwise reference / recurrent step.
//  * Residual stream in fp32, as in the Transformer: the embedding and the block sums stay fp32 under
//    autocast; projections run in the autocast dtype; the ops compute in fp32 and return the input dtype.
//  * q, k, v go to the op as [B, H, T, D] views of the projections (no copies beyond the op's own
//    chunking); nothing larger than the op needs is materialised.
#include "subq/models/xlstm.h"

#include <algorithm>
#include <cmath>

#include <ATen/autocast_mode.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/ops/short_conv.h"

namespace subq::models {

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias = false) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// Turns autocast off for one device type for the guard's lifetime.
class AutocastOff {
 public:
  explicit AutocastOff(c10::DeviceType t) : type_(t), was_(at::autocast::is_autocast_enabled(t)) {
    if (was_) at::autocast::set_autocast_enabled(type_, false);
  }
  ~AutocastOff() {
    if (was_) at::autocast::set_autocast_enabled(type_, true);
  }
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  c10::DeviceType type_;
  bool was_;
};

Tensor soft_cap(const Tensor& x, double cap) { return cap > 0 ? cap * torch::tanh(x / cap) : x; }

Tensor select_reset(const Tensor& reset, int64_t t) { return reset.defined() ? reset.select(1, t) : Tensor(); }

}  // namespace

// ------------------------------------------------------------------------------------------------- sizes
XlstmDims xlstm_dims(const ModelConfig& c) {
  XlstmDims d;
  const auto& x = c.xlstm;
  d.qk_dim = static_cast<int64_t>(static_cast<double>(c.d_model) * x.qk_dim_factor);
  d.v_dim = static_cast<int64_t>(static_cast<double>(c.d_model) * x.v_dim_factor);
  auto check = [&](int64_t w, const char* key, const char* what) {
    if (w < c.n_heads || w % c.n_heads != 0)
      throw ConfigError(str("model.xlstm.", key, " = ", key[0] == 'q' ? x.qk_dim_factor : x.v_dim_factor,
                            " gives an mLSTM ", what, " width of int(", c.d_model, " * factor) = ", w,
                            ", which must be a positive multiple of model.n_heads = ", c.n_heads,
                            "; change model.xlstm.", key, ", model.d_model or model.n_heads"));
  };
  check(d.qk_dim, "qk_dim_factor", "q/k");
  check(d.v_dim, "v_dim_factor", "v");
  d.qk_head_dim = d.qk_dim / c.n_heads;
  d.v_head_dim = d.v_dim / c.n_heads;
  if (c.d_model % c.n_heads != 0)
    throw ConfigError(str("model.d_model (", c.d_model, ") must be divisible by model.n_heads (", c.n_heads, ")"));
  d.slstm_head_dim = c.d_model / c.n_heads;
  d.ffn_dim = c.ffn_dim();
  return d;
}

int64_t xlstm_param_count(const ModelConfig& c) {
  const auto dm = xlstm_dims(c);
  const int64_t d = c.d_model, H = c.n_heads, ff = 3 * d * dm.ffn_dim;
  const int64_t mlstm = 2 * d + 2 * d * dm.qk_dim + 2 * d * dm.v_dim + 2 * (d * H + H) + dm.v_dim + dm.v_dim * d + ff;
  const int64_t K = c.xlstm.slstm_conv_kernel;
  const int64_t slstm = 2 * d + (K > 0 ? d * K + d : 0) + 8 * d * dm.slstm_head_dim + 4 * d + d + ff;
  int64_t n = c.vocab_size * d * (c.tie_embeddings ? 1 : 2) + d;
  for (int64_t i = 0; i < c.n_layers; ++i) n += c.xlstm.is_slstm(i) ? slstm : mlstm;
  return n;
}

// ---------------------------------------------------------------------------------------- MultiHeadNorm
MultiHeadNormImpl::MultiHeadNormImpl(int64_t heads, int64_t head_dim, double eps)
    : heads_(heads), head_dim_(head_dim), eps_(eps) {
  weight = register_parameter("weight", torch::ones({heads * head_dim}));
}

Tensor MultiHeadNormImpl::forward(const Tensor& x) {
  SUBQ_CHECK(x.dim() >= 2 && x.size(-2) == heads_ && x.size(-1) == head_dim_, "MultiHeadNorm expects [..., ", heads_,
             ", ", head_dim_, "], got ", x.sizes());
  auto xf = x.to(torch::kFloat32);
  auto centred = xf - xf.mean(-1, /*keepdim=*/true);
  auto y = centred * torch::rsqrt(at::var(xf, at::IntArrayRef{-1}, /*unbiased=*/false, /*keepdim=*/true) + eps_);
  return y.to(x.scalar_type()).flatten(-2) * weight;
}

// ----------------------------------------------------------------------------------------------- SwiGLU
XlstmFeedForwardImpl::XlstmFeedForwardImpl(int64_t d_model, int64_t d_ff) {
  proj_up_gate = register_module("proj_up_gate", linear(d_model, d_ff));
  proj_up = register_module("proj_up", linear(d_model, d_ff));
  proj_down = register_module("proj_down", linear(d_ff, d_model));
}

Tensor XlstmFeedForwardImpl::forward(const Tensor& x) { return proj_down(F::silu(proj_up_gate(x)) * proj_up(x)); }

// ------------------------------------------------------------------------------------------- mLSTM layer
MlstmLayerImpl::MlstmLayerImpl(const ModelConfig& cfg)
    : heads_(cfg.n_heads), chunk_size_(cfg.xlstm.chunk_size), gate_softcap_(cfg.xlstm.gate_softcap) {
  const auto dm = xlstm_dims(cfg);
  qk_head_dim_ = dm.qk_head_dim;
  v_head_dim_ = dm.v_head_dim;
  const int64_t d = cfg.d_model;
  q = register_module("q", linear(d, dm.qk_dim));
  k = register_module("k", linear(d, dm.qk_dim));
  v = register_module("v", linear(d, dm.v_dim));
  ogate_preact = register_module("ogate_preact", linear(d, dm.v_dim));
  igate_preact = register_module("igate_preact", linear(d, heads_, true));
  fgate_preact = register_module("fgate_preact", linear(d, heads_, true));
  multihead_norm = register_module("multihead_norm", MultiHeadNorm(heads_, v_head_dim_, cfg.norm_eps));
  out_proj = register_module("out_proj", linear(dm.v_dim, d));
}

std::pair<Tensor, Tensor> MlstmLayerImpl::gates(const Tensor& x) {
  AutocastOff off(x.device().type());
  const auto f32 = torch::kFloat32;
  auto xf = x.to(f32);
  auto ig = F::linear(xf, igate_preact->weight.to(f32), igate_preact->bias.to(f32));
  auto fg = F::linear(xf, fgate_preact->weight.to(f32), fgate_preact->bias.to(f32));
  return {soft_cap(ig, gate_softcap_), soft_cap(fg, gate_softcap_)};
}

Tensor MlstmLayerImpl::forward(const Tensor& x, const Tensor& reset, ops::MlstmState* state) {
  SUBQ_CHECK(x.dim() == 3, "mLSTM layer input must be [B, T, d], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1);
  auto heads = [&](const Tensor& t, int64_t dh) { return t.view({B, T, heads_, dh}).transpose(1, 2); };
  const Tensor qh = heads(q(x), qk_head_dim_), kh = heads(k(x), qk_head_dim_), vh = heads(v(x), v_head_dim_);
  auto [ig, fg] = gates(x);  // [B, T, H] fp32
  ig = ig.transpose(1, 2);
  fg = fg.transpose(1, 2);
  Tensor h;  // [B, H, T, Dv]
  if (state && T == 1) {
    auto r = ops::mlstm_decode(qh.select(2, 0), kh.select(2, 0), vh.select(2, 0), ig.select(2, 0), fg.select(2, 0),
                               *state, select_reset(reset, 0));
    h = r.h.unsqueeze(2);
    *state = std::move(r.state);
  } else {
    auto r = ops::mlstm(qh, kh, vh, ig, fg, state ? *state : ops::MlstmState{}, reset, chunk_size_);
    h = r.h;
    if (state) *state = std::move(r.state);
  }
  const Tensor hn = multihead_norm(h.transpose(1, 2));  // [B, T, H * Dv]
  return out_proj(torch::sigmoid(ogate_preact(x)) * hn);
}

// ------------------------------------------------------------------------------------------ sLSTM layer
HeadwiseLinearImpl::HeadwiseLinearImpl(int64_t heads, int64_t in_per_head, int64_t out_per_head)
    : heads_(heads), in_per_head_(in_per_head) {
  weight = register_parameter("weight", torch::zeros({heads, out_per_head, in_per_head}));
}

Tensor HeadwiseLinearImpl::forward(const Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(heads_);
  shape.push_back(in_per_head_);
  return torch::einsum("...hi,hoi->...ho", {x.reshape(shape), weight});
}

CausalConvImpl::CausalConvImpl(int64_t channels, int64_t kernel) {
  weight = register_parameter("weight", torch::zeros({channels, kernel}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

SlstmCellImpl::SlstmCellImpl(int64_t heads, int64_t head_dim) {
  recurrent_kernel = register_parameter("recurrent_kernel", torch::zeros({4, heads, head_dim, head_dim}));
  bias = register_parameter("bias", torch::zeros({4, heads, head_dim}));
}

SlstmLayerImpl::SlstmLayerImpl(const ModelConfig& cfg) : heads_(cfg.n_heads) {
  head_dim_ = xlstm_dims(cfg).slstm_head_dim;
  if (cfg.xlstm.slstm_conv_kernel > 0)
    conv1d = register_module("conv1d", CausalConv(cfg.d_model, cfg.xlstm.slstm_conv_kernel));
  zgate = register_module("zgate", HeadwiseLinear(heads_, head_dim_, head_dim_));
  igate = register_module("igate", HeadwiseLinear(heads_, head_dim_, head_dim_));
  fgate = register_module("fgate", HeadwiseLinear(heads_, head_dim_, head_dim_));
  ogate = register_module("ogate", HeadwiseLinear(heads_, head_dim_, head_dim_));
  slstm_cell = register_module("slstm_cell", SlstmCell(heads_, head_dim_));
  group_norm = register_module("group_norm", MultiHeadNorm(heads_, head_dim_, cfg.norm_eps));
}

Tensor SlstmLayerImpl::forward(const Tensor& x, const Tensor& reset, XlstmLayerState* state) {
  SUBQ_CHECK(x.dim() == 3, "sLSTM layer input must be [B, T, d], got ", x.sizes());
  const int64_t T = x.size(1);
  const bool one_step = state && T == 1;
  Tensor xc = x;
  if (conv1d) {
    if (one_step) {
      auto r = ops::short_conv_step(x.select(1, 0), conv1d->weight, conv1d->bias, /*silu=*/true, state->conv,
                                    select_reset(reset, 0));
      xc = r.y.unsqueeze(1);
      state->conv = std::move(r.cache);
    } else {
      auto r = ops::short_conv(x, conv1d->weight, conv1d->bias, /*silu=*/true, state ? state->conv : Tensor(), reset);
      xc = r.y;
      if (state) state->conv = std::move(r.cache);
    }
  }
  // [B, T, 4, H, Dh] in the op's gate order z, i, f, o; the fp32 bias promotes autocast outputs to fp32.
  const Tensor pre = torch::stack({zgate(x), igate(xc), fgate(xc), ogate(x)}, 2) + slstm_cell->bias;
  const Tensor& r_kernel = slstm_cell->recurrent_kernel;
  Tensor h;  // [B, T, H, Dh]
  if (one_step) {
    auto r = ops::slstm_step(pre.select(1, 0), r_kernel, state->slstm, select_reset(reset, 0));
    h = r.h.unsqueeze(1);
    state->slstm = std::move(r.state);
  } else {
    auto r = ops::slstm_recurrent(pre, r_kernel, state ? state->slstm : ops::SlstmState{}, reset);
    h = r.h;
    if (state) state->slstm = std::move(r.state);
  }
  return group_norm(h);
}

// ----------------------------------------------------------------------------------------------- blocks
MlstmBlock::MlstmBlock(const ModelConfig& cfg) {
  norm_mlstm = register_module("norm_mlstm", RMSNorm(cfg.d_model, cfg.norm_eps));
  mlstm_layer = register_module("mlstm_layer", MlstmLayer(cfg));
  norm_ffn = register_module("norm_ffn", RMSNorm(cfg.d_model, cfg.norm_eps));
  ffn = register_module("ffn", XlstmFeedForward(cfg.d_model, cfg.ffn_dim()));
}

Tensor MlstmBlock::forward(const Tensor& x, const Tensor& reset, XlstmLayerState* state) {
  auto h = x + mlstm_layer->forward(norm_mlstm(x), reset, state ? &state->mlstm : nullptr);
  return h + ffn(norm_ffn(h));
}

SlstmBlock::SlstmBlock(const ModelConfig& cfg) {
  norm_slstm = register_module("norm_slstm", RMSNorm(cfg.d_model, cfg.norm_eps));
  slstm_layer = register_module("slstm_layer", SlstmLayer(cfg));
  norm_ffn = register_module("norm_ffn", RMSNorm(cfg.d_model, cfg.norm_eps));
  ffn = register_module("ffn", XlstmFeedForward(cfg.d_model, cfg.ffn_dim()));
}

Tensor SlstmBlock::forward(const Tensor& x, const Tensor& reset, XlstmLayerState* state) {
  auto h = x + slstm_layer->forward(norm_slstm(x), reset, state);
  return h + ffn(norm_ffn(h));
}

XlstmBackboneImpl::XlstmBackboneImpl(const ModelConfig& cfg) {
  embeddings = register_module("embeddings", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    std::shared_ptr<XlstmBlock> b;
    if (cfg.xlstm.is_slstm(i))
      b = std::make_shared<SlstmBlock>(cfg);
    else
      b = std::make_shared<MlstmBlock>(cfg);
    blocks->push_back(b);
    block_list.push_back(b);
  }
  out_norm = register_module("out_norm", RMSNorm(cfg.d_model, cfg.norm_eps));
}

// ------------------------------------------------------------------------------------------------ model
Xlstm::Xlstm(const ModelConfig& cfg) : LanguageModel(cfg) {
  if (cfg.vocab_size <= 0)
    throw ConfigError("model.vocab_size is 0 (\"take it from the tokenizer\") but no tokenizer resolved it; set "
                      "model.vocab_size or data.tokenizer");
  const auto dm = xlstm_dims(cfg);  // validates the widths
  backbone = register_module("backbone", XlstmBackbone(cfg));
  if (!cfg.tie_embeddings) lm_head = register_module("lm_head", linear(cfg.d_model, cfg.vocab_size));

  torch::NoGradGuard ng;
  namespace init = torch::nn::init;
  const double d = static_cast<double>(cfg.d_model);
  const double small = cfg.xlstm.small_init ? std::sqrt(2.0 / (5.0 * d)) : cfg.init_std;
  const double wang = 2.0 / static_cast<double>(cfg.n_layers) / std::sqrt(d);
  init::normal_(backbone->embeddings->weight, 0.0, small);
  if (lm_head) init::normal_(lm_head->weight, 0.0, small);
  for (size_t i = 0; i < backbone->block_list.size(); ++i) {
    auto& blk = backbone->block_list[i];
    XlstmFeedForward ffn{nullptr};
    if (auto* mb = dynamic_cast<MlstmBlock*>(blk.get())) {
      auto& l = mb->mlstm_layer;
      for (auto* p : {&l->q, &l->k, &l->v}) init::normal_((*p)->weight, 0.0, small);
      init::zeros_(l->ogate_preact->weight);
      init::zeros_(l->igate_preact->weight);
      init::zeros_(l->fgate_preact->weight);
      l->igate_preact->bias.fill_(cfg.xlstm.igate_bias_init);
      l->fgate_preact->bias.copy_(torch::linspace(3.0, 6.0, cfg.n_heads));
      init::normal_(l->out_proj->weight, 0.0, wang);
      ffn = mb->ffn;
    } else {
      auto* sb = dynamic_cast<SlstmBlock*>(blk.get());
      SUBQ_CHECK(sb != nullptr);
      auto& l = sb->slstm_layer;
      if (l->conv1d) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(cfg.xlstm.slstm_conv_kernel));
        init::uniform_(l->conv1d->weight, -bound, bound);
        init::uniform_(l->conv1d->bias, -bound, bound);
      }
      for (auto* g : {&l->zgate, &l->igate, &l->fgate, &l->ogate}) init::normal_((*g)->weight, 0.0, small);
      init::zeros_(l->slstm_cell->recurrent_kernel);
      init::zeros_(l->slstm_cell->bias);
      const int64_t dh = dm.slstm_head_dim;
      const double ratio =
          cfg.n_layers > 1 ? static_cast<double>(i) / static_cast<double>(cfg.n_layers - 1) : 0.0;
      auto u = dh > 1 ? torch::arange(dh, torch::kFloat64) / static_cast<double>(dh - 1)
                      : torch::zeros({dh}, torch::kFloat64);
      auto f_bias = 5.0 - 12.0 * torch::pow(u, 0.3 + 1.3 * ratio);  // = -(-5 + 12 u^p)
      l->slstm_cell->bias.select(0, ops::kSlstmF).copy_(f_bias.to(torch::kFloat32).expand({cfg.n_heads, dh}));
      ffn = sb->ffn;
    }
    init::normal_(ffn->proj_up_gate->weight, 0.0, small);
    init::normal_(ffn->proj_up->weight, 0.0, small);
    init::normal_(ffn->proj_down->weight, 0.0, wang);
  }
}

Tensor Xlstm::run(const Tensor& tokens, const Tensor& reset, XlstmDecodeState* state) {
  SUBQ_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  Tensor h = backbone->embeddings(tokens);
  for (size_t i = 0; i < backbone->block_list.size(); ++i)
    h = backbone->block_list[i]->forward(h, reset, state ? &state->layers[i] : nullptr);
  h = backbone->out_norm(h);
  auto logits = lm_head ? lm_head(h) : F::linear(h, backbone->embeddings->weight);
  return soft_cap(logits, cfg_.logit_softcap);
}

Tensor Xlstm::forward(const Tensor& tokens, const Tensor& doc_start) { return run(tokens, doc_start, nullptr); }

std::unique_ptr<DecodeState> Xlstm::new_decode_state(int64_t batch, int64_t max_len) {
  if (batch < 1) throw InputError(str("decode batch must be >= 1, got ", batch));
  if (max_len < 1) throw InputError(str("decode length must be >= 1, got ", max_len));
  auto s = std::make_unique<XlstmDecodeState>();
  s->batch = batch;
  s->layers.resize(backbone->block_list.size());
  return s;
}

Tensor Xlstm::step(const Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<XlstmDecodeState*>(&state);
  SUBQ_CHECK(s != nullptr, "decode state was not created by this xLSTM");
  SUBQ_CHECK(tokens.dim() == 2 && tokens.size(0) == s->batch && tokens.size(1) >= 1, "step tokens must be [",
             s->batch, ", t >= 1], got ", tokens.sizes());
  torch::NoGradGuard ng;
  auto logits = run(tokens, Tensor(), s);
  s->pos += tokens.size(1);
  return logits;
}

int64_t Xlstm::matmul_params() const {
  const auto& c = cfg_;
  const auto dm = xlstm_dims(c);
  const int64_t d = c.d_model, ff = 3 * d * dm.ffn_dim;
  const int64_t mlstm = d * (2 * dm.qk_dim + 2 * dm.v_dim) + 2 * d * c.n_heads + dm.v_dim * d + ff;
  const int64_t slstm = 8 * d * dm.slstm_head_dim + ff;  // headwise W (4 d Dh) + R (4 H Dh Dh = 4 d Dh)
  int64_t n = c.vocab_size * d;
  for (int64_t i = 0; i < c.n_layers; ++i) n += c.xlstm.is_slstm(i) ? slstm : mlstm;
  return n;
}

double Xlstm::flops_per_token(int64_t seq_len) const {
  const auto& c = cfg_;
  const auto dm = xlstm_dims(c);
  const double lc = static_cast<double>(std::max<int64_t>(1, std::min(c.xlstm.chunk_size, seq_len)));
  const double dk = static_cast<double>(dm.qk_head_dim), dv = static_cast<double>(dm.v_head_dim);
  const double per_mlstm = 3.0 * static_cast<double>(c.n_heads) * (2.0 * lc * (dk + dv) + 4.0 * dk * dv);
  double rec = 0;
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (!c.xlstm.is_slstm(i)) rec += per_mlstm;
  return 6.0 * static_cast<double>(matmul_params()) + rec;
}

SUBQ_REGISTER_MODEL(ModelEntry{"xlstm",
                               "xLSTM: mLSTM (xLSTM-7B form) and sLSTM blocks in an a:b pattern (HF xLSTM names)",
                               [](const ModelConfig& c) -> std::shared_ptr<LanguageModel> {
                                 return std::make_shared<Xlstm>(c);
                               }});

}  // namespace subq::models
