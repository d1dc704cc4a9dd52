// ssd_cuda.cpp — the LibTorch side of the SSD CUDA kernels: argument preparation, the custom autograd
// function (forward: scan + chunk outputs; backward: reverse scan + chunk gradients), the fused decode
// step, and the dispatching entry points subq::ops::ssd() / ssd_decode() (see subq/ops/ssd.h).
//
// Decisions:
//  * Strided inputs are used as they are when every row (the last dimension) is contiguous and 16-byte
//    aligned — the Mamba-2 mixer passes permuted views of its xBC projection, and copying them would cost
//    as much as a kernel. Anything else is copied to a contiguous tensor first.
//  * dt, A, D, the initial state and the final-state gradient are converted to fp32 (the kernels read
//    them as fp32); reset flags to int32. Gradients come back in each input's dtype.
//  * The forward saves the per-chunk states (operand dtype, [B, H, T/64, P, N]) for the backward instead
//    of recomputing them: one scan less per training step for 2 bytes x P x N / 64 per token and head.
//  * Head splits (several blocks per (batch, group, chunk)) are used only when the grid would otherwise
//    have fewer than two blocks per SM.
//  * This file has no CUDA headers: launches go through ssd_cuda.h with the current stream's native
//    handle, so it compiles (and the dispatch falls back cleanly) in builds without nvcc.
#include <ATen/DeviceAccelerator.h>
#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include <cstdint>

#include "ops/common/kernel_glue.h"
#include "ops/common/chunk_decay.h"
#include "ops/ssd/ssd_cuda.h"
#include "ops/ssd/ssd_internal.h"
#include "subq/core/error.h"
#include "subq/ops/ops_impl.h"
#include "subq/ops/ssd.h"

