// mlstm_cuda.h — the host interface of the mLSTM CUDA kernels (private to src/): plain structs of raw
// pointers, element strides and sizes, and one launcher per kernel. No Torch and no CUDA headers, so the
// Torch-side glue (mlstm_cuda.cpp) compiles with the host compiler, and builds without nvcc link the stub
// (mlstm_cuda_stub.cpp) whose launchers throw.
//
// The kernels (src/ops/mlstm/mlstm_cuda_*.cu; design and derivations in docs/perf/mlstm.md):
//   scan       sequential over chunks, parallel over (batch, head, 64 x 64 tile of the [Dk, Dv] memory):
//              carries the stabilised state (C, n, m) exactly as the recurrence defines it at chunk ends,
//              storing the state entering each chunk (C in the operand dtype, n and m in fp32) and the final
//              state in fp32.
//   chunk_fwd  parallel over (batch, head, chunk): h of every token from the chunk's own tokens and the
//              state entering the chunk, with the recurrent stabiliser m_t.
//   scan (reverse) and chunk_bwd: the backward, with m held constant (docs/perf/mlstm.md, "Backward").
//   step       the fused decode step (one token), SIMT, any float dtype.
// Chunk = 64 tokens. Head dims Dk, Dv: 64, 128 or 256 (the step kernel: any).
#pragma once

#include <cstdint>
#include <string>

