// test_gated_delta_v2_bwd_emulated.cpp — the Gated DeltaNet v2 backward (src/ops/gated_delta/gdn_v2_bwd.cuh
// kernels + detail::gated_delta_v2_backward glue) on the CPU: the device code runs under the emulator of
// tests/emu/cuda_emu.h through an emulated launcher table, driven by the real glue.
//
// What the forward would save (GdnV2Saved) is built here from the fp32 reference pieces
// (detail::gated_delta_chunks with an explicit (I + A)^-1, and the chunk loop of the reference), rounded to the
// operand dtype where the contract says so; the test does not use the v2 forward. The gradients are compared
// with autograd of gated_delta_chunkwise (fp32) on the same rounded inputs: DESIGN.md's gradient tolerance
// for bf16 / fp16 (1e-2 relative RMS). Every emulated launch pre-fills the kernel's outputs with NaN (an
// element never written fails the comparison). Cases alternate the emulator's thread order and cp.async
// timing (ascending + copies at issue, descending + copies at wait), so missing barriers and waits show up.
//
// Shapes stay small (every thread is a user-level context) but cover several chunks, a ragged last chunk,
// T = 1, T < 64, resets inside chunks and at chunk starts, an initial state, o-only and final-state-only
// losses, Dk 64 / 128 / 256, Dv 32 / 64 / 96 / 128 (each scan tile width), bf16 and fp16, beta in [0, 2].
// SUBQ_OPS_TEST_REPORT=1 prints every measured error.
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gated_delta_v2_testing.h"
#include "op_testing.h"
#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "ops/gated_delta/gated_delta_v2.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/gated_delta/gdn_v2_bwd.cuh"

namespace {

using torch::Tensor;
namespace kb = subq::ops::detail::gdn_v2_bwd;
namespace d = subq::ops::detail;

emu::Options g_opt;

void fill_nan32(float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
}
// NaN in the operand dtype (bf16 0x7fc0, fp16 0x7e00).
void fill_nan16(void* p, int64_t n, d::GdnKernelDtype dt) {
  const uint16_t bits = dt == d::GdnKernelDtype::kBF16 ? 0x7fc0 : 0x7e00;
  auto* q = static_cast<uint16_t*>(p);
  for (int64_t i = 0; i < n; ++i) q[i] = bits;
}

template <typename T, int DK, int BV>
void emu_scan(const d::GdnV2BwdArgs& a) {
  emu::launch(dim3(static_cast<unsigned>(a.value_dim / BV), static_cast<unsigned>(a.bh)), dim3(kb::kThreads),
              sizeof(kb::ScanSmemOf<T, DK, BV>), [&] { kb::gdn_v2_scan_bwd_kernel<T, DK, BV>(a); }, g_opt);
}
template <typename T>
void emu_scan_t(const d::GdnV2BwdArgs& a) {
  const int bv = kb::scan_block_rows(a.key_dim, a.value_dim);
  switch (a.key_dim) {
    case 64: bv == 128 ? emu_scan<T, 64, 128>(a) : emu_scan<T, 64, 32>(a); break;
    case 128: bv == 128 ? emu_scan<T, 128, 128>(a) : emu_scan<T, 128, 32>(a); break;
    default: bv == 64 ? emu_scan<T, 256, 64>(a) : emu_scan<T, 256, 32>(a); break;
  }
}
template <typename T>
void emu_chunk_t(const d::GdnV2BwdArgs& a) {
  emu::launch(dim3(static_cast<unsigned>(a.key_slices), static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh)),
              dim3(kb::kThreads), sizeof(kb::ChunkSmem<T>), [&] { kb::gdn_v2_chunk_bwd_kernel<T>(a); }, g_opt);
}
template <typename T, int DK>
void emu_wy(const d::GdnV2BwdArgs& a) {
  emu::launch(dim3(static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh)), dim3(kb::kThreads),
              sizeof(kb::WySmem<T, DK>), [&] { kb::gdn_v2_wy_bwd_kernel<T, DK>(a); }, g_opt);
}
template <typename T>
void emu_wy_t(const d::GdnV2BwdArgs& a) {
  switch (a.key_dim) {
    case 64: emu_wy<T, 64>(a); break;
    case 128: emu_wy<T, 128>(a); break;
    default: emu_wy<T, 256>(a); break;
  }
}

