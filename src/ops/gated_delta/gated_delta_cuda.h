// gated_delta_cuda.h — the host interface of the Gated DeltaNet CUDA kernels (private to src/): plain
// structs of raw pointers and sizes, and a table of launchers. No Torch and no CUDA headers here, so the
// Torch-side glue (gated_delta_cuda.cpp) compiles with the host compiler, builds without nvcc link the stub
// (gated_delta_cuda_stub.cpp), and a CPU test can drive the glue with emulated launchers.
//
// The kernels (src/ops/gated_delta/gated_delta_cuda_*.cu; design and numbers in docs/perf/gated_delta.md):
//   scan_fwd  sequential over chunks, parallel over (batch*head, 32-row value tile): the carried state of
//             the chunkwise form, per chunk c (S_c = the state entering it, [Dv, Dk] fp32)
//                 states[c] = S_c;  U_c = u_tilde_c - W_c S_c^T;  S_{c+1} = gamma_end_c S_c + U_c^T K_c
//             (K = k_end, the keys weighted by their decay to the chunk end).
//   scan_bwd  the same over chunks last to first, carrying G = dL/dS_{c+1}:
//                 dU = dU_c + K_c G^T                      (written, the gradient of u_tilde_c)
//                 dK_c += U_c G,  dgamma_c += <G, S_c>,  dW_c += -dU S_c      (per value tile: partials)
//                 G <- gamma_end_c G - dU^T W_c + dstates_c
//             ending with G = the initial-state gradient.
//   inverse   T = (I + A)^-1 of the UT transform per chunk (forward substitution, one column per thread,
//             fp32), replacing the batched triangular solve.
//   step      the fused decode step (one token; optional q/k L2 normalisation), SIMT, any float dtype.
// Every operand of the scans is fp32 and contiguous ([BH, nc, C, D] rows); C <= 64, Dv a multiple of 32,
// Dk a multiple of 32 and <= 256.
#pragma once

#include <cstdint>
#include <string>

