// gdn.cpp — the Gated DeltaNet language model (see gdn.h for the architecture and parameter names).
//
// Reference: flash-linear-attention 0.6.0, fla/layers/gated_deltanet.py (the layer) and
// fla/models/gated_deltanet/modeling_gated_deltanet.py (blocks, model, _init_weights). Read, not copied.
//
// Initialisation (what fla's GatedDeltaNetForCausalLM does by default, through post_init):
//  * every Linear (q/k/v/a/b/g/o projections, MLP, lm_head), the embedding and the depthwise convs
//    (fla's ShortConvolution is an nn.Conv1d, so its weight gets the same treatment) ~ normal(0, init_std);
//    fla's initializer_range is init_std. fla's optional prenorm residual rescale of o_proj/down_proj is
//    off by default (post_init passes no strategy), so it is not applied here either.
//  * A_log = log(A), A ~ U(0, 16) (note: from 0, unlike Mamba-2's U(1, 16)). An exact draw of 0 (chance
//    2^-24 per head) is raised to 16 * 2^-24 so A_log stays finite.
//  * dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1], floored at 1e-4 (fla hard-codes these).
//  * norm weights (attn_norm, mlp_norm, o_norm, the final norm) = 1.
//
// Decisions:
//  * q/k L2 normalisation and the dk^-1/2 query scale happen inside the op (GatedDeltaOptions::
//    l2_normalize_qk, eps 1e-6 under the root as fla's l2norm kernel), so no normalised copy of q/k is
//    materialised by the model; the model only hands the op head-first views of the projections.
//  * The gates (g, beta) are computed in fp32 from the projections, as fla's fused gate kernels do.
//  * Under bf16 autocast the projections, the convs' outputs and o are bf16; the ops return their input's
//    dtype; the residual stream stays fp32 (embedding output fp32, block outputs promote on the add), as in
//    the Transformer. Inside the chunkwise op autocast makes the matmuls bf16 with fp32 accumulation while
//    the carried state stays fp32 — the precision regime of fla's Triton kernels.
//  * Decoding: the cache holds the conv inputs and the recurrent state per layer; a multi-token step runs
//    the chunkwise op and the parallel conv from the cache (prefill, or a prompt in pieces), a one-token
//    step runs gated_delta_step and short_conv_step. The state is O(1) in the sequence length; max_len
//    only bounds the number of tokens a decode state accepts (the LanguageModel contract).
//  * logit_softcap is refused: fla's GatedDeltaNet has none and gdn models are meant to be exportable.
//  * Training memory. The gated output norm is one autograd Function (GatedRmsNormFunction) that keeps
//    only o and the gate in their own dtype (bf16 under autocast) plus one fp32 scale per head and token,
//    and recomputes the rest in backward; written with plain ops it would keep five fp32 copies of the
//    [B, T, H*dv] activation (the widest in the block: ~2 GB per layer at 8 x 4096 tokens in gdn-340m).
//    model.gdn.recompute runs each block inside a Function (GdnBlockRecompute) that keeps only the
//    block's input and re-runs the block, under the forward's autocast state, in backward — the chunkwise
//    op keeps every chunk's carried state [B, H, dv, dk] for its backward, which otherwise dominates.
#include "subq/models/gdn.h"

#include <cmath>
#include <limits>
#include <optional>

#include <ATen/autocast_mode.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq/ops/short_conv.h"

namespace subq::models {

namespace F = torch::nn::functional;

namespace {
torch::nn::Linear linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}
}  // namespace

// ------------------------------------------------------------------------------------------ short conv
GdnShortConvImpl::GdnShortConvImpl(int64_t channels, int64_t kernel) {
  weight = register_parameter("weight", torch::empty({channels, 1, kernel}));
}

torch::Tensor GdnShortConvImpl::forward(const torch::Tensor& x, const torch::Tensor& reset, torch::Tensor* cache) {
  auto r = ops::short_conv(x, weight.squeeze(1), {}, /*silu=*/true, cache ? *cache : torch::Tensor(), reset);
  if (cache) *cache = r.cache;
  return r.y;
}

torch::Tensor GdnShortConvImpl::step(const torch::Tensor& x_t, torch::Tensor& cache) {
  auto r = ops::short_conv_step(x_t, weight.squeeze(1), {}, /*silu=*/true, cache);
  cache = r.cache;
  return r.y;
}

// ------------------------------------------------------------------------------------------ gated norm
GdnGatedNormImpl::GdnGatedNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

