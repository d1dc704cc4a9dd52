// mlstm_cuda.cpp — the LibTorch side of the mLSTM CUDA kernels: argument preparation, the custom autograd
// function (forward: scan + chunk outputs; backward: see below), the fused decode step, and the dispatching
// entry points subq::ops::mlstm() / mlstm_decode() (see subq/ops/mlstm.h).
//
// Decisions:
//  * Version 1 has forward kernels only. The autograd function's backward recomputes the forward with
//    mlstm_chunkwise under autograd (on the saved inputs) and returns its gradients: mlstm_cuda() is
//    differentiable and exact (the reference's gradients, including the ones through the stabiliser's
//    max), but a training step costs a kernel forward more than training on the reference, so the auto
//    dispatch takes the kernels only when no gradient is needed (evaluation, generation's prefill).
//  * Strided q, k, v are used as they are when every row (the last dimension) is contiguous and 16-byte
//    aligned (the xLSTM layer passes transposed views of its projections); anything else is copied.
//  * Gates and the initial state are converted to fp32 contiguous tensors, reset flags to int32.
//  * Optional tensors (initial state, reset) travel through Function::apply as 0-element placeholders:
//    LibTorch records a VariableInfo of every tensor argument, which throws for undefined tensors.
//  * The launchers are injectable (detail::MlstmLaunchers): the CUDA ones in mlstm_cuda(), the CPU
//    emulator's in tests/unit/test_mlstm_kernels_emulated.cpp, so this glue runs in the CPU test suite.
//  * No CUDA headers here: launches go through mlstm_cuda.h with the current stream's native handle.
#include <ATen/DeviceAccelerator.h>
#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include <cstdint>

#include "ops/common/op_inputs.h"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_internal.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq/ops/ops_impl.h"

namespace subq::ops {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kChunk = 64;
constexpr int64_t kMaxGridYZ = 65535;

bool rows_aligned(const Tensor& t) {
  if (t.dim() < 1 || (t.stride(-1) != 1 && t.size(-1) != 1)) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && (t.stride(d) * static_cast<int64_t>(t.element_size())) % 16 != 0) return false;
  return true;
}
Tensor rows16(const Tensor& t) { return rows_aligned(t) ? t : t.clone(at::MemoryFormat::Contiguous); }

detail::MlstmKernelDtype kernel_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return detail::MlstmKernelDtype::kBF16;
    case torch::kFloat16: return detail::MlstmKernelDtype::kF16;
    case torch::kFloat32: return detail::MlstmKernelDtype::kF32;
    default: throw InternalError(str("mlstm_cuda: no kernel dtype for ", t));
  }
}

detail::MlstmRows rows_of(const Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// The current stream's cudaStream_t; null for CPU tensors (the CPU emulator of the tests ignores it).
void* stream_of(const Tensor& t) {
  return t.is_cuda() ? at::accelerator::getCurrentStream(t.device().index()).native_handle() : nullptr;
}

template <typename P>
const P* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<P>() : nullptr;
}

Tensor f32c(const Tensor& t) { return t.defined() ? t.to(torch::kFloat32).contiguous() : Tensor(); }

bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

