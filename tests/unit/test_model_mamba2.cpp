// test_model_mamba2.cpp — the Mamba-2 model: Hugging Face parameter names and shapes, the parameter-count and
// FLOPs formulas, mamba_ssm's initialisation, causality, packed documents equal to separate runs, O(1)-state
// decoding (prefill + single steps, split prefill) equal to the full forward, bf16 autocast, config errors,
// a few optimizer steps reducing the loss with finite gradients, recompute (activation checkpointing) equal
// to the plain backward, greedy generation through eval::generate, the shipped configs' sizes, and the HF
// export: names/config and — when transformers is importable — Mamba2ForCausalLM loading the
// folder and reproducing subq's logits (scripts/check_hf_export.py).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/run_config.h"
#include "subq/core/safetensors.h"
#include "subq/eval/generate.h"
#include "subq/models/hf_export.h"
#include "subq/models/mamba2.h"
#include "subq/models/model.h"
#include "subq_catch.h"
#include "hf_export_testing.h"
#include "test_support.h"

namespace fs = std::filesystem;
using subq::models::ModelConfig;

namespace {

// Small but awkward: 6 heads of width 12 in 2 groups, odd vocabulary, chunk 8 so sequences span chunks.
ModelConfig tiny(bool tied = false, int64_t groups = 2) {
  ModelConfig c;
  c.arch = "mamba2";
  c.vocab_size = 61;
  c.d_model = 36;
  c.n_layers = 2;
  c.max_seq_len = 128;
  c.tie_embeddings = tied;
  c.mamba2.d_state = 10;
  c.mamba2.expand = 2;
  c.mamba2.head_dim = 12;
  c.mamba2.n_groups = groups;
  c.mamba2.conv_kernel = 4;
  c.mamba2.chunk_size = 8;
  return c;
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}


}  // namespace

TEST_CASE("mamba2 parameters carry the Hugging Face Mamba2 names and layouts", "[mamba2]") {
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    torch::manual_seed(0);
    auto m = subq::models::create_model(tiny(tied));
    auto params = m->named_parameters();
    std::set<std::string> names;
    for (const auto& p : params) names.insert(p.key());
    std::set<std::string> want{"embeddings.weight", "norm_f.weight"};
    if (!tied) want.insert("lm_head.weight");
    for (int i = 0; i < 2; ++i) {
      const std::string l = "layers." + std::to_string(i) + ".";
      for (const char* s : {"norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
                            "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight", "mixer.out_proj.weight"})
        want.insert(l + s);
    }
    CHECK(names == want);
    CHECK(m->named_buffers().size() == 0);
    // d_inner 72, 6 heads, 2 groups x 10 states: conv_dim 72 + 40 = 112, in_proj 72 + 112 + 6 = 190
    CHECK(params["layers.1.mixer.in_proj.weight"].sizes() == std::vector<int64_t>{190, 36});
    CHECK(params["layers.1.mixer.conv1d.weight"].sizes() == std::vector<int64_t>{112, 1, 4});
    CHECK(params["layers.1.mixer.out_proj.weight"].sizes() == std::vector<int64_t>{36, 72});
    CHECK(params["layers.1.mixer.norm.weight"].sizes() == std::vector<int64_t>{72});
    CHECK(params["layers.0.mixer.A_log"].sizes() == std::vector<int64_t>{6});
  }
}

