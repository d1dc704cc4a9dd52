// ssd_cuda_scan.cuh — the SSD scan kernel (see ssd_cuda_scan.cu for what it computes and the decisions):
// device code only, included by ssd_cuda_scan.cu and by the CPU emulation test
// (tests/unit/test_ssd_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"

namespace subq::ops::detail::ssd_kernels {

using ck::kChunk;

constexpr int kScanThreads = 128;
// Two cp.async stages (not three): 47 KB of shared memory, so four blocks share an SM and the 512 blocks of
// B8 H16 P = N = 128 run in one wave on 132 SMs (three stages: 66 KB, three blocks per SM, two waves).
constexpr int kScanStages = 2;
constexpr int kScanBlocksPerSm = 4;
constexpr int kTile = 64;
constexpr int kTilePitch = ck::pitch_of(kTile);

template <typename T>
struct ScanStage {
  T u[kChunk * kTilePitch];
  T v[kChunk * kTilePitch];
  float dt[kChunk];
  int rst[kChunk];
};

template <typename T>
constexpr size_t scan_smem_bytes() {
  return kScanStages * sizeof(ScanStage<T>) + kTile * kTilePitch * sizeof(T) + (kChunk + 4) * sizeof(float);
}
// 228 KB of shared memory per SM on sm_90, 1 KB of it reserved per block
static_assert(kScanBlocksPerSm * (scan_smem_bytes<__nv_bfloat16>() + 1024) <= 228 * 1024,
              "the scan's shared memory no longer lets kScanBlocksPerSm blocks share an SM");

template <typename T, bool kReverse>
__global__ void __launch_bounds__(kScanThreads, kScanBlocksPerSm) ssd_scan_kernel(const SsdScanArgs a) {
  SUBQ_DYNAMIC_SMEM(smem);
  auto* stages = reinterpret_cast<ScanStage<T>*>(smem);
  T* out_tile = reinterpret_cast<T*>(smem + kScanStages * sizeof(ScanStage<T>));
  float* wts = reinterpret_cast<float*>(out_tile + kTile * kTilePitch);
  float* gamma_s = wts + kChunk;

  const int P = a.n.head_dim, N = a.n.state_dim, T_len = a.n.time, H = a.n.heads, nc = a.n.chunks;
  const int n_pt = P / kTile;
  const int pt = blockIdx.x % n_pt, nt = blockIdx.x / n_pt;
  const int h = blockIdx.y, b = blockIdx.z;
  const int g = h / (H / a.n.groups);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m0 = 16 * warp;

  const T* u_bh = static_cast<const T*>(a.u.ptr) + b * a.u.s0 + h * a.u.s1 + pt * kTile;
  const T* v_bg = static_cast<const T*>(a.v.ptr) + b * a.v.s0 + g * a.v.s1 + nt * kTile;
  const float* dt_bh = a.dt + b * a.dt_s0 + h * a.dt_s1;
  const int* rst_b = a.reset ? a.reset + static_cast<int64_t>(b) * T_len : nullptr;
  const float A = a.A[h];
  const int64_t bh = static_cast<int64_t>(b) * H + h;

  auto chunk_at = [&](int i) { return kReverse ? nc - 1 - i : i; };
  auto load = [&](int stage, int c) {
    ScanStage<T>& st = stages[stage];
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.u, kTilePitch, u_bh + t0 * a.u.s2, a.u.s2, rows);
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.v, kTilePitch, v_bg + t0 * a.v.s2, a.v.s2, rows);
    ck::cp_async_vec<float, kChunk, kScanThreads>(st.dt, dt_bh + t0 * a.dt_s2, a.dt_s2, rows);
    if (rst_b) ck::cp_async_vec<int, kChunk, kScanThreads>(st.rst, rst_b + t0, 1, rows);
  };

  float acc[8][4];
  ck::zero(acc);
  if (a.s_in) {
    const float* s = a.s_in + (bh * P + pt * kTile) * N + nt * kTile;
    ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { acc[j][e] = s[static_cast<int64_t>(r) * N + col]; });
  }

  for (int s = 0; s < kScanStages - 1; ++s) {
    if (s < nc) load(s, chunk_at(s));
    ck::cp_async_commit();
  }
  T* states = static_cast<T*>(a.states);
  for (int i = 0; i < nc; ++i) {
    const int c = chunk_at(i);
    ck::cp_async_wait<kScanStages - 2>();  // chunk i's group has landed (this thread's copies)
    __syncthreads();                       // ... everyone's; and everyone is done with iteration i - 1
    if (i + kScanStages - 1 < nc) load((i + kScanStages - 1) % kScanStages, chunk_at(i + kScanStages - 1));
    ck::cp_async_commit();
    ScanStage<T>& st = stages[i % kScanStages];

    if (warp == 0) {
      const ck::LaneDecay d = ck::chunk_decay_warp(st.dt, rst_b ? st.rst : nullptr, A);
      const int t0 = 2 * lane;
      if constexpr (!kReverse) {
        wts[t0] = d.seg0 == d.seg_last ? st.dt[t0] * expf(d.cum_last - d.cum0) : 0.f;
        wts[t0 + 1] = d.seg1 == d.seg_last ? st.dt[t0 + 1] * expf(d.cum_last - d.cum1) : 0.f;
      } else {
        wts[t0] = d.seg0 == 0 ? expf(d.cum0) : 0.f;
        wts[t0 + 1] = d.seg1 == 0 ? expf(d.cum1) : 0.f;
      }
      if (lane == 0) *gamma_s = d.seg_last == 0 ? expf(d.cum_last) : 0.f;
    }
    ck::store_frag<T>(out_tile, kTilePitch, acc, m0, 0);  // the value entering (fwd) / leaving (rev) chunk c
    __syncthreads();

    ck::scale_tile_rows<T, kChunk, kTile, kScanThreads>(st.u, kTilePitch, wts);
    ck::store_tile<T, kTile, kTile, kScanThreads>(states + ((bh * nc + c) * P + pt * kTile) * N + nt * kTile, N,
                                                  out_tile, kTilePitch, kTile);
    __syncthreads();

    const float gamma = *gamma_s;
SUBQ_UNROLL
    for (int j = 0; j < 8; ++j)
SUBQ_UNROLL
      for (int e = 0; e < 4; ++e) acc[j][e] *= gamma;
    ck::warp_gemm<T, 8, /*A k-major: U[t][p]*/ true, /*B k-major: V[t][n]*/ true>(acc, st.u, kTilePitch, m0, st.v,
                                                                                kTilePitch, 0, kChunk);
  }
  ck::cp_async_wait<0>();  // no copies in flight when the block exits (all groups past nc are empty)

  float* so = a.s_out + (bh * P + pt * kTile) * N + nt * kTile;
  ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { so[static_cast<int64_t>(r) * N + col] = acc[j][e]; });
}

}  // namespace subq::ops::detail::ssd_kernels