namespace {
torch::ScalarType norm_compute_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// y = o * rstd * w * silu(gate), rstd = (mean(o^2) + eps)^-1/2 over the last dim; fp32 math (fp64 for fp64
// inputs), y in o's dtype. Saves o, gate, w and rstd; backward recomputes n = o * rstd and silu(gate).
struct GatedRmsNormFunction : torch::autograd::Function<GatedRmsNormFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& o,
                               const torch::Tensor& gate, const torch::Tensor& weight, double eps) {
    const auto ct = norm_compute_type(o);
    auto of = o.to(ct);
    auto rstd = torch::rsqrt(of.pow(2).mean(-1, /*keepdim=*/true) + eps);
    auto y = of * rstd * weight.to(ct) * F::silu(gate.to(ct));
    ctx->save_for_backward({o, gate, weight, rstd});
    return y.to(o.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &o = saved[0], &gate = saved[1], &weight = saved[2], &rstd = saved[3];
    const auto ct = norm_compute_type(o);
    auto dy = grad_out[0].to(ct);
    auto n = o.to(ct) * rstd;  // the normalised o
    auto gf = gate.to(ct);
    auto sig = torch::sigmoid(gf);
    auto act = gf * sig;  // silu(gate)
    auto w = weight.to(ct);
    auto dn = dy * act * w;
    auto dgate = dy * n * w * sig * (1.0 + gf * (1.0 - sig));  // silu'(g) = sig (1 + g (1 - sig))
    auto dw = (dy * n * act).reshape({-1, n.size(-1)}).sum(0);
    auto dx = rstd * (dn - n * (dn * n).mean(-1, /*keepdim=*/true));
    return {dx.to(o.scalar_type()), dgate.to(gate.scalar_type()), dw.to(weight.scalar_type()), torch::Tensor()};
  }
};
}  // namespace

torch::Tensor GdnGatedNormImpl::forward(const torch::Tensor& o, const torch::Tensor& gate) {
  return GatedRmsNormFunction::apply(o, gate, weight, eps_);
}

