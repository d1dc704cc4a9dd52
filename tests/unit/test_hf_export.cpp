// test_hf_export.cpp — the Hugging Face export: folder contents, names and values, dtype, refusals
// (soft-capping, architectures without an exporter, existing folders), and — when PyPI transformers is
// importable — that transformers' LlamaForCausalLM loads the folder and reproduces subq's logits
// (scripts/check_hf_export.py; untied + GQA, and tied).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/safetensors.h"
#include "subq/data/tokenizer.h"
#include "subq/models/hf_export.h"
#include "subq/models/model.h"
#include "subq_catch.h"
#include "hf_export_testing.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace subq;

namespace {
using subq::test::TempDir;


data::Tokenizer tiny_tokenizer() {
  data::BpeTrainOptions bo;
  bo.vocab_size = 300;
  bo.show_progress = false;
  return data::train_bpe_texts({"def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n",
                                "int main() { return 0; }\n"},
                               bo);
}

models::ModelConfig tiny_config(int64_t vocab, bool tied, int64_t kv_heads) {
  models::ModelConfig c;
  c.arch = "transformer";
  c.vocab_size = vocab;
  c.d_model = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.max_seq_len = 64;
  c.tie_embeddings = tied;
  c.rope_theta = 5000.0;
  c.norm_eps = 1e-6;
  c.init_std = 0.1;
  return c;
}


// A model the registry does not know, to check the refusal.
class Unexported : public models::LanguageModel {
 public:
  explicit Unexported(models::ModelConfig c) : LanguageModel(std::move(c)) { w = register_parameter("w", torch::ones({2})); }
  torch::Tensor forward(const torch::Tensor& t, const torch::Tensor&) override { return t; }
  std::unique_ptr<models::DecodeState> new_decode_state(int64_t, int64_t) override { return nullptr; }
  torch::Tensor step(const torch::Tensor& t, models::DecodeState&) override { return t; }
  double flops_per_token(int64_t) const override { return 0; }
  torch::Tensor w;
};

}  // namespace

TEST_CASE("HF export writes a Llama folder that transformers loads with the same logits", "[hf_export]") {
  TempDir t;
  auto tok = tiny_tokenizer();
  const std::string tok_path = (t.path / "tokenizer.json").string();
  tok.save(tok_path);
  REQUIRE(tok.eos_id());
  const int64_t vocab = tok.vocab_size() + 20;  // padded beyond the tokenizer, as configs may do

  std::vector<std::string> cases;
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    torch::manual_seed(tied ? 11 : 7);
    auto model = models::create_model(tiny_config(vocab, tied, tied ? 4 : 2));
    models::HfExportOptions o;
    o.out_dir = (t.path / (tied ? "tied" : "untied")).string();
    o.tokenizer_json_path = tok_path;
    auto files = models::export_hf(*model, &tok, o);
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json"}) {
      CHECK(fs::exists(fs::path(o.out_dir) / f));
      CHECK(std::find(files.begin(), files.end(), f) != files.end());
    }
    auto cfg = nlohmann::json::parse(fsx::read_file(o.out_dir + "/config.json"));
    CHECK(cfg["architectures"][0] == "LlamaForCausalLM");
    CHECK(cfg["hidden_size"] == 48);
    CHECK(cfg["num_key_value_heads"] == (tied ? 4 : 2));
    CHECK(cfg["intermediate_size"] == model->config().ffn_dim());
    CHECK(cfg["vocab_size"] == vocab);
    CHECK(cfg["tie_word_embeddings"] == tied);
    CHECK(cfg["eos_token_id"] == *tok.eos_id());
    CHECK(cfg["torch_dtype"] == "float32");
    CHECK(cfg["rope_theta"].get<double>() == 5000.0);
    CHECK(fsx::read_file(o.out_dir + "/tokenizer.json") == fsx::read_file(tok_path));
    auto st = load_safetensors(o.out_dir + "/model.safetensors");
    CHECK(st.metadata["format"] == "pt");
    CHECK(st.tensors.count("model.embed_tokens.weight"));
    CHECK(st.tensors.count("model.layers.1.mlp.down_proj.weight"));
    CHECK(st.tensors.count("lm_head.weight") == (tied ? 0u : 1u));
    CHECK(st.tensors.size() == model->named_parameters().size());
    CHECK(torch::equal(st.tensors["model.layers.0.self_attn.k_proj.weight"],
                       model->named_parameters()["layers.0.self_attn.k_proj.weight"].detach()));

    // subq's logits on a fixed batch, for the Python side.
    auto ids = torch::randint(0, vocab, {2, 13}, torch::kInt64);
    torch::Tensor logits;
    {
      torch::NoGradGuard ng;
      logits = model->forward(ids).to(torch::kFloat32).contiguous();
    }
    const std::string ref = (t.path / (std::string(tied ? "tied" : "untied") + "_ref.safetensors")).string();
    save_safetensors(ref, {{"input_ids", ids}, {"logits", logits}});
    cases.push_back(o.out_dir + ":" + ref);
  }

  const auto hc = subq::test::run_hf_export_check(cases);
  INFO(hc.out);
  if (!hc.importable) SUBQ_SKIP("transformers is not importable here: " << hc.out);
  CHECK(hc.rc == 0);
  for (const auto& j : hc.cases) {
    INFO(j.dump());
    CHECK(j["max_abs_diff"].get<double>() < 1e-4);
    CHECK(j["class"] == "LlamaForCausalLM");
    CHECK(j["tokenizer_roundtrip"] == true);
    CHECK(j["ok"] == true);
  }
  CHECK(hc.cases.size() == 2);
}

