// test_short_conv_kernels_emulated.cpp — the short-convolution CUDA kernels (src/ops/short_conv/
// short_conv_cuda.cuh) run on the CPU by the emulator of tests/emu/cuda_emu.h behind the real Torch glue
// of short_conv_cuda.cpp (autograd function, placeholders for absent bias / reset, strided x, partial
// sums, cache): outputs, cache and every gradient against short_conv_parallel in fp32 on the same 16-bit
// inputs. Outputs and gradients the kernels own are fresh torch::empty tensors, so an unwritten element
// shows up as garbage; the comparison also runs with the blocks in both thread orders.
// Covers K = 2, 3, 4, several token tiles (T > 128) and a ragged last tile, T = 1, T < K - 1, resets at
// tile borders, no bias, no SiLU, channels not a multiple of the block width, bf16 and fp16.
// Needs the CUDA headers (bf16 types): skipped in builds without CUDA.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/short_conv.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/short_conv/short_conv_cuda.cuh"
#include "ops/short_conv/short_conv_internal.h"

namespace {

using torch::Tensor;
namespace k = subq::ops::detail::short_conv_kernels;
using subq::ops::detail::ConvKernelDtype;
using subq::ops::detail::ShortConvArgs;

emu::Options g_opt;

dim3 grid_of(const ShortConvArgs& a) {
  return dim3(static_cast<unsigned>((a.channels + k::kChannelsPerBlock - 1) / k::kChannelsPerBlock),
              static_cast<unsigned>(subq::ops::detail::short_conv_tiles(a.time)), static_cast<unsigned>(a.batch));
}
template <typename T, int K>
void fwd_k(const ShortConvArgs& a) {
  emu::launch(grid_of(a), dim3(k::kThreads), 0, [&] { k::short_conv_fwd_kernel<T, K>(a); }, g_opt);
}
template <typename T, int K>
void bwd_k(const ShortConvArgs& a) {
  emu::launch(grid_of(a), dim3(k::kThreads), 0, [&] { k::short_conv_bwd_kernel<T, K>(a); }, g_opt);
}
template <typename T>
void fwd_t(const ShortConvArgs& a) {
  if (a.k == 2) fwd_k<T, 2>(a);
  else if (a.k == 3) fwd_k<T, 3>(a);
  else fwd_k<T, 4>(a);
}
template <typename T>
void bwd_t(const ShortConvArgs& a) {
  if (a.k == 2) bwd_k<T, 2>(a);
  else if (a.k == 3) bwd_k<T, 3>(a);
  else bwd_k<T, 4>(a);
}
void emu_fwd(const ShortConvArgs& a, ConvKernelDtype d, void*) {
  if (d == ConvKernelDtype::kF16) fwd_t<__half>(a);
  else fwd_t<__nv_bfloat16>(a);
}
void emu_bwd(const ShortConvArgs& a, ConvKernelDtype d, void*) {
  if (d == ConvKernelDtype::kF16) bwd_t<__half>(a);
  else bwd_t<__nv_bfloat16>(a);
}
const subq::ops::detail::ShortConvLaunchers kEmulated = {emu_fwd, emu_bwd};

struct Case {
  int64_t b, t, c, k;
  bool bias, silu, reset, strided;
  torch::ScalarType dtype;
};

}  // namespace

