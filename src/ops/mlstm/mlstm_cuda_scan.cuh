// mlstm_cuda_scan.cuh — the mLSTM state scan kernel (see mlstm_cuda_scan.cu for what it computes and the
// decisions): device code only, included by mlstm_cuda_scan.cu and by the CPU emulation test
// (tests/unit/test_mlstm_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_gates.cuh"

namespace subq::ops::detail::mlstm_kernels {

using ck::kChunk;

constexpr int kScanThreads = 128;
// Two cp.async stages and one staging tile (49 KB of shared memory): four blocks share an SM, so the 512
// blocks of B8 H16 Dk = Dv = 128 run in one wave on 132 SMs (v1.1's three stages and three tiles: 87 KB,
// two blocks per SM, two waves).
constexpr int kScanStages = 2;
constexpr int kScanBlocksPerSm = 4;
constexpr int kTile = 64;
constexpr int kTilePitch = ck::pitch_of(kTile);

template <typename T>
struct ScanStage {
  T k[kChunk * kTilePitch];
  T v[kChunk * kTilePitch];
  float ig[kChunk];
  float fg[kChunk];
  int rst[kChunk];
  float inv_den[kChunk];  // reverse only
  float dqn[kChunk];      // reverse only
};

template <typename T>
constexpr size_t scan_smem_bytes() {
  return kScanStages * sizeof(ScanStage<T>) + kTile * kTilePitch * sizeof(T) + (2 * kChunk + 4) * sizeof(float);
}
// 228 KB of shared memory per SM on sm_90, 1 KB of it reserved per block
static_assert(kScanBlocksPerSm * (scan_smem_bytes<__nv_bfloat16>() + 1024) <= 228 * 1024,
              "the scan's shared memory no longer lets kScanBlocksPerSm blocks share an SM");

// kReverse = false: the state scan; true: the state-gradient scan of the backward (see MlstmScanArgs).
template <typename T, bool kReverse>
__global__ void __launch_bounds__(kScanThreads, kScanBlocksPerSm) mlstm_scan_kernel(const MlstmScanArgs a) {
  SUBQ_DYNAMIC_SMEM(smem);
  auto* stages = reinterpret_cast<ScanStage<T>*>(smem);
  // one staging tile, used in turn for: the state entering the chunk (rounded) on its way to c_states, its
  // rounding residual on its way to c_states_lo, the rounding residual of the weighted k rows (split_weights)
  T* tile = reinterpret_cast<T*>(smem + kScanStages * sizeof(ScanStage<T>));
  T* k_lo = tile;
  float* wts = reinterpret_cast<float*>(tile + kTile * kTilePitch);
  float* nwts = wts + kChunk;  // weights of the n update (forward: = wts)
  float* scal = nwts + kChunk;  // [0] weight of the carried state, [1] the new stabiliser

  const int Dk = a.n.dk, Dv = a.n.dv, T_len = a.n.time, H = a.n.heads, nc = a.n.chunks;
  const int n_kt = Dk / kTile;
  const int kt = blockIdx.x % n_kt, vt = blockIdx.x / n_kt;
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;
  const int m0 = 16 * warp;
  const bool owns_n = vt == 0, owns_m = !kReverse && blockIdx.x == 0;
  const float scale = 1.f / sqrtf(static_cast<float>(Dk));

  const T* k_bh = static_cast<const T*>(a.k.ptr) + b * a.k.s0 + h * a.k.s1 + kt * kTile;
  const T* v_bh = static_cast<const T*>(a.v.ptr) + b * a.v.s0 + h * a.v.s1 + vt * kTile;
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const float* ig_bh = a.igate + bh * T_len;
  const float* fg_bh = a.fgate + bh * T_len;
  const int* rst_b = a.reset ? a.reset + static_cast<int64_t>(b) * T_len : nullptr;

  auto chunk_at = [&](int i) { return kReverse ? nc - 1 - i : i; };
  auto load = [&](int stage, int c) {
    ScanStage<T>& st = stages[stage];
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    if constexpr (kReverse) {
      ck::cp_async_vec<float, kChunk, kScanThreads>(st.inv_den, a.inv_den + bh * T_len + t0, 1, rows);
      ck::cp_async_vec<float, kChunk, kScanThreads>(st.dqn, a.dqn + bh * T_len + t0, 1, rows);
    }
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.k, kTilePitch, k_bh + t0 * a.k.s2, a.k.s2, rows);
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.v, kTilePitch, v_bh + t0 * a.v.s2, a.v.s2, rows);
    ck::cp_async_vec<float, kChunk, kScanThreads>(st.ig, ig_bh + t0, 1, rows);
    ck::cp_async_vec<float, kChunk, kScanThreads>(st.fg, fg_bh + t0, 1, rows);
    if (rst_b) ck::cp_async_vec<int, kChunk, kScanThreads>(st.rst, rst_b + t0, 1, rows);
  };

  // the carried state: C tile in mma accumulators, n (this block's 64 rows of it) one value per thread < 64,
  // m in every thread
  float acc[8][4];
  ck::zero(acc);
  float n_reg = 0.f, m = 0.f;
  if (a.c_in) {
    const float* s = a.c_in + (bh * Dk + kt * kTile) * Dv + vt * kTile;
    ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { acc[j][e] = s[static_cast<int64_t>(r) * Dv + col]; });
    if (tid < kTile) n_reg = a.n_in[bh * Dk + kt * kTile + tid];
    if (!kReverse) m = a.m_in[bh];
  }

  for (int s = 0; s < kScanStages - 1; ++s) {
    if (s < nc) load(s, chunk_at(s));
    ck::cp_async_commit();
  }
  T* c_states = static_cast<T*>(a.c_states);
  for (int i = 0; i < nc; ++i) {
    const int c = chunk_at(i);
    ck::cp_async_wait<kScanStages - 2>();  // chunk i's group has landed (this thread's copies)
    __syncthreads();                       // ... everyone's; and everyone is done with chunk i - 1
    if (i + kScanStages - 1 < nc) load((i + kScanStages - 1) % kScanStages, chunk_at(i + kScanStages - 1));
    ck::cp_async_commit();
    ScanStage<T>& st = stages[i % kScanStages];
    const int valid = min(kChunk, T_len - c * kChunk);

    if (warp == 0) {
      const float m_p = kReverse ? a.m_states[bh * nc + c] : m;
      const LaneGates gt = chunk_gates_warp(st.ig, st.fg, rst_b ? st.rst : nullptr, valid, m_p);
SUBQ_UNROLL
      for (int j = 0; j < 2; ++j) {
        const int t = 2 * lane + j;
        if constexpr (!kReverse) {  // token weights in the chunk-end state: exp(cum_63 - cum_s + i~_s - m_63)
          wts[t] = gt.seg[j] == gt.seg_last ? expf(log_weight(gt.cum_last, gt.cum[j], gt.ig[j], gt.m_last)) : 0.f;
          nwts[t] = wts[t];
        } else {  // a_t / sqrt(Dk) times 1 / den_t (for dC) or dqn_t (for dn), a_t = exp(g_t - m_t) [seg_t = 0]
          const float at = gt.seg[j] == 0 ? scale * expf(carried_weight(gt.g[j], gt.m[j])) : 0.f;
          wts[t] = at * st.inv_den[t];
          nwts[t] = at * st.dqn[t];
        }
      }
      if (lane == 0) {
        scal[0] = gt.seg_last == 0 ? expf(carried_weight(gt.g_last, gt.m_last)) : 0.f;
        scal[1] = gt.m_last;
      }
    }
    ck::store_frag<T>(tile, kTilePitch, acc, m0, 0);  // C entering chunk c
    if (owns_n && tid < kTile) a.n_states[(bh * nc + c) * Dk + kt * kTile + tid] = n_reg;
    if (owns_m && tid == 0) a.m_states[bh * nc + c] = m;
    __syncthreads();

    const float w_prev = scal[0];
    m = scal[1];
    if (owns_n && tid < kTile) {  // n <- w_prev n + sum_s w_s k_s (fp32, unrounded weights)
      float acc_n = w_prev * n_reg;
      for (int s = 0; s < kChunk; ++s) acc_n += nwts[s] * ck::to_float(st.k[s * kTilePitch + tid]);
      n_reg = acc_n;
    }
    const int64_t state_at = ((bh * nc + c) * Dk + kt * kTile) * Dv + vt * kTile;
    ck::store_tile<T, kTile, kTile, kScanThreads>(c_states + state_at, Dv, tile, kTilePitch, kTile);
    __syncthreads();  // the raw k tile and the staged state have been read
    if (a.c_states_lo) {
      float lo[8][4];
      ck::for_each_frag<8>(m0, 0, [&](int j, int e, int, int) {
        lo[j][e] = acc[j][e] - ck::to_float(ck::from_float<T>(acc[j][e]));
      });
      ck::store_frag<T>(tile, kTilePitch, lo, m0, 0);
      __syncthreads();
      ck::store_tile<T, kTile, kTile, kScanThreads>(static_cast<T*>(a.c_states_lo) + state_at, Dv, tile, kTilePitch,
                                                    kTile);
      __syncthreads();  // the staged residual has been read
    }

    if (a.split_weights) {  // w o k = hi + lo, both rounded: hi in place, lo beside it
      for (int e = tid; e < kChunk * kTile / 2; e += kScanThreads) {
        const int r = e / (kTile / 2), col = 2 * (e % (kTile / 2));
        const float2 x = ck::load2(st.k + r * kTilePitch + col);
        const float w = wts[r], x0 = x.x * w, x1 = x.y * w;
        const float h0 = ck::to_float(ck::from_float<T>(x0)), h1 = ck::to_float(ck::from_float<T>(x1));
        ck::store2(st.k + r * kTilePitch + col, h0, h1);
        ck::store2(k_lo + r * kTilePitch + col, x0 - h0, x1 - h1);
      }
    } else {
      ck::scale_tile_rows<T, kChunk, kTile, kScanThreads>(st.k, kTilePitch, wts);
    }
    __syncthreads();

    ck::scale_rows(acc, w_prev, w_prev);
    ck::warp_gemm<T, 8, /*A k-major: K[s][k]*/ true, /*B k-major: V[s][v]*/ true>(acc, st.k, kTilePitch, m0, st.v,
                                                                                kTilePitch, 0, kChunk);
    if (a.split_weights)
      ck::warp_gemm<T, 8, true, true>(acc, k_lo, kTilePitch, m0, st.v, kTilePitch, 0, kChunk);
  }
  ck::cp_async_wait<0>();  // no copies in flight when the block exits

  float* co = a.c_out + (bh * Dk + kt * kTile) * Dv + vt * kTile;
  ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { co[static_cast<int64_t>(r) * Dv + col] = acc[j][e]; });
  if (owns_n && tid < kTile) a.n_out[bh * Dk + kt * kTile + tid] = n_reg;
  if (owns_m && tid == 0) a.m_out[bh] = m;
}

}  // namespace subq::ops::detail::mlstm_kernels
