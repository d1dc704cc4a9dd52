// mlstm_cuda.cpp — the LibTorch side of the mLSTM CUDA kernels: argument preparation, the custom autograd
// function (forward: scan + chunk outputs; backward: reverse scan + chunk gradients, or a recompute through
// the reference, see below), the fused decode step, and the dispatching entry points subq::ops::mlstm() /
// mlstm_decode() (see subq/ops/mlstm.h).
//
// Decisions:
//  * Backward: the kernels (pre-pass, reverse state-gradient scan + chunk gradients with m held constant,
//    plus m's own path in LibTorch ops: exact for losses on h, see docs/perf/mlstm.md) whenever the final
//    state has no gradient — training never puts the final state into the loss. When it has one (the scaled final
//    C, n depend on m at O(1), and m's own gradient runs through the max of the stabiliser), the backward
//    recomputes the forward with mlstm_chunkwise under autograd and returns the reference's gradients.
//    set_materialize_grads(false) is what lets the backward tell "no gradient" from a zero one.
//  * The backward's per-token pre-pass (1/den_t and the gradient of qn_t, which needs dh_t . h_t) is a small
//    kernel (mlstm_prep_kernel); the forward saves h, its rounding residual h_lo (only when a backward can
//    follow), qn_t and m_t (fp32) for it, and the per-chunk states (C in the operand dtype, n and m in fp32)
//    for the chunk gradients. Precision choices after the H200 run of 17ac015 (docs/perf/mlstm.md): dh . h
//    from the fp32 h; the per-chunk states C_p (an fp32 initial state included) as rounded + residual, from a
//    scan whose weighted k rows are split likewise; the reverse scan splits its weighted rows too when dC0 is
//    needed (dm0 cancels); the stabiliser's gradient path is added
//    (mlstm_stabiliser_grads), so the gradient is the exact one, not the m-held approximation.
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

#include "ops/common/kernel_glue.h"
#include "ops/common/op_inputs.h"
#include "ops/mlstm/mlstm_cuda.h"
#include "ops/mlstm/mlstm_internal.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq/ops/ops_impl.h"

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


detail::MlstmKernelDtype kernel_dtype(torch::ScalarType t) {
  return detail::glue::kernel_dtype<detail::MlstmKernelDtype>(t, "mlstm_cuda");
}
const auto rows_of = detail::glue::rows_of<detail::MlstmRows>;



Tensor f32c(const Tensor& t) { return t.defined() ? t.to(torch::kFloat32).contiguous() : Tensor(); }

