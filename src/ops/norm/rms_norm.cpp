// rms_norm.cpp — the reference (gated) RMS norm, the Torch side of its CUDA kernel (custom autograd
// function: forward kernel; backward kernel + the sum of per-warp weight-gradient partials) and the
// dispatching subq::ops::rms_norm() (see subq/ops/rms_norm.h).
//
// Decisions:
//  * The output dtype is what the reference gives, weight * x's dtype (fp32 for the models' fp32 weights):
//    the kernel instantiates out = fp32 or out = x's dtype, which covers every float combination.
//  * x and z are made contiguous (they are: block inputs and projection outputs); the backward keeps x, z
//    and r = 1 / rms per (row, group) only.
//  * An absent z travels to the autograd Function as a 0-element placeholder (LibTorch records the device
//    of every tensor argument); the launchers are a non-tensor argument so that a CPU test can run this
//    glue with emulated kernels.
#include <ATen/DeviceAccelerator.h>
#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include <algorithm>

#include "ops/common/kernel_glue.h"
#include "ops/norm/rms_norm_cuda.h"
#include "ops/norm/rms_norm_internal.h"
#include "subq/core/error.h"
#include "subq/ops/ops_impl.h"
#include "subq/ops/rms_norm.h"

namespace subq::ops {

namespace {

using torch::Tensor;
using detail::glue::stream_of;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& z, int64_t groups) {
  if (!x.defined() || x.dim() < 1) throw InputError(str(op, ": x must be a tensor [..., D]"));
  const int64_t D = x.size(-1);
  if (!weight.defined() || weight.dim() != 1 || weight.size(0) != D)
    throw InputError(str(op, ": weight must have shape [D] = [", D, "], got ", weight.defined() ? weight.sizes() : at::IntArrayRef{}));
  if (groups < 1 || D % groups != 0)
    throw InputError(str(op, ": groups = ", groups, " must be >= 1 and divide D = ", D));
  if (z.defined() && z.sizes() != x.sizes())
    throw InputError(str(op, ": z must have x's shape ", x.sizes(), ", got ", z.sizes()));
  if (!at::isFloatingType(x.scalar_type())) throw InputError(str(op, ": x must be a float tensor, got ", x.scalar_type()));
  if (weight.device() != x.device() || (z.defined() && z.device() != x.device()))
    throw InputError(str(op, ": x, weight and z must be on one device"));
}

detail::NormDtype norm_dtype(torch::ScalarType t) {
  if (t == torch::kBFloat16) return detail::NormDtype::kBF16;
  if (t == torch::kFloat16) return detail::NormDtype::kF16;
  return detail::NormDtype::kF32;
}


class RmsNormCudaFunction : public torch::autograd::Function<RmsNormCudaFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const detail::RmsNormLaunchers* launchers, const Tensor& x_in,
                        const Tensor& weight, const Tensor& z_in, double eps, int64_t groups) {
    c10::DeviceGuard guard(x_in.device());
    for (const auto t : {x_in.scalar_type(), weight.scalar_type()})
      SUBQ_CHECK(t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16,
                 "rms_norm kernels: dtype ", t, " reached the kernel path");
    SUBQ_CHECK(!z_in.numel() || z_in.scalar_type() == x_in.scalar_type(), "rms_norm kernels: z and x dtypes differ");
    const Tensor x = x_in.contiguous();
    const Tensor z = z_in.numel() ? z_in.contiguous() : Tensor();
    const Tensor w = weight.to(torch::kFloat32).contiguous();
    const auto out_dtype = at::result_type(weight, x_in);
    const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    Tensor out = torch::empty(x.sizes(), x.options().dtype(out_dtype));
    Tensor r = torch::empty({rows, groups}, x.options().dtype(torch::kFloat32));
    detail::RmsNormArgs a;
    a.rows = rows;
    a.dim = static_cast<int>(D);
    a.groups = static_cast<int>(groups);
    a.eps = static_cast<float>(eps);
    a.x_dtype = norm_dtype(x.scalar_type());
    a.out_dtype = norm_dtype(out_dtype);
    a.x = x.data_ptr();
    a.z = z.defined() ? z.data_ptr() : nullptr;
    a.w = w.data_ptr<float>();
    a.out = out.data_ptr();
    a.r = r.data_ptr<float>();
    if (rows > 0) launchers->fwd(a, stream_of(x));
    ctx->save_for_backward({x, z.defined() ? z : torch::empty({0}, x.options()), w, r});
    ctx->saved_data["launchers"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(launchers));
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["out_dtype"] = static_cast<int64_t>(out_dtype);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto* l = reinterpret_cast<const detail::RmsNormLaunchers*>(
        static_cast<intptr_t>(ctx->saved_data["launchers"].toInt()));
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &zs = s[1], &w = s[2], &r = s[3];
    const Tensor z = zs.numel() ? zs : Tensor();
    c10::DeviceGuard guard(x.device());
    const auto out_dtype = static_cast<torch::ScalarType>(ctx->saved_data["out_dtype"].toInt());
    const Tensor g = grads[0].to(out_dtype).contiguous();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((rows + detail::kNormWarps - 1) / detail::kNormWarps, 264));
    Tensor dx = torch::empty(x.sizes(), x.options());
    Tensor dz = z.defined() ? torch::empty(x.sizes(), x.options()) : Tensor();
    Tensor dw_part = torch::empty({blocks * detail::kNormWarps, D}, x.options().dtype(torch::kFloat32));
    detail::RmsNormArgs a;
    a.rows = rows;
    a.dim = static_cast<int>(D);
    a.groups = static_cast<int>(groups);
    a.eps = static_cast<float>(ctx->saved_data["eps"].toDouble());
    a.x_dtype = norm_dtype(x.scalar_type());
    a.out_dtype = norm_dtype(out_dtype);
    a.x = x.data_ptr();
    a.z = z.defined() ? z.data_ptr() : nullptr;
    a.w = w.data_ptr<float>();
    a.r_in = r.data_ptr<float>();
    a.g = g.data_ptr();
    a.dx = dx.data_ptr();
    a.dz = z.defined() ? dz.data_ptr() : nullptr;
    a.dw_part = dw_part.data_ptr<float>();
    a.parts_blocks = static_cast<int>(blocks);
    if (rows > 0)
      l->bwd(a, stream_of(x));
    else
      dw_part.zero_();
    const Tensor dw = dw_part.sum(0).to(static_cast<torch::ScalarType>(ctx->saved_data["w_dtype"].toInt()));
    return {Tensor(), dx, dw, dz, Tensor(), Tensor()};
  }
};

}  // namespace

