// mlstm_cuda_gates.cuh — the per-chunk gate scan shared by the mLSTM kernels (device code; included by the
// kernels and by the CPU emulation test): from the gate pre-activations, the reset flags and the stabiliser
// m_p of the state entering the chunk, one warp computes for the chunk's 64 positions
//   lf_t  = logsigmoid(f~_t)                (0 past the sequence end: the state passes through unchanged)
//   cum_t = sum_{r <= t} lf_r               (inclusive, from the chunk start)
//   seg_t = number of resets at positions <= t in the chunk (document id; 0 = sees the carried state)
//   g_t   = cum_t + m_p                     if seg_t = 0 (log-weight of the carried state)
//         = cum_t - cum_{r-1}               else, r = the reset starting t's document (log-weight of the
//                                           zero state, m = 0, which the recurrence folds into m_t)
//   m_t   = max(g_t, max_{s <= t, seg_s = seg_t} (cum_t - cum_s + i~_s))
// m_t is exactly the recurrent stabiliser (unrolling m_t = max(lf_t + m_{t-1}, i~_t) gives this maximum over
// the history and every token's log-weight), so the kernels reproduce the reference's m and final state.
// The inner maximum is cum_t + (segmented prefix maximum of u_s = i~_s - cum_s): one warp scan.
// Positions past the sequence end (t >= valid) have lf = 0 and i~ = -inf (no token).
//
// Precision: cum, g and u are fp64 (the scan of 64 values in fp64 costs nothing next to the chunk's matrix
// products). With strongly closing gates |cum| reaches ~80 inside a chunk, where an fp32 prefix sum carries
// ~1e-5 absolute error into every exponent cum_t - cum_s + i~_s - m_t; that moved h by 80% at a token whose
// normaliser q . n cancels 1000-fold (H200 run of 17ac015, docs/perf/mlstm.md). The kernels form the
// exponents with log_weight() / carried_weight() below: the difference of the fp64 sums first (exact to
// ~1e-15), rounded to fp32 only once it is small, so each exponent errs by a few fp32 units of |i~|, |m|.
#pragma once

#include <cmath>

#include "ops/common/chunk_kernels.cuh"

