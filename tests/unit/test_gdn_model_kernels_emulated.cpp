// test_gdn_model_kernels_emulated.cpp — the GPU test's "gdn model under bf16 autocast" case
// (tests/gpu/test_kernels_gated_delta.cpp) on the CPU: a whole GDN model whose gated_delta() calls run the v2
// kernels (device code under the emulator of tests/emu/cuda_emu.h, launcher table of
// tests/emu/gdn_v2_emu_launchers.h) through the real glue (detail::gated_delta_kernel_path), reached through
// the test hook detail::ScopedGatedDeltaOverride. CPU bf16 autocast stands in for CUDA's.
//
// Three runs as on the GPU: fp32 references (truth), kernels under bf16 autocast, references under bf16
// autocast; per parameter the gradient error vs truth, with the GPU test's criterion (kernel error <=
// max(2 x reference-under-autocast error, 1e-2)) applied to the RMS over model seeds 3..6 of each error (as
// the GPU test does now: one seed cannot judge the per-head decay parameters, see "Pooled" below and
// docs/perf/gated_delta.md). torch::manual_seed draws other weights and tokens on the CPU than on CUDA, so
// the numbers are not the GPU's; the precision regime is. Seed 3 at T 130 reproduces the GPU's single-seed
// failure (layer 1's A_log / dt_bias at 1.7x the allowed error).
//
// The always-on case is the GPU test's model at T = 130 (~45 s on 2 cores). The GPU's exact shape (T = 300)
// and the studies (attribution by op variants per layer and direction, the conditioning of the decay
// gradients, a seed sweep; SUBQ_GDN_MODEL_T / SUBQ_GDN_MODEL_SEEDS) are hidden ([.study]).
// SUBQ_OPS_TEST_REPORT=1 prints every parameter's errors in the always-on case too.
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "op_testing.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/models/model.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/gdn_v2_emu_launchers.h"
#include "gdn_model_case.h"

namespace {

using torch::Tensor;
namespace d = subq::ops::detail;
using subq::test::gdn_v2_emu::kEmulated;

bool report_all() {
  const char* v = std::getenv("SUBQ_OPS_TEST_REPORT");
  return v != nullptr && std::string(v) == "1";
}

struct Model {
  subq::models::ModelConfig cfg;
  std::shared_ptr<subq::models::LanguageModel> m;
  Tensor tok, doc;
  int64_t T = 0;
};

// The GPU test's model and inputs (same config and seed), on the CPU, T tokens per row.
Model gpu_case_model(int64_t T, uint64_t seed = 3) {
  Model r;
  r.cfg = subq::test::gdn_model_case_config();
  torch::manual_seed(seed);
  r.m = subq::models::create_model(r.cfg);
  r.tok = torch::randint(0, 301, {2, T}, torch::TensorOptions().dtype(torch::kInt64));
  r.doc = torch::zeros({2, T}, torch::TensorOptions().dtype(torch::kBool));
  r.doc.index_put_({0, std::min<int64_t>(100, T - 1)}, true);
  r.T = T;
  return r;
}

struct Out {
  Tensor logits;
  std::vector<Tensor> grads;
};

// One forward + backward of the GPU test's loss; `op` (when set) replaces every gated_delta() call.
Out run(Model& M, bool autocast, const d::GatedDeltaOverride& op) {
  subq::test::OpsImplEnv env;
  env.set("reference");
  std::unique_ptr<d::ScopedGatedDeltaOverride> hook;
  if (op) hook = std::make_unique<d::ScopedGatedDeltaOverride>(op);
  M.m->zero_grad();
  Out o;
  {
    std::unique_ptr<subq::AutocastGuard> ac;
    if (autocast) ac = std::make_unique<subq::AutocastGuard>(torch::Device(torch::kCPU), torch::kBFloat16);
    o.logits = M.m->forward(M.tok, M.doc);
  }
  const int64_t n = 2 * M.T - 1;
  const Tensor loss = torch::nn::functional::cross_entropy(
      o.logits.to(torch::kFloat32).reshape({-1, 301}).narrow(0, 0, n), M.tok.reshape({-1}).narrow(0, 1, n));
  loss.backward();
  for (const auto& p : M.m->parameters()) o.grads.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
  return o;
}

// The kernel path with the emulated launchers (the GPU's v2 for bf16 q, k, v).
subq::ops::GatedDeltaResult emulated_kernels(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                             const Tensor& beta, const Tensor& s0, const Tensor& reset,
                                             const subq::ops::GatedDeltaOptions& o) {
  return d::gated_delta_kernel_path(kEmulated, q, k, v, g, beta, s0, reset, o.l2_normalize_qk);
}

struct Comparison {
  double worst_excess = 0;
  std::string worst;
  std::vector<std::string> names;
  std::vector<double> ek, er;
};

// Per-parameter errors of `kern` and `ref` vs `truth`, printed as the GPU test prints them.
Comparison compare(const Model& M, const Out& truth, const Out& kern, const Out& ref, const std::string& label,
                   bool print) {
  Comparison c;
  const auto names = M.m->named_parameters().keys();
  for (size_t i = 0; i < kern.grads.size(); ++i) {
    if (!kern.grads[i].defined() || !truth.grads[i].defined()) continue;
    const double ek = subq::test::rel_rms(kern.grads[i], truth.grads[i]);
    const double er = subq::test::rel_rms(ref.grads[i], truth.grads[i]);
    const double excess = ek / std::max(2 * er, 1e-2);
    c.names.push_back(names[i]);
    c.ek.push_back(ek);
    c.er.push_back(er);
    if (print)
      std::printf("[gdn-model-emu] %s grad %s: kernels %.4g reference-autocast %.4g ratio to allowed %.3g\n",
                  label.c_str(), names[i].c_str(), ek, er, excess);
    if (excess > c.worst_excess) c.worst_excess = excess, c.worst = names[i];
  }
  std::printf("[gdn-model-emu] %s: worst ratio to allowed %.3g (%s); logits kernels %.4g reference-autocast %.4g\n",
              label.c_str(), c.worst_excess, c.worst.c_str(), subq::test::rel_rms(kern.logits, truth.logits),
              subq::test::rel_rms(ref.logits, truth.logits));
  return c;
}

}  // namespace

