// short_conv_cuda_stub.cpp — the short-convolution kernel launchers for builds without nvcc (replaces
// short_conv_cuda.cu): short_conv_cuda_built() is false, so short_conv() never picks the kernel.
#include "ops/short_conv/short_conv_cuda.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {
[[noreturn]] void no_cuda() {
  throw InputError("the short-convolution CUDA kernel is not in this build (nvcc was not found at configure "
                   "time); use subq::ops::short_conv(), or rebuild with -DSUBQ_CUDA=ON");
}
}  // namespace

bool short_conv_cuda_built() { return false; }
std::string short_conv_cuda_device_error(int) { return "subq was built without CUDA kernels (no nvcc at configure time)"; }
void short_conv_cuda_fwd(const ShortConvArgs&, ConvKernelDtype, void*) { no_cuda(); }
void short_conv_cuda_bwd(const ShortConvArgs&, ConvKernelDtype, void*) { no_cuda(); }

}  // namespace subq::ops::detail
