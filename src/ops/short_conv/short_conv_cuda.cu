// short_conv_cuda.cu — launchers of the short causal depthwise convolution kernels (device code and
// design in short_conv_cuda.cuh). Memory-bound SIMT code: the forward reads x once and writes y; the
// backward reads x and dy once (plus K-1 tokens of context per 128-token tile) and writes dx and small
// per-tile partial sums of dw / db. K is a template parameter (2, 3 or 4: the windows live in registers).
#include <cuda_runtime.h>

#include "ops/short_conv/short_conv_cuda.cuh"
#include "ops/short_conv/short_conv_cuda.h"
#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using namespace short_conv_kernels;

dim3 grid_of(const ShortConvArgs& a) {
  return dim3(static_cast<unsigned>((a.channels + kChannelsPerBlock - 1) / kChannelsPerBlock),
              static_cast<unsigned>(short_conv_tiles(a.time)), static_cast<unsigned>(a.batch));
}

template <typename T>
void fwd_t(const ShortConvArgs& a, cudaStream_t s) {
  const dim3 g = grid_of(a);
  switch (a.k) {
    case 2: short_conv_fwd_kernel<T, 2><<<g, kThreads, 0, s>>>(a); break;
    case 3: short_conv_fwd_kernel<T, 3><<<g, kThreads, 0, s>>>(a); break;
    case 4: short_conv_fwd_kernel<T, 4><<<g, kThreads, 0, s>>>(a); break;
    default: throw InternalError(str("short_conv_cuda_fwd: K = ", a.k, " has no kernel (2, 3 or 4)"));
  }
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void bwd_t(const ShortConvArgs& a, cudaStream_t s) {
  const dim3 g = grid_of(a);
  switch (a.k) {
    case 2: short_conv_bwd_kernel<T, 2><<<g, kThreads, 0, s>>>(a); break;
    case 3: short_conv_bwd_kernel<T, 3><<<g, kThreads, 0, s>>>(a); break;
    case 4: short_conv_bwd_kernel<T, 4><<<g, kThreads, 0, s>>>(a); break;
    default: throw InternalError(str("short_conv_cuda_bwd: K = ", a.k, " has no kernel (2, 3 or 4)"));
  }
  SUBQ_CUDA_CHECK_LAUNCH();
}

void check_grid(const ShortConvArgs& a) {
  SUBQ_CHECK(a.batch <= 65535 && short_conv_tiles(a.time) <= 65535, "short_conv_cuda: B = ", a.batch, " or T = ",
             a.time, " exceeds the grid");
}

}  // namespace

bool short_conv_cuda_built() { return true; }

std::string short_conv_cuda_device_error(int device) {
  return kernel_device_error(device, reinterpret_cast<const void*>(&short_conv_fwd_kernel<__nv_bfloat16, 4>),
                             "short-convolution", 8);
}

void short_conv_cuda_fwd(const ShortConvArgs& a, ConvKernelDtype dtype, void* stream) {
  check_grid(a);
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == ConvKernelDtype::kF16)
    fwd_t<__half>(a, s);
  else
    fwd_t<__nv_bfloat16>(a, s);
}

void short_conv_cuda_bwd(const ShortConvArgs& a, ConvKernelDtype dtype, void* stream) {
  check_grid(a);
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == ConvKernelDtype::kF16)
    bwd_t<__half>(a, s);
  else
    bwd_t<__nv_bfloat16>(a, s);
}

}  // namespace subq::ops::detail
