// transformer.cpp — the Llama-style Transformer baseline (see transformer.h for the architecture and
// the parameter names).
//
// Decisions:
//  * Residual stream in fp32: the embedding output and the block outputs are summed in fp32 even under
//    bf16 autocast (linear outputs are bf16 and promote on the add), so long residual sums do not lose
//    precision; matmuls run in the autocast dtype.
//  * RoPE follows Hugging Face exactly: inv_freq computed in fp32 from theta^(2i/d), cos/sin cast to the
//    activation dtype before rotating, rotate_half(x) = cat(-x[d/2:], x[:d/2]).
//  * Grouped-query attention expands K/V to all query heads (expand + reshape, the repeat_kv of HF)
//    instead of SDPA's enable_gqa, so every SDPA backend (flash, cuDNN, efficient, math) stays eligible.
//  * Decoding keeps a preallocated KV cache per layer. The prompt prefill uses is_causal; a single new
//    token attends to the whole cache without a mask; a multi-token step after a prefix (rare: chunked
//    prefill) uses an explicit bottom-right-aligned causal mask, because SDPA's is_causal aligns the mask
//    top-left for non-square shapes.
#include "subq/models/transformer.h"

#include <cmath>
#include <optional>

#include <ATen/autocast_mode.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/ops/rms_norm.h"

namespace subq::models {

namespace F = torch::nn::functional;

// ---------------------------------------------------------------------------------------------- RMSNorm
RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // weight * (x / rms(x) in fp32, cast back to x's dtype): the fused kernel on CUDA, LibTorch ops elsewhere
  return ops::rms_norm(x, weight, eps_);
}

// ------------------------------------------------------------------------------------------------- RoPE
RopeTables make_rope_tables(int64_t head_dim, int64_t max_len, double theta, const torch::Device& device) {
  SUBQ_CHECK(head_dim % 2 == 0, "RoPE needs an even head dim, got ", head_dim);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto exponent = torch::arange(0, head_dim, 2, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32) /
                  static_cast<float>(head_dim);
  auto inv_freq = 1.0 / torch::pow(torch::tensor(theta, f32), exponent);  // [hd/2]
  auto pos = torch::arange(max_len, f32);
  auto freqs = torch::outer(pos, inv_freq);                                 // [T, hd/2]
  auto emb = torch::cat({freqs, freqs}, -1);                                // [T, hd]
  return {emb.cos().to(device), emb.sin().to(device)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto c = cos.to(x.scalar_type());
  auto s = sin.to(x.scalar_type());
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * c + rotated * s;
}

// -------------------------------------------------------------------------------------------- Attention
namespace {
torch::nn::Linear linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// [B, Hkv, T, hd] -> [B, Hkv * rep, T, hd], each KV head repeated for its group of query heads.
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const auto B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  return x.unsqueeze(2).expand({B, H, rep, T, D}).reshape({B, H * rep, T, D});
}
}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& cfg)
    : n_heads_(cfg.n_heads), n_kv_heads_(cfg.kv_heads()), head_dim_(cfg.head_dim()) {
  const int64_t d = cfg.d_model;
  q_proj = register_module("q_proj", linear(d, n_heads_ * head_dim_));
  k_proj = register_module("k_proj", linear(d, n_kv_heads_ * head_dim_));
  v_proj = register_module("v_proj", linear(d, n_kv_heads_ * head_dim_));
  o_proj = register_module("o_proj", linear(n_heads_ * head_dim_, d));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     torch::Tensor* k_cache, torch::Tensor* v_cache, int64_t pos) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj(x).view({B, T, n_heads_, head_dim_}).transpose(1, 2);
  auto k = k_proj(x).view({B, T, n_kv_heads_, head_dim_}).transpose(1, 2);
  auto v = v_proj(x).view({B, T, n_kv_heads_, head_dim_}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);

  bool is_causal = T > 1;
  std::optional<torch::Tensor> mask;
  if (k_cache) {
    SUBQ_CHECK(v_cache && k_cache->defined() && v_cache->defined());
    k_cache->narrow(2, pos, T).copy_(k);
    v_cache->narrow(2, pos, T).copy_(v);
    k = k_cache->narrow(2, 0, pos + T);
    v = v_cache->narrow(2, 0, pos + T);
    if (pos > 0) {
      is_causal = false;
      if (T > 1) {
        // query i sits at absolute position pos + i and sees keys 0..pos + i
        auto qi = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(x.device())).unsqueeze(1) + pos;
        auto kj = torch::arange(pos + T, torch::TensorOptions().dtype(torch::kInt64).device(x.device())).unsqueeze(0);
        mask = kj <= qi;
      }
    }
  }
  const int64_t rep = n_heads_ / n_kv_heads_;
  auto y = at::scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), mask, 0.0, is_causal);
  y = y.transpose(1, 2).reshape({B, T, n_heads_ * head_dim_});
  return o_proj(y);
}

