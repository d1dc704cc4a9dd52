// short_conv_cuda.cuh — device code of the short causal depthwise convolution (see short_conv_cuda.cu);
// included by short_conv_cuda.cu and by the CPU emulation test.
//
// One thread owns two adjacent channels of one batch row and walks a tile of kShortConvTileT tokens,
// keeping the last K inputs in registers (a sliding window), so every input is read once per tile (plus
// K-1 tokens of left context) with 4-byte loads that coalesce across the warp (consecutive channel pairs).
// `since` counts the tokens of the current document before t, clipped at K: tap lag L (weight column
// K-1-L) is visible at t when since >= L — the reference's "age >= lag" rule.
//
// Backward per tile: walk t from the tile start to its end + K-2, recomputing the pre-activation a_t and
// da_t = dy_t act'(a_t), keeping the last K (da, since) in a ring; dx_s = sum_L [since_{s+L} >= L]
// w[K-1-L] da_{s+L} is emitted once s + K - 1 has been reached. dw and db are summed over the tile's own
// tokens in registers and written as one partial per (batch row, tile); torch adds the partials.
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/short_conv/short_conv_cuda.h"

namespace subq::ops::detail::short_conv_kernels {

constexpr int kThreads = 128;
constexpr int kChannelsPerBlock = 2 * kThreads;

template <typename T>
struct alignas(4) Pair {
  T a, b;
};

template <typename T>
__device__ __forceinline__ void load2(const T* p, float& u, float& v) {
  const Pair<T> q = *reinterpret_cast<const Pair<T>*>(p);
  u = ck::to_float(q.a);
  v = ck::to_float(q.b);
}
template <typename T>
__device__ __forceinline__ void store2(T* p, float u, float v) {
  Pair<T> q;
  q.a = ck::from_float<T>(u);
  q.b = ck::from_float<T>(v);
  *reinterpret_cast<Pair<T>*>(p) = q;
}
__device__ __forceinline__ float sigmoidf_(float a) { return 1.f / (1.f + expf(-a)); }

template <typename T, int K>
__global__ void __launch_bounds__(kThreads) short_conv_fwd_kernel(const ShortConvArgs a) {
  const int c = (blockIdx.x * kThreads + threadIdx.x) * 2;
  if (c >= a.channels) return;
  const int b = blockIdx.z, t0 = blockIdx.y * kShortConvTileT;
  const int t1 = t0 + kShortConvTileT < a.time ? t0 + kShortConvTileT : a.time;
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb + c;
  T* y = static_cast<T*>(a.y) + (static_cast<int64_t>(b) * a.time) * a.channels + c;
  const uint8_t* rs = a.reset ? a.reset + static_cast<int64_t>(b) * a.time : nullptr;
  float w0[K], w1[K];
  SUBQ_UNROLL
  for (int j = 0; j < K; ++j) {
    w0[j] = a.w[c * K + j];
    w1[j] = a.w[(c + 1) * K + j];
  }
  const float b0 = a.bias ? a.bias[c] : 0.f, b1 = a.bias ? a.bias[c + 1] : 0.f;
  float x0[K], x1[K];  // window: x?[K-1] = x_t, x?[K-1-L] = x_{t-L}
  SUBQ_UNROLL
  for (int j = 0; j < K; ++j) x0[j] = x1[j] = 0.f;
  int since = K;
  for (int t = t0 >= K - 1 ? t0 - (K - 1) : 0; t < t1; ++t) {
    SUBQ_UNROLL
    for (int j = 0; j + 1 < K; ++j) {
      x0[j] = x0[j + 1];
      x1[j] = x1[j + 1];
    }
    load2(x + t * a.x_st, x0[K - 1], x1[K - 1]);
    since = (rs && rs[t]) ? 0 : (since < K ? since + 1 : K);
    if (t < t0) continue;
    float s0 = b0, s1 = b1;
    SUBQ_UNROLL
    for (int L = 0; L < K; ++L)
      if (since >= L) {
        s0 += w0[K - 1 - L] * x0[K - 1 - L];
        s1 += w1[K - 1 - L] * x1[K - 1 - L];
      }
    if (a.silu) {
      s0 *= sigmoidf_(s0);
      s1 *= sigmoidf_(s1);
    }
    store2(y + static_cast<int64_t>(t) * a.channels, s0, s1);
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads) short_conv_bwd_kernel(const ShortConvArgs a) {
  const int c = (blockIdx.x * kThreads + threadIdx.x) * 2;
  if (c >= a.channels) return;
  const int b = blockIdx.z, tile = blockIdx.y, t0 = tile * kShortConvTileT;
  const int t1 = t0 + kShortConvTileT < a.time ? t0 + kShortConvTileT : a.time;
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb + c;
  const T* dy = static_cast<const T*>(a.dy) + b * a.dy_sb + c;
  T* dx = static_cast<T*>(a.dx) + (static_cast<int64_t>(b) * a.time) * a.channels + c;
  const uint8_t* rs = a.reset ? a.reset + static_cast<int64_t>(b) * a.time : nullptr;
  float w0[K], w1[K];
  SUBQ_UNROLL
  for (int j = 0; j < K; ++j) {
    w0[j] = a.w[c * K + j];
    w1[j] = a.w[(c + 1) * K + j];
  }
  const float b0 = a.bias ? a.bias[c] : 0.f, b1 = a.bias ? a.bias[c + 1] : 0.f;
  float x0[K], x1[K], g0[K], g1[K];  // input window; da ring: g?[K-1] = da_t, g?[K-1-L] = da_{t-L}
  int sn[K];                          // `since` of the ring's positions
  float dw0[K], dw1[K];
  SUBQ_UNROLL
  for (int j = 0; j < K; ++j) {
    x0[j] = x1[j] = g0[j] = g1[j] = dw0[j] = dw1[j] = 0.f;
    sn[j] = K;
  }
  float db0 = 0.f, db1 = 0.f;
  int since = K;
  const int t_end = t1 + K - 1 < a.time ? t1 + K - 1 : a.time;  // positions whose da reaches dx of this tile
  for (int t = t0 >= K - 1 ? t0 - (K - 1) : 0; t < t1 + K - 1; ++t) {
    SUBQ_UNROLL
    for (int j = 0; j + 1 < K; ++j) {
      x0[j] = x0[j + 1];
      x1[j] = x1[j + 1];
      g0[j] = g0[j + 1];
      g1[j] = g1[j + 1];
      sn[j] = sn[j + 1];
    }
    float da0 = 0.f, da1 = 0.f;
    if (t < t_end) {
      load2(x + t * a.x_st, x0[K - 1], x1[K - 1]);
      since = (rs && rs[t]) ? 0 : (since < K ? since + 1 : K);
      if (t >= t0) {
        float s0 = b0, s1 = b1;
        SUBQ_UNROLL
        for (int L = 0; L < K; ++L)
          if (since >= L) {
            s0 += w0[K - 1 - L] * x0[K - 1 - L];
            s1 += w1[K - 1 - L] * x1[K - 1 - L];
          }
        load2(dy + t * a.dy_st, da0, da1);
        if (a.silu) {
          const float q0 = sigmoidf_(s0), q1 = sigmoidf_(s1);
          da0 *= q0 * (1.f + s0 * (1.f - q0));
          da1 *= q1 * (1.f + s1 * (1.f - q1));
        }
        if (t < t1) {  // this tile's own tokens: parameter gradients
          SUBQ_UNROLL
          for (int L = 0; L < K; ++L)
            if (since >= L) {
              dw0[K - 1 - L] += da0 * x0[K - 1 - L];
              dw1[K - 1 - L] += da1 * x1[K - 1 - L];
            }
          db0 += da0;
          db1 += da1;
        }
      }
    } else {
      since = K;  // past the end: da = 0, visibility irrelevant
    }
    g0[K - 1] = da0;
    g1[K - 1] = da1;
    sn[K - 1] = since;
    const int s = t - (K - 1);  // every da_{s..s+K-1} is in the ring now
    if (s >= t0 && s < t1) {
      float d0 = 0.f, d1 = 0.f;
      SUBQ_UNROLL
      for (int L = 0; L < K; ++L)
        if (sn[L] >= L) {  // ring slot L holds position s + L
          d0 += w0[K - 1 - L] * g0[L];
          d1 += w1[K - 1 - L] * g1[L];
        }
      store2(dx + static_cast<int64_t>(s) * a.channels, d0, d1);
    }
  }
  const int64_t part = static_cast<int64_t>(b) * gridDim.y + tile;
  float* dw = a.dw_part + (part * a.channels + c) * K;
  SUBQ_UNROLL
  for (int j = 0; j < K; ++j) {
    dw[j] = dw0[j];
    dw[K + j] = dw1[j];
  }
  if (a.db_part) {
    a.db_part[part * a.channels + c] = db0;
    a.db_part[part * a.channels + c + 1] = db1;
  }
}

}  // namespace subq::ops::detail::short_conv_kernels