void check_emu_args(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  if (stream != nullptr) throw std::runtime_error("emulated launcher got a CUDA stream");
  if (dt == d::GdnKernelDtype::kF32) throw std::runtime_error("emulated launcher: fp32 operands");
  const std::string e = d::gated_delta_kernel_shape_error(a.key_dim, a.value_dim, a.bh);
  if (!e.empty()) throw std::runtime_error("emulated launcher: " + e);
  if (a.chunks != (a.time + 63) / 64 || a.key_slices != a.key_dim / 64)
    throw std::runtime_error("emulated launcher: bad chunking");
}

void scan_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_emu_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, nc = a.chunks, dk = a.key_dim, dv = a.value_dim;
  fill_nan16(a.dstates, bh * nc * dv * dk, dt);
  fill_nan16(a.du, bh * T * dv, dt);
  fill_nan32(a.ds0, bh * dv * dk);
  if (dt == d::GdnKernelDtype::kBF16)
    emu_scan_t<__nv_bfloat16>(a);
  else
    emu_scan_t<__half>(a);
}
void chunk_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_emu_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, nc = a.chunks, dk = a.key_dim;
  fill_nan16(a.dq, bh * T * dk, dt);
  fill_nan32(a.dk_part, bh * T * dk);
  fill_nan16(a.dw, bh * T * dk, dt);
  fill_nan32(a.dgc_part, a.key_slices * bh * nc * 64);
  if (dt == d::GdnKernelDtype::kBF16)
    emu_chunk_t<__nv_bfloat16>(a);
  else
    emu_chunk_t<__half>(a);
}
void wy_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_emu_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, dk = a.key_dim, dv = a.value_dim;
  fill_nan16(a.dk, bh * T * dk, dt);
  fill_nan16(a.dv, bh * T * dv, dt);
  fill_nan32(a.dg, bh * T);
  fill_nan32(a.dbeta, bh * T);
  if (dt == d::GdnKernelDtype::kBF16)
    emu_wy_t<__nv_bfloat16>(a);
  else
    emu_wy_t<__half>(a);
}

d::GatedDeltaLaunchers make_emulated() {
  d::GatedDeltaLaunchers t;
  t.built = true;
  t.v2_scan_bwd = &scan_bwd;
  t.v2_chunk_bwd = &chunk_bwd;
  t.v2_wy_bwd = &wy_bwd;
  return t;
}
const d::GatedDeltaLaunchers kEmulated = make_emulated();

enum class Loss { kBoth, kOutputOnly, kFinalOnly };

struct Case {
  int64_t b = 1, h = 1, t = 130, dk = 64, dv = 64;
  bool init = false, reset = false, neg = false, fp16 = false;
  Loss loss = Loss::kBoth;
};

Case make_case(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, const std::string& flags = "",
               Loss loss = Loss::kBoth) {
  Case c;
  c.b = b, c.h = h, c.t = t, c.dk = dk, c.dv = dv, c.loss = loss;
  auto has = [&](const char* f) { return flags.find(f) != std::string::npos; };
  c.init = has("init"), c.reset = has("reset"), c.neg = has("neg"), c.fp16 = has("fp16");
  return c;
}

std::string describe(const Case& c) {
  return subq::str("B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv, c.init ? " init" : "",
                   c.reset ? " reset" : "", c.neg ? " beta[0,2]" : "", c.fp16 ? " fp16" : " bf16",
                   c.loss == Loss::kOutputOnly ? " o-only" : c.loss == Loss::kFinalOnly ? " final-only" : "");
}

