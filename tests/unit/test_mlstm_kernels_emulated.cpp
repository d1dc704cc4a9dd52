// test_mlstm_kernels_emulated.cpp — the mLSTM CUDA kernels' device code (src/ops/mlstm/mlstm_cuda_*.cuh) run
// on the CPU by the emulator of tests/emu/cuda_emu.h: state scan, forward chunks and the decode step, with
// the same argument set-up as src/ops/mlstm/mlstm_cuda.cpp, against the recurrent reference in fp32 on the
// same 16-bit inputs, with the GPU test's tolerances (5e-3 for h and the final state). The per-token
// stabiliser m_t the chunk kernel emits is compared with the recurrence's m_t (computed here in fp64): the
// kernels claim to reproduce it exactly (up to fp32 rounding).
// Each configuration runs twice: threads in ascending order with cp.async copies at issue, and descending
// with copies at the wait. Outputs are pre-filled with NaN, so an element never written fails.
// A second part runs the Torch glue of mlstm_cuda.cpp (autograd function with its recompute backward, the
// decode step's argument preparation) on CPU tensors with emulated launchers behind it.
//
// Shapes are small (the emulator runs every thread as a user-level context) but cover several chunks, a
// ragged last chunk, T = 1, exactly one chunk, resets (also at chunk boundaries), an initial state, strided
// inputs, Dk and Dv in {64, 128, 256}, bf16 and fp16. Needs the CUDA headers: skipped without CUDA.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/mlstm_emu_launchers.h"

namespace {

using torch::Tensor;
namespace k = subq::ops::detail::mlstm_kernels;
using subq::ops::detail::MlstmKernelDtype;
using subq::ops::detail::MlstmRows;
using subq::ops::detail::MlstmSizes;

MlstmRows rows_of(const Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }
template <typename P>
const P* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<P>() : nullptr;
}
Tensor nan_like(at::IntArrayRef shape, torch::ScalarType dt) {
  return torch::full(shape, std::numeric_limits<float>::quiet_NaN(), torch::TensorOptions().dtype(dt));
}

using namespace subq::test::mlstm_emu;  // g_opt, emu_scan_t, emu_fwd_dk, kEmulated

// ---- kernels against the recurrence ----------------------------------------------------------------------
struct Problem {
  int64_t b = 1, h = 2, t = 130, dk = 64, dv = 64;
  bool init = false, reset = false, strided = false, fp16 = false;
};

std::string describe(const Problem& c) {
  return subq::str("B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv, c.init ? " init" : "",
                   c.reset ? " reset" : "", c.strided ? " strided" : "", c.fp16 ? " fp16" : " bf16");
}

struct Inputs {
  Tensor q, k, v, ig, fg, reset;
  subq::ops::MlstmState init;
};

// Gates that exercise both branches of the stabiliser: input gates of spread 2 around 0, forget gates mostly
// open (f~ around 2) with some strongly closing ones.
Inputs make_inputs(const Problem& c, uint64_t seed) {
  using subq::test::randn;
  const auto dtype = c.fp16 ? torch::kFloat16 : torch::kBFloat16;
  Inputs in;
  in.q = randn({c.b, c.h, c.t, c.dk}, seed + 1).to(dtype);
  in.k = randn({c.b, c.h, c.t, c.dk}, seed + 2).to(dtype);
  in.v = randn({c.b, c.h, c.t, c.dv}, seed + 3).to(dtype);
  in.ig = randn({c.b, c.h, c.t}, seed + 4, 2.0).to(torch::kFloat32);
  in.fg = (randn({c.b, c.h, c.t}, seed + 5, 2.0, 2.0)).to(torch::kFloat32);
  if (c.init)
    in.init = {randn({c.b, c.h, c.dk, c.dv}, seed + 6).to(torch::kFloat32),
               randn({c.b, c.h, c.dk}, seed + 7).to(torch::kFloat32), randn({c.b, c.h}, seed + 8).to(torch::kFloat32)};
  if (c.reset) {
    in.reset = subq::test::rand_mask({c.b, c.t}, seed + 9, 0.03);
    auto a = in.reset.accessor<bool, 2>();
    for (int64_t pos : {int64_t{5}, int64_t{63}, int64_t{64}, int64_t{100}})
      if (pos < c.t) a[0][pos] = true;
    if (c.b > 1) a[1][0] = true;
  }
  if (c.strided) {  // [B, T, H, D] storage seen as [B, H, T, D], as the xLSTM layer passes it
    in.q = in.q.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    in.k = in.k.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    in.v = in.v.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
  }
  return in;
}