namespace subq::ops::detail {

enum class MlstmKernelDtype { kBF16, kF16, kF32 };

// A [B, H, T, W] operand: base pointer and element strides of dims 0..2 (dim 3 is contiguous).
struct MlstmRows {
  const void* ptr = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
};

struct MlstmSizes {
  int batch = 0, heads = 0, time = 0, dk = 0, dv = 0, chunks = 0;
};

// Forward (reverse = false): carries (C, n, m) over the chunks first to last.
// Reverse (reverse = true, the backward): carries the state gradients (dC, dn) from the final-state
// gradient (c_in, n_in; nullptr = 0) over the chunks last to first, with k = q and v = dh, the per-token
// inv_den and dqn of the backward's pre-pass, and m_states (the forward's) as input; stores the gradient of
// the state leaving each chunk in c_states / n_states and the initial-state gradient in c_out / n_out.
struct MlstmScanArgs {
  MlstmSizes n;
  bool reverse = false;
  MlstmRows k, v;                // [B, H, T, Dk], [B, H, T, Dv] (reverse: q and dh)
  const float* inv_den = nullptr;  // reverse: [B, H, T] fp32 contiguous, 1 / denominator of h
  const float* dqn = nullptr;      // reverse: [B, H, T] fp32 contiguous, gradient of qn
  const float* igate = nullptr;  // [B, H, T] fp32 contiguous (pre-activations i~)
  const float* fgate = nullptr;  // [B, H, T] fp32 contiguous (pre-activations f~)
  const int* reset = nullptr;    // [B, T] int32 contiguous (0/1) or nullptr
  const float* c_in = nullptr;   // [B, H, Dk, Dv] fp32 contiguous, or nullptr with n_in, m_in: the zero state
  const float* n_in = nullptr;   // [B, H, Dk]
  const float* m_in = nullptr;   // [B, H]
  void* c_states = nullptr;      // out [B, H, chunks, Dk, Dv] operand dtype: C entering chunk c
  void* c_states_lo = nullptr;   // out like c_states, or nullptr: C - C rounded (c_states + c_states_lo ~ fp32 C)
  float* n_states = nullptr;     // out [B, H, chunks, Dk] fp32: n entering chunk c
  float* m_states = nullptr;     // out [B, H, chunks] fp32: m entering chunk c (reverse: input)
  float* c_out = nullptr;        // out [B, H, Dk, Dv] fp32: final state
  float* n_out = nullptr;        // out [B, H, Dk]
  float* m_out = nullptr;        // out [B, H]
  // Also multiply by the rounding residual of the weighted k rows (two products: the fp32 sum (w o k)^T v to
  // ~2^-16 instead of ~2^-9 of its terms). The reverse scan sets it when the initial state has a gradient:
  // dm0 = <C0, dC0> + <n0, dn0> cancels, so dC0 needs more than bf16 operands give.
  bool split_weights = false;
};

struct MlstmChunkFwdArgs {
  MlstmSizes n;
  MlstmRows q, k, v;
  const float* igate = nullptr;
  const float* fgate = nullptr;
  const int* reset = nullptr;
  const void* c_states = nullptr;  // from the scan
  const float* n_states = nullptr;
  const float* m_states = nullptr;
  // the scan's c_states_lo, or nullptr: with it every chunk uses its entering state C_p to ~2^-16 (two
  // products), like the reference's fp32 state (an fp32 initial state included)
  const void* c_lo = nullptr;
  void* h = nullptr;               // out [B, H, T, Dv] contiguous, operand dtype
  void* h_lo = nullptr;            // out [B, H, T, Dv] like h, or nullptr: h - h rounded (h_fp32 ~ h + h_lo)
  float* qn = nullptr;             // out [B, H, T] fp32 (q^ . n_t, signed, for the backward) or nullptr
  float* m = nullptr;              // out [B, H, T] fp32 (the stabiliser m_t) or nullptr
};

// The backward's chunk kernel: gradients of q, k, v and the gates of every chunk from the forward's saved
// states and the reverse scan's state gradients (see mlstm_cuda_bwd.cu).
struct MlstmChunkBwdArgs {
  MlstmSizes n;
  MlstmRows q, k, v, dh;
  const float* igate = nullptr;
  const float* fgate = nullptr;
  const int* reset = nullptr;
  const float* inv_den = nullptr;    // [B, H, T] fp32 contiguous: 1 / denominator of h_t
  const float* dqn = nullptr;        // [B, H, T] fp32 contiguous: gradient of qn_t
  const void* c_states = nullptr;    // forward scan: state entering chunk c
  const float* n_states = nullptr;
  const float* m_states = nullptr;
  const void* c_lo = nullptr;        // as in MlstmChunkFwdArgs
  const void* dc_states = nullptr;   // reverse scan: gradient of the state leaving chunk c
  const float* dn_states = nullptr;
  void* dq = nullptr;                // out [B, H, T, Dk] contiguous, operand dtype
  void* dk = nullptr;                // out [B, H, T, Dk]
  void* dv = nullptr;                // out [B, H, T, Dv]
  float* dig = nullptr;              // out [B, H, T] fp32
  float* dfg = nullptr;              // out [B, H, T] fp32
};

// The backward's per-token pre-pass (before the reverse scan, which needs dqn): with h_t = h + h_lo (the
// forward's output and its rounding residual, i.e. the fp32 h), den_t = max(|qn_t|, exp(-m_t)) + 1e-6:
//   inv_den_t = 1 / den_t,  dh_dot_h_t = dh_t . h_t (fp32),  dqn_t = -dh_dot_h_t inv_den_t sign(qn_t)
//   where |qn_t| >= exp(-m_t), else 0.
struct MlstmPrepArgs {
  int batch = 0, heads = 0, time = 0, dv = 0;
  MlstmRows dh;                    // [B, H, T, Dv] operand dtype
  const void* h = nullptr;         // [B, H, T, Dv] contiguous, operand dtype
  const void* h_lo = nullptr;      // like h, or nullptr (then h alone)
  const float* qn = nullptr;       // [B, H, T] fp32 contiguous (the forward's)
  const float* m = nullptr;        // [B, H, T] fp32 contiguous (the forward's per-token stabiliser)
  float* inv_den = nullptr;        // out [B, H, T] fp32
  float* dqn = nullptr;            // out [B, H, T] fp32
  float* dh_dot_h = nullptr;       // out [B, H, T] fp32
};

struct MlstmStepArgs {
  int batch = 0, heads = 0, dk = 0, dv = 0;
  const void* q = nullptr;        // [B, H, Dk] contiguous, dtype below
  const void* k = nullptr;        // [B, H, Dk]
  const void* v = nullptr;        // [B, H, Dv]
  const float* igate = nullptr;   // [B, H] fp32 contiguous
  const float* fgate = nullptr;   // [B, H]
  const int* reset = nullptr;     // [B] int32 or nullptr
  const float* c_in = nullptr;    // [B, H, Dk, Dv] fp32 contiguous, or nullptr with n_in, m_in (zero state)
  const float* n_in = nullptr;
  const float* m_in = nullptr;
  void* h = nullptr;              // out [B, H, Dv], q's dtype
  float* c_out = nullptr;         // out [B, H, Dk, Dv] fp32
  float* n_out = nullptr;         // out [B, H, Dk]
  float* m_out = nullptr;         // out [B, H]
};

// True when this build has the kernels (nvcc was found at configure time).
bool mlstm_cuda_built();
// "" when the kernels can run on CUDA device `device` (a compatible kernel image exists), else why not.
std::string mlstm_cuda_device_error(int device);

// Launchers: enqueue on `stream` (a cudaStream_t) and check the launch; they do not synchronise.
void mlstm_cuda_scan(const MlstmScanArgs& a, MlstmKernelDtype dtype, void* stream);
void mlstm_cuda_chunk_fwd(const MlstmChunkFwdArgs& a, MlstmKernelDtype dtype, void* stream);
void mlstm_cuda_chunk_bwd(const MlstmChunkBwdArgs& a, MlstmKernelDtype dtype, void* stream);
void mlstm_cuda_prep(const MlstmPrepArgs& a, MlstmKernelDtype dtype, void* stream);
void mlstm_cuda_step(const MlstmStepArgs& a, MlstmKernelDtype dtype, void* stream);

// The launchers the Torch glue of mlstm_cuda.cpp calls: the CUDA ones above in mlstm_cuda() /
// mlstm_step_cuda(); the CPU emulator's (tests/unit/test_mlstm_kernels_emulated.cpp) in tests of the glue
// on CPU tensors.
struct MlstmLaunchers {
  void (*scan)(const MlstmScanArgs&, MlstmKernelDtype, void*);
  void (*chunk_fwd)(const MlstmChunkFwdArgs&, MlstmKernelDtype, void*);
  void (*chunk_bwd)(const MlstmChunkBwdArgs&, MlstmKernelDtype, void*);
  void (*step)(const MlstmStepArgs&, MlstmKernelDtype, void*);
  void (*prep)(const MlstmPrepArgs&, MlstmKernelDtype, void*);
};

}  // namespace subq::ops::detail
