// gated_delta_v2_bwd.cpp — detail::gated_delta_v2_backward (gated_delta_v2.h): the backward of the fused
// Gated DeltaNet kernel path, as three kernel launches through the launcher table (gdn_v2_bwd.cu):
// scan_bwd (reverse scan over chunks), chunk_bwd (chunk-parallel output / state terms), wy_bwd (UT
// transform backward, decay chain, reverse cumsum). Formulas in gdn_v2_bwd.cuh; the math is that of v1's
// explicit backward (GatedDeltaFunction::backward in gated_delta_cuda.cpp).
//
// Decisions:
//  * Intermediates between the kernels: dstates (G per chunk) and du, dw in the operand dtype (they are
//    tensor-core operands of the next kernels), dk_part, the per-key-slice dgc partials and scan_bwd's
//    x partials (K_end's decay term with G in fp32, two per scan block) in fp32.
//  * dq, dk, dv come back in the operand dtype (the caller casts to q / k / v's dtype, which is the
//    operand dtype on this path), dg, dbeta and ds0 in fp32.
//  * No CUDA headers; the same code runs with the emulated launchers of the CPU test (CPU tensors,
//    stream nullptr).
#include <torch/torch.h>

#include "ops/common/kernel_glue.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_v2.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {

using torch::Tensor;

GdnKernelDtype operand_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return GdnKernelDtype::kBF16;
    case torch::kFloat16: return GdnKernelDtype::kF16;
    default: throw InternalError(str("gated_delta_v2_backward: operand dtype ", t, " is not bf16 or fp16"));
  }
}

void check_saved(const GdnV2Saved& s, int64_t B, int64_t H, int64_t T, int64_t dk, int64_t dv, int64_t nc) {
  auto same = [](const Tensor& t, std::initializer_list<int64_t> shape, torch::ScalarType dt, const char* name) {
    SUBQ_CHECK(t.defined() && t.sizes() == c10::IntArrayRef(shape) && t.scalar_type() == dt && t.is_contiguous(),
               "gated_delta_v2_backward: saved ", name, " has shape ", t.defined() ? t.sizes() : c10::IntArrayRef{},
               ", expected ", c10::IntArrayRef(shape), " contiguous ", dt);
  };
  const auto ot = s.q.scalar_type();
  same(s.k, {B, H, T, dk}, ot, "k");
  same(s.v, {B, H, T, dv}, ot, "v");
  same(s.w, {B, H, T, dk}, ot, "w");
  same(s.u, {B, H, T, dv}, ot, "u");
  same(s.states, {B, H, nc, dv, dk}, ot, "states");
  same(s.g, {B, H, T}, torch::kFloat32, "g");
  same(s.beta, {B, H, T}, torch::kFloat32, "beta");
  same(s.tinv, {B, H, nc, 64, 64}, torch::kFloat32, "tinv");
  if (s.reset.defined()) same(s.reset, {B, T}, torch::kInt32, "reset");
}

}  // namespace

