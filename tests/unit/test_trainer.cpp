// test_trainer.cpp — the trainer end to end on tiny models and in-memory sources:
//  * THE resume test: 2N steps straight == N steps, stop, resume, N more — bitwise-equal losses and
//    weights on CPU fp32 (data cursor and global RNG both feed the batches), plus a control showing the
//    comparison fails when the data cursor is not restored;
//  * metrics.jsonl records, eval records, keep-last-k checkpoints, resume=never, cleaning of interrupted
//    saves, resuming a finished run for more steps, refusing a changed model;
//  * gradient accumulation equal to the large batch; the NaN policy (skip / stop / max_bad_steps);
//  * loss goes down; load_model() gives back the trained model.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <torch/torch.h>

#include "memory_source.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/core/safetensors.h"
#include "subq/train/checkpoint.h"
#include "subq/train/trainer.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using subq::test::MemorySource;

namespace {

fs::path temp_root() {
  static fs::path root = [] {
    fs::path r = fs::temp_directory_path() / ("subq-trainer-" + std::to_string(::getpid()));
    fs::remove_all(r);
    fs::create_directories(r);
    subq::log::set_level("warn");
    return r;
  }();
  return root;
}

subq::RunConfig tiny_run(const std::string& name) {
  subq::RunConfig c;
  c.run.out_dir = temp_root().string();
  c.run.name = name;
  c.run.seed = 3;
  c.run.device = "cpu";
  c.run.dtype = "fp32";
  c.run.threads = 1;  // tiny models: threads only add synchronisation (and thrash on a shared machine)
  c.model.arch = "transformer";
  c.model.vocab_size = 32;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 4;
  c.model.n_kv_heads = 2;
  c.model.d_ff = 64;
  c.model.max_seq_len = 32;
  c.data.seq_len = 16;
  c.optim.lr = 3e-3;
  c.optim.grad_clip = 0.5;
  c.optim.weight_decay = 0.1;
  c.schedule.kind = "cosine";
  c.schedule.warmup_steps = 2;
  c.train.steps = 8;
  c.train.batch_size = 4;
  c.train.grad_accum = 2;
  c.train.log_every = 1;
  c.train.ckpt_every = 0;
  c.train.keep_last = 2;
  c.eval.every = 4;
  c.eval.batches = 2;
  return c;
}

subq::RunDir open(const subq::RunConfig& c) { return subq::open_run_dir(c, {"test_trainer"}); }

std::vector<nlohmann::json> read_metrics(const subq::RunDir& rd) {
  std::vector<nlohmann::json> out;
  std::ifstream f(rd.metrics_path());
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

subq::TensorMap weights(const std::string& ckpt) {
  return subq::load_safetensors(ckpt + "/model.safetensors").tensors;
}

bool same_weights(const subq::TensorMap& a, const subq::TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, t] : a)
    if (!b.count(k) || !torch::equal(t, b.at(k))) return false;
  return true;
}

// --- a model whose logits turn NaN on chosen forward calls, for the NaN policy
std::set<int64_t> g_poison_calls;
int64_t g_calls = 0;
class PoisonModel : public subq::models::LanguageModel {
 public:
  explicit PoisonModel(const subq::models::ModelConfig& c) : LanguageModel(c) {
    table = register_parameter("table", torch::randn({c.vocab_size, c.vocab_size}) * 0.1);
  }
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor&) override {
    auto out = table.index_select(0, tokens.reshape({-1})).view({tokens.size(0), tokens.size(1), -1});
    if (g_poison_calls.count(++g_calls)) out = out * std::numeric_limits<float>::quiet_NaN();
    return out;
  }
  std::unique_ptr<subq::models::DecodeState> new_decode_state(int64_t, int64_t) override { return nullptr; }
  torch::Tensor step(const torch::Tensor& t, subq::models::DecodeState&) override { return forward(t, {}); }
  double flops_per_token(int64_t) const override { return 0; }
  torch::Tensor table;
};
SUBQ_REGISTER_MODEL(subq::models::ModelEntry{
    "test_poison", "test-only bigram model with NaN injection",
    [](const subq::models::ModelConfig& c) -> std::shared_ptr<subq::models::LanguageModel> {
      return std::make_shared<PoisonModel>(c);
    }});

}  // namespace

