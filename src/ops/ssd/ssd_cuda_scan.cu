// ssd_cuda_scan.cu — the sequential part of the SSD kernels: one pass over the chunks carrying the state
// (forward) or the state gradient (reverse), plus the device queries of ssd_cuda.h.
//
// Forward, chunk c (local positions t, cum = inclusive cumulative log-decay, seg = document ids):
//   store S (the state entering chunk c, rounded to the operand dtype) to states[c];
//   S <- gamma S + (w o X)^T B,  w_s = dt_s exp(cum_63 - cum_s) [seg_s = seg_63],  gamma = exp(cum_63) [seg_63 = 0]
// Reverse, chunks last to first, with dS starting at the final-state gradient:
//   store dS (the gradient of the state leaving chunk c) to states[c];
//   dS <- gamma dS + (e o dY)^T C,  e_t = exp(cum_t) [seg_t = 0]
// Both are the same product: a 64 x 64 tile of the state (rows: head-dim p, columns: state-dim n) +=
// U'^T V with U' = diag(weights) U, K = the chunk's 64 tokens.
//
// Decisions:
//  * Grid (P/64 * N/64, H, B), 4 warps; warp w owns state rows 16w..16w+15 and all 64 columns (32 fp32
//    registers). Splitting N as well as P doubles the blocks at no extra work (each state column depends
//    only on its own B column), which matters because the chunk loop is sequential.
//  * Two-stage cp.async pipeline (U tile, V tile, dt, reset flags per stage, 18.5 KB each; 47 KB in all,
//    so four blocks fit on an SM, and the register budget is capped at 128 per thread to match): the load
//    of chunk c+1 overlaps the work of chunk c. Three stages (66 KB, three blocks per SM) made the 512
//    blocks of B8 H16 P = N = 128 run in two waves: 0.26 ms per scan on the H200 where one wave of
//    64 chunk steps takes ~0.13 ms (docs/perf/ssd.md, "Scan occupancy").
//  * U is scaled by the weights in shared memory (rounded back to the operand dtype) rather than in the
//    fragments: one vectorised pass, and the mma loop stays generic.
//  * The stored states go through a shared staging tile so that global stores are 16-byte vectors.
#include <cuda_runtime.h>


#include "ops/ssd/ssd_cuda.h"
#include "ops/ssd/ssd_cuda_scan.cuh"
#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace ssd_kernels;

template <typename T, bool kReverse>
void launch_scan(const SsdScanArgs& a, cudaStream_t stream) {
  constexpr size_t smem = scan_smem_bytes<T>();
  static_assert(smem <= 227 * 1024, "scan tile does not fit in shared memory");
  auto kernel = ssd_scan_kernel<T, kReverse>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((a.n.head_dim / kTile) * (a.n.state_dim / kTile)),
                  static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kScanThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_scan_dir(const SsdScanArgs& a, cudaStream_t stream) {
  if (a.reverse)
    launch_scan<T, true>(a, stream);
  else
    launch_scan<T, false>(a, stream);
}

}  // namespace

bool ssd_cuda_built() { return true; }

std::string ssd_cuda_device_error(int device) {
  return kernel_device_error(device, reinterpret_cast<const void*>(&ssd_scan_kernel<__nv_bfloat16, false>), "SSD", 8);
}

int ssd_cuda_sm_count(int device) { return multiprocessor_count(device); }

void ssd_cuda_scan(const SsdScanArgs& a, SsdKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.n.head_dim % kTile == 0 && a.n.state_dim % kTile == 0, "ssd scan: P = ", a.n.head_dim,
             ", N = ", a.n.state_dim, " must be multiples of 64");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "ssd scan: bad chunk count");
  SUBQ_CHECK(a.n.groups >= 1 && a.n.heads % a.n.groups == 0, "ssd scan: heads not a multiple of groups");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SsdKernelDtype::kBF16: launch_scan_dir<__nv_bfloat16>(a, s); break;
    case SsdKernelDtype::kF16: launch_scan_dir<__half>(a, s); break;
    default: SUBQ_CHECK(false, "ssd scan: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
