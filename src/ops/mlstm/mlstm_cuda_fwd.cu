// mlstm_cuda_fwd.cu — the mLSTM forward outputs, parallel over chunks (the states entering every chunk come
// from the scan, mlstm_cuda_scan.cu). For token t of chunk c (state entering: C_p, n_p, m_p; gates as in
// mlstm_cuda_gates.cuh):
//   S[t][s]   = q^_t . k_s exp(cum_t - cum_s + i~_s - m_t)    (s <= t in t's document, else 0)
//   w_t       = exp(g_t - m_t) [seg_t = 0]                    (weight of the carried state)
//   num_t     = w_t q^_t C_p + sum_s S[t][s] v_s
//   qn_t      = w_t q^_t . n_p + sum_s S[t][s]
//   h_t       = num_t / (max(|qn_t|, exp(-m_t)) + 1e-6)
// which is the recurrent h_t with C_t, n_t written out as weighted sums (every weight scaled by exp(-m_t),
// m_t the recurrent stabiliser).
//
// Decisions:
//  * One block per (chunk, head, batch): 8 warps; every 64 x 64 product tile is split as 4 row groups x 2
//    column halves (16 x 32 per warp). q and k (64 x Dk) stay in shared memory for the whole block; S is
//    built in registers in the mma fragment positions of q k^T, masked by selection (exp of a positive
//    exponent could overflow), summed per row for qn in fp32, then rounded to the operand dtype once as
//    the A operand of S V.
//  * 1/sqrt(Dk) is applied in fp32 to the products, never to the q tile (no extra rounding of q).
//  * Dv is processed in 64-wide slices; the v slice and the Dk x 64 slice of C_p are double-buffered with
//    cp.async; h is staged through the v buffer for 16-byte stores.
//  * q . n_p in fp32 (SIMT, four threads per row).
//  * Optional outputs: the denominators and m_t per token (fp32) for a kernel backward.
//  * Shared memory: 172 KB at Dk = 256 (one block per SM), 101 KB at Dk = 128, 66 KB at Dk = 64.
#include <cuda_runtime.h>

#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_fwd.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace mlstm_kernels;

template <typename T, int DK>
void launch_fwd(const MlstmChunkFwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = sizeof(FwdSmem<T, DK>);
  static_assert(smem <= 227 * 1024, "forward chunk tiles do not fit in shared memory");
  auto kernel = mlstm_chunk_fwd_kernel<T, DK>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kFwdThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_fwd_dk(const MlstmChunkFwdArgs& a, cudaStream_t stream) {
  switch (a.n.dk) {
    case 64: launch_fwd<T, 64>(a, stream); break;
    case 128: launch_fwd<T, 128>(a, stream); break;
    default: launch_fwd<T, 256>(a, stream); break;
  }
}

}  // namespace

void mlstm_cuda_chunk_fwd(const MlstmChunkFwdArgs& a, MlstmKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.n.dk == 64 || a.n.dk == 128 || a.n.dk == 256, "mlstm chunk fwd: Dk = ", a.n.dk,
             " must be 64, 128 or 256");
  SUBQ_CHECK(a.n.dv % kSlice == 0, "mlstm chunk fwd: Dv = ", a.n.dv, " must be a multiple of 64");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "mlstm chunk fwd: bad chunk count");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case MlstmKernelDtype::kBF16: launch_fwd_dk<__nv_bfloat16>(a, s); break;
    case MlstmKernelDtype::kF16: launch_fwd_dk<__half>(a, s); break;
    default: SUBQ_CHECK(false, "mlstm chunk fwd: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
