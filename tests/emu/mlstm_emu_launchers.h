// mlstm_emu_launchers.h — the mLSTM kernels' launchers for the CPU emulator (tests/emu/cuda_emu.h): the same
// grids, blocks and shared-memory sizes as src/ops/mlstm/mlstm_cuda_*.cu, running the device code of
// src/ops/mlstm/mlstm_cuda_*.cuh on the CPU. kEmulated plugs them into the Torch glue
// (subq::ops::detail::mlstm_kernels_autograd / mlstm_step_kernels) on CPU tensors.
// Shared by tests/unit/test_mlstm_kernels_emulated.cpp and tests/unit/test_mlstm_gpu_cases_emulated.cpp.
// Include after subq_catch.h, with SUBQ_WITH_CUDA defined (the emulator needs the CUDA headers).
// fp16 chunk_bwd is instantiated for (Dk, Dv) = (64, 64), (64, 128) only (compile time); bf16 for all.
#pragma once

#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/mlstm/mlstm_cuda_bwd.cuh"
#include "ops/mlstm/mlstm_cuda_fwd.cuh"
#include "ops/mlstm/mlstm_cuda_scan.cuh"
#include "ops/mlstm/mlstm_cuda_step.cuh"
#include "ops/mlstm/mlstm_internal.h"

namespace subq::test::mlstm_emu {

namespace k = subq::ops::detail::mlstm_kernels;
using subq::ops::detail::MlstmKernelDtype;

inline emu::Options g_opt;  // the emulation mode of the next launches

template <typename T>
inline void emu_scan_t(const subq::ops::detail::MlstmScanArgs& a) {
  const dim3 grid(static_cast<unsigned>((a.n.dk / 64) * (a.n.dv / 64)), static_cast<unsigned>(a.n.heads),
                  static_cast<unsigned>(a.n.batch));
  if (a.reverse)
    emu::launch(grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::mlstm_scan_kernel<T, true>(a); }, g_opt);
  else
    emu::launch(grid, dim3(k::kScanThreads), k::scan_smem_bytes<T>(), [&] { k::mlstm_scan_kernel<T, false>(a); }, g_opt);
}
template <typename T, int DK>
inline void emu_fwd_t(const subq::ops::detail::MlstmChunkFwdArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  emu::launch(grid, dim3(k::kFwdThreads), sizeof(k::FwdSmem<T, DK>), [&] { k::mlstm_chunk_fwd_kernel<T, DK>(a); },
              g_opt);
}
template <typename T>
inline void emu_fwd_dk(const subq::ops::detail::MlstmChunkFwdArgs& a) {
  if (a.n.dk == 64)
    emu_fwd_t<T, 64>(a);
  else if (a.n.dk == 128)
    emu_fwd_t<T, 128>(a);
  else
    emu_fwd_t<T, 256>(a);
}
template <typename T>
inline void emu_step_t(const subq::ops::detail::MlstmStepArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.batch * a.heads), static_cast<unsigned>((a.dv + k::kStepThreads - 1) / k::kStepThreads));
  emu::launch(grid, dim3(k::kStepThreads), k::step_smem_bytes(a.dk), [&] { k::mlstm_step_kernel<T>(a); }, g_opt);
}
inline void emu_scan(const subq::ops::detail::MlstmScanArgs& a, MlstmKernelDtype d, void*) {
  if (d == MlstmKernelDtype::kF16)
    emu_scan_t<__half>(a);
  else
    emu_scan_t<__nv_bfloat16>(a);
}
inline void emu_fwd(const subq::ops::detail::MlstmChunkFwdArgs& a, MlstmKernelDtype d, void*) {
  if (d == MlstmKernelDtype::kF16)
    emu_fwd_dk<__half>(a);
  else
    emu_fwd_dk<__nv_bfloat16>(a);
}
inline void emu_step(const subq::ops::detail::MlstmStepArgs& a, MlstmKernelDtype d, void*) {
  if (d == MlstmKernelDtype::kF16)
    emu_step_t<__half>(a);
  else if (d == MlstmKernelDtype::kBF16)
    emu_step_t<__nv_bfloat16>(a);
  else
    emu_step_t<float>(a);
}
template <typename T, int DK, int DV>
inline void emu_bwd_t(const subq::ops::detail::MlstmChunkBwdArgs& a) {
  const dim3 grid(static_cast<unsigned>(a.n.chunks), static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  emu::launch(grid, dim3(k::kBwdThreads), sizeof(k::BwdSmem<T, DK, DV>),
              [&] { k::mlstm_chunk_bwd_kernel<T, DK, DV>(a); }, g_opt);
}
template <int DK>
inline void emu_bwd_bf16_dv(const subq::ops::detail::MlstmChunkBwdArgs& a) {
  if (a.n.dv == 64)
    emu_bwd_t<__nv_bfloat16, DK, 64>(a);
  else if (a.n.dv == 128)
    emu_bwd_t<__nv_bfloat16, DK, 128>(a);
  else
    emu_bwd_t<__nv_bfloat16, DK, 256>(a);
}
// bf16: every (Dk, Dv); fp16: (64, 64) and (64, 128) only (what the tests use; compile time)
inline void emu_bwd(const subq::ops::detail::MlstmChunkBwdArgs& a, MlstmKernelDtype d, void*) {
  if (d == MlstmKernelDtype::kF16) {
    REQUIRE(a.n.dk == 64);
    REQUIRE((a.n.dv == 64 || a.n.dv == 128));
    if (a.n.dv == 64)
      emu_bwd_t<__half, 64, 64>(a);
    else
      emu_bwd_t<__half, 64, 128>(a);
  } else if (a.n.dk == 64) {
    emu_bwd_bf16_dv<64>(a);
  } else if (a.n.dk == 128) {
    emu_bwd_bf16_dv<128>(a);
  } else {
    emu_bwd_bf16_dv<256>(a);
  }
}
template <typename T>
inline void emu_prep_t(const subq::ops::detail::MlstmPrepArgs& a) {
  const int64_t n_tok = static_cast<int64_t>(a.batch) * a.heads * a.time;
  constexpr int kPerBlock = k::kPrepThreads / 32;
  const dim3 grid(static_cast<unsigned>((n_tok + kPerBlock - 1) / kPerBlock));
  emu::launch(grid, dim3(k::kPrepThreads), 0, [&] { k::mlstm_prep_kernel<T>(a); }, g_opt);
}
inline void emu_prep(const subq::ops::detail::MlstmPrepArgs& a, MlstmKernelDtype d, void*) {
  if (d == MlstmKernelDtype::kF16)
    emu_prep_t<__half>(a);
  else
    emu_prep_t<__nv_bfloat16>(a);
}
inline const subq::ops::detail::MlstmLaunchers kEmulated = {emu_scan, emu_fwd, emu_bwd, emu_step, emu_prep};

}  // namespace subq::test::mlstm_emu