TEST_CASE("mamba2 parameter count and FLOPs formula", "[mamba2]") {
  auto c = tiny(false);
  auto m = subq::models::create_model(c);
  const int64_t d = 36, L = 2, V = 61, Di = 72, H = 6, conv = 112, inp = 190, K = 4;
  const int64_t per_layer = d + d * inp + conv * (K + 1) + 3 * H + Di + Di * d;
  const int64_t expect = 2 * V * d + L * per_layer + d;
  CHECK(m->num_params() == expect);
  CHECK(subq::models::mamba2_param_count(c) == expect);
  auto* mm = dynamic_cast<subq::models::Mamba2*>(m.get());
  REQUIRE(mm);
  const int64_t matmul = L * (d * inp + Di * d) + V * d;
  CHECK(mm->matmul_params() == matmul);
  // SSD term at T = 32 (chunk 8): 3 * L * (2 Q G N + 2 Q H P + 4 H P N), P = 12, N = 10, G = 2
  const double ssd = 3.0 * L * (2.0 * 8 * 2 * 10 + 2.0 * 8 * 6 * 12 + 4.0 * 6 * 12 * 10);
  CHECK(mm->ssd_flops_per_token(32) == Approx(ssd));
  CHECK(m->flops_per_token(32) == Approx(6.0 * matmul + ssd));
  // a sequence shorter than the chunk shrinks the intra-chunk blocks
  CHECK(mm->ssd_flops_per_token(4) == Approx(3.0 * L * (2.0 * 4 * 2 * 10 + 2.0 * 4 * 6 * 12 + 4.0 * 6 * 12 * 10)));
  auto tc = tiny(true);
  auto tm = subq::models::create_model(tc);
  CHECK(tm->num_params() == expect - V * d);
  CHECK(subq::models::mamba2_param_count(tc) == expect - V * d);
  CHECK(tm->flops_per_token(32) == Approx(m->flops_per_token(32)));
}

TEST_CASE("mamba2 init follows mamba_ssm", "[mamba2]") {
  ModelConfig c;
  c.arch = "mamba2";
  c.vocab_size = 512;
  c.d_model = 128;
  c.n_layers = 9;
  c.init_std = 0.02;
  c.mamba2.d_state = 16;
  c.mamba2.head_dim = 4;  // 64 heads: enough samples for the range checks
  torch::manual_seed(1);
  auto m = subq::models::create_model(c);
  auto p = m->named_parameters();
  auto stdev = [&](const std::string& n) { return p[n].std().item<double>(); };
  CHECK(stdev("embeddings.weight") == Approx(0.02).epsilon(0.03));
  // torch default (kaiming-uniform, a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
  CHECK(stdev("layers.4.mixer.in_proj.weight") == Approx(1.0 / std::sqrt(3.0 * 128)).epsilon(0.03));
  CHECK(p["layers.4.mixer.in_proj.weight"].abs().max().item<double>() <= 1.0 / std::sqrt(128.0));
  CHECK(stdev("lm_head.weight") == Approx(1.0 / std::sqrt(3.0 * 128)).epsilon(0.03));
  // out_proj: the same, divided by sqrt(n_layers) = 3
  CHECK(stdev("layers.4.mixer.out_proj.weight") == Approx(1.0 / std::sqrt(3.0 * 256) / 3.0).epsilon(0.03));
  CHECK(p["layers.4.mixer.out_proj.weight"].abs().max().item<double>() <= 1.0 / std::sqrt(256.0) / 3.0);
  // conv: fan_in = K = 4 -> U(-0.5, 0.5), bias too
  CHECK(p["layers.2.mixer.conv1d.weight"].abs().max().item<double>() <= 0.5);
  CHECK(stdev("layers.2.mixer.conv1d.weight") == Approx(0.5 / std::sqrt(3.0)).epsilon(0.05));
  CHECK(p["layers.2.mixer.conv1d.bias"].abs().max().item<double>() <= 0.5);
  CHECK(stdev("layers.2.mixer.conv1d.bias") > 0.2);
  for (int l : {0, 8}) {
    const std::string x = "layers." + std::to_string(l) + ".mixer.";
    auto A = p[x + "A_log"].exp();
    CHECK(A.min().item<double>() >= 1.0);
    CHECK(A.max().item<double>() <= 16.0);
    CHECK(A.max().item<double>() - A.min().item<double>() > 10.0);  // spread over the range, not constant
    auto dt = torch::nn::functional::softplus(p[x + "dt_bias"]);
    CHECK(dt.min().item<double>() >= 1e-3 * (1 - 1e-5));
    CHECK(dt.max().item<double>() <= 0.1 * (1 + 1e-5));
    // log-uniform: the median of log(dt) sits near the middle of [log 1e-3, log 0.1]
    CHECK(dt.log().median().item<double>() == Approx(0.5 * (std::log(1e-3) + std::log(0.1))).margin(0.6));
    CHECK(torch::equal(p[x + "D"], torch::ones({64})));
    CHECK(torch::equal(p[x + "norm.weight"], torch::ones({256})));
  }
  CHECK(torch::equal(p["norm_f.weight"], torch::ones({128})));
  CHECK(torch::equal(p["layers.3.norm.weight"], torch::ones({128})));
  // the floor: with dt_min below it, no initial dt is smaller than dt_init_floor
  auto f = c;
  f.mamba2.dt_min = 1e-6;
  f.mamba2.dt_init_floor = 1e-3;
  auto fm = subq::models::create_model(f);
  auto dt = torch::nn::functional::softplus(fm->named_parameters()["layers.0.mixer.dt_bias"]);
  CHECK(dt.min().item<double>() >= 1e-3 * (1 - 1e-4));
}