namespace {

using Op = std::function<subq::ops::GatedDeltaResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                     const Tensor&, const Tensor&, const Tensor&,
                                                     const subq::ops::GatedDeltaOptions&)>;

subq::ops::GatedDeltaResult reference_op(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                         const Tensor& beta, const Tensor& s0, const Tensor& reset,
                                         const subq::ops::GatedDeltaOptions& o) {
  return subq::ops::gated_delta_chunkwise(q, k, v, g, beta, s0, reset, o);
}

// `a` in the layers where use_a(layer) holds, else `b` (calls alternate layer 0, 1, ... in each forward).
d::GatedDeltaOverride per_layer(std::function<bool(int)> use_a, Op a, Op b, int n_layers) {
  auto calls = std::make_shared<int>(0);
  return [=](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
             const Tensor& s0, const Tensor& reset, const subq::ops::GatedDeltaOptions& o) {
    const int layer = (*calls)++ % n_layers;
    return use_a(layer) ? a(q, k, v, g, beta, s0, reset, o) : b(q, k, v, g, beta, s0, reset, o);
  };
}

// Forward values of `fv`, gradients of `bv` (taken at bv's own forward): o = bv + (fv - bv).detach().
Op values_of_grads_of(Op fv, Op bv) {
  return [=](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
             const Tensor& s0, const Tensor& reset, const subq::ops::GatedDeltaOptions& o) {
    const auto f = fv(q, k, v, g, beta, s0, reset, o);
    const auto b = bv(q, k, v, g, beta, s0, reset, o);
    subq::ops::GatedDeltaResult r;
    r.o = b.o + (f.o.to(b.o.scalar_type()) - b.o).detach();
    r.final_state = b.final_state + (f.final_state.to(b.final_state.scalar_type()) - b.final_state).detach();
    return r;
  };
}

