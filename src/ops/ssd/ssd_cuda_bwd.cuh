// ssd_cuda_bwd.cuh — the SSD backward chunk kernel (see ssd_cuda_bwd.cu for the formulas and the
// decisions): device code only, included by ssd_cuda_bwd.cu and by the CPU emulation test
// (tests/unit/test_ssd_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"

namespace subq::ops::detail::ssd_kernels {

using ck::kChunk;
using ck::kChunkPitch;
using ck::kSlice;

constexpr int kBwdThreads = 256;

template <typename T, int N>
struct BwdSmem {
  static constexpr int kNPitch = ck::pitch_of(N);
  T B[kChunk * kNPitch];
  T C[kChunk * kNPitch];
  T G[kChunk * kChunkPitch];  // (CB o L o dt_s)[t][s] of the current head
  T M[kChunk * kChunkPitch];  // (L o dt_s o dY X^T)[t][s] of the current head
  struct Stage {
    T x[kChunk * kChunkPitch];
    T dy[kChunk * kChunkPitch];
    T s[kSlice * kNPitch];   // state entering the chunk, rows p of this slice
    T ds[kSlice * kNPitch];  // gradient of the state leaving the chunk
    float dt[kChunk];
  } stage[2];
  int rst[kChunk];
  int seg[kChunk];
  float cum[kChunk], e[kChunk], v[kChunk], w[kChunk], dth[kChunk];
  float upart[2][kChunk], rpart[2][kChunk], rowT[2][kChunk], colQ[4][kChunk];
  float gpart[8], dpart[8];
  float gamma;
};

template <typename T, int N>
__global__ void __launch_bounds__(kBwdThreads, 1) ssd_chunk_bwd_kernel(const SsdChunkBwdArgs a) {
  using Smem = BwdSmem<T, N>;
  constexpr int kNPitch = Smem::kNPitch;
  constexpr int NTN = N / 16;  // n-tiles of a warp's half of a 64 x N tile
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, b = blockIdx.z;
  const int H = a.n.heads, G = a.n.groups, P = a.n.head_dim, T_len = a.n.time, nc = a.n.chunks;
  const int hg = H / G, hpb = hg / a.head_splits;
  const int g = blockIdx.y / a.head_splits, split = blockIdx.y % a.head_splits;
  const int h_begin = g * hg + split * hpb;
  const int n_pt = P / kSlice, items = hpb * n_pt;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, q = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);  // 16 x 32 part of 64 x 64 tiles
  const int n0N = (warp >> 2) * (N / 2);                  // 16 x N/2 part of 64 x N tiles

  const T* x_base = static_cast<const T*>(a.x.ptr) + b * a.x.s0 + t0 * a.x.s2;
  const T* dy_base = static_cast<const T*>(a.dy.ptr) + b * a.dy.s0 + t0 * a.dy.s2;
  const T* states = static_cast<const T*>(a.states);
  const T* dstates = static_cast<const T*>(a.dstates);
  auto load_item = [&](int item, int buf) {
    const int h = h_begin + item / n_pt, pt = item % n_pt;
    auto& st = sm.stage[buf];
    ck::cp_async_tile<T, kChunk, kSlice, kBwdThreads>(st.x, kChunkPitch, x_base + h * a.x.s1 + pt * kSlice, a.x.s2, rows);
    ck::cp_async_tile<T, kChunk, kSlice, kBwdThreads>(st.dy, kChunkPitch, dy_base + h * a.dy.s1 + pt * kSlice, a.dy.s2,
                                                      rows);
    const int64_t off = ((static_cast<int64_t>(b) * H + h) * nc + c) * P * N + static_cast<int64_t>(pt) * kSlice * N;
    ck::cp_async_tile<T, kSlice, N, kBwdThreads>(st.s, kNPitch, states + off, N, kSlice);
    ck::cp_async_tile<T, kSlice, N, kBwdThreads>(st.ds, kNPitch, dstates + off, N, kSlice);
    ck::cp_async_vec<float, kChunk, kBwdThreads>(st.dt, a.dt + b * a.dt_s0 + h * a.dt_s1 + t0 * a.dt_s2, a.dt_s2,
                                                 rows);
  };

