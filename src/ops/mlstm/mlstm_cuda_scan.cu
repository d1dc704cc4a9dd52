// mlstm_cuda_scan.cu — the sequential part of the mLSTM kernels: one pass over the chunks carrying the
// stabilised state (C, n, m), plus the device queries of mlstm_cuda.h.
//
// Chunk c (local positions s; gates as in mlstm_cuda_gates.cuh, m_63 = the recurrent stabiliser at the
// chunk's last position, which is the m of the state leaving the chunk):
//   store C (rounded to the operand dtype), n and m (fp32) of the state entering chunk c;
//   C <- w_prev C + (w o K)^T V,   n <- w_prev n + K^T w,   m <- m_63
//   w_s = exp(cum_63 - cum_s + i~_s - m_63) [seg_s = seg_63],   w_prev = exp(g_63 - m_63) [seg_63 = 0]
// This is the recurrence unrolled over 64 steps, exactly (the same weights the recurrent form multiplies
// together step by step), so the final state matches mlstm_recurrent's up to rounding.
//
// Decisions:
//  * Grid (Dk/64 * Dv/64, H, B), 4 warps; warp w owns rows 16w..16w+15 of a 64 x 64 tile of C (32 fp32
//    registers). Every block recomputes the chunk's gate scan (one warp, 64 positions) instead of sharing
//    it: no extra pass and no synchronisation between blocks; all blocks get bit-identical m.
//  * n is carried by the blocks of the first Dv tile (one fp32 register per thread < 64), in fp32 from the
//    unrounded weights; m is stored by the first block of each (batch, head).
//  * The backward's state-gradient scan is the same kernel (kReverse): chunks last to first, q and dh in
//    place of k and v, weights a_t / sqrt(Dk) / den_t for dC and a_t / sqrt(Dk) dqn_t for dn (the gradients
//    of num_t and qn_t flowing into the state entering the chunk), the carried factor exp(g_63 - m_63)
//    as in the forward, m of the state entering each chunk read from the forward's m_states.
//  * Same pipeline as the SSD scan: two cp.async stages (k tile, v tile, gates, reset flags), k scaled by
//    the weights in shared memory, states staged through shared memory for 16-byte stores. One staging tile
//    serves the stored state, its residual and the weighted k rows' residual in turn (two more barriers per
//    chunk when the residuals are on), so four blocks fit on an SM (49 KB; registers capped at 128): v1.1's
//    three stages and three tiles (87 KB, two blocks per SM) ran the 512 blocks of B8 H16 Dk = Dv = 128 in
//    two waves (docs/perf/mlstm.md, "Scan occupancy").
#include <cuda_runtime.h>


#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_scan.cuh"
#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace mlstm_kernels;

template <typename T, bool kReverse>
void launch_scan(const MlstmScanArgs& a, cudaStream_t stream) {
  constexpr size_t smem = scan_smem_bytes<T>();
  static_assert(smem <= 227 * 1024, "scan tile does not fit in shared memory");
  auto kernel = mlstm_scan_kernel<T, kReverse>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((a.n.dk / kTile) * (a.n.dv / kTile)), static_cast<unsigned>(a.n.heads),
                  static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kScanThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_scan_dir(const MlstmScanArgs& a, cudaStream_t stream) {
  if (a.reverse)
    launch_scan<T, true>(a, stream);
  else
    launch_scan<T, false>(a, stream);
}

}  // namespace

bool mlstm_cuda_built() { return true; }

std::string mlstm_cuda_device_error(int device) {
  return kernel_device_error(device, reinterpret_cast<const void*>(&mlstm_scan_kernel<__nv_bfloat16, false>), "mLSTM",
                             8);
}

void mlstm_cuda_scan(const MlstmScanArgs& a, MlstmKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.n.dk % kTile == 0 && a.n.dv % kTile == 0, "mlstm scan: Dk = ", a.n.dk, ", Dv = ", a.n.dv,
             " must be multiples of 64");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "mlstm scan: bad chunk count");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case MlstmKernelDtype::kBF16: launch_scan_dir<__nv_bfloat16>(a, s); break;
    case MlstmKernelDtype::kF16: launch_scan_dir<__half>(a, s); break;
    default: SUBQ_CHECK(false, "mlstm scan: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
