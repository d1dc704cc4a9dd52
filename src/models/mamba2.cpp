// mamba2.cpp — Mamba-2 (see mamba2.h for the architecture and the parameter names).
//
// Initialisation follows the reference implementation, mamba_ssm (modules/mamba2.py Mamba2.__init__ and
// models/mixer_seq_simple.py _init_weights), not transformers' Mamba2PreTrainedModel (which sets
// A_log = log(1..H) instead of sampling it):
//  * in_proj, conv1d (weight and bias) and an untied lm_head keep torch's default init (kaiming-uniform with
//    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); conv bias likewise): mamba_ssm never re-initialises
//    them. Linear layers have no bias, so its "zero the biases" step has nothing to do.
//  * out_proj: the same default init, divided by sqrt(n_layers) (mamba_ssm's rescale_prenorm_residual with one
//    residual branch per layer, as a Mamba-2 block has no MLP).
//  * embeddings: normal(0, model.init_std) (mamba_ssm's initializer_range, 0.02).
//  * A_log = log(U(a_init_min, a_init_max)); D = 1; dt_bias = softplus^-1(dt) with dt log-uniform in
//    [dt_min, dt_max], floored at dt_init_floor; RMSNorm weights 1.
//
// Numerics and layout decisions:
//  * The residual stream is fp32 (mamba_ssm/transformers residual_in_fp32 = true): block outputs are summed in
//    fp32 under bf16 autocast; matmuls run in the autocast dtype; short_conv and the SSD compute in fp32 and
//    return the activation dtype; Delta = softplus(dt + dt_bias) is formed in fp32.
//  * No dt clamp: time_step_limit is the reference default (0, inf), under which clamping is the identity.
//  * The in_proj output is split with views (narrow); x, B, C go to the op head-first through permuted
//    views, so the op's own conversion/padding is the only copy of them (none with the kernels); y comes back head-first and is
//    transposed once (one copy) into [B, T, d_inner] for the gated norm and out_proj. Nothing larger than the
//    op's own intermediates is materialised.
//  * conv1d.weight is stored as torch's / HF's [C, 1, K] so the export is a rename; the op reads the [C, K]
//    view (squeeze, no copy).
//  * The gated RMSNorm has a hand-written backward (GatedRMSNormFn) that saves y, z and the per-group 1/rms
//    only: autograd of the fp32 expression kept four fp32 copies of [B, T, d_inner] per layer (measured: the
//    block's retained activations drop by about a fifth under bf16 autocast).
//  * model.mamba2.recompute (activation checkpointing): a block runs inside a custom autograd Function whose
//    forward keeps only the block input; its backward re-runs the block with a graph, under the autocast
//    state the forward had (autocast is thread-local and backward may run on the engine's device thread),
//    and differentiates it with torch::autograd::grad. The block's parameters are explicit inputs of the
//    Function, so their gradients reach the leaves through the outer graph (accumulation hooks and
//    data-parallel gradient sync see them as usual). Used only when a graph is being recorded and no
//    decode state is carried.
//  * The SSD goes through the dispatching entries ops::ssd / ops::ssd_decode (subq/ops/ssd.h): the CUDA
//    kernels when SUBQ_OPS_IMPL allows and they support the call (CUDA, bf16/fp16, head_dim a multiple of 64,
//    d_state 64 or 128; chunk 64 inside the kernel, mathematically the same result), otherwise the
//    chunkwise reference with model.mamba2.chunk_size and ssd_step. The head-first views above have a
//    contiguous last dimension, which the kernels read in place.
//  * Decoding: a t > 1 step (prompt prefill or a chunk after it) runs the chunkwise op from the carried SSD
//    state and conv cache and keeps their final values; t == 1 runs short_conv_step + the SSD step. The
//    state is fp32 whatever the autocast dtype (the ops' state dtype).
#include "subq/models/mamba2.h"

#include <cmath>
#include <optional>

#include <ATen/autocast_mode.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/ops/short_conv.h"
#include "subq/ops/ssd.h"