TEST_CASE("mamba2 gated RMSNorm: hand-written backward equals autograd of the plain expression", "[mamba2]") {
  // reference: weight * rmsnorm_groups(y * silu(z)) in the compute dtype, cast to y's dtype before the weight
  auto reference = [](const torch::Tensor& y, const torch::Tensor& z, const torch::Tensor& w, int64_t G, double eps) {
    auto ct = y.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    auto h = y.to(ct) * torch::silu(z.to(ct));
    auto sizes = h.sizes().vec();
    sizes.back() = G;
    sizes.push_back(h.size(-1) / G);
    auto hg = h.view(sizes);
    hg = hg * torch::rsqrt(hg.pow(2).mean(-1, true) + eps);
    return w * hg.view(h.sizes()).to(y.scalar_type());
  };
  for (auto dt : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
    for (int64_t G : {1, 3}) {
      INFO("dtype " << dt << " groups " << G);
      torch::manual_seed(40 + G);
      subq::models::GatedRMSNorm norm(30, G, 1e-5);
      auto wdt = dt == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      norm->to(wdt);
      {
        torch::NoGradGuard ng;
        norm->weight.copy_(torch::randn({30}, wdt));
      }
      auto y0 = torch::randn({2, 7, 30}, torch::kFloat64).to(dt), z0 = (torch::randn({2, 7, 30}) * 2).to(dt);
      auto y1 = y0.clone().requires_grad_(true), z1 = z0.clone().requires_grad_(true);
      auto y2 = y0.clone().requires_grad_(true), z2 = z0.clone().requires_grad_(true);
      auto w2 = norm->weight.detach().clone().requires_grad_(true);
      auto out = norm(y1, z1);
      auto ref = reference(y2, z2, w2, G, 1e-5);
      REQUIRE(out.scalar_type() == ref.scalar_type());
      const double tol = dt == torch::kFloat64 ? 1e-12 : dt == torch::kFloat32 ? 1e-6 : 1e-2;
      CHECK(rel_err(out.to(torch::kFloat64), ref.to(torch::kFloat64)) < tol);
      auto g = torch::randn_like(ref);
      out.backward(g);
      ref.backward(g);
      CHECK(rel_err(y1.grad().to(torch::kFloat64), y2.grad().to(torch::kFloat64)) < tol);
      CHECK(rel_err(z1.grad().to(torch::kFloat64), z2.grad().to(torch::kFloat64)) < tol);
      CHECK(rel_err(norm->weight.grad().to(torch::kFloat64), w2.grad().to(torch::kFloat64)) < tol);
      CHECK(y1.grad().scalar_type() == dt);
    }
  }
}

TEST_CASE("mamba2 is causal", "[mamba2]") {
  torch::manual_seed(2);
  auto m = subq::models::create_model(tiny());
  auto tok = torch::randint(0, 61, {2, 30}, torch::kInt64);
  torch::NoGradGuard ng;
  auto a = m->forward(tok);
  CHECK(a.sizes() == std::vector<int64_t>{2, 30, 61});
  CHECK(torch::isfinite(a).all().item<bool>());
  auto tok2 = tok.clone();
  tok2.index_put_({torch::indexing::Slice(), 17}, (tok.index({torch::indexing::Slice(), 17}) + 1) % 61);
  auto b = m->forward(tok2);
  CHECK(torch::equal(a.narrow(1, 0, 17), b.narrow(1, 0, 17)));
  CHECK(!torch::allclose(a.narrow(1, 17, 13), b.narrow(1, 17, 13)));
}

