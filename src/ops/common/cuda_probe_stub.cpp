// cuda_probe_stub.cpp — cuda_probe() for builds without CUDA support (no nvcc at configure time).
#include "subq/ops/cuda_probe.h"

namespace subq::ops {
std::string cuda_probe(int) { return "subq was built without CUDA (no nvcc found at configure time)"; }
}  // namespace subq::ops