namespace subq::models {

namespace F = torch::nn::functional;

Mamba2Dims mamba2_dims(const ModelConfig& c) {
  const auto& m = c.mamba2;
  Mamba2Dims d{};
  d.d_model = c.d_model;
  d.d_inner = m.expand * c.d_model;
  if (d.d_inner % m.head_dim != 0)
    throw ConfigError(str("model.mamba2.head_dim = ", m.head_dim, " does not divide the inner width model.mamba2.expand * ",
                          "model.d_model = ", d.d_inner, "; choose a head_dim that divides it (e.g. 64)"));
  d.heads = d.d_inner / m.head_dim;
  d.head_dim = m.head_dim;
  if (d.heads % m.n_groups != 0)
    throw ConfigError(str("model.mamba2.n_groups = ", m.n_groups, " does not divide the number of heads (", d.heads,
                          " = expand * d_model / head_dim); choose n_groups dividing it (e.g. 1)"));
  d.groups = m.n_groups;
  d.d_state = m.d_state;
  d.conv_kernel = m.conv_kernel;
  d.conv_dim = d.d_inner + 2 * d.groups * d.d_state;
  d.in_proj_dim = d.d_inner + d.conv_dim + d.heads;
  return d;
}

int64_t mamba2_param_count(const ModelConfig& c) {
  const Mamba2Dims d = mamba2_dims(c);
  const int64_t per_layer = d.d_model                       // norm
                            + d.d_model * d.in_proj_dim     // in_proj
                            + d.conv_dim * (d.conv_kernel + 1)  // conv1d weight + bias
                            + 3 * d.heads                   // dt_bias, A_log, D
                            + d.d_inner                     // gated norm
                            + d.d_inner * d.d_model;        // out_proj
  return c.vocab_size * c.d_model * (c.tie_embeddings ? 1 : 2) + c.n_layers * per_layer + c.d_model;
}

// ----------------------------------------------------------------------------------------- GatedRMSNorm
GatedRMSNormImpl::GatedRMSNormImpl(int64_t dim, int64_t groups, double eps) : groups_(groups), eps_(eps) {
  SUBQ_CHECK(groups >= 1 && dim % groups == 0, "gated norm width ", dim, " is not a multiple of ", groups, " groups");
  weight = register_parameter("weight", torch::ones({dim}));
}

namespace {

// y * SiLU(z), RMS-normalised per group, in the compute dtype; r = 1 / rms per group ([..., G, 1]).
struct GatedNormParts {
  torch::Tensor n, r;
};
GatedNormParts gated_norm_parts(const torch::Tensor& y, const torch::Tensor& z, int64_t groups, double eps,
                                torch::ScalarType ct, const torch::Tensor& r_given = {}) {
  torch::Tensor h = y.to(ct) * torch::silu(z.to(ct));
  auto sizes = h.sizes().vec();
  const int64_t dim = sizes.back();
  sizes.back() = groups;
  sizes.push_back(dim / groups);
  torch::Tensor hg = h.view(sizes);
  torch::Tensor r = r_given.defined() ? r_given : torch::rsqrt(hg.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return {hg * r, r};
}

// The gated norm with a hand-written backward that keeps only y, z and the per-group 1/rms (autograd would
// keep four fp32 copies of the [B, T, d_inner] activations); h and n are recomputed in backward.
// Gradients, with n = h r, h = y s(z) z, w the weight and g the output gradient:
//   dw = sum g n~ (n~ = n rounded to y's dtype, as the forward multiplied it), gn = g w,
//   dh = r (gn - n mean_group(gn n)), dy = dh SiLU(z), dz = dh y sigma(z) (1 + z (1 - sigma(z))).
struct GatedRMSNormFn : torch::autograd::Function<GatedRMSNormFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& y, const torch::Tensor& z,
                               const torch::Tensor& weight, int64_t groups, double eps) {
    const auto ct = y.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    GatedNormParts p = gated_norm_parts(y, z, groups, eps, ct);
    ctx->save_for_backward({y, z.contiguous(), weight, p.r});
    ctx->saved_data["groups"] = groups;
    return weight * p.n.view(y.sizes()).to(y.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &y = saved[0], &z = saved[1], &w = saved[2], &r = saved[3];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const auto ct = r.scalar_type();
    GatedNormParts p = gated_norm_parts(y, z, groups, 0.0, ct, r);
    const torch::Tensor g = grad_out[0].to(ct);
    const auto gsizes = p.n.sizes();
    torch::Tensor dw;
    if (w.requires_grad()) {
      torch::Tensor nt = p.n.view(y.sizes()).to(y.scalar_type()).to(ct);
      dw = (g * nt).reshape({-1, w.size(0)}).sum(0).to(w.scalar_type());
    }
    torch::Tensor gn = (g * w.to(ct)).view(gsizes);
    torch::Tensor dh = (r * (gn - p.n * (gn * p.n).mean(-1, /*keepdim=*/true))).view(y.sizes());
    torch::Tensor zc = z.to(ct), sig = torch::sigmoid(zc);
    torch::Tensor dy = (dh * (zc * sig)).to(y.scalar_type());
    torch::Tensor dz = (dh * y.to(ct) * sig * (1.0 + zc * (1.0 - sig))).to(z.scalar_type());
    return {dy, dz, dw, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor GatedRMSNormImpl::forward(const torch::Tensor& x, const torch::Tensor& z) {
  if (torch::GradMode::is_enabled() && (x.requires_grad() || z.requires_grad() || weight.requires_grad()))
    return GatedRMSNormFn::apply(x, z, weight, groups_, eps_);
  // no graph (evaluation, decoding): the same arithmetic without saving anything
  const auto ct = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  return weight * gated_norm_parts(x, z, groups_, eps_, ct).n.view(x.sizes()).to(x.scalar_type());
}

// ------------------------------------------------------------------------------------------------ Mixer
Mamba2MixerImpl::Mamba2MixerImpl(const ModelConfig& cfg) : d_(mamba2_dims(cfg)), chunk_size_(cfg.mamba2.chunk_size) {
  const auto& m = cfg.mamba2;
  in_proj = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(d_.d_model, d_.in_proj_dim).bias(false)));
  conv1d = register_module("conv1d", torch::nn::Conv1d(torch::nn::Conv1dOptions(d_.conv_dim, d_.conv_dim, d_.conv_kernel)
                                                            .groups(d_.conv_dim)
                                                            .bias(true)));
  dt_bias = register_parameter("dt_bias", torch::empty({d_.heads}));
  A_log = register_parameter("A_log", torch::empty({d_.heads}));
  D = register_parameter("D", torch::ones({d_.heads}));
  norm = register_module("norm", GatedRMSNorm(d_.d_inner, d_.groups, cfg.norm_eps));
  out_proj = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(d_.d_inner, d_.d_model).bias(false)));