class MlstmCudaFunction : public torch::autograd::Function<MlstmCudaFunction> {
 public:
  // c0, n0, m0 and reset arrive as 0-element placeholders when not given.
  static variable_list forward(AutogradContext* ctx, const detail::MlstmLaunchers* launchers, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& igate, const Tensor& fgate,
                               const Tensor& c0_in, const Tensor& n0_in, const Tensor& m0_in, const Tensor& reset_in) {
    const detail::MlstmLaunchers& l = *launchers;
    const bool has_init = c0_in.numel() > 0;
    const Tensor reset = reset_in.numel() ? reset_in : Tensor();
    c10::DeviceGuard guard(q.device());
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
    const int64_t nc = (T + kChunk - 1) / kChunk;
    const auto f32 = q.options().dtype(torch::kFloat32);
    const Tensor qr = rows16(q), kr = rows16(k), vr = rows16(v);
    const Tensor ig = f32c(igate), fg = f32c(fgate);
    const Tensor rst = reset.defined() ? reset.to(torch::kInt32).contiguous() : Tensor();
    const Tensor c0 = has_init ? f32c(c0_in) : Tensor(), n0 = has_init ? f32c(n0_in) : Tensor(),
                 m0 = has_init ? f32c(m0_in) : Tensor();

    detail::MlstmSizes n;
    n.batch = static_cast<int>(B);
    n.heads = static_cast<int>(H);
    n.time = static_cast<int>(T);
    n.dk = static_cast<int>(Dk);
    n.dv = static_cast<int>(Dv);
    n.chunks = static_cast<int>(nc);
    const Tensor c_states = torch::empty({B, H, nc, Dk, Dv}, q.options());
    const Tensor n_states = torch::empty({B, H, nc, Dk}, f32), m_states = torch::empty({B, H, nc}, f32);
    Tensor c_out = torch::empty({B, H, Dk, Dv}, f32), n_out = torch::empty({B, H, Dk}, f32),
           m_out = torch::empty({B, H}, f32);
    Tensor h = torch::empty({B, H, T, Dv}, q.options());
    void* stream = stream_of(q);
    const auto kd = kernel_dtype(q.scalar_type());

    detail::MlstmScanArgs sa;
    sa.n = n;
    sa.k = rows_of(kr);
    sa.v = rows_of(vr);
    sa.igate = ig.data_ptr<float>();
    sa.fgate = fg.data_ptr<float>();
    sa.reset = ptr_or_null<int>(rst);
    sa.c_in = ptr_or_null<float>(c0);
    sa.n_in = ptr_or_null<float>(n0);
    sa.m_in = ptr_or_null<float>(m0);
    sa.c_states = c_states.data_ptr();
    sa.n_states = n_states.data_ptr<float>();
    sa.m_states = m_states.data_ptr<float>();
    sa.c_out = c_out.data_ptr<float>();
    sa.n_out = n_out.data_ptr<float>();
    sa.m_out = m_out.data_ptr<float>();
    l.scan(sa, kd, stream);

    detail::MlstmChunkFwdArgs fa;
    fa.n = n;
    fa.q = rows_of(qr);
    fa.k = sa.k;
    fa.v = sa.v;
    fa.igate = sa.igate;
    fa.fgate = sa.fgate;
    fa.reset = sa.reset;
    fa.c_states = sa.c_states;
    fa.n_states = sa.n_states;
    fa.m_states = sa.m_states;
    fa.h = h.data_ptr();
    l.chunk_fwd(fa, kd, stream);

    ctx->save_for_backward({q, k, v, igate, fgate, c0_in, n0_in, m0_in, reset_in});
    return {h, c_out, n_out, m_out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const bool has_init = s[5].numel() > 0;
    const Tensor reset = s[8].numel() ? s[8] : Tensor();
    std::vector<Tensor> leaves;
    for (int i = 0; i < (has_init ? 8 : 5); ++i) leaves.push_back(s[i].detach().requires_grad_(true));
    std::vector<Tensor> outs, gouts;
    {
      torch::AutoGradMode enable(true);
      const MlstmState init = has_init ? MlstmState{leaves[5], leaves[6], leaves[7]} : MlstmState{};
      const MlstmResult r = mlstm_chunkwise(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], init, reset);
      const Tensor ro[4] = {r.h, r.state.c, r.state.n, r.state.m};
      for (int i = 0; i < 4; ++i)
        if (grads[static_cast<size_t>(i)].defined() && ro[i].requires_grad()) {
          outs.push_back(ro[i]);
          gouts.push_back(grads[static_cast<size_t>(i)].to(ro[i].scalar_type()));
        }
    }
    variable_list out(10);  // launchers, q, k, v, igate, fgate, c0, n0, m0, reset
    if (outs.empty()) return out;
    const variable_list g = torch::autograd::grad(outs, leaves, gouts, /*retain_graph=*/false,
                                                  /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < g.size(); ++i) out[i + 1] = g[i];
    return out;
  }
};

}  // namespace