// The recurrent stabiliser m_t in fp64: [B, H, T].
Tensor reference_m(const Inputs& in) {
  const int64_t B = in.q.size(0), H = in.q.size(1), T = in.q.size(2);
  auto ig = in.ig.to(torch::kDouble).contiguous(), fg = in.fg.to(torch::kDouble).contiguous();
  Tensor out = torch::empty({B, H, T}, torch::kDouble);
  auto ia = ig.accessor<double, 3>(), fa = fg.accessor<double, 3>(), oa = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      double m = in.init.defined() ? in.init.m[b][h].item<double>() : 0.0;
      for (int64_t t = 0; t < T; ++t) {
        if (in.reset.defined() && in.reset[b][t].item<bool>()) m = 0.0;
        const double x = fa[b][h][t];
        const double lf = std::min(x, 0.0) - std::log1p(std::exp(-std::abs(x)));
        m = std::max(lf + m, ia[b][h][t]);
        oa[b][h][t] = m;
      }
    }
  return out;
}

struct Out {
  Tensor h, c, n, m, m_tok, qn;
};

template <typename T>
Out run_emulated(const Problem& c, const Inputs& in, emu::Options opt) {
  g_opt = opt;
  const auto dtype = std::is_same_v<T, __half> ? torch::kFloat16 : torch::kBFloat16;
  MlstmSizes n;
  n.batch = static_cast<int>(c.b);
  n.heads = static_cast<int>(c.h);
  n.time = static_cast<int>(c.t);
  n.dk = static_cast<int>(c.dk);
  n.dv = static_cast<int>(c.dv);
  n.chunks = static_cast<int>((c.t + 63) / 64);
  const Tensor rst = in.reset.defined() ? in.reset.to(torch::kInt32).contiguous() : Tensor();
  Out o;
  Tensor c_states = nan_like({c.b, c.h, n.chunks, c.dk, c.dv}, dtype);
  Tensor n_states = nan_like({c.b, c.h, n.chunks, c.dk}, torch::kFloat32);
  Tensor m_states = nan_like({c.b, c.h, n.chunks}, torch::kFloat32);
  o.c = nan_like({c.b, c.h, c.dk, c.dv}, torch::kFloat32);
  o.n = nan_like({c.b, c.h, c.dk}, torch::kFloat32);
  o.m = nan_like({c.b, c.h}, torch::kFloat32);
  o.h = nan_like({c.b, c.h, c.t, c.dv}, dtype);
  o.qn = nan_like({c.b, c.h, c.t}, torch::kFloat32);
  o.m_tok = nan_like({c.b, c.h, c.t}, torch::kFloat32);

  subq::ops::detail::MlstmScanArgs sa;
  sa.n = n;
  sa.k = rows_of(in.k);
  sa.v = rows_of(in.v);
  sa.igate = in.ig.data_ptr<float>();
  sa.fgate = in.fg.data_ptr<float>();
  sa.reset = ptr_or_null<int>(rst);
  sa.c_in = ptr_or_null<float>(in.init.c);
  sa.n_in = ptr_or_null<float>(in.init.n);
  sa.m_in = ptr_or_null<float>(in.init.m);
  sa.c_states = c_states.data_ptr();
  sa.n_states = n_states.data_ptr<float>();
  sa.m_states = m_states.data_ptr<float>();
  sa.c_out = o.c.data_ptr<float>();
  sa.n_out = o.n.data_ptr<float>();
  sa.m_out = o.m.data_ptr<float>();
  emu_scan_t<T>(sa);

  subq::ops::detail::MlstmChunkFwdArgs fa;
  fa.n = n;
  fa.q = rows_of(in.q);
  fa.k = sa.k;
  fa.v = sa.v;
  fa.igate = sa.igate;
  fa.fgate = sa.fgate;
  fa.reset = sa.reset;
  fa.c_states = sa.c_states;
  fa.n_states = sa.n_states;
  fa.m_states = sa.m_states;
  fa.h = o.h.data_ptr();
  fa.qn = o.qn.data_ptr<float>();
  fa.m = o.m_tok.data_ptr<float>();
  emu_fwd_dk<T>(fa);
  return o;
}

