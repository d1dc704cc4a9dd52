// gated_delta_cuda_kernels.cuh — device code of the Gated DeltaNet kernels (see gated_delta_cuda.h for
// what each computes): the forward and reverse state scans of the chunkwise form and the fused decode step.
// Included by gated_delta_cuda.cu and by the CPU emulation test (tests/unit/test_gated_delta_kernels_emulated.cpp).
//
// Scan blocks: grid (Dv / 32, B*H), 256 threads = 8 warps; the block owns 32 value rows of the state
// (all Dk key columns). Two thread mappings, each chosen so that shared-memory reads are broadcasts or
// consecutive words:
//   "token" mapping  (token-row results such as U [C, 32] or dK [C, Dk]): lane = value row r (or key
//                    column), tokens t = warp + 8i; reads of the [C, Dk] chunk operand are warp broadcasts,
//                    reads of the state tile are float4s with a row pitch of Dk + 4 (conflict-free).
//   "state" mapping  (the state tile itself): rows r = warp + 8i (i < 4), key columns j = lane + 32m; the
//                    thread keeps its 4 x Dk/32 state elements in registers across the whole chunk loop.
// Everything is fp32 SIMT (the carried state must stay fp32; tensor-core versions are the next step, see
// docs/perf/gated_delta.md). Chunk operands are copied to shared memory with float4 loads.
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/gated_delta/gated_delta_cuda.h"

namespace subq::ops::detail::gdn_kernels {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = kGdnScanRows;          // 32
constexpr int kMaxC = kGdnMaxChunk;          // 64
constexpr int kTokPerThread = kMaxC / kWarps;  // 8
constexpr int kRowsPerThread = kRows / kWarps;  // 4
constexpr int kUPitch = kRows + 1;           // [C][33] token x row tiles

__host__ __device__ constexpr int state_pitch(int dk) { return dk + 4; }

// Shared memory of the scans (bytes).
template <int DK>
__host__ __device__ constexpr size_t scan_fwd_smem() {
  return sizeof(float) * (static_cast<size_t>(kRows) * state_pitch(DK) + static_cast<size_t>(kMaxC) * DK +
                          static_cast<size_t>(kMaxC) * kUPitch);
}
template <int DK>
__host__ __device__ constexpr size_t scan_bwd_smem() {
  return sizeof(float) * (static_cast<size_t>(kRows) * state_pitch(DK) + static_cast<size_t>(kRows) * DK +
                          static_cast<size_t>(kMaxC) * DK + 2 * static_cast<size_t>(kMaxC) * kUPitch + kWarps);
}

// Copies `n4` float4s from global `src` to shared `dst` (both 16-byte aligned), all threads.
__device__ __forceinline__ void copy4(float* dst, const float* src, int n4) {
  for (int i = threadIdx.x; i < n4; i += kThreads)
    reinterpret_cast<float4*>(dst)[i] = reinterpret_cast<const float4*>(src)[i];
}

// acc[i] (token t = warp + 8i, value row = lane) = sum_j M[t][j] * X[lane][j]; M [C][DK], X [32][DK+4].
template <int DK>
__device__ __forceinline__ void token_rows_dot(float (&acc)[kTokPerThread], const float* M, const float* X, int C) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  SUBQ_UNROLL
  for (int i = 0; i < kTokPerThread; ++i) acc[i] = 0.f;
  const float* x = X + lane * state_pitch(DK);
  for (int j = 0; j < DK; j += 4) {
    const float4 xv = *reinterpret_cast<const float4*>(x + j);
    SUBQ_UNROLL
    for (int i = 0; i < kTokPerThread; ++i) {
      const int t = warp + kWarps * i;
      if (t < C) {
        const float4 m = *reinterpret_cast<const float4*>(M + t * DK + j);
        acc[i] += m.x * xv.x + m.y * xv.y + m.z * xv.z + m.w * xv.w;
      }
    }
  }
}

