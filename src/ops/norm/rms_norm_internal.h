// rms_norm_internal.h — private to src/ops/norm/ and its tests: the kernel path of rms_norm_cuda() with
// injectable launchers (CUDA ones in production, emulated ones in a CPU test), no support checks.
#pragma once

#include <torch/torch.h>

#include "ops/norm/rms_norm_cuda.h"

namespace subq::ops::detail {

torch::Tensor rms_norm_with_kernels(const RmsNormLaunchers& launchers, const torch::Tensor& x,
                                    const torch::Tensor& weight, double eps, const torch::Tensor& z, int64_t groups);

}  // namespace subq::ops::detail