void check_problem(const Problem& c, uint64_t seed) {
  INFO(describe(c));
  const Inputs in = make_inputs(c, seed);
  const auto f32 = torch::kFloat32;
  const auto ref = subq::ops::mlstm_recurrent(in.q.to(f32), in.k.to(f32), in.v.to(f32), in.ig, in.fg, in.init, in.reset);
  const Tensor m_ref = reference_m(in);
  for (int mode = 0; mode < 2; ++mode) {
    emu::Options opt;
    opt.order = mode == 0 ? emu::Order::kAscending : emu::Order::kDescending;
    opt.copies = mode == 0 ? emu::Copies::kAtIssue : emu::Copies::kAtWait;
    INFO("emulation mode " << mode << (mode == 0 ? " (ascending, copies at issue)" : " (descending, copies at wait)"));
    const Out o = c.fp16 ? run_emulated<__half>(c, in, opt) : run_emulated<__nv_bfloat16>(c, in, opt);
    std::string line;
    auto cmp = [&](const char* name, const Tensor& got, const Tensor& want, double tol) {
      REQUIRE(subq::test::all_finite(got));
      const double e = subq::test::rel_rms(got.to(torch::kDouble), want.to(torch::kDouble));
      line += subq::str(" ", name, " ", e);
      INFO(name << ": relative RMS error " << e << " (tolerance " << tol << ")");
      CHECK(e < tol);
    };
    cmp("h", o.h, ref.h, 5e-3);
    cmp("C", o.c, ref.state.c, 5e-3);
    cmp("n", o.n, ref.state.n, 5e-3);
    cmp("m", o.m, ref.state.m, 1e-5);
    cmp("m_t", o.m_tok, m_ref, 1e-5);
    REQUIRE(subq::test::all_finite(o.qn));
    std::printf("[mlstm-emulated] %s mode %d:%s\n", describe(c).c_str(), mode, line.c_str());
    std::fflush(stdout);
  }
}

}  // namespace

TEST_CASE("mLSTM kernels (CPU emulation): scan and forward chunks match the recurrence", "[ops][mlstm][kernels]") {
  Problem a;  // 3 chunks, ragged, Dk = Dv = 64
  check_problem(a, 100);
  Problem b;  // resets (inside chunks and at chunk boundaries), initial state, strided q/k/v, batch 2, Dk 128
  b.b = 2;
  b.h = 1;
  b.t = 100;
  b.dk = 128;
  b.init = b.reset = b.strided = true;
  check_problem(b, 200);
  Problem c;  // the 340M xLSTM head dims: Dk 128, Dv 256
  c.h = 1;
  c.t = 70;
  c.dk = 128;
  c.dv = 256;
  c.init = c.reset = true;
  check_problem(c, 300);
  Problem d;  // T = 1, Dk = 256, batch 2 (row 1 starts with a reset and drops its initial state)
  d.b = 2;
  d.h = 1;
  d.t = 1;
  d.dk = 256;
  d.init = d.reset = true;
  check_problem(d, 400);
  Problem e;  // exactly one chunk, fp16, Dk 64, Dv 128
  e.h = 1;
  e.t = 64;
  e.dv = 128;
  e.fp16 = e.init = true;
  check_problem(e, 500);
}

