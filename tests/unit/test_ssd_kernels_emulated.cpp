// test_ssd_kernels_emulated.cpp — the SSD CUDA kernels' device code (src/ops/ssd/ssd_cuda_*.cuh) run on the
// CPU by the emulator of tests/emu/cuda_emu.h: forward scan, forward chunks, reverse scan, backward chunks
// and the decode step, with the same argument set-up as src/ops/ssd/ssd_cuda.cpp, against the chunkwise
// reference in fp32 (and its autograd) on the same bf16 inputs, with the GPU test's tolerances (5e-3
// outputs, 1e-2 gradients). Each configuration runs twice: threads in ascending order with cp.async copies
// at issue, and in descending order with copies at the wait (see cuda_emu.h for what that exposes).
// Outputs are pre-filled with NaN, so an element the kernels never write fails the comparison.
//
// Shapes are small (the emulator runs every thread as a user-level context) but cover several chunks, a
// ragged last chunk, T = 1, exactly one chunk, resets, an initial state, G = 2, head splits, P = 128 (two
// slices), N = 64 and 128, strided inputs, bf16 and fp16. Needs the CUDA headers (bf16 types): skipped in
// builds without CUDA.
#include <torch/torch.h>

#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/ssd.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/ssd/ssd_cuda_bwd.cuh"
#include "ops/ssd/ssd_cuda_fwd.cuh"
#include "ops/ssd/ssd_cuda_scan.cuh"
#include "ops/ssd/ssd_cuda_step.cuh"
#include "ops/ssd/ssd_internal.h"

namespace {

using torch::Tensor;
namespace k = subq::ops::detail::ssd_kernels;
using subq::ops::detail::SsdRows;
using subq::ops::detail::SsdSizes;

SsdRows rows_of(const Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }
template <typename P>
const P* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<P>() : nullptr;
}
Tensor nan_like(at::IntArrayRef shape, torch::ScalarType dt) {
  return torch::full(shape, std::numeric_limits<float>::quiet_NaN(), torch::TensorOptions().dtype(dt));
}

struct Problem {
  int64_t b = 1, h = 2, g = 1, t = 130, p = 64, n = 64;
  bool init = false, reset = false, strided = false, fp16 = false;
  int head_splits = 1;
};

std::string describe(const Problem& c) {
  return subq::str("B", c.b, " H", c.h, " G", c.g, " T", c.t, " P", c.p, " N", c.n, c.init ? " init" : "",
                   c.reset ? " reset" : "", c.strided ? " strided" : "", c.fp16 ? " fp16" : " bf16", " splits ",
                   c.head_splits);
}

struct Out {
  Tensor y, final_state, dx, ddt, dA, dB, dC, dD, dh0;
};