namespace subq::ops::detail::mlstm_kernels {

struct LaneGates {
  double cum[2], g[2];    // positions 2 lane and 2 lane + 1
  float m[2], ig[2];      // ig = -inf past the end
  int seg[2];
  double cum_last, g_last;  // position 63 (every lane)
  float m_last;
  int seg_last;
};

// The exponent of a token weight, cum_t - cum_s + i~_s - m_t, from fp64 prefix sums (see the top).
__device__ __forceinline__ float log_weight(double cum_t, double cum_s, float ig_s, float m_t) {
  return static_cast<float>(cum_t - cum_s) + (ig_s - m_t);
}
// The exponent of the carried state's weight, g_t - m_t.
__device__ __forceinline__ float carried_weight(double g_t, float m_t) {
  return static_cast<float>(g_t - static_cast<double>(m_t));
}

__device__ __forceinline__ float log_sigmoid(float x) { return fminf(x, 0.f) - log1pf(expf(-fabsf(x))); }

// (seg, u) pairs combined left to right: the later document wins, within a document the larger u.
__device__ __forceinline__ void seg_max_combine(int& seg, double& u, int seg_prev, double u_prev) {
  if (seg == seg_prev) u = fmax(u, u_prev);
}

// One warp, all 32 lanes. ig, fg: the chunk's 64 gate pre-activations; rst: 64 reset flags or nullptr;
// valid: positions < valid are tokens; m_prev: the stabiliser of the state entering the chunk.
__device__ __forceinline__ LaneGates chunk_gates_warp(const float* ig, const float* fg, const int* rst, int valid,
                                                      float m_prev) {
  const int lane = threadIdx.x & 31;
  const float neg_inf = -INFINITY;
  LaneGates o;
  float lf[2];
  int r[2];
SUBQ_UNROLL
  for (int j = 0; j < 2; ++j) {
    const int t = 2 * lane + j;
    const bool ok = t < valid;
    lf[j] = ok ? log_sigmoid(fg[t]) : 0.f;
    o.ig[j] = ok ? ig[t] : neg_inf;
    r[j] = (ok && rst) ? (rst[t] != 0) : 0;
  }
  // inclusive scans over lanes of the lane totals: log forget sum (fp64), reset count, last reset position
  double s = static_cast<double>(lf[0]) + lf[1];
  int rs = r[0] + r[1];
  int last = r[1] ? 2 * lane + 1 : (r[0] ? 2 * lane : -1);
SUBQ_UNROLL
  for (int off = 1; off < 32; off <<= 1) {
    const double v = __shfl_up_sync(ck::kFullMask, s, off);
    const int w = __shfl_up_sync(ck::kFullMask, rs, off);
    const int l = __shfl_up_sync(ck::kFullMask, last, off);
    if (lane >= off) {
      s += v;
      rs += w;
      last = last > l ? last : l;
    }
  }
  double excl = __shfl_up_sync(ck::kFullMask, s, 1);
  int rexcl = __shfl_up_sync(ck::kFullMask, rs, 1);
  int lexcl = __shfl_up_sync(ck::kFullMask, last, 1);
  if (lane == 0) {
    excl = 0.0;
    rexcl = 0;
    lexcl = -1;
  }
  const double ex0 = excl, ex1 = excl + lf[0];  // exclusive sums: cum_{t-1}
  o.cum[0] = ex1;
  o.cum[1] = ex1 + lf[1];
  o.seg[0] = rexcl + r[0];
  o.seg[1] = o.seg[0] + r[1];
  int lastpos[2];
  lastpos[0] = r[0] ? 2 * lane : lexcl;
  lastpos[1] = r[1] ? 2 * lane + 1 : lastpos[0];
  // cum_{r-1} of each position's document start r: fetched from the lane owning r
SUBQ_UNROLL
  for (int j = 0; j < 2; ++j) {
    const int src = lastpos[j] >= 0 ? lastpos[j] >> 1 : 0;
    const double b0 = __shfl_sync(ck::kFullMask, ex0, src), b1 = __shfl_sync(ck::kFullMask, ex1, src);
    const double base = (lastpos[j] & 1) ? b1 : b0;
    o.g[j] = o.seg[j] == 0 ? o.cum[j] + m_prev : o.cum[j] - base;
  }
  // segmented prefix maximum of u = i~ - cum (fp64; -inf past the end)
  double u[2] = {o.ig[0] - o.cum[0], o.ig[1] - o.cum[1]};
  seg_max_combine(o.seg[1], u[1], o.seg[0], u[0]);
  int sg = o.seg[1];
  double su = u[1];
SUBQ_UNROLL
  for (int off = 1; off < 32; off <<= 1) {
    const int sp = __shfl_up_sync(ck::kFullMask, sg, off);
    const double up = __shfl_up_sync(ck::kFullMask, su, off);
    if (lane >= off) seg_max_combine(sg, su, sp, up);
  }
  int sgx = __shfl_up_sync(ck::kFullMask, sg, 1);
  double sux = __shfl_up_sync(ck::kFullMask, su, 1);
  if (lane == 0) {
    sgx = 0;
    sux = neg_inf;
  }
  double pm0 = o.ig[0] - o.cum[0];
  seg_max_combine(o.seg[0], pm0, sgx, sux);
  double pm1 = u[1];
  seg_max_combine(o.seg[1], pm1, sgx, sux);
  o.m[0] = static_cast<float>(fmax(o.g[0], o.cum[0] + pm0));
  o.m[1] = static_cast<float>(fmax(o.g[1], o.cum[1] + pm1));
  o.cum_last = __shfl_sync(ck::kFullMask, o.cum[1], 31);
  o.m_last = __shfl_sync(ck::kFullMask, o.m[1], 31);
  o.g_last = __shfl_sync(ck::kFullMask, o.g[1], 31);
  o.seg_last = __shfl_sync(ck::kFullMask, o.seg[1], 31);
  return o;
}

}  // namespace subq::ops::detail::mlstm_kernels
