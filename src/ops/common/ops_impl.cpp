// ops_impl.cpp — see subq/ops/ops_impl.h.
#include "subq/ops/ops_impl.h"

#include <cstdlib>

#include "subq/core/error.h"

namespace subq::ops {

OpsImpl ops_impl() {
  const char* v = std::getenv("SUBQ_OPS_IMPL");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return OpsImpl::kAuto;
  if (s == "reference") return OpsImpl::kReference;
  if (s == "cuda") return OpsImpl::kCuda;
  throw UsageError(str("SUBQ_OPS_IMPL = \"", s, "\" is not an op implementation; use auto, reference or cuda"));
}

std::string ops_impl_name(OpsImpl impl) {
  switch (impl) {
    case OpsImpl::kReference: return "reference";
    case OpsImpl::kCuda: return "cuda";
    default: return "auto";
  }
}

}  // namespace subq::ops
