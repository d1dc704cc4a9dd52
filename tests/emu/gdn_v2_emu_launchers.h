// gdn_v2_emu_launchers.h — the Gated DeltaNet v2 kernels' launchers for the CPU emulator (tests/emu/cuda_emu.h):
// the same grids, blocks and shared-memory sizes as src/ops/gated_delta/gdn_v2_{fwd,bwd}.cu, running the device
// code of gdn_v2_fwd.cuh / gdn_v2_bwd.cuh on the CPU. kEmulated is one launcher table with both halves (and v1's
// reverse scan and inverse, which the glue's fp32 path uses), so the Torch glue (detail::gated_delta_kernel_path,
// gated_delta_v2_forward, gated_delta_v2_backward) runs end to end on CPU tensors.
// Shared by tests/unit/test_gated_delta_v2_fwd_emulated.cpp and tests/unit/test_gated_delta_v2_bwd_emulated.cpp.
// Include after subq_catch.h, with SUBQ_WITH_CUDA defined (the emulator needs the CUDA headers).
//
// Every launcher pre-fills the outputs of its kernel with NaN (an element never written fails a comparison)
// and checks its arguments (no stream, a supported shape, bf16 / fp16 operands). g_opt sets the emulation
// mode (thread order, cp.async timing) of the launches that follow.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "ops/gated_delta/gated_delta_cuda_kernels.cuh"
#include "ops/gated_delta/gdn_v2_bwd.cuh"
#include "ops/gated_delta/gdn_v2_fwd.cuh"

