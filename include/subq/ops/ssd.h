// ssd.h — the Mamba-2 state-space recurrence (SSD, "state space duality"), LibTorch reference forms.
//
// Per batch row b and head h (group g = h / (H / G)), with a_t = Delta_t * A_h:
//   h_t = exp(a_t) h_{t-1} + Delta_t x_t B_t^T          state h_t in R^{P x N}
//   y_t = h_t C_t + D_h x_t
//
// Arguments (head-first layout, see docs/ops_ssd_gated_delta.md; T = time, P = head dim, N = state dim):
//   x      [B, H, T, P]  any float dtype; y is returned in x's dtype. B and C must share x's dtype.
//   dt     [B, H, T]     Delta_t, the positive step size (the caller applies softplus(dt + dt_bias)).
//   A      [H]           one negative scalar per head (the caller computes A = -exp(A_log)).
//   B, C   [B, G, T, N]  G groups; heads [g*H/G, (g+1)*H/G) read group g (H must be a multiple of G).
//   D      [H]           skip connection (optional: undefined = no skip).
//   initial_state [B, H, P, N] (optional: undefined = zeros, the zero state).
//   reset  [B, T] bool   (optional) packed documents: reset[b, t] = true sets the state to zeros right
//                        before token t is consumed (at t = 0 the initial state is discarded).
// Returns y [B, H, T, P] and final_state [B, H, P, N] — the state after the last token (so it belongs
// to the last document of each row). Internally everything runs in fp32 (fp64 when any input is fp64,
// used by the finite-difference tests); states are fp32 (fp64 in that case). dt and A may have any float
// dtype. Values are not checked (a positive A makes the state grow; the chunkwise form then overflows).
//
// Reset example: one row of T = 6 holding documents [t0 t1 t2 t3] and [t4 t5]:
//   auto reset = torch::tensor({false, false, false, false, true, false}).view({1, 6});
//   auto [y, s] = subq::ops::ssd_chunkwise(x, dt, A, B, C, D, {}, reset);
//   // y[:, :, 0:4] depends only on tokens 0..3; y[:, :, 4:6] only on tokens 4, 5; s is the state after
//   // token 5 of the second document, as if it had been run alone from the zero state.
//
// Forms: ssd_recurrent loops over t (ground truth; autograd-able; decode uses ssd_step);
// ssd_chunkwise is the SSD block decomposition (intra-chunk (C B^T o L)(Delta x) for all chunks in one
// batched matmul, a loop over chunks only for the carried state). Both are differentiable with respect
// to every tensor argument (not reset).
//
// CUDA kernels (src/ops/ssd/ssd_cuda_*.cu, design and numbers in docs/perf/ssd.md): ssd_cuda (chunkwise
// forward and backward as one autograd function, chunk size 64) and ssd_step_cuda (fused decode step).
// Models call the dispatching entries ssd() and ssd_decode(): they take the kernel when SUBQ_OPS_IMPL
// (subq/ops/ops_impl.h) is auto or cuda and the call is supported, else the reference forms. Example:
//   auto r = subq::ops::ssd(x, dt, A, B, C, D, h0, reset);   // CUDA bf16 [B,H,T,64k] x [B,G,T,64|128]: kernel
//   // SUBQ_OPS_IMPL=reference: ssd_chunkwise(..., chunk_size) everywhere, e.g. to compare
#pragma once

#include <torch/torch.h>

#include <string>

namespace subq::ops {

struct SsdResult {
  torch::Tensor y;            // [B, H, T, P] in x's dtype ([B, H, P] for ssd_step)
  torch::Tensor final_state;  // [B, H, P, N] fp32 (fp64 when computing in fp64)
};

// Step-by-step loop (the ground truth).
SsdResult ssd_recurrent(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D = {},
                        const torch::Tensor& initial_state = {}, const torch::Tensor& reset = {});

// Chunkwise (SSD) form; any T (the last chunk is zero-padded internally), any chunk_size >= 1.
SsdResult ssd_chunkwise(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D = {},
                        const torch::Tensor& initial_state = {}, const torch::Tensor& reset = {},
                        int64_t chunk_size = 64);

// One decode step: x_t [B, H, P], dt_t [B, H], A [H], B_t, C_t [B, G, N], D [H] (optional),
// state [B, H, P, N] (optional = zeros). Returns y_t [B, H, P] (x_t's dtype) and the new state.
SsdResult ssd_step(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                   const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                   const torch::Tensor& state);

// ---- kernels and dispatch ------------------------------------------------------------------------------

// The dispatching entry for sequences (what models call). With SUBQ_OPS_IMPL=auto (the default): ssd_cuda
// when ssd_cuda_unsupported(x, B) is empty, else ssd_chunkwise(..., chunk_size); =reference: always
// ssd_chunkwise; =cuda: always ssd_cuda (throws when unsupported). chunk_size applies to the reference
// only (the kernels use 64). Same arguments, result and autograd behaviour as ssd_chunkwise.
SsdResult ssd(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B,
              const torch::Tensor& C, const torch::Tensor& D = {}, const torch::Tensor& initial_state = {},
              const torch::Tensor& reset = {}, int64_t chunk_size = 64);

// The CUDA kernels: chunkwise forward (a sequential scan over 64-token chunks carrying the fp32 state, then
// per-chunk outputs) and backward (reverse scan, per-chunk gradients) as one torch::autograd::Function.
// Differentiable w.r.t. x, dt, A, B, C, D and initial_state. fp32 accumulation and fp32 carried states;
// the per-chunk states handed between kernels (and saved for the backward) are in the operand dtype.
// Throws subq::InputError when unsupported (see ssd_cuda_unsupported).
SsdResult ssd_cuda(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B,
                   const torch::Tensor& C, const torch::Tensor& D = {}, const torch::Tensor& initial_state = {},
                   const torch::Tensor& reset = {});

// "" when ssd_cuda can run x [B, H, T, P] and B [B, G, T, N] (given arguments that pass the usual
// checks), else why not: kernels built (nvcc at configure time), x on a CUDA device with a kernel image
// (sm_90a by default, SUBQ_CUDA_ARCHS), x / B / C in bf16 or fp16, P a multiple of 64, N = 64 or 128,
// T >= 1, B, H, G <= 65535. Any strides with a contiguous last dimension and 16-byte aligned rows are
// used in place; other layouts are copied. dt, A, D, initial_state may have any float dtype.
std::string ssd_cuda_unsupported(const torch::Tensor& x, const torch::Tensor& B);

// The fused decode step (ssd_step semantics and arguments) on CUDA; x_t, B_t, C_t in fp32, bf16 or fp16,
// N a multiple of 4. No backward: throws when gradients are required.
SsdResult ssd_step_cuda(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                        const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                        const torch::Tensor& state);

// The dispatching decode step: ssd_step_cuda when SUBQ_OPS_IMPL allows, the tensors are on CUDA and no
// gradient is needed, else ssd_step.
SsdResult ssd_decode(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                     const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                     const torch::Tensor& state);

}  // namespace subq::ops
