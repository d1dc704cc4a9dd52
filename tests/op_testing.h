// op_testing.h — helpers for the recurrence-op tests (tests/unit/test_ops_*.cpp, later tests/gpu/): the
// relative RMS error of DESIGN.md with a finiteness check, seeded random tensors, a scalar projection of
// outputs for gradient comparisons, autograd gradients, and finite-difference gradient checks in fp64
// (LibTorch C++ has no gradcheck).
//
// Non-obvious decisions:
//  * rel_rms(a, b) = ||a - b|| / ||b|| in fp64; NaN when either side has a non-finite value, so a check
//    `rel_rms(...) < tol` fails on NaN (NaN never passes); ||b|| == 0 gives ||a - b|| (absolute).
//    require_close() also checks shapes and finiteness explicitly for a readable failure.
//    SUBQ_OPS_TEST_REPORT=1 prints every measured error to stderr (for lab notes).
//  * Including this header pins LibTorch to one intra-op thread: the op tests run thousands of tiny ops
//    for which OpenMP threads only spin against each other on a shared, loaded 2-core machine (measured:
//    test_ops_mlstm 65 s wall with 2 threads vs 4 s with 1).
//  * Two finite-difference front ends share one central-difference core: fd_gradcheck() requires
//    |numeric - autograd| <= atol + rtol * |numeric| per element (and a gradient that is not all zero),
//    grad_check() returns the worst error per input for the caller to judge against the gradient scale.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "subq_catch.h"

namespace subq::test {

using ScalarFn = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// SUBQ_OPS_IMPL (the ops' dispatch, subq/ops/ops_impl.h) for the scope of a test: set(v) sets it, set(nullptr)
// unsets it, and the destructor restores what the process had — also when a REQUIRE or an exception
// leaves the test early.
class OpsImplEnv {
 public:
  OpsImplEnv() {
    const char* v = std::getenv("SUBQ_OPS_IMPL");
    had_ = v != nullptr;
    if (had_) saved_ = v;
  }
  OpsImplEnv(const OpsImplEnv&) = delete;
  OpsImplEnv& operator=(const OpsImplEnv&) = delete;
  ~OpsImplEnv() { set(had_ ? saved_.c_str() : nullptr); }
  void set(const char* v) const {
    if (v)
      ::setenv("SUBQ_OPS_IMPL", v, 1);
    else
      ::unsetenv("SUBQ_OPS_IMPL");
  }

 private:
  bool had_ = false;
  std::string saved_;
};

inline const bool kOpTestsSingleThreaded = [] {
  torch::set_num_threads(1);
  return true;
}();

inline bool all_finite(const torch::Tensor& t) { return torch::isfinite(t.detach()).all().item<bool>(); }

inline double rel_rms(const torch::Tensor& a, const torch::Tensor& b) {
  torch::NoGradGuard ng;
  auto ad = a.detach().to(torch::kCPU, torch::kDouble), bd = b.detach().to(torch::kCPU, torch::kDouble);
  if (!all_finite(ad) || !all_finite(bd)) return std::nan("");
  const double nb = bd.norm().item<double>();
  const double nd = (ad - bd).norm().item<double>();
  return nb > 0 ? nd / nb : nd;
}

// Relative RMS errors of one kernel-vs-reference comparison, printed as one line tagged `tag` (so a
// failing GPU log says which tensor, shape and setting went wrong) and checked afterwards; a missing or
// mis-shaped tensor counts as NaN, which never passes.
class ErrorReport {
 public:
  explicit ErrorReport(std::string tag) : tag_(std::move(tag)) {}
  void add(const std::string& name, const torch::Tensor& got, const torch::Tensor& want, double tol) {
    double e = std::nan("");
    if (got.defined() && want.defined() && got.sizes() == want.sizes()) e = rel_rms(got, want);
    add_value(name, e, tol);
  }
  // An error computed by the caller (another criterion), with an optional note for the printed line.
  void add_value(const std::string& name, double error, double tol, const std::string& note = "") {
    std::ostringstream o;
    o << " " << name << " " << error << note;
    line_ += o.str();
    errs_.emplace_back(name, error);
    tols_.push_back(tol);
  }
  void check(const std::string& what) const {
    std::printf("[%s] %s:%s\n", tag_.c_str(), what.c_str(), line_.c_str());
    std::fflush(stdout);
    for (size_t i = 0; i < errs_.size(); ++i) {
      INFO(what << ": " << errs_[i].first << " relative RMS error " << errs_[i].second << " (tolerance " << tols_[i]
                << ")");
      CHECK(errs_[i].second < tols_[i]);
    }
  }

