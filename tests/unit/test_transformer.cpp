// test_transformer.cpp — the Transformer baseline: Hugging Face parameter names, parameter count and
// FLOPs formula, init statistics, causality, KV-cache decoding equal to the full forward, logit soft-cap,
// the registry, and logits, loss and every parameter gradient equal to Hugging Face's LlamaForCausalLM
// on the same weights (through Python `transformers` + PyTorch autograd; skipped when it cannot be
// imported).
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/safetensors.h"
#include "subq/models/model.h"
#include "subq/models/transformer.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using subq::models::ModelConfig;

namespace {

ModelConfig tiny(int64_t kv_heads = 2, bool tied = false) {
  ModelConfig c;
  c.arch = "transformer";
  c.vocab_size = 61;  // deliberately not a multiple of anything
  c.d_model = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.d_ff = 80;
  c.max_seq_len = 64;
  c.tie_embeddings = tied;
  c.rope_theta = 500.0;
  return c;
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

}  // namespace

TEST_CASE("transformer parameters carry the Hugging Face Llama names", "[transformer]") {
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    torch::manual_seed(0);
    auto m = subq::models::create_model(tiny(2, tied));
    std::set<std::string> names;
    for (const auto& p : m->named_parameters()) names.insert(p.key());
    std::set<std::string> want{"embed_tokens.weight", "norm.weight"};
    if (!tied) want.insert("lm_head.weight");
    for (int i = 0; i < 2; ++i) {
      const std::string l = "layers." + std::to_string(i) + ".";
      for (const char* s : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                            "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
        want.insert(l + s);
    }
    CHECK(names == want);
    CHECK(m->named_buffers().size() == 0);  // RoPE tables are not state
  }
}

TEST_CASE("transformer parameter count and FLOPs formula", "[transformer]") {
  auto c = tiny(2, false);
  auto m = subq::models::create_model(c);
  const int64_t d = 48, hd = 12, L = 2, V = 61, ff = 80;
  const int64_t per_layer = d * 4 * hd + 2 * d * 2 * hd + 4 * hd * d + 3 * d * ff + 2 * d;
  const int64_t expect = V * d * 2 + L * per_layer + d;
  CHECK(m->num_params() == expect);
  CHECK(subq::models::transformer_param_count(c) == expect);
  auto* t = dynamic_cast<subq::models::Transformer*>(m.get());
  REQUIRE(t);
  const int64_t matmul = L * (d * 4 * hd * 2 + d * 2 * hd * 2 + 3 * d * ff) + V * d;
  CHECK(t->matmul_params() == matmul);
  CHECK(m->flops_per_token(32) == Approx(6.0 * matmul + 12.0 * L * 32 * d));
  // tied: one embedding matrix fewer in the count, but the output matmul still costs V*d
  auto tm = subq::models::create_model(tiny(2, true));
  CHECK(tm->num_params() == expect - V * d);
  CHECK(subq::models::transformer_param_count(tiny(2, true)) == expect - V * d);
  CHECK(tm->flops_per_token(32) == Approx(m->flops_per_token(32)));
}

TEST_CASE("transformer init: normal(0, std), output projections scaled, norms one", "[transformer]") {
  ModelConfig c;
  c.vocab_size = 512;
  c.d_model = 128;
  c.n_layers = 8;
  c.n_heads = 4;
  c.init_std = 0.02;
  torch::manual_seed(1);
  auto m = subq::models::create_model(c);
  auto params = m->named_parameters();
  auto stdev = [&](const std::string& n) { return params[n].std().item<double>(); };
  auto mean = [&](const std::string& n) { return params[n].mean().item<double>(); };
  CHECK(stdev("embed_tokens.weight") == Approx(0.02).epsilon(0.03));
  CHECK(stdev("layers.3.self_attn.q_proj.weight") == Approx(0.02).epsilon(0.05));
  CHECK(stdev("layers.3.mlp.up_proj.weight") == Approx(0.02).epsilon(0.05));
  CHECK(stdev("lm_head.weight") == Approx(0.02).epsilon(0.03));
  CHECK(stdev("layers.5.self_attn.o_proj.weight") == Approx(0.02 / 4.0).epsilon(0.05));  // 1/sqrt(2*8)
  CHECK(stdev("layers.5.mlp.down_proj.weight") == Approx(0.02 / 4.0).epsilon(0.05));
  CHECK(std::fabs(mean("layers.3.self_attn.q_proj.weight")) < 1e-3);
  CHECK(torch::equal(params["norm.weight"], torch::ones({128})));
  CHECK(torch::equal(params["layers.7.input_layernorm.weight"], torch::ones({128})));
  // the derived SwiGLU width: 8/3 * 128 = 341 -> rounded up to 384
  CHECK(params["layers.0.mlp.gate_proj.weight"].size(0) == 384);
}

TEST_CASE("transformer is causal", "[transformer]") {
  torch::manual_seed(2);
  auto m = subq::models::create_model(tiny());
  auto tok = torch::randint(0, 61, {2, 20}, torch::kInt64);
  torch::NoGradGuard ng;
  auto a = m->forward(tok);
  CHECK(a.sizes() == std::vector<int64_t>{2, 20, 61});
  auto tok2 = tok.clone();
  tok2.index_put_({torch::indexing::Slice(), 12}, (tok.index({torch::indexing::Slice(), 12}) + 1) % 61);
  auto b = m->forward(tok2);
  CHECK(torch::equal(a.narrow(1, 0, 12), b.narrow(1, 0, 12)));
  CHECK(!torch::allclose(a.narrow(1, 12, 1), b.narrow(1, 12, 1)));
}

TEST_CASE("transformer decoding: prefill + steps == full forward", "[transformer]") {
  for (int64_t kv : {4, 2, 1}) {
    INFO("n_kv_heads " << kv);
    torch::manual_seed(10 + kv);
    auto m = subq::models::create_model(tiny(kv));
    const int64_t B = 3, T = 23;
    auto tok = torch::randint(0, 61, {B, T}, torch::kInt64);
    torch::NoGradGuard ng;
    auto full = m->forward(tok);
    // prefill 7, one chunk of 4 after a prefix (explicit mask), then single tokens
    auto st = m->new_decode_state(B, T);
    std::vector<torch::Tensor> parts;
    parts.push_back(m->step(tok.narrow(1, 0, 7), *st));
    parts.push_back(m->step(tok.narrow(1, 7, 4), *st));
    for (int64_t t = 11; t < T; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
    CHECK(st->pos == T);
    auto inc = torch::cat(parts, 1);
    CHECK(inc.sizes() == full.sizes());
    CHECK(rel_err(inc, full) < 1e-5);
    CHECK((inc - full).abs().max().item<double>() < 1e-4);
    // the cache is full now
    CHECK_THROWS_AS(m->step(tok.narrow(1, 0, 1), *st), subq::InputError);
  }
}

TEST_CASE("transformer soft-cap, limits and registry errors", "[transformer]") {
  auto c = tiny();
  c.logit_softcap = 0.5;
  c.init_std = 0.5;  // large logits, so the cap matters
  torch::manual_seed(4);
  auto m = subq::models::create_model(c);
  torch::NoGradGuard ng;
  auto logits = m->forward(torch::randint(0, 61, {1, 9}, torch::kInt64));
  CHECK(logits.abs().max().item<double>() <= 0.5);
  CHECK(logits.abs().max().item<double>() > 0.4);
  CHECK_THROWS_AS(m->forward(torch::zeros({1, 65}, torch::kInt64)), subq::InputError);
  CHECK_THROWS_AS(m->new_decode_state(1, 65), subq::InputError);

  auto bad = tiny();
  bad.arch = "transfromer";
  try {
    subq::models::create_model(bad);
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("transfromer") != std::string::npos);
    CHECK(std::string(e.what()).find("transformer") != std::string::npos);
  }
  bool listed = false;
  for (const auto& e : subq::models::model_registry()) listed |= e.name == "transformer" && !e.description.empty();
  CHECK(listed);
  auto novocab = tiny();
  novocab.vocab_size = 0;
  CHECK_THROWS_AS(subq::models::create_model(novocab), subq::ConfigError);
}

TEST_CASE("transformer runs under bf16 autocast close to fp32", "[transformer]") {
  torch::manual_seed(5);
  auto m = subq::models::create_model(tiny());
  auto tok = torch::randint(0, 61, {2, 16}, torch::kInt64);
  torch::NoGradGuard ng;
  auto ref = m->forward(tok);
  torch::Tensor low;
  {
    subq::AutocastGuard ac(torch::Device(torch::kCPU), torch::kBFloat16);
    low = m->forward(tok);
  }
  CHECK(low.scalar_type() == torch::kBFloat16);
  CHECK(rel_err(low.to(torch::kFloat32), ref) < 3e-2);
  CHECK(!at::autocast::is_autocast_enabled(torch::kCPU));
}

TEST_CASE("transformer logits, loss and gradients equal Hugging Face LlamaForCausalLM on the same weights", "[transformer][python]") {
  FILE* probe = popen("python3 -c 'import transformers, safetensors, torch' 2>/dev/null", "r");
  REQUIRE(probe);
  if (pclose(probe) != 0) SUBQ_SKIP("python3 with transformers, safetensors and torch is not available");
  fs::path root = fs::temp_directory_path() / ("subq-hf-" + std::to_string(::getpid()));
  std::vector<std::shared_ptr<subq::models::LanguageModel>> models;
  std::vector<torch::Tensor> tokens;
  // one Python process for both cases (importing transformers dominates the test's time)
  for (bool tied : {false, true}) {
    fs::path dir = root / (tied ? "tied" : "untied");
    fs::create_directories(dir);
    auto c = tiny(2, tied);
    torch::manual_seed(6);
    auto m = subq::models::create_model(c);
    subq::TensorMap w;
    for (const auto& p : m->named_parameters())
      w[p.key() == "lm_head.weight" ? p.key() : "model." + p.key()] = p.value();
    subq::save_safetensors((dir / "model.safetensors").string(), w, {{"format", "pt"}});
    auto tok = torch::randint(0, 61, {2, 19}, torch::kInt64);
    subq::save_safetensors((dir / "tokens.safetensors").string(), {{"tokens", tok}});
    nlohmann::json cfg{{"vocab_size", c.vocab_size}, {"hidden_size", c.d_model}, {"intermediate_size", c.d_ff},
                       {"num_hidden_layers", c.n_layers}, {"num_attention_heads", c.n_heads},
                       {"num_key_value_heads", c.n_kv_heads}, {"max_position_embeddings", c.max_seq_len},
                       {"rms_norm_eps", c.norm_eps}, {"rope_theta", c.rope_theta}, {"tie_word_embeddings", tied}};
    std::ofstream(dir / "config.json") << cfg.dump();
    models.push_back(m);
    tokens.push_back(tok);
  }
  std::ofstream(root / "run.py")
      << "import json, sys, torch\n"
         "from safetensors.torch import load_file, save_file\n"
         "from transformers import LlamaConfig, LlamaForCausalLM\n"
         "for d in sys.argv[1:]:\n"
         "    cfg = LlamaConfig(**json.load(open(d + '/config.json')), attention_bias=False, mlp_bias=False)\n"
         "    cfg._attn_implementation = 'eager'\n"
         "    m = LlamaForCausalLM(cfg).float().eval()\n"
         "    missing, unexpected = m.load_state_dict(load_file(d + '/model.safetensors'), strict=False)\n"
         "    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == 'lm_head.weight')]\n"
         "    assert not missing and not unexpected, (missing, unexpected)\n"
         "    if cfg.tie_word_embeddings: m.tie_weights()\n"
         "    tok = load_file(d + '/tokens.safetensors')['tokens']\n"
         "    logits = m(input_ids=tok).logits.float()\n"
         "    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1))\n"
         "    loss.backward()\n"
         "    out = {'logits': logits.detach().contiguous(), 'loss': loss.detach().reshape(1)}\n"
         "    for n, p in m.named_parameters():\n"
         "        out['grad.' + n.removeprefix('model.')] = p.grad.contiguous()\n"
         "    save_file(out, d + '/logits.safetensors')\n";
  std::string cmd = "python3 " + (root / "run.py").string() + " " + (root / "untied").string() + " " +
                    (root / "tied").string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int rc = pclose(p);
  INFO(out);
  REQUIRE(rc == 0);
  int i = 0;
  for (const char* sub : {"untied", "tied"}) {
    INFO(sub);
    auto ref = subq::load_safetensors((root / sub / "logits.safetensors").string()).tensors;
    auto& m = *models[i];
    const auto& tok = tokens[i];
    auto ours = m.forward(tok);
    CHECK(rel_err(ours.detach(), ref.at("logits")) < 1e-5);
    // loss and every gradient, against PyTorch's autograd through the HF model
    auto loss = torch::nn::functional::cross_entropy(ours.narrow(1, 0, tok.size(1) - 1).reshape({-1, ours.size(-1)}),
                                                     tok.narrow(1, 1, tok.size(1) - 1).reshape({-1}));
    CHECK(loss.item<double>() == Approx(ref.at("loss").item<double>()).epsilon(1e-6));
    m.zero_grad();
    loss.backward();
    int grads = 0;
    for (const auto& p : m.named_parameters()) {
      INFO(p.key());
      auto it = ref.find("grad." + p.key());
      REQUIRE(it != ref.end());
      CHECK(rel_err(p.value().grad(), it->second) < 1e-4);
      ++grads;
    }
    CHECK(grads == static_cast<int>(m.named_parameters().size()));
    ++i;
  }
  fs::remove_all(root);
}