// The reference with the glue's input rounding: q, k normalised in fp32, then rounded to the operand dtype.
subq::ops::GatedDeltaResult reference_qk_rounded(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                                 const Tensor& beta, const Tensor& s0, const Tensor& reset,
                                                 const subq::ops::GatedDeltaOptions& o) {
  auto [q32, k32] = d::gated_delta_prepare_qk(q.to(torch::kFloat32), k.to(torch::kFloat32), o.l2_normalize_qk);
  subq::ops::GatedDeltaOptions o2 = o;
  o2.l2_normalize_qk = false;
  return subq::ops::gated_delta_chunkwise(q32.to(q.scalar_type()), k32.to(q.scalar_type()), v, g, beta, s0, reset,
                                          o2);
}

// The reference in fp32 inside the op (autocast off around it), o back in q's dtype.
subq::ops::GatedDeltaResult reference_fp32(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                           const Tensor& beta, const Tensor& s0, const Tensor& reset,
                                           const subq::ops::GatedDeltaOptions& o) {
  const bool was = at::autocast::is_autocast_enabled(torch::kCPU);
  at::autocast::set_autocast_enabled(torch::kCPU, false);
  auto r = subq::ops::gated_delta_chunkwise(q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32),
                                            g, beta, s0, reset, o);
  at::autocast::set_autocast_enabled(torch::kCPU, was);
  r.o = r.o.to(q.scalar_type());
  return r;
}

void print_decay(const Model& M, const Out& truth, const Out& ref, const Out& x, const std::string& label) {
  const auto names = M.m->named_parameters().keys();
  std::string line;
  for (size_t i = 0; i < x.grads.size(); ++i) {
    const std::string& n = names[i];
    if (n.find("A_log") == std::string::npos && n.find("dt_bias") == std::string::npos) continue;
    const double e = subq::test::rel_rms(x.grads[i], truth.grads[i]);
    const double er = subq::test::rel_rms(ref.grads[i], truth.grads[i]);
    line += subq::str(" ", n, " ", e, " (", e / std::max(2 * er, 1e-2), ")");
  }
  std::printf("[gdn-model-emu] %-40s%s\n", label.c_str(), line.c_str());
}

// The GPU test's criterion, pooled over model seeds: per parameter, the RMS over seeds of the relative gradient
// errors vs truth, kernels <= max(2 x reference-under-autocast, 1e-2). A single seed is not enough for the
// per-head decay parameters (A_log, dt_bias: one value per head, each a sum over every token with heavy
// cancellation): their error vs truth is a 2-sample statistic that roundings anywhere in the model move, and
// the reference under autocast is sometimes far closer to truth by chance (seed 3 here: layer 1's A_log
// 6.1e-3, while the kernels have 2.1e-2 and the reference with an fp32 op 5.5e-2; see the [.study] cases).
struct Pooled {
  std::vector<std::string> names;
  std::vector<double> k2, r2;  // sums over seeds of squared relative errors
  int seeds = 0;
};

void pool(Pooled& P, const Model& M, const Out& truth, const Out& kern, const Out& ref) {
  const auto names = M.m->named_parameters().keys();
  if (P.names.empty()) P.names = names, P.k2.assign(names.size(), 0), P.r2.assign(names.size(), 0);
  for (size_t i = 0; i < names.size(); ++i) {
    if (!kern.grads[i].defined() || !truth.grads[i].defined()) continue;
    P.k2[i] += std::pow(subq::test::rel_rms(kern.grads[i], truth.grads[i]), 2);
    P.r2[i] += std::pow(subq::test::rel_rms(ref.grads[i], truth.grads[i]), 2);
  }
  ++P.seeds;
}

double pooled_worst(const Pooled& P, const std::string& label, bool print) {
  double worst = 0;
  std::string which;
  for (size_t i = 0; i < P.names.size(); ++i) {
    const double ek = std::sqrt(P.k2[i] / P.seeds), er = std::sqrt(P.r2[i] / P.seeds);
    const double excess = ek / std::max(2 * er, 1e-2);
    if (print)
      std::printf("[gdn-model-emu] %s pooled grad %s: kernels %.4g reference-autocast %.4g ratio to allowed %.3g\n",
                  label.c_str(), P.names[i].c_str(), ek, er, excess);
    if (excess > worst) worst = excess, which = P.names[i];
  }
  std::printf("[gdn-model-emu] %s: %d seeds pooled, worst ratio to allowed %.3g (%s)\n", label.c_str(), P.seeds,
              worst, which.c_str());
  return worst;
}

}  // namespace

