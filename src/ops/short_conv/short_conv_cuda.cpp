// short_conv_cuda.cpp — the LibTorch side of the short-convolution CUDA kernels: support checks, the
// custom autograd function (forward kernel; backward kernel + sums of the per-tile dw / db partials), the
// returned cache, and the dispatching entry subq::ops::short_conv() (see subq/ops/short_conv.h).
//
// Decisions:
//  * The kernel path covers training and prefill without a cache (the models' sequence calls); a call
//    with a cache (continuing a sequence) runs the reference, whose cost there is small.
//  * x and dy are used in place when the channel dimension is contiguous, the other strides even and the
//    base 4-byte aligned (the Mamba-2 mixer's xBC narrow of its in_proj output qualifies); otherwise they
//    are copied first.
//  * Absent bias / reset travel to the autograd Function as 0-element placeholders (LibTorch records the
//    device of every tensor argument and throws for an undefined one); the launchers are a non-tensor
//    argument, so a CPU test can run this glue with emulated kernels.
//  * The cache (last K-1 inputs, zeroed before the last document's start) is computed here with small
//    torch ops on the last K-1 tokens, the same rule as the reference.
#include <ATen/DeviceAccelerator.h>
#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include <cstdint>

#include "ops/common/kernel_glue.h"
#include "../common/op_inputs.h"
#include "ops/short_conv/short_conv_cuda.h"
#include "ops/short_conv/short_conv_internal.h"
#include "subq/core/error.h"
#include "subq/ops/ops_impl.h"
#include "subq/ops/short_conv.h"

namespace subq::ops {

namespace {

using torch::Tensor;
using detail::glue::stream_of;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool pair_aligned(const Tensor& t) {
  return t.dim() == 3 && t.stride(2) == 1 && t.stride(0) % 2 == 0 && t.stride(1) % 2 == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0;
}
Tensor pairs(const Tensor& t) { return pair_aligned(t) ? t : t.contiguous(); }


detail::ConvKernelDtype kernel_dtype(torch::ScalarType t) {
  return t == torch::kFloat16 ? detail::ConvKernelDtype::kF16 : detail::ConvKernelDtype::kBF16;
}

class ShortConvCudaFunction : public torch::autograd::Function<ShortConvCudaFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const detail::ShortConvLaunchers* launchers, const Tensor& x_in,
                        const Tensor& weight, const Tensor& bias_in, const Tensor& reset_in, bool silu) {
    c10::DeviceGuard guard(x_in.device());
    SUBQ_CHECK(x_in.scalar_type() == torch::kBFloat16 || x_in.scalar_type() == torch::kFloat16,
               "short_conv kernels: dtype ", x_in.scalar_type(), " reached the kernel path");
    SUBQ_CHECK(x_in.size(2) % 2 == 0 && weight.size(1) >= 2 && weight.size(1) <= 4,
               "short_conv kernels: odd C or K outside 2..4 reached the kernel path");
    const Tensor x = pairs(x_in);
    const Tensor w = weight.to(torch::kFloat32).contiguous();
    const Tensor bias = bias_in.numel() ? bias_in.to(torch::kFloat32).contiguous() : Tensor();
    const Tensor reset = reset_in.numel() ? reset_in.to(torch::kUInt8).contiguous() : Tensor();
    Tensor y = torch::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    detail::ShortConvArgs a;
    a.batch = static_cast<int>(x.size(0));
    a.time = static_cast<int>(x.size(1));
    a.channels = static_cast<int>(x.size(2));
    a.k = static_cast<int>(w.size(1));
    a.silu = silu;
    a.x = x.data_ptr();
    a.x_sb = x.stride(0);
    a.x_st = x.stride(1);
    a.w = w.data_ptr<float>();
    a.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
    a.reset = reset.defined() ? reset.data_ptr<uint8_t>() : nullptr;
    a.y = y.data_ptr();
    if (a.time > 0) launchers->fwd(a, kernel_dtype(x.scalar_type()), stream_of(x));
    ctx->save_for_backward({x, w, bias.defined() ? bias : torch::empty({0}, w.options()),
                            reset.defined() ? reset : torch::empty({0}, x.options().dtype(torch::kUInt8))});
    ctx->saved_data["launchers"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(launchers));
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(bias_in.scalar_type());
    ctx->saved_data["has_bias"] = bias.defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto* l = reinterpret_cast<const detail::ShortConvLaunchers*>(
        static_cast<intptr_t>(ctx->saved_data["launchers"].toInt()));
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &w = s[1], &bias = s[2], &reset = s[3];
    c10::DeviceGuard guard(x.device());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const Tensor dy = pairs(grads[0].to(x.scalar_type()));
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
    const int64_t tiles = detail::short_conv_tiles(static_cast<int>(T));
    const auto f32 = x.options().dtype(torch::kFloat32);
    Tensor dx = torch::empty({B, T, C}, x.options());
    Tensor dw_part = torch::empty({B * tiles, C, K}, f32);
    Tensor db_part = has_bias ? torch::empty({B * tiles, C}, f32) : Tensor();
    detail::ShortConvArgs a;
    a.batch = static_cast<int>(B);
    a.time = static_cast<int>(T);
    a.channels = static_cast<int>(C);
    a.k = static_cast<int>(K);
    a.silu = ctx->saved_data["silu"].toBool();
    a.x = x.data_ptr();
    a.x_sb = x.stride(0);
    a.x_st = x.stride(1);
    a.w = w.data_ptr<float>();
    a.bias = has_bias ? bias.data_ptr<float>() : nullptr;
    a.reset = reset.numel() ? reset.data_ptr<uint8_t>() : nullptr;
    a.dy = dy.data_ptr();
    a.dy_sb = dy.stride(0);
    a.dy_st = dy.stride(1);
    a.dx = dx.data_ptr();
    a.dw_part = dw_part.data_ptr<float>();
    a.db_part = has_bias ? db_part.data_ptr<float>() : nullptr;
    if (T > 0) {
      l->bwd(a, kernel_dtype(x.scalar_type()), stream_of(x));
    } else {
      dw_part.zero_();
      if (has_bias) db_part.zero_();
    }
    auto dtype_of = [&](const char* key) { return static_cast<torch::ScalarType>(ctx->saved_data[key].toInt()); };
    const Tensor dw = dw_part.sum(0).to(dtype_of("w_dtype"));
    const Tensor db = has_bias ? db_part.sum(0).to(dtype_of("b_dtype")) : Tensor();
    return {Tensor(), dx, dw, db, Tensor(), Tensor()};
  }
};