Tensor rms_norm_reference(const Tensor& x, const Tensor& weight, double eps, const Tensor& z, int64_t groups) {
  check_args("rms_norm", x, weight, z, groups);
  const auto ct = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  Tensor h = x.to(ct);
  if (z.defined()) h = h * torch::silu(z.to(ct));
  auto sizes = h.sizes().vec();
  const int64_t D = sizes.back();
  sizes.back() = groups;
  sizes.push_back(D / groups);
  const Tensor hg = h.view(sizes);
  const Tensor n = (hg * torch::rsqrt(hg.pow(2).mean(-1, /*keepdim=*/true) + eps)).view(x.sizes());
  return weight * n.to(x.scalar_type());
}

std::string rms_norm_cuda_unsupported(const Tensor& x, const Tensor& weight, const Tensor& z, int64_t groups) {
  if (!detail::rms_norm_cuda_built()) return "this build has no CUDA kernels (nvcc was not found at configure time)";
  if (!x.defined() || x.dim() < 1 || !weight.defined() || weight.dim() != 1) return "x must be [..., D], weight [D]";
  if (!x.is_cuda()) return str("x is on ", x.device(), ", not on a CUDA device");
  const auto t = x.scalar_type();
  if (t != torch::kFloat32 && t != torch::kBFloat16 && t != torch::kFloat16)
    return str("x has dtype ", t, "; the kernel takes fp32, bf16 or fp16");
  if (z.defined() && z.scalar_type() != t) return str("z has dtype ", z.scalar_type(), ", x ", t, "; they must match");
  const auto wt = weight.scalar_type();
  if (wt != torch::kFloat32 && wt != torch::kBFloat16 && wt != torch::kFloat16)
    return str("weight has dtype ", wt, "; the kernel takes fp32, bf16 or fp16");
  if (groups < 1 || x.size(-1) % groups != 0) return str("groups = ", groups, " does not divide D = ", x.size(-1));
  if (x.size(-1) / groups > detail::kNormMaxGroupDim)
    return str("D / groups = ", x.size(-1) / groups, " exceeds ", detail::kNormMaxGroupDim);
  if (groups > 65535 || x.size(-1) > (int64_t{1} << 30)) return "too many groups or features for the kernel";
  return detail::rms_norm_cuda_device_error(x.device().index());
}

namespace detail {
Tensor rms_norm_with_kernels(const RmsNormLaunchers& launchers, const Tensor& x, const Tensor& weight, double eps,
                             const Tensor& z, int64_t groups) {
  return RmsNormCudaFunction::apply(&launchers, x, weight, z.defined() ? z : torch::empty({0}, x.options()), eps,
                                    groups);
}
}  // namespace detail

Tensor rms_norm_cuda(const Tensor& x, const Tensor& weight, double eps, const Tensor& z, int64_t groups) {
  check_args("rms_norm_cuda", x, weight, z, groups);
  const std::string why = rms_norm_cuda_unsupported(x, weight, z, groups);
  if (!why.empty())
    throw InputError(str("rms_norm_cuda: ", why, "; use subq::ops::rms_norm(), which falls back to the reference"));
  static const detail::RmsNormLaunchers cuda = {detail::rms_norm_cuda_fwd, detail::rms_norm_cuda_bwd};
  return detail::rms_norm_with_kernels(cuda, x, weight, eps, z, groups);
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& z, int64_t groups) {
  const OpsImpl impl = ops_impl();
  if (impl == OpsImpl::kReference) return rms_norm_reference(x, weight, eps, z, groups);
  // auto and cuda alike: the kernel where it can run, else the reference (see short_conv())
  if (rms_norm_cuda_unsupported(x, weight, z, groups).empty()) return rms_norm_cuda(x, weight, eps, z, groups);
  return rms_norm_reference(x, weight, eps, z, groups);
}

}  // namespace subq::ops