GdnV2Grads gated_delta_v2_backward(const GatedDeltaLaunchers& L, const GdnV2Saved& s, const torch::Tensor& d_o,
                                   const torch::Tensor& dfinal) {
  SUBQ_CHECK(s.q.defined() && s.q.dim() == 4 && s.q.is_contiguous(), "gated_delta_v2_backward: bad saved q");
  SUBQ_CHECK(L.v2_scan_bwd && L.v2_chunk_bwd && L.v2_wy_bwd, "gated_delta_v2_backward: launchers missing");
  const int64_t B = s.q.size(0), H = s.q.size(1), T = s.q.size(2), dk = s.q.size(3), dv = s.v.size(3);
  const int64_t nc = (T + 63) / 64;
  check_saved(s, B, H, T, dk, dv, nc);
  const auto ot = s.q.scalar_type();
  const GdnKernelDtype kd = operand_dtype(ot);
  auto opt = s.q.options();
  auto f32 = opt.dtype(torch::kFloat32);

  const Tensor dO = d_o.defined() ? d_o.to(ot).contiguous() : torch::zeros({B, H, T, dv}, opt);
  SUBQ_CHECK(dO.sizes() == s.v.sizes(), "gated_delta_v2_backward: d_o has shape ", dO.sizes(), ", expected ",
             s.v.sizes());
  const Tensor dfin = dfinal.defined() ? dfinal.to(torch::kFloat32).contiguous() : Tensor();
  if (dfin.defined())
    SUBQ_CHECK(dfin.sizes() == c10::IntArrayRef({B, H, dv, dk}), "gated_delta_v2_backward: dfinal has shape ",
               dfin.sizes(), ", expected [B, H, Dv, Dk]");

  const int64_t slices = dk / 64;
  Tensor dstates = torch::empty({B, H, nc, dv, dk}, opt);
  Tensor du = torch::empty({B, H, T, dv}, opt);
  Tensor ds0 = torch::empty({B, H, dv, dk}, f32);
  Tensor dq = torch::empty({B, H, T, dk}, opt);
  Tensor dk_part = torch::empty({B, H, T, dk}, f32);
  Tensor dw = torch::empty({B, H, T, dk}, opt);
  Tensor dgc_part = torch::empty({slices, B * H, nc * 64}, f32);
  void* stream = glue::stream_of(s.q);
  // scan_bwd's tile (by the device's SM count), two partials (value column halves) per scan_bwd block
  const int sms = L.v2_sm_count && s.q.is_cuda() ? L.v2_sm_count(s.q.get_device()) : 0;
  const int scan_rows = gdn_v2_scan_bwd_rows(static_cast<int>(dk), static_cast<int>(dv), B * H, sms);
  const int64_t x_blocks = 2 * (dv / scan_rows);
  Tensor x_part = torch::empty({x_blocks, B * H, nc * 64}, f32);
  Tensor dK = torch::empty({B, H, T, dk}, opt);
  Tensor dV = torch::empty({B, H, T, dv}, opt);
  Tensor dg = torch::empty({B, H, T}, f32);
  Tensor dbeta = torch::empty({B, H, T}, f32);

  GdnV2BwdArgs a;
  a.bh = static_cast<int>(B * H);
  a.heads = static_cast<int>(H);
  a.time = static_cast<int>(T);
  a.chunks = static_cast<int>(nc);
  a.key_dim = static_cast<int>(dk);
  a.value_dim = static_cast<int>(dv);
  a.key_slices = static_cast<int>(slices);
  a.q = s.q.data_ptr();
  a.k = s.k.data_ptr();
  a.v = s.v.data_ptr();
  a.w = s.w.data_ptr();
  a.u = s.u.data_ptr();
  a.states = s.states.data_ptr();
  a.g = s.g.data_ptr<float>();
  a.beta = s.beta.data_ptr<float>();
  a.tinv = s.tinv.data_ptr<float>();
  a.reset = s.reset.defined() ? s.reset.data_ptr<int>() : nullptr;
  a.d_o = dO.data_ptr();
  a.dfinal = dfin.defined() ? dfin.data_ptr<float>() : nullptr;
  a.dstates = dstates.data_ptr();
  a.du = du.data_ptr();
  a.ds0 = ds0.data_ptr<float>();
  a.x_part = x_part.data_ptr<float>();
  a.scan_rows = scan_rows;
  a.x_blocks = static_cast<int>(x_blocks);
  a.dq = dq.data_ptr();
  a.dk_part = dk_part.data_ptr<float>();
  a.dw = dw.data_ptr();
  a.dgc_part = dgc_part.data_ptr<float>();
  a.dk = dK.data_ptr();
  a.dv = dV.data_ptr();
  a.dg = dg.data_ptr<float>();
  a.dbeta = dbeta.data_ptr<float>();

  L.v2_scan_bwd(a, kd, stream);
  L.v2_chunk_bwd(a, kd, stream);
  L.v2_wy_bwd(a, kd, stream);

  GdnV2Grads r;
  r.dq = dq;
  r.dk = dK;
  r.dv = dV;
  r.dg = dg;
  r.dbeta = dbeta;
  if (s.has_s0) r.ds0 = ds0;
  return r;
}

}  // namespace subq::ops::detail
