// gated_delta.h — the Gated DeltaNet recurrence (gated delta rule), LibTorch reference forms.
//
// Per batch row b and head h, with alpha_t = exp(g_t):
//   S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T      state S_t in R^{Dv x Dk}
//   o_t = S_t q_t
// The state is stored [B, H, Dv, Dk] ("value rows, key columns", so that o = S q and the write is v k^T);
// this is the transpose of flash-linear-attention's [B, H, K, V] layout.
//
// Arguments (head-first layout, see docs/ops_ssd_gated_delta.md):
//   q, k   [B, H, T, Dk]  taken as given: the caller L2-normalises q and k per head and scales q by
//                         1/sqrt(Dk) (DESIGN.md). With options.l2_normalize_qk the op does exactly that
//                         itself (x / sqrt(sum x^2 + 1e-6), then q * Dk^-1/2), differentiably.
//   v      [B, H, T, Dv]  q, k and v share one float dtype; o is returned in it.
//   g      [B, H, T]      log alpha_t <= 0 (the log of the decay, as flash-linear-attention takes it:
//                         alpha_t = exp(-exp(A_log) softplus(...)) gives g_t = -exp(A_log) softplus(...)).
//   beta   [B, H, T]      write strength, taken as given: in [0, 1] (beta = sigmoid(.)) or in [0, 2] for
//                         the negative-eigenvalue variant (beta = 2 sigmoid(.), computed by the caller).
//   initial_state [B, H, Dv, Dk] (optional: undefined = zeros, the zero state).
//   reset  [B, T] bool    (optional) packed documents: reset[b, t] = true sets the state to zeros right
//                         before token t is consumed (at t = 0 the initial state is discarded).
// Returns o [B, H, T, Dv] and final_state [B, H, Dv, Dk] — the state after the last token (so it belongs
// to the last document of each row). Computation is fp32 (fp64 when any input is fp64, for the
// finite-difference tests); states are fp32 (fp64 then). g and beta may have any float dtype.
//
// Reset example: one row of T = 6 holding documents [t0 t1 t2 t3] and [t4 t5]:
//   auto reset = torch::tensor({false, false, false, false, true, false}).view({1, 6});
//   auto [o, S] = subq::ops::gated_delta_chunkwise(q, k, v, g, beta, {}, reset);
//   // o[:, :, 0:4] depends only on tokens 0..3; o[:, :, 4:6] only on tokens 4, 5; S is the state after
//   // token 5 of the second document, as if it had been run alone from the zero state.
//
// Forms: gated_delta_recurrent loops over t (ground truth; decode uses gated_delta_step);
// gated_delta_chunkwise uses the WY/UT transform inside each chunk (one batched triangular solve for all
// chunks), a loop over chunks only for the carried state. Both are differentiable with respect to every
// tensor argument (not reset).
//
// CUDA kernels (src/ops/gated_delta/gated_delta_cuda*.{cu,cuh,cpp}; design and numbers in
// docs/perf/gated_delta.md): gated_delta_cuda runs the chunkwise form as one custom autograd function: the
// sequential loop over chunks is a pair of fp32 scan kernels (forward, reverse), the UT transform's inverse a
// kernel, the chunk-parallel parts the reference's LibTorch ops (forward) and explicit gradient formulas
// (backward). gated_delta_step_cuda is a fused decode-step kernel.
// Models call the dispatching entries gated_delta() and gated_delta_decode(), which take the kernels when
// SUBQ_OPS_IMPL (subq/ops/ops_impl.h) allows and the call is supported, else the references:
//   auto r = subq::ops::gated_delta(q, k, v, g, beta, s0, reset, opts);  // CUDA bf16, Dk 128: kernels
#pragma once

#include <torch/torch.h>