  torch::NoGradGuard ng;
  // dt log-uniform in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt) = dt + log(-expm1(-dt)).
  auto u = torch::rand({d_.heads}, torch::kFloat64);
  auto dt = torch::exp(u * (std::log(m.dt_max) - std::log(m.dt_min)) + std::log(m.dt_min)).clamp_min(m.dt_init_floor);
  dt_bias.copy_(dt + torch::log(-torch::expm1(-dt)));
  A_log.copy_(torch::log(torch::empty({d_.heads}, torch::kFloat64).uniform_(m.a_init_min, m.a_init_max)));
}

torch::Tensor Mamba2MixerImpl::forward(const torch::Tensor& x, const torch::Tensor& reset, Mamba2LayerState* state) {
  const int64_t bs = x.size(0), T = x.size(1);
  const int64_t H = d_.heads, P = d_.head_dim, G = d_.groups, N = d_.d_state, Di = d_.d_inner;
  const bool single = state != nullptr && T == 1;

  torch::Tensor zxbcdt = in_proj(x);  // [B, T, Di + conv_dim + H]
  torch::Tensor z = zxbcdt.narrow(-1, 0, Di);
  torch::Tensor xBC = zxbcdt.narrow(-1, Di, d_.conv_dim);
  torch::Tensor dt = zxbcdt.narrow(-1, Di + d_.conv_dim, H);
  const torch::Tensor w = conv1d->weight.squeeze(1);  // [conv_dim, K] view

  if (single) {
    auto c = ops::short_conv_step(xBC.select(1, 0), w, conv1d->bias, /*silu=*/true, state->conv);
    state->conv = c.cache;
    xBC = c.y.unsqueeze(1);
  } else {
    auto c = ops::short_conv(xBC, w, conv1d->bias, /*silu=*/true, state ? state->conv : torch::Tensor(), reset);
    if (state) state->conv = c.cache;
    xBC = c.y;
  }

  // Head-first views for the op (no copies here).
  torch::Tensor xs = xBC.narrow(-1, 0, Di).view({bs, T, H, P});
  torch::Tensor Bm = xBC.narrow(-1, Di, G * N).view({bs, T, G, N});
  torch::Tensor Cm = xBC.narrow(-1, Di + G * N, G * N).view({bs, T, G, N});
  torch::Tensor delta = F::softplus(dt.to(torch::kFloat32) + dt_bias.to(torch::kFloat32));  // [B, T, H]
  torch::Tensor A = -torch::exp(A_log.to(torch::kFloat32));

  torch::Tensor y;  // [B, T, H, P]
  if (single) {
    auto r = ops::ssd_decode(xs.select(1, 0), delta.select(1, 0), A, Bm.select(1, 0), Cm.select(1, 0), D, state->ssm);
    state->ssm = r.final_state;
    y = r.y.unsqueeze(1);
  } else {
    auto r = ops::ssd(xs.permute({0, 2, 1, 3}), delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), D,
                      state ? state->ssm : torch::Tensor(), reset, chunk_size_);
    if (state) state->ssm = r.final_state;
    y = r.y.transpose(1, 2);
  }
  y = norm(y.reshape({bs, T, Di}), z);
  return out_proj(y);
}

