// ssd_cuda.h — the host interface of the SSD CUDA kernels (private to src/): plain structs of raw
// pointers, element strides and sizes, and one launcher per kernel. No Torch and no CUDA headers here, so
// the Torch-side glue (ssd_cuda.cpp) compiles with the host compiler, and builds without nvcc link the
// stub (ssd_cuda_stub.cpp) whose launchers throw.
//
// The kernels (src/ops/ssd/ssd_cuda_*.cu; design and numbers in docs/perf/ssd.md):
//   scan       sequential over chunks, parallel over (batch, head, 64 x 64 state tile): carries the fp32
//              state S (forward: S <- gamma S + (w o X)^T B) or the state gradient dS (reverse:
//              dS <- gamma dS + (e o dY)^T C), storing the value entering each chunk (forward) / leaving
//              each chunk (reverse) in the operand dtype, and the last value in fp32.
//   chunk_fwd  parallel over (batch, group, chunk), looping over the group's heads: CB^T once per block,
//              y = (C B^T o L) (dt x) + diag(e) C S^T + D x per head.
//   chunk_bwd  same grid: dx, ddt and per-block partials of dA, dD, and dB, dC accumulated over the heads
//              of the block (partials over head splits are summed by the caller).
//   step       the fused decode step (one token), SIMT, any float dtype.
// Chunk = 64 tokens (ck::kChunk). Head dim P: a multiple of 64. State dim N: 64 or 128.
#pragma once

#include <cstdint>
#include <string>

namespace subq::ops::detail {

enum class SsdKernelDtype { kBF16, kF16, kF32 };

// A [B, X, T, W] operand: base pointer and element strides of dims 0..2 (dim 3 is contiguous).
struct SsdRows {
  const void* ptr = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
};

struct SsdSizes {
  int batch = 0, heads = 0, groups = 0, time = 0, head_dim = 0, state_dim = 0, chunks = 0;
};

struct SsdScanArgs {
  SsdSizes n;
  bool reverse = false;        // false: forward state scan; true: state-gradient scan (chunks last to first)
  SsdRows u;                   // [B, H, T, P]: x (forward) or dy (reverse)
  SsdRows v;                   // [B, G, T, N]: B (forward) or C (reverse)
  const float* dt = nullptr;   // [B, H, T] fp32, strides below
  int64_t dt_s0 = 0, dt_s1 = 0, dt_s2 = 0;
  const float* A = nullptr;    // [H] fp32 contiguous
  const int* reset = nullptr;  // [B, T] int32 contiguous (0/1) or nullptr
  const float* s_in = nullptr; // [B, H, P, N] fp32 contiguous: initial state / final-state gradient; nullptr = 0
  void* states = nullptr;      // out [B, H, chunks, P, N] operand dtype: value entering (fwd) / leaving (rev) chunk c
  float* s_out = nullptr;      // out [B, H, P, N] fp32: final state / initial-state gradient
};

struct SsdChunkFwdArgs {
  SsdSizes n;
  int head_splits = 1;         // blocks per group along y; each takes H / G / head_splits heads
  SsdRows x;                   // [B, H, T, P]
  const float* dt = nullptr;
  int64_t dt_s0 = 0, dt_s1 = 0, dt_s2 = 0;
  const float* A = nullptr;    // [H]
  SsdRows B, C;                // [B, G, T, N]
  const float* D = nullptr;    // [H] or nullptr
  const int* reset = nullptr;  // [B, T] or nullptr
  const void* states = nullptr;  // [B, H, chunks, P, N] from the forward scan
  void* y = nullptr;           // out [B, H, T, P] contiguous, operand dtype
};

struct SsdChunkBwdArgs {
  SsdSizes n;
  int head_splits = 1;
  SsdRows x, dy;               // [B, H, T, P]
  const float* dt = nullptr;
  int64_t dt_s0 = 0, dt_s1 = 0, dt_s2 = 0;
  const float* A = nullptr;
  SsdRows B, C;
  const float* D = nullptr;
  const int* reset = nullptr;
  const void* states = nullptr;   // forward scan output
  const void* dstates = nullptr;  // reverse scan output: gradient of the state leaving chunk c
  void* dx = nullptr;             // out [B, H, T, P] contiguous, operand dtype
  float* ddt = nullptr;           // out [B, H, T] fp32 contiguous
  float* dB_part = nullptr;       // out [head_splits, B, G, T, N] fp32 contiguous
  float* dC_part = nullptr;       // out [head_splits, B, G, T, N] fp32 contiguous
  float* dA_part = nullptr;       // out [B, H, chunks] fp32
  float* dD_part = nullptr;       // out [B, H, chunks] fp32
};

struct SsdStepArgs {
  int batch = 0, heads = 0, groups = 0, head_dim = 0, state_dim = 0;
  const void* x = nullptr;       // [B, H, P] contiguous, dtype below
  const float* dt = nullptr;     // [B, H] fp32 contiguous
  const float* A = nullptr;      // [H]
  const void* B = nullptr;       // [B, G, N] contiguous, x's dtype
  const void* C = nullptr;
  const float* D = nullptr;      // [H] or nullptr
  const float* state = nullptr;  // [B, H, P, N] fp32 contiguous or nullptr (zeros)
  void* y = nullptr;             // out [B, H, P], x's dtype
  float* state_out = nullptr;    // out [B, H, P, N] fp32
};

// True when this build has the kernels (nvcc was found at configure time).
bool ssd_cuda_built();
// "" when the kernels can run on CUDA device `device` (a compatible kernel image exists), else why not.
std::string ssd_cuda_device_error(int device);
// Streaming multiprocessors of `device` (for grid sizing).
int ssd_cuda_sm_count(int device);

// Launchers: enqueue on `stream` (a cudaStream_t) and check the launch; they do not synchronise.
void ssd_cuda_scan(const SsdScanArgs& a, SsdKernelDtype dtype, void* stream);
void ssd_cuda_chunk_fwd(const SsdChunkFwdArgs& a, SsdKernelDtype dtype, void* stream);
void ssd_cuda_chunk_bwd(const SsdChunkBwdArgs& a, SsdKernelDtype dtype, void* stream);
void ssd_cuda_step(const SsdStepArgs& a, SsdKernelDtype dtype, void* stream);

// The launchers the autograd function of ssd_cuda.cpp calls: the CUDA ones above in ssd_cuda(); the CPU
// emulator's (tests/unit/test_ssd_kernels_emulated.cpp) in tests of the Torch-side glue on CPU tensors.
struct SsdLaunchers {
  void (*scan)(const SsdScanArgs&, SsdKernelDtype, void*);
  void (*chunk_fwd)(const SsdChunkFwdArgs&, SsdKernelDtype, void*);
  void (*chunk_bwd)(const SsdChunkBwdArgs&, SsdKernelDtype, void*);
  int (*sm_count)(int device);
};

}  // namespace subq::ops::detail
