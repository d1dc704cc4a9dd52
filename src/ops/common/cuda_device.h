// cuda_device.h — the per-device check every subq kernel family runs before it is chosen: is there a
// usable CUDA device and an image of the family's kernels for it? No CUDA headers (callers pass the kernel's
// address as const void*); implemented in cuda_device.cu, only in builds with nvcc.
#pragma once

#include <string>

namespace subq::ops::detail {

// "" when `kernel` (the address of one __global__ function of a family) has an image for CUDA device
// `device` and the device has compute capability >= min_major.0; else why not, naming `family` (e.g.
// "SSD") and the fix. Cached per (kernel, device); safe to call from several threads.
std::string kernel_device_error(int device, const void* kernel, const char* family, int min_major);

// Streaming multiprocessors of CUDA device `device` (grid sizing); queried once per device, then cached.
int multiprocessor_count(int device);

}  // namespace subq::ops::detail
