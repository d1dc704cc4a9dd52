// test_mlstm_gpu_cases_emulated.cpp — the gradient cases of the GPU test tests/gpu/test_kernels_mlstm.cpp
// replayed on the CPU, value for value (tests/mlstm_gpu_cases.h), through the kernel emulator: the Torch glue
// of src/ops/mlstm/mlstm_cuda.cpp with the emulated launchers (tests/emu/mlstm_emu_launchers.h), against the
// fp32 chunkwise reference (what the GPU test compares with) and an fp64 ground truth (the recurrence in
// fp64 for T <= 200, the chunkwise form in fp64 beyond; autograd through the stabiliser's max in both) and
// an fp64 recurrence with every m held constant (what the backward kernels differentiate; T <= 200).
// This separates a kernel error, an ill-conditioned quantity (kernel and reference far apart, the difference
// small against the size of the terms summed, tests/mlstm_gpu_cases.h), the design's
// m-constant approximation, and a GPU-only effect (the emulator agrees where the GPU did not). Each case
// prints every tensor's errors and the tokens that carry dq's and h's error (with m, qn and the floor).
// Findings for the H200 run of 17ac015 and the precision fixes after it: docs/perf/mlstm.md, "H200 gradient
// failures".
//
// The T = 1 cases run in the CPU suite (they are cheap); the others are hidden ("[.]" tag; ~10 s to ~8 min
// each under the emulator; the fp16 case is left out: the emulated fp16 backward exists for Dk = 64 only): run
// them with
//   build/tests/test_mlstm_gpu_cases_emulated "[mlstm-gpu-replay]"
// and pick cases with SUBQ_MLSTM_CASES=i,j,... (indices into mlstm_cases::grad_cases(), printed per line).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/mlstm_emu_launchers.h"
#include "mlstm_gpu_cases.h"