TEST_CASE("resume is exact: 2N straight == N + resume + N (bitwise)", "[trainer][resume]") {
  const int64_t N = 4;
  // straight
  auto ca = tiny_run("straight");
  auto rda = open(ca);
  MemorySource ta(32, 4, 16, 4096, 7, /*jitter=*/5), va(32, 4, 16, 2048, 99);
  auto ra = subq::train::train(ca, rda, {&ta, subq::eval::source_evaluator(va, 2)});
  REQUIRE(ra.finished);
  REQUIRE(ra.losses.size() == 2 * N);
  for (double l : ra.losses) REQUIRE(std::isfinite(l));

  // interrupted at N, then resumed by a new train() with fresh sources (as a new process would)
  auto cb = tiny_run("resumed");
  auto rdb = open(cb);
  MemorySource tb1(32, 4, 16, 4096, 7, 5), vb1(32, 4, 16, 2048, 99);
  subq::train::TrainHooks stop_at_n;
  stop_at_n.should_stop = [&](int64_t s) { return s == N; };
  auto rb1 = subq::train::train(cb, rdb, {&tb1, subq::eval::source_evaluator(vb1, 2)}, stop_at_n);
  CHECK(!rb1.finished);
  CHECK(rb1.step == N);
  REQUIRE(subq::train::latest_checkpoint(rdb.path));
  CHECK(subq::train::latest_checkpoint(rdb.path)->step == N);
  // scramble the global RNG in between, as a new process would have a different one
  torch::manual_seed(12345);
  MemorySource tb2(32, 4, 16, 4096, 7, 5), vb2(32, 4, 16, 2048, 99);
  auto rb2 = subq::train::train(cb, rdb, {&tb2, subq::eval::source_evaluator(vb2, 2)});
  CHECK(rb2.start_step == N);
  CHECK(rb2.finished);
  REQUIRE(rb2.losses.size() == N);
  for (int64_t i = 0; i < N; ++i) {
    INFO("step " << i + 1);
    CHECK(rb1.losses[i] == ra.losses[i]);  // bitwise
  }
  for (int64_t i = 0; i < N; ++i) {
    INFO("step " << N + i + 1);
    CHECK(rb2.losses[i] == ra.losses[N + i]);  // bitwise
  }
  CHECK(rb2.tokens == ra.tokens);
  CHECK(same_weights(weights(ra.last_checkpoint), weights(rb2.last_checkpoint)));
  REQUIRE(ra.last_eval);
  REQUIRE(rb2.last_eval);
  CHECK(ra.last_eval->loss == rb2.last_eval->loss);
  // the metrics of the resumed run are one consistent history: steps 1..2N once each
  std::vector<int64_t> steps;
  for (const auto& r : read_metrics(rdb))
    if (r.contains("loss")) steps.push_back(r["step"].get<int64_t>());
  CHECK(steps == std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8});

  // control: the same resume without restoring the data cursor does not reproduce the run, so the
  // comparison above can fail
  auto cc = tiny_run("control");
  auto rdc = open(cc);
  MemorySource tc1(32, 4, 16, 4096, 7, 5);
  subq::train::train(cc, rdc, {&tc1, {}}, stop_at_n);
  MemorySource tc2(32, 4, 16, 4096, 7, 5);
  tc2.ignore_restore = true;
  auto rc2 = subq::train::train(cc, rdc, {&tc2, {}});
  REQUIRE(rc2.losses.size() == N);
  bool differs = false;
  for (int64_t i = 0; i < N; ++i) differs |= rc2.losses[i] != ra.losses[N + i];
  CHECK(differs);
}

