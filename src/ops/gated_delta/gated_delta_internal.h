// gated_delta_internal.h — argument checking and q/k preparation shared by the Gated DeltaNet forms.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

namespace subq::ops::detail {

struct GatedDeltaDims {
  int64_t batch, heads, time, key_dim, value_dim;
};

// Checks every argument of gated_delta_recurrent / gated_delta_chunkwise (see subq/ops/gated_delta.h)
// and returns the sizes; throws subq::InputError naming the argument and the expected layout.
GatedDeltaDims gated_delta_check(const std::string& op, const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                 const torch::Tensor& initial_state, const torch::Tensor& reset);

// Checks the arguments of one decoding step (gated_delta_step / gated_delta_step_cuda: q_t, k_t [B, H, Dk],
// v_t [B, H, Dv], g_t, beta_t [B, H], state [B, H, Dv, Dk]) with the sequence rules, viewing it as T = 1.
GatedDeltaDims gated_delta_step_check(const std::string& op, const torch::Tensor& q_t, const torch::Tensor& k_t,
                                      const torch::Tensor& v_t, const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                      const torch::Tensor& state);

// q, k already in the compute dtype; when `normalize`, returns (q / |q| / sqrt(Dk), k / |k|) with
// |x| = sqrt(sum x^2 + 1e-6) over the last dimension, else (q, k) unchanged.
std::pair<torch::Tensor, torch::Tensor> gated_delta_prepare_qk(const torch::Tensor& q, const torch::Tensor& k,
                                                               bool normalize);

// The chunk-parallel pieces of the chunkwise (WY / UT) form, in the compute dtype (see
// reference_chunkwise.cpp for the derivation). Shapes: qc, kc [B,H,nc,C,Dk]; decay [B,H,nc,C,C] (masked
// across documents); gamma_in [B,H,nc,C]; gamma_end [B,H,nc]; u_tilde [B,H,nc,C,Dv]; w, k_end [B,H,nc,C,Dk].
// The carried state S_c entering chunk c is then the sequential part:
//   U_c = u_tilde_c - w_c S_c^T,   S_{c+1} = gamma_end_c S_c + U_c^T k_end_c.
struct GatedDeltaChunks {
  int64_t chunk = 0, chunks = 0, time = 0;
  torch::Tensor qc, kc, decay, gamma_in, gamma_end, u_tilde, w, k_end;
};
// (I + A)^-1 R for strictly lower triangular A [..., C, C] and right-hand sides R [..., C, W]
// (differentiable); empty = the reference's torch::linalg_solve_triangular.
using UnitLowerSolve = std::function<torch::Tensor(const torch::Tensor& A, const torch::Tensor& R)>;
// q, k, v [B,H,T,D] any float dtype, T >= 1 (converted to ct); chunk_size >= 1 (clamped to T).
GatedDeltaChunks gated_delta_chunks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& reset,
                                    int64_t chunk_size, bool l2_normalize_qk, torch::ScalarType ct,
                                    const UnitLowerSolve& solve = {});
// o [B,H,T,Dv] (compute dtype) from U [B,H,nc,C,Dv] and the states entering each chunk [B,H,nc,Dv,Dk].
torch::Tensor gated_delta_chunk_output(const GatedDeltaChunks& c, const torch::Tensor& u_all,
                                       const torch::Tensor& states_in);

}  // namespace subq::ops::detail

namespace subq::ops {
struct GatedDeltaResult;
struct GatedDeltaOptions;
}