torch::Tensor gdn_gated_rms_norm_reference(const torch::Tensor& o, const torch::Tensor& gate,
                                           const torch::Tensor& weight, double eps) {
  const auto ct = norm_compute_type(o);
  auto of = o.to(ct);
  auto y = of * torch::rsqrt(of.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight.to(ct);
  return (y * F::silu(gate.to(ct))).to(o.scalar_type());
}

// ------------------------------------------------------------------------------------------------ layer
int64_t gdn_value_head_dim(const ModelConfig& cfg) {
  const double v = cfg.gdn.expand_v * static_cast<double>(cfg.gdn.head_dim);
  const auto r = static_cast<int64_t>(std::llround(v));
  if (r < 1 || std::fabs(v - static_cast<double>(r)) > 1e-6)
    throw ConfigError(str("model.gdn.expand_v (", cfg.gdn.expand_v, ") * model.gdn.head_dim (", cfg.gdn.head_dim,
                          ") = ", v, " is not a whole number of value channels; choose expand_v so that it is"));
  return r;
}

GatedDeltaNetLayerImpl::GatedDeltaNetLayerImpl(const ModelConfig& cfg)
    : heads_(cfg.n_heads),
      dk_(cfg.gdn.head_dim),
      dv_(gdn_value_head_dim(cfg)),
      chunk_(cfg.gdn.chunk_size),
      neg_eigval_(cfg.gdn.allow_neg_eigval),
      short_conv_(cfg.gdn.use_short_conv) {
  const int64_t d = cfg.d_model, key = heads_ * dk_, value = heads_ * dv_;
  q_proj = register_module("q_proj", linear(d, key));
  k_proj = register_module("k_proj", linear(d, key));
  v_proj = register_module("v_proj", linear(d, value));
  a_proj = register_module("a_proj", linear(d, heads_));
  b_proj = register_module("b_proj", linear(d, heads_));
  A_log = register_parameter("A_log", torch::empty({heads_}));
  dt_bias = register_parameter("dt_bias", torch::empty({heads_}));
  if (short_conv_) {
    q_conv1d = register_module("q_conv1d", GdnShortConv(key, cfg.gdn.conv_kernel));
    k_conv1d = register_module("k_conv1d", GdnShortConv(key, cfg.gdn.conv_kernel));
    v_conv1d = register_module("v_conv1d", GdnShortConv(value, cfg.gdn.conv_kernel));
  }
  g_proj = register_module("g_proj", linear(d, value));
  o_norm = register_module("o_norm", GdnGatedNorm(dv_, cfg.norm_eps));
  o_proj = register_module("o_proj", linear(value, d));
}

torch::Tensor GatedDeltaNetLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& reset,
                                              GdnLayerCache* cache) {
  const int64_t B = x.size(0), T = x.size(1);
  const bool one_step = cache != nullptr && T == 1;
  torch::Tensor q = q_proj(x), k = k_proj(x), v = v_proj(x);  // [B, T, H*dk], [B, T, H*dk], [B, T, H*dv]
  if (short_conv_) {
    if (one_step) {
      q = q_conv1d->step(q.select(1, 0), cache->conv_q).unsqueeze(1);
      k = k_conv1d->step(k.select(1, 0), cache->conv_k).unsqueeze(1);
      v = v_conv1d->step(v.select(1, 0), cache->conv_v).unsqueeze(1);
    } else {
      q = q_conv1d(q, reset, cache ? &cache->conv_q : nullptr);
      k = k_conv1d(k, reset, cache ? &cache->conv_k : nullptr);
      v = v_conv1d(v, reset, cache ? &cache->conv_v : nullptr);
    }
  } else {
    q = F::silu(q);
    k = F::silu(k);
    v = F::silu(v);
  }
  // log decay and write strength per head and token, fp32: [B, T, H]
  torch::Tensor g = -torch::exp(A_log) * F::softplus(a_proj(x).to(torch::kFloat32) + dt_bias);
  torch::Tensor beta = torch::sigmoid(b_proj(x).to(torch::kFloat32));
  if (neg_eigval_) beta = beta * 2.0;

  ops::GatedDeltaOptions opts;
  opts.chunk_size = chunk_;
  opts.l2_normalize_qk = true;
  torch::Tensor o;  // [B, T, H, dv]
  if (one_step) {
    auto r = ops::gated_delta_step(q.view({B, heads_, dk_}), k.view({B, heads_, dk_}), v.view({B, heads_, dv_}),
                                   g.select(1, 0), beta.select(1, 0), cache->state, opts);
    cache->state = r.final_state;
    o = r.o.unsqueeze(1);
  } else {
    auto head_first = [&](const torch::Tensor& t, int64_t dim) { return t.view({B, T, heads_, dim}).transpose(1, 2); };
    auto r = ops::gated_delta_chunkwise(head_first(q, dk_), head_first(k, dk_), head_first(v, dv_),
                                        g.transpose(1, 2), beta.transpose(1, 2),
                                        cache ? cache->state : torch::Tensor(), reset, opts);
    if (cache) cache->state = r.final_state;
    o = r.o.transpose(1, 2);
  }
  o = o_norm(o, g_proj(x).view({B, T, heads_, dv_}));
  return o_proj(o.reshape({B, T, heads_ * dv_}));
}

// ------------------------------------------------------------------------------------------------ block
GdnBlockImpl::GdnBlockImpl(const ModelConfig& cfg) {
  attn_norm = register_module("attn_norm", RMSNorm(cfg.d_model, cfg.norm_eps));
  attn = register_module("attn", GatedDeltaNetLayer(cfg));
  mlp_norm = register_module("mlp_norm", RMSNorm(cfg.d_model, cfg.norm_eps));
  mlp = register_module("mlp", SwiGLU(cfg.d_model, cfg.ffn_dim()));
}

torch::Tensor GdnBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& reset, GdnLayerCache* cache) {
  auto h = x + attn(attn_norm(x), reset, cache);
  return h + mlp(mlp_norm(h));
}

// ------------------------------------------------------------------------------------------- recompute
namespace {

// Sets autocast for one device type to a given state within a scope (restored after). Entering an enabled
// state nests like AutocastGuard (it is one), so the weight-cast cache is cleared when the outermost
// region ends.
class AutocastState {
 public:
  AutocastState(const torch::Device& device, bool enabled, torch::ScalarType dtype) : type_(device.type()) {
    if (enabled) {
      guard_.emplace(device, dtype);
    } else {
      prev_ = at::autocast::is_autocast_enabled(type_);
      at::autocast::set_autocast_enabled(type_, false);
    }
  }
  ~AutocastState() {
    if (!guard_) at::autocast::set_autocast_enabled(type_, prev_);
  }
  AutocastState(const AutocastState&) = delete;
  AutocastState& operator=(const AutocastState&) = delete;

