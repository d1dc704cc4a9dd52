// mlstm_cuda_bwd.cuh — the mLSTM backward chunk kernel (see mlstm_cuda_bwd.cu for what it computes and the
// decisions): device code only, included by mlstm_cuda_bwd.cu and by the CPU emulation test
// (tests/unit/test_mlstm_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_gates.cuh"

namespace subq::ops::detail::mlstm_kernels {

using ck::kChunk;
using ck::kSlice;

constexpr int kBwdThreads = 256;
constexpr float kBwdEps = 1e-6f;  // kMlstmEps of subq/ops/mlstm.h

template <typename T, int DK, int DV>
struct BwdSmem {
  static constexpr int kKPitch = ck::pitch_of(DK), kVPitch = ck::pitch_of(DV);
  // Dk loop: rows of C_p, then of C_lo, then of dC_out (64 x Dv, one at a time); Dv loop: a column slice of
  // dC_out (Dk x 64). One tile, not two, so that two blocks share an SM at Dk = Dv = 128 (111 KB).
  static constexpr int kBuf = ck::kChunk * kVPitch > DK * ck::kChunkPitch ? ck::kChunk * kVPitch
                                                                          : DK * ck::kChunkPitch;
  T q[ck::kChunk * kKPitch];
  T k[ck::kChunk * kKPitch];
  T v[ck::kChunk * kVPitch];
  T dh[ck::kChunk * kVPitch];
  T s[ck::kChunk * ck::kChunkPitch];  // S[t][s] / den_t
  T g[ck::kChunk * ck::kChunkPitch];  // dS o A / sqrt(Dk)
  T buf[kBuf];
  float np[DK], dnout[DK];
  float ig[ck::kChunk], fg[ck::kChunk], inv[ck::kChunk], dqn[ck::kChunk];
  int rst[ck::kChunk], seg[ck::kChunk];
  double cum[ck::kChunk];  // fp64 prefix sums (mlstm_cuda_gates.cuh)
  float igv[ck::kChunk], m[ck::kChunk], a[ck::kChunk], b[ck::kChunk], qnp[ck::kChunk], kdn[ck::kChunk];
  float prow[2][ck::kChunk], pcol[4][ck::kChunk], pa[2][ck::kChunk], pb[2][ck::kChunk];
  float red[kBwdThreads / 32];
  float bprev;
};

template <typename T, int DK, int DV>
__global__ void __launch_bounds__(kBwdThreads, 2) mlstm_chunk_bwd_kernel(const MlstmChunkBwdArgs a) {
  using Smem = BwdSmem<T, DK, DV>;
  constexpr int kKPitch = Smem::kKPitch, kVPitch = Smem::kVPitch;
  constexpr int kCP = ck::kChunkPitch;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int H = a.n.heads, T_len = a.n.time, nc = a.n.chunks;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
  const int gq = lane >> 2, q4 = lane & 3;
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const int64_t bhc = bh * nc + c;
  const float scale = 1.f / sqrtf(static_cast<float>(DK));

  auto rows_at = [&](const MlstmRows& r) {
    return static_cast<const T*>(r.ptr) + b * r.s0 + h * r.s1 + t0 * r.s2;
  };
  ck::cp_async_tile<T, kChunk, DK, kBwdThreads>(sm.q, kKPitch, rows_at(a.q), a.q.s2, rows);
  ck::cp_async_tile<T, kChunk, DK, kBwdThreads>(sm.k, kKPitch, rows_at(a.k), a.k.s2, rows);
  ck::cp_async_tile<T, kChunk, DV, kBwdThreads>(sm.v, kVPitch, rows_at(a.v), a.v.s2, rows);
  ck::cp_async_tile<T, kChunk, DV, kBwdThreads>(sm.dh, kVPitch, rows_at(a.dh), a.dh.s2, rows);
  ck::cp_async_vec<float, kChunk, kBwdThreads>(sm.ig, a.igate + bh * T_len + t0, 1, rows);
  ck::cp_async_vec<float, kChunk, kBwdThreads>(sm.fg, a.fgate + bh * T_len + t0, 1, rows);
  ck::cp_async_vec<float, kChunk, kBwdThreads>(sm.inv, a.inv_den + bh * T_len + t0, 1, rows);
  ck::cp_async_vec<float, kChunk, kBwdThreads>(sm.dqn, a.dqn + bh * T_len + t0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kBwdThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_vec<float, DK, kBwdThreads>(sm.np, a.n_states + bhc * DK, 1, DK);
  ck::cp_async_vec<float, DK, kBwdThreads>(sm.dnout, a.dn_states + bhc * DK, 1, DK);
  ck::cp_async_commit();
  ck::cp_async_wait<0>();
  __syncthreads();

  if (warp == 0) {
    const LaneGates gt = chunk_gates_warp(sm.ig, sm.fg, a.reset ? sm.rst : nullptr, rows, a.m_states[bhc]);
SUBQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int t = 2 * lane + j;
      sm.cum[t] = gt.cum[j];
      sm.igv[t] = gt.ig[j];
      sm.m[t] = gt.m[j];
      sm.seg[t] = gt.seg[j];
      sm.a[t] = gt.seg[j] == 0 ? expf(carried_weight(gt.g[j], gt.m[j])) : 0.f;
      sm.b[t] = gt.seg[j] == gt.seg_last ? expf(log_weight(gt.cum_last, gt.cum[j], gt.ig[j], gt.m_last)) : 0.f;
    }
    if (lane == 0) sm.bprev = gt.seg_last == 0 ? expf(carried_weight(gt.g_last, gt.m_last)) : 0.f;
  }
  float sacc[4][4], pacc[4][4];
  ck::zero(sacc);
  ck::zero(pacc);
  ck::warp_gemm<T, 4, /*Q[t][k]*/ false, /*K[s][k]*/ false>(sacc, sm.q, kKPitch, m0, sm.k, kKPitch, n0, DK);
  ck::warp_gemm<T, 4, /*dH[t][v]*/ false, /*V[s][v]*/ false>(pacc, sm.dh, kVPitch, m0, sm.v, kVPitch, n0, DV);
  {  // q_t . n_p and k_t . dn_out (fp32), four threads per row
    const int t = tid >> 2, part = tid & 3;
    float dq_n = 0.f, dk_n = 0.f;
    for (int kk = part * (DK / 4); kk < (part + 1) * (DK / 4); kk += 2) {
      const float2 qv = ck::load2(sm.q + t * kKPitch + kk), kv = ck::load2(sm.k + t * kKPitch + kk);
      dq_n += qv.x * sm.np[kk] + qv.y * sm.np[kk + 1];
      dk_n += kv.x * sm.dnout[kk] + kv.y * sm.dnout[kk + 1];
    }
    dq_n += __shfl_xor_sync(ck::kFullMask, dq_n, 1);
    dq_n += __shfl_xor_sync(ck::kFullMask, dq_n, 2);
    dk_n += __shfl_xor_sync(ck::kFullMask, dk_n, 1);
    dk_n += __shfl_xor_sync(ck::kFullMask, dk_n, 2);
    if (part == 0) {
      sm.qnp[t] = dq_n;
      sm.kdn[t] = dk_n;
    }
  }
  __syncthreads();

  // S, dS = dnum_t . v_s + dqn_t, G = dS o A, P = dS o S (the gradient of the log-weights), masked by selection
  float pv[4][4];
  ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
    if (s <= t && sm.seg[s] == sm.seg[t]) {
      const float A = expf(log_weight(sm.cum[t], sm.cum[s], sm.igv[s], sm.m[t]));
      const float S = scale * sacc[j][i] * A;
      const float dS = sm.inv[t] * pacc[j][i] + sm.dqn[t];
      pv[j][i] = dS * S;
      sacc[j][i] = S * sm.inv[t];
      pacc[j][i] = scale * dS * A;
    } else {
      pv[j][i] = sacc[j][i] = pacc[j][i] = 0.f;
    }
  });
  {
    const float2 rs = ck::row_sums(pv);
    if (q4 == 0) {
      sm.prow[warp >> 2][m0 + gq] = rs.x;
      sm.prow[warp >> 2][m0 + gq + 8] = rs.y;
    }
    float2 cs[4];
    ck::col_sums(pv, cs);
    if (lane < 4)
SUBQ_UNROLL
      for (int j = 0; j < 4; ++j) {
        sm.pcol[warp & 3][n0 + 8 * j + 2 * lane] = cs[j].x;
        sm.pcol[warp & 3][n0 + 8 * j + 2 * lane + 1] = cs[j].y;
      }
  }
  ck::store_frag<T>(sm.s, kCP, sacc, m0, n0);
  ck::store_frag<T>(sm.g, kCP, pacc, m0, n0);
  __syncthreads();

  const T* cst = static_cast<const T*>(a.c_states) + bhc * DK * DV;
  const T* dcst = static_cast<const T*>(a.dc_states) + bhc * DK * DV;
  const T* c_lo = a.c_lo ? static_cast<const T*>(a.c_lo) + bhc * DK * DV : nullptr;
  T* cps = sm.buf;  // the slice of C_p, then of C_lo, then of dC_out
  T* dq_g = static_cast<T*>(a.dq) + (bh * T_len + t0) * DK;
  T* dk_g = static_cast<T*>(a.dk) + (bh * T_len + t0) * DK;
  T* dv_g = static_cast<T*>(a.dv) + (bh * T_len + t0) * DV;
  // fragment -> global rows (< rows) of a [*, width] row-major output, columns col0..
  auto store_rows = [&](T* dst, int width, int col0, const float (&acc)[4][4]) {
SUBQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int col = col0 + n0 + 8 * j + 2 * q4;
      if (m0 + gq < rows) ck::store2(dst + (m0 + gq) * width + col, acc[j][0], acc[j][1]);
      if (m0 + gq + 8 < rows) ck::store2(dst + (m0 + gq + 8) * width + col, acc[j][2], acc[j][3]);
    }
  };
  float cdc = 0.f;  // this thread's part of <C_p, dC_out>
  float pa_lo = 0.f, pa_hi = 0.f, pb_lo = 0.f, pb_hi = 0.f;
  const float ai_lo = scale * sm.a[m0 + gq] * sm.inv[m0 + gq], ai_hi = scale * sm.a[m0 + gq + 8] * sm.inv[m0 + gq + 8];
  const float ad_lo = scale * sm.a[m0 + gq] * sm.dqn[m0 + gq], ad_hi = scale * sm.a[m0 + gq + 8] * sm.dqn[m0 + gq + 8];
  const float b_lo = sm.b[m0 + gq], b_hi = sm.b[m0 + gq + 8];
  for (int j = 0; j < DK / kSlice; ++j) {
    ck::cp_async_tile<T, kChunk, DV, kBwdThreads>(cps, kVPitch, cst + j * kSlice * DV, DV, kChunk);
    ck::cp_async_commit();
    ck::cp_async_wait<0>();
    __syncthreads();
    // dq = (a / sqrt(Dk)) (dH C_p^T / den + dqn n_p) + G' K
    float acc[4][4];
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*dH[t][v]*/ false, /*C_p[k][v]*/ false>(acc, sm.dh, kVPitch, m0, cps, kVPitch, n0, DV);
    if (c_lo) {  // C_p's rounding residual C_lo too (loaded over this slice of C_p)
      __syncthreads();
      ck::cp_async_tile<T, kChunk, DV, kBwdThreads>(cps, kVPitch, c_lo + j * kSlice * DV, DV, kChunk);
      ck::cp_async_commit();
      ck::cp_async_wait<0>();
      __syncthreads();
      ck::warp_gemm<T, 4, false, false>(acc, sm.dh, kVPitch, m0, cps, kVPitch, n0, DV);
    }
    {
      const float2 rd = ck::row_dot(acc, sm.q + j * kSlice, kKPitch, m0, n0);
      pa_lo += rd.x;
      pa_hi += rd.y;
    }
    ck::for_each_frag<4>(m0, n0, [&](int jj, int i, int t, int col) {
      const bool lo = t == m0 + gq;
      acc[jj][i] = (lo ? ai_lo : ai_hi) * acc[jj][i] + (lo ? ad_lo : ad_hi) * sm.np[j * kSlice + col];
    });
    ck::warp_gemm<T, 4, /*G'[t][s]*/ false, /*K[s][k]*/ true>(acc, sm.g, kCP, m0, sm.k + j * kSlice, kKPitch, n0, kChunk);
    store_rows(dq_g, DK, j * kSlice, acc);
    __syncthreads();  // everyone is done with this slice of C_p / C_lo
    ck::cp_async_tile<T, kChunk, DV, kBwdThreads>(cps, kVPitch, dcst + j * kSlice * DV, DV, kChunk);
    ck::cp_async_commit();
    ck::cp_async_wait<0>();
    __syncthreads();
    // <C_p, dC_out> over this slice: dC_out from shared memory, C_p (and C_lo) read again from global memory
    // (L2: the block loaded them just before)
    {
      const T* cp_g = cst + j * kSlice * DV;
      const T* cl_g = c_lo ? c_lo + j * kSlice * DV : nullptr;
      for (int e = tid; e < kChunk * DV / 2; e += kBwdThreads) {
        const int r = e / (DV / 2), col = 2 * (e % (DV / 2));
        const float2 y = ck::load2(cps + r * kVPitch + col), x = ck::load2(cp_g + r * DV + col);
        cdc += x.x * y.x + x.y * y.y;
        if (cl_g) {
          const float2 xl = ck::load2(cl_g + r * DV + col);
          cdc += xl.x * y.x + xl.y * y.y;
        }
      }
    }
    // dk = b (V dC_out^T + dn_out) + G'^T Q
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*V[s][v]*/ false, /*dC[k][v]*/ false>(acc, sm.v, kVPitch, m0, cps, kVPitch, n0, DV);
    {
      const float2 rd = ck::row_dot(acc, sm.k + j * kSlice, kKPitch, m0, n0);
      pb_lo += rd.x;
      pb_hi += rd.y;
    }
    ck::for_each_frag<4>(m0, n0, [&](int jj, int i, int t, int col) {
      acc[jj][i] = (t == m0 + gq ? b_lo : b_hi) * (acc[jj][i] + sm.dnout[j * kSlice + col]);
    });
    ck::warp_gemm<T, 4, /*G'^T: G'[t][s]*/ true, /*Q[t][k]*/ true>(acc, sm.g, kCP, m0, sm.q + j * kSlice, kKPitch, n0,
                                                                  kChunk);
    store_rows(dk_g, DK, j * kSlice, acc);
    __syncthreads();  // everyone is done with this slice of dC_out
  }
  if (q4 == 0) {
    sm.pa[warp >> 2][m0 + gq] = pa_lo;
    sm.pa[warp >> 2][m0 + gq + 8] = pa_hi;
    sm.pb[warp >> 2][m0 + gq] = pb_lo;
    sm.pb[warp >> 2][m0 + gq + 8] = pb_hi;
  }
  cdc = ck::warp_sum(cdc);
  if (lane == 0) sm.red[warp] = cdc;

  // dv = b K dC_out + (S / den)^T dH, per 64-wide slice of Dv
  for (int i = 0; i < DV / kSlice; ++i) {
    ck::cp_async_tile<T, DK, kSlice, kBwdThreads>(sm.buf, kCP, dcst + i * kSlice, DV, DK);
    ck::cp_async_commit();
    ck::cp_async_wait<0>();
    __syncthreads();
    float acc[4][4];
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*K[s][k]*/ false, /*dC[k][v]*/ true>(acc, sm.k, kKPitch, m0, sm.buf, kCP, n0, DK);
    ck::scale_rows(acc, b_lo, b_hi);
    ck::warp_gemm<T, 4, /*S'^T: S'[t][s]*/ true, /*dH[t][v]*/ true>(acc, sm.s, kCP, m0, sm.dh + i * kSlice, kVPitch, n0,
                                                                    kChunk);
    store_rows(dv_g, DV, i * kSlice, acc);
    __syncthreads();
  }

  // gate gradients (warp 0): di_s = sum_t P[t][s] + Pb_s; dcum_t = sum_s P[t][s] - sum_t' P[t'][t] + Pa_t - Pb_t
  // (+ sum_s Pb_s + Pb_prev at the last position); dlf = suffix sums of dcum; df~ = dlf sigmoid(-f~)
  if (warp == 0) {
    float di[2], dcum[2], pbs = 0.f;
SUBQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int t = 2 * lane + j;
      const float pcol = sm.pcol[0][t] + sm.pcol[1][t] + sm.pcol[2][t] + sm.pcol[3][t];
      const float pa = scale * sm.a[t] * (sm.inv[t] * (sm.pa[0][t] + sm.pa[1][t]) + sm.dqn[t] * sm.qnp[t]);
      const float pb = sm.b[t] * (sm.pb[0][t] + sm.pb[1][t] + sm.kdn[t]);
      di[j] = pcol + pb;
      dcum[j] = sm.prow[0][t] + sm.prow[1][t] - pcol + pa - pb;
      pbs += pb;
    }
    pbs = ck::warp_sum(pbs);
    float ndn = 0.f;
    for (int kk = lane; kk < DK; kk += 32) ndn += sm.np[kk] * sm.dnout[kk];
    ndn = ck::warp_sum(ndn);
    float cdc_all = 0.f;
SUBQ_UNROLL
    for (int w = 0; w < kBwdThreads / 32; ++w) cdc_all += sm.red[w];
    if (lane == 31) dcum[1] += pbs + sm.bprev * (cdc_all + ndn);
    const float2 dl = ck::suffix_sum_warp(dcum[0], dcum[1]);
    const float dlv[2] = {dl.x, dl.y};
SUBQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int t = 2 * lane + j;
      if (t < rows) {
        a.dig[bh * T_len + t0 + t] = di[j];
        a.dfg[bh * T_len + t0 + t] = dlv[j] / (1.f + expf(sm.fg[t]));
      }
    }
  }
}

// The per-token pre-pass of the backward (MlstmPrepArgs): one warp per token, Dv / 64 pairs per lane.
constexpr int kPrepThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kPrepThreads) mlstm_prep_kernel(const MlstmPrepArgs a) {
  const int64_t n_tok = static_cast<int64_t>(a.batch) * a.heads * a.time;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (kPrepThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= n_tok) return;  // whole warps leave together
  const int64_t t = i % a.time, bh = i / a.time, hh = bh % a.heads, b = bh / a.heads;
  const T* dh = static_cast<const T*>(a.dh.ptr) + b * a.dh.s0 + hh * a.dh.s1 + t * a.dh.s2;
  const T* h = static_cast<const T*>(a.h) + i * a.dv;
  const T* h_lo = a.h_lo ? static_cast<const T*>(a.h_lo) + i * a.dv : nullptr;
  float dot = 0.f;
  for (int col = 2 * lane; col < a.dv; col += 64) {
    const float2 g = ck::load2(dh + col);
    float2 x = ck::load2(h + col);
    if (h_lo) {
      const float2 lo = ck::load2(h_lo + col);
      x.x += lo.x;
      x.y += lo.y;
    }
    dot += g.x * x.x + g.y * x.y;
  }
  dot = ck::warp_sum(dot);
  if (lane == 0) {
    const float qn = a.qn[i], floor = expf(-a.m[i]);
    const float inv = 1.f / (fmaxf(fabsf(qn), floor) + kBwdEps);
    const float sign = qn > 0.f ? 1.f : (qn < 0.f ? -1.f : 0.f);
    a.inv_den[i] = inv;
    a.dh_dot_h[i] = dot;
    a.dqn[i] = fabsf(qn) >= floor ? -dot * inv * sign : 0.f;
  }
}

}  // namespace subq::ops::detail::mlstm_kernels