// ----------------------------------------------------------------------------------------------- SwiGLU
SwiGLUImpl::SwiGLUImpl(int64_t d_model, int64_t d_ff) {
  gate_proj = register_module("gate_proj", linear(d_model, d_ff));
  up_proj = register_module("up_proj", linear(d_model, d_ff));
  down_proj = register_module("down_proj", linear(d_ff, d_model));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) {
  return down_proj(F::silu(gate_proj(x)) * up_proj(x));
}

// ------------------------------------------------------------------------------------------------ Block
TransformerBlockImpl::TransformerBlockImpl(const ModelConfig& cfg) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.d_model, cfg.norm_eps));
  self_attn = register_module("self_attn", Attention(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(cfg.d_model, cfg.norm_eps));
  mlp = register_module("mlp", SwiGLU(cfg.d_model, cfg.ffn_dim()));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                            torch::Tensor* k_cache, torch::Tensor* v_cache, int64_t pos) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, k_cache, v_cache, pos);
  return h + mlp(post_attention_layernorm(h));
}

// ------------------------------------------------------------------------------------------ Transformer
Transformer::Transformer(const ModelConfig& cfg) : LanguageModel(cfg) {
  if (cfg.vocab_size <= 0)
    throw ConfigError("model.vocab_size is 0 (\"take it from the tokenizer\") but no tokenizer resolved it; set "
                      "model.vocab_size or data.tokenizer");
  if (cfg.head_dim() % 2 != 0)
    throw ConfigError(str("model: head dim d_model/n_heads = ", cfg.head_dim(), " must be even for RoPE; change ",
                          "model.d_model or model.n_heads"));
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    blocks_.emplace_back(cfg);
    layers->push_back(blocks_.back());
  }
  norm = register_module("norm", RMSNorm(cfg.d_model, cfg.norm_eps));
  if (!cfg.tie_embeddings) lm_head = register_module("lm_head", linear(cfg.d_model, cfg.vocab_size));

  torch::NoGradGuard ng;
  const double init_std = cfg.init_std;
  const double out_std = init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers));
  torch::nn::init::normal_(embed_tokens->weight, 0.0, init_std);
  for (auto& b : blocks_) {
    for (auto* l : {&b->self_attn->q_proj, &b->self_attn->k_proj, &b->self_attn->v_proj, &b->mlp->gate_proj,
                    &b->mlp->up_proj})
      torch::nn::init::normal_((*l)->weight, 0.0, init_std);
    torch::nn::init::normal_(b->self_attn->o_proj->weight, 0.0, out_std);
    torch::nn::init::normal_(b->mlp->down_proj->weight, 0.0, out_std);
  }
  if (lm_head) torch::nn::init::normal_(lm_head->weight, 0.0, init_std);
  rope_ = make_rope_tables(cfg.head_dim(), cfg.max_seq_len, cfg.rope_theta, torch::kCPU);
}

const RopeTables& Transformer::rope_on(const torch::Device& device, int64_t needed) {
  if (needed > cfg_.max_seq_len)
    throw InputError(str("sequence of ", needed, " positions exceeds model.max_seq_len = ", cfg_.max_seq_len,
                         "; raise model.max_seq_len or shorten the input"));
  if (rope_.cos.device() != device) rope_ = {rope_.cos.to(device), rope_.sin.to(device)};
  return rope_;
}