namespace subq::test::gdn_v2_emu {

namespace d = subq::ops::detail;
namespace k1 = subq::ops::detail::gdn_kernels;
namespace kf = subq::ops::detail::gdn_v2;
namespace kb = subq::ops::detail::gdn_v2_bwd;

inline emu::Options g_opt;  // thread order / copy timing of the emulated v2 launches
inline int g_sm_count = 0;  // what the emulated table reports as the device's SM count (0: unknown)

inline void fill_nan32(float* p, int64_t n) { std::fill(p, p + n, std::numeric_limits<float>::quiet_NaN()); }
// NaN in the operand dtype (bf16 0x7fc0, fp16 0x7e00).
inline void fill_nan16(void* p, int64_t n, d::GdnKernelDtype dt) {
  const uint16_t bits = dt == d::GdnKernelDtype::kBF16 ? 0x7fc0 : 0x7e00;
  auto* q = static_cast<uint16_t*>(p);
  std::fill(q, q + n, bits);
}

// Runs F<T>(args) for the operand type of dt (bf16 / fp16); fp32 operands never reach v2.
template <typename F>
inline void by_type(d::GdnKernelDtype dt, F&& f) {
  if (dt == d::GdnKernelDtype::kBF16)
    f(__nv_bfloat16{});
  else if (dt == d::GdnKernelDtype::kF16)
    f(__half{});
  else
    throw std::runtime_error("emulated v2: fp32 operands");
}
// Runs f(std::integral_constant<int, DK>) for the key dim.
template <typename F>
inline void by_dk(int dk, F&& f) {
  switch (dk) {
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    case 256: f(std::integral_constant<int, 256>{}); break;
    default: throw std::runtime_error("emulated v2: bad Dk");
  }
}

// ---- forward (gdnfwd's kernels) ----
inline void check_fwd_args(const d::GdnV2FwdArgs& a, void* stream) {
  if (stream != nullptr) throw std::runtime_error("emulated launcher got a CUDA stream");
  if (a.value_dim % 32 != 0 || a.value_dim > 512) throw std::runtime_error("emulated v2: bad Dv");
  if (a.chunks != (a.time + 63) / 64) throw std::runtime_error("emulated v2: bad chunk count");
}
inline void v2_prep(const d::GdnV2FwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_fwd_args(a, stream);
  const int64_t bh = int64_t{a.batch} * a.heads;
  fill_nan32(a.tinv, bh * a.chunks * 64 * 64);
  fill_nan16(a.w, bh * a.time * a.key_dim, dt);
  fill_nan16(a.u_tilde, bh * a.time * a.value_dim, dt);
  by_type(dt, [&](auto tag) {
    using T = decltype(tag);
    by_dk(a.key_dim, [&](auto dk) {
      constexpr int DK = decltype(dk)::value;
      emu::launch(dim3(static_cast<unsigned>(a.chunks), static_cast<unsigned>(bh)), dim3(kf::kPrepThreads),
                  kf::PrepLayout<T, DK>(a.value_dim).total, [&] { kf::gdn_v2_prep_fwd_kernel<T, DK>(a); }, g_opt);
    });
  });
}
inline void v2_scan(const d::GdnV2FwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_fwd_args(a, stream);
  const int64_t bh = int64_t{a.batch} * a.heads;
  fill_nan16(a.u, bh * a.time * a.value_dim, dt);
  fill_nan16(a.states, bh * a.chunks * a.value_dim * a.key_dim, dt);
  fill_nan32(a.s_out, bh * a.value_dim * a.key_dim);
  by_type(dt, [&](auto tag) {
    using T = decltype(tag);
    by_dk(a.key_dim, [&](auto dk) {
      constexpr int DK = decltype(dk)::value;
      emu::launch(dim3(static_cast<unsigned>(a.value_dim / kf::kScanRows), static_cast<unsigned>(bh)),
                  dim3(kf::kScanThreads), sizeof(kf::ScanSmem<T, DK>), [&] { kf::gdn_v2_scan_fwd_kernel<T, DK>(a); },
                  g_opt);
    });
  });
}
inline void v2_out(const d::GdnV2FwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_fwd_args(a, stream);
  const int64_t bh = int64_t{a.batch} * a.heads;
  fill_nan16(a.o, bh * a.time * a.value_dim, dt);
  const dim3 grid(static_cast<unsigned>(a.chunks), static_cast<unsigned>(bh));
  by_type(dt, [&](auto tag) {
    using T = decltype(tag);
    by_dk(a.key_dim, [&](auto dk) {
      constexpr int DK = decltype(dk)::value;
      if (a.value_dim % 64 == 0)
        emu::launch(grid, dim3(kf::kOutThreads), sizeof(kf::OutSmem<T, DK, 64>),
                    [&] { kf::gdn_v2_out_fwd_kernel<T, DK, 64>(a); }, g_opt);
      else
        emu::launch(grid, dim3(kf::kOutThreads), sizeof(kf::OutSmem<T, DK, 32>),
                    [&] { kf::gdn_v2_out_fwd_kernel<T, DK, 32>(a); }, g_opt);
    });
  });
}

// ---- backward (gdnbwd's kernels) ----
inline void check_bwd_args(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  if (stream != nullptr) throw std::runtime_error("emulated launcher got a CUDA stream");
  if (dt == d::GdnKernelDtype::kF32) throw std::runtime_error("emulated launcher: fp32 operands");
  const std::string e = d::gated_delta_kernel_shape_error(a.key_dim, a.value_dim, a.bh);
  if (!e.empty()) throw std::runtime_error("emulated launcher: " + e);
  if (a.chunks != (a.time + 63) / 64 || a.key_slices != a.key_dim / 64)
    throw std::runtime_error("emulated launcher: bad chunking");
  if (!d::gdn_v2_scan_bwd_rows_ok(a.key_dim, a.value_dim, a.scan_rows) || a.x_blocks != 2 * (a.value_dim / a.scan_rows))
    throw std::runtime_error("emulated launcher: bad scan_rows / x_blocks");
}
inline void v2_scan_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_bwd_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, nc = a.chunks, dk = a.key_dim, dv = a.value_dim;
  fill_nan16(a.dstates, bh * nc * dv * dk, dt);
  fill_nan16(a.du, bh * T * dv, dt);
  fill_nan32(a.ds0, bh * dv * dk);
  fill_nan32(a.x_part, int64_t{a.x_blocks} * bh * nc * 64);
  const int bv = a.scan_rows;
  by_type(dt, [&](auto tag) {
    using T_ = decltype(tag);
    by_dk(a.key_dim, [&](auto dkc) {
      constexpr int DK = decltype(dkc)::value;
      constexpr int WIDE = DK <= 128 ? 128 : 64;
      auto go = [&](auto bvc) {
        constexpr int BV = decltype(bvc)::value;
        emu::launch(dim3(static_cast<unsigned>(a.value_dim / BV), static_cast<unsigned>(a.bh)), dim3(kb::kThreads),
                    sizeof(kb::ScanSmemOf<T_, DK, BV>), [&] { kb::gdn_v2_scan_bwd_kernel<T_, DK, BV>(a); }, g_opt);
      };
      if (bv == WIDE)
        go(std::integral_constant<int, WIDE>{});
      else
        go(std::integral_constant<int, 32>{});
    });
  });
}
inline void v2_chunk_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_bwd_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, nc = a.chunks, dk = a.key_dim;
  fill_nan16(a.dq, bh * T * dk, dt);
  fill_nan32(a.dk_part, bh * T * dk);
  fill_nan16(a.dw, bh * T * dk, dt);
  fill_nan32(a.dgc_part, a.key_slices * bh * nc * 64);
  by_type(dt, [&](auto tag) {
    using T_ = decltype(tag);
    emu::launch(dim3(static_cast<unsigned>(a.key_slices), static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh)),
                dim3(kb::kThreads), sizeof(kb::ChunkSmem<T_>), [&] { kb::gdn_v2_chunk_bwd_kernel<T_>(a); }, g_opt);
  });
}
inline void v2_wy_bwd(const d::GdnV2BwdArgs& a, d::GdnKernelDtype dt, void* stream) {
  check_bwd_args(a, dt, stream);
  const int64_t bh = a.bh, T = a.time, dk = a.key_dim, dv = a.value_dim;
  fill_nan16(a.dk, bh * T * dk, dt);
  fill_nan16(a.dv, bh * T * dv, dt);
  fill_nan32(a.dg, bh * T);
  fill_nan32(a.dbeta, bh * T);
  by_type(dt, [&](auto tag) {
    using T_ = decltype(tag);
    by_dk(a.key_dim, [&](auto dkc) {
      constexpr int DK = decltype(dkc)::value;
      emu::launch(dim3(static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh)), dim3(kb::kThreads),
                  sizeof(kb::WySmem<T_, DK>), [&] { kb::gdn_v2_wy_bwd_kernel<T_, DK>(a); }, g_opt);
    });
  });
}