std::string mlstm_cuda_unsupported(const torch::Tensor& q, const torch::Tensor& v) {
  if (!detail::mlstm_cuda_built()) return "this build has no CUDA kernels (nvcc was not found at configure time)";
  if (!q.defined() || !v.defined() || q.dim() != 4 || v.dim() != 4) return "q and v must be 4-D tensors";
  if (!q.is_cuda()) return str("the inputs are on ", q.device(), ", not on a CUDA device");
  if (q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kFloat16)
    return str("q has dtype ", q.scalar_type(), "; the kernels take bf16 or fp16 (fp32 and fp64 run the reference)");
  auto dim_ok = [](int64_t d) { return d == 64 || d == 128 || d == 256; };
  if (!dim_ok(q.size(3)) || !dim_ok(v.size(3)))
    return str("head dims Dk = ", q.size(3), ", Dv = ", v.size(3), " are not both in {64, 128, 256}");
  if (q.size(2) < 1) return "the sequence is empty (T = 0)";
  if (q.size(2) > (int64_t{1} << 30)) return str("T = ", q.size(2), " is too long for the kernels' 32-bit indices");
  if (q.size(0) > kMaxGridYZ || q.size(1) > kMaxGridYZ)
    return str("B = ", q.size(0), " or H = ", q.size(1), " exceeds ", kMaxGridYZ);
  return detail::mlstm_cuda_device_error(q.device().index());
}

namespace {
const detail::MlstmLaunchers& cuda_launchers() {
  static const detail::MlstmLaunchers l = {detail::mlstm_cuda_scan, detail::mlstm_cuda_chunk_fwd,
                                           detail::mlstm_cuda_step};
  return l;
}
}  // namespace

MlstmResult mlstm_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& initial,
                       const torch::Tensor& reset) {
  mlstm_detail::check_sequence("mlstm_cuda", q, k, v, igate, fgate, initial, reset);
  const std::string why = mlstm_cuda_unsupported(q, v);
  if (!why.empty())
    throw InputError(str("mlstm_cuda: ", why, "; use subq::ops::mlstm(), which falls back to the chunkwise reference"));
  return detail::mlstm_kernels_autograd(cuda_launchers(), q, k, v, igate, fgate, initial, reset);
}

MlstmResult detail::mlstm_kernels_autograd(const MlstmLaunchers& launchers, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const Tensor& igate, const Tensor& fgate,
                                           const MlstmState& initial, const Tensor& reset) {
  auto absent_as_empty = [&](const Tensor& t, torch::ScalarType dtype) {
    return t.defined() ? t : torch::empty({0}, q.options().dtype(dtype));
  };
  variable_list out = MlstmCudaFunction::apply(
      &launchers, q, k, v, igate, fgate, absent_as_empty(initial.c, torch::kFloat32),
      absent_as_empty(initial.n, torch::kFloat32), absent_as_empty(initial.m, torch::kFloat32),
      absent_as_empty(reset, torch::kBool));
  return {out[0], {out[1], out[2], out[3]}};
}

MlstmResult mlstm_step_cuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& state,
                            const torch::Tensor& reset) {
  const char* op = "mlstm_step_cuda";
  if (!q.defined() || q.dim() != 3 || !v.defined() || v.dim() != 3)
    throw InputError(str(op, ": q and v must be [B, H, Dk] and [B, H, Dv]"));
  if (!detail::mlstm_cuda_built()) throw InputError(str(op, ": this build has no CUDA kernels; use mlstm_step()"));
  if (!q.is_cuda()) throw InputError(str(op, ": the inputs are on ", q.device(), "; use mlstm_step() off the GPU"));
  const auto st = q.scalar_type();
  if (st != torch::kBFloat16 && st != torch::kFloat16 && st != torch::kFloat32)
    throw InputError(str(op, ": q has dtype ", st, "; the kernel takes fp32, bf16 or fp16 (use mlstm_step())"));
  const std::string dev = detail::mlstm_cuda_device_error(q.device().index());
  if (!dev.empty()) throw InputError(str(op, ": ", dev));
  return detail::mlstm_step_kernels(cuda_launchers(), q, k, v, igate, fgate, state, reset);
}

