// mlstm_cuda_stub.cpp — the mLSTM kernel launchers of mlstm_cuda.h for builds without CUDA (no nvcc at
// configure time; replaces mlstm_cuda_{scan,fwd,bwd,step}.cu): mlstm_cuda_built() is false, so the dispatch
// never picks the kernels, and a direct call says why it cannot run.
#include "ops/mlstm/mlstm_cuda.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {
[[noreturn]] void no_cuda() {
  throw InputError("the mLSTM CUDA kernels are not in this build (nvcc was not found at configure time); "
                   "use subq::ops::mlstm() or mlstm_chunkwise(), or rebuild with -DSUBQ_CUDA=ON");
}
}  // namespace

bool mlstm_cuda_built() { return false; }
std::string mlstm_cuda_device_error(int) { return "subq was built without CUDA kernels (no nvcc at configure time)"; }
void mlstm_cuda_scan(const MlstmScanArgs&, MlstmKernelDtype, void*) { no_cuda(); }
void mlstm_cuda_chunk_fwd(const MlstmChunkFwdArgs&, MlstmKernelDtype, void*) { no_cuda(); }
void mlstm_cuda_chunk_bwd(const MlstmChunkBwdArgs&, MlstmKernelDtype, void*) { no_cuda(); }
void mlstm_cuda_step(const MlstmStepArgs&, MlstmKernelDtype, void*) { no_cuda(); }
void mlstm_cuda_prep(const MlstmPrepArgs&, MlstmKernelDtype, void*) { no_cuda(); }

}  // namespace subq::ops::detail
