// gdn_v2_bwd.cu — launchers of the Gated DeltaNet v2 backward (device code in gdn_v2_bwd.cuh; design and
// numbers in docs/perf/gated_delta.md "Version 2 backward"), and their entries in the launcher table.
//
// Three kernels, launched in order by detail::gated_delta_v2_backward (gated_delta_v2_bwd.cpp):
//   scan_bwd  grid (Dv / BV, B*H), 256 threads: the reverse scan over chunks carrying G = dL/dS_{c+1} in
//             mma accumulators (fp32); writes dstates (G per chunk, operand dtype), du and ds0.
//   chunk_bwd grid (Dk / 64, nc, B*H), 256 threads (the key slices of a chunk adjacent: they share dO,
//             U, dU through L2): the chunk-parallel output / state terms (dq final,
//             dk_part, dw, per-key-slice dgc partials).
//   wy_bwd    grid (nc, B*H), 256 threads: the UT transform's backward, the decay chain and the reverse
//             in-chunk cumsum (dk, dv, dg, dbeta final).
// Decisions:
//  * No atomics: every output element has one writer; partials over key slices (dgc) are summed by the
//    next kernel in a fixed order, so results are deterministic.
//  * scan_bwd's value tile BV is 128 for Dk <= 128 (one block per (b, h) at Dv = 128: the target shape's
//    128 blocks fit one wave on 132 SMs) and 64 for Dk = 256, falling back to 32 when BV does not divide
//    Dv; its next chunk's tiles are prefetched with cp.async where two stages fit shared memory (Dk <= 128),
//    else loaded after the step (Dk = 256).
//  * Shared memory above 48 KB is opted into per instantiation.
#include <cuda_runtime.h>

#include "ops/common/cuda_device.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gdn_v2_bwd.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace gdn_v2_bwd;

template <typename K>
void opt_in(K kernel, size_t smem) {
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
}

void check_args(const GdnV2BwdArgs& a, const char* what) {
  SUBQ_CHECK(a.key_dim == 64 || a.key_dim == 128 || a.key_dim == 256, "gated_delta v2 ", what, ": Dk = ", a.key_dim,
             " must be 64, 128 or 256");
  SUBQ_CHECK(a.value_dim >= kVTile && a.value_dim % kVTile == 0, "gated_delta v2 ", what, ": Dv = ", a.value_dim,
             " must be a positive multiple of 32");
  SUBQ_CHECK(a.bh >= 1 && a.bh <= 65535 && a.heads >= 1 && a.bh % a.heads == 0, "gated_delta v2 ", what,
             ": bad B * H = ", a.bh);
  SUBQ_CHECK(a.time >= 1 && a.chunks == (a.time + kChunk - 1) / kChunk && a.chunks <= 65535, "gated_delta v2 ", what,
             ": bad chunking (T = ", a.time, ", at most 65535 chunks of 64)");
  SUBQ_CHECK(a.key_slices == a.key_dim / kKSlice, "gated_delta v2 ", what, ": key_slices must be Dk / 64");
  SUBQ_CHECK(gdn_v2_scan_bwd_rows_ok(a.key_dim, a.value_dim, a.scan_rows) && a.x_blocks == 2 * (a.value_dim / a.scan_rows),
             "gated_delta v2 ", what, ": scan_rows = ", a.scan_rows, ", x_blocks = ", a.x_blocks,
             " do not match a scan_bwd tile for Dk = ", a.key_dim, ", Dv = ", a.value_dim);
}

