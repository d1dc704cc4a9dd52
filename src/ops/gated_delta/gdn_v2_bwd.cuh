// gdn_v2_bwd.cuh — device code of the Gated DeltaNet v2 backward (fused tensor-core kernels; formulas,
// grids and decisions in gdn_v2_bwd.cu and docs/perf/gated_delta.md "Version 2 backward"). Included by
// gdn_v2_bwd.cu and by the CPU emulation test tests/unit/test_gated_delta_v2_bwd_emulated.cpp.
//
// Notation per (batch*head, chunk c of 64 tokens), t, s local: gc = in-chunk inclusive cumsum of g, seg =
// document id (resets), D[t,s] = exp(gc_t - gc_s) [s <= t, same document], e_t = exp(gc_t) [seg_t = 0],
// dl_s = D[63, s] (decay to the chunk end; K_end = diag(dl) K), gamma = exp(gc_63) [seg_63 = 0].
// Tokens past T are zero-filled on load (g = 0: they leave gc and seg unchanged), so position 63 stands for
// the chunk's last token in every formula.
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/gated_delta/gated_delta_cuda.h"

namespace subq::ops::detail::gdn_v2_bwd {

using ck::kChunk;
using ck::kChunkPitch;

constexpr int kThreads = 256;  // 8 warps in every kernel
constexpr int kVTile = 32;     // value columns per pipeline step of chunk_bwd / wy_bwd
constexpr int kVTilePitch = ck::pitch_of(kVTile);
constexpr int kKSlice = 64;    // key columns per chunk_bwd block
constexpr int kKSlicePitch = ck::pitch_of(kKSlice);
constexpr size_t kSmemLimit = 227 * 1024;

// The per-chunk decay quantities (written by warp 0, read by every thread after a barrier).
struct Decay {
  float gc[kChunk], e[kChunk], dl[kChunk];
  int seg[kChunk];
  float gamma;
};

// Warp 0 only: fills d from the chunk's log-decays g[0..63] (zero past T) and reset flags (nullptr: none).
__device__ __forceinline__ void chunk_decay(Decay& d, const float* g, const int* rst) {
  const ck::LaneDecay ld = ck::chunk_decay_warp(g, rst, 1.f);
  const int lane = threadIdx.x & 31, t = 2 * lane;
  const float cum[2] = {ld.cum0, ld.cum1};
  const int seg[2] = {ld.seg0, ld.seg1};
SUBQ_UNROLL
  for (int k = 0; k < 2; ++k) {
    d.gc[t + k] = cum[k];
    d.seg[t + k] = seg[k];
    d.e[t + k] = seg[k] == 0 ? expf(cum[k]) : 0.f;
    d.dl[t + k] = seg[k] == ld.seg_last ? expf(ld.cum_last - cum[k]) : 0.f;
  }
  if (lane == 0) d.gamma = ld.seg_last == 0 ? expf(ld.cum_last) : 0.f;
}

__device__ __forceinline__ float decay_at(const Decay& d, int t, int s) {
  return (s <= t && d.seg[s] == d.seg[t]) ? expf(d.gc[t] - d.gc[s]) : 0.f;
}

// Stores a fragment (16 x 8 NT at (m0, n0)) to global rows base + r * stride (r < rows), as T pairs.
template <typename T, int NT>
__device__ __forceinline__ void store_frag_global(T* base, int64_t stride, const float (&acc)[NT][4], int m0, int n0,
                                                  int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * q;
    if (m0 + g < rows) ck::store2(base + (m0 + g) * stride + col, acc[j][0], acc[j][1]);
    if (m0 + g + 8 < rows) ck::store2(base + (m0 + g + 8) * stride + col, acc[j][2], acc[j][3]);
  }
}

// fp32 fragment <-> global rows base + r * stride (r < rows; other rows load as 0), as float2 pairs.
template <int NT>
__device__ __forceinline__ void store_frag_global_f32(float* base, int64_t stride, const float (&acc)[NT][4], int m0,
                                                      int n0, int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * q;
    if (m0 + g < rows) *reinterpret_cast<float2*>(base + (m0 + g) * stride + col) = make_float2(acc[j][0], acc[j][1]);
    if (m0 + g + 8 < rows)
      *reinterpret_cast<float2*>(base + (m0 + g + 8) * stride + col) = make_float2(acc[j][2], acc[j][3]);
  }
}
template <int NT>
__device__ __forceinline__ void load_frag_global_f32(float (&acc)[NT][4], const float* base, int64_t stride, int m0,
                                                     int n0, int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * q;
    const float2 lo = m0 + g < rows ? *reinterpret_cast<const float2*>(base + (m0 + g) * stride + col)
                                    : make_float2(0.f, 0.f);
    const float2 hi = m0 + g + 8 < rows ? *reinterpret_cast<const float2*>(base + (m0 + g + 8) * stride + col)
                                        : make_float2(0.f, 0.f);
    acc[j][0] = lo.x;
    acc[j][1] = lo.y;
    acc[j][2] = hi.x;
    acc[j][3] = hi.y;
  }
}