TEST_CASE("HF export refusals and folder safety", "[hf_export]") {
  TempDir t;
  torch::manual_seed(0);
  auto cfg = tiny_config(64, false, 2);
  auto model = models::create_model(cfg);
  models::HfExportOptions o;
  o.out_dir = (t.path / "out").string();

  // Soft-capped logits have no Llama equivalent.
  auto capped_cfg = cfg;
  capped_cfg.logit_softcap = 30;
  auto capped = models::create_model(capped_cfg);
  try {
    models::export_hf(*capped, nullptr, o);
    FAIL("no error");
  } catch (const InputError& e) {
    CHECK(std::string(e.what()).find("soft-capping") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(o.out_dir));

  // An architecture without an exporter.
  auto other = cfg;
  other.arch = "no_such_arch";
  Unexported u(other);
  try {
    models::export_hf(u, nullptr, o);
    FAIL("no error");
  } catch (const InputError& e) {
    std::string w = e.what();
    CHECK(w.find("no_such_arch") != std::string::npos);
    CHECK(w.find("transformer") != std::string::npos);  // lists what exists
  }
  CHECK(models::find_hf_exporter("transformer") != nullptr);
  CHECK(models::find_hf_exporter("no_such_arch") == nullptr);

  // No tokenizer: no tokenizer files, null ids. bf16 weights.
  o.dtype = torch::kBFloat16;
  models::export_hf(*model, nullptr, o);
  CHECK_FALSE(fs::exists(t.path / "out/tokenizer.json"));
  auto c = nlohmann::json::parse(fsx::read_file(o.out_dir + "/config.json"));
  CHECK(c["torch_dtype"] == "bfloat16");
  CHECK(c["eos_token_id"].is_null());
  CHECK(load_safetensors(o.out_dir + "/model.safetensors").tensors["model.norm.weight"].dtype() == torch::kBFloat16);

  // An existing non-empty folder is kept unless overwrite; overwrite replaces it and leaves no temporaries.
  o.dtype = torch::kFloat32;
  CHECK_THROWS_AS(models::export_hf(*model, nullptr, o), UsageError);
  CHECK(nlohmann::json::parse(fsx::read_file(o.out_dir + "/config.json"))["torch_dtype"] == "bfloat16");
  o.overwrite = true;
  models::export_hf(*model, nullptr, o);
  CHECK(nlohmann::json::parse(fsx::read_file(o.out_dir + "/config.json"))["torch_dtype"] == "float32");
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(t.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);

  // A tokenizer larger than the model's vocabulary is the wrong tokenizer.
  auto tok = tiny_tokenizer();
  CHECK_THROWS_AS(models::export_hf(*model, &tok, o), InputError);
}