// The forward and backward of ssd_cuda with emulated kernels; x/B/C/dy in T's dtype, the rest fp32.
template <typename T, int N>
Out run_emulated(const Problem& c, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                 const Tensor& C, const Tensor& D, const Tensor& h0, const Tensor& reset, const Tensor& dy,
                 const Tensor& dfinal, emu::Options opt) {
  const auto dtype = std::is_same_v<T, __half> ? torch::kFloat16 : torch::kBFloat16;
  SsdSizes n;
  n.batch = static_cast<int>(c.b);
  n.heads = static_cast<int>(c.h);
  n.groups = static_cast<int>(c.g);
  n.time = static_cast<int>(c.t);
  n.head_dim = static_cast<int>(c.p);
  n.state_dim = static_cast<int>(c.n);
  n.chunks = static_cast<int>((c.t + 63) / 64);
  const Tensor rst = reset.defined() ? reset.to(torch::kInt32).contiguous() : Tensor();
  Out o;
  Tensor states = nan_like({c.b, c.h, n.chunks, c.p, c.n}, dtype);
  o.final_state = nan_like({c.b, c.h, c.p, c.n}, torch::kFloat32);
  o.y = nan_like({c.b, c.h, c.t, c.p}, dtype);

  subq::ops::detail::SsdScanArgs sa;
  sa.n = n;
  sa.u = rows_of(x);
  sa.v = rows_of(B);
  sa.dt = dt.data_ptr<float>();
  sa.dt_s0 = dt.stride(0);
  sa.dt_s1 = dt.stride(1);
  sa.dt_s2 = dt.stride(2);
  sa.A = A.data_ptr<float>();
  sa.reset = ptr_or_null<int>(rst);
  sa.s_in = ptr_or_null<float>(h0);
  sa.states = states.data_ptr();
  sa.s_out = o.final_state.data_ptr<float>();
  const dim3 scan_grid(static_cast<unsigned>((c.p / 64) * (c.n / 64)), static_cast<unsigned>(c.h),
                       static_cast<unsigned>(c.b));
  emu::launch(scan_grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::ssd_scan_kernel<T, false>(sa); }, opt);

  subq::ops::detail::SsdChunkFwdArgs fa;
  fa.n = n;
  fa.head_splits = c.head_splits;
  fa.x = rows_of(x);
  fa.dt = sa.dt;
  fa.dt_s0 = sa.dt_s0;
  fa.dt_s1 = sa.dt_s1;
  fa.dt_s2 = sa.dt_s2;
  fa.A = sa.A;
  fa.B = rows_of(B);
  fa.C = rows_of(C);
  fa.D = ptr_or_null<float>(D);
  fa.reset = sa.reset;
  fa.states = states.data_ptr();
  fa.y = o.y.data_ptr();
  const dim3 chunk_grid(static_cast<unsigned>(n.chunks), static_cast<unsigned>(c.g * c.head_splits),
                        static_cast<unsigned>(c.b));
  emu::launch(chunk_grid, dim3(k::kFwdThreads), sizeof(k::FwdSmem<T, N>), [&] { k::ssd_chunk_fwd_kernel<T, N>(fa); },
              opt);

  // backward
  Tensor dstates = nan_like({c.b, c.h, n.chunks, c.p, c.n}, dtype);
  o.dh0 = nan_like({c.b, c.h, c.p, c.n}, torch::kFloat32);
  subq::ops::detail::SsdScanArgs ra = sa;
  ra.reverse = true;
  ra.u = rows_of(dy);
  ra.v = rows_of(C);
  ra.s_in = dfinal.data_ptr<float>();
  ra.states = dstates.data_ptr();
  ra.s_out = o.dh0.data_ptr<float>();
  emu::launch(scan_grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::ssd_scan_kernel<T, true>(ra); }, opt);

  o.dx = nan_like({c.b, c.h, c.t, c.p}, dtype);
  o.ddt = nan_like({c.b, c.h, c.t}, torch::kFloat32);
  Tensor dB_part = nan_like({c.head_splits, c.b, c.g, c.t, c.n}, torch::kFloat32);
  Tensor dC_part = nan_like({c.head_splits, c.b, c.g, c.t, c.n}, torch::kFloat32);
  Tensor dA_part = nan_like({c.b, c.h, n.chunks}, torch::kFloat32);
  Tensor dD_part = nan_like({c.b, c.h, n.chunks}, torch::kFloat32);
  subq::ops::detail::SsdChunkBwdArgs ba;
  ba.n = n;
  ba.head_splits = c.head_splits;
  ba.x = rows_of(x);
  ba.dy = rows_of(dy);
  ba.dt = sa.dt;
  ba.dt_s0 = sa.dt_s0;
  ba.dt_s1 = sa.dt_s1;
  ba.dt_s2 = sa.dt_s2;
  ba.A = sa.A;
  ba.B = rows_of(B);
  ba.C = rows_of(C);
  ba.D = ptr_or_null<float>(D);
  ba.reset = sa.reset;
  ba.states = states.data_ptr();
  ba.dstates = dstates.data_ptr();
  ba.dx = o.dx.data_ptr();
  ba.ddt = o.ddt.data_ptr<float>();
  ba.dB_part = dB_part.data_ptr<float>();
  ba.dC_part = dC_part.data_ptr<float>();
  ba.dA_part = dA_part.data_ptr<float>();
  ba.dD_part = dD_part.data_ptr<float>();
  emu::launch(chunk_grid, dim3(k::kBwdThreads), sizeof(k::BwdSmem<T, N>), [&] { k::ssd_chunk_bwd_kernel<T, N>(ba); },
              opt);
  o.dB = dB_part.sum(0);
  o.dC = dC_part.sum(0);
  o.dA = dA_part.sum(std::vector<int64_t>{0, 2});
  o.dD = dD_part.sum(std::vector<int64_t>{0, 2});
  return o;
}

