// ops_testing.h — helpers for the recurrence-op tests (tests/unit/test_ops_*.cpp): relative RMS error
// with a finiteness check, autograd gradients of a scalar loss, and a finite-difference gradient check
// in fp64 (LibTorch C++ has no gradcheck).
//
// Non-obvious decisions:
//  * rel_rms(a, b) = ||a - b|| / ||b|| computed in fp64; a non-finite `a` fails before the error is
//    looked at, so NaN never passes (NaN comparisons are false, but we do not rely on that).
//    SUBQ_OPS_TEST_REPORT=1 prints every measured error to stderr (for lab notes).
//  * The finite-difference check perturbs up to `max_elems` entries per input (all of them on the tiny
//    shapes used, evenly spaced otherwise) with central differences, step 1e-6 in fp64, and compares
//    |numeric - autograd| <= atol + rtol * |numeric|.
//  * The op tests use tiny tensors: intra-op threads only add synchronisation, and on a shared, loaded
//    2-core CI machine their spinning made a test binary 10x slower in wall time (90 s vs 9 s), so the
//    test files pin LibTorch to one thread (use_one_cpu_thread at namespace scope).
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "subq_catch.h"

namespace subq::test {

inline bool use_one_cpu_thread() {
  torch::set_num_threads(1);
  return true;
}

inline double rel_rms(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor a64 = a.detach().to(torch::kCPU, torch::kFloat64);
  torch::Tensor b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  double den = b64.norm().item<double>();
  double num = (a64 - b64).norm().item<double>();
  return den == 0.0 ? num : num / den;
}

inline bool all_finite(const torch::Tensor& t) { return torch::isfinite(t.detach()).all().item<bool>(); }

// Requires `actual` finite, of `expected`'s shape, and rel_rms(actual, expected) < tol.
inline void require_close(const std::string& what, const torch::Tensor& actual, const torch::Tensor& expected,
                          double tol) {
  INFO(what);
  REQUIRE(actual.defined());
  REQUIRE(expected.defined());
  REQUIRE(actual.sizes() == expected.sizes());
  REQUIRE(all_finite(actual));
  REQUIRE(all_finite(expected));
  double e = rel_rms(actual, expected);
  INFO("relative RMS error " << e << " (tolerance " << tol << ")");
  if (std::getenv("SUBQ_OPS_TEST_REPORT")) std::fprintf(stderr, "[rel_rms] %.3e (tol %.0e) %s\n", e, tol, what.c_str());
  REQUIRE(e < tol);
}

// Gradients of loss_fn(inputs) w.r.t. every input (inputs are detached copies that require grad).
inline std::vector<torch::Tensor> grads_of(
    const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& loss_fn,
    const std::vector<torch::Tensor>& inputs) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  torch::Tensor loss = loss_fn(leaves);
  return torch::autograd::grad({loss}, leaves, /*grad_outputs=*/{}, /*retain_graph=*/false,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

// Central-difference check of autograd gradients; inputs must be fp64.
inline void fd_gradcheck(const std::string& what,
                         const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& loss_fn,
                         const std::vector<torch::Tensor>& inputs, const std::vector<std::string>& names,
                         int64_t max_elems = 1 << 30, double eps = 1e-6, double atol = 1e-7,
                         double rtol = 1e-5) {
  INFO(what);
  std::vector<torch::Tensor> analytic = grads_of(loss_fn, inputs);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("input " << names.at(i));
    REQUIRE(inputs[i].scalar_type() == torch::kFloat64);
    REQUIRE(analytic[i].defined());
    REQUIRE(all_finite(analytic[i]));
    torch::Tensor ana = analytic[i].reshape({-1});
    const int64_t n = inputs[i].numel();
    const int64_t stride = n > max_elems ? (n + max_elems - 1) / max_elems : 1;
    double max_err = 0.0;
    for (int64_t j = 0; j < n; j += stride) {
      std::vector<torch::Tensor> plus, minus;
      for (const auto& t : inputs) {
        plus.push_back(t.detach().clone());
        minus.push_back(t.detach().clone());
      }
      plus[i].view({-1})[j] += eps;
      minus[i].view({-1})[j] -= eps;
      double num = (loss_fn(plus).item<double>() - loss_fn(minus).item<double>()) / (2 * eps);
      double a = ana[j].item<double>();
      double err = std::abs(num - a);
      max_err = std::max(max_err, err);
      INFO("element " << j << ": numeric " << num << ", autograd " << a);
      REQUIRE(err <= atol + rtol * std::abs(num));
    }
    // a gradient that is zero everywhere would pass trivially; every input here influences the loss
    REQUIRE(ana.abs().max().item<double>() > 0.0);
  }
}

// sum(out * w) for a fixed random w of out's shape (fp64 weights cast to out's dtype).
inline torch::Tensor weighted_sum(const torch::Tensor& out, const torch::Tensor& w) {
  return (out * w.to(out.scalar_type())).sum();
}

}  // namespace subq::test