TEST_CASE("metrics, eval records and keep-last-k checkpoints", "[trainer]") {
  auto c = tiny_run("metrics");
  c.train.ckpt_every = 2;
  c.train.log_every = 2;
  auto rd = open(c);
  MemorySource t(32, 4, 16), v(32, 4, 16, 2048, 99);
  auto bytes = subq::eval::token_bytes_table(32, [](int64_t id) { return id == 0 ? 0 : 1 + id % 3; });
  auto r = subq::train::train(c, rd, {&t, subq::eval::source_evaluator(v, c.eval.batches, bytes)});
  CHECK(r.tokens == 8 * 2 * 4 * 16);
  auto cks = subq::train::list_checkpoints(rd.path);
  REQUIRE(cks.size() == 2);
  CHECK(cks[0].step == 6);
  CHECK(cks[1].step == 8);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "COMPLETE"})
    CHECK(fs::exists(fs::path(cks[1].path) / f));
  auto st = subq::train::read_trainer_state(cks[1].path);
  CHECK(st["step"] == 8);
  CHECK(st["tokens"] == 8 * 2 * 4 * 16);
  CHECK(st["data"]["cursor"] == 16);
  CHECK(st["rng"]["cpu"].is_string());
  CHECK(subq::train::checkpoint_config(cks[1].path).model.d_model == 32);

  int logs = 0, evals = 0;
  for (const auto& rec : read_metrics(rd)) {
    if (rec.contains("loss")) {
      ++logs;
      for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "mem_gib", "elapsed_s",
                            "data_s"})
        CHECK(rec.contains(k));
      CHECK(rec["mfu"].is_null());  // CPU
      CHECK(rec["mem_gib"].get<double>() > 0);
      CHECK(rec["tokens_per_s"].get<double>() > 0);
      CHECK(rec["step"].get<int64_t>() % 2 == 0);
      CHECK(rec["tokens"].get<int64_t>() == rec["step"].get<int64_t>() * 128);
    } else {
      ++evals;
      for (const char* k : {"step", "eval_loss", "eval_ppl", "eval_bpb"}) CHECK(rec.contains(k));
      CHECK(rec["eval_bpb"].get<double>() > 0);
      CHECK(rec["eval_ppl"].get<double>() == Approx(std::exp(rec["eval_loss"].get<double>())));
    }
  }
  CHECK(logs == 4);
  CHECK(evals == 2);  // steps 4 and 8
  REQUIRE(r.last_eval);
  CHECK(r.last_eval->tokens == 2 * 4 * 16);

  // run.resume = never refuses a run directory with checkpoints, naming the fix
  auto never = c;
  never.run.resume = "never";
  MemorySource t2(32, 4, 16);
  try {
    subq::train::train(never, rd, {&t2, {}});
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("run.resume") != std::string::npos);
  }
  // resuming a finished run does nothing; asking for more steps continues it
  MemorySource t3(32, 4, 16);
  auto again = subq::train::train(c, rd, {&t3, {}});
  CHECK(again.losses.empty());
  CHECK(again.finished);
  auto longer = c;
  longer.train.steps = 10;
  MemorySource t4(32, 4, 16);
  auto more = subq::train::train(longer, rd, {&t4, {}});
  CHECK(more.start_step == 8);
  CHECK(more.losses.size() == 2);
  CHECK(subq::train::latest_checkpoint(rd.path)->step == 10);
  // a different model refuses to resume
  auto other = longer;
  other.model.d_model = 64;
  MemorySource t5(32, 4, 16);
  CHECK_THROWS_AS(subq::train::train(other, rd, {&t5, {}}), subq::InputError);
}

TEST_CASE("interrupted checkpoint saves are cleaned up", "[trainer][checkpoint]") {
  auto c = tiny_run("clean");
  c.train.steps = 2;
  auto rd = open(c);
  MemorySource t(32, 4, 16);
  auto r = subq::train::train(c, rd, {&t, {}});
  const fs::path ck = rd.checkpoints_path();
  // a half-written temp dir, a step dir without COMPLETE, and a moved-aside copy of step-2
  fs::create_directories(ck / "step-3.tmp-999");
  fs::create_directories(ck / "step-5");
  subq::fsx::write_file_atomic((ck / "step-5" / "trainer_state.json").string(), "{\"step\": 5}");
  CHECK(subq::train::list_checkpoints(rd.path).size() == 1);  // step-5 is not complete
  CHECK_THROWS_AS(subq::train::resolve_checkpoint((ck / "step-5").string()), subq::InputError);
  fs::rename(ck / "step-2", ck / "step-2.old-42");
  CHECK(subq::train::clean_incomplete_checkpoints(rd.path) == 3);
  CHECK(!fs::exists(ck / "step-3.tmp-999"));
  CHECK(!fs::exists(ck / "step-5"));
  CHECK(fs::exists(ck / "step-2" / "COMPLETE"));  // restored
  CHECK(subq::train::resolve_checkpoint(rd.path).step == 2);
  CHECK(subq::train::resolve_checkpoint((ck / "step-2").string()).step == 2);
  CHECK_THROWS_AS(subq::train::resolve_checkpoint(temp_root().string() + "/nope"), subq::InputError);
  // load_model gives back the trained model
  auto lm = subq::train::load_model(rd.path);
  CHECK(lm.checkpoint.step == 2);
  CHECK(lm.config.model.n_kv_heads == 2);
  auto w = weights(r.last_checkpoint);
  for (const auto& p : lm.model->named_parameters()) CHECK(torch::equal(p.value(), w.at(p.key())));
  // load_model_weights names mismatches
  auto bigger = c.model;
  bigger.d_model = 64;
  auto m2 = subq::models::create_model(bigger);
  try {
    subq::train::load_model_weights(*m2, r.last_checkpoint);
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("embed_tokens.weight") != std::string::npos);
  }
}

