// mlstm_cuda_fwd.cuh — the mLSTM forward chunk kernel (see mlstm_cuda_fwd.cu for what it computes and the
// decisions): device code only, included by mlstm_cuda_fwd.cu and by the CPU emulation test
// (tests/unit/test_mlstm_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_gates.cuh"

namespace subq::ops::detail::mlstm_kernels {

using ck::kChunk;
using ck::kChunkPitch;
using ck::kSlice;

constexpr int kFwdThreads = 256;
constexpr float kEps = 1e-6f;  // kMlstmEps of subq/ops/mlstm.h

template <typename T, int DK>
struct FwdSmem {
  static constexpr int kKPitch = ck::pitch_of(DK);
  T q[kChunk * kKPitch];
  T k[kChunk * kKPitch];
  T s[kChunk * kChunkPitch];
  T s_lo[kChunk * kChunkPitch];  // S - S rounded: S V as two products has fp32-like precision
  struct Stage {
    T v[kChunk * kChunkPitch];
    T c[DK * kChunkPitch];
  } stage[2];
  float n[DK];
  float ig[kChunk], fg[kChunk];
  int rst[kChunk];
  double cum[kChunk];  // fp64 prefix sums (mlstm_cuda_gates.cuh)
  float igv[kChunk], m[kChunk], wint[kChunk], inv_den[kChunk], qn_inter[kChunk];
  float qn_part[2][kChunk];
  int seg[kChunk];
};

template <typename T, int DK>
__global__ void __launch_bounds__(kFwdThreads) mlstm_chunk_fwd_kernel(const MlstmChunkFwdArgs a) {
  using Smem = FwdSmem<T, DK>;
  constexpr int kKPitch = Smem::kKPitch;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int H = a.n.heads, Dv = a.n.dv, T_len = a.n.time, nc = a.n.chunks;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);  // this warp's 16 x 32 part of every 64 x 64 tile
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const float scale = 1.f / sqrtf(static_cast<float>(DK));

  const T* v_base = static_cast<const T*>(a.v.ptr) + b * a.v.s0 + h * a.v.s1 + t0 * a.v.s2;
  const T* c_base = static_cast<const T*>(a.c_states) + (bh * nc + c) * DK * Dv;
  const T* c_lo = a.c_lo ? static_cast<const T*>(a.c_lo) + (bh * nc + c) * DK * Dv : nullptr;
  auto load_slice = [&](int j, int buf) {
    auto& st = sm.stage[buf];
    ck::cp_async_tile<T, kChunk, kSlice, kFwdThreads>(st.v, kChunkPitch, v_base + j * kSlice, a.v.s2, rows);
    ck::cp_async_tile<T, DK, kSlice, kFwdThreads>(st.c, kChunkPitch, c_base + j * kSlice, Dv, DK);
  };

  // Prologue: q, k, gates, reset flags and n of the chunk, then the first Dv slice.
  const T* qg = static_cast<const T*>(a.q.ptr) + b * a.q.s0 + h * a.q.s1 + t0 * a.q.s2;
  const T* kg = static_cast<const T*>(a.k.ptr) + b * a.k.s0 + h * a.k.s1 + t0 * a.k.s2;
  ck::cp_async_tile<T, kChunk, DK, kFwdThreads>(sm.q, kKPitch, qg, a.q.s2, rows);
  ck::cp_async_tile<T, kChunk, DK, kFwdThreads>(sm.k, kKPitch, kg, a.k.s2, rows);
  ck::cp_async_vec<float, kChunk, kFwdThreads>(sm.ig, a.igate + bh * T_len + t0, 1, rows);
  ck::cp_async_vec<float, kChunk, kFwdThreads>(sm.fg, a.fgate + bh * T_len + t0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kFwdThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_vec<float, DK, kFwdThreads>(sm.n, a.n_states + (bh * nc + c) * DK, 1, DK);
  ck::cp_async_commit();
  load_slice(0, 0);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();
  __syncthreads();

  if (warp == 0) {
    const LaneGates gt = chunk_gates_warp(sm.ig, sm.fg, a.reset ? sm.rst : nullptr, rows, a.m_states[bh * nc + c]);
SUBQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int t = 2 * lane + j;
      sm.cum[t] = gt.cum[j];
      sm.igv[t] = gt.ig[j];
      sm.m[t] = gt.m[j];
      sm.seg[t] = gt.seg[j];
      sm.wint[t] = gt.seg[j] == 0 ? expf(carried_weight(gt.g[j], gt.m[j])) : 0.f;
    }
  }
  float sacc[4][4];  // (q k^T)[t][s] at rows m0.., columns n0..
  ck::zero(sacc);
  ck::warp_gemm<T, 4, /*Q[t][k]*/ false, /*K[s][k]*/ false>(sacc, sm.q, kKPitch, m0, sm.k, kKPitch, n0, DK);
  {  // q_t . n (fp32), four threads per row
    const int t = tid >> 2, part = tid & 3;
    float dot = 0.f;
    for (int kk = part * (DK / 4); kk < (part + 1) * (DK / 4); kk += 2) {
      const float2 qv = ck::load2(sm.q + t * kKPitch + kk);
      dot += qv.x * sm.n[kk] + qv.y * sm.n[kk + 1];
    }
    dot += __shfl_xor_sync(ck::kFullMask, dot, 1);
    dot += __shfl_xor_sync(ck::kFullMask, dot, 2);
    if (part == 0) sm.qn_inter[t] = dot;
  }
  __syncthreads();