TEST_CASE("gdn model under bf16 autocast through the emulated v2 kernels "
          "(GPU model case at T 130 pooled over 4 seeds)",
          "[ops][gated_delta][kernels][model]") {
  Pooled P;
  for (uint64_t seed = 3; seed <= 6; ++seed) {
    Model M = gpu_case_model(130, seed);
    const Out truth = run(M, false, {});
    const Out kern = run(M, true, emulated_kernels);
    const Out ref = run(M, true, {});
    const Comparison c = compare(M, truth, kern, ref, subq::str("T130 seed ", seed), report_all());
    pool(P, M, truth, kern, ref);
    // the same model with every gated_delta() on the reference gives the reference's gradients exactly:
    // the hook and its removal change nothing else
    if (seed == 3) {
      const Out again = run(M, true, reference_op);
      for (size_t i = 0; i < ref.grads.size(); ++i)
        if (ref.grads[i].defined()) CHECK(torch::equal(again.grads[i], ref.grads[i]));
    }
    CHECK(c.worst_excess < 10.0);  // single seeds: no gross outlier (see above for why not the 2x bar)
  }
  CHECK(pooled_worst(P, "T130", report_all()) <= 1.0);
  CHECK(!at::autocast::is_autocast_enabled(torch::kCPU));
  CHECK(d::gated_delta_override() == nullptr);
}

TEST_CASE("gdn model under bf16 autocast through the emulated v2 kernels "
          "(GPU model case at T 300 pooled over 4 seeds)",
          "[.study][gated_delta][model]") {
  Pooled P;
  for (uint64_t seed = 3; seed <= 6; ++seed) {
    Model M = gpu_case_model(300, seed);
    const Out truth = run(M, false, {});
    const Out kern = run(M, true, emulated_kernels);
    const Out ref = run(M, true, {});
    compare(M, truth, kern, ref, subq::str("T300 seed ", seed), seed == 3);
    pool(P, M, truth, kern, ref);
  }
  CHECK(pooled_worst(P, "T300", true) <= 1.0);
}