void check_problem(const Problem& c, uint64_t seed) {
  INFO(describe(c));
  using subq::test::randn;
  // inputs (16-bit x/B/C: both sides use the same rounded values)
  const auto dtype = c.fp16 ? torch::kFloat16 : torch::kBFloat16;
  Tensor x = randn({c.b, c.h, c.t, c.p}, seed + 1).to(dtype);
  Tensor B = randn({c.b, c.g, c.t, c.n}, seed + 2).to(dtype);
  const Tensor C = randn({c.b, c.g, c.t, c.n}, seed + 3).to(dtype);
  Tensor dt = torch::softplus(randn({c.b, c.h, c.t}, seed + 4) * 0.5 - 1.5).to(torch::kFloat32);
  const Tensor A = (-(0.05 + randn({c.h}, seed + 5).abs().clamp_max(2.0) * 0.5)).to(torch::kFloat32);
  const Tensor D = randn({c.h}, seed + 6).to(torch::kFloat32);
  const Tensor h0 = c.init ? randn({c.b, c.h, c.p, c.n}, seed + 7).to(torch::kFloat32) : Tensor();
  Tensor reset;
  if (c.reset) {
    reset = subq::test::rand_mask({c.b, c.t}, seed + 8, 0.03);
    auto a = reset.accessor<bool, 2>();
    for (int64_t pos : {int64_t{63}, int64_t{64}, int64_t{100}})
      if (pos < c.t) a[0][pos] = true;
    if (c.b > 1) a[1][0] = true;
  }
  const Tensor dy = randn({c.b, c.h, c.t, c.p}, seed + 9).to(dtype);
  const Tensor dfinal = randn({c.b, c.h, c.p, c.n}, seed + 10).to(torch::kFloat32);
  if (c.strided) {  // [B, T, H, P] storage seen as [B, H, T, P], as the Mamba-2 mixer passes it
    x = x.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    B = B.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    dt = dt.transpose(1, 2).contiguous().transpose(1, 2);
    REQUIRE(!x.is_contiguous());
  }

  // reference: fp32 chunkwise + autograd on the same values
  std::vector<Tensor> leaves = {x.to(torch::kFloat32), dt, A, B.to(torch::kFloat32), C.to(torch::kFloat32), D};
  if (c.init) leaves.push_back(h0);
  for (auto& t : leaves) t = t.detach().clone().requires_grad_(true);
  const auto ref = subq::ops::ssd_chunkwise(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                            c.init ? leaves[6] : Tensor(), reset, 64);
  const Tensor loss = (ref.y * dy.to(torch::kFloat32)).sum() + (ref.final_state * dfinal).sum();
  const auto gr = torch::autograd::grad({loss}, leaves);

  for (int mode = 0; mode < 2; ++mode) {
    emu::Options opt;
    opt.order = mode == 0 ? emu::Order::kAscending : emu::Order::kDescending;
    opt.copies = mode == 0 ? emu::Copies::kAtIssue : emu::Copies::kAtWait;
    INFO("emulation mode " << mode << (mode == 0 ? " (ascending, copies at issue)" : " (descending, copies at wait)"));
    Out o;
    if (c.fp16)
      o = c.n == 64 ? run_emulated<__half, 64>(c, x, dt, A, B, C, D, h0, reset, dy, dfinal, opt)
                    : run_emulated<__half, 128>(c, x, dt, A, B, C, D, h0, reset, dy, dfinal, opt);
    else
      o = c.n == 64 ? run_emulated<__nv_bfloat16, 64>(c, x, dt, A, B, C, D, h0, reset, dy, dfinal, opt)
                    : run_emulated<__nv_bfloat16, 128>(c, x, dt, A, B, C, D, h0, reset, dy, dfinal, opt);
    std::string line;
    auto cmp = [&](const char* name, const Tensor& got, const Tensor& want, double tol) {
      const double e = subq::test::rel_rms(got, want);
      line += subq::str(" ", name, " ", e);
      INFO(name << ": relative RMS error " << e << " (tolerance " << tol << ")");
      CHECK(e < tol);
    };
    cmp("y", o.y, ref.y, 5e-3);
    cmp("final", o.final_state, ref.final_state, 5e-3);
    cmp("dx", o.dx, gr[0], 1e-2);
    cmp("ddt", o.ddt, gr[1], 1e-2);
    cmp("dA", o.dA, gr[2], 1e-2);
    cmp("dB", o.dB, gr[3], 1e-2);
    cmp("dC", o.dC, gr[4], 1e-2);
    cmp("dD", o.dD, gr[5], 1e-2);
    if (c.init) cmp("dh0", o.dh0, gr[6], 1e-2);
    std::printf("[ssd-emulated] %s mode %d:%s\n", describe(c).c_str(), mode, line.c_str());
    std::fflush(stdout);
  }
}

}  // namespace