// ---- forward scan -------------------------------------------------------------------------------------
template <int DK>
__global__ void __launch_bounds__(kThreads) gdn_scan_fwd_kernel(const GdnScanFwdArgs a) {
  constexpr int kCols = DK / 32;
  const int nc = a.n.chunks, C = a.n.chunk, Dv = a.n.value_dim;
  const int bh = blockIdx.y, r0 = blockIdx.x * kRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  float* Ssm = reinterpret_cast<float*>(smem_raw);      // [32][DK+4] the state tile
  float* M = Ssm + kRows * state_pitch(DK);             // [64][DK]   W_c, then K_c
  float* Usm = M + kMaxC * DK;                          // [64][33]   U_c

  float s[kRowsPerThread][kCols];
  SUBQ_UNROLL
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = warp + kWarps * i;
    SUBQ_UNROLL
    for (int m = 0; m < kCols; ++m) {
      const int j = lane + 32 * m;
      s[i][m] = a.s0 ? a.s0[(static_cast<int64_t>(bh) * Dv + r0 + r) * DK + j] : 0.f;
      Ssm[r * state_pitch(DK) + j] = s[i][m];
    }
  }
  for (int c = 0; c < nc; ++c) {
    const int64_t chunk_row = (static_cast<int64_t>(bh) * nc + c) * C;  // first token row of chunk c
    copy4(M, a.w + chunk_row * DK, C * DK / 4);
    __syncthreads();
    // U_c = u_tilde_c - W_c S_c^T  (token mapping)
    float acc[kTokPerThread];
    token_rows_dot<DK>(acc, M, Ssm, C);
    SUBQ_UNROLL
    for (int i = 0; i < kTokPerThread; ++i) {
      const int t = warp + kWarps * i;
      if (t < C) {
        const int64_t at = (chunk_row + t) * Dv + r0 + lane;
        const float u = a.u_tilde[at] - acc[i];
        a.u[at] = u;
        Usm[t * kUPitch + lane] = u;
      }
    }
    __syncthreads();
    copy4(M, a.k_end + chunk_row * DK, C * DK / 4);
    __syncthreads();
    // S_{c+1} = gamma S_c + U_c^T K_c  (state mapping); states[c] = S_c
    const float gamma = a.gamma_end[static_cast<int64_t>(bh) * nc + c];
    float* st = a.states + (static_cast<int64_t>(bh) * nc + c) * Dv * DK;
    float up[kRowsPerThread][kCols];
    SUBQ_UNROLL
    for (int i = 0; i < kRowsPerThread; ++i)
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) up[i][m] = 0.f;
    for (int t = 0; t < C; ++t) {
      float uv[kRowsPerThread];
      SUBQ_UNROLL
      for (int i = 0; i < kRowsPerThread; ++i) uv[i] = Usm[t * kUPitch + warp + kWarps * i];
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) {
        const float kv = M[t * DK + lane + 32 * m];
        SUBQ_UNROLL
        for (int i = 0; i < kRowsPerThread; ++i) up[i][m] += uv[i] * kv;
      }
    }
    SUBQ_UNROLL
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = warp + kWarps * i;
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) {
        const int j = lane + 32 * m;
        st[static_cast<int64_t>(r0 + r) * DK + j] = s[i][m];
        s[i][m] = gamma * s[i][m] + up[i][m];
        Ssm[r * state_pitch(DK) + j] = s[i][m];
      }
    }
    __syncthreads();
  }
  SUBQ_UNROLL
  for (int i = 0; i < kRowsPerThread; ++i)
    SUBQ_UNROLL
    for (int m = 0; m < kCols; ++m)
      a.s_out[(static_cast<int64_t>(bh) * Dv + r0 + warp + kWarps * i) * DK + lane + 32 * m] = s[i][m];
}

