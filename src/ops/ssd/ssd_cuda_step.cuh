// ssd_cuda_step.cuh — the SSD decode-step kernel (see ssd_cuda_step.cu): device code only, included by
// ssd_cuda_step.cu and by the CPU emulation test (tests/unit/test_ssd_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"

namespace subq::ops::detail::ssd_kernels {

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

}  // namespace subq::ops::detail::ssd_kernels
