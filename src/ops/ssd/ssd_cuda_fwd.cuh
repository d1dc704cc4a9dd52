// ssd_cuda_fwd.cuh — the SSD forward chunk kernel (see ssd_cuda_fwd.cu for what it computes and the
// decisions): device code only, included by ssd_cuda_fwd.cu and by the CPU emulation test
// (tests/unit/test_ssd_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"

namespace subq::ops::detail::ssd_kernels {

using ck::kChunk;
using ck::kChunkPitch;
using ck::kSlice;

constexpr int kFwdThreads = 256;

template <typename T, int N>
struct FwdSmem {
  static constexpr int kNPitch = ck::pitch_of(N);
  T B[kChunk * kNPitch];
  T C[kChunk * kNPitch];
  T G[kChunk * kChunkPitch];
  struct Stage {
    T x[kChunk * kChunkPitch];
    T s[kSlice * kNPitch];
    float dt[kChunk];
  } stage[2];
  int rst[kChunk];
  int seg[kChunk];
  float cum[kChunk];
  float e[kChunk];
};

template <typename T, int N>
__global__ void __launch_bounds__(kFwdThreads, 2) ssd_chunk_fwd_kernel(const SsdChunkFwdArgs a) {
  using Smem = FwdSmem<T, N>;
  constexpr int kNPitch = Smem::kNPitch;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, b = blockIdx.z;
  const int H = a.n.heads, G = a.n.groups, P = a.n.head_dim, T_len = a.n.time, nc = a.n.chunks;
  const int hg = H / G, hpb = hg / a.head_splits;
  const int g = blockIdx.y / a.head_splits, split = blockIdx.y % a.head_splits;
  const int h_begin = g * hg + split * hpb;
  const int n_pt = P / kSlice, items = hpb * n_pt;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);  // this warp's 16 x 32 part of every 64 x 64 tile

  const T* x_base = static_cast<const T*>(a.x.ptr) + b * a.x.s0 + t0 * a.x.s2;
  const T* states = static_cast<const T*>(a.states);
  auto load_item = [&](int item, int buf) {
    const int h = h_begin + item / n_pt, pt = item % n_pt;
    auto& st = sm.stage[buf];
    ck::cp_async_tile<T, kChunk, kSlice, kFwdThreads>(st.x, kChunkPitch, x_base + h * a.x.s1 + pt * kSlice, a.x.s2, rows);
    const int64_t bh = static_cast<int64_t>(b) * H + h;
    ck::cp_async_tile<T, kSlice, N, kFwdThreads>(st.s, kNPitch, states + ((bh * nc + c) * P + pt * kSlice) * N, N,
                                                 kSlice);
    ck::cp_async_vec<float, kChunk, kFwdThreads>(st.dt, a.dt + b * a.dt_s0 + h * a.dt_s1 + t0 * a.dt_s2, a.dt_s2,
                                                 rows);
  };

  // Prologue: B, C (and reset flags) of the chunk, then the first item.
  const T* Bg = static_cast<const T*>(a.B.ptr) + b * a.B.s0 + g * a.B.s1 + t0 * a.B.s2;
  const T* Cg = static_cast<const T*>(a.C.ptr) + b * a.C.s0 + g * a.C.s1 + t0 * a.C.s2;
  ck::cp_async_tile<T, kChunk, N, kFwdThreads>(sm.B, kNPitch, Bg, a.B.s2, rows);
  ck::cp_async_tile<T, kChunk, N, kFwdThreads>(sm.C, kNPitch, Cg, a.C.s2, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kFwdThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_commit();
  load_item(0, 0);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();
  __syncthreads();

  float cb[4][4];  // (C B^T)[t][s] at rows m0.., columns n0..
  ck::zero(cb);
  ck::warp_gemm<T, 4, /*C[t][n]*/ false, /*B[s][n]*/ false>(cb, sm.C, kNPitch, m0, sm.B, kNPitch, n0, N);
  if (warp == 0) {
    const int2 seg = ck::chunk_segments_warp(a.reset ? sm.rst : nullptr);
    sm.seg[2 * lane] = seg.x;
    sm.seg[2 * lane + 1] = seg.y;
  }

  T* y_base = static_cast<T*>(a.y);
  for (int item = 0; item < items; ++item) {
    const int h = h_begin + item / n_pt, pt = item % n_pt, buf = item & 1;
    __syncthreads();  // everyone is done with item - 1 (its buffer is refilled next) and with G if h changes
    if (item + 1 < items) load_item(item + 1, buf ^ 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();
    __syncthreads();
    auto& st = sm.stage[buf];

    if (pt == 0) {  // a new head: its decays and the masked, dt-scaled CB
      if (warp == 0) {
        const ck::LaneDecay d = ck::chunk_decay_warp(st.dt, nullptr, a.A[h]);
        const int t = 2 * lane;
        sm.cum[t] = d.cum0;
        sm.cum[t + 1] = d.cum1;
        sm.e[t] = sm.seg[t] == 0 ? expf(d.cum0) : 0.f;
        sm.e[t + 1] = sm.seg[t + 1] == 0 ? expf(d.cum1) : 0.f;
      }
      __syncthreads();
      float gm[4][4];
      ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
        gm[j][i] = (s <= t && sm.seg[s] == sm.seg[t]) ? cb[j][i] * expf(sm.cum[t] - sm.cum[s]) * st.dt[s] : 0.f;
      });
      ck::store_frag<T>(sm.G, kChunkPitch, gm, m0, n0);
      __syncthreads();
    }

    // y = diag(e) C S^T + G X (+ D x below)
    float acc[4][4];
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*C[t][n]*/ false, /*S[p][n]*/ false>(acc, sm.C, kNPitch, m0, st.s, kNPitch, n0, N);
    const int gq = lane >> 2;
    ck::scale_rows(acc, sm.e[m0 + gq], sm.e[m0 + gq + 8]);
    ck::warp_gemm<T, 4, /*G[t][s]*/ false, /*X[s][p]*/ true>(acc, sm.G, kChunkPitch, m0, st.x, kChunkPitch, n0, kChunk);
    __syncthreads();  // all warps are done reading st.x
    const float Dh = a.D ? a.D[h] : 0.f;
    const int q = lane & 3;
SUBQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + 8 * j + 2 * q;
      T* lo = st.x + (m0 + gq) * kChunkPitch + col;
      T* hi = st.x + (m0 + gq + 8) * kChunkPitch + col;
      const float2 xl = ck::load2(lo), xh = ck::load2(hi);
      ck::store2(lo, acc[j][0] + Dh * xl.x, acc[j][1] + Dh * xl.y);
      ck::store2(hi, acc[j][2] + Dh * xh.x, acc[j][3] + Dh * xh.y);
    }
    __syncthreads();
    const int64_t bh = static_cast<int64_t>(b) * H + h;
    ck::store_tile<T, kChunk, kSlice, kFwdThreads>(y_base + (bh * T_len + t0) * P + pt * kSlice, P, st.x, kChunkPitch,
                                                   rows);
  }
  ck::cp_async_wait<0>();
}

}  // namespace subq::ops::detail::ssd_kernels