TEST_CASE("mLSTM decode-step kernel (CPU emulation) matches mlstm_step", "[ops][mlstm][kernels]") {
  using subq::test::randn;
  struct StepCase {
    int64_t b, h, dk, dv;
    torch::ScalarType dtype;
    bool state, reset;
  };
  const std::vector<StepCase> cases = {{2, 3, 40, 136, torch::kBFloat16, true, true},
                                       {1, 2, 64, 64, torch::kFloat32, false, false},
                                       {2, 1, 128, 256, torch::kFloat16, true, false}};
  uint64_t seed = 900;
  for (const auto& c : cases) {
    seed += 20;
    INFO("B" << c.b << " H" << c.h << " Dk" << c.dk << " Dv" << c.dv << " " << c10::toString(c.dtype)
              << (c.state ? " state" : "") << (c.reset ? " reset" : ""));
    const Tensor q = randn({c.b, c.h, c.dk}, seed + 1).to(c.dtype), kk = randn({c.b, c.h, c.dk}, seed + 2).to(c.dtype);
    const Tensor v = randn({c.b, c.h, c.dv}, seed + 3).to(c.dtype);
    const Tensor ig = randn({c.b, c.h}, seed + 4, 2.0).to(torch::kFloat32);
    const Tensor fg = randn({c.b, c.h}, seed + 5, 2.0, 1.0).to(torch::kFloat32);
    subq::ops::MlstmState s;
    if (c.state)
      s = {randn({c.b, c.h, c.dk, c.dv}, seed + 6).to(torch::kFloat32), randn({c.b, c.h, c.dk}, seed + 7).to(torch::kFloat32),
           randn({c.b, c.h}, seed + 8).to(torch::kFloat32)};
    Tensor reset;
    if (c.reset) reset = torch::tensor({true, false});
    const auto got = subq::ops::detail::mlstm_step_kernels(kEmulated, q, kk, v, ig, fg, s, reset);
    const auto f32 = torch::kFloat32;
    const auto ref = subq::ops::mlstm_step(q.to(f32), kk.to(f32), v.to(f32), ig, fg, s, reset);
    REQUIRE(got.h.scalar_type() == c.dtype);
    const double tol_h = c.dtype == torch::kFloat32 ? 1e-5 : 5e-3;
    CHECK(subq::test::rel_rms(got.h.to(f32), ref.h) < tol_h);
    CHECK(subq::test::rel_rms(got.state.c, ref.state.c) < 1e-5);
    CHECK(subq::test::rel_rms(got.state.n, ref.state.n) < 1e-5);
    CHECK(subq::test::rel_rms(got.state.m, ref.state.m) < 1e-6);
  }
}

