// rms_norm_cuda.cuh — device code of the fused (gated) RMS norm (see rms_norm_cuda.cu); included by
// rms_norm_cuda.cu and by the CPU emulation test.
//
// One warp per (row, group): lane l owns features l, l + 32, ... of the group. Forward: pass 1 sums h^2,
// pass 2 recomputes h and writes weight * round_x(h r) — x (and z) are read twice, the second time from
// L1/L2. Backward: a warp walks rows with a grid stride for one group, recomputes h and n, reduces
// mean(g w n) across the warp, writes dx (and dz) and accumulates the weight gradient g round_x(n) of its
// features in registers (64 per lane: groups of at most 2048 features); one partial row per warp is
// written at the end and added up by torch — no atomics.
//
// Vectorised variants (rms_norm_fwd_vec_kernel / rms_norm_bwd_vec_kernel, chosen by vec_packs() when every
// group starts 16-byte aligned in x, z, g, out and the weight, i.e. Dg and D are multiples of 8): lane l owns
// the 8-element packs l, l + 32, ... (NP packs per lane, NP = 1, 2, 4 or 8 as a template argument so the
// per-lane arrays stay in registers), loaded with 16-byte accesses. The scalar kernels above issued one
// 2-byte load per lane at a time in a loop that was not unrolled — too few bytes in flight to cover HBM
// latency (forward 1.35 ms, backward 3.3 ms at [32768, 2048] bf16 on an H200, 7-10x the memory time). The
// forward keeps h of its packs in registers between the two passes (x and z are read once).
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

// Gradients of one feature with respect to x (and z) given its values, its output gradient gv, its weight wv,
// the row's 1/rms r and s = mean(g w n): dh = r (g w - n s), n = h r, h = x silu(z) (or x). Shared by the
// scalar and the vectorised backward kernels.
__device__ __forceinline__ void input_grads(float xv, float zv, bool gated, float gv, float wv, float r, float s,
                                            float& dx, float& dz) {
  float h = xv, sg = 0.f;
  if (gated) {
    sg = sigmoid_(zv);
    h *= zv * sg;
  }
  const float dh = r * (gv * wv - h * r * s);
  dx = gated ? dh * zv * sg : dh;
  dz = gated ? dh * xv * sg * (1.f + zv * (1.f - sg)) : 0.f;
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
      float gx, gz;
      input_grads(ck::to_float(x[i]), z ? ck::to_float(z[i]) : 0.f, z != nullptr, ck::to_float(g[i]), a.w[off + i], r,
                  s, gx, gz);
      dx[i] = ck::from_float<X>(gx);
      if (z) dz[i] = ck::from_float<X>(gz);
    }
  }
  float* part = a.dw_part + (static_cast<int64_t>(blockIdx.x) * kNormWarps + warp) * a.dim + off;
  SUBQ_UNROLL
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < dg) part[i] = dw[j];
  }
}

// ---- vectorised kernels ---------------------------------------------------------------------------------

