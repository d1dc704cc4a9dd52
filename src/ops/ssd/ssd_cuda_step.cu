// ssd_cuda_step.cu — the fused SSD decode step (ssd_step semantics, one token):
//   h' = exp(dt A) h + dt x B^T,   y = h' C + D x      (h, h': [P, N] fp32 per batch row and head)
// Memory-bound (read h, write h'), so plain SIMT: a block takes 16 rows p of one (batch, head), a warp 4
// rows; a lane handles 4 consecutive state columns at a time (float4 loads and stores of h, h') and the
// row's output is a warp reduction. x, B, C may be fp32, bf16 or fp16; everything is computed in fp32.
#include <cuda_runtime.h>

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

constexpr int kStepThreads = 128;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kRowsPerWarp * (kStepThreads / 32);

template <typename T>
__global__ void __launch_bounds__(kStepThreads) ssd_step_kernel(const SsdStepArgs a) {
  const int P = a.head_dim, N = a.state_dim, H = a.heads;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, g = h / (H / a.groups);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float dt = a.dt[bh];
  const float decay = expf(dt * a.A[h]);
  const float Dh = a.D ? a.D[h] : 0.f;
  const T* x = static_cast<const T*>(a.x) + static_cast<int64_t>(bh) * P;
  const T* Bv = static_cast<const T*>(a.B) + (static_cast<int64_t>(b) * a.groups + g) * N;
  const T* Cv = static_cast<const T*>(a.C) + (static_cast<int64_t>(b) * a.groups + g) * N;
  T* y = static_cast<T*>(a.y) + static_cast<int64_t>(bh) * P;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int p = blockIdx.y * kRowsPerBlock + warp * kRowsPerWarp + r;
    if (p >= P) break;  // warp-uniform
    const float xv = ck::to_float(x[p]);
    const float dtx = dt * xv;
    const int64_t row = (static_cast<int64_t>(bh) * P + p) * N;
    float acc = 0.f;
    for (int n = 4 * lane; n < N; n += 128) {
      float4 s = a.state ? *reinterpret_cast<const float4*>(a.state + row + n) : make_float4(0.f, 0.f, 0.f, 0.f);
      s.x = decay * s.x + dtx * ck::to_float(Bv[n]);
      s.y = decay * s.y + dtx * ck::to_float(Bv[n + 1]);
      s.z = decay * s.z + dtx * ck::to_float(Bv[n + 2]);
      s.w = decay * s.w + dtx * ck::to_float(Bv[n + 3]);
      acc += s.x * ck::to_float(Cv[n]) + s.y * ck::to_float(Cv[n + 1]) + s.z * ck::to_float(Cv[n + 2]) +
             s.w * ck::to_float(Cv[n + 3]);
      *reinterpret_cast<float4*>(a.state_out + row + n) = s;
    }
    acc = ck::warp_sum(acc);
    if (lane == 0) y[p] = ck::from_float<T>(acc + Dh * xv);
  }
}

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