detail::MlstmSizes sizes_of(const Tensor& q, const Tensor& v) {
  detail::MlstmSizes n;
  n.batch = static_cast<int>(q.size(0));
  n.heads = static_cast<int>(q.size(1));
  n.time = static_cast<int>(q.size(2));
  n.dk = static_cast<int>(q.size(3));
  n.dv = static_cast<int>(v.size(3));
  n.chunks = static_cast<int>((q.size(2) + kChunk - 1) / kChunk);
  return n;
}

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

    // the per-chunk states as rounded + residual (c_states + c_states_lo ~ the fp32 state): a token whose
    // q . n and q C cancel (q nearly orthogonal to a state dominated by a few tokens) needs C_p beyond bf16
    const Tensor c_states = torch::empty({B, H, nc, Dk, Dv}, q.options()),
                 c_states_lo = torch::empty({B, H, nc, Dk, Dv}, q.options());
    const Tensor n_states = torch::empty({B, H, nc, Dk}, f32), m_states = torch::empty({B, H, nc}, f32);
    Tensor c_out = torch::empty({B, H, Dk, Dv}, f32), n_out = torch::empty({B, H, Dk}, f32),
           m_out = torch::empty({B, H}, f32);
    Tensor h = torch::empty({B, H, T, Dv}, q.options());
    // h's rounding residual, for the backward's dh . h (only when a backward can follow)
    const bool grad_follows =
        any_requires_grad({&q, &k, &v, &igate, &fgate, &c0_in, &n0_in, &m0_in});
    const Tensor h_lo = grad_follows ? torch::empty({B, H, T, Dv}, q.options()) : torch::empty({0}, q.options());
    const Tensor qn = torch::empty({B, H, T}, f32), m_tok = torch::empty({B, H, T}, f32);
    void* stream = stream_of(q);
    const auto kd = kernel_dtype(q.scalar_type());

    detail::MlstmScanArgs sa;
    sa.n = sizes_of(q, v);
    sa.k = rows_of(kr);
    sa.v = rows_of(vr);
    sa.igate = ig.data_ptr<float>();
    sa.fgate = fg.data_ptr<float>();
    sa.reset = ptr_or_null<int>(rst);
    sa.c_in = ptr_or_null<float>(c0);
    sa.n_in = ptr_or_null<float>(n0);
    sa.m_in = ptr_or_null<float>(m0);
    sa.c_states = c_states.data_ptr();
    sa.c_states_lo = c_states_lo.data_ptr();
    sa.split_weights = true;  // the state itself to ~2^-16 (the weighted k rows as rounded + residual)
    sa.n_states = n_states.data_ptr<float>();
    sa.m_states = m_states.data_ptr<float>();
    sa.c_out = c_out.data_ptr<float>();
    sa.n_out = n_out.data_ptr<float>();
    sa.m_out = m_out.data_ptr<float>();
    l.scan(sa, kd, stream);

    detail::MlstmChunkFwdArgs fa;
    fa.n = sa.n;
    fa.q = rows_of(qr);
    fa.k = sa.k;
    fa.v = sa.v;
    fa.igate = sa.igate;
    fa.fgate = sa.fgate;
    fa.reset = sa.reset;
    fa.c_states = sa.c_states;
    fa.n_states = sa.n_states;
    fa.m_states = sa.m_states;
    fa.c_lo = c_states_lo.data_ptr();
    fa.h = h.data_ptr();
    fa.h_lo = grad_follows ? h_lo.data_ptr() : nullptr;
    fa.qn = qn.data_ptr<float>();
    fa.m = m_tok.data_ptr<float>();
    l.chunk_fwd(fa, kd, stream);

    // Undefined (not zero-filled) gradients for outputs the loss does not use: the kernel backward is taken
    // only when the final state's gradients are absent (see backward).
    ctx->set_materialize_grads(false);
    ctx->saved_data["launchers"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(launchers));
    ctx->save_for_backward(
        {q, k, v, igate, fgate, c0_in, n0_in, m0_in, reset_in, h, c_states, n_states, m_states, qn, m_tok, h_lo,
         c_states_lo});
    return {h, c_out, n_out, m_out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    variable_list out(10);  // launchers, q, k, v, igate, fgate, c0, n0, m0, reset
    const bool state_grads = grads[1].defined() || grads[2].defined() || grads[3].defined();
    if (!grads[0].defined() && !state_grads) return out;
    const auto* launchers = reinterpret_cast<const detail::MlstmLaunchers*>(
        static_cast<intptr_t>(ctx->saved_data["launchers"].toInt()));
    if (state_grads || launchers->chunk_bwd == nullptr) return recompute_backward(s, grads);
    return kernel_backward(*launchers, s, grads[0]);
  }

  // The kernels' backward (m held constant; exact for losses on h, see docs/perf/mlstm.md): a per-token
  // pre-pass (inv_den, dqn) in LibTorch ops, the reverse state-gradient scan, the chunk gradients.
  static variable_list kernel_backward(const detail::MlstmLaunchers& l, const variable_list& s, const Tensor& dh_in) {
    const Tensor &q = s[0], &k = s[1], &v = s[2], &igate = s[3], &fgate = s[4], &c0_in = s[5], &n0_in = s[6],
                 &m0_in = s[7], &reset_in = s[8], &h = s[9], &c_states = s[10], &n_states = s[11],
                 &m_states = s[12], &qn = s[13], &m_tok = s[14], &h_lo = s[15], &c_states_lo = s[16];
    const bool has_init = c0_in.numel() > 0;
    c10::DeviceGuard guard(q.device());
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
    const int64_t nc = (T + kChunk - 1) / kChunk;
    const auto f32 = q.options().dtype(torch::kFloat32);
    const Tensor qr = rows16(q), kr = rows16(k), vr = rows16(v), dh = rows16(dh_in.to(q.scalar_type()));
    const Tensor ig = f32c(igate), fg = f32c(fgate);
    const Tensor rst = reset_in.numel() ? reset_in.to(torch::kInt32).contiguous() : Tensor();
    // pre-pass (kernel): 1 / den_t, dh_t . h_t from the fp32 h (the forward's h + its rounding residual: the
    // denominator path of a gradient cancels against the numerator path where |qn| is the max, and the bf16
    // h alone errs by ~1e-3 of it) and the gradient of qn_t (zero where the floor exp(-m_t) is the max)
    const Tensor inv_den = torch::empty({B, H, T}, f32), dqn = torch::empty({B, H, T}, f32),
                 dh_dot_h = torch::empty({B, H, T}, f32);
    {
      detail::MlstmPrepArgs pa;
      pa.batch = static_cast<int>(B);
      pa.heads = static_cast<int>(H);
      pa.time = static_cast<int>(T);
      pa.dv = static_cast<int>(Dv);
      pa.dh = rows_of(dh);
      pa.h = h.data_ptr();
      pa.h_lo = h_lo.numel() ? h_lo.data_ptr() : nullptr;
      pa.qn = qn.data_ptr<float>();
      pa.m = m_tok.data_ptr<float>();
      pa.inv_den = inv_den.data_ptr<float>();
      pa.dqn = dqn.data_ptr<float>();
      pa.dh_dot_h = dh_dot_h.data_ptr<float>();
      l.prep(pa, kernel_dtype(q.scalar_type()), stream_of(q));
    }

    const Tensor dc_states = torch::empty({B, H, nc, Dk, Dv}, q.options());
    const Tensor dn_states = torch::empty({B, H, nc, Dk}, f32);
    const Tensor dc0 = torch::empty({B, H, Dk, Dv}, f32), dn0 = torch::empty({B, H, Dk}, f32);
    void* stream = stream_of(q);
    const auto kd = kernel_dtype(q.scalar_type());

    detail::MlstmScanArgs ra;
    ra.n = sizes_of(q, v);
    ra.reverse = true;
    ra.k = rows_of(qr);
    ra.v = rows_of(dh);
    ra.inv_den = inv_den.data_ptr<float>();
    ra.dqn = dqn.data_ptr<float>();
    ra.igate = ig.data_ptr<float>();
    ra.fgate = fg.data_ptr<float>();
    ra.reset = ptr_or_null<int>(rst);
    ra.m_states = m_states.data_ptr<float>();
    ra.c_states = dc_states.data_ptr();
    ra.n_states = dn_states.data_ptr<float>();
    ra.c_out = dc0.data_ptr<float>();
    ra.n_out = dn0.data_ptr<float>();
    ra.split_weights = has_init;  // dm0 = <C0, dC0> + <n0, dn0> cancels: dC0 from fp32-precise products
    l.scan(ra, kd, stream);

    Tensor dq = torch::empty({B, H, T, Dk}, q.options()), dk = torch::empty({B, H, T, Dk}, q.options()),
           dv = torch::empty({B, H, T, Dv}, q.options());
    Tensor dig = torch::empty({B, H, T}, f32), dfg = torch::empty({B, H, T}, f32);
    detail::MlstmChunkBwdArgs ba;
    ba.n = ra.n;
    ba.q = rows_of(qr);
    ba.k = rows_of(kr);
    ba.v = rows_of(vr);
    ba.dh = rows_of(dh);
    ba.igate = ra.igate;
    ba.fgate = ra.fgate;
    ba.reset = ra.reset;
    ba.inv_den = ra.inv_den;
    ba.dqn = ra.dqn;
    ba.c_states = c_states.data_ptr();
    ba.n_states = n_states.data_ptr<float>();
    ba.m_states = m_states.data_ptr<float>();
    ba.c_lo = c_states_lo.data_ptr();
    ba.dc_states = dc_states.data_ptr();
    ba.dn_states = dn_states.data_ptr<float>();
    ba.dq = dq.data_ptr();
    ba.dk = dk.data_ptr();
    ba.dv = dv.data_ptr();
    ba.dig = dig.data_ptr<float>();
    ba.dfg = dfg.data_ptr<float>();
    l.chunk_bwd(ba, kd, stream);

    // The stabiliser's own path (the kernels above hold every m_t constant): see mlstm_stabiliser_grads().
    const detail::MlstmStabiliserGrads sp =
        detail::mlstm_stabiliser_grads(dh_dot_h, inv_den, m_tok, ig, fg, has_init ? f32c(m0_in) : Tensor(),
                                       reset_in.numel() ? reset_in.to(torch::kBool) : Tensor());
    variable_list out(10);
    out[1] = dq;
    out[2] = dk;
    out[3] = dv;
    out[4] = (dig + sp.dig).to(igate.scalar_type());
    out[5] = (dfg + sp.dfg).to(fgate.scalar_type());
    if (has_init) {  // m0 scales the initial state: dm0 = <C0, dC0> + <n0, dn0> (+ the stabiliser's path)
      out[6] = dc0.to(c0_in.scalar_type());
      out[7] = dn0.to(n0_in.scalar_type());
      out[8] = ((c0_in.to(torch::kFloat32) * dc0).sum({-1, -2}) + (n0_in.to(torch::kFloat32) * dn0).sum(-1) + sp.dm0)
                   .to(m0_in.scalar_type());
    }
    return out;
  }

  // Exact fallback for losses on the final state (whose scaled C, n depend on m at O(1)): recompute the
  // forward with mlstm_chunkwise under autograd and return its gradients.
  static variable_list recompute_backward(const variable_list& s, const variable_list& grads) {
    const bool has_init = s[5].numel() > 0;
    const Tensor reset = s[8].numel() ? s[8] : Tensor();
    std::vector<Tensor> leaves;
    for (int i = 0; i < (has_init ? 8 : 5); ++i) leaves.push_back(s[static_cast<size_t>(i)].detach().requires_grad_(true));
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
    variable_list out(10);
    if (outs.empty()) return out;
    const variable_list g = torch::autograd::grad(outs, leaves, gouts, /*retain_graph=*/false,
                                                  /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < g.size(); ++i) out[i + 1] = g[i];
    return out;
  }
};

}  // namespace