 private:
  std::string tag_, line_;
  std::vector<std::pair<std::string, double>> errs_;
  std::vector<double> tols_;
};

// Requires `actual` finite, of `expected`'s shape, and rel_rms(actual, expected) < tol.
inline void require_close(const std::string& what, const torch::Tensor& actual, const torch::Tensor& expected,
                          double tol) {
  INFO(what);
  REQUIRE(actual.defined());
  REQUIRE(expected.defined());
  REQUIRE(actual.sizes() == expected.sizes());
  REQUIRE(all_finite(actual));
  REQUIRE(all_finite(expected));
  const double e = rel_rms(actual, expected);
  INFO("relative RMS error " << e << " (tolerance " << tol << ")");
  if (std::getenv("SUBQ_OPS_TEST_REPORT")) std::fprintf(stderr, "[rel_rms] %.3e (tol %.0e) %s\n", e, tol, what.c_str());
  REQUIRE(e < tol);
}

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

// Packed-document flags [b, t] for the chunked kernels' tests: ~2% random starts plus starts at the awkward
// places of a 64-token chunking (a chunk's last and first token, just after a boundary, the last token) in
// row 0, and a start at t = 0 in row 1 (which discards an initial state).
inline torch::Tensor chunk_edge_resets(int64_t b, int64_t t, uint64_t seed) {
  torch::Tensor r = rand_mask({b, t}, seed, 0.02);
  auto a = r.accessor<bool, 2>();
  for (int64_t pos : {int64_t{63}, int64_t{64}, int64_t{66}, int64_t{130}, t - 1})
    if (pos > 0 && pos < t) a[0][pos] = true;
  if (b > 1) a[1][0] = true;
  return r;
}

// sum_i <outs[i], w_i> with fixed random w_i (seeded by position): a scalar that depends on every output
// element, for gradient comparisons.
inline torch::Tensor project(const std::vector<torch::Tensor>& outs, uint64_t seed = 1234) {
  torch::Tensor loss;
  for (size_t i = 0; i < outs.size(); ++i) {
    auto w = randn(outs[i].sizes(), seed + i).to(outs[i].device());
    auto term = (outs[i].to(torch::kDouble) * w).sum();
    loss = loss.defined() ? loss + term : term;
  }
  return loss;
}

// sum(out * w) for a fixed weight tensor w of out's shape (cast to out's dtype).
inline torch::Tensor weighted_sum(const torch::Tensor& out, const torch::Tensor& w) {
  return (out * w.to(out.scalar_type())).sum();
}

// Gradients of loss_fn(inputs) w.r.t. every input (inputs become detached copies that require grad);
// an input the loss does not use gets an undefined gradient.
inline std::vector<torch::Tensor> grads_of(const ScalarFn& loss_fn, const std::vector<torch::Tensor>& inputs) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  torch::Tensor loss = loss_fn(leaves);
  return torch::autograd::grad({loss}, leaves, /*grad_outputs=*/{}, /*retain_graph=*/false,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

// The central-difference core: for input i (fp64), calls visit(element, numeric) for every `stride`-th
// element, with numeric = (f(x + eps e) - f(x - eps e)) / (2 eps).
inline void central_differences(const ScalarFn& f, const std::vector<torch::Tensor>& inputs, size_t i,
                                int64_t max_elems, double eps,
                                const std::function<void(int64_t, double)>& visit) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> probe;
  for (const auto& x : inputs) probe.push_back(x.detach().to(torch::kDouble).clone().contiguous());
  double* p = probe[i].data_ptr<double>();
  const int64_t n = probe[i].numel();
  const int64_t stride = n > max_elems ? (n + max_elems - 1) / max_elems : 1;
  for (int64_t e = 0; e < n; e += stride) {
    const double keep = p[e];
    p[e] = keep + eps;
    const double up = f(probe).item<double>();
    p[e] = keep - eps;
    const double down = f(probe).item<double>();
    p[e] = keep;
    visit(e, (up - down) / (2 * eps));
  }
}

// Requires every autograd gradient to match central differences element-wise (inputs must be fp64):
// |numeric - autograd| <= atol + rtol * |numeric|; checks up to max_elems evenly spaced elements per input
// and that no gradient is identically zero (every input here must influence the loss).
inline void fd_gradcheck(const std::string& what, const ScalarFn& loss_fn, const std::vector<torch::Tensor>& inputs,
                         const std::vector<std::string>& names, int64_t max_elems = 1 << 30, double eps = 1e-6,
                         double atol = 1e-7, double rtol = 1e-5) {
  INFO(what);
  std::vector<torch::Tensor> analytic = grads_of(loss_fn, inputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("input " << names.at(i));
    REQUIRE(inputs[i].scalar_type() == torch::kFloat64);
    REQUIRE(analytic[i].defined());
    REQUIRE(all_finite(analytic[i]));
    torch::Tensor ana = analytic[i].reshape({-1});
    central_differences(loss_fn, inputs, i, max_elems, eps, [&](int64_t e, double num) {
      const double a = ana[e].item<double>();
      INFO("element " << e << ": numeric " << num << ", autograd " << a);
      REQUIRE(std::abs(num - a) <= atol + rtol * std::abs(num));
    });
    REQUIRE(ana.abs().max().item<double>() > 0.0);
  }
}

// Every defined tensor of v in dtype dt (undefined ones stay undefined).
inline std::vector<torch::Tensor> cast_all(const std::vector<torch::Tensor>& v, torch::ScalarType dt) {
  std::vector<torch::Tensor> out;
  for (const auto& t : v) out.push_back(t.defined() ? t.to(dt) : t);
  return out;
}

// A chunkwise form of an op against its recurrent form evaluated in fp64, on the fp64 inputs v64: the
// chunkwise form in fp32 within 1e-5 of the reference (outputs and every input gradient), in fp64 within
// 1e-10 (gradients) and 1e-12 (outputs). outputs(r) names the result's tensors in a fixed order, e.g.
// {{"o", r.o}, {"final state", r.final_state}}; the gradients are of sum_i <output_i, w_i> with fixed
// random fp64 weights w_i drawn in that order. names: the inputs' names, for the messages.
template <typename R>
void compare_chunkwise_to_recurrent(
    const std::function<R(const std::vector<torch::Tensor>&)>& recurrent_fn,
    const std::function<R(const std::vector<torch::Tensor>&)>& chunkwise_fn,
    const std::function<std::vector<std::pair<std::string, torch::Tensor>>(const R&)>& outputs,
    const std::vector<torch::Tensor>& v64, const std::vector<std::string>& names) {
  const std::vector<torch::Tensor> v32 = cast_all(v64, torch::kFloat32);
  const auto ref = outputs(recurrent_fn(v64));
  const auto got = outputs(chunkwise_fn(v32));
  for (size_t i = 0; i < ref.size(); ++i) {
    REQUIRE(got[i].second.scalar_type() == torch::kFloat32);
    require_close(ref[i].first + " (fp32 chunkwise vs fp64 recurrent)", got[i].second, ref[i].second, 1e-5);
  }
  std::vector<torch::Tensor> w;
  for (const auto& o : ref) w.push_back(torch::randn(o.second.sizes(), torch::kFloat64));
  auto loss_of = [&](const std::function<R(const std::vector<torch::Tensor>&)>& fn) {
    return [&, fn](const std::vector<torch::Tensor>& v) {
      const auto outs = outputs(fn(v));
      torch::Tensor loss = weighted_sum(outs[0].second, w[0]);
      for (size_t i = 1; i < outs.size(); ++i) loss = loss + weighted_sum(outs[i].second, w[i]);
      return loss;
    };
  };
  const auto g_ref = grads_of(loss_of(recurrent_fn), v64);
  const auto g32 = grads_of(loss_of(chunkwise_fn), v32);
  const auto g64 = grads_of(loss_of(chunkwise_fn), v64);
  for (size_t i = 0; i < g_ref.size(); ++i) {
    require_close("grad " + names.at(i) + " (fp32 chunkwise vs fp64 recurrent)", g32[i], g_ref[i], 1e-5);
    require_close("grad " + names.at(i) + " (fp64 chunkwise vs fp64 recurrent)", g64[i], g_ref[i], 1e-10);
  }
  const auto got64 = outputs(chunkwise_fn(v64));
  for (size_t i = 0; i < ref.size(); ++i)
    require_close(ref[i].first + " (fp64 chunkwise vs fp64 recurrent)", got64[i].second, ref[i].second, 1e-12);
}

struct GradCheck {
  std::string name;
  double max_err = 0;   // max |autograd - finite difference| over the input's elements
  double max_grad = 0;  // max |finite difference| (the scale)
  bool ok(double tol) const { return std::isfinite(max_err) && max_err <= tol * (1.0 + max_grad); }
};

// The worst |autograd - finite difference| per input, every element, in fp64 (inputs are copied to fp64).
inline std::vector<GradCheck> grad_check(const ScalarFn& f, const std::vector<torch::Tensor>& inputs,
                                         const std::vector<std::string>& names, double eps = 1e-6) {
  std::vector<torch::Tensor> fp64;
  for (const auto& x : inputs) fp64.push_back(x.detach().to(torch::kDouble));
  auto grads = grads_of(f, fp64);
  std::vector<GradCheck> out;
  for (size_t i = 0; i < fp64.size(); ++i) {
    GradCheck gc{names.at(i)};
    auto g = (grads[i].defined() ? grads[i] : torch::zeros_like(fp64[i])).reshape({-1}).contiguous();
    const double* gp = g.data_ptr<double>();
    central_differences(f, fp64, i, 1 << 30, eps, [&](int64_t e, double fd) {
      gc.max_err = std::max(gc.max_err, std::abs(fd - gp[e]));
      if (!std::isfinite(fd) || !std::isfinite(gp[e])) gc.max_err = std::nan("");
      gc.max_grad = std::max(gc.max_grad, std::abs(fd));
    });
    out.push_back(gc);
  }
  return out;
}

}  // namespace subq::test
