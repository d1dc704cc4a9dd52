// ssd_cuda_step.cu — the fused SSD decode step (ssd_step semantics, one token):
//   h' = exp(dt A) h + dt x B^T,   y = h' C + D x      (h, h': [P, N] fp32 per batch row and head)
// Memory-bound (read h, write h'), so plain SIMT: a block takes 16 rows p of one (batch, head), a warp 4
// rows; a lane handles 4 consecutive state columns at a time (float4 loads and stores of h, h') and the
// row's output is a warp reduction. x, B, C may be fp32, bf16 or fp16; everything is computed in fp32.
#include <cuda_runtime.h>

#include "ops/ssd/ssd_cuda.h"
#include "ops/ssd/ssd_cuda_step.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace ssd_kernels;

template <typename T>
void launch_step(const SsdStepArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.batch * a.heads),
                  static_cast<unsigned>((a.head_dim + kRowsPerBlock - 1) / kRowsPerBlock));
  ssd_step_kernel<T><<<grid, kStepThreads, 0, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void ssd_cuda_step(const SsdStepArgs& a, SsdKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.state_dim % 4 == 0, "ssd step: N = ", a.state_dim, " must be a multiple of 4");
  SUBQ_CHECK(a.groups >= 1 && a.heads % a.groups == 0, "ssd step: heads not a multiple of groups");
  SUBQ_CHECK(a.head_dim <= 65535 * kRowsPerBlock, "ssd step: P = ", a.head_dim, " is too large");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SsdKernelDtype::kBF16: launch_step<__nv_bfloat16>(a, s); break;
    case SsdKernelDtype::kF16: launch_step<__half>(a, s); break;
    case SsdKernelDtype::kF32: launch_step<float>(a, s); break;
  }
}

}  // namespace subq::ops::detail