// ---- reverse scan -------------------------------------------------------------------------------------
template <int DK>
__global__ void __launch_bounds__(kThreads) gdn_scan_bwd_kernel(const GdnScanBwdArgs a) {
  constexpr int kCols = DK / 32;
  const int nc = a.n.chunks, C = a.n.chunk, Dv = a.n.value_dim;
  const int bh = blockIdx.y, r0 = blockIdx.x * kRows, tile = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t BH = a.n.bh;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  float* Gsm = reinterpret_cast<float*>(smem_raw);  // [32][DK+4] G = dL/dS_{c+1}
  float* Ssm = Gsm + kRows * state_pitch(DK);       // [32][DK]   S_c
  float* M = Ssm + kRows * DK;                      // [64][DK]   K_c, then W_c
  float* Usm = M + kMaxC * DK;                      // [64][33]   U_c
  float* DUsm = Usm + kMaxC * kUPitch;              // [64][33]   dU
  float* red = DUsm + kMaxC * kUPitch;              // [8]        per-warp partial of dgamma

  float G[kRowsPerThread][kCols];
  SUBQ_UNROLL
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = warp + kWarps * i;
    SUBQ_UNROLL
    for (int m = 0; m < kCols; ++m) {
      const int j = lane + 32 * m;
      G[i][m] = a.ds_out ? a.ds_out[(static_cast<int64_t>(bh) * Dv + r0 + r) * DK + j] : 0.f;
      Gsm[r * state_pitch(DK) + j] = G[i][m];
    }
  }
  for (int c = nc - 1; c >= 0; --c) {
    const int64_t chunk_row = (static_cast<int64_t>(bh) * nc + c) * C;
    const int64_t state_base = (static_cast<int64_t>(bh) * nc + c) * Dv * DK;
    copy4(M, a.k_end + chunk_row * DK, C * DK / 4);
    for (int i = threadIdx.x; i < C * kRows; i += kThreads) {
      const int t = i / kRows, r = i % kRows;
      Usm[t * kUPitch + r] = a.u[(chunk_row + t) * Dv + r0 + r];
    }
    float dg = 0.f;
    SUBQ_UNROLL
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = warp + kWarps * i;
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) {
        const int j = lane + 32 * m;
        const float sv = a.states[state_base + static_cast<int64_t>(r0 + r) * DK + j];
        Ssm[r * DK + j] = sv;
        dg += G[i][m] * sv;
      }
    }
    dg = ck::warp_sum(dg);
    if (lane == 0) red[warp] = dg;
    __syncthreads();
    // dU = dU_c + K_c G^T (token mapping, lane = value row)
    {
      float acc[kTokPerThread];
      token_rows_dot<DK>(acc, M, Gsm, C);
      SUBQ_UNROLL
      for (int i = 0; i < kTokPerThread; ++i) {
        const int t = warp + kWarps * i;
        if (t < C) {
          const int64_t at = (chunk_row + t) * Dv + r0 + lane;
          const float du = (a.du ? a.du[at] : 0.f) + acc[i];
          a.du_tilde[at] = du;
          DUsm[t * kUPitch + lane] = du;
        }
      }
    }
    // dK_c partial = U_c G (token mapping, lane = key column j)
    {
      float* dk = a.dk_end_part + (static_cast<int64_t>(tile) * BH * nc * C + chunk_row) * DK;
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) {
        float acc[kTokPerThread];
        SUBQ_UNROLL
        for (int i = 0; i < kTokPerThread; ++i) acc[i] = 0.f;
        const int j = lane + 32 * m;
        for (int r = 0; r < kRows; ++r) {
          const float gv = Gsm[r * state_pitch(DK) + j];
          SUBQ_UNROLL
          for (int i = 0; i < kTokPerThread; ++i) {
            const int t = warp + kWarps * i;
            if (t < C) acc[i] += Usm[t * kUPitch + r] * gv;
          }
        }
        SUBQ_UNROLL
        for (int i = 0; i < kTokPerThread; ++i) {
          const int t = warp + kWarps * i;
          if (t < C) dk[static_cast<int64_t>(t) * DK + j] = acc[i];
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float sum = 0.f;
      for (int w = 0; w < kWarps; ++w) sum += red[w];
      a.dgamma_part[(static_cast<int64_t>(tile) * BH + bh) * nc + c] = sum;
    }
    copy4(M, a.w + chunk_row * DK, C * DK / 4);
    __syncthreads();
    // dW_c partial = -dU S_c (token mapping, lane = key column j)
    {
      float* dw = a.dw_part + (static_cast<int64_t>(tile) * BH * nc * C + chunk_row) * DK;
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) {
        float acc[kTokPerThread];
        SUBQ_UNROLL
        for (int i = 0; i < kTokPerThread; ++i) acc[i] = 0.f;
        const int j = lane + 32 * m;
        for (int r = 0; r < kRows; ++r) {
          const float sv = Ssm[r * DK + j];
          SUBQ_UNROLL
          for (int i = 0; i < kTokPerThread; ++i) {
            const int t = warp + kWarps * i;
            if (t < C) acc[i] += DUsm[t * kUPitch + r] * sv;
          }
        }
        SUBQ_UNROLL
        for (int i = 0; i < kTokPerThread; ++i) {
          const int t = warp + kWarps * i;
          if (t < C) dw[static_cast<int64_t>(t) * DK + j] = -acc[i];
        }
      }
    }
    // G <- gamma G - dU^T W_c + dstates_c (state mapping)
    {
      const float gamma = a.gamma_end[static_cast<int64_t>(bh) * nc + c];
      float acc[kRowsPerThread][kCols];
      SUBQ_UNROLL
      for (int i = 0; i < kRowsPerThread; ++i)
        SUBQ_UNROLL
        for (int m = 0; m < kCols; ++m) acc[i][m] = 0.f;
      for (int t = 0; t < C; ++t) {
        float dv[kRowsPerThread];
        SUBQ_UNROLL
        for (int i = 0; i < kRowsPerThread; ++i) dv[i] = DUsm[t * kUPitch + warp + kWarps * i];
        SUBQ_UNROLL
        for (int m = 0; m < kCols; ++m) {
          const float wv = M[t * DK + lane + 32 * m];
          SUBQ_UNROLL
          for (int i = 0; i < kRowsPerThread; ++i) acc[i][m] += dv[i] * wv;
        }
      }
      SUBQ_UNROLL
      for (int i = 0; i < kRowsPerThread; ++i) {
        const int r = warp + kWarps * i;
        SUBQ_UNROLL
        for (int m = 0; m < kCols; ++m) {
          const int j = lane + 32 * m;
          const float ds = a.dstates ? a.dstates[state_base + static_cast<int64_t>(r0 + r) * DK + j] : 0.f;
          G[i][m] = gamma * G[i][m] - acc[i][m] + ds;
        }
      }
    }
    __syncthreads();  // every read of Gsm, Ssm, M, Usm, DUsm of this chunk is done
    SUBQ_UNROLL
    for (int i = 0; i < kRowsPerThread; ++i)
      SUBQ_UNROLL
      for (int m = 0; m < kCols; ++m) Gsm[(warp + kWarps * i) * state_pitch(DK) + lane + 32 * m] = G[i][m];
  }
  SUBQ_UNROLL
  for (int i = 0; i < kRowsPerThread; ++i)
    SUBQ_UNROLL
    for (int m = 0; m < kCols; ++m)
      a.ds0[(static_cast<int64_t>(bh) * Dv + r0 + warp + kWarps * i) * DK + lane + 32 * m] = G[i][m];
}

