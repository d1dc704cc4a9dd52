// short_conv_cuda.h — host-side interface of the short-convolution CUDA kernels (short_conv_cuda.cu,
// device code in short_conv_cuda.cuh): argument structs and launchers, free of CUDA headers so the Torch
// glue (short_conv_cuda.cpp) compiles in every build; short_conv_cuda_stub.cpp replaces the launchers
// where nvcc is missing.
//
// Layout: x, y, dy, dx are [B, T, C] with the channel dimension contiguous (element strides of batch and
// time given, even, and the base 4-byte aligned: a thread handles two adjacent channels); weight [C, K]
// and bias [C] fp32 contiguous; reset [B, T] uint8 contiguous or null.
#pragma once

#include <cstdint>
#include <string>

namespace subq::ops::detail {

enum class ConvKernelDtype { kBF16, kF16 };

constexpr int kShortConvTileT = 128;  // tokens per block (the backward recomputes K-1 more)

struct ShortConvArgs {
  int batch = 0, time = 0, channels = 0, k = 0;
  bool silu = false;
  const void* x = nullptr;
  int64_t x_sb = 0, x_st = 0;
  const float* w = nullptr;       // [C, K]
  const float* bias = nullptr;    // [C] or null
  const uint8_t* reset = nullptr;  // [B, T] or null
  // forward
  void* y = nullptr;  // [B, T, C] contiguous
  // backward
  const void* dy = nullptr;
  int64_t dy_sb = 0, dy_st = 0;
  void* dx = nullptr;             // [B, T, C] contiguous
  float* dw_part = nullptr;       // [B * tiles, C, K]: one partial sum per (batch row, token tile)
  float* db_part = nullptr;       // [B * tiles, C] (written only when bias is given)
};

inline int short_conv_tiles(int time) { return (time + kShortConvTileT - 1) / kShortConvTileT; }

bool short_conv_cuda_built();
// "" when the kernels have an image for CUDA device `device`, else why not (cached).
std::string short_conv_cuda_device_error(int device);
void short_conv_cuda_fwd(const ShortConvArgs& a, ConvKernelDtype dtype, void* stream);
void short_conv_cuda_bwd(const ShortConvArgs& a, ConvKernelDtype dtype, void* stream);

// The launchers the autograd function of short_conv_cuda.cpp calls (CUDA ones in production, emulated
// ones in tests/unit/test_short_conv_kernels_emulated.cpp).
struct ShortConvLaunchers {
  void (*fwd)(const ShortConvArgs&, ConvKernelDtype, void*);
  void (*bwd)(const ShortConvArgs&, ConvKernelDtype, void*);
};

}  // namespace subq::ops::detail
