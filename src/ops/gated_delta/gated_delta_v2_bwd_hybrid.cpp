// gated_delta_v2_bwd_hybrid.cpp — INTERIM definition of detail::gated_delta_v2_backward (gated_delta_v2.h):
// the v1 explicit backward (detail::gated_delta_v1_backward, gated_delta_cuda.cpp: LibTorch chunk-parallel
// parts in fp32 + the v1 reverse-scan and inverse kernels) applied to the v2 forward's saved tensors,
// upcast to fp32. It gives correct gradients while the fused backward kernels (helper gdnbwd:
// gdn_v2_bwd.cu, gated_delta_v2_bwd.cpp) are not merged; the integrator deletes this file when they land
// (the two definitions must not be linked together).
//
// Decisions:
//  * v1 chunks the sequence as C = min(64, T) (one short chunk when T < 64), v2 as 64-token chunks with the
//    last one zero-padded: the same chunk boundaries, so the saved u [B,H,T,Dv] is padded to nc * C tokens
//    and viewed as [B,H,nc,C,Dv], and the saved per-chunk states are used as they are.
//  * Everything fp32 with autocast off (the saved q, k, v are exact in fp32); the saved tinv and w are not
//    used (v1 recomputes its chunk tensors).
#include <torch/torch.h>

#include "ops/common/chunk_decay.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "ops/gated_delta/gated_delta_v2.h"

namespace subq::ops::detail {

GdnV2Grads gated_delta_v2_backward(const GatedDeltaLaunchers& L, const GdnV2Saved& s, const torch::Tensor& d_o,
                                   const torch::Tensor& dfinal) {
  const int64_t B = s.q.size(0), H = s.q.size(1), T = s.q.size(2), dv = s.v.size(3);
  const int64_t C = std::min<int64_t>(kGdnMaxChunk, T), nc = (T + C - 1) / C;
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
  const torch::Tensor u = pad_time(f32(s.u), 2, nc * C).reshape({B, H, nc, C, dv});
  const torch::Tensor reset = s.reset.defined() ? s.reset.to(torch::kBool) : torch::Tensor();
  const GatedDeltaV1Grads r = gated_delta_v1_backward(L, f32(s.q), f32(s.k), f32(s.v), s.g, s.beta, reset, u,
                                                      f32(s.states), d_o, dfinal, false, torch::kFloat32);
  GdnV2Grads g;
  g.dq = r.dq;
  g.dk = r.dk;
  g.dv = r.dv;
  g.dg = r.dg;
  g.dbeta = r.dbeta;
  if (s.has_s0) g.ds0 = r.ds0;
  return g;
}

}  // namespace subq::ops::detail
