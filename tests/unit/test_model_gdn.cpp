// test_model_gdn.cpp — the Gated DeltaNet model: flash-linear-attention parameter names, parameter count
// and FLOPs formula, fla's initialisation, causality, packed documents equal to separate runs, decoding
// (prefill + steps, split prefill) equal to the full forward, generation through the cache, a few
// optimizer steps, bf16 autocast, config refusals, and the Hugging Face export: config.json / tensor names,
// refusals, and — when Python flash-linear-attention is importable — that fla's GatedDeltaNetForCausalLM
// loads the folder strictly and reproduces subq's logits, loss and every gradient
// (scripts/check_hf_export.py; on a CPU through fla's naive reference op, see scripts/fla_cpu.py).
// Both beta ranges (allow_neg_eigval off/on) throughout.
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>
#include <sys/wait.h>

#include <ATen/autocast_mode.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/run_config.h"
#include "subq/core/safetensors.h"
#include "subq/eval/generate.h"
#include "subq/models/gdn.h"
#include "subq/models/hf_export.h"
#include "subq/models/model.h"
#include "subq_catch.h"
#include "hf_export_testing.h"
#include "test_support.h"

namespace fs = std::filesystem;
using subq::models::ModelConfig;
using torch::indexing::Slice;

namespace {
using subq::test::TempDir;

// Tiny models: more intra-op threads only add synchronisation (and thrash on a shared 2-core machine).
const bool kOneThread = [] {
  torch::set_num_threads(1);
  return true;
}();

ModelConfig tiny(bool neg = false, bool tied = false, bool conv = true) {
  ModelConfig c;
  c.arch = "gdn";
  c.vocab_size = 61;  // deliberately not a multiple of anything
  c.d_model = 40;
  c.n_layers = 2;
  c.n_heads = 3;
  c.d_ff = 72;
  c.norm_eps = 1e-6;
  c.tie_embeddings = tied;
  c.init_std = 0.1;  // larger than 0.02 so the recurrence matters to the logits
  c.gdn.head_dim = 12;
  c.gdn.expand_v = 1.5;  // value head dim 18
  c.gdn.allow_neg_eigval = neg;
  c.gdn.use_short_conv = conv;
  c.gdn.conv_kernel = 4;
  c.gdn.chunk_size = 8;  // several chunks in short tests, T not a multiple of it
  return c;
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

std::shared_ptr<subq::models::LanguageModel> make(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  return subq::models::create_model(c);
}



}  // namespace

TEST_CASE("gdn parameters carry flash-linear-attention's names", "[gdn]") {
  for (bool tied : {false, true}) {
    for (bool conv : {true, false}) {
      INFO("tied " << tied << " conv " << conv);
      auto m = make(tiny(false, tied, conv), 0);
      std::set<std::string> names;
      for (const auto& p : m->named_parameters()) names.insert(p.key());
      std::set<std::string> want{"embeddings.weight", "norm.weight"};
      if (!tied) want.insert("lm_head.weight");
      for (int i = 0; i < 2; ++i) {
        const std::string l = "layers." + std::to_string(i) + ".";
        for (const char* s : {"attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                              "attn.a_proj.weight", "attn.b_proj.weight", "attn.g_proj.weight", "attn.o_proj.weight",
                              "attn.A_log", "attn.dt_bias", "attn.o_norm.weight", "mlp_norm.weight",
                              "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
          want.insert(l + s);
        if (conv)
          for (const char* s : {"attn.q_conv1d.weight", "attn.k_conv1d.weight", "attn.v_conv1d.weight"})
            want.insert(l + s);
      }
      CHECK(names == want);
      CHECK(m->named_buffers().size() == 0);
      auto p = m->named_parameters();
      CHECK(p["layers.1.attn.q_proj.weight"].sizes() == std::vector<int64_t>{36, 40});
      CHECK(p["layers.1.attn.v_proj.weight"].sizes() == std::vector<int64_t>{54, 40});
      CHECK(p["layers.1.attn.a_proj.weight"].sizes() == std::vector<int64_t>{3, 40});
      CHECK(p["layers.1.attn.o_norm.weight"].sizes() == std::vector<int64_t>{18});
      CHECK(p["layers.1.attn.o_proj.weight"].sizes() == std::vector<int64_t>{40, 54});
      if (conv) CHECK(p["layers.1.attn.v_conv1d.weight"].sizes() == std::vector<int64_t>{54, 1, 4});
    }
  }
}

TEST_CASE("gdn parameter count and FLOPs formula", "[gdn]") {
  const auto c = tiny();
  auto m = make(c, 0);
  const int64_t d = 40, H = 3, dk = 12, dv = 18, ff = 72, V = 61, L = 2, K = 4;
  const int64_t proj = d * H * dk * 2 + d * H * dv + 2 * d * H + d * H * dv + H * dv * d;
  const int64_t per_layer = proj + (2 * H * dk + H * dv) * K + 2 * H + dv + 3 * d * ff + 2 * d;
  const int64_t expect = 2 * V * d + L * per_layer + d;
  CHECK(m->num_params() == expect);
  CHECK(subq::models::gdn_param_count(c) == expect);
  CHECK(make(tiny(true, true), 0)->num_params() == expect - V * d);
  CHECK(subq::models::gdn_param_count(tiny(true, true)) == expect - V * d);
  CHECK(make(tiny(false, false, false), 0)->num_params() == expect - L * (2 * H * dk + H * dv) * K);
  CHECK(subq::models::gdn_param_count(tiny(false, false, false)) == expect - L * (2 * H * dk + H * dv) * K);

  const int64_t matmul = L * (proj + 3 * d * ff) + V * d;
  CHECK(subq::models::gdn_matmul_params(c) == matmul);
  // chunk 8 for T >= 8; C = T below
  const double rec8 = 3.0 * L * H * (6.0 * dk * dv + 8.0 * (5.0 * dk + 3.0 * dv));
  CHECK(m->flops_per_token(100) == Approx(6.0 * matmul + rec8));
  const double rec5 = 3.0 * L * H * (6.0 * dk * dv + 5.0 * (5.0 * dk + 3.0 * dv));
  CHECK(m->flops_per_token(5) == Approx(6.0 * matmul + rec5));
  CHECK(make(tiny(false, true), 0)->flops_per_token(100) == Approx(m->flops_per_token(100)));  // tied head still costs V*d
}

TEST_CASE("gdn init follows flash-linear-attention", "[gdn]") {
  ModelConfig c;
  c.arch = "gdn";
  c.vocab_size = 512;
  c.d_model = 128;
  c.n_layers = 3;
  c.n_heads = 400;  // many heads, for the statistics of A_log and dt_bias
  c.d_ff = 256;
  c.init_std = 0.02;
  c.gdn.head_dim = 2;
  c.gdn.expand_v = 2.0;
  auto m = make(c, 1);
  auto params = m->named_parameters();
  auto stdev = [&](const std::string& n) { return params[n].std().item<double>(); };
  for (const char* n : {"embeddings.weight", "lm_head.weight", "layers.1.attn.q_proj.weight", "layers.1.attn.v_proj.weight",
                        "layers.1.attn.g_proj.weight", "layers.1.attn.a_proj.weight", "layers.1.attn.b_proj.weight",
                        "layers.2.attn.o_proj.weight", "layers.2.mlp.down_proj.weight", "layers.0.mlp.up_proj.weight",
                        "layers.0.attn.v_conv1d.weight"}) {
    INFO(n);
    CHECK(stdev(n) == Approx(0.02).epsilon(0.05));  // no prenorm residual rescale (fla's default)
    CHECK(std::fabs(params[n].mean().item<double>()) < 2e-3);
  }
  for (const char* n : {"norm.weight", "layers.2.attn_norm.weight", "layers.2.mlp_norm.weight", "layers.2.attn.o_norm.weight"})
    CHECK(torch::equal(params[n], torch::ones_like(params[n])));
  // A = exp(A_log) ~ U(0, 16): range and mean of 1200 draws
  auto A = torch::cat({params["layers.0.attn.A_log"], params["layers.1.attn.A_log"], params["layers.2.attn.A_log"]}).exp();
  CHECK(A.min().item<double>() > 0);
  CHECK(A.max().item<double>() <= 16.0);
  CHECK(A.max().item<double>() > 15.0);
  CHECK(A.min().item<double>() < 1.0);
  CHECK(A.mean().item<double>() == Approx(8.0).epsilon(0.05));
  // softplus(dt_bias) = dt, log-uniform in [1e-3, 0.1]: log dt uniform between log 1e-3 and log 0.1
  auto dt = torch::softplus(torch::cat({params["layers.0.attn.dt_bias"], params["layers.1.attn.dt_bias"],
                                        params["layers.2.attn.dt_bias"]}).to(torch::kFloat64));
  CHECK(dt.min().item<double>() >= 1e-3 * (1 - 1e-4));
  CHECK(dt.max().item<double>() <= 0.1 * (1 + 1e-4));
  CHECK(dt.log().mean().item<double>() == Approx(0.5 * (std::log(1e-3) + std::log(0.1))).epsilon(0.03));
}

TEST_CASE("gdn is causal and shapes are right", "[gdn]") {
  auto m = make(tiny(), 2);
  auto tok = torch::randint(0, 61, {2, 21}, torch::kInt64);
  torch::NoGradGuard ng;
  auto a = m->forward(tok);
  CHECK(a.sizes() == std::vector<int64_t>{2, 21, 61});
  CHECK(a.scalar_type() == torch::kFloat32);
  CHECK(torch::isfinite(a).all().item<bool>());
  auto tok2 = tok.clone();
  tok2.index_put_({Slice(), 13}, (tok.index({Slice(), 13}) + 1) % 61);
  auto b = m->forward(tok2);
  CHECK(torch::equal(a.narrow(1, 0, 13), b.narrow(1, 0, 13)));
  CHECK(!torch::allclose(a.narrow(1, 13, 1), b.narrow(1, 13, 1)));
  CHECK(!torch::allclose(a.narrow(1, 20, 1), b.narrow(1, 20, 1)));  // the recurrence carries it on
  CHECK_THROWS_AS(m->forward(tok, torch::ones({2, 21}, torch::kInt64)), subq::InputError);
  CHECK_THROWS_AS(m->forward(tok, torch::ones({2, 20}, torch::kBool)), subq::InputError);
}

TEST_CASE("gdn packed documents equal the documents run separately", "[gdn]") {
  for (bool neg : {false, true}) {
    INFO("allow_neg_eigval " << neg);
    auto m = make(tiny(neg), 3);
    // row 0: documents of 11, 2 and 9 tokens; row 1: one document of 22 tokens
    auto tok = torch::randint(0, 61, {2, 22}, torch::kInt64);
    auto doc = torch::zeros({2, 22}, torch::kBool);
    doc.index_put_({0, 0}, true);
    doc.index_put_({0, 11}, true);
    doc.index_put_({0, 13}, true);
    doc.index_put_({1, 0}, true);
    torch::NoGradGuard ng;
    auto packed = m->forward(tok, doc);
    auto whole1 = m->forward(tok.narrow(0, 1, 1));
    CHECK(rel_err(packed.narrow(0, 1, 1), whole1) < 1e-6);
    for (auto [s, n] : {std::pair<int64_t, int64_t>{0, 11}, {11, 2}, {13, 9}}) {
      INFO("document at " << s << " length " << n);
      auto alone = m->forward(tok.index({Slice(0, 1), Slice(s, s + n)}));
      CHECK(rel_err(packed.index({Slice(0, 1), Slice(s, s + n)}), alone) < 1e-5);
    }
    // without the reset mask the later documents do see the earlier ones
    auto unpacked = m->forward(tok.narrow(0, 0, 1));
    CHECK(rel_err(unpacked.index({Slice(), Slice(13, 22)}), packed.index({Slice(0, 1), Slice(13, 22)})) > 1e-3);
    // changing document 1 changes nothing in documents 2 and 3
    auto tok2 = tok.clone();
    tok2.index_put_({0, Slice(0, 11)}, (tok.index({0, Slice(0, 11)}) + 7) % 61);
    auto packed2 = m->forward(tok2, doc);
    CHECK(torch::allclose(packed2.index({0, Slice(11, 22)}), packed.index({0, Slice(11, 22)}), 1e-6, 1e-6));
  }
}

TEST_CASE("gdn decoding: prefill + steps and split prefills equal the full forward", "[gdn]") {
  for (int variant = 0; variant < 3; ++variant) {
    const bool neg = variant == 1, conv = variant != 2;
    INFO("allow_neg_eigval " << neg << " short conv " << conv);
    auto m = make(tiny(neg, false, conv), 10 + variant);
    const int64_t B = 3, T = 27;
    auto tok = torch::randint(0, 61, {B, T}, torch::kInt64);
    torch::NoGradGuard ng;
    auto full = m->forward(tok);
    // prefill 10 (more than a chunk), then single tokens
    auto st = m->new_decode_state(B, T);
    std::vector<torch::Tensor> parts{m->step(tok.narrow(1, 0, 10), *st)};
    for (int64_t t = 10; t < T; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
    CHECK(st->pos == T);
    auto inc = torch::cat(parts, 1);
    REQUIRE(inc.sizes() == full.sizes());
    CHECK(rel_err(inc, full) < 1e-5);
    CHECK(torch::isfinite(inc).all().item<bool>());
    CHECK_THROWS_AS(m->step(tok.narrow(1, 0, 1), *st), subq::InputError);  // the state's length is used up

    // a prompt in pieces (2, then 3 = below the conv width, then 12 across chunks) equals one prefill,
    // and decoding continues identically from both
    auto one = m->new_decode_state(B, T);
    auto a = m->step(tok.narrow(1, 0, 17), *one);
    auto split = m->new_decode_state(B, T);
    auto b = torch::cat({m->step(tok.narrow(1, 0, 2), *split), m->step(tok.narrow(1, 2, 3), *split),
                         m->step(tok.narrow(1, 5, 12), *split)},
                        1);
    CHECK(rel_err(b, a) < 1e-5);
    CHECK(rel_err(a, full.narrow(1, 0, 17)) < 1e-5);
    auto* s1 = dynamic_cast<subq::models::GdnDecodeState*>(one.get());
    auto* s2 = dynamic_cast<subq::models::GdnDecodeState*>(split.get());
    REQUIRE(s1);
    REQUIRE(s2);
    for (size_t l = 0; l < s1->layers.size(); ++l) {
      CHECK(rel_err(s2->layers[l].state, s1->layers[l].state) < 1e-5);
      CHECK(s1->layers[l].state.sizes() == std::vector<int64_t>{B, 3, 18, 12});
      CHECK(s1->layers[l].state.scalar_type() == torch::kFloat32);
      if (conv) CHECK(rel_err(s2->layers[l].conv_v, s1->layers[l].conv_v) < 1e-6);
    }
    auto next1 = m->step(tok.narrow(1, 17, 1), *one);
    auto next2 = m->step(tok.narrow(1, 17, 1), *split);
    CHECK(rel_err(next2, next1) < 1e-5);
    CHECK(rel_err(next1, full.narrow(1, 17, 1)) < 1e-5);
  }
  auto m = make(tiny(), 1);
  CHECK_THROWS_AS(m->new_decode_state(0, 4), subq::InputError);
  CHECK_THROWS_AS(m->new_decode_state(1, 0), subq::InputError);
}

TEST_CASE("gdn greedy generation through the cache equals greedy decoding by full forwards", "[gdn][generate]") {
  auto c = tiny(true);
  c.init_std = 0.3;  // logits far from ties
  auto m = make(c, 5);
  std::vector<int64_t> prompt{3, 17, 5, 42, 8, 8, 1, 30, 9, 12};
  subq::eval::GenerateOptions o;
  o.sampling = {0.0, 0, 1.0};
  o.max_new_tokens = 20;
  auto r = subq::eval::generate(*m, prompt, o);
  REQUIRE(r.tokens.size() == 1);
  torch::NoGradGuard ng;
  auto seq = torch::tensor(prompt, torch::kInt64).unsqueeze(0);
  std::vector<int64_t> ref;
  for (int i = 0; i < 20; ++i) {
    auto next = m->forward(seq).select(1, seq.size(1) - 1).argmax(-1);
    ref.push_back(next.item<int64_t>());
    seq = torch::cat({seq, next.unsqueeze(1)}, 1);
  }
  CHECK(r.tokens[0] == ref);
}

TEST_CASE("gdn trains: loss falls on a fixed batch, gradients finite and everywhere", "[gdn]") {
  for (bool neg : {false, true}) {
    INFO("allow_neg_eigval " << neg);
    auto m = make(tiny(neg), 20);
    auto tok = torch::randint(0, 61, {4, 24}, torch::kInt64);
    auto doc = torch::zeros({4, 24}, torch::kBool);
    doc.index_put_({Slice(), 0}, true);
    doc.index_put_({1, 9}, true);
    torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
    std::vector<double> losses;
    for (int s = 0; s < 8; ++s) {
      opt.zero_grad();
      auto logits = m->forward(tok, doc);
      auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, 23).reshape({-1, 61}),
                                                       tok.narrow(1, 1, 23).reshape({-1}));
      loss.backward();
      if (s == 0) {
        for (const auto& p : m->named_parameters()) {
          INFO(p.key());
          REQUIRE(p.value().grad().defined());
          CHECK(torch::isfinite(p.value().grad()).all().item<bool>());
          CHECK(p.value().grad().abs().sum().item<double>() > 0);
        }
      }
      opt.step();
      losses.push_back(loss.item<double>());
    }
    INFO("first " << losses.front() << " last " << losses.back());
    CHECK(losses.back() < losses.front() - 0.5);
  }
}

TEST_CASE("gdn gated norm: the hand-written backward equals autograd of the plain formula", "[gdn]") {
  torch::manual_seed(7);
  subq::models::GdnGatedNorm norm(7, 1e-6);
  norm->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    norm->weight.copy_(torch::randn({7}, torch::kFloat64) + 1.0);
  }
  auto o = torch::randn({3, 5, 4, 7}, torch::kFloat64).requires_grad_(true);
  auto gate = (2 * torch::randn({3, 5, 4, 7}, torch::kFloat64)).requires_grad_(true);
  auto o2 = o.detach().clone().requires_grad_(true), gate2 = gate.detach().clone().requires_grad_(true);
  auto w2 = norm->weight.detach().clone().requires_grad_(true);
  auto y = norm(o, gate);
  auto ref = subq::models::gdn_gated_rms_norm_reference(o2, gate2, w2, 1e-6);
  CHECK(rel_err(y, ref) < 1e-14);
  auto dy = torch::randn_like(ref);
  y.backward(dy);
  ref.backward(dy);
  CHECK(rel_err(o.grad(), o2.grad()) < 1e-12);
  CHECK(rel_err(gate.grad(), gate2.grad()) < 1e-12);
  CHECK(rel_err(norm->weight.grad(), w2.grad()) < 1e-12);
  // bf16 activations (as under autocast): output and gradients keep the inputs' dtypes, fp32 weight grad
  subq::models::GdnGatedNorm n32(7, 1e-6);
  auto ob = torch::randn({2, 3, 7}).to(torch::kBFloat16).requires_grad_(true);
  auto gb = torch::randn({2, 3, 7}).to(torch::kBFloat16).requires_grad_(true);
  auto yb = n32(ob, gb);
  CHECK(yb.scalar_type() == torch::kBFloat16);
  yb.sum().backward();
  CHECK(ob.grad().scalar_type() == torch::kBFloat16);
  CHECK(gb.grad().scalar_type() == torch::kBFloat16);
  CHECK(n32->weight.grad().scalar_type() == torch::kFloat32);
  auto refb = subq::models::gdn_gated_rms_norm_reference(ob.detach().to(torch::kFloat32), gb.detach().to(torch::kFloat32),
                                                          n32->weight.detach(), 1e-6);
  CHECK(rel_err(yb.detach().to(torch::kFloat32), refb) < 1e-2);
}

TEST_CASE("gdn recompute (activation checkpointing): same loss and gradients", "[gdn]") {
  for (bool neg : {false, true}) {
    INFO("allow_neg_eigval " << neg);
    auto c = tiny(neg);
    auto cr = c;
    cr.gdn.recompute = true;
    auto plain = make(c, 40), ckpt = make(cr, 40);  // same seed: same weights
    auto tok = torch::randint(0, 61, {3, 19}, torch::kInt64);
    auto doc = torch::zeros({3, 19}, torch::kBool);
    doc.index_put_({Slice(), 0}, true);
    doc.index_put_({2, 7}, true);
    for (bool bf16 : {false, true}) {
      INFO("bf16 autocast " << bf16);
      std::vector<torch::Tensor> losses;
      for (auto* m : {plain.get(), ckpt.get()}) {
        m->zero_grad();
        subq::AutocastGuard ac(torch::Device(torch::kCPU), bf16 ? torch::kBFloat16 : torch::kFloat32);
        auto logits = m->forward(tok, doc);
        auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, 18).reshape({-1, 61}).to(torch::kFloat32),
                                                         tok.narrow(1, 1, 18).reshape({-1}));
        loss.backward();
        losses.push_back(loss.detach());
      }
      CHECK(losses[0].item<double>() == Approx(losses[1].item<double>()).epsilon(1e-6));
      auto pa = plain->named_parameters(), pb = ckpt->named_parameters();
      for (const auto& p : pa) {
        INFO(p.key());
        REQUIRE(pb[p.key()].grad().defined());
        CHECK(rel_err(pb[p.key()].grad(), p.value().grad()) < (bf16 ? 1e-3 : 1e-6));
      }
    }
    // without grad (eval, decoding) recompute changes nothing
    torch::NoGradGuard ng;
    CHECK(torch::equal(ckpt->forward(tok, doc), plain->forward(tok, doc)));
  }
}