TEST_CASE("gdn model decay gradients: which part of the op moves them", "[.study][gated_delta][model]") {
  const char* tv = std::getenv("SUBQ_GDN_MODEL_T");
  Model M = gpu_case_model(tv ? std::atoll(tv) : 300);
  const Out truth = run(M, false, {});
  const Out ref = run(M, true, {});
  const Op K = emulated_kernels, R = reference_op;
  const int nl = 2;
  print_decay(M, truth, ref, ref, "reference-autocast");
  print_decay(M, truth, ref, run(M, true, emulated_kernels), "kernels everywhere");
  print_decay(M, truth, ref, run(M, true, per_layer([](int l) { return l == 0; }, K, R, nl)), "kernels layer 0 only");
  print_decay(M, truth, ref, run(M, true, per_layer([](int l) { return l == 1; }, K, R, nl)), "kernels layer 1 only");
  print_decay(M, truth, ref, run(M, true, values_of_grads_of(K, R)), "kernel fwd values, reference bwd");
  print_decay(M, truth, ref, run(M, true, values_of_grads_of(R, K)), "reference fwd values, kernel bwd");
  print_decay(M, truth, ref, run(M, true, reference_qk_rounded), "reference on bf16 normalised q/k");
  print_decay(M, truth, ref, run(M, true, reference_fp32), "reference fp32 inside the op");
  // Conditioning of the decay gradients in truth: A_log's gradient per head is sum_{b,t} dg_t g_t; the ratio
  // sum |dg_t g_t| / |sum dg_t g_t| says how much a relative error of the per-token terms is amplified. And
  // the per-token dL/dg each layer's op receives in backward (kernels vs reference under autocast, vs truth).
  struct Captured {
    std::vector<Tensor> g, dg;
  };
  auto capturing = [nl](Op inner, Captured& c) -> d::GatedDeltaOverride {
    auto calls = std::make_shared<int>(0);
    c.g.assign(nl, Tensor());
    c.dg.assign(nl, Tensor());
    return [inner, calls, &c, nl](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                  const Tensor& beta, const Tensor& s0, const Tensor& reset,
                                  const subq::ops::GatedDeltaOptions& o) {
      const int layer = (*calls)++ % nl;
      c.g[layer] = g.detach().clone();
      g.register_hook([&c, layer](Tensor grad) { c.dg[layer] = grad.detach().clone(); });
      return inner(q, k, v, g, beta, s0, reset, o);
    };
  };
  Captured ct, ck, cr;
  run(M, false, capturing(R, ct));
  run(M, true, capturing(K, ck));
  run(M, true, capturing(R, cr));
  for (int l = 0; l < nl; ++l) {
    const Tensor terms = (ct.dg[l] * ct.g[l]).to(torch::kDouble);  // [B, H, T]
    const std::vector<int64_t> dims{0, 2};
    const Tensor total = terms.sum(dims), magnitude = terms.abs().sum(dims);
    for (int64_t h = 0; h < total.size(0); ++h) {
      const double t = total[h].item<double>(), a = magnitude[h].item<double>();
      std::printf("[gdn-model-emu] layer %d head %lld: sum dg g %.4g, sum |dg g| %.4g, amplification %.3g\n", l,
                  static_cast<long long>(h), t, a, a / std::abs(t));
    }
    std::printf("[gdn-model-emu] layer %d per-token dL/dg vs truth: kernels %.4g reference-autocast %.4g\n", l,
                subq::test::rel_rms(ck.dg[l], ct.dg[l]), subq::test::rel_rms(cr.dg[l], ct.dg[l]));
  }
}

TEST_CASE("gdn model decay gradients across seeds", "[.study][gated_delta][model]") {
  const char* tv = std::getenv("SUBQ_GDN_MODEL_T");
  const char* nv = std::getenv("SUBQ_GDN_MODEL_SEEDS");
  const int64_t T = tv ? std::atoll(tv) : 130;
  const int seeds = nv ? std::atoi(nv) : 10;
  int fail_k = 0, fail_f = 0, n = 0;
  double log_k = 0, log_f = 0;
  for (int s = 1; s <= seeds; ++s) {
    Model M = gpu_case_model(T, static_cast<uint64_t>(s));
    const Out truth = run(M, false, {}), ref = run(M, true, {});
    const Out kern = run(M, true, emulated_kernels), f32 = run(M, true, reference_fp32);
    const auto names = M.m->named_parameters().keys();
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i].find("A_log") == std::string::npos) continue;
      const double er = subq::test::rel_rms(ref.grads[i], truth.grads[i]);
      const double ek = subq::test::rel_rms(kern.grads[i], truth.grads[i]);
      const double ef = subq::test::rel_rms(f32.grads[i], truth.grads[i]);
      const double allowed = std::max(2 * er, 1e-2);
      fail_k += ek > allowed;
      fail_f += ef > allowed;
      log_k += std::log(ek / er);
      log_f += std::log(ef / er);
      ++n;
      std::printf("[gdn-model-emu] seed %d %s: kernels %.3g reference-autocast %.3g reference-fp32-op %.3g "
                  "(ratio to allowed: kernels %.2f fp32-op %.2f)\n",
                  s, names[i].c_str(), ek, er, ef, ek / allowed, ef / allowed);
    }
  }
  std::printf("[gdn-model-emu] T %lld, %d A_log gradients: over the GPU criterion: kernels %d, fp32 op %d; "
              "geometric mean of error / reference-autocast error: kernels %.3g, fp32 op %.3g\n",
              static_cast<long long>(T), n, fail_k, fail_f, std::exp(log_k / n), std::exp(log_f / n));
}

#else
TEST_CASE("gdn model through the emulated v2 kernels", "[ops][gated_delta][kernels][model]") {
  SUBQ_SKIP("the CPU emulator needs the CUDA headers (SUBQ_WITH_CUDA)");
}
#endif