TEST_CASE("short-conv kernels (CPU emulation) match short_conv_parallel: y, cache, dx, dweight, dbias",
          "[ops][short_conv][kernels]") {
  using subq::test::randn;
  const std::vector<Case> cases = {
      {2, 300, 260, 4, true, true, true, false, torch::kBFloat16},   // 3 tiles (ragged), 2 channel blocks, resets
      {1, 130, 6, 3, false, true, true, true, torch::kBFloat16},     // strided x (a narrow), K 3, no bias
      {2, 1, 8, 4, true, true, false, false, torch::kBFloat16},      // T = 1 < K - 1
      {1, 2, 4, 4, true, false, true, false, torch::kFloat16},       // T = 2, no SiLU, fp16
      {1, 129, 10, 2, true, false, false, false, torch::kFloat16},   // K 2, one token in the second tile
  };
  uint64_t seed = 900;
  for (const auto& c : cases) {
    for (int mode = 0; mode < 2; ++mode) {
      seed += 10;
      g_opt.order = mode == 0 ? emu::Order::kAscending : emu::Order::kDescending;
      INFO("B" << c.b << " T" << c.t << " C" << c.c << " K" << c.k << (c.bias ? " bias" : "") << (c.silu ? " silu" : "")
                << (c.reset ? " reset" : "") << (c.strided ? " strided" : "") << " " << c10::toString(c.dtype)
                << " mode " << mode);
      Tensor x = randn({c.b, c.t, c.c}, seed + 1).to(c.dtype);
      if (c.strided) x = randn({c.b, c.t, c.c + 4}, seed + 1).to(c.dtype).narrow(2, 2, c.c);  // row stride C + 4
      const Tensor w = randn({c.c, c.k}, seed + 2, 0.5);
      const Tensor bias = c.bias ? randn({c.c}, seed + 3, 0.5) : Tensor();
      Tensor reset;
      if (c.reset) {
        reset = subq::test::rand_mask({c.b, c.t}, seed + 4, 0.05);
        reset.select(1, 0).fill_(true);
        if (c.t > 130) {  // documents starting right at and just after a tile border
          reset.index_put_({0, 128}, true);
          reset.index_put_({c.b - 1, 129}, true);
        }
      }
      const Tensor dy = randn({c.b, c.t, c.c}, seed + 5).to(c.dtype);

      auto run = [&](bool kernel) {
        // the kernel path gets x itself (a strided narrow in the strided case), the reference an fp32 copy
        Tensor xl = (kernel ? x.detach() : x.detach().to(torch::kFloat32)).requires_grad_(true);
        Tensor wl = w.detach().clone().requires_grad_(true);
        Tensor bl = c.bias ? bias.detach().clone().requires_grad_(true) : Tensor();
        auto r = kernel ? subq::ops::detail::short_conv_with_kernels(kEmulated, xl, wl, bl, c.silu, reset)
                        : subq::ops::short_conv_parallel(xl, wl, bl, c.silu, {}, reset);
        (r.y.to(torch::kFloat32) * dy.to(torch::kFloat32)).sum().backward();
        std::vector<Tensor> out = {r.y.detach().to(torch::kFloat32), r.cache.detach(), xl.grad().to(torch::kFloat32),
                                   wl.grad()};
        if (c.bias) out.push_back(bl.grad());
        return out;
      };
      const auto got = run(true);
      const auto ref = run(false);
      const std::vector<std::string> names = {"y", "cache", "dx", "dweight", "dbias"};
      for (size_t i = 0; i < got.size(); ++i) {
        INFO(names[i]);
        REQUIRE(got[i].sizes() == ref[i].sizes());
        // y and dx are rounded to the 16-bit dtype once; the cache is an exact copy; dw/db are fp32 sums
        const double tol = i == 1 ? 1e-7 : (i == 0 || i == 2) ? 5e-3 : 1e-4;
        CHECK(subq::test::rel_rms(got[i], ref[i]) < tol);
      }
    }
  }
}

TEST_CASE("short_conv dispatch on the CPU runs the reference; short_conv_cuda refuses CPU tensors",
          "[ops][short_conv][kernels]") {
  const Tensor x = subq::test::randn({1, 10, 4}, 1).to(torch::kBFloat16), w = subq::test::randn({4, 4}, 2);
  CHECK_FALSE(subq::ops::short_conv_cuda_unsupported(x, w).empty());
  const auto a = subq::ops::short_conv(x, w, {}, true);
  const auto b = subq::ops::short_conv_parallel(x, w, {}, true);
  CHECK(torch::equal(a.y, b.y));
  try {
    subq::ops::short_conv_cuda(x, w, {}, true);
    FAIL("short_conv_cuda accepted CPU tensors");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("short_conv_cuda:") != std::string::npos);
  }
}

#else
TEST_CASE("short-conv kernels (CPU emulation)", "[ops][short_conv][kernels]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif
