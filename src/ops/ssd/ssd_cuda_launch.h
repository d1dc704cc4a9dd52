// ssd_cuda_launch.h — what the launchers of the SSD chunk kernels share (ssd_cuda_fwd.cu, ssd_cuda_bwd.cu):
// the argument checks, the grid (chunks, groups x head splits, batch) and the dispatch over operand dtype
// and state size. Host code for .cu files only (CUDA runtime API).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail::ssd_launch {

// Launches `kernel` (one of the chunk kernels, instantiated for the args' type) with `smem` bytes of
// dynamic shared memory over the chunk grid.
template <typename Args, typename Kernel>
void chunk_grid(Kernel kernel, size_t smem, int threads, const Args& a, cudaStream_t stream) {
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.groups * a.head_splits),
                  static_cast<unsigned>(a.n.batch));
  kernel<<<grid, threads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

// Checks the shapes a chunk kernel supports, then runs Launch<T, N>::run(a, stream) for the operand dtype
// (bf16 / fp16) and state size N (64 / 128). `what` names the kernel in errors ("ssd chunk fwd").
template <template <typename, int> class Launch, typename Args>
void dispatch(const Args& a, SsdKernelDtype dtype, void* stream, const char* what) {
  SUBQ_CHECK(a.n.head_dim % ck::kSlice == 0, "", what, ": P = ", a.n.head_dim, " must be a multiple of 64");
  SUBQ_CHECK(a.n.state_dim == 64 || a.n.state_dim == 128, "", what, ": N = ", a.n.state_dim, " must be 64 or 128");
  SUBQ_CHECK(a.n.groups >= 1 && a.n.heads % a.n.groups == 0 && a.head_splits >= 1 &&
                 (a.n.heads / a.n.groups) % a.head_splits == 0,
             "", what, ": bad head split");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + ck::kChunk - 1) / ck::kChunk, "", what, ": bad chunk count");
  auto s = static_cast<cudaStream_t>(stream);
  auto by_n = [&](auto tag) {
    using T = decltype(tag);
    if (a.n.state_dim == 64)
      Launch<T, 64>::run(a, s);
    else
      Launch<T, 128>::run(a, s);
  };
  switch (dtype) {
    case SsdKernelDtype::kBF16: by_n(__nv_bfloat16{}); break;
    case SsdKernelDtype::kF16: by_n(__half{}); break;
    default: SUBQ_CHECK(false, "", what, ": operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail::ssd_launch
