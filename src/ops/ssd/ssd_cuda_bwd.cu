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

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using ck::kChunk;

constexpr int kBwdThreads = 256;
constexpr int kPTile = 64;
constexpr int kLPitch = ck::pitch_of(kChunk);

template <typename T, int N>
struct BwdSmem {
  static constexpr int kNPitch = ck::pitch_of(N);
  T B[kChunk * kNPitch];
  T C[kChunk * kNPitch];
  T G[kChunk * kLPitch];  // (CB o L o dt_s)[t][s] of the current head
  T M[kChunk * kLPitch];  // (L o dt_s o dY X^T)[t][s] of the current head
  struct Stage {
    T x[kChunk * kLPitch];
    T dy[kChunk * kLPitch];
    T s[kPTile * kNPitch];   // state entering the chunk, rows p of this slice
    T ds[kPTile * kNPitch];  // gradient of the state leaving the chunk
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
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, b = blockIdx.z;
  const int H = a.n.heads, G = a.n.groups, P = a.n.head_dim, T_len = a.n.time, nc = a.n.chunks;
  const int hg = H / G, hpb = hg / a.head_splits;
  const int g = blockIdx.y / a.head_splits, split = blockIdx.y % a.head_splits;
  const int h_begin = g * hg + split * hpb;
  const int n_pt = P / kPTile, items = hpb * n_pt;
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
    ck::cp_async_tile<T, kChunk, kPTile, kBwdThreads>(st.x, kLPitch, x_base + h * a.x.s1 + pt * kPTile, a.x.s2, rows);
    ck::cp_async_tile<T, kChunk, kPTile, kBwdThreads>(st.dy, kLPitch, dy_base + h * a.dy.s1 + pt * kPTile, a.dy.s2,
                                                      rows);
    const int64_t off = ((static_cast<int64_t>(b) * H + h) * nc + c) * P * N + static_cast<int64_t>(pt) * kPTile * N;
    ck::cp_async_tile<T, kPTile, N, kBwdThreads>(st.s, kNPitch, states + off, N, kPTile);
    ck::cp_async_tile<T, kPTile, N, kBwdThreads>(st.ds, kNPitch, dstates + off, N, kPTile);
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
#pragma unroll
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
      ck::store_frag<T>(sm.G, kLPitch, gm, m0, n0);
      __syncthreads();
    }