// ------------------------------------------------------------------------------------------------ Block
Mamba2BlockImpl::Mamba2BlockImpl(const ModelConfig& cfg) {
  norm = register_module("norm", RMSNorm(cfg.d_model, cfg.norm_eps));
  mixer = register_module("mixer", Mamba2Mixer(cfg));
}

torch::Tensor Mamba2BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& reset, Mamba2LayerState* state) {
  return x + mixer(norm(x), reset, state);
}

// ---------------------------------------------------------------------------------------- Recompute
namespace {

// Autocast disabled for one device type within a scope (restored after).
struct AutocastOff {
  explicit AutocastOff(c10::DeviceType t) : type(t), prev(at::autocast::is_autocast_enabled(t)) {
    at::autocast::set_autocast_enabled(type, false);
  }
  ~AutocastOff() { at::autocast::set_autocast_enabled(type, prev); }
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;
  c10::DeviceType type;
  bool prev;
};

struct BlockRecompute : torch::autograd::Function<BlockRecompute> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, Mamba2BlockImpl* block,
                               const std::optional<torch::Tensor>& reset, torch::TensorList params) {
    (void)params;  // inputs only so that autograd routes their gradients; the block reads its own members
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["reset"] = reset.has_value() ? c10::IValue(*reset) : c10::IValue();
    const auto dev = x.device().type();
    const bool ac = at::autocast::is_autocast_enabled(dev);
    ctx->saved_data["autocast"] = ac;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(at::autocast::get_autocast_dtype(dev));
    return block->forward(x, reset.has_value() ? *reset : torch::Tensor());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* block = reinterpret_cast<Mamba2BlockImpl*>(ctx->saved_data["block"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    const c10::IValue& r = ctx->saved_data["reset"];
    const torch::Tensor reset = r.isTensor() ? r.toTensor() : torch::Tensor();
    std::vector<torch::Tensor> params = block->parameters();
    std::vector<torch::Tensor> inputs{x.detach().requires_grad_(true)};
    inputs.insert(inputs.end(), params.begin(), params.end());
    torch::autograd::variable_list grads;
    {
      torch::AutoGradMode grad_on(true);
      // The forward's autocast state, entered the way torch.utils.checkpoint does it: a nested autocast
      // region (its weight-cast cache is cleared when the outermost region ends, so no bf16 copy of a weight
      // outlives this optimizer step), or autocast off when the forward had it off.
      std::unique_ptr<AutocastGuard> ac;
      std::unique_ptr<AutocastOff> off;
      if (ctx->saved_data["autocast"].toBool())
        ac = std::make_unique<AutocastGuard>(x.device(),
                                             static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()));
      else
        off = std::make_unique<AutocastOff>(x.device().type());
      torch::Tensor y = block->forward(inputs[0], reset);
      grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    }
    // x, block (not a tensor), reset (never differentiated), then one gradient per parameter
    torch::autograd::variable_list out{grads[0], torch::Tensor(), torch::Tensor()};
    out.insert(out.end(), grads.begin() + 1, grads.end());
    return out;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------- Mamba2
Mamba2::Mamba2(const ModelConfig& cfg) : LanguageModel(cfg), d_(mamba2_dims(cfg)) {
  if (cfg.vocab_size <= 0)
    throw ConfigError("model.vocab_size is 0 (\"take it from the tokenizer\") but no tokenizer resolved it; set "
                      "model.vocab_size or data.tokenizer");
  embeddings = register_module("embeddings", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    blocks_.emplace_back(cfg);
    layers->push_back(blocks_.back());
  }
  norm_f = register_module("norm_f", RMSNorm(cfg.d_model, cfg.norm_eps));
  if (!cfg.tie_embeddings)
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.vocab_size).bias(false)));

  torch::NoGradGuard ng;
  torch::nn::init::normal_(embeddings->weight, 0.0, cfg.init_std);
  const double rescale = 1.0 / std::sqrt(static_cast<double>(cfg.n_layers));
  for (auto& b : blocks_) b->mixer->out_proj->weight.mul_(rescale);  // default init / sqrt(n_layers)
}

