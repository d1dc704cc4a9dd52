// gdn_model_case.h — the small GDN model of the kernels-vs-references model check, shared by the GPU test
// (tests/gpu/test_kernels_gated_delta.cpp) and its CPU replay under the emulated kernels
// (tests/unit/test_gdn_model_kernels_emulated.cpp), so both check the same configuration.
#pragma once

#include "subq/models/model.h"

namespace subq::test {

// 2 layers, d_model 128, 2 heads of Dk 64 / Dv 128, beta in [0, 2], vocabulary 301.
inline models::ModelConfig gdn_model_case_config() {
  models::ModelConfig c;
  c.arch = "gdn";
  c.vocab_size = 301;
  c.d_model = 128;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 256;
  c.init_std = 0.05;
  c.gdn.head_dim = 64;
  c.gdn.expand_v = 2.0;  // Dk 64, Dv 128
  c.gdn.allow_neg_eigval = true;
  return c;
}

}  // namespace subq::test