 private:
  c10::DeviceType type_;
  bool prev_ = false;
  std::optional<AutocastGuard> guard_;
};

// Activation checkpointing of one block: forward runs the block without recording (Function::apply turns
// grad mode off) and keeps only its input; backward re-runs it with grad on, under the autocast state the
// forward saw, and differentiates it. The block's parameters are inputs only so that autograd routes
// their gradients here.
struct GdnBlockRecompute : torch::autograd::Function<GdnBlockRecompute> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, GdnBlockImpl* block,
                               const std::optional<torch::Tensor>& reset, torch::TensorList params) {
    (void)params;
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["reset"] = reset ? c10::IValue(*reset) : c10::IValue();
    const auto dev = x.device().type();
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(dev);
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(at::autocast::get_autocast_dtype(dev));
    return block->forward(x, reset ? *reset : torch::Tensor());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* block = reinterpret_cast<GdnBlockImpl*>(ctx->saved_data["block"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    const c10::IValue& r = ctx->saved_data["reset"];
    const torch::Tensor reset = r.isTensor() ? r.toTensor() : torch::Tensor();
    std::vector<torch::Tensor> inputs{x.detach().requires_grad_(true)};
    for (const auto& p : block->parameters()) inputs.push_back(p);
    torch::autograd::variable_list grads;
    {
      torch::AutoGradMode grad_on(true);
      AutocastState ac(x.device(), ctx->saved_data["autocast"].toBool(),
                       static_cast<torch::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()));
      torch::Tensor y = block->forward(inputs[0], reset);
      grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    }
    torch::autograd::variable_list out{grads[0], torch::Tensor(), torch::Tensor()};  // x, block, reset
    out.insert(out.end(), grads.begin() + 1, grads.end());                        // one per parameter
    return out;
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------------ model
namespace {
void check_config(const ModelConfig& cfg) {
  if (cfg.vocab_size <= 0)
    throw ConfigError("model.vocab_size is 0 (\"take it from the tokenizer\") but no tokenizer resolved it; set "
                      "model.vocab_size or data.tokenizer");
  if (cfg.logit_softcap > 0)
    throw ConfigError(str("model.logit_softcap = ", cfg.logit_softcap,
                          ": Gated DeltaNet (as flash-linear-attention defines it) has no logit soft-capping; set "
                          "model.logit_softcap to 0"));
  gdn_value_head_dim(cfg);
}
}  // namespace

GatedDeltaNet::GatedDeltaNet(const ModelConfig& cfg) : LanguageModel(cfg) {
  check_config(cfg);
  embeddings = register_module("embeddings", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    blocks_.emplace_back(cfg);
    layers->push_back(blocks_.back());
  }
  norm = register_module("norm", RMSNorm(cfg.d_model, cfg.norm_eps));
  if (!cfg.tie_embeddings) lm_head = register_module("lm_head", linear(cfg.d_model, cfg.vocab_size));

  torch::NoGradGuard ng;
  const double init_std = cfg.init_std;
  torch::nn::init::normal_(embeddings->weight, 0.0, init_std);
  const double dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4;
  for (auto& b : blocks_) {
    auto& a = b->attn;
    for (auto* l : {&a->q_proj, &a->k_proj, &a->v_proj, &a->a_proj, &a->b_proj, &a->g_proj, &a->o_proj,
                    &b->mlp->gate_proj, &b->mlp->up_proj, &b->mlp->down_proj})
      torch::nn::init::normal_((*l)->weight, 0.0, init_std);
    for (auto* c : {&a->q_conv1d, &a->k_conv1d, &a->v_conv1d})
      if (*c) torch::nn::init::normal_((*c)->weight, 0.0, init_std);
    auto A = torch::rand({cfg.n_heads}) * 16.0;
    a->A_log.copy_(torch::log(A.clamp_min(16.0 * std::ldexp(1.0, -24))));
    auto dt = torch::exp(torch::rand({cfg.n_heads}) * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min))
                  .clamp_min(dt_floor);
    a->dt_bias.copy_(dt + torch::log(-torch::expm1(-dt)));  // softplus^-1
  }
  if (lm_head) torch::nn::init::normal_(lm_head->weight, 0.0, init_std);
}

torch::Tensor GatedDeltaNet::run(const torch::Tensor& tokens, const torch::Tensor& reset, GdnDecodeState* cache) {
  auto h = embeddings(tokens);
  const bool recompute = cfg_.gdn.recompute && cache == nullptr && torch::GradMode::is_enabled();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (recompute) {
      const std::vector<torch::Tensor> params = blocks_[i]->parameters();
      h = GdnBlockRecompute::apply(h, blocks_[i].get(),
                                   reset.defined() ? std::optional<torch::Tensor>(reset) : std::nullopt,
                                   torch::TensorList(params));
    } else {
      h = blocks_[i]->forward(h, reset, cache ? &cache->layers[i] : nullptr);
    }
  }
  h = norm(h);
  return lm_head ? lm_head(h) : F::linear(h, embeddings->weight);
}

