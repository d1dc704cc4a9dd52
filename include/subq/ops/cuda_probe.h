// cuda_probe.h — a one-kernel self test: can this process build, launch and read back a subq kernel on
// `device`? Used by `subq version` and the GPU tests to tell "no GPU" from "kernels do not run".
#pragma once

#include <string>

namespace subq::ops {

// Returns "" on success, else what failed (never throws). Without CUDA support, says so.
std::string cuda_probe(int device);

}  // namespace subq::ops
