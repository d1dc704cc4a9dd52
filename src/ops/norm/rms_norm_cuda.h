// rms_norm_cuda.h — host-side interface of the fused RMS-norm kernels (rms_norm_cuda.cu, device code in
// rms_norm_cuda.cuh): argument struct and launchers without CUDA headers; rms_norm_cuda_stub.cpp replaces
// the launchers in builds without nvcc.
#pragma once

#include <cstdint>
#include <string>

namespace subq::ops::detail {

enum class NormDtype { kF32, kBF16, kF16 };

constexpr int kNormMaxGroupDim = 2048;  // features per group a lane's registers hold (64 per lane)
constexpr int kNormWarps = 4;           // warps per block

struct RmsNormArgs {
  int64_t rows = 0;      // product of x's leading dims
  int dim = 0;           // D
  int groups = 1;        // G; Dg = D / G
  float eps = 0.f;
  NormDtype x_dtype = NormDtype::kF32;   // x, z, dx, dz
  NormDtype out_dtype = NormDtype::kF32;  // out and its gradient g
  const void* x = nullptr;  // [rows, D] contiguous
  const void* z = nullptr;  // [rows, D] contiguous or null (plain norm)
  const float* w = nullptr;  // [D]
  // forward
  void* out = nullptr;  // [rows, D]
  float* r = nullptr;   // [rows, G]
  // backward
  const float* r_in = nullptr;
  const void* g = nullptr;  // [rows, D] in out_dtype
  void* dx = nullptr;
  void* dz = nullptr;
  float* dw_part = nullptr;  // [parts, D], parts = grid x blocks * kNormWarps
  int parts_blocks = 0;      // grid x of the backward (set by the glue)
};

bool rms_norm_cuda_built();
// "" when the kernels have an image for CUDA device `device`, else why not (cached).
std::string rms_norm_cuda_device_error(int device);
void rms_norm_cuda_fwd(const RmsNormArgs& a, void* stream);
void rms_norm_cuda_bwd(const RmsNormArgs& a, void* stream);

struct RmsNormLaunchers {
  void (*fwd)(const RmsNormArgs&, void*);
  void (*bwd)(const RmsNormArgs&, void*);
};

}  // namespace subq::ops::detail
