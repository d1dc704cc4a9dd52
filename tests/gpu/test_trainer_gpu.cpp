// test_trainer_gpu.cpp — the training stack on a CUDA GPU (label gpu): the transformer under bf16
// autocast against fp32, KV-cache decoding in bf16, fused AdamW on CUDA against the foreach path, and a
// short bf16 training run that logs MFU and GPU memory, checkpoints, and resumes.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "memory_source.h"
#include "subq/core/device.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/models/model.h"
#include "subq/train/checkpoint.h"
#include "subq/train/metrics.h"
#include "subq/train/optimizer.h"
#include "subq/train/trainer.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

namespace {
subq::models::ModelConfig small_model() {
  subq::models::ModelConfig c;
  c.vocab_size = 512;
  c.d_model = 256;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.max_seq_len = 256;
  return c;
}
double rel(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kFloat32) - b.to(torch::kFloat32)).norm() / b.to(torch::kFloat32).norm()).item<double>();
}
}  // namespace

TEST_CASE("transformer on CUDA: bf16 autocast close to fp32, decoding matches", "[gpu][transformer]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(0);
  auto m = subq::models::create_model(small_model());
  m->to(torch::kCUDA);
  auto tok = torch::randint(0, 512, {2, 200}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
  torch::NoGradGuard ng;
  auto ref = m->forward(tok);
  torch::Tensor low;
  {
    subq::AutocastGuard ac(torch::Device(torch::kCUDA), torch::kBFloat16);
    low = m->forward(tok);
    auto st = m->new_decode_state(2, 200);
    std::vector<torch::Tensor> parts{m->step(tok.narrow(1, 0, 150), *st)};
    for (int64_t t = 150; t < 200; ++t) parts.push_back(m->step(tok.narrow(1, t, 1), *st));
    CHECK(rel(torch::cat(parts, 1), low) < 2e-2);
  }
  CHECK(low.scalar_type() == torch::kBFloat16);
  CHECK(rel(low, ref) < 3e-2);
}

TEST_CASE("fused AdamW on CUDA matches the foreach path", "[gpu][optimizer]") {
  REQUIRE(torch::cuda::is_available());
  std::vector<std::vector<torch::Tensor>> finals;
  for (const std::string mode : {"on", "off"}) {
    torch::manual_seed(1);
    std::vector<std::pair<std::string, torch::Tensor>> ps{
        {"w", torch::randn({64, 96}, torch::kCUDA).set_requires_grad(true)},
        {"norm.weight", torch::randn({96}, torch::kCUDA).set_requires_grad(true)}};
    subq::train::OptimConfig o;
    o.fused = mode;
    subq::train::AdamW opt(ps, o);
    CHECK(opt.fused() == (mode == "on"));
    for (int s = 0; s < 5; ++s) {
      for (auto& [n, p] : ps) p.mutable_grad() = torch::randn_like(p);
      opt.step(1e-2);
    }
    finals.push_back({ps[0].second.detach().cpu(), ps[1].second.detach().cpu()});
  }
  CHECK(torch::allclose(finals[0][0], finals[1][0], 1e-5, 1e-6));
  CHECK(torch::allclose(finals[0][1], finals[1][1], 1e-5, 1e-6));
}

TEST_CASE("bf16 training on CUDA: metrics, checkpoint, resume", "[gpu][trainer]") {
  REQUIRE(torch::cuda::is_available());
  subq::log::set_level("warn");
  fs::path out = fs::temp_directory_path() / ("subq-gpu-trainer-" + std::to_string(::getpid()));
  subq::RunConfig c;
  c.run.out_dir = out.string();
  c.run.name = "gpu";
  c.run.device = "cuda";
  c.run.dtype = "auto";
  c.model = small_model();
  c.data.seq_len = 128;
  c.optim.lr = 3e-3;
  c.train.steps = 20;
  c.train.batch_size = 8;
  c.train.log_every = 5;
  c.train.ckpt_every = 10;
  c.eval.every = 10;
  auto rd = subq::open_run_dir(c, {"test_trainer_gpu"});
  subq::test::MemorySource train(512, 8, 128, 1 << 16), val(512, 8, 128, 1 << 14, 5);
  subq::train::TrainHooks h;
  h.should_stop = [](int64_t s) { return s == 10; };
  auto r1 = subq::train::train(c, rd, {&train, subq::eval::source_evaluator(val, 4)}, h);
  CHECK(r1.step == 10);
  subq::test::MemorySource train2(512, 8, 128, 1 << 16), val2(512, 8, 128, 1 << 14, 5);
  auto r2 = subq::train::train(c, rd, {&train2, subq::eval::source_evaluator(val2, 4)});
  CHECK(r2.start_step == 10);
  CHECK(r2.finished);
  for (double l : r2.losses) CHECK(std::isfinite(l));
  CHECK(r2.losses.back() < r1.losses.front());
  std::ifstream f(rd.metrics_path());
  int with_mfu = 0, lines = 0;
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++lines;
    CHECK(j["mem_gib"].get<double>() > 0);
    with_mfu += !j["mfu"].is_null();
  }
  CHECK(lines == 4);
  auto name = subq::train::device_name(torch::Device(torch::kCUDA, 0));
  if (subq::train::peak_flops(name, torch::kBFloat16)) CHECK(with_mfu == lines);
  auto lm = subq::train::load_model(rd.path);
  CHECK(lm.checkpoint.step == 20);
  fs::remove_all(out);
}
