// ops_impl.h — which implementation the dispatching recurrence ops (subq::ops::ssd(), ssd_decode(), and
// later mlstm() / gated_delta()) use, chosen by the environment variable SUBQ_OPS_IMPL:
//   auto       (default, also when unset or empty) the CUDA kernel when every tensor is on a CUDA device
//              and the kernel supports the shape and dtype, else the chunkwise LibTorch reference;
//   reference  always the LibTorch reference (to compare against the kernels, or to rule them out);
//   cuda       always the kernel; an unsupported call throws InputError saying why (tests, benchmarks).
// The variable is read at every call, so a test can switch it with setenv() between calls.
#pragma once

#include <string>

namespace subq::ops {

enum class OpsImpl { kAuto, kReference, kCuda };

// Parses SUBQ_OPS_IMPL; throws subq::UsageError naming the value and the accepted ones.
OpsImpl ops_impl();
// "auto" | "reference" | "cuda"
std::string ops_impl_name(OpsImpl impl);

}  // namespace subq::ops