torch::Tensor Mamba2::run(const torch::Tensor& tokens, const torch::Tensor& reset, Mamba2DecodeState* cache) {
  SUBQ_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  torch::Tensor h = embeddings(tokens);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (cache) {
      Mamba2LayerState st{cache->conv[i], cache->ssm[i]};
      h = blocks_[i]->forward(h, reset, &st);
      cache->conv[i] = st.conv;
      cache->ssm[i] = st.ssm;
    } else if (cfg_.mamba2.recompute && torch::GradMode::is_enabled()) {
      const std::vector<torch::Tensor> params = blocks_[i]->parameters();
      h = BlockRecompute::apply(h, blocks_[i].get(),
                                reset.defined() ? std::optional<torch::Tensor>(reset) : std::nullopt,
                                torch::TensorList(params));
    } else {
      h = blocks_[i]->forward(h, reset);
    }
  }
  h = norm_f(h);
  torch::Tensor logits = lm_head ? lm_head(h) : F::linear(h, embeddings->weight);
  if (cfg_.logit_softcap > 0) logits = cfg_.logit_softcap * torch::tanh(logits / cfg_.logit_softcap);
  return logits;
}

torch::Tensor Mamba2::forward(const torch::Tensor& tokens, const torch::Tensor& doc_start) {
  if (doc_start.defined())
    SUBQ_CHECK(doc_start.sizes() == tokens.sizes(), "doc_start ", doc_start.sizes(), " must match tokens ",
               tokens.sizes());
  return run(tokens, doc_start.defined() ? doc_start.to(torch::kBool) : doc_start, nullptr);
}

std::unique_ptr<DecodeState> Mamba2::new_decode_state(int64_t batch, int64_t max_len) {
  if (batch < 1) throw InputError(str("decode batch must be >= 1, got ", batch));
  if (max_len < 1) throw InputError(str("decode length must be >= 1, got ", max_len));
  auto s = std::make_unique<Mamba2DecodeState>();
  s->batch = batch;
  s->max_len = max_len;
  s->conv.resize(blocks_.size());
  s->ssm.resize(blocks_.size());
  return s;
}

torch::Tensor Mamba2::step(const torch::Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<Mamba2DecodeState*>(&state);
  SUBQ_CHECK(s != nullptr, "decode state was not created by this Mamba2 model");
  SUBQ_CHECK(tokens.dim() == 2 && tokens.size(0) == s->batch, "step tokens must be [", s->batch, ", t], got ",
             tokens.sizes());
  const int64_t t = tokens.size(1);
  SUBQ_CHECK(t >= 1, "step needs at least one token");
  if (s->pos + t > s->max_len)
    throw InputError(str("decode state was created for ", s->max_len, " tokens; ", s->pos, " used and ", t,
                         " more requested; create the decode state with a larger max_len"));
  torch::NoGradGuard ng;
  auto logits = run(tokens, torch::Tensor(), s);
  s->pos += t;
  return logits;
}

int64_t Mamba2::matmul_params() const {
  return cfg_.n_layers * (d_.d_model * d_.in_proj_dim + d_.d_inner * d_.d_model) + cfg_.vocab_size * cfg_.d_model;
}

double Mamba2::ssd_flops_per_token(int64_t seq_len) const {
  const double Q = static_cast<double>(std::max<int64_t>(1, std::min(cfg_.mamba2.chunk_size, seq_len)));
  const double H = static_cast<double>(d_.heads), P = static_cast<double>(d_.head_dim),
               G = static_cast<double>(d_.groups), N = static_cast<double>(d_.d_state);
  const double fwd = 2.0 * Q * G * N + 2.0 * Q * H * P + 4.0 * H * P * N;
  return 3.0 * fwd * static_cast<double>(cfg_.n_layers);
}

double Mamba2::flops_per_token(int64_t seq_len) const {
  return 6.0 * static_cast<double>(matmul_params()) + ssd_flops_per_token(seq_len);
}

SUBQ_REGISTER_MODEL(ModelEntry{"mamba2",
                               "Mamba-2 (SSD mixer blocks, gated RMSNorm, no MLP; HF Mamba2ForCausalLM names)",
                               [](const ModelConfig& c) -> std::shared_ptr<LanguageModel> {
                                 return std::make_shared<Mamba2>(c);
                               }});

}  // namespace subq::models
