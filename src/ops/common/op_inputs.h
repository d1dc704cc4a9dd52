// op_inputs.h — argument checks shared by the recurrence ops in src/ops/ (private to src/).
//
// Every public op validates its tensors up front and throws subq::InputError whose message names the op,
// the argument, the expected layout with the sizes it derived from the other arguments, and what it got,
// e.g. "mlstm_chunkwise: k must have shape [B, H, T, Dk] = [2, 4, 100, 64], got [2, 4, 99, 64]".
// Internal invariants (things no caller can cause) use SUBQ_CHECK, which throws InternalError.
//
// Compute dtype: ops compute in fp32 whatever the input dtype (bf16/fp16/fp32), except that fp64 inputs
// are computed in fp64 so that tests can check gradients by finite differences.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace subq::ops::detail {

// "[2, 4, 100, 64]"
std::string shape_str(at::IntArrayRef sizes);

// A defined floating-point tensor with exactly `sizes` (-1 = any size). `layout` names the dimensions,
// e.g. "[B, H, T, Dk]".
void expect_shape(const char* op, const char* name, const torch::Tensor& t, const std::vector<int64_t>& sizes,
                  const char* layout);
// A defined floating-point tensor with `ndim` dimensions (sizes checked later against the others).
void expect_ndim(const char* op, const char* name, const torch::Tensor& t, int64_t ndim, const char* layout);
// An optional bool mask: undefined, or a bool tensor of exactly `sizes`.
void expect_optional_mask(const char* op, const char* name, const torch::Tensor& t,
                          const std::vector<int64_t>& sizes, const char* layout);
// Every defined tensor in `ts` lives on the device of `ref` (names parallel to ts).
void expect_same_device(const char* op, const torch::Tensor& ref, const char* ref_name,
                        const std::vector<torch::Tensor>& ts, const std::vector<const char*>& names);
// fp64 for fp64 inputs, fp32 for everything else.
torch::ScalarType compute_dtype(torch::ScalarType input);

}  // namespace subq::ops::detail
