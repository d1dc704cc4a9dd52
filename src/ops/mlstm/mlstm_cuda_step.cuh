// mlstm_cuda_step.cuh — the mLSTM decode-step kernel (see mlstm_cuda_step.cu): device code only, included
// by mlstm_cuda_step.cu and by the CPU emulation test (tests/unit/test_mlstm_kernels_emulated.cpp).
#pragma once

#include "ops/common/chunk_kernels.cuh"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_gates.cuh"

namespace subq::ops::detail::mlstm_kernels {

constexpr int kStepThreads = 128;  // columns of C per block
constexpr float kStepEps = 1e-6f;  // kMlstmEps of subq/ops/mlstm.h

// Dynamic shared memory: q^ and k in fp32 (2 Dk floats) and one float per warp for the reduction.
inline size_t step_smem_bytes(int dk) { return (2 * static_cast<size_t>(dk) + kStepThreads / 32) * sizeof(float); }

template <typename T>
__global__ void __launch_bounds__(kStepThreads) mlstm_step_kernel(const MlstmStepArgs a) {
  SUBQ_DYNAMIC_SMEM(smem_raw);
  const int Dk = a.dk, Dv = a.dv, H = a.heads;
  float* qs = reinterpret_cast<float*>(smem_raw);
  float* ks = qs + Dk;
  float* red = ks + Dk;
  const int64_t bh = blockIdx.x;
  const int b = static_cast<int>(bh / H);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const bool fresh = !a.c_in || (a.reset && a.reset[b] != 0);  // the zero state (C = 0, n = 0, m = 0)
  const float m_old = fresh ? 0.f : a.m_in[bh];
  const float lf = log_sigmoid(a.fgate[bh]), ig = a.igate[bh];
  const float m_new = fmaxf(lf + m_old, ig);
  const float f_act = expf(lf + m_old - m_new), i_act = expf(ig - m_new);
  const float scale = 1.f / sqrtf(static_cast<float>(Dk));
  const T* q = static_cast<const T*>(a.q) + bh * Dk;
  const T* k = static_cast<const T*>(a.k) + bh * Dk;
  for (int i = tid; i < Dk; i += kStepThreads) {
    qs[i] = ck::to_float(q[i]) * scale;
    ks[i] = ck::to_float(k[i]);
  }
  __syncthreads();

  // n' = f' n + i' k and q^ . n'
  float dot = 0.f;
  for (int i = tid; i < Dk; i += kStepThreads) {
    const float n = f_act * (fresh ? 0.f : a.n_in[bh * Dk + i]) + i_act * ks[i];
    dot += n * qs[i];
    if (blockIdx.y == 0) a.n_out[bh * Dk + i] = n;
  }
  dot = ck::warp_sum(dot);
  if (lane == 0) red[warp] = dot;
  __syncthreads();
  float qn = 0.f;
SUBQ_UNROLL
  for (int w = 0; w < kStepThreads / 32; ++w) qn += red[w];
  const float den = fmaxf(fabsf(qn), expf(-m_new)) + kStepEps;

  // C' = f' C + i' k v^T column by column; h = C'^T q^ / den
  const int col = blockIdx.y * kStepThreads + tid;
  if (col < Dv) {
    const float vv = i_act * ck::to_float(static_cast<const T*>(a.v)[bh * Dv + col]);
    const float* ci = fresh ? nullptr : a.c_in + bh * Dk * Dv + col;
    float* co = a.c_out + bh * Dk * Dv + col;
    float acc = 0.f;
    for (int i = 0; i < Dk; ++i) {
      const float cv = (ci ? f_act * ci[static_cast<int64_t>(i) * Dv] : 0.f) + ks[i] * vv;
      co[static_cast<int64_t>(i) * Dv] = cv;
      acc += cv * qs[i];
    }
    static_cast<T*>(a.h)[bh * Dv + col] = ck::from_float<T>(acc / den);
  }
  if (blockIdx.y == 0 && tid == 0) a.m_out[bh] = m_new;
}

}  // namespace subq::ops::detail::mlstm_kernels