// The returned cache of the kernel path: the last K-1 inputs (zeros before t = 0) in fp32, zeroed where
// they precede the start of the row's last document (the reference's rule).
Tensor kernel_path_cache(const Tensor& x, const Tensor& reset, int64_t K) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const auto ct = torch::kFloat32;
  if (K == 1) return torch::zeros({B, 0, C}, x.options().dtype(ct));
  Tensor tail = T >= K - 1 ? x.narrow(1, T - (K - 1), K - 1).to(ct)
                           : torch::cat({torch::zeros({B, K - 1 - T, C}, x.options().dtype(ct)), x.to(ct)}, 1);
  if (!reset.defined()) return tail;
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(x.device());
  const Tensor start = torch::where(reset, torch::arange(T, long_opts), -K).amax(1);  // [B]
  const Tensor keep = torch::arange(T - (K - 1), T, long_opts).unsqueeze(0).ge(start.unsqueeze(1));
  return torch::where(keep.unsqueeze(-1), tail, 0.0);
}

}  // namespace

namespace detail {

Tensor short_conv_kernels_autograd(const ShortConvLaunchers& launchers, const Tensor& x, const Tensor& weight,
                                   const Tensor& bias, bool silu, const Tensor& reset) {
  auto absent = [&](const Tensor& t, torch::ScalarType dt) {
    return t.defined() ? t : torch::empty({0}, x.options().dtype(dt));
  };
  return ShortConvCudaFunction::apply(&launchers, x, weight, absent(bias, torch::kFloat32),
                                      absent(reset, torch::kBool), silu);
}

ShortConvResult short_conv_with_kernels(const ShortConvLaunchers& launchers, const Tensor& x, const Tensor& weight,
                                        const Tensor& bias, bool silu, const Tensor& reset) {
  Tensor y = short_conv_kernels_autograd(launchers, x, weight, bias, silu, reset);
  return {y, kernel_path_cache(x, reset, weight.size(1))};
}

}  // namespace detail

std::string short_conv_cuda_unsupported(const Tensor& x, const Tensor& weight, const Tensor& cache) {
  if (!detail::short_conv_cuda_built()) return "this build has no CUDA kernels (nvcc was not found at configure time)";
  if (!x.defined() || x.dim() != 3 || !weight.defined() || weight.dim() != 2) return "x must be [B, T, C], weight [C, K]";
  if (!x.is_cuda()) return str("x is on ", x.device(), ", not on a CUDA device");
  if (x.scalar_type() != torch::kBFloat16 && x.scalar_type() != torch::kFloat16)
    return str("x has dtype ", x.scalar_type(), "; the kernel takes bf16 or fp16");
  if (x.size(2) % 2 != 0) return str("C = ", x.size(2), " is odd (the kernel handles channel pairs)");
  if (weight.size(1) < 2 || weight.size(1) > 4) return str("K = ", weight.size(1), " is not 2, 3 or 4");
  if (cache.defined()) return "a cache is given (continuing a sequence runs the reference)";
  if (x.size(0) > 65535 || detail::short_conv_tiles(static_cast<int>(std::min<int64_t>(x.size(1), INT32_MAX))) > 65535 ||
      x.size(1) > (int64_t{1} << 30))
    return str("B = ", x.size(0), " or T = ", x.size(1), " is too large for the kernel's grid");
  return detail::short_conv_cuda_device_error(x.device().index());
}

ShortConvResult short_conv_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                                const Tensor& reset) {
  detail::expect_ndim("short_conv_cuda", "x", x, 3, "[B, T, C]");
  short_conv_detail::check("short_conv_cuda", x, weight, bias, Tensor(), reset, {x.size(0), x.size(1)}, "[B, T]");
  const std::string why = short_conv_cuda_unsupported(x, weight, Tensor());
  if (!why.empty())
    throw InputError(str("short_conv_cuda: ", why, "; use subq::ops::short_conv(), which falls back to the reference"));
  static const detail::ShortConvLaunchers cuda = {detail::short_conv_cuda_fwd, detail::short_conv_cuda_bwd};
  return detail::short_conv_with_kernels(cuda, x, weight, bias, silu, reset);
}

ShortConvResult short_conv(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& cache,
                           const Tensor& reset) {
  const OpsImpl impl = ops_impl();
  if (impl == OpsImpl::kReference) return short_conv_parallel(x, weight, bias, silu, cache, reset);
  // auto and cuda alike: the kernel where it can run, else the reference (SUBQ_OPS_IMPL=cuda forces the
  // recurrence kernels; a model run that way still has fp32 or cached convolutions)
  if (short_conv_cuda_unsupported(x, weight, cache).empty()) return short_conv_cuda(x, weight, bias, silu, reset);
  return short_conv_parallel(x, weight, bias, silu, cache, reset);
}

}  // namespace subq::ops