TEST_CASE("gdn runs under bf16 autocast close to fp32", "[gdn]") {
  auto m = make(tiny(), 6);
  auto tok = torch::randint(0, 61, {2, 19}, torch::kInt64);
  torch::NoGradGuard ng;
  auto ref = m->forward(tok);
  torch::Tensor low;
  {
    subq::AutocastGuard ac(torch::Device(torch::kCPU), torch::kBFloat16);
    low = m->forward(tok);
    auto st = m->new_decode_state(2, 19);
    auto inc = torch::cat({m->step(tok.narrow(1, 0, 18), *st), m->step(tok.narrow(1, 18, 1), *st)}, 1);
    CHECK(rel_err(inc.to(torch::kFloat32), ref) < 3e-2);
  }
  CHECK(low.scalar_type() == torch::kBFloat16);
  CHECK(rel_err(low.to(torch::kFloat32), ref) < 3e-2);
  CHECK(!at::autocast::is_autocast_enabled(torch::kCPU));
}

TEST_CASE("gdn config errors and the registry", "[gdn]") {
  auto frac = tiny();
  frac.gdn.expand_v = 1.3;  // 12 * 1.3 = 15.6 value channels
  CHECK_THROWS_AS(subq::models::create_model(frac), subq::ConfigError);
  auto capped = tiny();
  capped.logit_softcap = 30;
  CHECK_THROWS_AS(subq::models::create_model(capped), subq::ConfigError);
  auto novocab = tiny();
  novocab.vocab_size = 0;
  CHECK_THROWS_AS(subq::models::create_model(novocab), subq::ConfigError);
  // n_heads need not divide d_model for gdn (the config check skips it)
  auto odd = tiny();
  odd.n_heads = 7;
  CHECK(make(odd, 0)->num_params() == subq::models::gdn_param_count(odd));
  bool listed = false;
  for (const auto& e : subq::models::model_registry()) listed |= e.name == "gdn" && !e.description.empty();
  CHECK(listed);
  CHECK(subq::models::find_hf_exporter("gdn") != nullptr);
}

TEST_CASE("gdn HF export: fla's config.json and names; fla loads it and reproduces logits and gradients",
          "[gdn][hf_export]") {
  TempDir t("export");
  struct Case {
    std::string name;
    ModelConfig cfg;
  };
  std::vector<Case> cases{{"untied", tiny(false, false)}, {"tied_neg", tiny(true, true)}};
  cases[1].cfg.gdn.conv_kernel = 3;
  std::vector<std::string> args;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const auto& cs = cases[ci];
    INFO(cs.name);
    auto m = make(cs.cfg, 30 + ci);
    subq::models::HfExportOptions o;
    o.out_dir = (t.path / cs.name).string();
    auto files = subq::models::export_hf(*m, nullptr, o);
    CHECK(std::find(files.begin(), files.end(), "model.safetensors") != files.end());
    auto cfg = nlohmann::json::parse(subq::fsx::read_file(o.out_dir + "/config.json"));
    CHECK(cfg["architectures"][0] == "GatedDeltaNetForCausalLM");
    CHECK(cfg["model_type"] == "gated_deltanet");
    CHECK(cfg["hidden_size"] == 40);
    CHECK(cfg["num_hidden_layers"] == 2);
    CHECK(cfg["num_heads"] == 3);
    CHECK(cfg["head_dim"] == 12);
    CHECK(cfg["expand_v"].get<double>() == 1.5);
    CHECK(cfg["intermediate_size"] == 72);
    CHECK(cfg["conv_size"] == cs.cfg.gdn.conv_kernel);
    CHECK(cfg["allow_neg_eigval"] == cs.cfg.gdn.allow_neg_eigval);
    CHECK(cfg["use_short_conv"] == true);
    CHECK(cfg["tie_word_embeddings"] == cs.cfg.tie_embeddings);
    CHECK(cfg["norm_eps"].get<double>() == 1e-6);
    CHECK(cfg["fuse_norm"] == false);
    CHECK(cfg["torch_dtype"] == "float32");
    auto st = subq::load_safetensors(o.out_dir + "/model.safetensors");
    CHECK(st.tensors.size() == m->named_parameters().size());
    CHECK(st.tensors.count("model.embeddings.weight"));
    CHECK(st.tensors.count("lm_head.weight") == (cs.cfg.tie_embeddings ? 0u : 1u));
    CHECK(torch::equal(st.tensors.at("model.layers.1.attn.A_log"), m->named_parameters()["layers.1.attn.A_log"].detach()));
    CHECK(st.tensors.at("model.layers.0.attn.k_conv1d.weight").sizes() ==
          std::vector<int64_t>{36, 1, cs.cfg.gdn.conv_kernel});

    // subq's logits, loss and gradients (fla names) on a fixed batch longer than one chunk, for the Python side
    auto tok = torch::randint(0, 61, {2, 21}, torch::kInt64);
    auto logits = m->forward(tok);
    auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, 20).reshape({-1, 61}),
                                                     tok.narrow(1, 1, 20).reshape({-1}));
    loss.backward();
    subq::TensorMap ref{{"input_ids", tok},
                        {"logits", logits.detach().contiguous()},
                        {"loss", loss.detach().reshape({1})}};
    for (const auto& p : m->named_parameters())
      ref["grad." + (p.key() == "lm_head.weight" ? p.key() : "model." + p.key())] = p.value().grad().contiguous();
    const std::string ref_path = (t.path / (cs.name + "_ref.safetensors")).string();
    subq::save_safetensors(ref_path, ref);
    args.push_back(o.out_dir + ":" + ref_path);
  }

  const auto hc = subq::test::run_hf_export_check(args);
  INFO(hc.out);
  if (!hc.importable) SUBQ_SKIP("flash-linear-attention / transformers not importable here: " << hc.out);
  CHECK(hc.rc == 0);
  for (const auto& j : hc.cases) {
    INFO(j.dump());
    CHECK(j["class"] == "GatedDeltaNetForCausalLM");
    CHECK(j["strict_load"] == true);
    CHECK(j["weights_equal"] == true);
    CHECK(j["max_abs_diff"].get<double>() < 1e-4);
    CHECK(j["loss_diff"].get<double>() < 1e-4);
    CHECK(j["grads_compared"].get<int>() > 30);
    CHECK(j["grad_max_rel_err"].get<double>() < 1e-4);
    CHECK(j["ok"] == true);
  }
  CHECK(hc.cases.size() == 2);
}

TEST_CASE("gdn HF export refusals", "[gdn][hf_export]") {
  TempDir t("refuse");
  auto wide = tiny();
  wide.gdn.head_dim = 260;
  wide.d_model = 8;
  wide.n_heads = 1;
  wide.gdn.expand_v = 1.0;
  auto m = make(wide, 0);
  subq::models::HfExportOptions o;
  o.out_dir = (t.path / "out").string();
  try {
    subq::models::export_hf(*m, nullptr, o);
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("head_dim") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(o.out_dir));
}

// ------------------------------------------------------------------------------------------- configs
namespace {
subq::RunConfig load_config(const std::string& rel, const std::vector<std::string>& overrides = {}) {
  return subq::load_run_config(subq::test::source_dir() + "/" + rel, overrides);
}
}  // namespace

TEST_CASE("configs/models/gdn-tiny.yaml and gdn-neg-tiny.yaml: CPU-sized, both beta ranges", "[gdn][configs]") {
  for (const char* f : {"configs/models/gdn-tiny.yaml", "configs/models/gdn-neg-tiny.yaml"}) {
    INFO(f);
    auto c = load_config(f, {"model.vocab_size=8192"});
    CHECK(c.model.arch == "gdn");
    CHECK(c.model.gdn.allow_neg_eigval == (std::string(f).find("neg") != std::string::npos));
    CHECK(c.model.gdn.head_dim == 64);
    CHECK(c.model.gdn.chunk_size == 64);
    auto m = subq::models::create_model(c.model);
    CHECK(m->num_params() == 5520144);
    CHECK(subq::models::gdn_param_count(c.model) == 5520144);
  }
  auto code = load_config("configs/code/gdn-tiny.yaml");
  CHECK(code.model.arch == "gdn");
  CHECK(code.data.seq_len <= code.model.max_seq_len);
}

TEST_CASE("configs/code/gdn-125m.yaml: 125M class", "[gdn][configs]") {
  auto c = load_config("configs/code/gdn-125m.yaml");
  CHECK(c.run.name == "gdn-125m");
  CHECK(c.model.arch == "gdn");
  CHECK(c.model.d_model == 768);
  CHECK(c.model.n_layers == 13);
  CHECK(c.model.n_heads == 2);
  CHECK(c.model.gdn.head_dim == 256);
  CHECK(c.model.ffn_dim() == 2048);  // fla: 256-rounded 2/3 * 4 * 768
  CHECK(c.model.max_seq_len >= c.data.seq_len);
  const int64_t n = subq::models::gdn_param_count(c.model);
  CHECK(n == 126986036);
  auto m = subq::models::create_model(c.model);
  CHECK(m->num_params() == n);
}

TEST_CASE("configs/code/gdn-340m.yaml: flame's 340M Gated DeltaNet, and the [-1,1] variant", "[gdn][configs]") {
  auto c = load_config("configs/code/gdn-340m.yaml");
  CHECK(c.run.name == "gdn-340m");
  CHECK(c.model.d_model == 1024);
  CHECK(c.model.n_layers == 21);
  CHECK(c.model.n_heads == 6);
  CHECK(c.model.gdn.head_dim == 256);
  CHECK(c.model.gdn.expand_v == 2.0);
  CHECK(c.model.gdn.chunk_size == 64);
  CHECK(c.model.ffn_dim() == 2816);  // fla: 256-rounded 2/3 * 4 * 1024
  CHECK(c.model.norm_eps == 1e-6);
  CHECK_FALSE(c.model.gdn.allow_neg_eigval);
  CHECK(c.data.seq_len == 4096);
  // 32 x 4096 tokens per optimizer step, as 2 per micro-batch x 16 (8 x 4096 ran out of the H200's memory
  // with the reference op; see the config's comment)
  CHECK(c.train.batch_size == 2);
  CHECK(c.train.grad_accum == 16);
  CHECK(c.model.max_seq_len >= c.data.seq_len);
  CHECK(subq::models::gdn_param_count(c.model) == 479504124);
  auto untied = c.model;
  untied.tie_embeddings = false;
  CHECK(subq::models::gdn_param_count(untied) == 512272124);
  auto matched = load_config("configs/code/gdn-340m.yaml", {"model.n_heads=3"});
  CHECK(subq::models::gdn_param_count(matched.model) == 346996350);

  auto neg = load_config("configs/models/gdn-neg-340m.yaml");
  CHECK(neg.model.gdn.allow_neg_eigval);
  CHECK(neg.model.n_layers == 21);
  CHECK(subq::models::gdn_param_count(neg.model) == 479504124);
}