namespace subq::ops::detail {

enum class GdnKernelDtype { kBF16, kF16, kF32 };

constexpr int kGdnScanRows = 32;   // value rows of the state per scan block
constexpr int kGdnMaxChunk = 64;   // tokens per chunk (at most)
constexpr int kGdnMaxKeyDim = 256;

struct GdnScanSizes {
  int bh = 0;      // batch * heads
  int chunks = 0;  // nc
  int chunk = 0;   // C (tokens per chunk, <= 64)
  int key_dim = 0, value_dim = 0;
};

struct GdnScanFwdArgs {
  GdnScanSizes n;
  const float* u_tilde = nullptr;    // [BH, nc, C, Dv]
  const float* w = nullptr;          // [BH, nc, C, Dk]
  const float* k_end = nullptr;      // [BH, nc, C, Dk]
  const float* gamma_end = nullptr;  // [BH, nc]
  const float* s0 = nullptr;         // [BH, Dv, Dk] or nullptr (zeros)
  float* u = nullptr;                // out [BH, nc, C, Dv]
  float* states = nullptr;           // out [BH, nc, Dv, Dk]: the state entering chunk c
  float* s_out = nullptr;            // out [BH, Dv, Dk]: the final state
};

struct GdnScanBwdArgs {
  GdnScanSizes n;
  const float* u = nullptr;          // [BH, nc, C, Dv] forward output
  const float* w = nullptr;          // [BH, nc, C, Dk]
  const float* k_end = nullptr;      // [BH, nc, C, Dk]
  const float* gamma_end = nullptr;  // [BH, nc]
  const float* states = nullptr;     // [BH, nc, Dv, Dk] forward output
  const float* du = nullptr;         // [BH, nc, C, Dv] gradient of u, or nullptr (zeros)
  const float* dstates = nullptr;    // [BH, nc, Dv, Dk] gradient of states, or nullptr (zeros)
  const float* ds_out = nullptr;     // [BH, Dv, Dk] gradient of the final state, or nullptr (zeros)
  float* du_tilde = nullptr;         // out [BH, nc, C, Dv]
  float* dw_part = nullptr;          // out [Dv/32, BH, nc, C, Dk] (summed over the first dim by the caller)
  float* dk_end_part = nullptr;      // out [Dv/32, BH, nc, C, Dk]
  float* dgamma_part = nullptr;      // out [Dv/32, BH, nc]
  float* ds0 = nullptr;              // out [BH, Dv, Dk]
};

// T = (I + A)^-1 for strictly lower triangular A, per chunk: [n, C, C] fp32 contiguous each (C <= 64).
// Entries of A on and above the diagonal are not read; T is written in full (zeros above the diagonal).
struct GdnInverseArgs {
  int count = 0;  // n: number of C x C matrices
  int chunk = 0;  // C
  const float* a = nullptr;
  float* t = nullptr;
};

struct GdnStepArgs {
  int bh = 0, key_dim = 0, value_dim = 0;
  bool l2_normalize_qk = false;    // q / |q| / sqrt(Dk), k / |k| with |x| = sqrt(sum x^2 + 1e-6)
  const void* q = nullptr;         // [BH, Dk] contiguous, dtype below
  const void* k = nullptr;         // [BH, Dk]
  const void* v = nullptr;         // [BH, Dv]
  const float* g = nullptr;        // [BH] fp32 contiguous (log decay)
  const float* beta = nullptr;     // [BH] fp32
  const float* state = nullptr;    // [BH, Dv, Dk] fp32 contiguous or nullptr (zeros)
  void* o = nullptr;               // out [BH, Dv], q's dtype
  float* state_out = nullptr;      // out [BH, Dv, Dk] fp32
};

// ---- gdnfwd: the v2 (fused tensor-core) forward, gdn_v2_fwd.cu(h); contract with the backward in
// gated_delta_v2.h. One argument struct for its three kernels (each reads / writes a subset):
//   prep_fwd  grid (nc, BH):       tinv, w, u_tilde from k, v, g, beta, reset
//   scan_fwd  grid (Dv / 32, BH):  u, states, s_out from w, u_tilde, k, g, reset, s0 (sequential over chunks)
//   out_fwd   grid (nc, BH):       o from q, k, g, reset, u, states
// Every tensor contiguous, BH-major; operand dtype = bf16 or fp16 (the GdnKernelDtype argument); nc =
// ceil(T / 64) chunks of 64 tokens (the last one zero-padded on load). Dk in {64, 128, 256}, Dv a multiple
// of 32 up to 512.
struct GdnV2FwdArgs {
  int batch = 0, heads = 0, time = 0, chunks = 0, key_dim = 0, value_dim = 0;
  const void* q = nullptr;       // [B, H, T, Dk] operand dtype
  const void* k = nullptr;       // [B, H, T, Dk]
  const void* v = nullptr;       // [B, H, T, Dv]
  const float* g = nullptr;      // [B, H, T] fp32 log decay
  const float* beta = nullptr;   // [B, H, T] fp32
  const int* reset = nullptr;    // [B, T] int32 0/1, or nullptr
  const float* s0 = nullptr;     // [B, H, Dv, Dk] fp32, or nullptr (zeros)
  float* tinv = nullptr;         // out [B, H, nc, 64, 64] fp32 (I + A)^-1
  void* w = nullptr;             // out [B, H, T, Dk] operand dtype
  void* u_tilde = nullptr;       // out [B, H, T, Dv] operand dtype (scratch between prep and scan)
  void* u = nullptr;             // out [B, H, T, Dv] operand dtype
  void* states = nullptr;        // out [B, H, nc, Dv, Dk] operand dtype: the state entering chunk c
  float* s_out = nullptr;        // out [B, H, Dv, Dk] fp32: the final state
  void* o = nullptr;             // out [B, H, T, Dv] operand dtype
};
constexpr int kGdnV2Chunk = 64;
constexpr int kGdnV2ScanRows = 32;  // value rows of the state per scan_fwd block
// The CUDA launchers (gdn_v2_fwd.cu; only in builds with nvcc — the tables reference them).
void gdn_v2_prep_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream);
void gdn_v2_scan_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream);
void gdn_v2_out_fwd(const GdnV2FwdArgs& a, GdnKernelDtype dtype, void* stream);
// ---- end gdnfwd
// ---- gdnbwd: the v2 backward kernels (gdn_v2_bwd.cu; glue in gated_delta_v2_bwd.cpp) -------------------
// One argument block for the three kernels (each reads and writes a subset). Tensors are contiguous,
// BH-major; "T" = the operand dtype (bf16 / fp16) of the launch; nc = ceil(T / 64).
struct GdnV2BwdArgs {
  int bh = 0, heads = 0, time = 0, chunks = 0, key_dim = 0, value_dim = 0;
  int key_slices = 0;              // Dk / 64 (chunk_bwd's third grid dimension)
  // saved by the forward (gated_delta_v2.h)
  const void* q = nullptr;         // [BH, T, Dk] T
  const void* k = nullptr;         // [BH, T, Dk] T
  const void* v = nullptr;         // [BH, T, Dv] T
  const void* w = nullptr;         // [BH, T, Dk] T
  const void* u = nullptr;         // [BH, T, Dv] T
  const void* states = nullptr;    // [BH, nc, Dv, Dk] T
  const float* g = nullptr;        // [BH, T]
  const float* beta = nullptr;     // [BH, T]
  const float* tinv = nullptr;     // [BH, nc, 64, 64]
  const int* reset = nullptr;      // [B, T] (0/1) or nullptr
  // incoming gradients
  const void* d_o = nullptr;       // [BH, T, Dv] T
  const float* dfinal = nullptr;   // [BH, Dv, Dk] or nullptr (zeros)
  // scan_bwd outputs
  void* dstates = nullptr;         // [BH, nc, Dv, Dk] T: dL/dS_{c+1}
  void* du = nullptr;              // [BH, T, Dv] T: dL/dU (= dL/dU~)
  float* ds0 = nullptr;            // [BH, Dv, Dk]
  float* x_part = nullptr;         // [x_blocks, BH, nc * 64]: per scan block (value rows), x_s = <U_s G, K_s>
                                   // with G in fp32 (hi + lo operand split), the decay chain's K_end term
  int scan_rows = 0;               // scan_bwd's value rows per block (gdn_v2_scan_bwd_rows(), chosen by the glue)
  int x_blocks = 0;                // 2 * Dv / scan_rows
  // chunk_bwd outputs
  void* dq = nullptr;              // [BH, T, Dk] T (final)
  float* dk_part = nullptr;        // [BH, T, Dk]: output and K_end terms of dk
  void* dw = nullptr;              // [BH, T, Dk] T: dL/dW
  float* dgc_part = nullptr;       // [Dk / 64, BH, nc * 64]: per key slice, gradient of the in-chunk cumsum
  // wy_bwd outputs
  void* dk = nullptr;              // [BH, T, Dk] T (final)
  void* dv = nullptr;              // [BH, T, Dv] T (final)
  float* dg = nullptr;             // [BH, T]
  float* dbeta = nullptr;          // [BH, T]
};
// Value rows per scan_bwd block: the widest tile that divides Dv and fits shared memory with the key dim
// (128 for Dk <= 128, 64 for Dk = 256), else 32. The scan is sequential over chunks with one block per SM,
// so when the wide tile would leave more than half of the device's `sms` multiprocessors idle (few
// batch x head pairs, e.g. B2 H16: 32 blocks on 132 SMs) the 32-row tile runs instead: 2-4x the blocks,
// each with a shorter per-chunk chain. sms = 0 (unknown, or a CPU test): the wide tile. The glue chooses
// (GdnV2BwdArgs::scan_rows, x_part's size); the launchers and the emulated tests take its choice.
inline int gdn_v2_scan_bwd_wide(int dk) { return dk <= 128 ? 128 : 64; }
inline int gdn_v2_scan_bwd_rows(int dk, int dv, int64_t bh = 0, int sms = 0) {
  const int wide = gdn_v2_scan_bwd_wide(dk);
  if (dv % wide != 0) return 32;
  if (sms > 0 && 2 * (dv / wide) * bh <= sms) return 32;
  return wide;
}
// Whether `rows` is a scan_bwd tile the launchers have for (dk, dv): the wide one or 32, dividing Dv.
inline bool gdn_v2_scan_bwd_rows_ok(int dk, int dv, int rows) {
  return (rows == 32 || rows == gdn_v2_scan_bwd_wide(dk)) && dv % rows == 0;
}
// ---- end gdnbwd ------------------------------------------------------------------------------------------