TEST_CASE("mamba2 packed documents equal the documents run separately", "[mamba2]") {
  torch::manual_seed(3);
  auto m = subq::models::create_model(tiny());
  // row 0: documents of 11 + 14 + 6 tokens (boundaries at 11 and 25, inside chunks of 8);
  // row 1: documents of 5 and 26 tokens. T = 31 is not a multiple of the chunk.
  const int64_t T = 31;
  auto tok = torch::randint(0, 61, {2, T}, torch::kInt64);
  auto ds = torch::zeros({2, T}, torch::kBool);
  ds.index_put_({0, 0}, true);
  ds.index_put_({0, 11}, true);
  ds.index_put_({0, 25}, true);
  ds.index_put_({1, 0}, true);
  ds.index_put_({1, 5}, true);
  torch::NoGradGuard ng;
  auto packed = m->forward(tok, ds);
  auto check_doc = [&](int64_t row, int64_t start, int64_t len) {
    auto sep = m->forward(tok.narrow(0, row, 1).narrow(1, start, len));
    auto got = packed.narrow(0, row, 1).narrow(1, start, len);
    INFO("row " << row << " doc at " << start);
    CHECK(rel_err(got, sep) < 1e-5);
  };
  check_doc(0, 0, 11);
  check_doc(0, 11, 14);
  check_doc(0, 25, 6);
  check_doc(1, 0, 5);
  check_doc(1, 5, 26);
  // without doc_start the later documents do see the earlier ones
  auto unpacked = m->forward(tok);
  CHECK(rel_err(unpacked.narrow(1, 11, 20), packed.narrow(1, 11, 20)) > 1e-3);
  // changing the first document never changes the second's logits
  auto tok2 = tok.clone();
  tok2.narrow(1, 0, 5).random_(0, 61);
  auto packed2 = m->forward(tok2, ds);
  CHECK(torch::equal(packed.narrow(0, 1, 1).narrow(1, 5, 26), packed2.narrow(0, 1, 1).narrow(1, 5, 26)));
}