// mlstm_cuda()'s autograd function on CPU tensors with the emulated kernels behind it, against
// mlstm_chunkwise + autograd on the same values: placeholders for absent optional tensors, argument
// preparation, the kernel backward (pre-pass, reverse scan, chunk gradients, dm0) for losses on h, and the
// recompute backward for losses that also use the final state.
TEST_CASE("mLSTM kernels' autograd glue and backward kernels (CPU tensors, emulated) match the reference",
          "[ops][mlstm][kernels]") {
  struct GlueCase {
    Problem p;
    bool use_state_grads;
  };
  std::vector<GlueCase> cases;
  Problem p1;  // nothing optional, strided, 3 chunks (ragged)
  p1.t = 150;
  p1.strided = true;
  cases.push_back({p1, false});
  Problem p2;  // initial state, resets (inside chunks and at boundaries), batch 2, Dv 128
  p2.b = 2;
  p2.h = 1;
  p2.t = 100;
  p2.dv = 128;
  p2.init = p2.reset = true;
  cases.push_back({p2, false});
  Problem p3;  // the 340M head dims, initial state
  p3.h = 1;
  p3.t = 70;
  p3.dk = 128;
  p3.dv = 256;
  p3.init = p3.reset = true;
  cases.push_back({p3, false});
  Problem p4;  // Dk 256 > Dv 64 (the Dv loop's column slices of dC span 256 rows), T = 1 and ragged
  p4.h = 1;
  p4.t = 65;
  p4.dk = 256;
  p4.init = true;
  cases.push_back({p4, false});
  Problem p5;  // fp16, one chunk
  p5.h = 1;
  p5.t = 64;
  p5.dv = 128;
  p5.fp16 = p5.init = true;
  cases.push_back({p5, false});
  Problem p6;  // losses on the final state too: the recompute backward
  p6.b = 2;
  p6.h = 1;
  p6.t = 66;
  p6.dv = 128;
  p6.init = p6.reset = true;
  cases.push_back({p6, true});
  uint64_t seed = 7000;
  for (const auto& gc : cases) {
    const Problem& c = gc.p;
    seed += 100;
    INFO(describe(c) << (gc.use_state_grads ? " state grads" : ""));
    const Inputs in = make_inputs(c, seed);
    using subq::test::randn;
    const auto dtype = in.q.scalar_type();
    const Tensor Wh = randn({c.b, c.h, c.t, c.dv}, seed + 50).to(dtype).to(torch::kFloat32);
    const Tensor Wc = randn({c.b, c.h, c.dk, c.dv}, seed + 51).to(torch::kFloat32);
    const Tensor Wn = randn({c.b, c.h, c.dk}, seed + 52).to(torch::kFloat32);
    const Tensor Wm = randn({c.b, c.h}, seed + 53).to(torch::kFloat32);

    std::vector<Tensor> rl = {in.q.to(torch::kFloat32), in.k.to(torch::kFloat32), in.v.to(torch::kFloat32), in.ig, in.fg};
    std::vector<std::string> names = {"dq", "dk", "dv", "dig", "dfg"};
    if (c.init) {
      for (const auto& t : {in.init.c, in.init.n, in.init.m}) rl.push_back(t);
      names.insert(names.end(), {"dc0", "dn0", "dm0"});
    }
    for (auto& t : rl) t = t.detach().clone().requires_grad_(true);
    const subq::ops::MlstmState rs = c.init ? subq::ops::MlstmState{rl[5], rl[6], rl[7]} : subq::ops::MlstmState{};
    const auto ref = subq::ops::mlstm_chunkwise(rl[0], rl[1], rl[2], rl[3], rl[4], rs, in.reset);
    Tensor lr = (ref.h * Wh).sum();
    if (gc.use_state_grads) lr = lr + (ref.state.c * Wc).sum() + (ref.state.n * Wn).sum() + (ref.state.m * Wm).sum();
    const auto gr = torch::autograd::grad({lr}, rl);

    for (int mode = 0; mode < 2; ++mode) {
      g_opt.order = mode == 0 ? emu::Order::kAscending : emu::Order::kDescending;
      g_opt.copies = mode == 0 ? emu::Copies::kAtIssue : emu::Copies::kAtWait;
      INFO("emulation mode " << mode);
      std::vector<Tensor> kl = {in.q, in.k, in.v, in.ig, in.fg};
      if (c.init)
        for (const auto& t : {in.init.c, in.init.n, in.init.m}) kl.push_back(t);
      for (auto& t : kl) t = t.detach().clone(at::MemoryFormat::Preserve).requires_grad_(true);
      const subq::ops::MlstmState ks = c.init ? subq::ops::MlstmState{kl[5], kl[6], kl[7]} : subq::ops::MlstmState{};
      const auto got =
          subq::ops::detail::mlstm_kernels_autograd(kEmulated, kl[0], kl[1], kl[2], kl[3], kl[4], ks, in.reset);
      REQUIRE(got.h.scalar_type() == dtype);
      std::string line;
      auto cmp = [&](const std::string& name, const Tensor& g, const Tensor& want, double tol) {
        REQUIRE(g.defined());
        const double e = subq::test::rel_rms(g.to(torch::kFloat32), want);
        line += subq::str(" ", name, " ", e);
        INFO(name << ": relative RMS error " << e << " (tolerance " << tol << ")");
        CHECK(e < tol);
      };
      cmp("h", got.h, ref.h, 5e-3);
      cmp("C", got.state.c, ref.state.c, 5e-3);
      cmp("m", got.state.m, ref.state.m, 1e-5);
      Tensor lk = (got.h.to(torch::kFloat32) * Wh).sum();
      if (gc.use_state_grads)
        lk = lk + (got.state.c * Wc).sum() + (got.state.n * Wn).sum() + (got.state.m * Wm).sum();
      const auto gk = torch::autograd::grad({lk}, kl);
      for (size_t i = 0; i < gk.size(); ++i) {
        CHECK(gk[i].scalar_type() == kl[i].scalar_type());
        cmp(names[i], gk[i], gr[i], 1e-2);
      }
      std::printf("[mlstm-glue-emulated] %s%s mode %d:%s\n", describe(c).c_str(),
                  gc.use_state_grads ? " state-grads(recompute)" : "", mode, line.c_str());
      std::fflush(stdout);
    }
  }
  g_opt = emu::Options{};
}