  const T* Bg = static_cast<const T*>(a.B.ptr) + b * a.B.s0 + g * a.B.s1 + t0 * a.B.s2;
  const T* Cg = static_cast<const T*>(a.C.ptr) + b * a.C.s0 + g * a.C.s1 + t0 * a.C.s2;
  ck::cp_async_tile<T, kChunk, N, kBwdThreads>(sm.B, kNPitch, Bg, a.B.s2, rows);
  ck::cp_async_tile<T, kChunk, N, kBwdThreads>(sm.C, kNPitch, Cg, a.C.s2, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kBwdThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_commit();
  load_item(0, 0);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();
  __syncthreads();

  float cb[4][4];
  ck::zero(cb);
  ck::warp_gemm<T, 4, /*C[t][n]*/ false, /*B[s][n]*/ false>(cb, sm.C, kNPitch, m0, sm.B, kNPitch, n0, N);
  if (warp == 0) {
    const int2 seg = ck::chunk_segments_warp(a.reset ? sm.rst : nullptr);
    sm.seg[2 * lane] = seg.x;
    sm.seg[2 * lane + 1] = seg.y;
  }

  float dB[NTN][4], dC[NTN][4], dyx[4][4];
  ck::zero(dB);
  ck::zero(dC);
  ck::zero(dyx);
  float gsum = 0.f, dsum = 0.f;  // this thread's parts of <dS, S> and sum dY . X for the current head
  T* dx_out = static_cast<T*>(a.dx);

  for (int item = 0; item < items; ++item) {
    const int h = h_begin + item / n_pt, pt = item % n_pt, buf = item & 1;
    const int64_t bh = static_cast<int64_t>(b) * H + h;
    __syncthreads();
    if (item + 1 < items) load_item(item + 1, buf ^ 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();
    __syncthreads();
    auto& st = sm.stage[buf];

    if (pt == 0) {  // a new head: decays, weights, cleared accumulators, then G
      if (warp == 0) {
        const ck::LaneDecay d = ck::chunk_decay_warp(st.dt, a.reset ? sm.rst : nullptr, a.A[h]);
        const int t = 2 * lane;
        const float cum2[2] = {d.cum0, d.cum1};
        const int seg2[2] = {d.seg0, d.seg1};
SUBQ_UNROLL
        for (int k = 0; k < 2; ++k) {
          const float dtv = st.dt[t + k];
          sm.cum[t + k] = cum2[k];
          sm.dth[t + k] = dtv;
          sm.e[t + k] = seg2[k] == 0 ? expf(cum2[k]) : 0.f;
          const float vv = seg2[k] == d.seg_last ? expf(d.cum_last - cum2[k]) : 0.f;
          sm.v[t + k] = vv;
          sm.w[t + k] = dtv * vv;
        }
        if (lane == 0) sm.gamma = d.seg_last == 0 ? expf(d.cum_last) : 0.f;
      }
      if (tid < 2 * kChunk)
        sm.upart[tid / kChunk][tid % kChunk] = 0.f;
      else if (tid < 4 * kChunk)
        sm.rpart[(tid - 2 * kChunk) / kChunk][tid % kChunk] = 0.f;
      ck::zero(dyx);
      gsum = dsum = 0.f;
      __syncthreads();
      float gm[4][4];
      ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
        gm[j][i] = (s <= t && sm.seg[s] == sm.seg[t]) ? cb[j][i] * expf(sm.cum[t] - sm.cum[s]) * sm.dth[s] : 0.f;
      });
      ck::store_frag<T>(sm.G, kChunkPitch, gm, m0, n0);
      __syncthreads();
    }

    // (a) dY X^T, accumulated over the slices of P
    ck::warp_gemm<T, 4, /*dY[t][p]*/ false, /*X[s][p]*/ false>(dyx, st.dy, kChunkPitch, m0, st.x, kChunkPitch, n0, kSlice);
    // (b) X dS: u_s += (X dS)_s . B_s; dB += diag(w) X dS
    {
      float tmp[NTN][4];
      ck::zero(tmp);
      ck::warp_gemm<T, NTN, /*X[s][p]*/ false, /*dS[p][n]*/ true>(tmp, st.x, kChunkPitch, m0, st.ds, kNPitch, n0N, kSlice);
      const float2 u = ck::row_dot<T, NTN>(tmp, sm.B, kNPitch, m0, n0N);
      if (q == 0) {
        sm.upart[warp >> 2][m0 + gq] += u.x;
        sm.upart[warp >> 2][m0 + gq + 8] += u.y;
      }
      const float wl = sm.w[m0 + gq], wh = sm.w[m0 + gq + 8];
SUBQ_UNROLL
      for (int j = 0; j < NTN; ++j) {
        dB[j][0] += wl * tmp[j][0];
        dB[j][1] += wl * tmp[j][1];
        dB[j][2] += wh * tmp[j][2];
        dB[j][3] += wh * tmp[j][3];
      }
    }
    // (c) dY S: r_t += (dY S)_t . C_t; dC += diag(e) dY S
    {
      float tmp[NTN][4];
      ck::zero(tmp);
      ck::warp_gemm<T, NTN, /*dY[t][p]*/ false, /*S[p][n]*/ true>(tmp, st.dy, kChunkPitch, m0, st.s, kNPitch, n0N, kSlice);
      const float2 r = ck::row_dot<T, NTN>(tmp, sm.C, kNPitch, m0, n0N);
      if (q == 0) {
        sm.rpart[warp >> 2][m0 + gq] += r.x;
        sm.rpart[warp >> 2][m0 + gq + 8] += r.y;
      }
      const float el = sm.e[m0 + gq], eh = sm.e[m0 + gq + 8];
SUBQ_UNROLL
      for (int j = 0; j < NTN; ++j) {
        dC[j][0] += el * tmp[j][0];
        dC[j][1] += el * tmp[j][1];
        dC[j][2] += eh * tmp[j][2];
        dC[j][3] += eh * tmp[j][3];
      }
    }
    // (d) dX = diag(w) B dS^T + G^T dY (+ D dY below)
    float dx[4][4];
    ck::zero(dx);
    ck::warp_gemm<T, 4, /*B[s][n]*/ false, /*dS[p][n]*/ false>(dx, sm.B, kNPitch, m0, st.ds, kNPitch, n0, N);
    ck::scale_rows(dx, sm.w[m0 + gq], sm.w[m0 + gq + 8]);
    ck::warp_gemm<T, 4, /*G[t][s]*/ true, /*dY[t][p]*/ true>(dx, sm.G, kChunkPitch, m0, st.dy, kChunkPitch, n0, kChunk);
    // (e) this thread's parts of <dS, S> and sum dY . X (16-byte vectors)
    for (int i = tid; i < kSlice * N / 8; i += kBwdThreads) {
      const int r = i / (N / 8), cc = (i % (N / 8)) * 8;
      const uint4 sv = *reinterpret_cast<const uint4*>(st.s + r * kNPitch + cc);
      const uint4 dv = *reinterpret_cast<const uint4*>(st.ds + r * kNPitch + cc);
      const uint32_t s4[4] = {sv.x, sv.y, sv.z, sv.w}, d4[4] = {dv.x, dv.y, dv.z, dv.w};
SUBQ_UNROLL
      for (int k = 0; k < 4; ++k) {
        const float2 a2 = ck::unpack2<T>(s4[k]), b2 = ck::unpack2<T>(d4[k]);
        gsum += a2.x * b2.x + a2.y * b2.y;
      }
    }
    for (int i = tid; i < kChunk * kSlice / 8; i += kBwdThreads) {
      const int r = i / (kSlice / 8), cc = (i % (kSlice / 8)) * 8;
      const uint4 xv = *reinterpret_cast<const uint4*>(st.x + r * kChunkPitch + cc);
      const uint4 yv = *reinterpret_cast<const uint4*>(st.dy + r * kChunkPitch + cc);
      const uint32_t x4[4] = {xv.x, xv.y, xv.z, xv.w}, y4[4] = {yv.x, yv.y, yv.z, yv.w};
SUBQ_UNROLL
      for (int k = 0; k < 4; ++k) {
        const float2 a2 = ck::unpack2<T>(x4[k]), b2 = ck::unpack2<T>(y4[k]);
        dsum += a2.x * b2.x + a2.y * b2.y;
      }
    }
    __syncthreads();  // every read of st.dy is done: it becomes the staging tile of dX
    // (f) dX += D dY, staged in st.dy, stored with 16-byte vectors
    const float Dh = a.D ? a.D[h] : 0.f;
SUBQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + 8 * j + 2 * q;
      T* lo = st.dy + (m0 + gq) * kChunkPitch + col;
      T* hi = st.dy + (m0 + gq + 8) * kChunkPitch + col;
      const float2 yl = ck::load2(lo), yh = ck::load2(hi);
      ck::store2(lo, dx[j][0] + Dh * yl.x, dx[j][1] + Dh * yl.y);
      ck::store2(hi, dx[j][2] + Dh * yh.x, dx[j][3] + Dh * yh.y);
    }
    __syncthreads();
    ck::store_tile<T, kChunk, kSlice, kBwdThreads>(dx_out + (bh * T_len + t0) * P + pt * kSlice, P, st.dy, kChunkPitch,
                                                   rows);

