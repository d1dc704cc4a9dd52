// gdn_v2_fwd.cu — launchers of the fused Gated DeltaNet forward (v2; device code and design in
// gdn_v2_fwd.cuh, host interface GdnV2FwdArgs in gated_delta_cuda.h). The production launcher table in
// gated_delta_cuda.cu points at these.
//
// Decisions:
//  * Instantiated for bf16 and fp16 operands and Dk = 64, 128, 256 (the state fragment and the key tiles are
//    compile-time sized); Dv is runtime (a multiple of 32, at most 512) except in out_fwd, which takes value
//    slices of 64 when Dv is a multiple of 64, else of 32.
//  * Shared memory above 48 KB is opted into per instantiation; prep's depends on Dv (the V tile).
#include <cuda_runtime.h>

#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gdn_v2_fwd.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace gdn_v2;

void check_args(const GdnV2FwdArgs& a, const char* what) {
  SUBQ_CHECK(a.key_dim == 64 || a.key_dim == 128 || a.key_dim == 256, "gated_delta v2 ", what, ": Dk = ", a.key_dim,
             " must be 64, 128 or 256");
  SUBQ_CHECK(a.value_dim >= 32 && a.value_dim <= 512 && a.value_dim % 32 == 0, "gated_delta v2 ", what, ": Dv = ",
             a.value_dim, " must be a multiple of 32 in [32, 512]");
  SUBQ_CHECK(a.time >= 1 && a.chunks == (a.time + kChunk - 1) / kChunk, "gated_delta v2 ", what, ": bad chunk count");
  SUBQ_CHECK(a.batch >= 1 && a.heads >= 1 && int64_t{a.batch} * a.heads <= 65535,
             "gated_delta v2 ", what, ": B * H = ", int64_t{a.batch} * a.heads, " must be in [1, 65535]");
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  SUBQ_CHECK(bytes <= 227 * 1024, "gated_delta v2: ", bytes, " bytes of shared memory do not fit");
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename T, int DK>
void launch_prep(const GdnV2FwdArgs& a, cudaStream_t stream) {
  const size_t smem = PrepLayout<T, DK>(a.value_dim).total;
  auto kernel = gdn_v2_prep_fwd_kernel<T, DK>;
  set_smem(kernel, smem);
  kernel<<<dim3(static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.batch * a.heads)), kPrepThreads, smem,
           stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int DK>
void launch_scan(const GdnV2FwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = sizeof(ScanSmem<T, DK>);
  auto kernel = gdn_v2_scan_fwd_kernel<T, DK>;
  set_smem(kernel, smem);
  kernel<<<dim3(static_cast<unsigned>(a.value_dim / kScanRows), static_cast<unsigned>(a.batch * a.heads)),
           kScanThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int DK, int SL>
void launch_out(const GdnV2FwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = sizeof(OutSmem<T, DK, SL>);
  auto kernel = gdn_v2_out_fwd_kernel<T, DK, SL>;
  set_smem(kernel, smem);
  kernel<<<dim3(static_cast<unsigned>(a.chunks), static_cast<unsigned>(a.batch * a.heads)), kOutThreads, smem,
           stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int DK>
void launch_out_sl(const GdnV2FwdArgs& a, cudaStream_t stream) {
  if (a.value_dim % 64 == 0)
    launch_out<T, DK, 64>(a, stream);
  else
    launch_out<T, DK, 32>(a, stream);
}

// Calls F<T, DK>::run for the operand dtype and key dim of a.
template <template <typename, int> class F>
void by_type_dk(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream, const char* what) {
  check_args(a, what);
  auto s = static_cast<cudaStream_t>(stream);
  auto go = [&](auto tag) {
    using T = decltype(tag);
    switch (a.key_dim) {
      case 64: F<T, 64>::run(a, s); break;
      case 128: F<T, 128>::run(a, s); break;
      default: F<T, 256>::run(a, s); break;
    }
  };
  switch (dtype) {
    case GdnKernelDtype::kBF16: go(__nv_bfloat16{}); break;
    case GdnKernelDtype::kF16: go(__half{}); break;
    default: SUBQ_CHECK(false, "gated_delta v2 ", what, ": operands must be bf16 or fp16");
  }
}

template <typename T, int DK>
struct Prep {
  static void run(const GdnV2FwdArgs& a, cudaStream_t s) { launch_prep<T, DK>(a, s); }
};
template <typename T, int DK>
struct Scan {
  static void run(const GdnV2FwdArgs& a, cudaStream_t s) { launch_scan<T, DK>(a, s); }
};
template <typename T, int DK>
struct Out {
  static void run(const GdnV2FwdArgs& a, cudaStream_t s) { launch_out_sl<T, DK>(a, s); }
};

}  // namespace

void gdn_v2_prep_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream) {
  by_type_dk<Prep>(a, dtype, stream, "prep_fwd");
}
void gdn_v2_scan_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream) {
  by_type_dk<Scan>(a, dtype, stream, "scan_fwd");
}
void gdn_v2_out_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream) {
  by_type_dk<Out>(a, dtype, stream, "out_fwd");
}

}  // namespace subq::ops::detail
