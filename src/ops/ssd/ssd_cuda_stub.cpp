// ssd_cuda_stub.cpp — the SSD kernel launchers of ssd_cuda.h for builds without CUDA (no nvcc at configure
// time; replaces ssd_cuda_{scan,fwd,bwd,step}.cu): ssd_cuda_built() is false, so the dispatch never
// picks the kernels, and a direct call says why it cannot run.
#include "ops/ssd/ssd_cuda.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {
[[noreturn]] void no_cuda() {
  throw InputError("the SSD CUDA kernels are not in this build (nvcc was not found at configure time); "
                   "use subq::ops::ssd() or ssd_chunkwise(), or rebuild with -DSUBQ_CUDA=ON");
}
}  // namespace

bool ssd_cuda_built() { return false; }
std::string ssd_cuda_device_error(int) { return "subq was built without CUDA kernels (no nvcc at configure time)"; }
int ssd_cuda_sm_count(int) { no_cuda(); }
void ssd_cuda_scan(const SsdScanArgs&, SsdKernelDtype, void*) { no_cuda(); }
void ssd_cuda_chunk_fwd(const SsdChunkFwdArgs&, SsdKernelDtype, void*) { no_cuda(); }
void ssd_cuda_chunk_bwd(const SsdChunkBwdArgs&, SsdKernelDtype, void*) { no_cuda(); }
void ssd_cuda_step(const SsdStepArgs&, SsdKernelDtype, void*) { no_cuda(); }

}  // namespace subq::ops::detail