// 8 consecutive elements (16-byte aligned) <-> floats.
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  SUBQ_UNROLL
  for (int i = 0; i < 4; ++i) {
    const float2 f = ck::unpack2<T>(w[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  uint4 u;
  u.x = ck::pack2<T>(v[0], v[1]), u.y = ck::pack2<T>(v[2], v[3]);
  u.z = ck::pack2<T>(v[4], v[5]), u.w = ck::pack2<T>(v[6], v[7]);
  *reinterpret_cast<uint4*>(p) = u;
}

// Packs per lane of the vectorised kernels for these arguments (1, 2, 4 or 8), or 0 when they do not apply
// (a group or a row not a multiple of 8 elements, a base pointer not 16-byte aligned). Host and device.
__host__ __device__ inline int vec_packs(const RmsNormArgs& a) {
  const int dg = a.dim / a.groups;
  if (dg % 8 != 0 || a.dim % 8 != 0 || dg > kNormMaxGroupDim) return 0;
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (!aligned(a.x) || !aligned(a.w) || (a.z && !aligned(a.z)) || (a.out && !aligned(a.out)) ||
      (a.g && !aligned(a.g)) || (a.dx && !aligned(a.dx)) || (a.dz && !aligned(a.dz)) ||
      (a.dw_part && !aligned(a.dw_part)))
    return 0;
  const int packs = (dg / 8 + 31) / 32;
  return packs <= 1 ? 1 : packs <= 2 ? 2 : packs <= 4 ? 4 : 8;
}

// h = x (or x silu(z)) of one pack.
template <typename X>
__device__ __forceinline__ void gated8(const X* x, const X* z, float (&h)[8]) {
  load8(x, h);
  if (z) {
    float zv[8];
    load8(z, zv);
    SUBQ_UNROLL
    for (int e = 0; e < 8; ++e) h[e] *= zv[e] * sigmoid_(zv[e]);
  }
}

template <typename X, typename O, int NP>
__global__ void __launch_bounds__(kThreads) rms_norm_fwd_vec_kernel(const RmsNormArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + warp;
  if (row >= a.rows) return;
  const int dg = a.dim / a.groups, off = blockIdx.y * dg, npk = dg / 8;
  const int64_t base = row * a.dim + off;
  const X* x = static_cast<const X*>(a.x) + base;
  const X* z = a.z ? static_cast<const X*>(a.z) + base : nullptr;
  float h[NP][8];
  float ss = 0.f;
  SUBQ_UNROLL
  for (int j = 0; j < NP; ++j) {
    const int p = lane + 32 * j;
    if (p < npk) {
      gated8(x + 8 * p, z ? z + 8 * p : nullptr, h[j]);
      SUBQ_UNROLL
      for (int e = 0; e < 8; ++e) ss += h[j][e] * h[j][e];
    }
  }
  ss = ck::warp_sum(ss);
  const float r = 1.f / sqrtf(ss / static_cast<float>(dg) + a.eps);
  O* out = static_cast<O*>(a.out) + base;
  SUBQ_UNROLL
  for (int j = 0; j < NP; ++j) {
    const int p = lane + 32 * j;
    if (p < npk) {
      float wv[8], o[8];
      load8(a.w + off + 8 * p, wv);
      SUBQ_UNROLL
      for (int e = 0; e < 8; ++e) o[e] = wv[e] * round_to<X>(h[j][e] * r);
      store8(out + 8 * p, o);
    }
  }
  if (lane == 0) a.r[row * a.groups + blockIdx.y] = r;
}

// Backward: pass 1 over the packs (x, z, g loaded; mean(g w n) and the weight gradient), pass 2 reloads them
// (from L1/L2) for dx, dz. Weight gradient: NP x 8 floats per lane, one partial row per warp.
template <typename X, typename O, int NP>
__global__ void __launch_bounds__(kThreads) rms_norm_bwd_vec_kernel(const RmsNormArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int dg = a.dim / a.groups, off = blockIdx.y * dg, npk = dg / 8;
  float dw[NP][8];
  SUBQ_UNROLL
  for (int j = 0; j < NP; ++j)
    SUBQ_UNROLL
    for (int e = 0; e < 8; ++e) dw[j][e] = 0.f;
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
    for (int j = 0; j < NP; ++j) {
      const int p = lane + 32 * j;
      if (p < npk) {
        float h[8], gv[8], wv[8];
        gated8(x + 8 * p, z ? z + 8 * p : nullptr, h);
        load8(g + 8 * p, gv);
        load8(a.w + off + 8 * p, wv);
        SUBQ_UNROLL
        for (int e = 0; e < 8; ++e) {
          const float n = h[e] * r;
          acc += gv[e] * wv[e] * n;
          dw[j][e] += gv[e] * round_to<X>(n);
        }
      }
    }
    const float s = ck::warp_sum(acc) * inv_dg;
    X* dx = static_cast<X*>(a.dx) + base;
    X* dz = a.z ? static_cast<X*>(a.dz) + base : nullptr;
    SUBQ_UNROLL
    for (int j = 0; j < NP; ++j) {
      const int p = lane + 32 * j;
      if (p < npk) {
        float xv[8], gv[8], wv[8], zv[8], ox[8], oz[8];
        load8(x + 8 * p, xv);
        load8(g + 8 * p, gv);
        load8(a.w + off + 8 * p, wv);
        if (z) load8(z + 8 * p, zv);
        SUBQ_UNROLL
        for (int e = 0; e < 8; ++e) input_grads(xv[e], z ? zv[e] : 0.f, z != nullptr, gv[e], wv[e], r, s, ox[e], oz[e]);
        store8(dx + 8 * p, ox);
        if (z) store8(dz + 8 * p, oz);
      }
    }
  }
  float* part = a.dw_part + (static_cast<int64_t>(blockIdx.x) * kNormWarps + warp) * a.dim + off;
  SUBQ_UNROLL
  for (int j = 0; j < NP; ++j) {
    const int p = lane + 32 * j;
    if (p < npk) store8(part + 8 * p, dw[j]);
  }
}

// The kernel a launcher runs for these arguments (vectorised where vec_packs() allows, else scalar); the
// CUDA launchers and the CPU emulation test choose through these, so both run the same selection.
using NormKernel = void (*)(RmsNormArgs);
template <typename X, typename O>
NormKernel fwd_kernel_for(const RmsNormArgs& a) {
  switch (vec_packs(a)) {
    case 1: return rms_norm_fwd_vec_kernel<X, O, 1>;
    case 2: return rms_norm_fwd_vec_kernel<X, O, 2>;
    case 4: return rms_norm_fwd_vec_kernel<X, O, 4>;
    case 8: return rms_norm_fwd_vec_kernel<X, O, 8>;
    default: return rms_norm_fwd_kernel<X, O>;
  }
}
template <typename X, typename O>
NormKernel bwd_kernel_for(const RmsNormArgs& a) {
  switch (vec_packs(a)) {
    case 1: return rms_norm_bwd_vec_kernel<X, O, 1>;
    case 2: return rms_norm_bwd_vec_kernel<X, O, 2>;
    case 4: return rms_norm_bwd_vec_kernel<X, O, 4>;
    case 8: return rms_norm_bwd_vec_kernel<X, O, 8>;
    default: return rms_norm_bwd_kernel<X, O>;
  }
}

}  // namespace subq::ops::detail::norm_kernels
