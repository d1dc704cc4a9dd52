// rms_norm_cuda.cu — launchers of the fused (gated) RMS-norm kernels (device code and design in
// rms_norm_cuda.cuh). Memory-bound SIMT code; instantiated for x in fp32 / bf16 / fp16 with the output
// in fp32 (an fp32 weight, the models' case) or in x's dtype.
#include <cuda_runtime.h>

#include "ops/norm/rms_norm_cuda.cuh"
#include "ops/norm/rms_norm_cuda.h"
#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace norm_kernels;

template <template <typename, typename> class Launch>
void by_dtype(const RmsNormArgs& a, cudaStream_t s) {
  const bool out32 = a.out_dtype == NormDtype::kF32;
  switch (a.x_dtype) {
    case NormDtype::kF32: Launch<float, float>::run(a, s); break;
    case NormDtype::kBF16:
      if (out32) Launch<__nv_bfloat16, float>::run(a, s);
      else Launch<__nv_bfloat16, __nv_bfloat16>::run(a, s);
      break;
    case NormDtype::kF16:
      if (out32) Launch<__half, float>::run(a, s);
      else Launch<__half, __half>::run(a, s);
      break;
  }
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename X, typename O>
struct Fwd {
  static void run(const RmsNormArgs& a, cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>((a.rows + kNormWarps - 1) / kNormWarps), static_cast<unsigned>(a.groups));
    rms_norm_fwd_kernel<X, O><<<grid, kThreads, 0, s>>>(a);
  }
};
template <typename X, typename O>
struct Bwd {
  static void run(const RmsNormArgs& a, cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>(a.parts_blocks), static_cast<unsigned>(a.groups));
    rms_norm_bwd_kernel<X, O><<<grid, kThreads, 0, s>>>(a);
  }
};

}  // namespace

bool rms_norm_cuda_built() { return true; }

std::string rms_norm_cuda_device_error(int device) {
  return kernel_device_error(device, reinterpret_cast<const void*>(&rms_norm_fwd_kernel<float, float>), "RMS-norm", 8);
}

void rms_norm_cuda_fwd(const RmsNormArgs& a, void* stream) {
  SUBQ_CHECK((a.rows + kNormWarps - 1) / kNormWarps <= 0x7fffffff && a.groups <= 65535, "rms_norm_cuda: grid too large");
  by_dtype<Fwd>(a, static_cast<cudaStream_t>(stream));
}

void rms_norm_cuda_bwd(const RmsNormArgs& a, void* stream) {
  SUBQ_CHECK(a.parts_blocks >= 1 && a.groups <= 65535, "rms_norm_cuda: bad backward grid");
  by_dtype<Bwd>(a, static_cast<cudaStream_t>(stream));
}

}  // namespace subq::ops::detail
