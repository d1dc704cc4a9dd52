// gated_delta_cuda_stub.cpp — the launcher table of gated_delta_cuda.h for builds without CUDA (no nvcc at
// configure time; replaces gated_delta_cuda.cu): `built` is false, so the dispatch never picks the kernels,
// and a direct call says why it cannot run.
#include "ops/gated_delta/gated_delta_cuda.h"
#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {
[[noreturn]] void no_cuda() {
  throw InputError("the Gated DeltaNet CUDA kernels are not in this build (nvcc was not found at configure time); "
                   "use subq::ops::gated_delta() or gated_delta_chunkwise(), or rebuild with -DSUBQ_CUDA=ON");
}
std::string device_error(int) { return "subq was built without CUDA kernels (no nvcc at configure time)"; }
void scan_fwd(const GdnScanFwdArgs&, void*) { no_cuda(); }
void scan_bwd(const GdnScanBwdArgs&, void*) { no_cuda(); }
void step(const GdnStepArgs&, GdnKernelDtype, void*) { no_cuda(); }
void unit_lower_inverse(const GdnInverseArgs&, void*) { no_cuda(); }
// gdnfwd
void v2_fwd(const GdnV2FwdArgs&, GdnKernelDtype, void*) { no_cuda(); }
// gdnbwd
void v2_bwd(const GdnV2BwdArgs&, GdnKernelDtype, void*) { no_cuda(); }
// end gdnbwd
}  // namespace

void set_gdn_v2_bwd_launchers(GatedDeltaLaunchers& t) {
  t.v2_scan_bwd = &v2_bwd;
  t.v2_chunk_bwd = &v2_bwd;
  t.v2_wy_bwd = &v2_bwd;
}

const GatedDeltaLaunchers& gated_delta_cuda_launchers() {
  static const GatedDeltaLaunchers table = [] {
    GatedDeltaLaunchers t{false, &device_error, &scan_fwd, &scan_bwd, &step, &unit_lower_inverse};
    // gdnfwd
    t.v2_prep_fwd = &v2_fwd;
    t.v2_scan_fwd = &v2_fwd;
    t.v2_out_fwd = &v2_fwd;
    set_gdn_v2_bwd_launchers(t);  // gdnbwd
    return t;
  }();
  return table;
}

}  // namespace subq::ops::detail