namespace subq::ops {

struct GatedDeltaOptions {
  int64_t chunk_size = 64;       // chunkwise form only; any value >= 1, T need not be a multiple
  bool l2_normalize_qk = false;  // normalise q, k per head and scale q by Dk^-1/2 inside the op
};

struct GatedDeltaResult {
  torch::Tensor o;            // [B, H, T, Dv] in q's dtype ([B, H, Dv] for gated_delta_step)
  torch::Tensor final_state;  // [B, H, Dv, Dk] fp32 (fp64 when computing in fp64)
};

// Step-by-step loop (the ground truth).
GatedDeltaResult gated_delta_recurrent(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                       const torch::Tensor& g, const torch::Tensor& beta,
                                       const torch::Tensor& initial_state = {}, const torch::Tensor& reset = {},
                                       const GatedDeltaOptions& options = {});

// Chunkwise (WY/UT) form; any T (the last chunk is zero-padded internally).
GatedDeltaResult gated_delta_chunkwise(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                       const torch::Tensor& g, const torch::Tensor& beta,
                                       const torch::Tensor& initial_state = {}, const torch::Tensor& reset = {},
                                       const GatedDeltaOptions& options = {});

// One decode step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], g_t, beta_t [B, H], state [B, H, Dv, Dk]
// (optional = zeros). Returns o_t [B, H, Dv] (q_t's dtype) and the new state. options.chunk_size is unused.
GatedDeltaResult gated_delta_step(const torch::Tensor& q_t, const torch::Tensor& k_t, const torch::Tensor& v_t,
                                  const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                  const torch::Tensor& state, const GatedDeltaOptions& options = {});

// The dispatching entry for sequences (what models call). SUBQ_OPS_IMPL=auto (the default): gated_delta_cuda
// when gated_delta_cuda_unsupported(q, v) is empty, else gated_delta_chunkwise; =reference: always
// gated_delta_chunkwise; =cuda: always gated_delta_cuda (throws when unsupported). options.chunk_size applies
// to the reference only (the kernels use chunks of 64).
GatedDeltaResult gated_delta(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& initial_state = {},
                             const torch::Tensor& reset = {}, const GatedDeltaOptions& options = {});

// The kernel path; differentiable with respect to every tensor argument but reset. Same results as
// gated_delta_chunkwise up to fp32 rounding (o in q's dtype, final state fp32). Throws subq::InputError
// when unsupported (see gated_delta_cuda_unsupported).
GatedDeltaResult gated_delta_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& g, const torch::Tensor& beta,
                                  const torch::Tensor& initial_state = {}, const torch::Tensor& reset = {},
                                  const GatedDeltaOptions& options = {});

// "" when gated_delta_cuda can run q [B, H, T, Dk] and v [B, H, T, Dv] (arguments that pass the usual
// checks): a build with the kernels, a CUDA device they were compiled for, q in bf16, fp16 or fp32,
// Dk in {64, 128, 256}, Dv a multiple of 32, T >= 1, B * H <= 65535. Otherwise the reason.
std::string gated_delta_cuda_unsupported(const torch::Tensor& q, const torch::Tensor& v);

// The fused decode-step kernel (gated_delta_step semantics, options.l2_normalize_qk inside the kernel):
// CUDA tensors, q_t/k_t/v_t in fp32, bf16 or fp16; no autograd (throws when grad mode is on and an input
// requires grad). Throws subq::InputError when unsupported.
GatedDeltaResult gated_delta_step_cuda(const torch::Tensor& q_t, const torch::Tensor& k_t, const torch::Tensor& v_t,
                                       const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                       const torch::Tensor& state, const GatedDeltaOptions& options = {});

// The dispatching decode step (what models call): gated_delta_step_cuda under SUBQ_OPS_IMPL=cuda, and under
// auto when it can run (CUDA, fp32/bf16/fp16, no gradient needed), else gated_delta_step.
GatedDeltaResult gated_delta_decode(const torch::Tensor& q_t, const torch::Tensor& k_t, const torch::Tensor& v_t,
                                    const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                    const torch::Tensor& state, const GatedDeltaOptions& options = {});

}  // namespace subq::ops