    // (a) dY X^T, accumulated over the slices of P
    ck::warp_gemm<T, 4, /*dY[t][p]*/ false, /*X[s][p]*/ false>(dyx, st.dy, kLPitch, m0, st.x, kLPitch, n0, kPTile);
    // (b) X dS: u_s += (X dS)_s . B_s; dB += diag(w) X dS
    {
      float tmp[NTN][4];
      ck::zero(tmp);
      ck::warp_gemm<T, NTN, /*X[s][p]*/ false, /*dS[p][n]*/ true>(tmp, st.x, kLPitch, m0, st.ds, kNPitch, n0N, kPTile);
      const float2 u = ck::row_dot<T, NTN>(tmp, sm.B, kNPitch, m0, n0N);
      if (q == 0) {
        sm.upart[warp >> 2][m0 + gq] += u.x;
        sm.upart[warp >> 2][m0 + gq + 8] += u.y;
      }
      const float wl = sm.w[m0 + gq], wh = sm.w[m0 + gq + 8];
#pragma unroll
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
      ck::warp_gemm<T, NTN, /*dY[t][p]*/ false, /*S[p][n]*/ true>(tmp, st.dy, kLPitch, m0, st.s, kNPitch, n0N, kPTile);
      const float2 r = ck::row_dot<T, NTN>(tmp, sm.C, kNPitch, m0, n0N);
      if (q == 0) {
        sm.rpart[warp >> 2][m0 + gq] += r.x;
        sm.rpart[warp >> 2][m0 + gq + 8] += r.y;
      }
      const float el = sm.e[m0 + gq], eh = sm.e[m0 + gq + 8];
#pragma unroll
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
    ck::warp_gemm<T, 4, /*G[t][s]*/ true, /*dY[t][p]*/ true>(dx, sm.G, kLPitch, m0, st.dy, kLPitch, n0, kChunk);
    // (e) this thread's parts of <dS, S> and sum dY . X (16-byte vectors)
    for (int i = tid; i < kPTile * N / 8; i += kBwdThreads) {
      const int r = i / (N / 8), cc = (i % (N / 8)) * 8;
      const uint4 sv = *reinterpret_cast<const uint4*>(st.s + r * kNPitch + cc);
      const uint4 dv = *reinterpret_cast<const uint4*>(st.ds + r * kNPitch + cc);
      const uint32_t s4[4] = {sv.x, sv.y, sv.z, sv.w}, d4[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 a2 = ck::unpack2<T>(s4[k]), b2 = ck::unpack2<T>(d4[k]);
        gsum += a2.x * b2.x + a2.y * b2.y;
      }
    }
    for (int i = tid; i < kChunk * kPTile / 8; i += kBwdThreads) {
      const int r = i / (kPTile / 8), cc = (i % (kPTile / 8)) * 8;
      const uint4 xv = *reinterpret_cast<const uint4*>(st.x + r * kLPitch + cc);
      const uint4 yv = *reinterpret_cast<const uint4*>(st.dy + r * kLPitch + cc);
      const uint32_t x4[4] = {xv.x, xv.y, xv.z, xv.w}, y4[4] = {yv.x, yv.y, yv.z, yv.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 a2 = ck::unpack2<T>(x4[k]), b2 = ck::unpack2<T>(y4[k]);
        dsum += a2.x * b2.x + a2.y * b2.y;
      }
    }
    __syncthreads();  // every read of st.dy is done: it becomes the staging tile of dX
    // (f) dX += D dY, staged in st.dy, stored with 16-byte vectors
    const float Dh = a.D ? a.D[h] : 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + 8 * j + 2 * q;
      T* lo = st.dy + (m0 + gq) * kLPitch + col;
      T* hi = st.dy + (m0 + gq + 8) * kLPitch + col;
      const float2 yl = ck::load2(lo), yh = ck::load2(hi);
      ck::store2(lo, dx[j][0] + Dh * yl.x, dx[j][1] + Dh * yl.y);
      ck::store2(hi, dx[j][2] + Dh * yh.x, dx[j][3] + Dh * yh.y);
    }
    __syncthreads();
    ck::store_tile<T, kChunk, kPTile, kBwdThreads>(dx_out + (bh * T_len + t0) * P + pt * kPTile, P, st.dy, kLPitch,
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
      ck::store_frag<T>(sm.M, kLPitch, m1, m0, n0);
      const float2 rs = ck::row_sums(tf);
      if (q == 0) {
        sm.rowT[warp >> 2][m0 + gq] = rs.x;
        sm.rowT[warp >> 2][m0 + gq + 8] = rs.y;
      }
      float2 cs[4];
      ck::col_sums(qf, cs);
      if (lane < 4) {
#pragma unroll
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
      ck::warp_gemm<T, NTN, /*M[t][s]*/ true, /*C[t][n]*/ true>(dB, sm.M, kLPitch, m0, sm.C, kNPitch, n0N, kChunk);
      ck::warp_gemm<T, NTN, /*M[t][s]*/ false, /*B[s][n]*/ true>(dC, sm.M, kLPitch, m0, sm.B, kNPitch, n0N, kChunk);
      // (i) log-decay gradients -> ddt, and the per-chunk partials of dA and dD
      if (warp == 0) {
        const int t = 2 * lane;
        float dcum[2], uu[2], cq[2];
#pragma unroll
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
#pragma unroll
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

template <typename T, int N>
void launch_bwd(const SsdChunkBwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = sizeof(BwdSmem<T, N>);
  static_assert(smem <= 227 * 1024, "backward chunk tiles do not fit in shared memory");
  auto kernel = ssd_chunk_bwd_kernel<T, N>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.groups * a.head_splits),
                  static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kBwdThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_bwd_n(const SsdChunkBwdArgs& a, cudaStream_t stream) {
  if (a.n.state_dim == 64)
    launch_bwd<T, 64>(a, stream);
  else
    launch_bwd<T, 128>(a, stream);
}

}  // namespace

void ssd_cuda_chunk_bwd(const SsdChunkBwdArgs& a, SsdKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.n.head_dim % kPTile == 0, "ssd chunk bwd: P = ", a.n.head_dim, " must be a multiple of 64");
  SUBQ_CHECK(a.n.state_dim == 64 || a.n.state_dim == 128, "ssd chunk bwd: N = ", a.n.state_dim, " must be 64 or 128");
  SUBQ_CHECK(a.n.groups >= 1 && a.n.heads % a.n.groups == 0 && a.head_splits >= 1 &&
                 (a.n.heads / a.n.groups) % a.head_splits == 0,
             "ssd chunk bwd: bad head split");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "ssd chunk bwd: bad chunk count");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SsdKernelDtype::kBF16: launch_bwd_n<__nv_bfloat16>(a, s); break;
    case SsdKernelDtype::kF16: launch_bwd_n<__half>(a, s); break;
    default: SUBQ_CHECK(false, "ssd chunk bwd: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