namespace subq::ops::detail {

struct GatedDeltaLaunchers;

// "" when the kernel path supports key dim dk, value dim dv and B*H = bh, else why not.
std::string gated_delta_kernel_shape_error(int64_t dk, int64_t dv, int64_t bh);

// The kernel path of gated_delta_cuda with an explicit launcher table (CUDA launchers in production,
// emulated ones in the CPU test of this glue; then the tensors are on the CPU). Arguments already checked
// (gated_delta_check) and supported (gated_delta_kernel_shape_error is empty, T >= 1).
GatedDeltaResult gated_delta_kernel_path(const GatedDeltaLaunchers& launchers, const torch::Tensor& q,
                                         const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& g,
                                         const torch::Tensor& beta, const torch::Tensor& initial_state,
                                         const torch::Tensor& reset, bool l2_normalize_qk);
// The explicit backward of the v1 kernel path (gated_delta_cuda.cpp; formulas checked in fp64 by
// tests/unit/test_gated_delta_kernel_math.cpp) from the forward's U [B,H,nc,C,Dv] and states entering each
// chunk [B,H,nc,Dv,Dk] (fp32, chunks of C = min(64, T)); d_o / dfinal may be undefined (zeros). `ac`,
// `ac_dtype`: the autocast state the forward ran under. Also the interim backward of v2
// (gated_delta_v2_bwd_hybrid.cpp). Gradients fp32; ds0 always defined.
struct GatedDeltaV1Grads {
  torch::Tensor dq, dk, dv, dg, dbeta, ds0;
};
GatedDeltaV1Grads gated_delta_v1_backward(const GatedDeltaLaunchers& L, const torch::Tensor& q, const torch::Tensor& k,
                                          const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                          const torch::Tensor& reset, const torch::Tensor& u_chunks,
                                          const torch::Tensor& states, const torch::Tensor& d_o,
                                          const torch::Tensor& dfinal, bool ac, at::ScalarType ac_dtype);

struct GdnV2Saved;
// The v2 forward (gdn_v2_fwd.cu kernels through `L`; no autograd): q, k, v contiguous bf16 / fp16 (one
// dtype), g, beta fp32 [B,H,T], s0 fp32 [B,H,Dv,Dk] or undefined, reset int32 [B,T] or undefined. Returns o
// (operand dtype), the final state (fp32) and fills *saved (gated_delta_v2.h).
GatedDeltaResult gated_delta_v2_forward(const GatedDeltaLaunchers& L, const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                        const torch::Tensor& s0, const torch::Tensor& reset, GdnV2Saved* saved);
// True when the kernel path takes v2 for these operands: the table has the v2 launchers, q is bf16 or fp16,
// Dv <= 512 (shape rules of gated_delta_kernel_shape_error otherwise).
bool gated_delta_v2_takes(const GatedDeltaLaunchers& L, const torch::Tensor& q, const torch::Tensor& v);

// The decode-step kernel path (no autograd): q_t, k_t [B,H,Dk], v_t [B,H,Dv] in one dtype of fp32, bf16,
// fp16; g_t, beta_t [B,H]; state [B,H,Dv,Dk] or undefined.
GatedDeltaResult gated_delta_step_kernel_path(const GatedDeltaLaunchers& launchers, const torch::Tensor& q_t,
                                              const torch::Tensor& k_t, const torch::Tensor& v_t,
                                              const torch::Tensor& g_t, const torch::Tensor& beta_t,
                                              const torch::Tensor& state, bool l2_normalize_qk);

// Test hook (null in production, where nothing sets it): while set, ops::gated_delta() hands every call to
// this function instead of dispatching, whatever SUBQ_OPS_IMPL says. Tests use it to run whole models through
// the kernel path on CPU tensors (gated_delta_kernel_path with the emulated launchers of
// tests/emu/gdn_v2_emu_launchers.h), or to observe / vary the op inside a model. Not thread-safe; set it
// only through ScopedGatedDeltaOverride, which restores the previous hook.
using GatedDeltaOverride = std::function<GatedDeltaResult(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& g,
    const torch::Tensor& beta, const torch::Tensor& initial_state, const torch::Tensor& reset,
    const GatedDeltaOptions& options)>;
const GatedDeltaOverride* gated_delta_override();
class ScopedGatedDeltaOverride {
 public:
  explicit ScopedGatedDeltaOverride(GatedDeltaOverride fn);
  ~ScopedGatedDeltaOverride();
  ScopedGatedDeltaOverride(const ScopedGatedDeltaOverride&) = delete;
  ScopedGatedDeltaOverride& operator=(const ScopedGatedDeltaOverride&) = delete;

 private:
  GatedDeltaOverride fn_;
  const GatedDeltaOverride* prev_;
};

}  // namespace subq::ops::detail
