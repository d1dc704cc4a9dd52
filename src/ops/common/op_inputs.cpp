// op_inputs.cpp — argument checks shared by the recurrence ops (see op_inputs.h).
#include "op_inputs.h"

#include "subq/core/error.h"

namespace subq::ops::detail {

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

namespace {
std::string want_str(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + (sizes[i] < 0 ? std::string("*") : std::to_string(sizes[i]));
  return s + "]";
}

void expect_defined_float(const char* op, const char* name, const torch::Tensor& t, const char* layout) {
  if (!t.defined()) throw InputError(str(op, ": ", name, " ", layout, " is required but was not given"));
  if (!at::isFloatingType(t.scalar_type()))
    throw InputError(str(op, ": ", name, " must be a floating-point tensor (fp32, bf16, fp16 or fp64), got ",
                         c10::toString(t.scalar_type())));
}

bool sizes_match(const torch::Tensor& t, const std::vector<int64_t>& sizes) {
  if (t.dim() != static_cast<int64_t>(sizes.size())) return false;
  for (size_t i = 0; i < sizes.size(); ++i)
    if (sizes[i] >= 0 && t.size(static_cast<int64_t>(i)) != sizes[i]) return false;
  return true;
}
}  // namespace

void expect_shape(const char* op, const char* name, const torch::Tensor& t, const std::vector<int64_t>& sizes,
                  const char* layout) {
  expect_defined_float(op, name, t, layout);
  if (!sizes_match(t, sizes))
    throw InputError(str(op, ": ", name, " must have shape ", layout, " = ", want_str(sizes), ", got ",
                         shape_str(t.sizes())));
}

void expect_ndim(const char* op, const char* name, const torch::Tensor& t, int64_t ndim, const char* layout) {
  expect_defined_float(op, name, t, layout);
  if (t.dim() != ndim)
    throw InputError(str(op, ": ", name, " must have ", ndim, " dimensions ", layout, ", got shape ",
                         shape_str(t.sizes())));
}

void expect_optional_mask(const char* op, const char* name, const torch::Tensor& t,
                          const std::vector<int64_t>& sizes, const char* layout) {
  if (!t.defined()) return;
  if (t.scalar_type() != torch::kBool)
    throw InputError(str(op, ": ", name, " must be a bool tensor ", layout, " (true = reset the state before ",
                         "that token), got dtype ", c10::toString(t.scalar_type())));
  if (!sizes_match(t, sizes))
    throw InputError(str(op, ": ", name, " must have shape ", layout, " = ", want_str(sizes), ", got ",
                         shape_str(t.sizes())));
}

void expect_same_device(const char* op, const torch::Tensor& ref, const char* ref_name,
                        const std::vector<torch::Tensor>& ts, const std::vector<const char*>& names) {
  SUBQ_CHECK_EQ(ts.size(), names.size());
  for (size_t i = 0; i < ts.size(); ++i)
    if (ts[i].defined() && ts[i].device() != ref.device())
      throw InputError(str(op, ": ", names[i], " is on ", ts[i].device().str(), " but ", ref_name, " is on ",
                           ref.device().str(), "; move all arguments to one device"));
}

torch::ScalarType compute_dtype(torch::ScalarType input) {
  return input == torch::kDouble ? torch::kDouble : torch::kFloat;
}

}  // namespace subq::ops::detail
