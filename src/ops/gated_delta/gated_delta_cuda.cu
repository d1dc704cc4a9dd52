// gated_delta_cuda.cu — launchers of the Gated DeltaNet kernels (device code in
// gated_delta_cuda_kernels.cuh) and the production launcher table of gated_delta_cuda.h.
//
// Decisions:
//  * The scans are instantiated for Dk = 64, 128, 256 (the state tile lives in registers, so Dk is a
//    template parameter); Dv is any multiple of 32 (one block per 32 value rows).
//  * Shared memory above 48 KB is opted into per instantiation (the Dk = 256 reverse scan takes ~146 KB).
//  * The device check reuses the SSD kernels' (same architecture requirement, same build flags) and adds a
//    probe of this file's kernel image.
#include <cuda_runtime.h>


#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_cuda_kernels.cuh"
#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace gdn_kernels;

template <int DK>
void launch_fwd(const GdnScanFwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = scan_fwd_smem<DK>();
  static_assert(smem <= 227 * 1024, "forward scan tile does not fit in shared memory");
  auto kernel = gdn_scan_fwd_kernel<DK>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.value_dim / kRows), static_cast<unsigned>(a.n.bh));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <int DK>
void launch_bwd(const GdnScanBwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = scan_bwd_smem<DK>();
  static_assert(smem <= 227 * 1024, "reverse scan tile does not fit in shared memory");
  auto kernel = gdn_scan_bwd_kernel<DK>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.value_dim / kRows), static_cast<unsigned>(a.n.bh));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

void check_sizes(const GdnScanSizes& n, const char* what) {
  SUBQ_CHECK(n.key_dim == 64 || n.key_dim == 128 || n.key_dim == 256, "gated_delta scan: ", what, ": Dk = ", n.key_dim,
             " must be 64, 128 or 256");
  SUBQ_CHECK(n.value_dim > 0 && n.value_dim % kRows == 0, "gated_delta scan: ", what, ": Dv = ", n.value_dim, " must be a multiple of 32");
  SUBQ_CHECK(n.chunk >= 1 && n.chunk <= kMaxC && n.chunks >= 1, "gated_delta scan: ", what, ": bad chunking");
  SUBQ_CHECK(n.bh >= 1 && n.bh <= 65535, "gated_delta scan: ", what, ": B * H = ", n.bh, " must be in [1, 65535]");
}

void scan_fwd(const GdnScanFwdArgs& a, void* stream) {
  check_sizes(a.n, "gated_delta scan_fwd");
  auto s = static_cast<cudaStream_t>(stream);
  switch (a.n.key_dim) {
    case 64: launch_fwd<64>(a, s); break;
    case 128: launch_fwd<128>(a, s); break;
    default: launch_fwd<256>(a, s); break;
  }
}

void scan_bwd(const GdnScanBwdArgs& a, void* stream) {
  check_sizes(a.n, "gated_delta scan_bwd");
  auto s = static_cast<cudaStream_t>(stream);
  switch (a.n.key_dim) {
    case 64: launch_bwd<64>(a, s); break;
    case 128: launch_bwd<128>(a, s); break;
    default: launch_bwd<256>(a, s); break;
  }
}

template <typename T>
void launch_step(const GdnStepArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.value_dim + kStepRows - 1) / kStepRows), static_cast<unsigned>(a.bh));
  gdn_step_kernel<T><<<grid, kStepThreads, 0, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

void step(const GdnStepArgs& a, GdnKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.bh >= 1 && a.bh <= 65535, "gated_delta step: B * H = ", a.bh, " must be in [1, 65535]");
  SUBQ_CHECK(a.key_dim >= 1 && a.value_dim >= 1, "gated_delta step: empty head");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case GdnKernelDtype::kBF16: launch_step<__nv_bfloat16>(a, s); break;
    case GdnKernelDtype::kF16: launch_step<__half>(a, s); break;
    case GdnKernelDtype::kF32: launch_step<float>(a, s); break;
  }
}

void unit_lower_inverse(const GdnInverseArgs& a, void* stream) {
  SUBQ_CHECK(a.chunk >= 1 && a.chunk <= kMaxC, "gated_delta inverse: C = ", a.chunk, " must be in [1, 64]");
  if (a.count == 0) return;
  static_assert(kInvSmem <= 48 * 1024, "inverse tiles need no opt-in");
  gdn_inverse_kernel<<<static_cast<unsigned>(a.count), kInvThreads, kInvSmem, static_cast<cudaStream_t>(stream)>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

std::string device_error(int device) {
  return kernel_device_error(device, reinterpret_cast<const void*>(&gdn_scan_fwd_kernel<128>), "Gated DeltaNet", 7);
}

}  // namespace

const GatedDeltaLaunchers& gated_delta_cuda_launchers() {
  static const GatedDeltaLaunchers table{true, &device_error, &scan_fwd, &scan_bwd, &step, &unit_lower_inverse};
  return table;
}

}  // namespace subq::ops::detail
