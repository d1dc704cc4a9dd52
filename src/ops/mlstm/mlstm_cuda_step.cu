// mlstm_cuda_step.cu — the fused mLSTM decode step (mlstm_step semantics, one token):
//   m' = max(lf + m, i~),  f' = exp(lf + m - m'),  i' = exp(i~ - m')
//   C' = f' C + i' k v^T,  n' = f' n + i' k,  h = C'^T q^ / (max(|n'^T q^|, exp(-m')) + 1e-6)
// (a reset flag replaces C, n, m by the zero state first). Memory-bound (read C, write C'), so plain SIMT:
// a block takes 128 columns of C' for one (batch, head); each thread walks its column down the Dk rows
// (coalesced across the block), accumulating h. Every block recomputes n' . q^ (Dk multiply-adds) for the
// denominator; the first block of each (batch, head) writes n' and m'. Any Dk, Dv; q, k, v fp32, bf16 or
// fp16; everything is computed in fp32.
#include <cuda_runtime.h>

#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_step.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace mlstm_kernels;

template <typename T>
void launch_step(const MlstmStepArgs& a, cudaStream_t stream) {
  const size_t smem = step_smem_bytes(a.dk);
  auto kernel = mlstm_step_kernel<T>;
  if (smem > 48 * 1024)
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.batch * a.heads), static_cast<unsigned>((a.dv + kStepThreads - 1) / kStepThreads));
  kernel<<<grid, kStepThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void mlstm_cuda_step(const MlstmStepArgs& a, MlstmKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.dk >= 1 && a.dv >= 1 && a.dk <= 16384, "mlstm step: bad head dims Dk = ", a.dk, ", Dv = ", a.dv);
  SUBQ_CHECK(static_cast<int64_t>(a.batch) * a.heads <= 0x7fffffff, "mlstm step: B * H too large");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case MlstmKernelDtype::kBF16: launch_step<__nv_bfloat16>(a, s); break;
    case MlstmKernelDtype::kF16: launch_step<__half>(a, s); break;
    case MlstmKernelDtype::kF32: launch_step<float>(a, s); break;
  }
}

}  // namespace subq::ops::detail