// ---- v1 pieces the glue's fp32 path uses (reverse scan, inverse); v1's forward scan and the step never run
// in these tests ----
inline void v1_scan_bwd(const d::GdnScanBwdArgs& a, void*) {
  const auto& n = a.n;
  const int64_t tiles = n.value_dim / k1::kRows, rows = int64_t{n.bh} * n.chunks * n.chunk;
  fill_nan32(a.du_tilde, rows * n.value_dim);
  fill_nan32(a.dw_part, tiles * rows * n.key_dim);
  fill_nan32(a.dk_end_part, tiles * rows * n.key_dim);
  fill_nan32(a.dgamma_part, tiles * n.bh * n.chunks);
  fill_nan32(a.ds0, int64_t{n.bh} * n.value_dim * n.key_dim);
  by_dk(n.key_dim, [&](auto dkc) {
    constexpr int DK = decltype(dkc)::value;
    emu::launch(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(n.bh)), dim3(k1::kThreads),
                k1::scan_bwd_smem<DK>(), [&] { k1::gdn_scan_bwd_kernel<DK>(a); }, emu::Options{});
  });
}
inline void v1_inverse(const d::GdnInverseArgs& a, void*) {
  fill_nan32(a.t, int64_t{a.count} * a.chunk * a.chunk);
  emu::launch(dim3(static_cast<unsigned>(a.count)), dim3(k1::kInvThreads), k1::kInvSmem,
              [&] { k1::gdn_inverse_kernel(a); }, emu::Options{});
}
inline void v1_scan_fwd_unused(const d::GdnScanFwdArgs&, void*) {
  throw std::runtime_error("emulated table: the v1 forward scan is not emulated here");
}
inline void step_unused(const d::GdnStepArgs&, d::GdnKernelDtype, void*) {
  throw std::runtime_error("emulated table: the decode step is not emulated here");
}
inline std::string no_device_error(int) { return ""; }

inline d::GatedDeltaLaunchers make_table() {
  d::GatedDeltaLaunchers t;
  t.built = true;
  t.device_error = &no_device_error;
  t.scan_fwd = &v1_scan_fwd_unused;
  t.scan_bwd = &v1_scan_bwd;
  t.step = &step_unused;
  t.unit_lower_inverse = &v1_inverse;
  t.v2_prep_fwd = &v2_prep;
  t.v2_scan_fwd = &v2_scan;
  t.v2_out_fwd = &v2_out;
  t.v2_scan_bwd = &v2_scan_bwd;
  t.v2_chunk_bwd = &v2_chunk_bwd;
  t.v2_wy_bwd = &v2_wy_bwd;
  t.v2_sm_count = [](int) { return g_sm_count; };
  return t;
}
inline const d::GatedDeltaLaunchers kEmulated = make_table();

}  // namespace subq::test::gdn_v2_emu