    if (pt == n_pt - 1) {  // the head's epilogue
      // (g) M (to shared memory), row sums of Q dt_s and column sums of Q (to owner-written arrays)
      float m1[4][4], qf[4][4], tf[4][4];
      ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
        const float lm = (s <= t && sm.seg[s] == sm.seg[t]) ? expf(sm.cum[t] - sm.cum[s]) : 0.f;
        const float dts = sm.dth[s];
        m1[j][i] = lm * dts * dyx[j][i];
        qf[j][i] = cb[j][i] * lm * dyx[j][i];
        tf[j][i] = qf[j][i] * dts;
      });
      ck::store_frag<T>(sm.M, kChunkPitch, m1, m0, n0);
      const float2 rs = ck::row_sums(tf);
      if (q == 0) {
        sm.rowT[warp >> 2][m0 + gq] = rs.x;
        sm.rowT[warp >> 2][m0 + gq + 8] = rs.y;
      }
      float2 cs[4];
      ck::col_sums(qf, cs);
      if (lane < 4) {
SUBQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          sm.colQ[warp & 3][n0 + 8 * j + 2 * lane] = cs[j].x;
          sm.colQ[warp & 3][n0 + 8 * j + 2 * lane + 1] = cs[j].y;
        }
      }
      const float gw = ck::warp_sum(gsum), dw = ck::warp_sum(dsum);
      if (lane == 0) {
        sm.gpart[warp] = gw;
        sm.dpart[warp] = dw;
      }
      __syncthreads();
      // (h) dB += M^T C, dC += M B
      ck::warp_gemm<T, NTN, /*M[t][s]*/ true, /*C[t][n]*/ true>(dB, sm.M, kChunkPitch, m0, sm.C, kNPitch, n0N, kChunk);
      ck::warp_gemm<T, NTN, /*M[t][s]*/ false, /*B[s][n]*/ true>(dC, sm.M, kChunkPitch, m0, sm.B, kNPitch, n0N, kChunk);
      // (i) log-decay gradients -> ddt, and the per-chunk partials of dA and dD
      if (warp == 0) {
        const int t = 2 * lane;
        float dcum[2], uu[2], cq[2];
SUBQ_UNROLL
        for (int k = 0; k < 2; ++k) {
          const int tt = t + k;
          const float rowT = sm.rowT[0][tt] + sm.rowT[1][tt];
          cq[k] = sm.colQ[0][tt] + sm.colQ[1][tt] + sm.colQ[2][tt] + sm.colQ[3][tt];
          uu[k] = sm.upart[0][tt] + sm.upart[1][tt];
          const float r = sm.rpart[0][tt] + sm.rpart[1][tt];
          dcum[k] = rowT - sm.dth[tt] * cq[k] + sm.e[tt] * r - sm.w[tt] * uu[k];
        }
        const float wu = ck::warp_sum(sm.w[t] * uu[0] + sm.w[t + 1] * uu[1]);
        float gdot = 0.f, dd = 0.f;
SUBQ_UNROLL
        for (int k = 0; k < 8; ++k) {
          gdot += sm.gpart[k];
          dd += sm.dpart[k];
        }
        if (lane == 31) dcum[1] += sm.gamma * gdot + wu;
        const float2 da = ck::suffix_sum_warp(dcum[0], dcum[1]);
        const float Ah = a.A[h];
        float* ddt = a.ddt + bh * T_len + t0;
        if (t < rows) ddt[t] = Ah * da.x + cq[0] + sm.v[t] * uu[0];
        if (t + 1 < rows) ddt[t + 1] = Ah * da.y + cq[1] + sm.v[t + 1] * uu[1];
        const float dA = ck::warp_sum(sm.dth[t] * da.x + sm.dth[t + 1] * da.y);
        if (lane == 0) {
          a.dA_part[bh * nc + c] = dA;
          a.dD_part[bh * nc + c] = dd;
        }
      }
    }
  }
  ck::cp_async_wait<0>();

  // dB, dC of this chunk for the block's heads -> the head-split partial buffers
  const int64_t row0 = ((static_cast<int64_t>(split) * a.n.batch + b) * G + g) * T_len + t0;
  ck::for_each_frag<NTN>(m0, n0N, [&](int j, int i, int r, int col) {
    if (r < rows) {
      a.dB_part[(row0 + r) * N + col] = dB[j][i];
      a.dC_part[(row0 + r) * N + col] = dC[j][i];
    }
  });
}

}  // namespace subq::ops::detail::ssd_kernels