MlstmResult detail::mlstm_step_kernels(const MlstmLaunchers& launchers, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor& igate, const Tensor& fgate,
                                       const MlstmState& state, const Tensor& reset) {
  const char* op = "mlstm_step_cuda";
  detail::expect_ndim(op, "q", q, 3, "[B, H, Dk]");
  detail::expect_ndim(op, "v", v, 3, "[B, H, Dv]");
  detail::expect_shape(op, "k", k, {q.size(0), q.size(1), q.size(2)}, "[B, H, Dk] (like q)");
  detail::expect_shape(op, "igate", igate, {q.size(0), q.size(1)}, "[B, H]");
  detail::expect_shape(op, "fgate", fgate, {q.size(0), q.size(1)}, "[B, H]");
  detail::expect_optional_mask(op, "reset", reset, {q.size(0)}, "[B]");
  const auto d = mlstm_detail::check_sequence(op, q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), igate.unsqueeze(2),
                                              fgate.unsqueeze(2), state,
                                              reset.defined() ? reset.unsqueeze(1) : Tensor(), "state");
  if (torch::GradMode::is_enabled() &&
      any_requires_grad({&q, &k, &v, &igate, &fgate, &state.c, &state.n, &state.m}))
    throw InputError(str(op, ": the decode kernel has no backward; call it under torch::NoGradGuard or use "
                             "mlstm_step()"));
  c10::DeviceGuard guard(q.device());
  const auto f32 = q.options().dtype(torch::kFloat32);
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const Tensor ig = f32c(igate), fg = f32c(fgate);
  const Tensor rst = reset.defined() ? reset.to(torch::kInt32).contiguous() : Tensor();
  const Tensor c0 = f32c(state.c), n0 = f32c(state.n), m0 = f32c(state.m);
  Tensor h = torch::empty({d.b, d.h, d.dv}, q.options());
  Tensor c_out = torch::empty({d.b, d.h, d.dk, d.dv}, f32), n_out = torch::empty({d.b, d.h, d.dk}, f32),
         m_out = torch::empty({d.b, d.h}, f32);
  MlstmStepArgs a;
  a.batch = static_cast<int>(d.b);
  a.heads = static_cast<int>(d.h);
  a.dk = static_cast<int>(d.dk);
  a.dv = static_cast<int>(d.dv);
  a.q = qc.data_ptr();
  a.k = kc.data_ptr();
  a.v = vc.data_ptr();
  a.igate = ig.data_ptr<float>();
  a.fgate = fg.data_ptr<float>();
  a.reset = ptr_or_null<int>(rst);
  a.c_in = ptr_or_null<float>(c0);
  a.n_in = ptr_or_null<float>(n0);
  a.m_in = ptr_or_null<float>(m0);
  a.h = h.data_ptr();
  a.c_out = c_out.data_ptr<float>();
  a.n_out = n_out.data_ptr<float>();
  a.m_out = m_out.data_ptr<float>();
  launchers.step(a, kernel_dtype(q.scalar_type()), stream_of(q));
  return {h, {c_out, n_out, m_out}};
}

MlstmResult mlstm(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& igate,
                  const torch::Tensor& fgate, const MlstmState& initial, const torch::Tensor& reset,
                  int64_t chunk_size) {
  switch (ops_impl()) {
    case OpsImpl::kReference: return mlstm_chunkwise(q, k, v, igate, fgate, initial, reset, chunk_size);
    case OpsImpl::kCuda: return mlstm_cuda(q, k, v, igate, fgate, initial, reset);
    case OpsImpl::kAuto: break;
  }
  const bool needs_grad = torch::GradMode::is_enabled() &&
                          any_requires_grad({&q, &k, &v, &igate, &fgate, &initial.c, &initial.n, &initial.m});
  if (!needs_grad && mlstm_cuda_unsupported(q, v).empty()) return mlstm_cuda(q, k, v, igate, fgate, initial, reset);
  return mlstm_chunkwise(q, k, v, igate, fgate, initial, reset, chunk_size);
}

MlstmResult mlstm_decode(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                         const torch::Tensor& igate, const torch::Tensor& fgate, const MlstmState& state,
                         const torch::Tensor& reset) {
  const OpsImpl impl = ops_impl();
  if (impl == OpsImpl::kReference) return mlstm_step(q, k, v, igate, fgate, state, reset);
  if (impl == OpsImpl::kCuda) return mlstm_step_cuda(q, k, v, igate, fgate, state, reset);
  const bool fits = detail::mlstm_cuda_built() && q.defined() && q.is_cuda() && q.dim() == 3 &&
                    (q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat16 ||
                     q.scalar_type() == torch::kFloat32) &&
                    !(torch::GradMode::is_enabled() &&
                      any_requires_grad({&q, &k, &v, &igate, &fgate, &state.c, &state.n, &state.m})) &&
                    detail::mlstm_cuda_device_error(q.device().index()).empty();
  if (fits) return mlstm_step_cuda(q, k, v, igate, fgate, state, reset);
  return mlstm_step(q, k, v, igate, fgate, state, reset);
}

}  // namespace subq::ops