namespace {

using torch::Tensor;
namespace mc = subq::test::mlstm_cases;

enum class Impl { kKernel, kRef32, kTruth64, kConst64 };

struct Run {
  Tensor h;
  std::vector<Tensor> g;  // dq, dk, dv, dig, dfg (, dc0, dn0, dm0), fp64 on the CPU
};

const std::vector<std::string>& grad_names() {
  static const std::vector<std::string> n = {"dq", "dk", "dv", "dig", "dfg", "dc0", "dn0", "dm0"};
  return n;
}

// The recurrence in fp64 with every stabiliser m_t held constant (computed without gradient; only m0's
// scaling of the initial state keeps its gradient): the function whose gradients the backward kernels
// compute (docs/perf/mlstm.md, "Backward"). Its difference from the true fp64 gradients is the term the
// kernels drop by design (the 1e-6 exp(m_t) of the denominator and m's path through the max); the kernels'
// difference from it is their own numerical error. Leaves l: q, k, v, ig, fg (, c0, n0, m0), fp64.
subq::ops::MlstmResult m_constant_recurrence(const std::vector<Tensor>& l, const mc::Case& c, const Tensor& reset) {
  const auto d = torch::kDouble;
  const Tensor q = l[0] / std::sqrt(static_cast<double>(c.dk));
  const Tensor lf = torch::log_sigmoid(l[4]);
  Tensor C = c.init ? l[5] : torch::zeros({c.b, c.h, c.dk, c.dv}, d);
  Tensor n = c.init ? l[6] : torch::zeros({c.b, c.h, c.dk}, d);
  Tensor m = c.init ? l[7] : torch::zeros({c.b, c.h}, d);  // m_{t-1}: with gradient only at t = 0
  std::vector<Tensor> hs;
  for (int64_t t = 0; t < c.t; ++t) {
    if (reset.defined()) {
      const Tensor r = reset.select(1, t).view({-1, 1});
      C = torch::where(r.unsqueeze(-1).unsqueeze(-1), 0.0, C);
      n = torch::where(r.unsqueeze(-1), 0.0, n);
      m = torch::where(r, 0.0, m);
    }
    const Tensor lft = lf.select(2, t), igt = l[3].select(2, t);
    const Tensor mt = torch::maximum(lft + m, igt).detach();
    const Tensor fa = torch::exp(lft + m - mt), ia = torch::exp(igt - mt);
    C = fa.unsqueeze(-1).unsqueeze(-1) * C + ia.unsqueeze(-1).unsqueeze(-1) * (l[1].select(2, t).unsqueeze(-1) * l[2].select(2, t).unsqueeze(-2));
    n = fa.unsqueeze(-1) * n + ia.unsqueeze(-1) * l[1].select(2, t);
    const Tensor qt = q.select(2, t);
    const Tensor num = torch::matmul(qt.unsqueeze(-2), C).squeeze(-2);
    const Tensor den = torch::maximum((qt * n).sum(-1).abs(), torch::exp(-mt)) + subq::ops::kMlstmEps;
    hs.push_back(num / den.unsqueeze(-1));
    m = mt;
  }
  return {torch::stack(hs, 2), {C, n, m}};
}

// Gradients of sum(h * Wh) for one implementation on the case's (already rounded) inputs.
Run run(const mc::GradCase& gc, const mc::Inputs& in, Impl impl) {
  const mc::Case& c = gc.c;
  const auto cpu = torch::Device(torch::kCPU);
  const auto wt = impl == Impl::kTruth64 || impl == Impl::kConst64 ? torch::kDouble : torch::kFloat32;
  std::vector<Tensor> l = {in.q, in.k, in.v, in.ig, in.fg};
  if (c.init)
    for (const auto& t : {in.init.c, in.init.n, in.init.m}) l.push_back(t);
  for (size_t i = 0; i < l.size(); ++i) {  // the kernel takes q, k, v in the case's dtype
    const bool keep = impl == Impl::kKernel && i < 3;
    l[i] = (keep ? l[i].detach() : l[i].detach().to(wt)).clone().requires_grad_(true);
  }
  const subq::ops::MlstmState s = c.init ? subq::ops::MlstmState{l[5], l[6], l[7]} : subq::ops::MlstmState{};
  subq::ops::MlstmResult r;
  if (impl == Impl::kConst64)
    r = m_constant_recurrence(l, c, in.reset);
  else if (impl == Impl::kKernel)
    r = subq::ops::detail::mlstm_kernels_autograd(subq::test::mlstm_emu::kEmulated, l[0], l[1], l[2], l[3], l[4], s,
                                                  in.reset);
  else if (impl == Impl::kTruth64 && c.t <= 200)
    r = subq::ops::mlstm_recurrent(l[0], l[1], l[2], l[3], l[4], s, in.reset);
  else
    r = subq::ops::mlstm_chunkwise(l[0], l[1], l[2], l[3], l[4], s, in.reset, 64);
  const Tensor wh = mc::loss_weight_h(c, gc.seed, cpu).to(r.h.scalar_type() == torch::kDouble ? torch::kDouble
                                                                                                : torch::kFloat32);
  const Tensor loss = (r.h.to(wh.scalar_type()) * wh).sum();
  const auto g = torch::autograd::grad({loss}, l);
  Run out;
  out.h = r.h.detach().to(torch::kDouble);
  for (const auto& t : g) out.g.push_back(t.to(torch::kDouble));
  return out;
}

// Per-token fp64 diagnostics of the forward: the stabiliser m_t, the scaled normaliser qn_t = q^_t . n_t and
// the floor exp(-m_t) it is compared with. [B, H, T] each.
struct TokenInfo {
  Tensor m, qn;
};
TokenInfo token_info(const mc::Case& c, const mc::Inputs& in) {
  torch::NoGradGuard ng;
  const auto d = torch::kDouble;
  Tensor q = in.q.to(d) / std::sqrt(static_cast<double>(c.dk)), k = in.k.to(d);
  Tensor lf = torch::log_sigmoid(in.fg.to(d)), ig = in.ig.to(d);
  Tensor n = c.init ? in.init.n.to(d) : torch::zeros({c.b, c.h, c.dk}, d);
  Tensor m = c.init ? in.init.m.to(d) : torch::zeros({c.b, c.h}, d);
  TokenInfo out{torch::empty({c.b, c.h, c.t}, d), torch::empty({c.b, c.h, c.t}, d)};
  for (int64_t t = 0; t < c.t; ++t) {
    if (in.reset.defined()) {
      const Tensor r = in.reset.select(1, t).view({-1, 1});
      n = torch::where(r.unsqueeze(-1), 0.0, n);
      m = torch::where(r, 0.0, m);
    }
    const Tensor mn = torch::maximum(lf.select(2, t) + m, ig.select(2, t));
    n = torch::exp(lf.select(2, t) + m - mn).unsqueeze(-1) * n + torch::exp(ig.select(2, t) - mn).unsqueeze(-1) * k.select(2, t);
    m = mn;
    out.m.select(2, t).copy_(m);
    out.qn.select(2, t).copy_((q.select(2, t) * n).sum(-1));
  }
  return out;
}

double rel(const Tensor& a, const Tensor& b) { return subq::test::rel_rms(a, b); }

struct Replay {
  Run kernel, ref, truth, mconst;  // mconst: only for T <= 200 (fp64 recurrence with autograd)
  std::vector<std::string> names;
  std::vector<mc::GradScale> scales;  // the GPU test's criterion (tests/mlstm_gpu_cases.h)
  mc::GradScale h_scale;
};

std::vector<mc::GradScale> scales_of(const mc::GradCase& gc, const mc::Inputs& in, const Run& ref) {
  std::vector<Tensor> l = {in.q.to(torch::kFloat32), in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.ig, in.fg};
  if (gc.c.init)
    for (const auto& t : {in.init.c, in.init.n, in.init.m}) l.push_back(t);
  std::vector<Tensor> g;
  for (const auto& t : ref.g) g.push_back(t.to(torch::kFloat32));
  return mc::gradient_scales(l, in.reset, mc::loss_weight_h(gc.c, gc.seed, torch::Device(torch::kCPU)), g);
}
mc::GradScale h_scale_of(const mc::GradCase& gc, const mc::Inputs& in) {
  std::vector<Tensor> l = {in.q.to(torch::kFloat32), in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.ig, in.fg};
  if (gc.c.init)
    for (const auto& t : {in.init.c, in.init.n, in.init.m}) l.push_back(t);
  return mc::output_scale(l, in.reset);
}

Replay replay(size_t index, bool diagnose) {
  const auto cases = mc::grad_cases();
  const mc::GradCase& gc = cases.at(index);
  const mc::Inputs in = mc::make_inputs(gc.c, gc.seed, torch::Device(torch::kCPU));
  Replay rp;
  rp.ref = run(gc, in, Impl::kRef32);
  rp.truth = run(gc, in, Impl::kTruth64);
  rp.kernel = run(gc, in, Impl::kKernel);
  if (gc.c.t <= 200) rp.mconst = run(gc, in, Impl::kConst64);
  rp.scales = scales_of(gc, in, rp.ref);
  rp.h_scale = h_scale_of(gc, in);
  rp.names.assign(grad_names().begin(), grad_names().begin() + static_cast<long>(rp.kernel.g.size()));
  std::ostringstream os;
  os << "[mlstm-gpu-replay] case " << index << " " << mc::describe(gc.c) << " seed " << gc.seed
     << "\n   tensor   kernel~ref32   kernel~fp64   ref32~fp64   |fp64|    scaled(k~r32)  scale/|g|   kernel~mconst64   mconst64~fp64";
  int gi = -1;
  auto line = [&](const std::string& name, const Tensor& k, const Tensor& r, const Tensor& t, const Tensor& mc64) {
    char buf[300];
    std::snprintf(buf, sizeof buf, "\n   %-6s %12.3e %13.3e %12.3e %10.3e", name.c_str(), rel(k, r), rel(k, t), rel(r, t),
                  t.norm().item<double>());
    os << buf;
    if (gi >= 0) {
      const auto& sc = rp.scales[static_cast<size_t>(gi)];
      std::snprintf(buf, sizeof buf, " %14.3e %10.3g", mc::scaled_error(k, r, sc), sc.norm > 0 ? sc.scale / sc.norm : 0.0);
    } else {
      std::snprintf(buf, sizeof buf, " %14.3e %10.3g", mc::scaled_error(k, r, rp.h_scale),
                    rp.h_scale.norm > 0 ? rp.h_scale.scale / rp.h_scale.norm : 0.0);
    }
    os << buf;
    ++gi;
    if (mc64.defined()) {
      std::snprintf(buf, sizeof buf, " %16.3e %15.3e", rel(k, mc64), rel(mc64, t));
      os << buf;
    }
  };
  const bool mcd = rp.mconst.h.defined();
  line("h", rp.kernel.h, rp.ref.h, rp.truth.h, rp.mconst.h);
  for (size_t i = 0; i < rp.names.size(); ++i)
    line(rp.names[i], rp.kernel.g[i], rp.ref.g[i], rp.truth.g[i], mcd ? rp.mconst.g[i] : Tensor());
  if (diagnose) {
    // where dq's kernel~ref32 error lives: the tokens with the largest share of it
    const TokenInfo ti = token_info(gc.c, in);
    {  // where h's kernel~ref32 error lives
      const Tensor e2 = (rp.kernel.h - rp.ref.h).pow(2).sum(-1).flatten();
      const double tot = e2.sum().item<double>();
      const auto idx = std::get<1>(e2.topk(std::min<int64_t>(3, e2.numel())));
      os << "\n   h error by token:";
      for (int64_t j = 0; j < idx.numel(); ++j) {
        const int64_t f = idx[j].item<int64_t>();
        const int64_t bh = f / gc.c.t, t = f % gc.c.t, b = bh / gc.c.h, hh = bh % gc.c.h;
        const Tensor hk = rp.kernel.h[b][hh][t], hr = rp.ref.h[b][hh][t], ht = rp.truth.h[b][hh][t];
        char buf[300];
        std::snprintf(buf, sizeof buf,
                      "\n     b%ld h%ld t%ld share %.3f  m %.3f |qn| %.3e floor %.3e |h| %.3e  rel(k, fp64) %.3e "
                      "rel(r32, fp64) %.3e  |h_k|/|h_fp64| %.6f cos(h_k, h_fp64) %.6f",
                      static_cast<long>(b), static_cast<long>(hh), static_cast<long>(t), e2[f].item<double>() / tot,
                      ti.m[b][hh][t].item<double>(), std::abs(ti.qn[b][hh][t].item<double>()),
                      std::exp(-ti.m[b][hh][t].item<double>()), ht.norm().item<double>(), rel(hk, ht), rel(hr, ht),
                      (hk.norm() / ht.norm()).item<double>(), ((hk * ht).sum() / (hk.norm() * ht.norm())).item<double>());
        os << buf;
      }
    }
    for (size_t gi : {size_t{0}, size_t{7}}) {
      if (gi >= rp.names.size()) continue;
      const Tensor dk = rp.kernel.g[gi], dr = rp.ref.g[gi], dt = rp.truth.g[gi];
      if (gi == 0) {
        const Tensor e2 = (dk - dr).pow(2).sum(-1).flatten();  // per token
        const double tot = e2.sum().item<double>();
        const auto top = e2.topk(std::min<int64_t>(6, e2.numel()));
        const Tensor idx = std::get<1>(top);
        os << "\n   dq error by token (share of ||dq_kernel - dq_ref32||^2; fp64 per-token facts):";
        for (int64_t j = 0; j < idx.numel(); ++j) {
          const int64_t f = idx[j].item<int64_t>();
          const int64_t bh = f / gc.c.t, t = f % gc.c.t, b = bh / gc.c.h, hh = bh % gc.c.h;
          const double m = ti.m[b][hh][t].item<double>(), qn = ti.qn[b][hh][t].item<double>();
          char buf[300];
          std::snprintf(buf, sizeof buf,
                        "\n     b%ld h%ld t%ld share %.3f  m %.3f |qn| %.3e floor %.3e  |dq_ref32| %.3e |dq_fp64| %.3e "
                        "|dq_k - fp64| %.3e |dq_r32 - fp64| %.3e",
                        static_cast<long>(b), static_cast<long>(hh), static_cast<long>(t), e2[f].item<double>() / tot, m,
                        std::abs(qn), std::exp(-m), dr[b][hh][t].norm().item<double>(), dt[b][hh][t].norm().item<double>(),
                        (dk[b][hh][t] - dt[b][hh][t]).norm().item<double>(),
                        (dr[b][hh][t] - dt[b][hh][t]).norm().item<double>());
          os << buf;
        }
      } else {
        os << "\n   dm0 kernel " << dk.flatten() << "\n   dm0 ref32  " << dr.flatten() << "\n   dm0 fp64   "
           << dt.flatten();
        if (rp.mconst.h.defined()) os << "\n   dm0 mconst " << rp.mconst.g[gi].flatten();
      }
    }
  }
  std::printf("%s\n", os.str().c_str());
  std::fflush(stdout);
  return rp;
}

std::vector<size_t> selected(const std::vector<size_t>& dflt) {
  const char* e = std::getenv("SUBQ_MLSTM_CASES");
  if (!e || !*e) return dflt;
  std::vector<size_t> out;
  std::stringstream ss(e);
  std::string tok;
  while (std::getline(ss, tok, ',')) out.push_back(static_cast<size_t>(std::stoul(tok)));
  return out;
}


// The GPU test's criterion (DESIGN.md: relative RMS error against the fp32 reference < 5e-3 for h, < 1e-2
// for every gradient) on the replayed cases, plus the diagnostic decomposition g = g_num + g_den the printed
// cancellation factor rests on. A check the kernels miss is accepted here only as "reference-limited": the
// fp32 reference is itself farther than the tolerance from the fp64 truth, and the kernels are within 1e-4
// of the truth (df~ at T = 1 without a carried state, where the true gradient is only the 1e-6 exp(m) term
// and the reference's fp32 autograd through the stabiliser leaves rounding noise of its size). The GPU test
// keeps the plain criterion; these are counted and printed, so a new miss of any other kind fails here.
// Returns the number of reference-limited checks.
int check_case(size_t i) {
  const Replay rp = replay(i, true);
  INFO("case " << i << " " << mc::describe(mc::grad_cases()[i].c));
  int reference_limited = 0;
  auto check = [&](const std::string& name, const Tensor& k, const Tensor& r, const Tensor& t, double tol) {
    const double e = rel(k, r), e64 = rel(k, t), r64 = rel(r, t);
    INFO(name << ": relative RMS error " << e << " against the fp32 reference (tolerance " << tol
              << "), kernel vs fp64 " << e64 << ", fp32 reference vs fp64 " << r64);
    if (e < tol) return;
    CHECK(r64 > tol);
    CHECK(e64 < 1e-4);
    ++reference_limited;
    std::printf("[mlstm-gpu-replay] case %zu %s: reference-limited (kernel vs fp32 reference %.3e, vs fp64 %.3e; "
                "fp32 reference vs fp64 %.3e)\n", i, name.c_str(), e, e64, r64);
  };
  check("h", rp.kernel.h, rp.ref.h, rp.truth.h, 5e-3);
  for (size_t g = 0; g < rp.names.size(); ++g) {
    INFO(rp.names[g]);
    const mc::GradScale& sc = rp.scales[g];
    const Tensor ref = rp.ref.g[g];
    const double split = mc::scaled_error(sc.g_num.to(torch::kDouble) + sc.g_den.to(torch::kDouble), ref, sc);
    INFO("||g_num + g_den - g_ref|| / scale = " << split);
    CHECK(split < 1e-5);
    check(rp.names[g], rp.kernel.g[g], ref, rp.truth.g[g], 1e-2);
  }
  return reference_limited;
}

}  // namespace

