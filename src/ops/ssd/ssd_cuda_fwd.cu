// ssd_cuda_fwd.cu — the SSD forward outputs, parallel over chunks (the states entering every chunk come
// from the forward scan, ssd_cuda_scan.cu):
//   y_t = sum_{s <= t, same document} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s  +  e_t S C_t  +  D x_t,
//   e_t = exp(cum_t) [no reset in the chunk up to t],  S = the state entering the chunk.
//
// Decisions:
//  * One block per (batch, group, chunk, head split) loops over its heads and 64-wide slices of the head
//    dim ("items"): B, C and CB = C B^T (the only per-group matmul) are loaded / computed once and shared
//    by all heads of the group. head_splits > 1 only when there are too few (batch, group, chunk) blocks
//    to fill the GPU.
//  * 8 warps; every 64 x 64 product tile is split as 4 row groups x 2 column halves (16 x 32 per warp),
//    so CB stays in registers (16 fp32) in exactly the fragment positions where the decay mask G is
//    built, and G goes to shared memory once per head as the A operand of G X.
//  * The masked entries of G are selected (never multiplied: exp of a positive exponent can overflow and
//    inf * 0 is NaN).
//  * Per item the x slice and the state slice are double-buffered with cp.async; y is staged through the
//    x buffer (the D x term reads each element in the thread that overwrites it) for 16-byte stores.
//  * ~97 KB of shared memory for N = 128: two blocks per SM.
#include <cuda_runtime.h>

#include "ops/ssd/ssd_cuda.h"
#include "ops/ssd/ssd_cuda_fwd.cuh"
#include "ops/ssd/ssd_cuda_launch.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace ssd_kernels;

template <typename T, int N>
struct LaunchFwd {
  static void run(const SsdChunkFwdArgs& a, cudaStream_t stream) {
    constexpr size_t smem = sizeof(FwdSmem<T, N>);
    static_assert(smem <= 227 * 1024, "forward chunk tiles do not fit in shared memory");
    ssd_launch::chunk_grid(ssd_chunk_fwd_kernel<T, N>, smem, kFwdThreads, a, stream);
  }
};

}  // namespace

void ssd_cuda_chunk_fwd(const SsdChunkFwdArgs& a, SsdKernelDtype dtype, void* stream) {
  ssd_launch::dispatch<LaunchFwd>(a, dtype, stream, "ssd chunk fwd");
}

}  // namespace subq::ops::detail