template <typename T, int DK, int BV>
void launch_scan(const GdnV2BwdArgs& a, cudaStream_t s) {
  constexpr size_t smem = sizeof(ScanSmemOf<T, DK, BV>);
  static_assert(smem <= kSmemLimit, "scan_bwd tiles do not fit in shared memory");
  auto kernel = gdn_v2_scan_bwd_kernel<T, DK, BV>;
  opt_in(kernel, smem);
  const dim3 grid(static_cast<unsigned>(a.value_dim / BV), static_cast<unsigned>(a.bh));
  kernel<<<grid, kThreads, smem, s>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void scan_t(const GdnV2BwdArgs& a, cudaStream_t s) {
  const int bv = a.scan_rows;
  switch (a.key_dim) {
    case 64: bv == 128 ? launch_scan<T, 64, 128>(a, s) : launch_scan<T, 64, 32>(a, s); break;
    case 128: bv == 128 ? launch_scan<T, 128, 128>(a, s) : launch_scan<T, 128, 32>(a, s); break;
    default: bv == 64 ? launch_scan<T, 256, 64>(a, s) : launch_scan<T, 256, 32>(a, s); break;
  }
}

template <typename T>
void chunk_t(const GdnV2BwdArgs& a, cudaStream_t s) {
  constexpr size_t smem = sizeof(ChunkSmem<T>);
  static_assert(smem <= kSmemLimit, "chunk_bwd tiles do not fit in shared memory");
  auto kernel = gdn_v2_chunk_bwd_kernel<T>;
  opt_in(kernel, smem);
  const dim3 grid(static_cast<unsigned>(a.key_slices), static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh));
  kernel<<<grid, kThreads, smem, s>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int DK>
void launch_wy(const GdnV2BwdArgs& a, cudaStream_t s) {
  constexpr size_t smem = sizeof(WySmem<T, DK>);
  static_assert(smem <= kSmemLimit, "wy_bwd tiles do not fit in shared memory");
  auto kernel = gdn_v2_wy_bwd_kernel<T, DK>;
  opt_in(kernel, smem);
  const dim3 grid(static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.bh));
  kernel<<<grid, kThreads, smem, s>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void wy_t(const GdnV2BwdArgs& a, cudaStream_t s) {
  switch (a.key_dim) {
    case 64: launch_wy<T, 64>(a, s); break;
    case 128: launch_wy<T, 128>(a, s); break;
    default: launch_wy<T, 256>(a, s); break;
  }
}

template <template <typename> class F>
void by_dtype(const GdnV2BwdArgs& a, GdnKernelDtype dtype, void* stream, const char* what) {
  check_args(a, what);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case GdnKernelDtype::kBF16: F<__nv_bfloat16>::run(a, s); break;
    case GdnKernelDtype::kF16: F<__half>::run(a, s); break;
    default: SUBQ_CHECK(false, "gated_delta v2 ", what, ": operand dtype must be bf16 or fp16");
  }
}

template <typename T>
struct ScanF {
  static void run(const GdnV2BwdArgs& a, cudaStream_t s) { scan_t<T>(a, s); }
};
template <typename T>
struct ChunkF {
  static void run(const GdnV2BwdArgs& a, cudaStream_t s) { chunk_t<T>(a, s); }
};
template <typename T>
struct WyF {
  static void run(const GdnV2BwdArgs& a, cudaStream_t s) { wy_t<T>(a, s); }
};

void v2_scan_bwd(const GdnV2BwdArgs& a, GdnKernelDtype dtype, void* stream) { by_dtype<ScanF>(a, dtype, stream, "scan_bwd"); }
void v2_chunk_bwd(const GdnV2BwdArgs& a, GdnKernelDtype dtype, void* stream) {
  by_dtype<ChunkF>(a, dtype, stream, "chunk_bwd");
}
void v2_wy_bwd(const GdnV2BwdArgs& a, GdnKernelDtype dtype, void* stream) { by_dtype<WyF>(a, dtype, stream, "wy_bwd"); }

}  // namespace

void set_gdn_v2_bwd_launchers(GatedDeltaLaunchers& t) {
  t.v2_sm_count = &multiprocessor_count;
  t.v2_scan_bwd = &v2_scan_bwd;
  t.v2_chunk_bwd = &v2_chunk_bwd;
  t.v2_wy_bwd = &v2_wy_bwd;
}

}  // namespace subq::ops::detail
