// op_testing.h — helpers for the op tests (tests/unit/test_ops_*.cpp): relative RMS error, finiteness,
// seeded random tensors, and a finite-difference gradient check (LibTorch C++ has no gradcheck).
// Including it makes the test binary use one intra-op thread: the op tests run thousands of tiny ops, for
// which OpenMP threads only spin against each other on a shared 2-core machine (measured: 65 s wall with
// 2 threads vs 4 s with 1 for test_ops_mlstm under load).
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace subq::test {

inline const bool kOpTestsSingleThreaded = [] {
  torch::set_num_threads(1);
  return true;
}();

// ||a - b|| / ||b|| in fp64; NaN when either side has a non-finite value (so a check `< tol` fails);
// when ||b|| == 0, returns ||a|| (absolute).
inline double rel_rms(const torch::Tensor& a, const torch::Tensor& b) {
  torch::NoGradGuard ng;
  auto ad = a.detach().to(torch::kDouble).cpu(), bd = b.detach().to(torch::kDouble).cpu();
  if (!torch::isfinite(ad).all().item<bool>() || !torch::isfinite(bd).all().item<bool>()) return std::nan("");
  double nb = bd.norm().item<double>();
  double nd = (ad - bd).norm().item<double>();
  return nb > 0 ? nd / nb : nd;
}

inline bool all_finite(const torch::Tensor& t) { return torch::isfinite(t.detach()).all().item<bool>(); }

// A generator-seeded normal tensor (fp64 values, then cast), so tests draw the same inputs everywhere.
inline torch::Tensor randn(at::IntArrayRef shape, uint64_t seed, double scale = 1.0, double shift = 0.0,
                           torch::ScalarType dtype = torch::kDouble) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return (at::normal(0.0, 1.0, shape, gen, torch::TensorOptions().dtype(torch::kDouble)) * scale + shift).to(dtype);
}

inline torch::Tensor rand_mask(at::IntArrayRef shape, uint64_t seed, double p) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::rand(shape, gen, torch::TensorOptions().dtype(torch::kDouble)).lt(p);
}

// sum_i <outs[i], w_i> with fixed random w_i (seeded by position): a scalar that depends on every output
// element, for gradient comparisons.
inline torch::Tensor project(const std::vector<torch::Tensor>& outs, uint64_t seed = 1234) {
  torch::Tensor loss;
  for (size_t i = 0; i < outs.size(); ++i) {
    auto w = randn(outs[i].sizes(), seed + i, 1.0, 0.0, torch::kDouble).to(outs[i].device());
    auto term = (outs[i].to(torch::kDouble) * w).sum();
    loss = loss.defined() ? loss + term : term;
  }
  return loss;
}

struct GradCheck {
  std::string name;
  double max_err = 0;    // max |autograd - finite difference| over the input's elements
  double max_grad = 0;   // max |finite difference| (the scale)
  bool ok(double tol) const { return std::isfinite(max_err) && max_err <= tol * (1.0 + max_grad); }
};

// Checks d f(inputs) / d inputs (f returns a scalar) against central differences, element by element, in
// fp64. inputs are copied to fp64 leaves; keep shapes tiny.
inline std::vector<GradCheck> grad_check(const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
                                         const std::vector<torch::Tensor>& inputs,
                                         const std::vector<std::string>& names, double eps = 1e-6) {
  std::vector<torch::Tensor> leaves;
  for (auto& x : inputs) leaves.push_back(x.detach().to(torch::kDouble).clone().requires_grad_(true));
  auto loss = f(leaves);
  auto grads = torch::autograd::grad({loss}, leaves, {}, false, false, /*allow_unused=*/true);
  std::vector<GradCheck> out;
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> probe;
  for (auto& x : leaves) probe.push_back(x.detach().clone().contiguous());
  for (size_t i = 0; i < leaves.size(); ++i) {
    GradCheck gc{names.at(i)};
    auto g = grads[i].defined() ? grads[i].contiguous() : torch::zeros_like(probe[i]);
    double* p = probe[i].data_ptr<double>();
    const double* gp = g.data_ptr<double>();
    for (int64_t e = 0; e < probe[i].numel(); ++e) {
      double keep = p[e];
      p[e] = keep + eps;
      double up = f(probe).item<double>();
      p[e] = keep - eps;
      double down = f(probe).item<double>();
      p[e] = keep;
      double fd = (up - down) / (2 * eps);
      gc.max_err = std::max(gc.max_err, std::abs(fd - gp[e]));
      if (!std::isfinite(fd) || !std::isfinite(gp[e])) gc.max_err = std::nan("");
      gc.max_grad = std::max(gc.max_grad, std::abs(fd));
    }
    out.push_back(gc);
  }
  return out;
}

}  // namespace subq::test