TEST_CASE("SSD kernels (CPU emulation): scan, forward, backward match the reference", "[ops][ssd][kernels]") {
  Problem a;  // 3 chunks, ragged, P = N = 64
  check_problem(a, 100);
  Problem b;  // resets, initial state, 2 groups x 2 heads, 2 head splits, strided x/B/dt, batch 2
  b.b = 2;
  b.h = 4;
  b.g = 2;
  b.t = 100;
  b.init = b.reset = b.strided = true;
  b.head_splits = 2;
  check_problem(b, 200);
  Problem c;  // P = N = 128: two head-dim slices per head, N = 128 tiles
  c.h = 1;
  c.t = 70;
  c.p = 128;
  c.n = 128;
  c.init = c.reset = true;
  check_problem(c, 300);
  Problem d;  // T = 1, N = 128, batch 2 (row 1 starts with a reset and drops its initial state)
  d.b = 2;
  d.t = 1;
  d.n = 128;
  d.init = d.reset = true;
  check_problem(d, 400);
  Problem e;  // exactly one chunk, P = 128 with N = 64, G = 2, fp16
  e.h = 2;
  e.g = 2;
  e.t = 64;
  e.p = 128;
  e.fp16 = e.init = true;
  check_problem(e, 500);
}

TEST_CASE("SSD decode-step kernel (CPU emulation) matches ssd_step", "[ops][ssd][kernels]") {
  namespace k = subq::ops::detail::ssd_kernels;
  using subq::test::randn;
  const int64_t bs = 2, H = 4, G = 2, P = 40, N = 36;
  const Tensor x = randn({bs, H, P}, 1).to(torch::kBFloat16), dt = torch::softplus(randn({bs, H}, 2)).to(torch::kFloat32);
  const Tensor A = -randn({H}, 3).abs().to(torch::kFloat32), D = randn({H}, 4).to(torch::kFloat32);
  const Tensor B = randn({bs, G, N}, 5).to(torch::kBFloat16), C = randn({bs, G, N}, 6).to(torch::kBFloat16);
  const Tensor s = randn({bs, H, P, N}, 7).to(torch::kFloat32);
  Tensor y = nan_like({bs, H, P}, torch::kBFloat16), s_out = nan_like({bs, H, P, N}, torch::kFloat32);
  subq::ops::detail::SsdStepArgs a;
  a.batch = bs;
  a.heads = H;
  a.groups = G;
  a.head_dim = P;
  a.state_dim = N;
  a.x = x.data_ptr();
  a.dt = dt.data_ptr<float>();
  a.A = A.data_ptr<float>();
  a.B = B.data_ptr();
  a.C = C.data_ptr();
  a.D = D.data_ptr<float>();
  a.state = s.data_ptr<float>();
  a.y = y.data_ptr();
  a.state_out = s_out.data_ptr<float>();
  emu::launch(dim3(static_cast<unsigned>(bs * H), static_cast<unsigned>((P + k::kRowsPerBlock - 1) / k::kRowsPerBlock)),
              dim3(k::kStepThreads), 0, [&] { k::ssd_step_kernel<__nv_bfloat16>(a); });
  const auto ref = subq::ops::ssd_step(x, dt, A, B, C, D, s);
  CHECK(subq::test::rel_rms(s_out, ref.final_state) < 1e-6);
  CHECK(subq::test::rel_rms(y, ref.y) < 5e-3);
}