// ---- unit lower triangular inverse ---------------------------------------------------------------------
// One block of 64 threads per C x C matrix: thread s computes column s of T = (I + A)^-1 by forward
// substitution, T[t][s] = [t = s] - sum_{s <= r < t} A[t][r] T[r][s], reading A from shared memory (warp
// broadcasts) and its own column of T (consecutive words across the warp). Columns are independent, so the
// only barrier is after loading A.
constexpr int kInvThreads = 64;
constexpr size_t kInvSmem = sizeof(float) * 2 * kMaxC * kMaxC;

__global__ void __launch_bounds__(kInvThreads) gdn_inverse_kernel(const GdnInverseArgs a) {
  const int C = a.chunk, s = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * C * C;
  SUBQ_DYNAMIC_SMEM(smem_raw);
  float* As = reinterpret_cast<float*>(smem_raw);  // [64][64]
  float* Ts = As + kMaxC * kMaxC;                  // [64][64]
  for (int i = threadIdx.x; i < C * C; i += kInvThreads) As[(i / C) * kMaxC + i % C] = a.a[base + i];
  __syncthreads();
  if (s < C) {
    for (int t = 0; t < C; ++t) {
      float v = t == s ? 1.f : 0.f;
      if (t > s) {
        for (int r = s; r < t; ++r) v -= As[t * kMaxC + r] * Ts[r * kMaxC + s];
      }
      Ts[t * kMaxC + s] = v;
      a.t[base + static_cast<int64_t>(t) * C + s] = v;
    }
  }
}

