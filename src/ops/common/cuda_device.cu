// cuda_device.cu — see cuda_device.h. Probing an image: cudaFuncGetAttributes on one kernel of the family
// with the device selected (restored afterwards); its error is not sticky and is cleared, so later launch
// checks do not report it.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

#include "ops/common/cuda_device.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

std::string kernel_device_error(int device, const void* kernel, const char* family, int min_major) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, std::string> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(kernel, device);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess) {
    cudaGetLastError();
    return "cannot query the current CUDA device";
  }
  std::string err;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    err = str("cannot query CUDA device ", device);
    cudaGetLastError();
  } else if (prop.major < min_major) {
    err = str("CUDA device ", device, " (", prop.name, ", sm_", prop.major, prop.minor, ") is too old; the ", family,
              " kernels need sm_", min_major, "0 or newer");
  } else if (cudaSetDevice(device) == cudaSuccess) {
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
    if (e != cudaSuccess) {
      err = str("no ", family, " kernel image for CUDA device ", device, " (", prop.name, ", sm_", prop.major,
                prop.minor, "): ", cudaGetErrorString(e), "; rebuild with -DSUBQ_CUDA_ARCHS including ", prop.major,
                prop.minor, prop.major == 9 ? "a" : "");
      cudaGetLastError();
    }
    cudaSetDevice(prev);
  } else {
    err = str("cannot select CUDA device ", device);
    cudaGetLastError();
  }
  cache[key] = err;
  return err;
}

int multiprocessor_count(int device) {
  static std::mutex mu;
  static std::map<int, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int n = 0;
  SUBQ_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  cache[device] = n;
  return n;
}

}  // namespace subq::ops::detail