namespace {

// The launchers of src/ops/ssd/ssd_cuda_*.cu with emu::launch in place of <<<...>>> (same grids, blocks and
// shared-memory sizes), so that the Torch-side glue of ssd_cuda.cpp runs end to end on CPU tensors.
int g_sm_count = 1000;  // large: head_splits() then splits every group's heads as far as it can
emu::Options g_opt;

template <typename T>
void emu_scan_t(const subq::ops::detail::SsdScanArgs& a) {
  const dim3 grid(static_cast<unsigned>((a.n.head_dim / 64) * (a.n.state_dim / 64)), static_cast<unsigned>(a.n.heads),
                  static_cast<unsigned>(a.n.batch));
  if (a.reverse)
    emu::launch(grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::ssd_scan_kernel<T, true>(a); }, g_opt);
  else
    emu::launch(grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::ssd_scan_kernel<T, false>(a); }, g_opt);
}
template <typename T, int N>
void emu_fwd_t(const subq::ops::detail::SsdChunkFwdArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.groups * a.head_splits),
                  static_cast<unsigned>(a.n.batch));
  emu::launch(grid, dim3(k::kFwdThreads), sizeof(k::FwdSmem<T, N>), [&] { k::ssd_chunk_fwd_kernel<T, N>(a); }, g_opt);
}
template <typename T, int N>
void emu_bwd_t(const subq::ops::detail::SsdChunkBwdArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.groups * a.head_splits),
                  static_cast<unsigned>(a.n.batch));
  emu::launch(grid, dim3(k::kBwdThreads), sizeof(k::BwdSmem<T, N>), [&] { k::ssd_chunk_bwd_kernel<T, N>(a); }, g_opt);
}
using subq::ops::detail::SsdKernelDtype;
void emu_scan(const subq::ops::detail::SsdScanArgs& a, SsdKernelDtype d, void*) {
  if (d == SsdKernelDtype::kF16)
    emu_scan_t<__half>(a);
  else
    emu_scan_t<__nv_bfloat16>(a);
}
void emu_fwd(const subq::ops::detail::SsdChunkFwdArgs& a, SsdKernelDtype d, void*) {
  if (d == SsdKernelDtype::kF16)
    a.n.state_dim == 64 ? emu_fwd_t<__half, 64>(a) : emu_fwd_t<__half, 128>(a);
  else
    a.n.state_dim == 64 ? emu_fwd_t<__nv_bfloat16, 64>(a) : emu_fwd_t<__nv_bfloat16, 128>(a);
}
void emu_bwd(const subq::ops::detail::SsdChunkBwdArgs& a, SsdKernelDtype d, void*) {
  if (d == SsdKernelDtype::kF16)
    a.n.state_dim == 64 ? emu_bwd_t<__half, 64>(a) : emu_bwd_t<__half, 128>(a);
  else
    a.n.state_dim == 64 ? emu_bwd_t<__nv_bfloat16, 64>(a) : emu_bwd_t<__nv_bfloat16, 128>(a);
}
int emu_sm_count(int) { return g_sm_count; }
const subq::ops::detail::SsdLaunchers kEmulated = {emu_scan, emu_fwd, emu_bwd, emu_sm_count};

}  // namespace

