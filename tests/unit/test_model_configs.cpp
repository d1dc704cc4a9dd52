// test_model_configs.cpp — the shipped model-size and code-run configs parse (through their includes)
// and describe models of the advertised size: ~340M and ~125M parameters, computed from the config (the
// 125M model is also built once to check the count against the real module).
#include "subq/core/run_config.h"
#include "subq/models/model.h"
#include "subq/models/transformer.h"
#include "subq_catch.h"

namespace {
subq::RunConfig load(const std::string& rel) {
  return subq::load_run_config(subq::test::source_dir() + "/" + rel, {});
}
}  // namespace

TEST_CASE("configs/code/transformer-340m.yaml: 340M parameters", "[configs]") {
  auto c = load("configs/code/transformer-340m.yaml");
  CHECK(c.run.name == "transformer-340m");
  CHECK(c.model.arch == "transformer");
  CHECK(c.model.d_model == 1024);
  CHECK(c.model.n_layers == 24);
  CHECK(c.model.n_heads == 16);
  CHECK(c.model.ffn_dim() == 2816);
  CHECK(c.model.vocab_size == 32000);
  CHECK(c.data.seq_len == 4096);
  CHECK(c.model.max_seq_len >= c.data.seq_len);
  CHECK(c.train.batch_size == 8);
  const int64_t n = subq::models::transformer_param_count(c.model);
  CHECK(n == 341099520);
  auto untied = c.model;
  untied.tie_embeddings = false;
  CHECK(subq::models::transformer_param_count(untied) == 373867520);
}

TEST_CASE("configs/code/transformer-125m.yaml: 125M parameters", "[configs]") {
  auto c = load("configs/code/transformer-125m.yaml");
  CHECK(c.model.d_model == 768);
  CHECK(c.model.n_layers == 12);
  CHECK(c.model.max_seq_len >= c.data.seq_len);
  const int64_t n = subq::models::transformer_param_count(c.model);
  CHECK(n == 123685632);
  auto m = subq::models::create_model(c.model);
  CHECK(m->num_params() == n);
  // 6N_matmul + 12 L T d at T = 2048
  const double matmul = 12.0 * (4.0 * 768 * 768 + 3.0 * 768 * 2560) + 32000.0 * 768;
  CHECK(m->flops_per_token(2048) == Approx(6 * matmul + 12.0 * 12 * 2048 * 768));
}

TEST_CASE("quickstart and the tiny model config still parse", "[configs]") {
  auto c = load("configs/quickstart.yaml");
  CHECK(c.model.arch == "transformer");
  CHECK(c.model.d_model == 256);
}
