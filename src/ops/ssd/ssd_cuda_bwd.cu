// ssd_cuda_bwd.cu — the SSD gradients, parallel over chunks. Inputs per chunk: the state S entering it
// (forward scan) and the gradient dS of the state leaving it (reverse scan, ssd_cuda_scan.cu).
//
// Per chunk and head, with L[t,s] = exp(cum_t - cum_s) [s <= t, same document], e_t = exp(cum_t)
// [seg_t = 0], v_s = exp(cum_63 - cum_s) [seg_s = seg_63], w_s = dt_s v_s, gamma = e_63, CB = C B^T:
//   dX  = (CB o L o dt_s)^T dY + diag(w) B dS^T + D dY
//   M   = L o dt_s o (dY X^T)                          (the intra-chunk "attention" gradient)
//   dB += M^T C + diag(w) X dS                          (summed over the heads of the group)
//   dC += M B  + diag(e) dY S
//   Q   = CB o L o (dY X^T);  u_s = (X dS)_s . B_s;  r_t = (dY S)_t . C_t
//   dcum_t = sum_s Q[t,s] dt_s - dt_t sum_t' Q[t',t] + e_t r_t - w_t u_t
//            + [t = 63] (gamma <dS, S> + sum_s w_s u_s)
//   da_t = sum_{t' >= t} dcum_t'   (a_t = dt_t A)
//   ddt_t = A da_t + sum_t' Q[t',t] + v_t u_t;   dA += sum_t dt_t da_t;   dD += sum_t dY_t . X_t
// (derived in docs/perf/ssd.md and checked in fp64 against autograd by tests/unit/test_ssd_kernel_math.cpp).
//
// Decisions:
//  * Same grid and item loop as the forward (ssd_cuda_fwd.cu): a block owns (batch, group, chunk, head
//    split), keeps dB and dC for the chunk in registers across its heads (no atomics, no per-head
//    partials in memory) and writes them once; partials over head splits are summed by the caller.
//  * Items are (head, 64-wide slice of P): dY X^T, X dS and dY S accumulate over the slices (K = P), so
//    any multiple of 64 works for P; u and r are accumulated through owner-written shared arrays, and
//    the per-head epilogue (M, Q sums, dB/dC updates, ddt) runs after the head's last slice.
//  * Row/column reductions are written by exactly one lane per partial (no shared atomics): results are
//    deterministic.
//  * ~165 KB of shared memory (N = 128; x, dY, S and dS slices double-buffered): one block of 8 warps
//    per SM, up to 255 registers per thread.
#include <cuda_runtime.h>

#include "ops/ssd/ssd_cuda.h"
#include "ops/ssd/ssd_cuda_bwd.cuh"
#include "ops/ssd/ssd_cuda_launch.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace ssd_kernels;

template <typename T, int N>
struct LaunchBwd {
  static void run(const SsdChunkBwdArgs& a, cudaStream_t stream) {
    constexpr size_t smem = sizeof(BwdSmem<T, N>);
    static_assert(smem <= 227 * 1024, "backward chunk tiles do not fit in shared memory");
    ssd_launch::chunk_grid(ssd_chunk_bwd_kernel<T, N>, smem, kBwdThreads, a, stream);
  }
};

}  // namespace

void ssd_cuda_chunk_bwd(const SsdChunkBwdArgs& a, SsdKernelDtype dtype, void* stream) {
  ssd_launch::dispatch<LaunchBwd>(a, dtype, stream, "ssd chunk bwd");
}

}  // namespace subq::ops::detail
