// gated_delta_internal.h — argument checking and q/k preparation shared by the Gated DeltaNet forms.
#pragma once

#include <torch/torch.h>

#include <string>

namespace subq::ops::detail {

struct GatedDeltaDims {
  int64_t batch, heads, time, key_dim, value_dim;
};

// Checks every argument of gated_delta_recurrent / gated_delta_chunkwise (see subq/ops/gated_delta.h)
// and returns the sizes; throws subq::InputError naming the argument and the expected layout.
GatedDeltaDims gated_delta_check(const std::string& op, const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                 const torch::Tensor& initial_state, const torch::Tensor& reset);

// q, k already in the compute dtype; when `normalize`, returns (q / |q| / sqrt(Dk), k / |k|) with
// |x| = sqrt(sum x^2 + 1e-6) over the last dimension, else (q, k) unchanged.
std::pair<torch::Tensor, torch::Tensor> gated_delta_prepare_qk(const torch::Tensor& q, const torch::Tensor& k,
                                                               bool normalize);

}  // namespace subq::ops::detail