TEST_CASE("gradient accumulation equals the large batch", "[trainer]") {
  auto big = tiny_run("accum1");
  big.train.batch_size = 4;
  big.train.grad_accum = 1;
  big.train.steps = 4;
  auto small = tiny_run("accum2");
  small.train.batch_size = 2;
  small.train.grad_accum = 2;
  small.train.steps = 4;
  MemorySource a(32, 4, 16), b(32, 2, 16);
  auto rb = subq::train::train(big, open(big), {&a, {}});
  auto rs = subq::train::train(small, open(small), {&b, {}});
  REQUIRE(rb.losses.size() == 4);
  REQUIRE(rs.losses.size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(rs.losses[i] == Approx(rb.losses[i]).epsilon(1e-5));
  CHECK(rb.tokens == rs.tokens);
  auto wb = weights(rb.last_checkpoint), ws = weights(rs.last_checkpoint);
  for (const auto& [k, t] : wb) CHECK(torch::allclose(t, ws.at(k), 1e-4, 1e-6));
}

TEST_CASE("NaN policy: skip, stop, max_bad_steps", "[trainer][nan]") {
  auto c = tiny_run("nan-skip");
  c.model.arch = "test_poison";
  c.train.grad_accum = 1;
  c.train.steps = 6;
  c.eval.every = 0;
  g_calls = 0;
  g_poison_calls = {3};
  MemorySource t(32, 4, 16);
  std::vector<nlohmann::json> seen;
  subq::train::TrainHooks h;
  h.on_step = [&](const nlohmann::json& j) { seen.push_back(j); };
  auto r = subq::train::train(c, open(c), {&t, {}}, h);
  CHECK(r.finished);
  CHECK(r.skipped_steps == 1);
  REQUIRE(r.losses.size() == 6);
  CHECK(std::isnan(r.losses[2]));
  CHECK(std::isfinite(r.losses[3]));
  REQUIRE(seen.size() == 6);
  CHECK(seen[2]["skipped"] == true);
  CHECK(seen[3]["skipped"] == false);

  auto stop = tiny_run("nan-stop");
  stop.model.arch = "test_poison";
  stop.train.grad_accum = 1;
  stop.train.nan_policy = "stop";
  g_calls = 0;
  g_poison_calls = {4};
  MemorySource t2(32, 4, 16);
  try {
    subq::train::train(stop, open(stop), {&t2, {}});
    FAIL("no error");
  } catch (const subq::RuntimeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("step 4") != std::string::npos);
    CHECK(msg.find("nan_policy") != std::string::npos);
    CHECK(msg.find("optim.lr") != std::string::npos);
  }

  auto many = tiny_run("nan-many");
  many.model.arch = "test_poison";
  many.train.grad_accum = 1;
  many.train.max_bad_steps = 2;
  g_calls = 0;
  g_poison_calls = {2, 3};
  MemorySource t3(32, 4, 16);
  try {
    subq::train::train(many, open(many), {&t3, {}});
    FAIL("no error");
  } catch (const subq::RuntimeError& e) {
    CHECK(std::string(e.what()).find("max_bad_steps") != std::string::npos);
    CHECK(std::string(e.what()).find("step 3") != std::string::npos);
  }
  g_poison_calls.clear();
}

TEST_CASE("training reduces the loss", "[trainer]") {
  auto c = tiny_run("learn");
  c.train.steps = 40;
  c.train.grad_accum = 1;
  c.optim.lr = 1e-2;
  c.optim.grad_clip = 1.0;
  c.eval.every = 0;
  MemorySource t(32, 4, 16);
  auto r = subq::train::train(c, open(c), {&t, {}});
  REQUIRE(r.losses.size() == 40);
  const double first = r.losses.front();
  double last = 0;
  for (int i = 35; i < 40; ++i) last += r.losses[i] / 5;
  INFO("first " << first << " last " << last);
  CHECK(first == Approx(std::log(32.0)).epsilon(0.1));  // near-uniform at init
  CHECK(last < first - 1.0);
}