// ---- decode step --------------------------------------------------------------------------------------
// One warp per value row of one (batch, head): grid (ceil(Dv / 8), B*H), 256 threads. Rows of the state
// are independent: s' = alpha s; u = beta (v_r - s' . k); s'' = s' + u k; o_r = s'' . q.
constexpr int kStepThreads = 256;
constexpr int kStepRows = kStepThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kStepThreads) gdn_step_kernel(const GdnStepArgs a) {
  const int Dk = a.key_dim, Dv = a.value_dim;
  const int bh = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * kStepRows + warp;
  if (r >= Dv) return;  // warp-uniform; no block barriers below
  const T* q = static_cast<const T*>(a.q) + static_cast<int64_t>(bh) * Dk;
  const T* k = static_cast<const T*>(a.k) + static_cast<int64_t>(bh) * Dk;
  float qs = 1.f, ks = 1.f;
  if (a.l2_normalize_qk) {
    float qq = 0.f, kk = 0.f;
    for (int j = lane; j < Dk; j += 32) {
      const float qv = ck::to_float(q[j]), kv = ck::to_float(k[j]);
      qq += qv * qv;
      kk += kv * kv;
    }
    qq = ck::warp_sum(qq);
    kk = ck::warp_sum(kk);
    qs = 1.f / (sqrtf(qq + 1e-6f) * sqrtf(static_cast<float>(Dk)));  // sqrtf, not rsqrtf: same code under the emulator
    ks = 1.f / sqrtf(kk + 1e-6f);
  }
  const float alpha = expf(a.g[bh]), beta = a.beta[bh];
  const int64_t row = (static_cast<int64_t>(bh) * Dv + r) * Dk;
  float rec = 0.f;
  for (int j = lane; j < Dk; j += 32) rec += (a.state ? a.state[row + j] : 0.f) * ck::to_float(k[j]);
  rec = ck::warp_sum(rec) * alpha * ks;
  const float u = beta * (ck::to_float(static_cast<const T*>(a.v)[static_cast<int64_t>(bh) * Dv + r]) - rec);
  float o = 0.f;
  for (int j = lane; j < Dk; j += 32) {
    const float sv = alpha * (a.state ? a.state[row + j] : 0.f) + u * ks * ck::to_float(k[j]);
    a.state_out[row + j] = sv;
    o += sv * ck::to_float(q[j]);
  }
  o = ck::warp_sum(o) * qs;
  if (lane == 0) static_cast<T*>(a.o)[static_cast<int64_t>(bh) * Dv + r] = ck::from_float<T>(o);
}

}  // namespace subq::ops::detail::gdn_kernels
