// mlstm_cuda_bwd.cu — the mLSTM backward's chunk kernel, parallel over chunks. Inputs: the forward's
// per-chunk states (C_p, n_p, m_p entering chunk c), the reverse scan's state gradients (dC_out, dn_out:
// gradient of the state leaving chunk c), and the pre-pass's per-token inv_den_t = 1 / den_t and
// dqn_t = -(dh_t . h_t) inv_den_t sign(qn_t) [|qn_t| >= exp(-m_t)]. With m held constant (derivation and
// the fp64 check against autograd of the reference in docs/perf/mlstm.md and
// tests/unit/test_mlstm_kernel_math.cpp; A[t][s] = exp(cum_t - cum_s + i~_s - m_t) masked, S = q^ k^T o A,
// a_t = exp(g_t - m_t) [seg_t = 0], b_s = exp(cum_63 - cum_s + i~_s - m_63) [seg_s = seg_63],
// b_prev = exp(g_63 - m_63) [seg_63 = 0]):
//   dS = inv_den_t (dh V^T)[t][s] + dqn_t (masked),  G = dS o A
//   dq = a_t / sqrt(Dk) (inv_den_t dh_t C_p^T + dqn_t n_p) + G K / sqrt(Dk)
//   dk = G^T Q / sqrt(Dk) + b_s (V dC_out^T + dn_out)
//   dv = (S o inv_den_t)^T dh + b_s K dC_out
//   P = dS o S;  Pa_t = a_t / sqrt(Dk) (inv_den_t q_t . C_p dh_t + dqn_t q_t . n_p)
//   Pb_s = b_s (k_s . dC_out v_s + k_s . dn_out);  Pb_prev = b_prev (<C_p, dC_out> + n_p . dn_out)
//   di~_s = sum_t P[t][s] + Pb_s
//   dcum_t = sum_s P[t][s] - sum_t' P[t'][t] + Pa_t - Pb_t  (+ sum_s Pb_s + Pb_prev at t = 63)
//   dlf_r = sum_{t >= r} dcum_t,  df~_r = dlf_r sigmoid(-f~_r)
//
// Decisions:
//  * One block per (chunk, head, batch), 8 warps (16 x 32 of every 64 x 64 tile each); q, k, v, dh of the
//    chunk stay in shared memory; S / den and G / sqrt(Dk) are formed in registers in the fragment positions
//    of q k^T and dh v^T and stored once in bf16 as mma operands; P is reduced in fp32 (row and column sums).
//  * dq and dk are produced per 64-wide slice of Dk (rows of C_p, C_lo, then dC_out streamed through one
//    shared tile, Dv-deep products; <C_p, dC_out> reads C_p and C_lo again from L2 while dC_out is resident),
//    dv per 64-wide slice of Dv (a column slice of dC_out); the row dots Pa and Pb come from the same
//    accumulators (q . (C_p dh) = rowdot(dh C_p^T, q), k . (dC_out v) = rowdot(v dC_out^T, k)).
//  * Outputs are written straight from the fragments (bf16 pairs): no staging tile, which keeps the
//    Dk = Dv = 256 case inside 227 KB of shared memory (224 KB).
//  * Two blocks per SM at Dk = Dv = 128 (111 KB of shared memory, registers capped at 128): the loads are
//    synchronous (cp.async + wait), so a second resident block is what overlaps one block's loads with the
//    other's mma work. With two tiles for C_p and dC_out (v1.1, 127 KB) one block fit: 1.57 ms at B8 T4096
//    H16 on the H200 (docs/perf/mlstm.md, "Occupancy").
//  * No atomics; every output element is written by exactly one block: deterministic.
//  * Also here: the per-token pre-pass (mlstm_prep_kernel; inv_den, dqn and dh . h from the fp32 h, i.e. the
//    forward's h plus its saved rounding residual), one warp per token: it reads dh, h and the residual once
//    (3 x 2 bytes per element) where the LibTorch ops it replaces made fp32 copies of each operand.
#include <cuda_runtime.h>

#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_cuda_bwd.cuh"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace mlstm_kernels;

template <typename T, int DK, int DV>
void launch_bwd(const MlstmChunkBwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = sizeof(BwdSmem<T, DK, DV>);
  static_assert(smem <= 227 * 1024, "backward chunk tiles do not fit in shared memory");
  // 228 KB per SM, 1 KB reserved per block: two blocks at the 340M / benchmark head size
  static_assert(DK != 128 || DV != 128 || 2 * (smem + 1024) <= 228 * 1024, "two blocks per SM no longer fit");
  auto kernel = mlstm_chunk_bwd_kernel<T, DK, DV>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kBwdThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T, int DK>
void launch_bwd_dv(const MlstmChunkBwdArgs& a, cudaStream_t stream) {
  switch (a.n.dv) {
    case 64: launch_bwd<T, DK, 64>(a, stream); break;
    case 128: launch_bwd<T, DK, 128>(a, stream); break;
    default: launch_bwd<T, DK, 256>(a, stream); break;
  }
}

template <typename T>
void launch_bwd_dk(const MlstmChunkBwdArgs& a, cudaStream_t stream) {
  switch (a.n.dk) {
    case 64: launch_bwd_dv<T, 64>(a, stream); break;
    case 128: launch_bwd_dv<T, 128>(a, stream); break;
    default: launch_bwd_dv<T, 256>(a, stream); break;
  }
}

template <typename T>
void launch_prep(const MlstmPrepArgs& a, cudaStream_t stream) {
  const int64_t n_tok = static_cast<int64_t>(a.batch) * a.heads * a.time;
  constexpr int kPerBlock = kPrepThreads / 32;
  const int64_t blocks = (n_tok + kPerBlock - 1) / kPerBlock;
  SUBQ_CHECK(blocks <= 0x7fffffff, "mlstm prep: ", n_tok, " tokens exceed the grid");
  mlstm_prep_kernel<T><<<static_cast<unsigned>(blocks), kPrepThreads, 0, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void mlstm_cuda_prep(const MlstmPrepArgs& a, MlstmKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.dv % 64 == 0 && a.dv > 0, "mlstm prep: Dv = ", a.dv, " must be a multiple of 64");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case MlstmKernelDtype::kBF16: launch_prep<__nv_bfloat16>(a, s); break;
    case MlstmKernelDtype::kF16: launch_prep<__half>(a, s); break;
    default: SUBQ_CHECK(false, "mlstm prep: operand dtype must be bf16 or fp16");
  }
}

void mlstm_cuda_chunk_bwd(const MlstmChunkBwdArgs& a, MlstmKernelDtype dtype, void* stream) {
  auto ok = [](int d) { return d == 64 || d == 128 || d == 256; };
  SUBQ_CHECK(ok(a.n.dk) && ok(a.n.dv), "mlstm chunk bwd: Dk = ", a.n.dk, ", Dv = ", a.n.dv, " must be 64, 128 or 256");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "mlstm chunk bwd: bad chunk count");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case MlstmKernelDtype::kBF16: launch_bwd_dk<__nv_bfloat16>(a, s); break;
    case MlstmKernelDtype::kF16: launch_bwd_dk<__half>(a, s); break;
    default: SUBQ_CHECK(false, "mlstm chunk bwd: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
