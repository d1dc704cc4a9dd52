// test_rms_norm_kernels_emulated.cpp — the fused (gated) RMS-norm CUDA kernels (src/ops/norm/
// rms_norm_cuda.cuh) run on the CPU by the emulator of tests/emu/cuda_emu.h behind the real Torch glue of
// rms_norm.cpp: output, dx, dz and dweight against rms_norm_reference's autograd (fp32 on the same inputs).
// Covers the plain norm (fp32 x with an fp32 weight: the models' residual stream), the gated group-wise
// norm (bf16 x and z, groups 1 and 4), bf16 and fp16 weights (output in x's dtype), a group of 2048
// features (the register limit), D not a multiple of 32, rows not a multiple of the warps per block, more
// rows than the backward's warps (grid-stride accumulation of dweight), both thread orders.
// Also the dispatch on CPU tensors (reference) and the reference against the models' former formulas.
// Needs the CUDA headers (bf16 types): the kernel part is skipped in builds without CUDA.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/rms_norm.h"
#include "subq_catch.h"

using torch::Tensor;

TEST_CASE("rms_norm_reference is the models' RMSNorm and Mamba-2's gated group-wise norm", "[ops][norm]") {
  const Tensor x = subq::test::randn({3, 5, 16}, 1), w = subq::test::randn({16}, 2), z = subq::test::randn({3, 5, 16}, 3);
  const Tensor plain = x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-6);
  CHECK(subq::test::rel_rms(subq::ops::rms_norm_reference(x, w, 1e-6), w * plain) < 1e-6);
  const Tensor h = (x * torch::silu(z)).view({3, 5, 4, 4});
  const Tensor gated = (h * torch::rsqrt(h.pow(2).mean(-1, true) + 1e-5)).view({3, 5, 16});
  CHECK(subq::test::rel_rms(subq::ops::rms_norm_reference(x, w, 1e-5, z, 4), w * gated) < 1e-6);
  // dispatch on the CPU: the reference
  CHECK(torch::equal(subq::ops::rms_norm(x, w, 1e-6), subq::ops::rms_norm_reference(x, w, 1e-6)));
  CHECK_FALSE(subq::ops::rms_norm_cuda_unsupported(x, w).empty());
  CHECK_THROWS_AS(subq::ops::rms_norm_cuda(x, w, 1e-6), subq::InputError);
  CHECK_THROWS_AS(subq::ops::rms_norm(x, w, 1e-6, {}, 3), subq::InputError);              // 3 does not divide 16
  CHECK_THROWS_AS(subq::ops::rms_norm(x, torch::ones({8}), 1e-6), subq::InputError);      // weight shape
}

#if defined(SUBQ_WITH_CUDA)
#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/norm/rms_norm_cuda.cuh"
#include "ops/norm/rms_norm_internal.h"

namespace {

namespace k = subq::ops::detail::norm_kernels;
using subq::ops::detail::NormDtype;
using subq::ops::detail::RmsNormArgs;

emu::Options g_opt;

template <template <typename, typename> class L>
void by_dtype(const RmsNormArgs& a) {
  const bool out32 = a.out_dtype == NormDtype::kF32;
  if (a.x_dtype == NormDtype::kF32) L<float, float>::run(a);
  else if (a.x_dtype == NormDtype::kBF16) out32 ? L<__nv_bfloat16, float>::run(a) : L<__nv_bfloat16, __nv_bfloat16>::run(a);
  else out32 ? L<__half, float>::run(a) : L<__half, __half>::run(a);
}
template <typename X, typename O>
struct Fwd {
  static void run(const RmsNormArgs& a) {
    const dim3 grid(static_cast<unsigned>((a.rows + subq::ops::detail::kNormWarps - 1) / subq::ops::detail::kNormWarps),
                    static_cast<unsigned>(a.groups));
    const k::NormKernel kernel = k::fwd_kernel_for<X, O>(a);
    emu::launch(grid, dim3(k::kThreads), 0, [&] { kernel(a); }, g_opt);
  }
};
template <typename X, typename O>
struct Bwd {
  static void run(const RmsNormArgs& a) {
    const dim3 grid(static_cast<unsigned>(a.parts_blocks), static_cast<unsigned>(a.groups));
    const k::NormKernel kernel = k::bwd_kernel_for<X, O>(a);
    emu::launch(grid, dim3(k::kThreads), 0, [&] { kernel(a); }, g_opt);
  }
};
void emu_fwd(const RmsNormArgs& a, void*) { by_dtype<Fwd>(a); }
void emu_bwd(const RmsNormArgs& a, void*) { by_dtype<Bwd>(a); }
const subq::ops::detail::RmsNormLaunchers kEmulated = {emu_fwd, emu_bwd};

struct Case {
  std::vector<int64_t> shape;
  int64_t groups;
  bool gate;
  torch::ScalarType x_dtype, w_dtype;
};

}  // namespace