// Stores the rounding residual acc - T(acc) of a fragment (16 x 8 NT at (m0, n0)) to a shared tile of T:
// with the tile of T(acc) it splits the fp32 accumulator into a hi + lo pair of tensor-core operands.
template <typename T, int NT>
__device__ __forceinline__ void store_frag_residual(T* tile, int pitch, const float (&acc)[NT][4], int m0, int n0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * q;
    const float2 h0 = ck::unpack2<T>(ck::pack2<T>(acc[j][0], acc[j][1]));
    const float2 h1 = ck::unpack2<T>(ck::pack2<T>(acc[j][2], acc[j][3]));
    ck::store2(tile + (m0 + g) * pitch + col, acc[j][0] - h0.x, acc[j][1] - h0.y);
    ck::store2(tile + (m0 + g + 8) * pitch + col, acc[j][2] - h1.x, acc[j][3] - h1.y);
  }
}

// Adds sum over the fragment's columns of U[row, col] * acc[row, col] to x.x (row m0 + g) and x.y (row m0 + g
// + 8); u holds U's pairs at the fragment's positions (load_frag_pairs).
template <typename T, int NT>
__device__ __forceinline__ void add_row_dot_pairs(float2& x, const float (&acc)[NT][4], const uint32_t (&u)[NT][2]) {
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const float2 a = ck::unpack2<T>(u[j][0]), b = ck::unpack2<T>(u[j][1]);
    x.x += a.x * acc[j][0] + a.y * acc[j][1];
    x.y += b.x * acc[j][2] + b.y * acc[j][3];
  }
}
// The pairs of a global [rows, stride] tile of T at a fragment's positions (16 x 8 NT at (m0, n0)); rows >=
// `rows` read as 0.
template <typename T, int NT>
__device__ __forceinline__ void load_frag_pairs(uint32_t (&u)[NT][2], const T* base, int64_t stride, int m0, int n0,
                                                int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
SUBQ_UNROLL
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * q;
    u[j][0] = m0 + g < rows ? *reinterpret_cast<const uint32_t*>(base + (m0 + g) * stride + col) : 0u;
    u[j][1] = m0 + g + 8 < rows ? *reinterpret_cast<const uint32_t*>(base + (m0 + g + 8) * stride + col) : 0u;
  }
}

// ======================================================================================================
// B1 scan_bwd: grid (Dv / BV, B*H), chunks last to first, G = dL/dS_{c+1} ([BV, DK] fp32 in mma
// accumulators, starts at dfinal). Per chunk:
//   dstates[c] = G;  P = (Q K^T) o D;  dU = P^T dO + diag(dl) K G^T  (-> du);
//   G <- gamma G + dO^T diag(e) Q - dU^T W;   finally ds0 = G.
// ======================================================================================================
template <typename T, int DK, int BV, int STAGES>
struct ScanSmem {
  static constexpr int kKP = ck::pitch_of(DK), kVP = ck::pitch_of(BV);
  struct Stage {
    T k[kChunk * kKP];
    T y[2 * kChunk * kKP];  // rows 0..63: Q (scaled by e in place), rows 64..127: W
    T x[2 * kChunk * kVP];  // rows 0..63: dO, rows 64..127: -dU (written by the block)
    float g[kChunk];
    int rst[kChunk];
  } st[STAGES];
  T p[kChunk * kChunkPitch];  // P = (Q K^T) o D, [t][s]
  T gs[BV * kKP];             // G in the operand dtype, [v][i]
  Decay d;
};

template <typename T, int DK, int BV>
constexpr int scan_stages() {
  return sizeof(ScanSmem<T, DK, BV, 2>) <= kSmemLimit ? 2 : 1;
}
template <typename T, int DK, int BV>
using ScanSmemOf = ScanSmem<T, DK, BV, scan_stages<T, DK, BV>()>;