torch::Tensor Transformer::run(const torch::Tensor& tokens, int64_t pos, TransformerDecodeState* cache) {
  SUBQ_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  const int64_t T = tokens.size(1);
  const auto& rope = rope_on(tokens.device(), pos + T);
  auto cos = rope.cos.narrow(0, pos, T);
  auto sin = rope.sin.narrow(0, pos, T);
  auto h = embed_tokens(tokens);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (cache) {
      auto& kc = cache->k[i];
      auto& vc = cache->v[i];
      if (!kc.defined()) {
        // the cache takes the dtype the projections produce (the autocast dtype when autocast is on)
        const auto dev_type = tokens.device().type();
        auto dtype = at::autocast::is_autocast_enabled(dev_type) ? at::autocast::get_autocast_dtype(dev_type)
                                                                 : embed_tokens->weight.scalar_type();
        auto opts = torch::TensorOptions().dtype(dtype).device(tokens.device());
        kc = torch::zeros({cache->batch, cfg_.kv_heads(), cache->max_len, cfg_.head_dim()}, opts);
        vc = torch::zeros({cache->batch, cfg_.kv_heads(), cache->max_len, cfg_.head_dim()}, opts);
      }
      h = blocks_[i]->forward(h, cos, sin, &kc, &vc, pos);
    } else {
      h = blocks_[i]->forward(h, cos, sin);
    }
  }
  h = norm(h);
  auto logits = lm_head ? lm_head(h) : F::linear(h, embed_tokens->weight);
  if (cfg_.logit_softcap > 0) logits = cfg_.logit_softcap * torch::tanh(logits / cfg_.logit_softcap);
  return logits;
}

torch::Tensor Transformer::forward(const torch::Tensor& tokens, const torch::Tensor& /*doc_start*/) {
  return run(tokens, 0, nullptr);
}

std::unique_ptr<DecodeState> Transformer::new_decode_state(int64_t batch, int64_t max_len) {
  if (batch < 1) throw InputError(str("decode batch must be >= 1, got ", batch));
  if (max_len < 1 || max_len > cfg_.max_seq_len)
    throw InputError(str("decode length ", max_len, " must be in [1, model.max_seq_len = ", cfg_.max_seq_len,
                         "]; shorten the prompt + new tokens or raise model.max_seq_len"));
  auto s = std::make_unique<TransformerDecodeState>();
  s->batch = batch;
  s->max_len = max_len;
  s->k.resize(blocks_.size());
  s->v.resize(blocks_.size());
  return s;
}

torch::Tensor Transformer::step(const torch::Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<TransformerDecodeState*>(&state);
  SUBQ_CHECK(s != nullptr, "decode state was not created by this Transformer");
  SUBQ_CHECK(tokens.dim() == 2 && tokens.size(0) == s->batch, "step tokens must be [", s->batch, ", t], got ",
             tokens.sizes());
  const int64_t t = tokens.size(1);
  if (s->pos + t > s->max_len)
    throw InputError(str("decode cache holds ", s->max_len, " tokens; ", s->pos, " used and ", t,
                         " more requested; create the decode state with a larger max_len"));
  torch::NoGradGuard ng;
  auto logits = run(tokens, s->pos, s);
  s->pos += t;
  return logits;
}

int64_t transformer_param_count(const ModelConfig& c) {
  const int64_t d = c.d_model, hd = c.head_dim();
  const int64_t per_layer = d * c.n_heads * hd * 2 + d * c.kv_heads() * hd * 2 + 3 * d * c.ffn_dim() + 2 * d;
  return c.vocab_size * d * (c.tie_embeddings ? 1 : 2) + c.n_layers * per_layer + d;
}

int64_t Transformer::matmul_params() const {
  const auto& c = cfg_;
  const int64_t d = c.d_model, hd = c.head_dim();
  const int64_t attn = d * c.n_heads * hd * 2 + d * c.kv_heads() * hd * 2;
  const int64_t mlp = 3 * d * c.ffn_dim();
  return c.n_layers * (attn + mlp) + c.vocab_size * d;
}

double Transformer::flops_per_token(int64_t seq_len) const {
  return 6.0 * static_cast<double>(matmul_params()) +
         12.0 * static_cast<double>(cfg_.n_layers) * static_cast<double>(seq_len) *
             static_cast<double>(cfg_.n_heads * cfg_.head_dim());
}

SUBQ_REGISTER_MODEL(ModelEntry{"transformer",
                               "Llama-style Transformer baseline (RMSNorm, RoPE, GQA, SwiGLU; HF Llama names)",
                               [](const ModelConfig& c) -> std::shared_ptr<LanguageModel> {
                                 return std::make_shared<Transformer>(c);
                               }});

}  // namespace subq::models
