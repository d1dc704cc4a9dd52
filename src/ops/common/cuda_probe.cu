// cuda_probe.cu — see cuda_probe.h. Launches a grid-stride kernel over 1M ints and checks every value,
// so a wrong architecture, a driver mismatch or a broken launch is reported rather than assumed.
#include <vector>

#include "subq/ops/cuda_check.h"
#include "subq/ops/cuda_probe.h"

namespace subq::ops {
namespace {

__global__ void probe_kernel(int* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = 3 * i + 1;
}

}  // namespace

std::string cuda_probe(int device) {
  try {
    constexpr int n = 1 << 20;
    SUBQ_CUDA_CHECK(cudaSetDevice(device));
    int* d = nullptr;
    SUBQ_CUDA_CHECK(cudaMalloc(&d, n * sizeof(int)));
    probe_kernel<<<256, 256>>>(d, n);
    cudaError_t launch = cudaGetLastError();
    std::vector<int> h(n);
    cudaError_t copy = cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(d);
    SUBQ_CUDA_CHECK(launch);
    SUBQ_CUDA_CHECK(copy);
    for (int i = 0; i < n; ++i)
      if (h[i] != 3 * i + 1) return str("kernel wrote ", h[i], " at ", i, ", expected ", 3 * i + 1);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace subq::ops