TEST_CASE("mamba2 decoding: prefill + steps and split prefills equal the full forward", "[mamba2]") {
  for (int64_t groups : {1, 2}) {
    INFO("n_groups " << groups);
    torch::manual_seed(10 + groups);
    auto m = subq::models::create_model(tiny(false, groups));
    const int64_t B = 3, T = 29;
    auto tok = torch::randint(0, 61, {B, T}, torch::kInt64);
    torch::NoGradGuard ng;
    auto full = m->forward(tok);

    // prefill 13 (crosses chunk edges), then one token at a time
    auto st = m->new_decode_state(B, T);
    std::vector<torch::Tensor> parts{m->step(tok.narrow(1, 0, 13), *st)};
    for (int64_t t = 13; t < T; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
    CHECK(st->pos == T);
    auto inc = torch::cat(parts, 1);
    REQUIRE(inc.sizes() == full.sizes());
    CHECK(rel_err(inc, full) < 1e-5);
    CHECK_THROWS_AS(m->step(tok.narrow(1, 0, 1), *st), subq::InputError);  // past max_len

    // split prefill (6 + 10), then a chunk of 3 after single steps, then the rest in one piece
    auto st2 = m->new_decode_state(B, T);
    std::vector<torch::Tensor> p2{m->step(tok.narrow(1, 0, 6), *st2), m->step(tok.narrow(1, 6, 10), *st2)};
    p2.push_back(m->step(tok.narrow(1, 16, 1), *st2));
    p2.push_back(m->step(tok.narrow(1, 17, 3), *st2));
    p2.push_back(m->step(tok.narrow(1, 20, T - 20), *st2));
    CHECK(rel_err(torch::cat(p2, 1), full) < 1e-5);

    // one prefill vs two: same logits for the prompt's continuation
    auto one = m->new_decode_state(B, T);
    auto a = m->step(tok.narrow(1, 0, 16), *one);
    auto two = m->new_decode_state(B, T);
    auto b1 = m->step(tok.narrow(1, 0, 9), *two);
    auto b2 = m->step(tok.narrow(1, 9, 7), *two);
    CHECK(rel_err(torch::cat({b1, b2}, 1), a) < 1e-5);
    auto* s1 = dynamic_cast<subq::models::Mamba2DecodeState*>(one.get());
    auto* s2 = dynamic_cast<subq::models::Mamba2DecodeState*>(two.get());
    REQUIRE(s1);
    REQUIRE(s2);
    for (size_t l = 0; l < 2; ++l) {
      CHECK(s1->ssm[l].sizes() == std::vector<int64_t>{B, 6, 12, 10});
      CHECK(s1->conv[l].sizes() == std::vector<int64_t>{B, 3, 72 + 2 * groups * 10});
      CHECK(s1->ssm[l].scalar_type() == torch::kFloat32);
      CHECK(rel_err(s2->ssm[l], s1->ssm[l]) < 1e-5);
      CHECK(rel_err(s2->conv[l], s1->conv[l]) < 1e-6);
    }
  }
  // a one-token prompt starts from zero state through the single-step path
  torch::manual_seed(5);
  auto m = subq::models::create_model(tiny());
  auto tok = torch::randint(0, 61, {2, 5}, torch::kInt64);
  torch::NoGradGuard ng;
  auto st = m->new_decode_state(2, 5);
  std::vector<torch::Tensor> parts;
  for (int64_t t = 0; t < 5; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
  CHECK(rel_err(torch::cat(parts, 1), m->forward(tok)) < 1e-5);
  CHECK_THROWS_AS(m->new_decode_state(0, 5), subq::InputError);
}

TEST_CASE("mamba2 runs under bf16 autocast close to fp32", "[mamba2]") {
  torch::manual_seed(6);
  auto m = subq::models::create_model(tiny());
  auto tok = torch::randint(0, 61, {2, 20}, torch::kInt64);
  torch::NoGradGuard ng;
  auto ref = m->forward(tok);
  torch::Tensor low, low_dec;
  {
    subq::AutocastGuard ac(torch::Device(torch::kCPU), torch::kBFloat16);
    low = m->forward(tok);
    auto st = m->new_decode_state(2, 20);
    auto a = m->step(tok.narrow(1, 0, 12), *st);
    std::vector<torch::Tensor> parts{a};
    for (int64_t t = 12; t < 20; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
    low_dec = torch::cat(parts, 1);
    auto* s = dynamic_cast<subq::models::Mamba2DecodeState*>(st.get());
    CHECK(s->ssm[0].scalar_type() == torch::kFloat32);
  }
  CHECK(low.scalar_type() == torch::kBFloat16);
  CHECK(rel_err(low.to(torch::kFloat32), ref) < 3e-2);
  CHECK(rel_err(low_dec.to(torch::kFloat32), ref) < 3e-2);
}

TEST_CASE("mamba2 config errors name the keys", "[mamba2]") {
  auto c = tiny();
  c.mamba2.head_dim = 10;  // 72 inner channels are not a multiple of 10
  try {
    subq::models::create_model(c);
    FAIL("no error");
  } catch (const subq::ConfigError& e) {
    CHECK(std::string(e.what()).find("model.mamba2.head_dim") != std::string::npos);
  }
  c = tiny();
  c.mamba2.n_groups = 4;  // 6 heads
  try {
    subq::models::create_model(c);
    FAIL("no error");
  } catch (const subq::ConfigError& e) {
    CHECK(std::string(e.what()).find("model.mamba2.n_groups") != std::string::npos);
  }
  c = tiny();
  c.vocab_size = 0;
  CHECK_THROWS_AS(subq::models::create_model(c), subq::ConfigError);
  bool listed = false;
  for (const auto& e : subq::models::model_registry()) listed |= e.name == "mamba2" && !e.description.empty();
  CHECK(listed);
}

TEST_CASE("mamba2 trains: loss falls on a fixed batch, every gradient finite", "[mamba2]") {
  torch::manual_seed(7);
  auto c = tiny();
  auto m = subq::models::create_model(c);
  auto tok = torch::randint(0, 61, {4, 33}, torch::kInt64);
  auto ds = torch::zeros({4, 32}, torch::kBool);
  ds.index_put_({torch::indexing::Slice(), 0}, true);
  ds.index_put_({1, 20}, true);
  auto inputs = tok.narrow(1, 0, 32), targets = tok.narrow(1, 1, 32);
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
  std::vector<double> losses;
  for (int it = 0; it < 12; ++it) {
    opt.zero_grad();
    auto logits = m->forward(inputs, ds);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 61}), targets.reshape({-1}));
    loss.backward();
    if (it == 0) {
      for (const auto& p : m->named_parameters()) {
        INFO(p.key());
        REQUIRE(p.value().grad().defined());
        CHECK(torch::isfinite(p.value().grad()).all().item<bool>());
        CHECK(p.value().grad().abs().sum().item<double>() > 0);  // every parameter takes part
      }
    }
    losses.push_back(loss.item<double>());
    opt.step();
  }
  INFO("first " << losses.front() << " last " << losses.back());
  CHECK(losses.front() == Approx(std::log(61.0)).margin(0.3));  // near-uniform at init
  CHECK(losses.back() < losses.front() - 0.5);
}

