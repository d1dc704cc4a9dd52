// kernel_glue.h — small pieces shared by the Torch sides of subq's CUDA kernels (ssd, mlstm, gated_delta,
// short_conv, rms_norm *.cpp): the current stream's handle, 16-byte row alignment for cp.async, optional
// data pointers. No CUDA headers: the glue compiles in every build.
#pragma once

#include <ATen/DeviceAccelerator.h>
#include <torch/torch.h>

#include <cstdint>

#include "subq/core/error.h"

namespace subq::ops::detail::glue {

// The current stream's cudaStream_t of t's device; null for CPU tensors (the CPU emulator of the tests
// ignores it).
inline void* stream_of(const torch::Tensor& t) {
  return t.is_cuda() ? at::accelerator::getCurrentStream(t.device().index()).native_handle() : nullptr;
}

// Every row (last dimension) contiguous and 16-byte aligned, so cp.async can copy it in 16-byte pieces.
inline bool rows_aligned(const torch::Tensor& t) {
  if (t.dim() < 1 || (t.stride(-1) != 1 && t.size(-1) != 1)) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && (t.stride(d) * static_cast<int64_t>(t.element_size())) % 16 != 0) return false;
  return true;
}
// t itself when rows_aligned(t), else a contiguous copy.
inline torch::Tensor rows16(const torch::Tensor& t) {
  return rows_aligned(t) ? t : t.clone(at::MemoryFormat::Contiguous);
}

// t's data as P*, or null when t is undefined or empty (absent optional arguments travel as 0-element
// placeholders through the autograd Functions).
template <typename P>
P* ptr_or_null(const torch::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<P>() : nullptr;
}

// The kernel operand dtype of a tensor dtype, for an op's dtype enum E (members kBF16, kF16, kF32).
// `op` names the caller in the error for any other dtype (the glue checks dtypes before it gets here).
template <typename E>
E kernel_dtype(torch::ScalarType t, const char* op) {
  switch (t) {
    case torch::kBFloat16: return E::kBF16;
    case torch::kFloat16: return E::kF16;
    case torch::kFloat32: return E::kF32;
    default: throw InternalError(str(op, ": no kernel dtype for ", t));
  }
}

// Pointer and the first three strides of a [B, H, T, ...] tensor, as an op's row-view struct R
// (members ptr, s0, s1, s2).
template <typename R>
R rows_of(const torch::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

}  // namespace subq::ops::detail::glue
