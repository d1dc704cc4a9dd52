// gated_delta_v2.h — the contract between the forward and the backward of the fused Gated DeltaNet kernel
// path ("v2", docs/perf/gated_delta.md "Version 2"): what the forward saves and what the backward returns.
// The v2 path takes q, k, v in bf16 or fp16 (tensor-core operands); fp32 inputs keep the v1 hybrid path.
//
// Math (per batch*head, chunk c of C = 64 tokens; notation of docs/perf/gated_delta.md, resets as there):
//   A = strict_lower(diag(beta) (K K^T) o D),   Tinv = (I + A)^-1
//   W = Tinv diag(beta e) K,   U~ = Tinv diag(beta) V
//   U_c = U~_c - W_c S_c^T,    S_{c+1} = gamma_c S_c + U_c^T K_end_c     (S_c: the state entering chunk c)
//   O = diag(e) Q S_c^T + ((Q K^T) o D) U_c
// Layouts: every tensor below is contiguous; BH-major ([B, H, ...]); nc = ceil(T / 64). Tokens past T in
// the last chunk do not exist in any [B, H, T, .] tensor (kernels zero-fill them on load).
// No CUDA headers here; LibTorch only (host glue).
#pragma once

#include <torch/torch.h>

namespace subq::ops::detail {

struct GatedDeltaLaunchers;

// What the v2 forward saves for the backward.
struct GdnV2Saved {
  torch::Tensor q, k;     // [B, H, T, Dk] operand dtype (bf16/fp16), after the optional q/k normalisation
  torch::Tensor v;        // [B, H, T, Dv] operand dtype
  torch::Tensor g, beta;  // [B, H, T] fp32 (log decay <= 0; beta as given)
  torch::Tensor reset;    // [B, T] int32 (0/1), or undefined (no resets)
  bool has_s0 = false;    // an initial state was given (its gradient is returned)
  torch::Tensor tinv;     // [B, H, nc, 64, 64] fp32: (I + A)^-1 per chunk, zero above the diagonal; rows and
                          // columns of tokens past T are those of the identity
  torch::Tensor w;        // [B, H, T, Dk] operand dtype: W
  torch::Tensor u;        // [B, H, T, Dv] operand dtype: U_c (after the scan's correction -W S^T)
  torch::Tensor states;   // [B, H, nc, Dv, Dk] operand dtype: S_c, the state entering chunk c
};

// Gradients of the v2 op with respect to q, k (the normalised ones when normalisation is on), v, g, beta
// and the initial state.
struct GdnV2Grads {
  torch::Tensor dq, dk, dv;  // [B, H, T, D] (any float dtype; the caller casts)
  torch::Tensor dg, dbeta;   // [B, H, T] fp32
  torch::Tensor ds0;         // [B, H, Dv, Dk] fp32, or undefined when !has_s0
};

// The v2 backward: do [B, H, T, Dv] (any float dtype; undefined = zeros), dfinal [B, H, Dv, Dk] (any float
// dtype; undefined = zeros). Launches through `L` (CUDA launchers in production, emulated ones in the CPU
// tests; then the tensors are on the CPU and the stream is nullptr).
GdnV2Grads gated_delta_v2_backward(const GatedDeltaLaunchers& L, const GdnV2Saved& s, const torch::Tensor& d_o,
                                   const torch::Tensor& dfinal);

}  // namespace subq::ops::detail