template <typename T, int DK, int BV>
__global__ void __launch_bounds__(kThreads, 1) gdn_v2_scan_bwd_kernel(const GdnV2BwdArgs a) {
  constexpr int STAGES = scan_stages<T, DK, BV>();
  using Smem = ScanSmem<T, DK, BV, STAGES>;
  constexpr int kKP = Smem::kKP, kVP = Smem::kVP;
  constexpr int kWpr = 128 / BV;        // warps per 16-row block of G
  constexpr int NTG = DK / kWpr / 8;    // n-tiles of a warp's part of G
  constexpr int NTU = BV / 16;          // n-tiles of a warp's part of dU (64 x BV, 4 x 2 warps)
  static_assert(NTG % 2 == 0 && NTU % 2 == 0, "bad tile split");
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int vt = blockIdx.x, bh = blockIdx.y;
  const int H = a.heads, T_len = a.time, nc = a.chunks, Dv = a.value_dim;
  const int b = bh / H, v0 = vt * BV;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2;
  const int m0g = 16 * (warp / kWpr), n0g = (warp % kWpr) * (DK / kWpr);
  const int m0u = 16 * (warp & 3), n0u = (warp >> 2) * (BV / 2);
  const int m0p = 16 * (warp & 3), n0p = 32 * (warp >> 2);

  const int64_t row_k = static_cast<int64_t>(bh) * T_len;  // first token row of this (b, h)
  const T* q = static_cast<const T*>(a.q) + row_k * DK;
  const T* k = static_cast<const T*>(a.k) + row_k * DK;
  const T* w = static_cast<const T*>(a.w) + row_k * DK;
  const T* dO = static_cast<const T*>(a.d_o) + row_k * Dv + v0;
  T* du = static_cast<T*>(a.du) + row_k * Dv + v0;
  T* dstates = static_cast<T*>(a.dstates);
  const float* gg = a.g + row_k;
  const int* rst = a.reset ? a.reset + static_cast<int64_t>(b) * T_len : nullptr;

  auto load = [&](int c, int buf) {
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    auto& st = sm.st[buf];
    ck::cp_async_tile<T, kChunk, DK, kThreads>(st.k, kKP, k + t0 * DK, DK, rows);
    ck::cp_async_tile<T, kChunk, DK, kThreads>(st.y, kKP, q + t0 * DK, DK, rows);
    ck::cp_async_tile<T, kChunk, DK, kThreads>(st.y + kChunk * kKP, kKP, w + t0 * DK, DK, rows);
    ck::cp_async_tile<T, kChunk, BV, kThreads>(st.x, kVP, dO + static_cast<int64_t>(t0) * Dv, Dv, rows);
    ck::cp_async_vec<float, kChunk, kThreads>(st.g, gg + t0, 1, rows);
    if (rst) ck::cp_async_vec<int, kChunk, kThreads>(st.rst, rst + t0, 1, rows);
  };

  float G[NTG][4];
  if (a.dfinal)
    load_frag_global_f32<NTG>(G, a.dfinal + (static_cast<int64_t>(bh) * Dv + v0) * DK, DK, m0g, n0g, BV);
  else
    ck::zero(G);

  load(nc - 1, 0);
  ck::cp_async_commit();
  for (int c = nc - 1; c >= 0; --c) {
    const int buf = STAGES == 2 ? ((nc - 1 - c) & 1) : 0;
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_wait<0>();
    __syncthreads();  // (1) chunk c landed; every read of the previous step is done
    if (STAGES == 2 && c > 0) load(c - 1, buf ^ 1);
    ck::cp_async_commit();
    auto& st = sm.st[buf];

    // (a) decays; G -> operand dtype
    if (warp == 0) chunk_decay(sm.d, st.g, rst ? st.rst : nullptr);
    ck::store_frag<T>(sm.gs, kKP, G, m0g, n0g);
    __syncthreads();  // (2)

    // (b) dstates[c] = G; P = (Q K^T) o D
    ck::store_tile<T, BV, DK, kThreads>(dstates + ((static_cast<int64_t>(bh) * nc + c) * Dv + v0) * DK, DK, sm.gs, kKP,
                                        BV);
    {
      float pa[4][4];
      ck::zero(pa);
      ck::warp_gemm<T, 4, /*Q[t][i]*/ false, /*K[s][i]*/ false>(pa, st.y, kKP, m0p, st.k, kKP, n0p, DK);
      ck::for_each_frag<4>(m0p, n0p, [&](int j, int i, int t, int s) { pa[j][i] *= decay_at(sm.d, t, s); });
      ck::store_frag<T>(sm.p, kChunkPitch, pa, m0p, n0p);
    }
    __syncthreads();  // (3)

    // (c) dU = diag(dl) K G^T + P^T dO -> du (global) and -dU (x rows 64..); Q rows scaled by e.
    // x_s = <U_s, (K G^T)_s> (the K_end term of the decay chain) with G split into hi + lo operands: the hi
    // part here, the lo part after (d). G rounded to the operand dtype in this product dominated dg's error
    // (it is a small difference of large terms; docs/perf/gated_delta.md "dg accuracy").
    const T* u_rows = static_cast<const T*>(a.u) + (row_k + t0) * Dv + v0;  // U's [64, BV] tile (read twice)
    float2 xs = make_float2(0.f, 0.f);
    {
      uint32_t ur[NTU][2];
      load_frag_pairs<T, NTU>(ur, u_rows, Dv, m0u, n0u, rows);
      float acc[NTU][4];
      ck::zero(acc);
      ck::warp_gemm<T, NTU, /*K[s][i]*/ false, /*G[v][i]*/ false>(acc, st.k, kKP, m0u, sm.gs, kKP, n0u, DK);
      add_row_dot_pairs<T, NTU>(xs, acc, ur);
      ck::scale_rows(acc, sm.d.dl[m0u + gq], sm.d.dl[m0u + gq + 8]);
      ck::warp_gemm<T, NTU, /*P[t][s]*/ true, /*dO[t][v]*/ true>(acc, sm.p, kChunkPitch, m0u, st.x, kVP, n0u, kChunk);
      store_frag_global<T, NTU>(du + static_cast<int64_t>(t0) * Dv, Dv, acc, m0u, n0u, rows);
SUBQ_UNROLL
      for (int j = 0; j < NTU; ++j)
SUBQ_UNROLL
        for (int i = 0; i < 4; ++i) acc[j][i] = -acc[j][i];
      ck::store_frag<T>(st.x + kChunk * kVP, kVP, acc, m0u, n0u);
    }
    ck::scale_tile_rows<T, kChunk, DK, kThreads>(st.y, kKP, sm.d.e);
    __syncthreads();  // (4)

    // (d) G <- gamma G + [dO; -dU]^T [diag(e) Q; W]; first G's residual G - T(G) -> gs (read after (5))
    store_frag_residual<T, NTG>(sm.gs, kKP, G, m0g, n0g);
    {
      const float gamma = sm.d.gamma;
SUBQ_UNROLL
      for (int j = 0; j < NTG; ++j)
SUBQ_UNROLL
        for (int i = 0; i < 4; ++i) G[j][i] *= gamma;
      ck::warp_gemm<T, NTG, /*X[t][v]*/ true, /*Y[t][i]*/ true>(G, st.x, kVP, m0g, st.y, kKP, n0g, 2 * kChunk);
    }
    __syncthreads();  // (5) the residual of G is in gs
    {  // x's lo part: K (G - T(G))^T; per-warp partial sums of x (this warp's BV / 2 value columns) -> x_part
      uint32_t ur[NTU][2];
      load_frag_pairs<T, NTU>(ur, u_rows, Dv, m0u, n0u, rows);  // again (L2): not held through (d)
      float acc[NTU][4];
      ck::zero(acc);
      ck::warp_gemm<T, NTU, /*K[s][i]*/ false, /*Glo[v][i]*/ false>(acc, st.k, kKP, m0u, sm.gs, kKP, n0u, DK);
      add_row_dot_pairs<T, NTU>(xs, acc, ur);
      xs.x += __shfl_xor_sync(0xffffffffu, xs.x, 1);
      xs.y += __shfl_xor_sync(0xffffffffu, xs.y, 1);
      xs.x += __shfl_xor_sync(0xffffffffu, xs.x, 2);
      xs.y += __shfl_xor_sync(0xffffffffu, xs.y, 2);
      if ((lane & 3) == 0) {
        float* xp = a.x_part + (static_cast<int64_t>(2 * vt + (warp >> 2)) * a.bh + bh) * (static_cast<int64_t>(nc) * kChunk) + t0;
        xp[m0u + gq] = xs.x;
        xp[m0u + gq + 8] = xs.y;
      }
    }
    if (STAGES == 1) {
      __syncthreads();  // every read of the single stage is done
      if (c > 0) load(c - 1, 0);
      ck::cp_async_commit();
    }
  }
  ck::cp_async_wait<0>();
  store_frag_global_f32<NTG>(a.ds0 + (static_cast<int64_t>(bh) * Dv + v0) * DK, DK, G, m0g, n0g, BV);
}

// ======================================================================================================
// B2 chunk_bwd: grid (DK / 64, nc, B*H); a block owns one 64-column key slice of one chunk and loops over
// the value dimension in 32-wide tiles, three cp.async stages deep (S_c = states[c], G = dstates[c]):
//   dq1 = dO S_c, dKe = U G, dW = -dU S_c, dOU = dO U^T, <G, S_c>   (sums over the value tiles)
//   dq = diag(e) dq1 + (dOU o D) K;   dk_part = (dOU o D)^T Q + diag(dl) dKe;   dw = dW
//   dgc_part_t = rowsum_t(dDD) - colsum_t(dDD) + e_t <dq1_t, Q_t> + [t = 63] gamma <G, S_c>
//                with dDD = dOU o (Q K^T) o D  (K_end's term -dl_t x_t + [t = 63] sum_s dl_s x_s, x_s = <dKe_s, K_s>,
//                comes from scan_bwd's x_part, where G is in fp32; wy_bwd adds it)
// (everything restricted to the block's key slice: the key-dimension sums are partials over slices).
// ======================================================================================================
constexpr int kChunkStages = 3;  // chunk_bwd's value-tile pipeline depth (little compute per tile)

template <typename T>
struct ChunkSmem {
  T q[kChunk * kKSlicePitch], k[kChunk * kKSlicePitch];
  T p[kChunk * kKSlicePitch];  // P' = dOU o D, [t][s]
  struct Stage {
    T dO[kChunk * kVTilePitch], u[kChunk * kVTilePitch], du[kChunk * kVTilePitch];
    T s[kVTile * kKSlicePitch], gs[kVTile * kKSlicePitch];
  } st[kChunkStages];
  float g[kChunk];
  int rst[kChunk];
  Decay d;
  float rowp[2][kChunk], colp[4][kChunk], dep[2][kChunk];
  float gpart[8];
};

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) gdn_v2_chunk_bwd_kernel(const GdnV2BwdArgs a) {
  using Smem = ChunkSmem<T>;
  constexpr int kKP = kKSlicePitch, kVP = kVTilePitch;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int ks = blockIdx.x, c = blockIdx.y, bh = blockIdx.z;  // key slices adjacent: dO, U, dU shared in L2
  const int H = a.heads, T_len = a.time, nc = a.chunks, Dv = a.value_dim, Dk = a.key_dim;
  const int b = bh / H, i0 = ks * kKSlice, t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, qq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);

  const int64_t row0 = static_cast<int64_t>(bh) * T_len + t0;  // first token row of this chunk
  const T* dO = static_cast<const T*>(a.d_o) + row0 * Dv;
  const T* u = static_cast<const T*>(a.u) + row0 * Dv;
  const T* du = static_cast<const T*>(a.du) + row0 * Dv;
  const int64_t soff = (static_cast<int64_t>(bh) * nc + c) * Dv * Dk + i0;
  const T* S = static_cast<const T*>(a.states) + soff;
  const T* Gs = static_cast<const T*>(a.dstates) + soff;
  const int nvt = Dv / kVTile;

  auto load_tile = [&](int vt, int buf) {
    auto& st = sm.st[buf];
    const int v0 = vt * kVTile;
    ck::cp_async_tile<T, kChunk, kVTile, kThreads>(st.dO, kVP, dO + v0, Dv, rows);
    ck::cp_async_tile<T, kChunk, kVTile, kThreads>(st.u, kVP, u + v0, Dv, rows);
    ck::cp_async_tile<T, kChunk, kVTile, kThreads>(st.du, kVP, du + v0, Dv, rows);
    ck::cp_async_tile<T, kVTile, kKSlice, kThreads>(st.s, kKP, S + static_cast<int64_t>(v0) * Dk, Dk, kVTile);
    ck::cp_async_tile<T, kVTile, kKSlice, kThreads>(st.gs, kKP, Gs + static_cast<int64_t>(v0) * Dk, Dk, kVTile);
  };
  ck::cp_async_tile<T, kChunk, kKSlice, kThreads>(sm.q, kKP, static_cast<const T*>(a.q) + row0 * Dk + i0, Dk, rows);
  ck::cp_async_tile<T, kChunk, kKSlice, kThreads>(sm.k, kKP, static_cast<const T*>(a.k) + row0 * Dk + i0, Dk, rows);
  ck::cp_async_vec<float, kChunk, kThreads>(sm.g, a.g + row0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  load_tile(0, 0);
  ck::cp_async_commit();
  static_assert(kChunkStages == 3, "the waits below assume three stages");
  if (nvt > 1) load_tile(1, 1);
  ck::cp_async_commit();

  float dq1[4][4], dke[4][4], dw[4][4], dou[4][4];
  ck::zero(dq1);
  ck::zero(dke);
  ck::zero(dw);
  ck::zero(dou);
  float gsum = 0.f;
  for (int vt = 0; vt < nvt; ++vt) {
    const int buf = vt % kChunkStages;
    __syncthreads();  // the buffer about to be refilled (tile vt - 1's) is no longer read
    if (vt + 2 < nvt) load_tile(vt + 2, (vt + 2) % kChunkStages);
    ck::cp_async_commit();
    ck::cp_async_wait<2>();  // groups 0..vt (tile vt) have landed
    __syncthreads();
    if (vt == 0 && warp == 0) chunk_decay(sm.d, sm.g, a.reset ? sm.rst : nullptr);
    auto& st = sm.st[buf];
    ck::warp_gemm<T, 4, /*dO[t][v]*/ false, /*S[v][i]*/ true>(dq1, st.dO, kVP, m0, st.s, kKP, n0, kVTile);
    ck::warp_gemm<T, 4, /*U[s][v]*/ false, /*G[v][i]*/ true>(dke, st.u, kVP, m0, st.gs, kKP, n0, kVTile);
    ck::warp_gemm<T, 4, /*dU[s][v]*/ false, /*S[v][i]*/ true>(dw, st.du, kVP, m0, st.s, kKP, n0, kVTile);
    ck::warp_gemm<T, 4, /*dO[t][v]*/ false, /*U[s][v]*/ false>(dou, st.dO, kVP, m0, st.u, kVP, n0, kVTile);
    {  // <G, S> over this 32 x 64 tile: one 16-byte vector of each per thread
      const int r = tid >> 3, cc = (tid & 7) * 8;
      const uint4 sv = *reinterpret_cast<const uint4*>(st.s + r * kKP + cc);
      const uint4 gv = *reinterpret_cast<const uint4*>(st.gs + r * kKP + cc);
      const uint32_t s4[4] = {sv.x, sv.y, sv.z, sv.w}, g4[4] = {gv.x, gv.y, gv.z, gv.w};
SUBQ_UNROLL
      for (int m = 0; m < 4; ++m) {
        const float2 x = ck::unpack2<T>(s4[m]), y = ck::unpack2<T>(g4[m]);
        gsum += x.x * y.x + x.y * y.y;
      }
    }
  }
  ck::cp_async_wait<0>();
  // dw = -dU S_c (written first: frees its registers for the epilogue)
SUBQ_UNROLL
  for (int j = 0; j < 4; ++j)
SUBQ_UNROLL
    for (int i = 0; i < 4; ++i) dw[j][i] = -dw[j][i];
  store_frag_global<T, 4>(static_cast<T*>(a.dw) + row0 * Dk + i0, Dk, dw, m0, n0, rows);
  __syncthreads();  // the decays (warp 0, first tile) are visible

  // Epilogue. Q K^T over the slice; P' = dOU o D (shared); dDD row / column sums; de and x partials.
  {
    float qk[4][4];  // becomes dDD = P' o Q K^T
    ck::zero(qk);
    ck::warp_gemm<T, 4, /*Q[t][i]*/ false, /*K[s][i]*/ false>(qk, sm.q, kKP, m0, sm.k, kKP, n0, kKSlice);
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
      dou[j][i] *= decay_at(sm.d, t, s);
      qk[j][i] *= dou[j][i];
    });
    ck::store_frag<T>(sm.p, kKP, dou, m0, n0);
    const float2 rs = ck::row_sums(qk);
    float2 cs[4];
    ck::col_sums(qk, cs);
    const float2 de = ck::row_dot<T, 4>(dq1, sm.q, kKP, m0, n0);
    if (qq == 0) {
      sm.rowp[warp >> 2][m0 + gq] = rs.x;
      sm.rowp[warp >> 2][m0 + gq + 8] = rs.y;
      sm.dep[warp >> 2][m0 + gq] = de.x;
      sm.dep[warp >> 2][m0 + gq + 8] = de.y;
    }
    if (lane < 4) {
SUBQ_UNROLL
      for (int j = 0; j < 4; ++j) {
        sm.colp[warp & 3][n0 + 8 * j + 2 * lane] = cs[j].x;
        sm.colp[warp & 3][n0 + 8 * j + 2 * lane + 1] = cs[j].y;
      }
    }
    const float gw = ck::warp_sum(gsum);
    if (lane == 0) sm.gpart[warp] = gw;
  }
  __syncthreads();

  // dq = diag(e) dq1 + P' K
  ck::scale_rows(dq1, sm.d.e[m0 + gq], sm.d.e[m0 + gq + 8]);
  ck::warp_gemm<T, 4, /*P'[t][s]*/ false, /*K[s][i]*/ true>(dq1, sm.p, kKP, m0, sm.k, kKP, n0, kChunk);
  store_frag_global<T, 4>(static_cast<T*>(a.dq) + row0 * Dk + i0, Dk, dq1, m0, n0, rows);
  // dk_part = P'^T Q + diag(dl) dKe  (fp32)
  ck::scale_rows(dke, sm.d.dl[m0 + gq], sm.d.dl[m0 + gq + 8]);
  ck::warp_gemm<T, 4, /*P'[t][s]*/ true, /*Q[t][i]*/ true>(dke, sm.p, kKP, m0, sm.q, kKP, n0, kChunk);
  store_frag_global_f32<4>(a.dk_part + row0 * Dk + i0, Dk, dke, m0, n0, rows);

  if (warp == 0) {
    const int t = 2 * lane;
    float v[2];
SUBQ_UNROLL
    for (int m = 0; m < 2; ++m) {
      const int tt = t + m;
      const float rsum = sm.rowp[0][tt] + sm.rowp[1][tt];
      const float csum = sm.colp[0][tt] + sm.colp[1][tt] + sm.colp[2][tt] + sm.colp[3][tt];
      const float de = sm.dep[0][tt] + sm.dep[1][tt];
      v[m] = rsum - csum + sm.d.e[tt] * de;
    }
    float gdot = 0.f;
SUBQ_UNROLL
    for (int m = 0; m < 8; ++m) gdot += sm.gpart[m];
    if (lane == 31) v[1] += sm.d.gamma * gdot;
    float* out = a.dgc_part + (static_cast<int64_t>(ks) * a.bh + bh) * (static_cast<int64_t>(nc) * kChunk) + t0;
    out[t] = v[0];
    out[t + 1] = v[1];
  }
}

