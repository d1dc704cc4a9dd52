// test_dist_gpu.cpp — data parallel over NCCL on 2 GPUs (label gpu; skipped with fewer than 2 GPUs):
//  * `subq launch --nproc 2 -- train` with 2 GPUs x batch 2 gives the weights of 1 GPU x batch 4 in fp32
//    (NCCL all-reduce, and ZeRO-1's reduce-scatter + all-gather), and the metrics say so;
//  * the default bf16 run trains under the launcher and resumes from its checkpoint on one GPU;
//  * a SIGKILLed rank makes the launcher and the surviving rank exit non-zero (NCCL timeout / abort path)
//    within dist.timeout_s, naming the dead rank.
// The NVLink-multicast setting required on the shared H200 machines (NCCL_NVLS_ENABLE=0) is set by the
// launcher itself.
#include <signal.h>

#include <filesystem>
#include <regex>

#include <torch/cuda.h>

#include "e2e/dist_procs.h"
#include "subq/train/checkpoint.h"

namespace fs = std::filesystem;
using subq::test::has;
using subq::test::run;

namespace {
struct GpuFixture {
  fs::path root;
  std::string common;
  GpuFixture() {
    root = fs::temp_directory_path() / ("subq-dist-gpu-" + std::to_string(::getpid()));
    fs::remove_all(root);
    subq::test::prepare_tiny_corpus(root);
    const std::string data = (root / "data").string();
    common = "--config configs/quickstart.yaml --set run.out_dir=" + (root / "runs").string() +
             " --set run.device=cuda --set data.train=" + data + "/train --set data.val=" + data +
             "/val --set data.tokenizer=" + data + "/tokenizer.json --set data.seq_len=64 --set model.d_model=64" +
             " --set model.n_layers=2 --set model.n_heads=4 --set train.log_every=1 --set train.ckpt_every=0" +
             " --set eval.every=0 --set eval.batches=2 --set eval.batch_size=4 --set schedule.kind=constant" +
             " --set schedule.warmup_steps=2 --set dist.timeout_s=20";
  }
  ~GpuFixture() { fs::remove_all(root); }
  std::string ckpt(const std::string& name, int step) const {
    return (root / "runs" / name / "checkpoints" / ("step-" + std::to_string(step))).string();
  }
};
bool two_gpus() { return torch::cuda::is_available() && torch::cuda::device_count() >= 2; }
}  // namespace

TEST_CASE("NCCL data parallel: 2 GPUs x B/2 == 1 GPU x B (fp32), ZeRO-1 too", "[gpu][dist]") {
  if (!two_gpus()) SUBQ_SKIP("needs 2 CUDA GPUs");
  GpuFixture fx;
  const std::string fp32 = " --set run.dtype=fp32 --set train.steps=5";
  auto single = run("train " + fx.common + fp32 + " --set run.name=single --set train.batch_size=4");
  INFO(single.out);
  REQUIRE(single.rc == 0);
  for (const std::string zero1 : {"false", "true"}) {
    const std::string name = "dp2-zero1-" + zero1;
    auto dp = run("launch --nproc 2 -- train " + fx.common + fp32 + " --set run.name=" + name +
                  " --set train.batch_size=2 --set dist.bucket_mb=1 --set dist.zero1=" + zero1);
    INFO(dp.out);
    REQUIRE(dp.rc == 0);
    CHECK(has(dp.out, "backend nccl"));
    // fp32 on two devices: reduction order and cuBLAS kernels differ, so a looser tolerance than on CPU
    CHECK(subq::test::weights_distance(fx.ckpt(name, 5), fx.ckpt("single", 5), 2e-3, 2e-5) <= 1.0);
  }
}

TEST_CASE("NCCL data parallel in bf16 resumes on one GPU", "[gpu][dist]") {
  if (!two_gpus()) SUBQ_SKIP("needs 2 CUDA GPUs");
  GpuFixture fx;
  auto dp = run("launch --nproc 2 -- train " + fx.common + " --set run.name=bf16 --set train.batch_size=4 " +
                "--set train.steps=6 --set dist.zero1=true");
  INFO(dp.out);
  REQUIRE(dp.rc == 0);
  auto one = run("train " + fx.common + " --set run.name=bf16 --set train.batch_size=8 --set train.steps=8");
  INFO(one.out);
  REQUIRE(one.rc == 0);
  CHECK(has(one.out, "resuming from"));
}

TEST_CASE("NCCL: a killed rank makes the job exit non-zero within the timeout", "[gpu][dist][fault]") {
  if (!two_gpus()) SUBQ_SKIP("needs 2 CUDA GPUs");
  GpuFixture fx;
  subq::test::Proc launcher("launch --nproc 2 --grace-s 60 -- train " + fx.common +
                                " --set run.name=killed --set train.batch_size=4 --set train.steps=1000000",
                            {}, (fx.root / "launch.log").string());
  const auto run_dir = fx.root / "runs" / "killed";
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  while (subq::test::last_logged_step(run_dir) < 5 && launcher.running() && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(subq::test::last_logged_step(run_dir) >= 5);
  std::smatch m;
  const std::string before = launcher.output();
  REQUIRE(std::regex_search(before, m, std::regex("rank 1: pid ([0-9]+)")));
  ::kill(static_cast<pid_t>(std::stol(m[1].str())), SIGKILL);
  REQUIRE(launcher.wait(120));
  INFO(launcher.output());
  CHECK(launcher.exit_code() != 0);
  CHECK(has(launcher.output(), "rank 1"));
  CHECK(has(launcher.output(), "was killed by signal 9"));
}