// The gradient through the stabiliser, which the backward kernels leave out (they hold every m_t constant).
// In unscaled terms h_t = C~_t^T q^ / (max(|n~_t^T q^|, 1) + 1e-6 exp(m_t)): m_t reaches h_t only through
// the 1e-6 term, dh_t/dm_t = -1e-6 h_t / den_t, so dL/dm_t = -1e-6 (dh_t . h_t) / den_t at fixed inputs. m_t
// itself is max(lf_t + m_{t-1}, i~_t) (m_{t-1} = 0 after a reset at t; m0, or 0, before the first token): its
// gradient goes to lf_t and on to m_{t-1} where the history branch is the max, else to i~_t. So the total
// gradient reaching m_t is a segmented suffix sum, D_t = dL/dm_t + [history branch at t+1] D_{t+1}, done in
// fp64 as differences of one suffix sum. It is ~1e-6 of the other terms and matters only where it is the
// whole gradient (df~ of a sequence's first token without a carried state: there the m-constant backward
// gives exactly 0), but it makes the kernels' gradient the exact one. Cost: a few [B, H, T] LibTorch ops.
detail::MlstmStabiliserGrads detail::mlstm_stabiliser_grads(const Tensor& dh_dot_h, const Tensor& inv_den,
                                                            const Tensor& m_tok, const Tensor& ig, const Tensor& fg,
                                                            const Tensor& m0, const Tensor& reset) {
  const int64_t B = m_tok.size(0), H = m_tok.size(1), T = m_tok.size(2);
  const auto f64 = m_tok.options().dtype(torch::kDouble);
  const Tensor gm = (-kMlstmEps) * dh_dot_h.to(torch::kDouble) * inv_den.to(torch::kDouble);
  const Tensor lf = torch::log_sigmoid(fg);
  const Tensor first = m0.defined() ? m0.unsqueeze(-1) : torch::zeros({B, H, 1}, m_tok.options());
  Tensor m_prev = torch::cat({first, m_tok.narrow(2, 0, T - 1)}, 2);
  const Tensor rs = reset.defined() ? reset.unsqueeze(1) : Tensor();  // [B, 1, T]
  if (rs.defined()) m_prev = torch::where(rs, torch::zeros_like(m_prev), m_prev);
  const Tensor hist = (lf + m_prev) >= ig;                          // m_t took the history branch
  const Tensor pass = rs.defined() ? hist & rs.logical_not() : hist;  // ... and so depends on m_{t-1}
  // D_t = sum of gm over t..E_t, E_t = the first position >= t whose successor does not pass its gradient on
  const Tensor suffix = torch::cat({gm.flip(2).cumsum(2).flip(2), torch::zeros({B, H, 1}, f64)}, 2);  // [.., T + 1]
  const Tensor pos = torch::arange(T, m_tok.options().dtype(torch::kLong)).expand({B, H, T});
  const Tensor stops = torch::cat({pass.narrow(2, 1, T - 1).logical_not(), torch::ones({B, H, 1}, hist.options())}, 2);
  const Tensor end = std::get<0>(torch::where(stops, pos, T).flip(2).cummin(2)).flip(2);
  const Tensor d = suffix.narrow(2, 0, T) - suffix.gather(2, end + 1);  // D_t
  MlstmStabiliserGrads out;
  const Tensor zero = torch::zeros_like(d);
  out.dig = torch::where(hist, zero, d).to(fg.scalar_type());
  out.dfg = (torch::where(hist, d, zero) * torch::sigmoid(-fg.to(torch::kDouble))).to(fg.scalar_type());
  if (m0.defined()) out.dm0 = torch::where(pass.select(2, 0), d.select(2, 0), zero.select(2, 0)).to(fg.scalar_type());
  return out;
}

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
                                           detail::mlstm_cuda_chunk_bwd, detail::mlstm_cuda_step,
                                           detail::mlstm_cuda_prep};
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
  // auto: the kernels wherever they apply, in training too (v1 failed 27 gradient checks on the H200 and
  // training kept the reference; v1.1 fixed the kernels' precision, docs/perf/mlstm.md). SUBQ_OPS_IMPL=reference
  // keeps the reference.
  if (mlstm_cuda_unsupported(q, v).empty()) return mlstm_cuda(q, k, v, igate, fgate, initial, reset);
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
