// cuda_check.h — CUDA return-code checking: every CUDA runtime call goes through SUBQ_CUDA_CHECK,
// which throws subq::RuntimeError naming the call, the error and file:line.
#pragma once

#include <cuda_runtime.h>

#include "subq/core/error.h"

#define SUBQ_CUDA_CHECK(expr)                                                                         \
  do {                                                                                                \
    cudaError_t subq_err_ = (expr);                                                                   \
    if (subq_err_ != cudaSuccess)                                                                     \
      throw ::subq::RuntimeError(::subq::str("CUDA error at ", __FILE__, ":", __LINE__, ": ", #expr,  \
                                             " failed: ", cudaGetErrorName(subq_err_), " (",         \
                                             cudaGetErrorString(subq_err_), ")"));                   \
  } while (0)

// Checks the last kernel launch (launch configuration errors) without synchronising.
#define SUBQ_CUDA_CHECK_LAUNCH() SUBQ_CUDA_CHECK(cudaGetLastError())