#else
TEST_CASE("mLSTM kernels (CPU emulation)", "[ops][mlstm][kernels]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif

// The dispatch off the GPU: mlstm() / mlstm_decode() take the references on CPU tensors (bit for bit), and
// SUBQ_OPS_IMPL=cuda makes an unsupported call throw an InputError that says why.
TEST_CASE("mLSTM dispatch falls back to the references on CPU", "[ops][mlstm]") {
  using subq::test::randn;
  const Tensor q = randn({1, 2, 20, 16}, 1).to(torch::kFloat32), k = randn({1, 2, 20, 16}, 2).to(torch::kFloat32);
  const Tensor v = randn({1, 2, 20, 8}, 3).to(torch::kFloat32), ig = randn({1, 2, 20}, 4).to(torch::kFloat32);
  const Tensor fg = randn({1, 2, 20}, 5, 1.0, 2.0).to(torch::kFloat32);
  subq::test::OpsImplEnv env;
  env.set(nullptr);
  const auto a = subq::ops::mlstm(q, k, v, ig, fg, {}, {}, 8);
  const auto b = subq::ops::mlstm_chunkwise(q, k, v, ig, fg, {}, {}, 8);
  CHECK(torch::equal(a.h, b.h));
  CHECK(torch::equal(a.state.c, b.state.c));
  const auto s1 = subq::ops::mlstm_decode(q.select(2, 0), k.select(2, 0), v.select(2, 0), ig.select(2, 0), fg.select(2, 0));
  const auto s2 = subq::ops::mlstm_step(q.select(2, 0), k.select(2, 0), v.select(2, 0), ig.select(2, 0), fg.select(2, 0));
  CHECK(torch::equal(s1.h, s2.h));
  CHECK(!subq::ops::mlstm_cuda_unsupported(q, v).empty());
  env.set("cuda");
  CHECK_THROWS_AS(subq::ops::mlstm(q, k, v, ig, fg), subq::InputError);
  CHECK_THROWS_AS(subq::ops::mlstm_decode(q.select(2, 0), k.select(2, 0), v.select(2, 0), ig.select(2, 0),
                                          fg.select(2, 0)),
                  subq::InputError);
  env.set(nullptr);
}