// The launchers the glue calls: CUDA launchers in production (gated_delta_cuda_launchers()), emulated ones
// in the CPU test of the glue. `stream` is a cudaStream_t (nullptr for CPU tensors); launchers enqueue and
// check the launch but do not synchronise.
struct GatedDeltaLaunchers {
  bool built = false;                          // kernels exist in this build
  std::string (*device_error)(int device) = nullptr;  // "" when they can run on CUDA device `device`
  void (*scan_fwd)(const GdnScanFwdArgs&, void* stream) = nullptr;
  void (*scan_bwd)(const GdnScanBwdArgs&, void* stream) = nullptr;
  void (*step)(const GdnStepArgs&, GdnKernelDtype, void* stream) = nullptr;
  void (*unit_lower_inverse)(const GdnInverseArgs&, void* stream) = nullptr;
  // gdnfwd: the v2 forward (null in tables without it: the glue then takes v1)
  void (*v2_prep_fwd)(const GdnV2FwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  void (*v2_scan_fwd)(const GdnV2FwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  void (*v2_out_fwd)(const GdnV2FwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  // end gdnfwd
  // gdnbwd: the v2 backward, in this order: scan_bwd (reverse scan: dstates, du, ds0), chunk_bwd (dq,
  // dk_part, dw, dgc_part), wy_bwd (dk, dv, dg, dbeta). dtype: bf16 or fp16.
  void (*v2_scan_bwd)(const GdnV2BwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  void (*v2_chunk_bwd)(const GdnV2BwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  void (*v2_wy_bwd)(const GdnV2BwdArgs&, GdnKernelDtype, void* stream) = nullptr;
  // multiprocessors of CUDA device `device` (the scan_bwd tile choice); null: unknown (0)
  int (*v2_sm_count)(int device) = nullptr;
  // end gdnbwd
};

// gdnbwd: fills the v2 backward entries of a table (gdn_v2_bwd.cu; the stub's throw).
void set_gdn_v2_bwd_launchers(GatedDeltaLaunchers& table);

// The production table (CUDA launchers; the stub's, which throw, in builds without nvcc).
const GatedDeltaLaunchers& gated_delta_cuda_launchers();

}  // namespace subq::ops::detail