TEST_CASE("mamba2 recompute (activation checkpointing) gives the same loss and gradients", "[mamba2]") {
  auto c = tiny();
  auto rc = c;
  rc.mamba2.recompute = true;
  torch::manual_seed(9);
  auto a = subq::models::create_model(c);
  auto b = subq::models::create_model(rc);
  {
    torch::NoGradGuard ng;
    auto pa = a->named_parameters();
    for (auto& p : b->named_parameters()) p.value().copy_(pa[p.key()]);
  }
  auto tok = torch::randint(0, 61, {2, 25}, torch::kInt64);
  auto ds = torch::zeros({2, 24}, torch::kBool);
  ds.index_put_({0, 9}, true);
  auto inputs = tok.narrow(1, 0, 24), targets = tok.narrow(1, 1, 24);
  for (bool bf16 : {false, true}) {
    INFO("bf16 " << bf16);
    std::vector<double> losses;
    for (auto* m : {a.get(), b.get()}) {
      m->zero_grad();
      torch::Tensor loss;
      {
        std::unique_ptr<subq::AutocastGuard> g;
        if (bf16) g = std::make_unique<subq::AutocastGuard>(torch::Device(torch::kCPU), torch::kBFloat16);
        loss = torch::nn::functional::cross_entropy(m->forward(inputs, ds).to(torch::kFloat32).reshape({-1, 61}),
                                                    targets.reshape({-1}));
      }
      loss.backward();
      losses.push_back(loss.item<double>());
    }
    CHECK(losses[0] == Approx(losses[1]).epsilon(1e-6));
    auto pa = a->named_parameters();
    for (const auto& p : b->named_parameters()) {
      INFO(p.key());
      REQUIRE(p.value().grad().defined());
      CHECK(rel_err(p.value().grad(), pa[p.key()].grad()) < (bf16 ? 1e-5 : 1e-6));
    }
  }
  // no graph (eval) and decoding take the plain path
  torch::NoGradGuard ng;
  CHECK(torch::allclose(b->forward(inputs), a->forward(inputs)));
}

TEST_CASE("mamba2 greedy generation through eval::generate equals full forwards", "[mamba2]") {
  auto c = tiny(true);
  c.init_std = 0.5;  // logits far from ties
  torch::manual_seed(8);
  auto m = subq::models::create_model(c);
  {
    // livelier dynamics than the init's (a tiny random model otherwise repeats one token)
    torch::NoGradGuard ng;
    for (auto& p : m->named_parameters())
      if (p.key().find("proj") != std::string::npos) p.value().mul_(4.0);
  }
  std::vector<int64_t> prompt{3, 17, 5, 42, 8, 8, 1, 9, 30, 2};
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
  CHECK(std::set<int64_t>(ref.begin(), ref.end()).size() > 2);
}

TEST_CASE("mamba2 HF export: names, config.json, and transformers' Mamba2ForCausalLM reproduces the logits",
          "[mamba2][hf_export]") {
  fs::path root = fs::temp_directory_path() / ("subq-mamba2-hf-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  std::vector<std::string> cases;
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    auto c = tiny(tied, tied ? 1 : 2);
    c.norm_eps = 1e-6;
    c.init_std = 0.1;
    torch::manual_seed(tied ? 21 : 20);
    auto m = subq::models::create_model(c);
    {
      // non-trivial D and norm weights, so a mapping mistake there shows in the logits
      torch::NoGradGuard ng;
      for (auto& p : m->named_parameters())
        if (p.key().find("D") != std::string::npos || p.key().find("norm") != std::string::npos)
          p.value().add_(torch::randn_like(p.value()) * 0.3);
    }
    subq::models::HfExportOptions o;
    o.out_dir = (root / (tied ? "tied" : "untied")).string();
    subq::models::export_hf(*m, nullptr, o);
    auto cfg = nlohmann::json::parse(subq::fsx::read_file(o.out_dir + "/config.json"));
    CHECK(cfg["architectures"][0] == "Mamba2ForCausalLM");
    CHECK(cfg["model_type"] == "mamba2");
    CHECK(cfg["num_heads"] == 6);
    CHECK(cfg["head_dim"] == 12);
    CHECK(cfg["state_size"] == 10);
    CHECK(cfg["n_groups"] == (tied ? 1 : 2));
    CHECK(cfg["hidden_size"] == 36);
    CHECK(cfg["expand"] == 2);
    CHECK(cfg["residual_in_fp32"] == true);
    CHECK(cfg["use_bias"] == false);
    CHECK(cfg["use_conv_bias"] == true);
    CHECK(cfg["tie_word_embeddings"] == tied);
    CHECK(cfg["layer_norm_epsilon"].get<double>() == 1e-6);
    CHECK(cfg["rescale_prenorm_residual"] == false);  // transformers would apply it to the loaded weights
    auto st = subq::load_safetensors(o.out_dir + "/model.safetensors");
    CHECK(st.tensors.size() == m->named_parameters().size());
    CHECK(st.tensors.count("backbone.embeddings.weight"));
    CHECK(st.tensors.count("backbone.norm_f.weight"));
    CHECK(st.tensors.count("lm_head.weight") == (tied ? 0u : 1u));
    CHECK(torch::equal(st.tensors["backbone.layers.1.mixer.conv1d.weight"],
                       m->named_parameters()["layers.1.mixer.conv1d.weight"].detach()));
    CHECK(torch::equal(st.tensors["backbone.layers.0.mixer.A_log"],
                       m->named_parameters()["layers.0.mixer.A_log"].detach()));

    // T = 21: not a multiple of either chunk size (subq exports chunk 8; HF runs it with that chunk)
    auto ids = torch::randint(0, 61, {2, 21}, torch::kInt64);
    torch::Tensor logits;
    {
      torch::NoGradGuard ng;
      logits = m->forward(ids).contiguous();
    }
    const std::string ref = (root / (std::string(tied ? "tied" : "untied") + "_ref.safetensors")).string();
    subq::save_safetensors(ref, {{"input_ids", ids}, {"logits", logits}});
    cases.push_back(o.out_dir + ":" + ref);
  }
  // soft-capped logits cannot be represented
  auto capped = tiny();
  capped.logit_softcap = 30;
  auto cm = subq::models::create_model(capped);
  subq::models::HfExportOptions o;
  o.out_dir = (root / "capped").string();
  try {
    subq::models::export_hf(*cm, nullptr, o);
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("soft-capping") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(o.out_dir));

  const auto hc = subq::test::run_hf_export_check(cases);
  fs::remove_all(root);
  INFO(hc.out);
  if (!hc.importable) SUBQ_SKIP("transformers is not importable here: " << hc.out);
  int old_norm = 0;
  for (const auto& j : hc.cases) {
    INFO(j.dump());
    // transformers releases before the group-wise gated RMSNorm (e.g. 5.17 on the GPU image) normalise
    // over the whole inner width, which differs from mamba_ssm (and subq) when n_groups > 1: such a case
    // cannot match there, so it is reported, not failed
    if (j.value("mamba2_groupwise_norm", true) == false && j["case"].get<std::string>().find("untied") != std::string::npos) {
      WARN("transformers " << j["transformers"] << " has no group-wise Mamba-2 norm; n_groups = 2 case not compared");
      ++old_norm;
      continue;
    }
    CHECK(j["max_abs_diff"].get<double>() < 1e-4);
    CHECK(j["class"] == "Mamba2ForCausalLM");
    CHECK(j["missing_keys"].empty());
    CHECK(j["unexpected_keys"].empty());
    // config.json leaves time_step_limit at transformers' default: no clamp, as subq computes
    CHECK(j["time_step_limit"] == nlohmann::json({"0.0", "inf"}));
    CHECK(j["ok"] == true);
  }
  CHECK(hc.cases.size() == 2);
  CHECK(hc.rc == (old_norm ? 1 : 0));
}