torch::Tensor GatedDeltaNet::forward(const torch::Tensor& tokens, const torch::Tensor& doc_start) {
  if (tokens.dim() != 2) throw InputError(str("gdn forward: tokens must be [B, T], got ", tokens.sizes()));
  if (doc_start.defined() &&
      (doc_start.scalar_type() != torch::kBool || doc_start.sizes() != tokens.sizes()))
    throw InputError(str("gdn forward: doc_start must be a bool tensor shaped like tokens ", tokens.sizes(), ", got ",
                         c10::toString(doc_start.scalar_type()), " ", doc_start.sizes()));
  return run(tokens, doc_start, nullptr);
}

std::unique_ptr<DecodeState> GatedDeltaNet::new_decode_state(int64_t batch, int64_t max_len) {
  if (batch < 1) throw InputError(str("decode batch must be >= 1, got ", batch));
  if (max_len < 1) throw InputError(str("decode length must be >= 1, got ", max_len));
  auto s = std::make_unique<GdnDecodeState>();
  s->batch = batch;
  s->max_len = max_len;
  s->layers.resize(blocks_.size());
  return s;
}

torch::Tensor GatedDeltaNet::step(const torch::Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<GdnDecodeState*>(&state);
  SUBQ_CHECK(s != nullptr, "decode state was not created by this GatedDeltaNet");
  SUBQ_CHECK(tokens.dim() == 2 && tokens.size(0) == s->batch && tokens.size(1) >= 1, "step tokens must be [",
             s->batch, ", t >= 1], got ", tokens.sizes());
  const int64_t t = tokens.size(1);
  if (s->pos + t > s->max_len)
    throw InputError(str("decode state was created for ", s->max_len, " tokens; ", s->pos, " used and ", t,
                         " more requested; create the decode state with a larger max_len"));
  torch::NoGradGuard ng;
  auto logits = run(tokens, {}, s);
  s->pos += t;
  return logits;
}

// ---------------------------------------------------------------------------------------- sizes, FLOPs
int64_t gdn_param_count(const ModelConfig& c) {
  const int64_t d = c.d_model, H = c.n_heads, dk = c.gdn.head_dim, dv = gdn_value_head_dim(c);
  const int64_t key = H * dk, value = H * dv;
  const int64_t proj = d * (2 * key + value) + 2 * d * H + 2 * d * value;  // q, k, v, a, b, g, o
  const int64_t conv = c.gdn.use_short_conv ? (2 * key + value) * c.gdn.conv_kernel : 0;
  const int64_t per_layer = proj + conv + 2 * H + dv + 3 * d * c.ffn_dim() + 2 * d;
  return c.vocab_size * d * (c.tie_embeddings ? 1 : 2) + c.n_layers * per_layer + d;
}

int64_t gdn_matmul_params(const ModelConfig& c) {
  const int64_t d = c.d_model, H = c.n_heads, dk = c.gdn.head_dim, dv = gdn_value_head_dim(c);
  const int64_t key = H * dk, value = H * dv;
  const int64_t per_layer = d * (2 * key + value) + 2 * d * H + 2 * d * value + 3 * d * c.ffn_dim();
  return c.n_layers * per_layer + c.vocab_size * d;
}

double GatedDeltaNet::flops_per_token(int64_t seq_len) const {
  const auto& c = cfg_;
  const double dk = static_cast<double>(c.gdn.head_dim), dv = static_cast<double>(gdn_value_head_dim(c));
  const double C = static_cast<double>(std::max<int64_t>(1, std::min(c.gdn.chunk_size, seq_len)));
  const double rec = 3.0 * static_cast<double>(c.n_layers) * static_cast<double>(c.n_heads) *
                     (6.0 * dk * dv + C * (5.0 * dk + 3.0 * dv));
  return 6.0 * static_cast<double>(gdn_matmul_params(c)) + rec;
}

SUBQ_REGISTER_MODEL(ModelEntry{"gdn",
                               "Gated DeltaNet (gated delta rule, short convs, SwiGLU; flash-linear-attention names)",
                               [](const ModelConfig& c) -> std::shared_ptr<LanguageModel> {
                                 return std::make_shared<GatedDeltaNet>(c);
                               }});

}  // namespace subq::models
