// rms_norm_cuda.cuh — device code of the fused (gated) RMS norm (see rms_norm_cuda.cu); included by
// rms_norm_cuda.cu and by the CPU emulation test.
//
// One warp per (row, group): lane l owns features l, l + 32, ... of the group. Forward: pass 1 sums h^2,
// pass 2 recomputes h and writes weight * round_x(h r) — x (and z) are read twice, the second time from
// L1/L2. Backward: a warp walks rows with a grid stride for one group, recomputes h and n, reduces
// mean(g w n) across the warp, writes dx (and dz) and accumulates the weight gradient g round_x(n) of its
// features in registers (64 per lane: groups of at most 2048 features); one partial row per warp is
// written at the end and added up by torch — no atomics.
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/norm/rms_norm_cuda.h"

namespace subq::ops::detail::norm_kernels {

constexpr int kThreads = 32 * kNormWarps;
constexpr int kPerLane = kNormMaxGroupDim / 32;

__device__ __forceinline__ float sigmoid_(float v) { return 1.f / (1.f + expf(-v)); }

template <typename X>
__device__ __forceinline__ float round_to(float v) {
  return ck::to_float(ck::from_float<X>(v));
}

template <typename X, typename O>
__global__ void __launch_bounds__(kThreads) rms_norm_fwd_kernel(const RmsNormArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + warp;
  if (row >= a.rows) return;
  const int dg = a.dim / a.groups, off = blockIdx.y * dg;
  const int64_t base = row * a.dim + off;
  const X* x = static_cast<const X*>(a.x) + base;
  const X* z = a.z ? static_cast<const X*>(a.z) + base : nullptr;
  float ss = 0.f;
  for (int i = lane; i < dg; i += 32) {
    float h = ck::to_float(x[i]);
    if (z) {
      const float zv = ck::to_float(z[i]);
      h *= zv * sigmoid_(zv);
    }
    ss += h * h;
  }
  ss = ck::warp_sum(ss);
  const float r = 1.f / sqrtf(ss / static_cast<float>(dg) + a.eps);
  O* out = static_cast<O*>(a.out) + base;
  for (int i = lane; i < dg; i += 32) {
    float h = ck::to_float(x[i]);
    if (z) {
      const float zv = ck::to_float(z[i]);
      h *= zv * sigmoid_(zv);
    }
    out[i] = ck::from_float<O>(a.w[off + i] * round_to<X>(h * r));
  }
  if (lane == 0) a.r[row * a.groups + blockIdx.y] = r;
}

template <typename X, typename O>
__global__ void __launch_bounds__(kThreads) rms_norm_bwd_kernel(const RmsNormArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int dg = a.dim / a.groups, off = blockIdx.y * dg;
  float dw[kPerLane];
  SUBQ_UNROLL
  for (int j = 0; j < kPerLane; ++j) dw[j] = 0.f;
  const float inv_dg = 1.f / static_cast<float>(dg);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + warp; row < a.rows;
       row += static_cast<int64_t>(gridDim.x) * kNormWarps) {
    const int64_t base = row * a.dim + off;
    const X* x = static_cast<const X*>(a.x) + base;
    const X* z = a.z ? static_cast<const X*>(a.z) + base : nullptr;
    const O* g = static_cast<const O*>(a.g) + base;
    const float r = a.r_in[row * a.groups + blockIdx.y];
    float acc = 0.f;
    SUBQ_UNROLL
    for (int j = 0; j < kPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < dg) {
        float h = ck::to_float(x[i]);
        if (z) {
          const float zv = ck::to_float(z[i]);
          h *= zv * sigmoid_(zv);
        }
        const float n = h * r, gv = ck::to_float(g[i]);
        acc += gv * a.w[off + i] * n;
        dw[j] += gv * round_to<X>(n);
      }
    }
    const float s = ck::warp_sum(acc) * inv_dg;
    X* dx = static_cast<X*>(a.dx) + base;
    X* dz = a.z ? static_cast<X*>(a.dz) + base : nullptr;
    for (int i = lane; i < dg; i += 32) {
      const float xv = ck::to_float(x[i]);
      float h = xv, zv = 0.f, sg = 0.f;
      if (z) {
        zv = ck::to_float(z[i]);
        sg = sigmoid_(zv);
        h *= zv * sg;
      }
      const float n = h * r;
      const float dh = r * (ck::to_float(g[i]) * a.w[off + i] - n * s);
      if (z) {
        dx[i] = ck::from_float<X>(dh * zv * sg);
        dz[i] = ck::from_float<X>(dh * xv * sg * (1.f + zv * (1.f - sg)));
      } else {
        dx[i] = ck::from_float<X>(dh);
      }
    }
  }
  float* part = a.dw_part + (static_cast<int64_t>(blockIdx.x) * kNormWarps + warp) * a.dim + off;
  SUBQ_UNROLL
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < dg) part[i] = dw[j];
  }
}

}  // namespace subq::ops::detail::norm_kernels