TEST_CASE("mamba2 configs: tiny, 125M and 340M classes", "[mamba2][configs]") {
  auto load = [](const std::string& rel) {
    return subq::load_run_config(subq::test::source_dir() + "/" + rel, {});
  };
  auto big = load("configs/code/mamba2-340m.yaml");
  CHECK(big.run.name == "mamba2-340m");
  CHECK(big.model.arch == "mamba2");
  CHECK(big.model.d_model == 1024);
  CHECK(big.model.n_layers == 48);
  CHECK(big.model.vocab_size == 32000);
  CHECK(big.model.tie_embeddings);
  CHECK(big.model.mamba2.d_state == 128);
  CHECK(big.model.mamba2.head_dim == 64);
  CHECK(big.model.mamba2.chunk_size == 256);
  CHECK(big.model.mamba2.recompute);
  CHECK(subq::models::mamba2_dims(big.model).heads == 32);
  CHECK(big.data.seq_len == 4096);
  CHECK(big.model.max_seq_len >= big.data.seq_len);
  CHECK(big.train.batch_size == 8);
  CHECK(big.train.grad_accum == 4);
  CHECK(subq::models::mamba2_param_count(big.model) == 349619712);  // 316.9M in the 48 blocks

  auto mid = load("configs/code/mamba2-125m.yaml");
  CHECK(mid.model.d_model == 768);
  CHECK(mid.model.n_layers == 24);
  CHECK(mid.model.max_seq_len >= mid.data.seq_len);
  CHECK(subq::models::mamba2_dims(mid.model).heads == 24);
  const int64_t n = subq::models::mamba2_param_count(mid.model);
  CHECK(n == 114944448);
  auto m = subq::models::create_model(mid.model);
  CHECK(m->num_params() == n);
  // 6 N_matmul + the SSD's chunkwise matmuls at T = 2048 (chunk 256)
  const double matmul = 24.0 * (768.0 * (1536 + 1792 + 24) + 1536.0 * 768) + 32000.0 * 768;
  const double ssd = 3.0 * 24 * (2.0 * 256 * 128 + 2.0 * 256 * 24 * 64 + 4.0 * 24 * 64 * 128);
  CHECK(m->flops_per_token(2048) == Approx(6 * matmul + ssd));

  auto tiny_cfg = load("configs/models/mamba2-tiny.yaml");
  tiny_cfg.model.vocab_size = 8192;  // the quick-start tokenizer's
  CHECK(subq::models::mamba2_param_count(tiny_cfg.model) == 3766976);
  CHECK(subq::models::create_model(tiny_cfg.model)->num_params() == 3766976);
}