struct Inputs {
  Tensor q, k, v, g, beta, s0, reset, d_o, dfinal;  // q, k, v, d_o rounded to the operand dtype (stored as it)
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  using subq::test::randn;
  namespace F = torch::nn::functional;
  Inputs in;
  const auto dt = c.fp16 ? torch::kFloat16 : torch::kBFloat16;
  // unit keys and scaled queries, as a model gives them
  in.q = (F::normalize(randn({c.b, c.h, c.t, c.dk}, seed).to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1)) /
          std::sqrt(static_cast<double>(c.dk)))
             .to(dt);
  in.k = F::normalize(randn({c.b, c.h, c.t, c.dk}, seed + 1).to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1))
             .to(dt);
  in.v = randn({c.b, c.h, c.t, c.dv}, seed + 2).to(dt);
  in.g = -F::softplus(randn({c.b, c.h, c.t}, seed + 3, 1.0, -2.0)).to(torch::kFloat32);
  in.beta = torch::sigmoid(randn({c.b, c.h, c.t}, seed + 4)).to(torch::kFloat32) * (c.neg ? 2.0 : 1.0);
  if (c.init) in.s0 = randn({c.b, c.h, c.dv, c.dk}, seed + 5, 0.5).to(torch::kFloat32);
  if (c.reset) {
    in.reset = subq::test::chunk_edge_resets(c.b, c.t, seed + 6);
    if (c.t > 20) in.reset.index_put_({0, 20}, true);  // inside the first chunk as well
  }
  in.d_o = c.loss == Loss::kFinalOnly ? Tensor() : randn({c.b, c.h, c.t, c.dv}, seed + 7).to(dt);
  in.dfinal = c.loss == Loss::kOutputOnly ? Tensor() : randn({c.b, c.h, c.dv, c.dk}, seed + 8, 0.3).to(torch::kFloat32);
  return in;
}

// Asserts rel_rms(got, want) < tol; prints it and, for information, the distance to `floor64` (fp64 math on
// the saved tensors).
double report(const char* name, const Tensor& got, const Tensor& want, const Tensor& floor64, double tol) {
  const double e = subq::test::rel_rms(got.to(torch::kFloat64), want.to(torch::kFloat64));
  const double ef = subq::test::rel_rms(got.to(torch::kFloat64), floor64);
  const double es = subq::test::rel_rms(floor64, want.to(torch::kFloat64));
  std::fprintf(stderr, "  %-6s rel RMS %.3e   (kernels vs fp64 on saved %.3e; fp64 on saved vs autograd %.3e)\n", name,
               e, ef, es);
  INFO(name << ": relative RMS error " << e << " (tolerance " << tol << ")");
  CHECK(e < tol);
  return e;
}

void run_case(const Case& c, int pass) {
  INFO(describe(c));
  std::fprintf(stderr, "%s (%s)\n", describe(c).c_str(), pass == 0 ? "ascending, copies at issue" : "descending, copies at wait");
  g_opt.order = pass == 0 ? emu::Order::kAscending : emu::Order::kDescending;
  g_opt.copies = pass == 0 ? emu::Copies::kAtIssue : emu::Copies::kAtWait;
  const Inputs in = make_inputs(c, 500 + static_cast<uint64_t>(c.t * 7 + c.dk + c.dv));
  const double tol = 1e-2;

  // reference gradients: autograd of the fp32 chunkwise op on the rounded inputs
  std::vector<Tensor> x{in.q.to(torch::kFloat32), in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.g.clone(),
                        in.beta.clone()};
  if (c.init) x.push_back(in.s0.clone());
  for (auto& t : x) t.requires_grad_(true);
  const auto r = subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], c.init ? x[5] : Tensor(), in.reset);
  Tensor loss = torch::zeros({}, torch::kFloat32);
  if (in.d_o.defined()) loss = loss + (r.o * in.d_o.to(torch::kFloat32)).sum();
  if (in.dfinal.defined()) loss = loss + (r.final_state * in.dfinal).sum();
  const auto want = torch::autograd::grad({loss}, x, {}, false, false, /*allow_unused=*/true);

  const d::GdnV2Saved s = subq::test::make_v2_saved(in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset);
  const d::GdnV2Grads got = d::gated_delta_v2_backward(kEmulated, s, in.d_o, in.dfinal);
  REQUIRE(got.dq.sizes() == in.q.sizes());
  REQUIRE(got.dk.sizes() == in.k.sizes());
  REQUIRE(got.dv.sizes() == in.v.sizes());
  REQUIRE(got.dg.sizes() == in.g.sizes());
  REQUIRE(got.dbeta.sizes() == in.beta.sizes());
  REQUIRE(got.ds0.defined() == c.init);
  auto want_or_zero = [](const Tensor& w, const Tensor& like) { return w.defined() ? w : torch::zeros_like(like, torch::kFloat32); };
  const d::GdnV2Grads f = subq::test::v2_fp64_on_saved(s, in.d_o, in.dfinal);
  if (c.loss == Loss::kFinalOnly) {  // q does not reach the loss: dq must be exactly zero
    CHECK(torch::equal(got.dq.to(torch::kFloat32), torch::zeros_like(got.dq, torch::kFloat32)));
  } else {
    report("dq", got.dq, want_or_zero(want[0], in.q), f.dq, tol);
  }
  report("dk", got.dk, want_or_zero(want[1], in.k), f.dk, tol);
  report("dv", got.dv, want_or_zero(want[2], in.v), f.dv, tol);
  report("dg", got.dg, want_or_zero(want[3], in.g), f.dg, tol);
  report("dbeta", got.dbeta, want_or_zero(want[4], in.beta), f.dbeta, tol);
  if (c.init) report("ds0", got.ds0, want_or_zero(want[5], in.s0), f.ds0, tol);
}

}  // namespace

TEST_CASE("gated delta v2 backward, Dk = 64 (CPU emulation)", "[ops][gated_delta][kernels][v2]") {
  run_case(make_case(1, 2, 130, 64, 128), 0);                      // 3 chunks, ragged; scan tile 128
  run_case(make_case(1, 1, 1, 64, 64, "init"), 1);                 // T = 1
  run_case(make_case(2, 1, 64, 64, 96, "init reset neg fp16"), 0); // one full chunk, Dv 96 (tile 32), reset at 0
  run_case(make_case(1, 1, 150, 64, 32, "init reset neg"), 1);     // resets at 20, 63, 64, 66, 130, 149
  run_case(make_case(1, 1, 40, 64, 64, "init reset"), 0);          // T < 64
}

TEST_CASE("gated delta v2 backward, Dk = 128 (CPU emulation)", "[ops][gated_delta][kernels][v2]") {
  run_case(make_case(1, 1, 200, 128, 128, "init reset"), 1);      // 4 chunks; scan tile 128, two stages
  run_case(make_case(1, 2, 70, 128, 64, "neg fp16"), 0);
}

TEST_CASE("gated delta v2 backward, Dk = 256 (CPU emulation)", "[ops][gated_delta][kernels][v2]") {
  run_case(make_case(1, 1, 100, 256, 64, "init reset neg"), 0);    // scan tile 64, one stage
  run_case(make_case(1, 1, 70, 256, 96, "init fp16"), 1);          // scan tile 32
  run_case(make_case(1, 1, 70, 256, 512, "init reset"), 0);         // the 340M config's heads: 8 scan blocks
}

TEST_CASE("gated delta v2 backward, several scan blocks per head (CPU emulation)", "[ops][gated_delta][kernels][v2]") {
  run_case(make_case(1, 1, 80, 64, 256, "reset fp16"), 1);          // Dk 64, two 128-row scan blocks
}

TEST_CASE("gated delta v2 backward: only o or only the final state in the loss (CPU emulation)",
          "[ops][gated_delta][kernels][v2]") {
  run_case(make_case(1, 1, 100, 64, 64, "init reset", Loss::kOutputOnly), 0);
  run_case(make_case(1, 1, 100, 64, 64, "init neg", Loss::kFinalOnly), 1);  // no reset: the final state sees every token
  run_case(make_case(1, 1, 90, 128, 32, "init reset fp16", Loss::kFinalOnly), 0);  // a reset at t = 89: only it counts
}

#else

TEST_CASE("gated delta v2 backward (CPU emulation)", "[ops][gated_delta][kernels][v2]") {
  SUBQ_SKIP("needs the CUDA headers (bf16 types) for the emulated kernels");
}

#endif