// ssd_cuda()'s autograd function (placeholders for absent optional tensors, argument preparation, saved
// tensors, the backward's assembly and dtype conversions, head-split sums) on CPU tensors, with the
// emulated kernels behind it. The first case is the one that failed on the H200 in v1: D, the initial
// state and reset all absent.
TEST_CASE("SSD kernels' autograd glue (CPU tensors, emulated kernels) matches the reference", "[ops][ssd][kernels]") {
  using subq::test::randn;
  struct GlueCase {
    int64_t b, h, g, t, p, n;
    bool D, init, reset, use_final, strided;
    torch::ScalarType dt_dtype;
    int sm_count;
  };
  const std::vector<GlueCase> cases = {
      {1, 2, 1, 100, 64, 64, false, false, false, false, true, torch::kFloat32, 1000},  // nothing optional, y only
      {2, 4, 2, 70, 64, 128, true, true, true, true, false, torch::kBFloat16, 1},     // everything, bf16 dt, 1 split
  };
  uint64_t seed = 7000;
  for (const auto& c : cases) {
    seed += 100;
    g_sm_count = c.sm_count;
    INFO("B" << c.b << " H" << c.h << " G" << c.g << " T" << c.t << " P" << c.p << " N" << c.n << (c.D ? " D" : "")
              << (c.init ? " init" : "") << (c.reset ? " reset" : "") << (c.use_final ? " final" : "")
              << (c.strided ? " strided" : "") << " dt " << c10::toString(c.dt_dtype));
    Tensor x = randn({c.b, c.h, c.t, c.p}, seed + 1).to(torch::kBFloat16);
    if (c.strided) x = x.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    const Tensor B = randn({c.b, c.g, c.t, c.n}, seed + 2).to(torch::kBFloat16);
    const Tensor C = randn({c.b, c.g, c.t, c.n}, seed + 3).to(torch::kBFloat16);
    const Tensor dt = torch::softplus(randn({c.b, c.h, c.t}, seed + 4) * 0.5 - 1.5).to(c.dt_dtype);
    const Tensor A = (-(0.05 + randn({c.h}, seed + 5).abs().clamp_max(2.0) * 0.5)).to(torch::kFloat32);
    const Tensor D = c.D ? randn({c.h}, seed + 6).to(torch::kFloat32) : Tensor();
    const Tensor h0 = c.init ? randn({c.b, c.h, c.p, c.n}, seed + 7).to(torch::kFloat32) : Tensor();
    const Tensor reset = c.reset ? subq::test::rand_mask({c.b, c.t}, seed + 8, 0.05) : Tensor();
    const Tensor Wy = randn({c.b, c.h, c.t, c.p}, seed + 9).to(torch::kBFloat16).to(torch::kFloat32);
    const Tensor Wf = randn({c.b, c.h, c.p, c.n}, seed + 10).to(torch::kFloat32);

    std::vector<Tensor> k_leaves = {x, dt, A, B, C};
    std::vector<Tensor> r_leaves = {x.to(torch::kFloat32), dt.to(torch::kFloat32), A, B.to(torch::kFloat32),
                                    C.to(torch::kFloat32)};
    std::vector<std::string> names = {"dx", "ddt", "dA", "dB", "dC"};
    if (c.D) {
      k_leaves.push_back(D);
      r_leaves.push_back(D);
      names.push_back("dD");
    }
    if (c.init) {
      k_leaves.push_back(h0);
      r_leaves.push_back(h0);
      names.push_back("dh0");
    }
    for (auto& t : k_leaves) t = t.detach().clone(at::MemoryFormat::Preserve).requires_grad_(true);
    for (auto& t : r_leaves) t = t.detach().clone().requires_grad_(true);
    const Tensor kD = c.D ? k_leaves[5] : Tensor(), kh0 = c.init ? k_leaves.back() : Tensor();
    const Tensor rD = c.D ? r_leaves[5] : Tensor(), rh0 = c.init ? r_leaves.back() : Tensor();
    auto [y, fin] = subq::ops::detail::ssd_kernels_autograd(kEmulated, k_leaves[0], k_leaves[1], k_leaves[2],
                                                            k_leaves[3], k_leaves[4], kD, kh0, reset);
    const auto ref = subq::ops::ssd_chunkwise(r_leaves[0], r_leaves[1], r_leaves[2], r_leaves[3], r_leaves[4], rD, rh0,
                                              reset, 64);
    REQUIRE(y.scalar_type() == torch::kBFloat16);
    CHECK(subq::test::rel_rms(y, ref.y) < 5e-3);
    CHECK(subq::test::rel_rms(fin, ref.final_state) < 5e-3);
    Tensor lk = (y.to(torch::kFloat32) * Wy).sum(), lr = (ref.y * Wy).sum();
    if (c.use_final) {
      lk = lk + (fin * Wf).sum();
      lr = lr + (ref.final_state * Wf).sum();
    }
    const auto gk = torch::autograd::grad({lk}, k_leaves);
    const auto gr = torch::autograd::grad({lr}, r_leaves);
    std::string line;
    for (size_t i = 0; i < gk.size(); ++i) {
      INFO(names[i]);
      REQUIRE(gk[i].defined());
      CHECK(gk[i].scalar_type() == k_leaves[i].scalar_type());
      const double e = subq::test::rel_rms(gk[i], gr[i]);
      line += subq::str(" ", names[i], " ", e);
      CHECK(e < 1e-2);
    }
    std::printf("[ssd-glue-emulated]%s\n", line.c_str());
    std::fflush(stdout);
  }
}

#else
TEST_CASE("SSD kernels (CPU emulation)", "[ops][ssd][kernels]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif
