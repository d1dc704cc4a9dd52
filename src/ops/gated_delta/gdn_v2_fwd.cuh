// gdn_v2_fwd.cuh — device code of the fused Gated DeltaNet forward ("v2", docs/perf/gated_delta.md
// "Version 2"; host interface GdnV2FwdArgs in gated_delta_cuda.h, launchers in gdn_v2_fwd.cu, the contract
// with the backward in gated_delta_v2.h). Included by gdn_v2_fwd.cu and by the CPU emulation test
// (tests/unit/test_gated_delta_v2_fwd_emulated.cpp). Built on src/ops/common/chunk_kernels.cuh (mma.sync
// m16n8k16, ldmatrix, cp.async; tile pitch = width + 8 elements, conflict-free for ldmatrix).
//
// Per (batch*head, chunk c of 64 tokens; local t, s), gc the in-chunk cumulative log decay, seg the
// document id inside the chunk (chunk_kernels.cuh):
//   D[t,s] = exp(gc_t - gc_s) (s <= t, same document), e_t = exp(gc_t) (seg_t = 0), gamma = exp(gc_63)
//   (seg_63 = 0), d_t = D[63, t].
//   prep_fwd  (grid nc x BH, 8 warps)   A = strict_lower(diag(beta) (K K^T) o D), Tinv = (I + A)^-1 (fp32,
//             by halves), W = Tinv diag(beta e) K, U~ = Tinv diag(beta) V.
//   scan_fwd  (grid Dv/32 x BH, 4 warps, sequential over chunks) S (32 value rows x Dk, fp32 mma
//             accumulators): states[c] = S; U = U~ - W S^T; S = gamma S + (diag(d) U)^T K.
//   out_fwd   (grid nc x BH, 8 warps)   O = diag(e) Q S_c^T + ((Q K^T) o D) U, value slices of 64 (or 32).
//
// Decisions:
//  * Tinv stays fp32 (written for the backward). The W / U~ products take it as two 16-bit operands,
//    M = hi + lo (hi = round(M), lo = round(M - hi)), with M = Tinv diag(beta e) resp. Tinv diag(beta): the
//    diagonal scalings are folded into the fp32 matrix, so K and V enter the mma exactly as given and the
//    only rounding is that of the ~16-bit product operand (two mma passes; prep is not mma-bound).
//  * out_fwd takes P = (Q K^T) o D the same way, as hi + lo 16-bit tiles (one more k = 64 mma pass per value
//    slice; the kernel is memory-bound): in the emulated tests this cut o's error vs the fp32 reference by
//    ~10-15% (3.5e-3 -> 3.1e-3 relative RMS, bf16, slow decays). o, u, w, states stay single 16-bit values
//    (they are outputs / saved tensors in the operand dtype).
//  * The inverse by halves: T00, T11 (the diagonal 32 x 32 blocks) by forward substitution, warp w owning
//    block w with column j in lane j's 32 registers (row t = [t = j] - sum_{s<t} A[t,s] T[s,j], A read as
//    float4 warp broadcasts; the sum runs to round_up(t, 4), the extra terms are exact zeros), then
//    T10 = -T11 (A10 T00) by all 8 warps: a dependent chain of ~500 FMAs instead of ~2,000 for a whole
//    64-column substitution, and all warps busy in the second half. A (fp32) lives in the space of the
//    M tiles, which are written only after its last read.
//  * The scan keeps one buffer per operand and ping-pongs the copies: W, U~, g, reset of chunk c+1 are
//    fetched while the S update of chunk c runs, K of chunk c+1 while U = U~ - W S^T of chunk c+1 runs.
//    ~54 KB of shared memory and <= 128 registers (launch bounds) at Dk = 128: four blocks per SM,
//    B*H*Dv/32 = 512 blocks at the target shape (one wave on 132 SMs).
//  * U enters the state update as diag(d) U rounded once (fp32 U scaled, then rounded), instead of rounding
//    U and the decayed keys separately; u itself (unscaled) is written in the operand dtype.
//  * Masked decay entries are selected, never multiplied (exp of a positive exponent can overflow; inf * 0
//    is NaN). Tokens past T are zero-filled on load (k = v = q = 0, g = 0, beta = 0): they change nothing,
//    and Tinv's rows / columns for them are the identity's.
//  * Outputs are written straight from the mma fragments (4-byte stores of element pairs; a quad covers 16
//    consecutive bytes), rows past T skipped; the per-chunk state tiles go through shared memory anyway
//    (they are the next product's operand) and leave with 16-byte stores.
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/gated_delta/gated_delta_cuda.h"

namespace subq::ops::detail::gdn_v2 {

using ck::kChunk;
constexpr int kPrepThreads = 256;
constexpr int kScanThreads = 128;
constexpr int kOutThreads = 256;
constexpr int kScanRows = kGdnV2ScanRows;          // 32
constexpr int kAPitch = kChunk + 4;                // fp32 A tile: float4 rows, 16-byte aligned
constexpr int kCP = ck::kChunkPitch;               // 72: 64-wide 16-bit tiles
constexpr int kRowPitch = ck::pitch_of(kScanRows);  // 40: 32-wide 16-bit tiles
static_assert(kChunk == kGdnV2Chunk, "one chunk size");

// 64 rows of `width` 16-bit elements (width a multiple of 8, runtime) into shared memory with pitch `pitch`;
// rows >= rows_valid are zero-filled.
template <typename T, int kThreads>
__device__ __forceinline__ void cp_async_rows(T* dst, int pitch, const T* src, int64_t stride, int width,
                                              int rows_valid) {
  const int vecs = width / 8;
  for (int i = threadIdx.x; i < kChunk * vecs; i += kThreads) {
    const int r = i / vecs, c = (i % vecs) * 8;
    const bool ok = r < rows_valid;
    ck::cp_async16(dst + r * pitch + c, ok ? src + r * stride + c : src, ok);
  }
}

// ---- prep_fwd -------------------------------------------------------------------------------------------
template <typename T, int DK>
struct PrepLayout {
  static constexpr int kKP = ck::pitch_of(DK);
  static_assert(sizeof(T) * 4 * kChunk * kCP >= sizeof(float) * kChunk * kAPitch, "A fits in the M tiles' space");
  size_t k = 0, v = 0, m = 0, a = 0, vec = 0, total = 0;
  __host__ __device__ explicit PrepLayout(int dv) {
    k = 0;
    v = k + sizeof(T) * kChunk * kKP;
    m = v + sizeof(T) * kChunk * static_cast<size_t>(ck::pitch_of(dv));  // M tiles (A before them)
    a = m + sizeof(T) * 4 * kChunk * kCP;                                 // Tinv fp32
    vec = a + sizeof(float) * kChunk * kAPitch;
    total = vec + sizeof(float) * 6 * kChunk;
  }
};

template <typename T, int DK>
__global__ void __launch_bounds__(kPrepThreads, 2) gdn_v2_prep_fwd_kernel(const GdnV2FwdArgs a) {
  using L = PrepLayout<T, DK>;
  constexpr int kKP = L::kKP;
  const int Dv = a.value_dim, vp = ck::pitch_of(Dv), T_len = a.time, nc = a.chunks;
  const int c = blockIdx.x, bh = blockIdx.y, b = bh / a.heads;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  SUBQ_DYNAMIC_SMEM(smem);
  const L lay(Dv);
  T* Ks = reinterpret_cast<T*>(smem + lay.k);
  T* Vs = reinterpret_cast<T*>(smem + lay.v);
  T* Mw_hi = reinterpret_cast<T*>(smem + lay.m);
  T* Mw_lo = Mw_hi + kChunk * kCP;
  T* Mu_hi = Mw_lo + kChunk * kCP;
  T* Mu_lo = Mu_hi + kChunk * kCP;
  float* As = reinterpret_cast<float*>(smem + lay.m);  // A, until the M tiles replace it
  float* Ts = reinterpret_cast<float*>(smem + lay.a);  // Tinv (fp32)
  float* gs = reinterpret_cast<float*>(smem + lay.vec);
  float* bs = gs + kChunk;
  float* cum = bs + kChunk;
  float* es = cum + kChunk;
  int* rs = reinterpret_cast<int*>(es + kChunk);
  int* seg = rs + kChunk;

  const int64_t row0 = static_cast<int64_t>(bh) * T_len + t0;
  ck::cp_async_tile<T, kChunk, DK, kPrepThreads>(Ks, kKP, static_cast<const T*>(a.k) + row0 * DK, DK, rows);
  ck::cp_async_vec<float, kChunk, kPrepThreads>(gs, a.g + row0, 1, rows);
  ck::cp_async_vec<float, kChunk, kPrepThreads>(bs, a.beta + row0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kPrepThreads>(rs, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_commit();
  cp_async_rows<T, kPrepThreads>(Vs, vp, static_cast<const T*>(a.v) + row0 * Dv, Dv, Dv, rows);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();
  __syncthreads();

  if (warp == 0) {
    const ck::LaneDecay d = ck::chunk_decay_warp(gs, a.reset ? rs : nullptr, 1.f);
    const int t = 2 * lane;
    cum[t] = d.cum0;
    cum[t + 1] = d.cum1;
    seg[t] = d.seg0;
    seg[t + 1] = d.seg1;
    es[t] = d.seg0 == 0 ? expf(d.cum0) : 0.f;
    es[t + 1] = d.seg1 == 0 ? expf(d.cum1) : 0.f;
  }
  // K K^T: this warp's 16 x 32 part.
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
  {
    float kk[4][4];
    ck::zero(kk);
    ck::warp_gemm<T, 4, /*K[t][j]*/ false, /*K[s][j]*/ false>(kk, Ks, kKP, m0, Ks, kKP, n0, DK);
    __syncthreads();  // cum, seg
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
      As[t * kAPitch + s] = (s < t && seg[s] == seg[t]) ? bs[t] * kk[j][i] * expf(cum[t] - cum[s]) : 0.f;
    });
  }
  __syncthreads();

  // Tinv = (I + A)^-1 by halves: [T00 0; T10 T11] with T00, T11 the inverses of the diagonal 32 x 32 blocks
  // (forward substitution: warp w owns diagonal block w, lane = column, 32 registers) and
  // T10 = -T11 (A10 T00) (two 32 x 32 x 32 products over all warps: 4 rows x 1 column per thread).
  constexpr int kH = kChunk / 2;
  if (warp < 2) {
    const int o = kH * warp;
    float col[kH];
SUBQ_UNROLL
    for (int t = 0; t < kH; ++t) col[t] = 0.f;
SUBQ_UNROLL
    for (int t = 0; t < kH; ++t) {
      float x = t == lane ? 1.f : 0.f;
      const float* ar = As + (o + t) * kAPitch + o;
SUBQ_UNROLL
      for (int s = 0; s < t; s += 4) {
        const float4 a4 = *reinterpret_cast<const float4*>(ar + s);
        x -= a4.x * col[s];
        x -= a4.y * col[s + 1];
        x -= a4.z * col[s + 2];
        x -= a4.w * col[s + 3];
      }
      col[t] = x;
    }
SUBQ_UNROLL
    for (int t = 0; t < kH; ++t) {
      Ts[(o + t) * kAPitch + o + lane] = col[t];
      if (warp == 0) Ts[t * kAPitch + kH + lane] = 0.f;  // the upper right block
    }
  }
  __syncthreads();
  {
    // X = A10 T00 -> the lower left block of Ts (rows kH + warp + 8m, column lane)
    float x[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < kH; k += 4) {
      const float t0 = Ts[k * kAPitch + lane], t1 = Ts[(k + 1) * kAPitch + lane];
      const float t2 = Ts[(k + 2) * kAPitch + lane], t3 = Ts[(k + 3) * kAPitch + lane];
SUBQ_UNROLL
      for (int m = 0; m < 4; ++m) {
        const float4 a4 = *reinterpret_cast<const float4*>(As + (kH + warp + 8 * m) * kAPitch + k);
        x[m] += a4.x * t0;
        x[m] += a4.y * t1;
        x[m] += a4.z * t2;
        x[m] += a4.w * t3;
      }
    }
SUBQ_UNROLL
    for (int m = 0; m < 4; ++m) Ts[(kH + warp + 8 * m) * kAPitch + lane] = x[m];
  }
  __syncthreads();  // X complete; A is dead from here on (its space becomes the M tiles)
  {
    float y[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < kH; k += 4) {
      const float x0 = Ts[(kH + k) * kAPitch + lane], x1 = Ts[(kH + k + 1) * kAPitch + lane];
      const float x2 = Ts[(kH + k + 2) * kAPitch + lane], x3 = Ts[(kH + k + 3) * kAPitch + lane];
SUBQ_UNROLL
      for (int m = 0; m < 4; ++m) {
        const float4 t4 = *reinterpret_cast<const float4*>(Ts + (kH + warp + 8 * m) * kAPitch + kH + k);
        y[m] += t4.x * x0;
        y[m] += t4.y * x1;
        y[m] += t4.z * x2;
        y[m] += t4.w * x3;
      }
    }
    __syncthreads();  // everyone has read X
SUBQ_UNROLL
    for (int m = 0; m < 4; ++m) Ts[(kH + warp + 8 * m) * kAPitch + lane] = -y[m];
  }
  __syncthreads();
  // tinv out; M_w = Tinv diag(beta e), M_u = Tinv diag(beta) as hi + lo tiles.
  {
    float* tg = a.tinv + (static_cast<int64_t>(bh) * nc + c) * kChunk * kChunk;
    for (int i = threadIdx.x; i < kChunk * kChunk; i += kPrepThreads) {
      const int t = i / kChunk, s = i % kChunk;
      const float v = Ts[t * kAPitch + s];
      tg[i] = v;
      const float mw = v * bs[s] * es[s], mu = v * bs[s];
      const T mw_hi = ck::from_float<T>(mw), mu_hi = ck::from_float<T>(mu);
      Mw_hi[t * kCP + s] = mw_hi;
      Mw_lo[t * kCP + s] = ck::from_float<T>(mw - ck::to_float(mw_hi));
      Mu_hi[t * kCP + s] = mu_hi;
      Mu_lo[t * kCP + s] = ck::from_float<T>(mu - ck::to_float(mu_hi));
    }
  }
  ck::cp_async_wait<0>();
  __syncthreads();

  const int gq = lane >> 2, q = lane & 3;
  const int r_lo = m0 + gq, r_hi = r_lo + 8;
  // W = (Mw_hi + Mw_lo) K, 64-wide column slices.
  T* wg = static_cast<T*>(a.w) + row0 * DK;
  for (int n = 0; n < DK; n += 64) {
    float acc[4][4];
    ck::zero(acc);
    ck::warp_gemm<T, 4, /*M[t][s]*/ false, /*K[s][j]*/ true>(acc, Mw_hi, kCP, m0, Ks, kKP, n + n0, kChunk);
    ck::warp_gemm<T, 4, false, true>(acc, Mw_lo, kCP, m0, Ks, kKP, n + n0, kChunk);
SUBQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int col = n + n0 + 8 * j + 2 * q;
      if (r_lo < rows) ck::store2(wg + static_cast<int64_t>(r_lo) * DK + col, acc[j][0], acc[j][1]);
      if (r_hi < rows) ck::store2(wg + static_cast<int64_t>(r_hi) * DK + col, acc[j][2], acc[j][3]);
    }
  }
  // U~ = (Mu_hi + Mu_lo) V, 32-wide column slices (Dv is a multiple of 32).
  T* ug = static_cast<T*>(a.u_tilde) + row0 * Dv;
  const int n1 = 16 * (warp >> 2);
  for (int n = 0; n < Dv; n += 32) {
    float acc[2][4];
    ck::zero(acc);
    ck::warp_gemm<T, 2, false, /*V[s][p]*/ true>(acc, Mu_hi, kCP, m0, Vs, vp, n + n1, kChunk);
    ck::warp_gemm<T, 2, false, true>(acc, Mu_lo, kCP, m0, Vs, vp, n + n1, kChunk);
SUBQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int col = n + n1 + 8 * j + 2 * q;
      if (r_lo < rows) ck::store2(ug + static_cast<int64_t>(r_lo) * Dv + col, acc[j][0], acc[j][1]);
      if (r_hi < rows) ck::store2(ug + static_cast<int64_t>(r_hi) * Dv + col, acc[j][2], acc[j][3]);
    }
  }
}

// ---- scan_fwd -------------------------------------------------------------------------------------------
template <typename T, int DK>
struct ScanSmem {
  static constexpr int kKP = ck::pitch_of(DK);
  T w[kChunk * kKP];               // W_c
  T k[kChunk * kKP];               // K_c
  T ut[kChunk * kRowPitch];        // U~_c, this block's 32 value columns
  T s[kScanRows * kKP];            // S_c in the operand dtype (value rows x keys)
  T u[kChunk * kRowPitch];         // diag(d) U_c
  float g[kChunk];
  int rst[kChunk];
  float d[kChunk];                 // D[63, t]
  float gamma[4];
};

template <typename T, int DK>
__global__ void __launch_bounds__(kScanThreads, DK == 256 ? 2 : 4) gdn_v2_scan_fwd_kernel(const GdnV2FwdArgs a) {
  using Sm = ScanSmem<T, DK>;
  constexpr int kKP = Sm::kKP;
  constexpr int NT = DK / 16;  // state fragment: 16 rows x DK/2 columns per warp
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int Dv = a.value_dim, T_len = a.time, nc = a.chunks;
  const int bh = blockIdx.y, v0 = blockIdx.x * kScanRows, b = bh / a.heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, q = lane & 3;
  const int sm0 = 16 * (warp & 1), sn0 = (DK / 2) * (warp >> 1);  // state fragment origin
  const int um0 = 16 * warp;                                       // U fragment rows (16 x 32)

  const int64_t bh_row = static_cast<int64_t>(bh) * T_len;
  const T* wg = static_cast<const T*>(a.w);
  const T* kg = static_cast<const T*>(a.k);
  const T* utg = static_cast<const T*>(a.u_tilde);
  const int* rst_b = a.reset ? a.reset + static_cast<int64_t>(b) * T_len : nullptr;
  auto load_w = [&](int c) {  // W, U~ slice, g, reset of chunk c
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_tile<T, kChunk, DK, kScanThreads>(sm.w, kKP, wg + (bh_row + t0) * DK, DK, rows);
    ck::cp_async_tile<T, kChunk, kScanRows, kScanThreads>(sm.ut, kRowPitch, utg + (bh_row + t0) * Dv + v0, Dv, rows);
    ck::cp_async_vec<float, kChunk, kScanThreads>(sm.g, a.g + bh_row + t0, 1, rows);
    if (rst_b) ck::cp_async_vec<int, kChunk, kScanThreads>(sm.rst, rst_b + t0, 1, rows);
  };
  auto load_k = [&](int c) {
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_tile<T, kChunk, DK, kScanThreads>(sm.k, kKP, kg + (bh_row + t0) * DK, DK, rows);
  };

  float S[NT][4];
  ck::zero(S);
  if (a.s0) {
    const float* s0 = a.s0 + (static_cast<int64_t>(bh) * Dv + v0) * DK;
    ck::for_each_frag<NT>(sm0, sn0, [&](int j, int i, int r, int col) { S[j][i] = s0[static_cast<int64_t>(r) * DK + col]; });
  }
  load_w(0);
  ck::cp_async_commit();
  load_k(0);
  ck::cp_async_commit();

  T* states = static_cast<T*>(a.states);
  T* ug = static_cast<T*>(a.u);
  for (int c = 0; c < nc; ++c) {
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_wait<1>();  // W group of chunk c (K of chunk c may still fly)
    __syncthreads();
    if (warp == 0) {
      const ck::LaneDecay d = ck::chunk_decay_warp(sm.g, rst_b ? sm.rst : nullptr, 1.f);
      const int t = 2 * lane;
      sm.d[t] = d.seg0 == d.seg_last ? expf(d.cum_last - d.cum0) : 0.f;
      sm.d[t + 1] = d.seg1 == d.seg_last ? expf(d.cum_last - d.cum1) : 0.f;
      if (lane == 0) sm.gamma[0] = d.seg_last == 0 ? expf(d.cum_last) : 0.f;
    }
    ck::store_frag<T>(sm.s, kKP, S, sm0, sn0);
    __syncthreads();
    ck::store_tile<T, kScanRows, DK, kScanThreads>(states + ((static_cast<int64_t>(bh) * nc + c) * Dv + v0) * DK, DK,
                                                   sm.s, kKP, kScanRows);
    {
      // U = U~ - W S^T (16 token rows x 32 value columns per warp)
      float ws[4][4];
      ck::zero(ws);
      ck::warp_gemm<T, 4, /*W[t][j]*/ false, /*S[v][j]*/ false>(ws, sm.w, kKP, um0, sm.s, kKP, 0, DK);
      const int r_lo = um0 + gq, r_hi = r_lo + 8;
      const float d_lo = sm.d[r_lo], d_hi = sm.d[r_hi];
      T* urow = ug + (bh_row + t0) * Dv + v0;
SUBQ_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int col = 8 * j + 2 * q;
        const float2 a_lo = ck::load2(sm.ut + r_lo * kRowPitch + col), a_hi = ck::load2(sm.ut + r_hi * kRowPitch + col);
        const float u0 = a_lo.x - ws[j][0], u1 = a_lo.y - ws[j][1], u2 = a_hi.x - ws[j][2], u3 = a_hi.y - ws[j][3];
        ck::store2(sm.u + r_lo * kRowPitch + col, u0 * d_lo, u1 * d_lo);
        ck::store2(sm.u + r_hi * kRowPitch + col, u2 * d_hi, u3 * d_hi);
        if (r_lo < rows) ck::store2(urow + static_cast<int64_t>(r_lo) * Dv + col, u0, u1);
        if (r_hi < rows) ck::store2(urow + static_cast<int64_t>(r_hi) * Dv + col, u2, u3);
      }
    }
    __syncthreads();  // W, U~, g, reset free; diag(d) U complete
    if (c + 1 < nc) load_w(c + 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();  // K of chunk c
    __syncthreads();
    const float gamma = sm.gamma[0];
SUBQ_UNROLL
    for (int j = 0; j < NT; ++j)
SUBQ_UNROLL
      for (int i = 0; i < 4; ++i) S[j][i] *= gamma;
    ck::warp_gemm<T, NT, /*U[t][v]*/ true, /*K[t][j]*/ true>(S, sm.u, kRowPitch, sm0, sm.k, kKP, sn0, kChunk);
    __syncthreads();  // K, diag(d) U free
    if (c + 1 < nc) load_k(c + 1);
    ck::cp_async_commit();
  }
  ck::cp_async_wait<0>();
  float* so = a.s_out + (static_cast<int64_t>(bh) * Dv + v0) * DK;
  ck::for_each_frag<NT>(sm0, sn0, [&](int j, int i, int r, int col) { so[static_cast<int64_t>(r) * DK + col] = S[j][i]; });
}

// ---- out_fwd --------------------------------------------------------------------------------------------
template <typename T, int DK, int SL>
struct OutSmem {
  static constexpr int kKP = ck::pitch_of(DK);
  static constexpr int kSP = ck::pitch_of(SL);
  T q[kChunk * kKP];
  T k[kChunk * kKP];
  T p[kChunk * kCP];     // P = (Q K^T) o D, rounded ...
  T p_lo[kChunk * kCP];  // ... and its rounding error (P = p + p_lo to ~16 bits)
  struct Stage {
    T s[SL * kKP];    // S_c, SL value rows
    T u[kChunk * kSP];
  } stage[2];
  float g[kChunk];
  float cum[kChunk];
  float e[kChunk];
  int rst[kChunk];
  int seg[kChunk];
};

template <typename T, int DK, int SL>
__global__ void __launch_bounds__(kOutThreads, 2) gdn_v2_out_fwd_kernel(const GdnV2FwdArgs a) {
  using Sm = OutSmem<T, DK, SL>;
  constexpr int kKP = Sm::kKP, kSP = Sm::kSP;
  constexpr int NT = SL / 16;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int Dv = a.value_dim, T_len = a.time, nc = a.chunks;
  const int c = blockIdx.x, bh = blockIdx.y, b = bh / a.heads;
  const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, q = lane & 3;
  const int64_t row0 = static_cast<int64_t>(bh) * T_len + t0;
  const int items = Dv / SL;

  const T* st_g = static_cast<const T*>(a.states) + (static_cast<int64_t>(bh) * nc + c) * Dv * DK;
  const T* u_g = static_cast<const T*>(a.u) + row0 * Dv;
  auto load_item = [&](int item, int buf) {
    auto& st = sm.stage[buf];
    ck::cp_async_tile<T, SL, DK, kOutThreads>(st.s, kKP, st_g + static_cast<int64_t>(item) * SL * DK, DK, SL);
    ck::cp_async_tile<T, kChunk, SL, kOutThreads>(st.u, kSP, u_g + item * SL, Dv, rows);
  };
  ck::cp_async_tile<T, kChunk, DK, kOutThreads>(sm.q, kKP, static_cast<const T*>(a.q) + row0 * DK, DK, rows);
  ck::cp_async_tile<T, kChunk, DK, kOutThreads>(sm.k, kKP, static_cast<const T*>(a.k) + row0 * DK, DK, rows);
  ck::cp_async_vec<float, kChunk, kOutThreads>(sm.g, a.g + row0, 1, rows);
  if (a.reset) ck::cp_async_vec<int, kChunk, kOutThreads>(sm.rst, a.reset + static_cast<int64_t>(b) * T_len + t0, 1, rows);
  ck::cp_async_commit();
  load_item(0, 0);
  ck::cp_async_commit();
  ck::cp_async_wait<1>();
  __syncthreads();

  if (warp == 0) {
    const ck::LaneDecay d = ck::chunk_decay_warp(sm.g, a.reset ? sm.rst : nullptr, 1.f);
    const int t = 2 * lane;
    sm.cum[t] = d.cum0;
    sm.cum[t + 1] = d.cum1;
    sm.seg[t] = d.seg0;
    sm.seg[t + 1] = d.seg1;
    sm.e[t] = d.seg0 == 0 ? expf(d.cum0) : 0.f;
    sm.e[t + 1] = d.seg1 == 0 ? expf(d.cum1) : 0.f;
  }
  {
    const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
    float qk[4][4];
    ck::zero(qk);
    ck::warp_gemm<T, 4, /*Q[t][j]*/ false, /*K[s][j]*/ false>(qk, sm.q, kKP, m0, sm.k, kKP, n0, DK);
    __syncthreads();  // cum, seg
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
      qk[j][i] = (s <= t && sm.seg[s] == sm.seg[t]) ? qk[j][i] * expf(sm.cum[t] - sm.cum[s]) : 0.f;
    });
    ck::store_frag<T>(sm.p, kCP, qk, m0, n0);
    ck::for_each_frag<4>(m0, n0, [&](int j, int i, int t, int s) {
      (void)t;
      (void)s;
      qk[j][i] -= ck::to_float(ck::from_float<T>(qk[j][i]));
    });
    ck::store_frag<T>(sm.p_lo, kCP, qk, m0, n0);
  }

  const int m0 = 16 * (warp & 3), n0 = (SL / 2) * (warp >> 2);
  const int r_lo = m0 + gq, r_hi = r_lo + 8;
  T* og = static_cast<T*>(a.o) + row0 * Dv;
  for (int item = 0; item < items; ++item) {
    const int buf = item & 1;
    __syncthreads();  // P complete; everyone is done with item - 1 (its buffer is refilled next)
    if (item + 1 < items) load_item(item + 1, buf ^ 1);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();
    __syncthreads();
    auto& st = sm.stage[buf];
    float acc[NT][4];
    ck::zero(acc);
    ck::warp_gemm<T, NT, /*Q[t][j]*/ false, /*S[v][j]*/ false>(acc, sm.q, kKP, m0, st.s, kKP, n0, DK);
    ck::scale_rows(acc, sm.e[r_lo], sm.e[r_hi]);
    ck::warp_gemm<T, NT, /*P[t][s]*/ false, /*U[s][v]*/ true>(acc, sm.p, kCP, m0, st.u, kSP, n0, kChunk);
    ck::warp_gemm<T, NT, false, true>(acc, sm.p_lo, kCP, m0, st.u, kSP, n0, kChunk);
SUBQ_UNROLL
    for (int j = 0; j < NT; ++j) {
      const int col = item * SL + n0 + 8 * j + 2 * q;
      if (r_lo < rows) ck::store2(og + static_cast<int64_t>(r_lo) * Dv + col, acc[j][0], acc[j][1]);
      if (r_hi < rows) ck::store2(og + static_cast<int64_t>(r_hi) * Dv + col, acc[j][2], acc[j][3]);
    }
  }
  ck::cp_async_wait<0>();
}

}  // namespace subq::ops::detail::gdn_v2