  // S[t][s] = q^_t . k_s exp(cum_t - cum_s + i~_s - m_t) for s <= t in t's document, else 0 (selected)
  ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
    sacc[j][i] = (s <= t && sm.seg[s] == sm.seg[t])
                     ? sacc[j][i] * scale * expf(log_weight(sm.cum[t], sm.cum[s], sm.igv[s], sm.m[t]))
                     : 0.f;
  });
  {
    const float2 rs = ck::row_sums(sacc);
    const int gq = lane >> 2;
    if ((lane & 3) == 0) {
      sm.qn_part[warp >> 2][m0 + gq] = rs.x;
      sm.qn_part[warp >> 2][m0 + gq + 8] = rs.y;
    }
  }
  ck::store_frag<T>(sm.s, kChunkPitch, sacc, m0, n0);
  {  // the rounding residual of S (the numerator then uses S to ~2^-16, like qn above)
    float lo[4][4];
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int, int) {
      lo[j][i] = sacc[j][i] - ck::to_float(ck::from_float<T>(sacc[j][i]));
    });
    ck::store_frag<T>(sm.s_lo, kChunkPitch, lo, m0, n0);
  }
  __syncthreads();
  if (tid < kChunk) {
    const int t = tid;
    const float qn = sm.qn_part[0][t] + sm.qn_part[1][t] + sm.wint[t] * scale * sm.qn_inter[t];
    const float den = fmaxf(fabsf(qn), expf(-sm.m[t])) + kEps;
    sm.inv_den[t] = 1.f / den;
    if (t < rows) {
      if (a.qn) a.qn[bh * T_len + t0 + t] = qn;
      if (a.m) a.m[bh * T_len + t0 + t] = sm.m[t];
    }
  }

  T* h_base = static_cast<T*>(a.h) + (bh * T_len + t0) * Dv;
  T* h_lo_base = a.h_lo ? static_cast<T*>(a.h_lo) + (bh * T_len + t0) * Dv : nullptr;
  const int n_slices = Dv / kSlice;
  const int gq = lane >> 2, q4 = lane & 3;
  for (int j = 0; j < n_slices; ++j) {
    const int buf = j & 1;
    __syncthreads();  // everyone is done with slice j - 1 (its buffer is refilled next); inv_den is visible
    if (j + 1 < n_slices) load_slice(j + 1, buf ^ 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();
    __syncthreads();
    auto& st = sm.stage[buf];

    // h = (diag(w_inter) q^ C + S V) / den
    float acc[4][4];
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*Q[t][k]*/ false, /*C[k][v]*/ true>(acc, sm.q, kKPitch, m0, st.c, kChunkPitch, n0, DK);
    if (c_lo) {  // q^ C_lo too (C_p's rounding residual; its slice loaded over st.c)
      __syncthreads();
      ck::cp_async_tile<T, DK, kSlice, kFwdThreads>(st.c, kChunkPitch, c_lo + j * kSlice, Dv, DK);
      ck::cp_async_commit();
      ck::cp_async_wait<0>();
      __syncthreads();
      ck::warp_gemm<T, 4, false, true>(acc, sm.q, kKPitch, m0, st.c, kChunkPitch, n0, DK);
    }
    ck::scale_rows(acc, sm.wint[m0 + gq] * scale, sm.wint[m0 + gq + 8] * scale);
    ck::warp_gemm<T, 4, /*S[t][s]*/ false, /*V[s][v]*/ true>(acc, sm.s, kChunkPitch, m0, st.v, kChunkPitch, n0, kChunk);
    ck::warp_gemm<T, 4, /*S_lo[t][s]*/ false, /*V[s][v]*/ true>(acc, sm.s_lo, kChunkPitch, m0, st.v, kChunkPitch, n0,
                                                               kChunk);
    ck::scale_rows(acc, sm.inv_den[m0 + gq], sm.inv_den[m0 + gq + 8]);
    __syncthreads();  // all warps are done reading st.v: stage h there for 16-byte stores
SUBQ_UNROLL
    for (int jj = 0; jj < 4; ++jj) {
      const int col = n0 + 8 * jj + 2 * q4;
      ck::store2(st.v + (m0 + gq) * kChunkPitch + col, acc[jj][0], acc[jj][1]);
      ck::store2(st.v + (m0 + gq + 8) * kChunkPitch + col, acc[jj][2], acc[jj][3]);
    }
    __syncthreads();
    ck::store_tile<T, kChunk, kSlice, kFwdThreads>(h_base + j * kSlice, Dv, st.v, kChunkPitch, rows);
    if (h_lo_base) {  // h - h rounded, for the backward's dh . h (staged the same way, after everyone stored h)
      __syncthreads();
SUBQ_UNROLL
      for (int jj = 0; jj < 4; ++jj) {
        const int col = n0 + 8 * jj + 2 * q4;
        auto res = [](float x) { return x - ck::to_float(ck::from_float<T>(x)); };
        ck::store2(st.v + (m0 + gq) * kChunkPitch + col, res(acc[jj][0]), res(acc[jj][1]));
        ck::store2(st.v + (m0 + gq + 8) * kChunkPitch + col, res(acc[jj][2]), res(acc[jj][3]));
      }
      __syncthreads();
      ck::store_tile<T, kChunk, kSlice, kFwdThreads>(h_lo_base + j * kSlice, Dv, st.v, kChunkPitch, rows);
    }
  }
  ck::cp_async_wait<0>();
}

}  // namespace subq::ops::detail::mlstm_kernels
