// test_gpu_basics.cpp — GPU smoke tests (label gpu): a subq kernel launches and is correct on every GPU,
// LibTorch sees the device, bf16 matmul on the GPU matches fp32 on the CPU.
#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/ops/cuda_probe.h"
#include "subq_catch.h"

TEST_CASE("a subq kernel runs on every GPU", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  int n = static_cast<int>(torch::cuda::device_count());
  REQUIRE(n >= 1);
  for (int i = 0; i < n; ++i) {
    INFO("device " << i);
    CHECK(subq::ops::cuda_probe(i) == "");
  }
  auto info = subq::machine_info(false);
  CHECK(info["gpus"].size() == static_cast<size_t>(n));
}

TEST_CASE("bf16 matmul on the GPU matches fp32 on the CPU", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(0);
  auto a = torch::randn({173, 409});
  auto b = torch::randn({409, 71});
  auto ref = torch::matmul(a, b);
  auto got = torch::matmul(a.to(torch::kCUDA, torch::kBFloat16), b.to(torch::kCUDA, torch::kBFloat16)).to(torch::kCPU, torch::kFloat32);
  double rel = ((got - ref).norm() / ref.norm()).item<double>();
  CHECK(rel < 1e-2);
  CHECK(subq::resolve_device("auto").is_cuda());
  CHECK(subq::resolve_dtype("auto", subq::resolve_device("cuda")) == torch::kBFloat16);
}