TEST_CASE("RMS-norm kernels (CPU emulation) match rms_norm_reference: out, dx, dz, dweight", "[ops][norm][kernels]") {
  const std::vector<Case> cases = {
      {{3, 7, 96}, 1, false, torch::kFloat32, torch::kFloat32},     // the block norm on the fp32 residual stream
      {{2, 5, 64}, 4, true, torch::kBFloat16, torch::kFloat32},     // gated group-wise, bf16 x/z, fp32 out
      {{2, 3, 2048}, 1, true, torch::kBFloat16, torch::kFloat32},   // a 2048-feature group (64 per lane)
      {{1, 9, 40}, 2, true, torch::kFloat16, torch::kFloat16},      // D not a multiple of 32, fp16 out
      {{5, 1, 48}, 1, false, torch::kBFloat16, torch::kBFloat16},   // bf16 out
      {{2, 3, 520}, 1, true, torch::kBFloat16, torch::kFloat32},    // 65 packs: 4 per lane, the last ragged
      {{2, 2, 1024}, 1, false, torch::kFloat32, torch::kFloat32},   // the 340M block norm (fp32, 4 packs/lane)
      {{3, 2, 256}, 2, true, torch::kFloat16, torch::kFloat16},     // groups of 128: one pack per lane, half idle
  };
  uint64_t seed = 77;
  for (const auto& c : cases) {
    for (int mode = 0; mode < 2; ++mode) {
      g_opt.order = mode == 0 ? emu::Order::kAscending : emu::Order::kDescending;
      seed += 10;
      const int64_t D = c.shape.back();
      INFO("shape " << c10::IntArrayRef(c.shape) << " groups " << c.groups << (c.gate ? " gated " : " plain ")
                    << c10::toString(c.x_dtype) << " weight " << c10::toString(c.w_dtype) << " mode " << mode);
      const Tensor x = subq::test::randn(c.shape, seed + 1).to(c.x_dtype);
      const Tensor z = c.gate ? subq::test::randn(c.shape, seed + 2).to(c.x_dtype) : Tensor();
      const Tensor w = (1.0 + subq::test::randn({D}, seed + 3, 0.2)).to(c.w_dtype);
      auto run = [&](bool kernel) {
        Tensor xl = x.detach().clone().requires_grad_(true);
        Tensor zl = c.gate ? z.detach().clone().requires_grad_(true) : Tensor();
        Tensor wl = w.detach().clone().requires_grad_(true);
        Tensor out = kernel ? subq::ops::detail::rms_norm_with_kernels(kEmulated, xl, wl, 1e-5, zl, c.groups)
                            : subq::ops::rms_norm_reference(xl.to(torch::kFloat32), wl.to(torch::kFloat32), 1e-5,
                                                            c.gate ? zl.to(torch::kFloat32) : Tensor(), c.groups);
        const Tensor gw = subq::test::randn(c.shape, seed + 4);
        (out.to(torch::kFloat32) * gw).sum().backward();
        std::vector<Tensor> r = {out.detach().to(torch::kFloat32), xl.grad().to(torch::kFloat32),
                                 wl.grad().to(torch::kFloat32)};
        if (c.gate) r.push_back(zl.grad().to(torch::kFloat32));
        return std::make_pair(r, out.scalar_type());
      };
      const auto [got, got_dtype] = run(true);
      const auto [ref, ref_dtype] = run(false);
      CHECK(got_dtype == at::result_type(w, x));
      const char* names[] = {"out", "dx", "dweight", "dz"};
      // fp32 x: same math, only summation order differs; 16-bit x/out: one rounding of each result
      const bool exact = c.x_dtype == torch::kFloat32;
      for (size_t i = 0; i < got.size(); ++i) {
        INFO(names[i]);
        const double tol = exact ? 1e-5 : 5e-3;
        CHECK(subq::test::rel_rms(got[i], ref[i]) < tol);
      }
    }
  }
}

TEST_CASE("RMS-norm kernel backward: more rows than warps (grid-stride dweight sums)", "[ops][norm][kernels]") {
  // kNormBwdBlocks (396) blocks x 4 warps = 1584 warps; 2200 rows makes some warps take two rows
  static_assert(subq::ops::detail::kNormBwdBlocks * subq::ops::detail::kNormWarps < 2200);
  const Tensor x = subq::test::randn({2200, 32}, 5).to(torch::kFloat32);
  const Tensor w = subq::test::randn({32}, 6).to(torch::kFloat32);
  Tensor xl = x.clone().requires_grad_(true), wl = w.clone().requires_grad_(true);
  const Tensor out = subq::ops::detail::rms_norm_with_kernels(kEmulated, xl, wl, 1e-6, {}, 1);
  CHECK(subq::test::rel_rms(out.detach(), subq::ops::rms_norm_reference(x, w, 1e-6)) < 1e-5);
  out.sum().backward();
  Tensor xr = x.clone().requires_grad_(true), wr = w.clone().requires_grad_(true);
  subq::ops::rms_norm_reference(xr, wr, 1e-6).sum().backward();
  CHECK(subq::test::rel_rms(wl.grad(), wr.grad()) < 1e-5);
  CHECK(subq::test::rel_rms(xl.grad(), xr.grad()) < 1e-5);
}
TEST_CASE("RMS-norm kernels: the vectorised variant is chosen where groups are 8-element aligned",
          "[ops][norm][kernels]") {
  alignas(16) static float buf[8];
  RmsNormArgs a;
  a.x = buf;
  a.w = buf;
  a.out = buf;
  auto packs = [&](int dim, int groups) {
    a.dim = dim;
    a.groups = groups;
    return k::vec_packs(a);
  };
  CHECK(packs(2048, 1) == 8);   // 256 packs: 8 per lane
  CHECK(packs(1024, 1) == 4);
  CHECK(packs(520, 1) == 4);    // 65 packs: 3 per lane, rounded up to 4
  CHECK(packs(96, 1) == 1);
  CHECK(packs(64, 4) == 1);     // groups of 16
  CHECK(packs(40, 2) == 0);     // groups of 20: scalar kernel
  CHECK(packs(36, 1) == 0);     // D not a multiple of 8
  CHECK(packs(4096, 1) == 0);   // more than kNormMaxGroupDim features per group
  a.x = reinterpret_cast<const char*>(buf) + 4;  // a base that is not 16-byte aligned
  CHECK(packs(2048, 1) == 0);
}
#endif