// ======================================================================================================
// B3 wy_bwd: grid (nc, B*H); the UT transform's backward and the end of the decay chain. With X = [U~ | W]
// = Tinv R, R = [diag(beta) V | diag(beta e) K] (U~ recomputed as (Tinv diag(beta)) V):
//   dRw = Tinv^T dW;  dRv = Tinv^T dU;  dv = diag(beta) dRv;  dA = -strict_lower(dRv U~^T + dRw W^T)
//   rw_t = <dRw_t, K_t>;  dbeta_t = <dRv_t, V_t> + e_t rw_t + sum_s (dA o KK o D)[t,s]
//   M = dA o beta_t o D;  dk = dk_part + diag(beta e) dRw + (M + M^T) K
//   dDD = dA o beta_t o KK o D;  dgc = sum_ks dgc_part + rowsum(dDD) - colsum(dDD) + e beta rw
//   dg = reverse in-chunk cumsum of dgc.
// ======================================================================================================
template <typename T, int DK>
struct WySmem {
  static constexpr int kKP = ck::pitch_of(DK);
  T k[kChunk * kKP], w[kChunk * kKP];
  T dw[kChunk * kKP];                       // dW, then dRw (operand dtype)
  T ti[kChunk * kChunkPitch];               // Tinv [s][t]
  T tib[kChunk * kChunkPitch];              // Tinv diag(beta), then M
  struct Stage {
    T v[kChunk * kVTilePitch], du[kChunk * kVTilePitch];
  } st[2];
  T ut[kChunk * kVTilePitch], drv[kChunk * kVTilePitch];
  float g[kChunk], beta[kChunk];
  int rst[kChunk];
  Decay d;
  float rwp[2][kChunk], dbp[2][kChunk], arow[2][kChunk], drow[2][kChunk], dcol[4][kChunk];
};

template <typename T, int DK>
__global__ void __launch_bounds__(kThreads, DK <= 128 ? 2 : 1) gdn_v2_wy_bwd_kernel(const GdnV2BwdArgs a) {
  using Smem = WySmem<T, DK>;
  constexpr int kKP = Smem::kKP, kVP = kVTilePitch;
  constexpr int NTR = DK / 16;  // n-tiles of a warp's part of a 64 x DK tile (4 x 2 warps)
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int c = blockIdx.x, bh = blockIdx.y;
  const int H = a.heads, T_len = a.time, nc = a.chunks, Dv = a.value_dim;
  const int b = bh / H, t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, qq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);          // 64 x 64 tiles
  const int n0r = (warp >> 2) * (DK / 2);                         // 64 x DK tiles
  const int n0v = 16 * (warp >> 2);                               // 64 x 32 tiles

  const int64_t row0 = static_cast<int64_t>(bh) * T_len + t0;
  const T* v = static_cast<const T*>(a.v) + row0 * Dv;
  const T* du = static_cast<const T*>(a.du) + row0 * Dv;
  const int nvt = Dv / kVTile;
  auto load_tile = [&](int vt, int buf) {
    auto& st = sm.st[buf];
    ck::cp_async_tile<T, kChunk, kVTile, kThreads>(st.v, kVP, v + vt * kVTile, Dv, rows);
    ck::cp_async_tile<T, kChunk, kVTile, kThreads>(st.du, kVP, du + vt * kVTile, Dv, rows);
  };
  ck::cp_async_tile<T, kChunk, DK, kThreads>(sm.k, kKP, static_cast<const T*>(a.k) + row0 * DK, DK, rows);
  ck::cp_async_tile<T, kChunk, DK, kThreads>(sm.w, kKP, static_cast<const T*>(a.w) + row0 * DK, DK, rows);
  ck::cp_async_tile<T, kChunk, DK, kThreads>(sm.dw, kKP, static_cast<const T*>(a.dw) + row0 * DK, DK, rows);
  ck::cp_async_vec<float, kChunk, kThreads>(sm.g, a.g + row0, 1, rows);
  ck::cp_async_vec<float, kChunk, kThreads>(sm.beta, a.beta + row0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_commit();
  load_tile(0, 0);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();  // everything but value tile 0
  __syncthreads();
  if (warp == 0) chunk_decay(sm.d, sm.g, a.reset ? sm.rst : nullptr);
  {  // Tinv (fp32, global) -> operand dtype: Tinv and Tinv diag(beta); 16 elements per thread
    const float* ti = a.tinv + (static_cast<int64_t>(bh) * nc + c) * kChunk * kChunk;
    for (int i = tid; i < kChunk * kChunk / 4; i += kThreads) {
      const int r = i / (kChunk / 4), cc = (i % (kChunk / 4)) * 4;
      const float4 x = *reinterpret_cast<const float4*>(ti + r * kChunk + cc);
      ck::store2(sm.ti + r * kChunkPitch + cc, x.x, x.y);
      ck::store2(sm.ti + r * kChunkPitch + cc + 2, x.z, x.w);
      ck::store2(sm.tib + r * kChunkPitch + cc, x.x * sm.beta[cc], x.y * sm.beta[cc + 1]);
      ck::store2(sm.tib + r * kChunkPitch + cc + 2, x.z * sm.beta[cc + 2], x.w * sm.beta[cc + 3]);
    }
  }
  __syncthreads();

  // dRw = Tinv^T dW; rw partials
  {
    float drw[NTR][4];
    ck::zero(drw);
    ck::warp_gemm<T, NTR, /*Tinv[s][t]*/ true, /*dW[s][i]*/ true>(drw, sm.ti, kChunkPitch, m0, sm.dw, kKP, n0r, kChunk);
    const float2 rw = ck::row_dot<T, NTR>(drw, sm.k, kKP, m0, n0r);
    if (qq == 0) {
      sm.rwp[warp >> 2][m0 + gq] = rw.x;
      sm.rwp[warp >> 2][m0 + gq + 8] = rw.y;
    }
    __syncthreads();  // every read of dW is done
    ck::store_frag<T>(sm.dw, kKP, drw, m0, n0r);
  }
  __syncthreads();

  // nA = dRw W^T + sum over value tiles of dRv U~^T   (dA = -strict_lower(nA))
  float na[4][4];
  ck::zero(na);
  ck::warp_gemm<T, 4, /*dRw[t][i]*/ false, /*W[s][i]*/ false>(na, sm.dw, kKP, m0, sm.w, kKP, n0, DK);
  float db_lo = 0.f, db_hi = 0.f;
  const float beta_lo = sm.beta[m0 + gq], beta_hi = sm.beta[m0 + gq + 8];
  T* dv_out = static_cast<T*>(a.dv) + row0 * Dv;
  for (int vt = 0; vt < nvt; ++vt) {
    const int buf = vt & 1;
    __syncthreads();  // the buffer about to be refilled, ut and drv are no longer read
    if (vt + 1 < nvt) load_tile(vt + 1, buf ^ 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();
    __syncthreads();  // value tile vt landed
    auto& st = sm.st[buf];
    float ut[2][4], drv[2][4];
    ck::zero(ut);
    ck::zero(drv);
    ck::warp_gemm<T, 2, /*TinvB[t][s]*/ false, /*V[s][v]*/ true>(ut, sm.tib, kChunkPitch, m0, st.v, kVP, n0v, kChunk);
    ck::warp_gemm<T, 2, /*Tinv[s][t]*/ true, /*dU[s][v]*/ true>(drv, sm.ti, kChunkPitch, m0, st.du, kVP, n0v, kChunk);
    const float2 dbv = ck::row_dot<T, 2>(drv, st.v, kVP, m0, n0v);
    db_lo += dbv.x;
    db_hi += dbv.y;
    ck::store_frag<T>(sm.ut, kVP, ut, m0, n0v);
    ck::store_frag<T>(sm.drv, kVP, drv, m0, n0v);
    ck::scale_rows(drv, beta_lo, beta_hi);
    store_frag_global<T, 2>(dv_out + vt * kVTile, Dv, drv, m0, n0v, rows);
    __syncthreads();
    ck::warp_gemm<T, 4, /*dRv[t][v]*/ false, /*U~[s][v]*/ false>(na, sm.drv, kVP, m0, sm.ut, kVP, n0, kVTile);
  }
  if (qq == 0) {
    sm.dbp[warp >> 2][m0 + gq] = db_lo;
    sm.dbp[warp >> 2][m0 + gq + 8] = db_hi;
  }
  __syncthreads();  // every read of tib is done (it becomes M)

  // dA, M = dA o beta_t o D (shared), dDD and dbeta sums. K K^T is computed here, not kept through the
  // value loop (16 registers fewer there: no spills at the 2-blocks-per-SM register budget).
  {
    float kk[4][4];
    ck::zero(kk);
    ck::warp_gemm<T, 4, /*K[t][i]*/ false, /*K[s][i]*/ false>(kk, sm.k, kKP, m0, sm.k, kKP, n0, DK);
    float pa[4][4], pd[4][4], pm[4][4];
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
      const float da = s < t ? -na[j][i] : 0.f;
      const float dts = decay_at(sm.d, t, s);
      pa[j][i] = da * kk[j][i] * dts;
      pm[j][i] = da * sm.beta[t] * dts;
      pd[j][i] = pm[j][i] * kk[j][i];
    });
    ck::store_frag<T>(sm.tib, kChunkPitch, pm, m0, n0);
    const float2 ra = ck::row_sums(pa), rd = ck::row_sums(pd);
    float2 cs[4];
    ck::col_sums(pd, cs);
    if (qq == 0) {
      sm.arow[warp >> 2][m0 + gq] = ra.x;
      sm.arow[warp >> 2][m0 + gq + 8] = ra.y;
      sm.drow[warp >> 2][m0 + gq] = rd.x;
      sm.drow[warp >> 2][m0 + gq + 8] = rd.y;
    }
    if (lane < 4) {
SUBQ_UNROLL
      for (int j = 0; j < 4; ++j) {
        sm.dcol[warp & 3][n0 + 8 * j + 2 * lane] = cs[j].x;
        sm.dcol[warp & 3][n0 + 8 * j + 2 * lane + 1] = cs[j].y;
      }
    }
  }
  __syncthreads();

  // dk = dk_part + diag(beta e) dRw + (M + M^T) K
  {
    float dkf[NTR][4];
    load_frag_global_f32<NTR>(dkf, a.dk_part + row0 * DK, DK, m0, n0r, rows);
    ck::for_each_frag<NTR>(m0, n0r, [&](int j, int i, int r, int col) {
      dkf[j][i] += sm.beta[r] * sm.d.e[r] * ck::to_float(sm.dw[r * kKP + col]);
    });
    ck::warp_gemm<T, NTR, /*M[t][s]*/ false, /*K[s][i]*/ true>(dkf, sm.tib, kChunkPitch, m0, sm.k, kKP, n0r, kChunk);
    ck::warp_gemm<T, NTR, /*M[s][t]*/ true, /*K[s][i]*/ true>(dkf, sm.tib, kChunkPitch, m0, sm.k, kKP, n0r, kChunk);
    store_frag_global<T, NTR>(static_cast<T*>(a.dk) + row0 * DK, DK, dkf, m0, n0r, rows);
  }

  if (warp == 0) {
    const int t = 2 * lane;
    float dgc[2], dbeta[2], xl[2];
SUBQ_UNROLL
    for (int m = 0; m < 2; ++m) {
      const int tt = t + m;
      const float rw = sm.rwp[0][tt] + sm.rwp[1][tt];
      const float e = sm.d.e[tt];
      float part = 0.f;
      for (int s = 0; s < a.key_slices; ++s)
        part += a.dgc_part[(static_cast<int64_t>(s) * a.bh + bh) * (static_cast<int64_t>(nc) * kChunk) + t0 + tt];
      float x = 0.f;
      for (int s = 0; s < a.x_blocks; ++s)
        x += a.x_part[(static_cast<int64_t>(s) * a.bh + bh) * (static_cast<int64_t>(nc) * kChunk) + t0 + tt];
      xl[m] = sm.d.dl[tt] * x;
      part -= xl[m];
      dgc[m] = part + sm.drow[0][tt] + sm.drow[1][tt] -
               (sm.dcol[0][tt] + sm.dcol[1][tt] + sm.dcol[2][tt] + sm.dcol[3][tt]) + e * sm.beta[tt] * rw;
      dbeta[m] = sm.dbp[0][tt] + sm.dbp[1][tt] + e * rw + sm.arow[0][tt] + sm.arow[1][tt];
    }
    const float xsum = ck::warp_sum(xl[0] + xl[1]);  // K_end's decay term: + sum_s dl_s x_s at t = 63
    if (lane == 31) dgc[1] += xsum;
    const float2 dg = ck::suffix_sum_warp(dgc[0], dgc[1]);
    if (t < rows) {
      a.dg[row0 + t] = dg.x;
      a.dbeta[row0 + t] = dbeta[0];
    }
    if (t + 1 < rows) {
      a.dg[row0 + t + 1] = dg.y;
      a.dbeta[row0 + t + 1] = dbeta[1];
    }
  }
}

}  // namespace subq::ops::detail::gdn_v2_bwd