namespace subq::ops {

namespace {

using torch::Tensor;
using detail::glue::rows_aligned;
using detail::glue::rows16;
using detail::glue::stream_of;
using detail::glue::ptr_or_null;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kChunk = 64;
constexpr int64_t kMaxGridYZ = 65535;


detail::SsdKernelDtype kernel_dtype(torch::ScalarType t) {
  return detail::glue::kernel_dtype<detail::SsdKernelDtype>(t, "ssd_cuda");
}
const auto rows_of = detail::glue::rows_of<detail::SsdRows>;



int head_splits(const detail::SsdLaunchers& l, int64_t base_blocks, int64_t heads_per_group, int device) {
  const int64_t target = 2 * static_cast<int64_t>(l.sm_count(device));
  for (int64_t s = 1; s <= heads_per_group; ++s)
    if (heads_per_group % s == 0 && base_blocks * s >= target) return static_cast<int>(s);
  return static_cast<int>(heads_per_group);
}

// Kernel-ready copies / views of the arguments of ssd_cuda.
struct Prepared {
  detail::SsdSizes n;
  Tensor x, dt, A, B, C, D, init, reset;
};

Prepared prepare(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& init, const Tensor& reset) {
  Prepared p;
  p.n.batch = static_cast<int>(x.size(0));
  p.n.heads = static_cast<int>(x.size(1));
  p.n.time = static_cast<int>(x.size(2));
  p.n.head_dim = static_cast<int>(x.size(3));
  p.n.groups = static_cast<int>(B.size(1));
  p.n.state_dim = static_cast<int>(B.size(3));
  p.n.chunks = static_cast<int>((x.size(2) + kChunk - 1) / kChunk);
  p.x = rows16(x);
  p.B = rows16(B);
  p.C = rows16(C);
  p.dt = dt.scalar_type() == torch::kFloat32 ? dt : dt.to(torch::kFloat32);
  p.A = A.to(torch::kFloat32).contiguous();
  if (D.defined()) p.D = D.to(torch::kFloat32).contiguous();
  if (init.defined()) p.init = init.to(torch::kFloat32).contiguous();
  if (reset.defined()) p.reset = reset.to(torch::kInt32).contiguous();
  return p;
}

void fill_dt(const Tensor& dt, const float*& ptr, int64_t& s0, int64_t& s1, int64_t& s2) {
  ptr = dt.data_ptr<float>();
  s0 = dt.stride(0);
  s1 = dt.stride(1);
  s2 = dt.stride(2);
}

class SsdCudaFunction : public torch::autograd::Function<SsdCudaFunction> {
 public:
  // D, init and reset arrive as 0-element placeholders when not given (see ssd_kernels_autograd below).
  // The launchers are a non-tensor argument (their address is kept for the backward in saved_data).
  static variable_list forward(AutogradContext* ctx, const detail::SsdLaunchers* launchers, const Tensor& x,
                               const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                               const Tensor& D_in, const Tensor& init_in, const Tensor& reset_in) {
    const detail::SsdLaunchers& l = *launchers;
    const Tensor D = D_in.numel() ? D_in : Tensor();
    const Tensor init = init_in.numel() ? init_in : Tensor();
    const Tensor reset = reset_in.numel() ? reset_in : Tensor();
    c10::DeviceGuard guard(x.device());
    Prepared p = prepare(x, dt, A, B, C, D, init, reset);
    const auto kd = kernel_dtype(p.x.scalar_type());
    void* stream = stream_of(p.x);
    const auto& n = p.n;
    auto opt = p.x.options();
    Tensor states = torch::empty({n.batch, n.heads, n.chunks, n.head_dim, n.state_dim}, opt);
    Tensor final_state = torch::empty({n.batch, n.heads, n.head_dim, n.state_dim}, opt.dtype(torch::kFloat32));
    Tensor y = torch::empty({n.batch, n.heads, n.time, n.head_dim}, opt);

    detail::SsdScanArgs sa;
    sa.n = n;
    sa.reverse = false;
    sa.u = rows_of(p.x);
    sa.v = rows_of(p.B);
    fill_dt(p.dt, sa.dt, sa.dt_s0, sa.dt_s1, sa.dt_s2);
    sa.A = p.A.data_ptr<float>();
    sa.reset = ptr_or_null<int>(p.reset);
    sa.s_in = ptr_or_null<float>(p.init);
    sa.states = states.data_ptr();
    sa.s_out = final_state.data_ptr<float>();
    l.scan(sa, kd, stream);

    detail::SsdChunkFwdArgs fa;
    fa.n = n;
    fa.head_splits = head_splits(l, static_cast<int64_t>(n.batch) * n.groups * n.chunks, n.heads / n.groups,
                                 x.device().index());
    fa.x = rows_of(p.x);
    fill_dt(p.dt, fa.dt, fa.dt_s0, fa.dt_s1, fa.dt_s2);
    fa.A = sa.A;
    fa.B = rows_of(p.B);
    fa.C = rows_of(p.C);
    fa.D = ptr_or_null<float>(p.D);
    fa.reset = sa.reset;
    fa.states = states.data_ptr();
    fa.y = y.data_ptr();
    l.chunk_fwd(fa, kd, stream);

    ctx->save_for_backward({p.x, p.dt, p.A, p.B, p.C, p.D, p.reset, states});
    ctx->saved_data["launchers"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(launchers));
    ctx->saved_data["dt_dtype"] = static_cast<int64_t>(dt.scalar_type());
    ctx->saved_data["A_dtype"] = static_cast<int64_t>(A.scalar_type());
    ctx->saved_data["D_dtype"] = static_cast<int64_t>(D.defined() ? D.scalar_type() : torch::kFloat32);
    ctx->saved_data["has_D"] = D.defined();
    ctx->saved_data["has_init"] = init.defined();
    ctx->saved_data["init_dtype"] = static_cast<int64_t>(init.defined() ? init.scalar_type() : torch::kFloat32);
    return {y, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& l =
        *reinterpret_cast<const detail::SsdLaunchers*>(static_cast<intptr_t>(ctx->saved_data["launchers"].toInt()));
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &dt = s[1], &A = s[2], &B = s[3], &C = s[4], &D = s[5], &reset = s[6], &states = s[7];
    c10::DeviceGuard guard(x.device());
    detail::SsdSizes n;
    n.batch = static_cast<int>(x.size(0));
    n.heads = static_cast<int>(x.size(1));
    n.time = static_cast<int>(x.size(2));
    n.head_dim = static_cast<int>(x.size(3));
    n.groups = static_cast<int>(B.size(1));
    n.state_dim = static_cast<int>(B.size(3));
    n.chunks = static_cast<int>(states.size(2));
    const auto kd = kernel_dtype(x.scalar_type());
    void* stream = stream_of(x);
    auto f32 = x.options().dtype(torch::kFloat32);

    Tensor dy = grads[0].defined() ? rows16(grads[0].to(x.scalar_type())) : torch::zeros_like(x);
    Tensor dfinal = grads[1].defined() ? grads[1].to(torch::kFloat32).contiguous() : Tensor();

    Tensor dstates = torch::empty_like(states);
    Tensor dinit = torch::empty({n.batch, n.heads, n.head_dim, n.state_dim}, f32);
    detail::SsdScanArgs sa;
    sa.n = n;
    sa.reverse = true;
    sa.u = rows_of(dy);
    sa.v = rows_of(C);
    fill_dt(dt, sa.dt, sa.dt_s0, sa.dt_s1, sa.dt_s2);
    sa.A = A.data_ptr<float>();
    sa.reset = ptr_or_null<int>(reset);
    sa.s_in = ptr_or_null<float>(dfinal);
    sa.states = dstates.data_ptr();
    sa.s_out = dinit.data_ptr<float>();
    l.scan(sa, kd, stream);

    detail::SsdChunkBwdArgs ba;
    ba.n = n;
    ba.head_splits = head_splits(l, static_cast<int64_t>(n.batch) * n.groups * n.chunks, n.heads / n.groups,
                                 x.device().index());
    Tensor dx = torch::empty({n.batch, n.heads, n.time, n.head_dim}, x.options());
    Tensor ddt = torch::empty({n.batch, n.heads, n.time}, f32);
    Tensor dB_part = torch::empty({ba.head_splits, n.batch, n.groups, n.time, n.state_dim}, f32);
    Tensor dC_part = torch::empty_like(dB_part);
    Tensor dA_part = torch::empty({n.batch, n.heads, n.chunks}, f32);
    Tensor dD_part = torch::empty_like(dA_part);
    ba.x = rows_of(x);
    ba.dy = rows_of(dy);
    fill_dt(dt, ba.dt, ba.dt_s0, ba.dt_s1, ba.dt_s2);
    ba.A = sa.A;
    ba.B = rows_of(B);
    ba.C = rows_of(C);
    ba.D = ptr_or_null<float>(D);
    ba.reset = sa.reset;
    ba.states = states.data_ptr();
    ba.dstates = dstates.data_ptr();
    ba.dx = dx.data_ptr();
    ba.ddt = ddt.data_ptr<float>();
    ba.dB_part = dB_part.data_ptr<float>();
    ba.dC_part = dC_part.data_ptr<float>();
    ba.dA_part = dA_part.data_ptr<float>();
    ba.dD_part = dD_part.data_ptr<float>();
    l.chunk_bwd(ba, kd, stream);

    auto dtype_of = [&](const char* key) { return static_cast<torch::ScalarType>(ctx->saved_data[key].toInt()); };
    const Tensor dB = (ba.head_splits == 1 ? dB_part.squeeze(0) : dB_part.sum(0)).to(B.scalar_type());
    const Tensor dC = (ba.head_splits == 1 ? dC_part.squeeze(0) : dC_part.sum(0)).to(C.scalar_type());
    const Tensor dA = dA_part.sum(std::vector<int64_t>{0, 2}).to(dtype_of("A_dtype"));
    const Tensor dD =
        ctx->saved_data["has_D"].toBool() ? dD_part.sum(std::vector<int64_t>{0, 2}).to(dtype_of("D_dtype")) : Tensor();
    const Tensor d0 = ctx->saved_data["has_init"].toBool() ? dinit.to(dtype_of("init_dtype")) : Tensor();
    // one entry per forward argument: the launchers and reset get none
    return {Tensor(), dx, ddt.to(dtype_of("dt_dtype")), dA, dB, dC, dD, d0, Tensor()};
  }
};

bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace

std::string ssd_cuda_unsupported(const torch::Tensor& x, const torch::Tensor& B) {
  if (!detail::ssd_cuda_built()) return "this build has no CUDA kernels (nvcc was not found at configure time)";
  if (!x.defined() || !B.defined() || x.dim() != 4 || B.dim() != 4) return "x and B must be 4-D tensors";
  if (!x.is_cuda()) return str("the inputs are on ", x.device(), ", not on a CUDA device");
  if (x.scalar_type() != torch::kBFloat16 && x.scalar_type() != torch::kFloat16)
    return str("x has dtype ", x.scalar_type(), "; the kernels take bf16 or fp16 (fp32 and fp64 run the reference)");
  if (x.size(3) % 64 != 0) return str("head dim P = ", x.size(3), " is not a multiple of 64");
  if (B.size(3) != 64 && B.size(3) != 128) return str("state dim N = ", B.size(3), " is not 64 or 128");
  if (x.size(2) < 1) return "the sequence is empty (T = 0)";
  if (x.size(2) > (int64_t{1} << 30)) return str("T = ", x.size(2), " is too long for the kernels' 32-bit indices");
  if (x.size(0) > kMaxGridYZ || x.size(1) > kMaxGridYZ || B.size(1) > kMaxGridYZ)
    return str("B = ", x.size(0), ", H = ", x.size(1), " or G = ", B.size(1), " exceeds ", kMaxGridYZ);
  return detail::ssd_cuda_device_error(x.device().index());
}

SsdResult ssd_cuda(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B,
                   const torch::Tensor& C, const torch::Tensor& D, const torch::Tensor& initial_state,
                   const torch::Tensor& reset) {
  detail::ssd_check("ssd_cuda", x, dt, A, B, C, D, initial_state, reset);
  const std::string why = ssd_cuda_unsupported(x, B);
  if (!why.empty())
    throw InputError(str("ssd_cuda: ", why, "; use subq::ops::ssd(), which falls back to the chunkwise reference"));
  static const detail::SsdLaunchers cuda = {detail::ssd_cuda_scan, detail::ssd_cuda_chunk_fwd,
                                            detail::ssd_cuda_chunk_bwd, detail::ssd_cuda_sm_count};
  auto [y, final_state] = detail::ssd_kernels_autograd(cuda, x, dt, A, B, C, D, initial_state, reset);
  return {y, final_state};
}

std::pair<torch::Tensor, torch::Tensor> detail::ssd_kernels_autograd(const SsdLaunchers& launchers, const Tensor& x,
                                                                     const Tensor& dt, const Tensor& A, const Tensor& B,
                                                                     const Tensor& C, const Tensor& D,
                                                                     const Tensor& initial_state, const Tensor& reset) {
  // LibTorch's custom autograd Function records a VariableInfo (layout, device, ...) of every tensor
  // argument, which throws "tensor does not have a device" for an undefined tensor: optional arguments
  // travel as 0-element placeholders on x's device instead (the real ones are never empty).
  auto absent_as_empty = [&](const Tensor& t, torch::ScalarType dtype) {
    return t.defined() ? t : torch::empty({0}, x.options().dtype(dtype));
  };
  variable_list out = SsdCudaFunction::apply(&launchers, x, dt, A, B, C, absent_as_empty(D, torch::kFloat32),
                                             absent_as_empty(initial_state, torch::kFloat32),
                                             absent_as_empty(reset, torch::kBool));
  return {out[0], out[1]};
}

SsdResult ssd_step_cuda(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                        const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                        const torch::Tensor& state) {
  const std::string op = "ssd_step_cuda";
  detail::SsdDims d = detail::ssd_step_check(op, x_t, dt_t, A, B_t, C_t, D, state);
  if (!detail::ssd_cuda_built()) throw InputError(str(op, ": this build has no CUDA kernels; use ssd_step()"));
  if (!x_t.is_cuda()) throw InputError(str(op, ": the inputs are on ", x_t.device(), "; use ssd_step() off the GPU"));
  const auto st = x_t.scalar_type();
  if (st != torch::kBFloat16 && st != torch::kFloat16 && st != torch::kFloat32)
    throw InputError(str(op, ": x_t has dtype ", st, "; the kernel takes fp32, bf16 or fp16 (use ssd_step())"));
  if (d.state_dim % 4 != 0) throw InputError(str(op, ": state dim N = ", d.state_dim, " is not a multiple of 4"));
  if (torch::GradMode::is_enabled() && any_requires_grad({&x_t, &dt_t, &A, &B_t, &C_t, &D, &state}))
    throw InputError(str(op, ": the decode kernel has no backward; call it under torch::NoGradGuard or use ssd_step()"));
  c10::DeviceGuard guard(x_t.device());
  const Tensor x = x_t.contiguous(), Bc = B_t.contiguous(), Cc = C_t.contiguous();
  const Tensor dt = dt_t.to(torch::kFloat32).contiguous(), A32 = A.to(torch::kFloat32).contiguous();
  const Tensor D32 = D.defined() ? D.to(torch::kFloat32).contiguous() : Tensor();
  const Tensor s32 = state.defined() ? rows16(state.to(torch::kFloat32).contiguous()) : Tensor();
  Tensor y = torch::empty_like(x);
  Tensor s_out = torch::empty({d.batch, d.heads, d.head_dim, d.state_dim}, x.options().dtype(torch::kFloat32));
  detail::SsdStepArgs a;
  a.batch = static_cast<int>(d.batch);
  a.heads = static_cast<int>(d.heads);
  a.groups = static_cast<int>(d.groups);
  a.head_dim = static_cast<int>(d.head_dim);
  a.state_dim = static_cast<int>(d.state_dim);
  a.x = x.data_ptr();
  a.dt = dt.data_ptr<float>();
  a.A = A32.data_ptr<float>();
  a.B = Bc.data_ptr();
  a.C = Cc.data_ptr();
  a.D = ptr_or_null<float>(D32);
  a.state = ptr_or_null<float>(s32);
  a.y = y.data_ptr();
  a.state_out = s_out.data_ptr<float>();
  detail::ssd_cuda_step(a, kernel_dtype(st), stream_of(x));
  return {y, s_out};
}

SsdResult ssd(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B,
              const torch::Tensor& C, const torch::Tensor& D, const torch::Tensor& initial_state,
              const torch::Tensor& reset, int64_t chunk_size) {
  switch (ops_impl()) {
    case OpsImpl::kReference: return ssd_chunkwise(x, dt, A, B, C, D, initial_state, reset, chunk_size);
    case OpsImpl::kCuda: return ssd_cuda(x, dt, A, B, C, D, initial_state, reset);
    case OpsImpl::kAuto: break;
  }
  if (ssd_cuda_unsupported(x, B).empty()) return ssd_cuda(x, dt, A, B, C, D, initial_state, reset);
  return ssd_chunkwise(x, dt, A, B, C, D, initial_state, reset, chunk_size);
}

SsdResult ssd_decode(const torch::Tensor& x_t, const torch::Tensor& dt_t, const torch::Tensor& A,
                     const torch::Tensor& B_t, const torch::Tensor& C_t, const torch::Tensor& D,
                     const torch::Tensor& state) {
  const OpsImpl impl = ops_impl();
  if (impl == OpsImpl::kReference) return ssd_step(x_t, dt_t, A, B_t, C_t, D, state);
  if (impl == OpsImpl::kCuda) return ssd_step_cuda(x_t, dt_t, A, B_t, C_t, D, state);
  const bool fits = detail::ssd_cuda_built() && x_t.defined() && x_t.is_cuda() && x_t.dim() == 3 && B_t.defined() &&
                    B_t.dim() == 3 && B_t.size(2) % 4 == 0 &&
                    (x_t.scalar_type() == torch::kBFloat16 || x_t.scalar_type() == torch::kFloat16 ||
                     x_t.scalar_type() == torch::kFloat32) &&
                    !(torch::GradMode::is_enabled() && any_requires_grad({&x_t, &dt_t, &A, &B_t, &C_t, &D, &state})) &&
                    detail::ssd_cuda_device_error(x_t.device().index()).empty();
  if (fits) return ssd_step_cuda(x_t, dt_t, A, B_t, C_t, D, state);
  return ssd_step(x_t, dt_t, A, B_t, C_t, D, state);
}

}  // namespace subq::ops