// The T = 1 cases run in the CPU suite (19 of their gradient checks failed on the H200 at 17ac015; now all
// pass but df~ of the six cases without a carried state at their first token, which are reference-limited).
TEST_CASE("mLSTM GPU-test gradient cases replayed under the emulator (T = 1)", "[ops][mlstm][kernels]") {
  int reference_limited = 0;
  for (size_t i : selected({0, 1, 2, 3, 4, 5, 6, 7, 8, 9})) reference_limited += check_case(i);
  if (!std::getenv("SUBQ_MLSTM_CASES")) CHECK(reference_limited == 6);
}

// Every other case (hidden: ~10 s to ~8 min each under the emulator); SUBQ_MLSTM_CASES picks some.
TEST_CASE("mLSTM GPU-test gradient cases replayed under the emulator (long)", "[.][mlstm-gpu-replay]") {
  std::vector<size_t> all;
  for (size_t i = 10; i < mc::grad_cases().size(); ++i)
    if (!mc::grad_cases()[i].state_loss && mc::grad_cases()[i].c.dtype == torch::kBFloat16) all.push_back(i);
  int reference_limited = 0;
  for (size_t i : selected(all)) reference_limited += check_case(i);
  std::printf("[mlstm-gpu-replay] reference-limited checks: %d\n", reference_limited);
}

#else
TEST_CASE("mLSTM GPU-test cases (CPU emulation)", "[ops][mlstm][kernels]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif
