// test_kernels_rms_norm.cpp — the fused (gated) RMS-norm CUDA kernel (label gpu; skipped without a GPU or
// without kernels in the build) against rms_norm_reference in fp32 on the same inputs: output, dx, dz,
// dweight for the models' shapes — the block norm on the fp32 residual stream (D 1024 / 2048), Mamba-2's
// gated norm (bf16 x and z, D 2048, groups 1 and 8), 16-bit weights, D not a multiple of 32 — plus the
// SUBQ_OPS_IMPL dispatch. Tolerances: 1e-5 relative RMS for fp32 x (same math, different summation
// order), 5e-3 for 16-bit x (one rounding per result).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/rms_norm.h"
#include "subq_catch.h"

namespace {

using subq::test::rel_rms;
using torch::Tensor;

std::string why_skip() {
  if (!torch::cuda::is_available()) return "no CUDA GPU visible";
  auto o = torch::TensorOptions().device(torch::kCUDA);
  return subq::ops::rms_norm_cuda_unsupported(torch::zeros({2, 32}, o), torch::ones({32}, o));
}

struct Case {
  std::vector<int64_t> shape;
  int64_t groups;
  bool gate;
  torch::ScalarType x_dtype, w_dtype;
};

}  // namespace

TEST_CASE("rms_norm_cuda matches rms_norm_reference", "[gpu][norm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP(why);
  const std::vector<Case> cases = {
      {{8, 4096, 1024}, 1, false, torch::kFloat32, torch::kFloat32},   // block norm, 340M models
      {{2, 1000, 2048}, 1, false, torch::kFloat32, torch::kFloat32},
      {{8, 4096, 2048}, 1, true, torch::kBFloat16, torch::kFloat32},   // Mamba-2 340M gated norm
      {{2, 777, 2048}, 8, true, torch::kBFloat16, torch::kFloat32},    // group-wise
      {{3, 100, 1000}, 1, false, torch::kBFloat16, torch::kBFloat16},  // D % 32 != 0, bf16 out
      {{3, 100, 96}, 2, true, torch::kFloat16, torch::kFloat16},
      {{1, 1, 64}, 1, false, torch::kFloat32, torch::kFloat32},
  };
  uint64_t seed = 300;
  for (const auto& c : cases) {
    seed += 10;
    const int64_t D = c.shape.back();
    const auto dev = torch::kCUDA;
    const Tensor x = subq::test::randn(c.shape, seed + 1).to(c.x_dtype).to(dev);
    const Tensor z = c.gate ? subq::test::randn(c.shape, seed + 2).to(c.x_dtype).to(dev) : Tensor();
    const Tensor w = (1.0 + subq::test::randn({D}, seed + 3, 0.2)).to(c.w_dtype).to(dev);
    const Tensor gw = subq::test::randn(c.shape, seed + 4).to(torch::kFloat32).to(dev);
    auto run = [&](bool kernel) {
      Tensor xl = x.detach().clone().requires_grad_(true);
      Tensor zl = c.gate ? z.detach().clone().requires_grad_(true) : Tensor();
      Tensor wl = w.detach().clone().requires_grad_(true);
      Tensor out = kernel ? subq::ops::rms_norm_cuda(xl, wl, 1e-5, zl, c.groups)
                          : subq::ops::rms_norm_reference(xl.to(torch::kFloat32), wl.to(torch::kFloat32), 1e-5,
                                                          c.gate ? zl.to(torch::kFloat32) : Tensor(), c.groups);
      (out.to(torch::kFloat32) * gw).sum().backward();
      std::vector<Tensor> r = {out.detach().to(torch::kFloat32), xl.grad().to(torch::kFloat32),
                               wl.grad().to(torch::kFloat32)};
      if (c.gate) r.push_back(zl.grad().to(torch::kFloat32));
      return r;
    };
    const auto got = run(true), ref = run(false);
    const char* names[] = {"out", "dx", "dweight", "dz"};
    std::string line = subq::str(c10::IntArrayRef(c.shape), " G", c.groups, c.gate ? " gated " : " plain ",
                                 c10::toString(c.x_dtype), " w ", c10::toString(c.w_dtype), ":");
    for (size_t i = 0; i < got.size(); ++i) line += subq::str(" ", names[i], " ", rel_rms(got[i], ref[i]));
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    INFO(line);
    const double tol = c.x_dtype == torch::kFloat32 && c.w_dtype == torch::kFloat32 ? 1e-5 : 5e-3;
    for (size_t i = 0; i < got.size(); ++i) {
      INFO(names[i]);
      CHECK(rel_rms(got[i], ref[i]) < tol);
    }
  }
}

TEST_CASE("rms_norm dispatch follows SUBQ_OPS_IMPL on the GPU", "[gpu][norm]") {
  const std::string why = why_skip();
  if (!why.empty()) SUBQ_SKIP(why);
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  const Tensor x = torch::randn({4, 64}, o), w = torch::randn({64}, o);
  subq::test::OpsImplEnv env;
  env.set(nullptr);
  CHECK(torch::equal(subq::ops::rms_norm(x, w, 1e-6), subq::ops::rms_norm_cuda(x, w, 1e-6)));
  env.set("reference");
  CHECK(torch::equal(subq::ops::rms_norm(x, w, 1e-6), subq::ops::rms_norm_reference(x, w, 1e-6)));
  env.set("cuda");
  // cuda: like auto (fp64 runs the reference)
  CHECK(torch::equal(subq::ops::rms_norm(x.to(torch::kFloat64), w.to(torch::kFloat64), 1e-6),
                     subq::ops::rms_norm_reference(x.to(torch::kFloat64), w.to(torch::kFloat64), 1e-6)));
}
