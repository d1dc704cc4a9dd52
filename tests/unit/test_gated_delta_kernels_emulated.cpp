// test_gated_delta_kernels_emulated.cpp — the Gated DeltaNet CUDA path on the CPU: the device code of
// src/ops/gated_delta/gated_delta_cuda_kernels.cuh runs under the emulator of tests/emu/cuda_emu.h, driven by
// the real Torch glue (detail::gated_delta_kernel_path / gated_delta_step_kernel_path, the same code
// gated_delta_cuda() runs) through an emulated launcher table. Checked against the references on the same
// inputs: forward (o, final state) and every gradient (q, k, v, g, beta, initial state) through the custom
// autograd function, with the GPU test's tolerances. Every launch pre-fills the kernel's outputs with NaN, so
// an element never written fails the comparison; each case runs with threads in ascending and in descending
// order (a missing barrier shows up in one of them).
//
// Shapes are small (the emulator runs every thread as a user-level context) but cover several chunks, a
// ragged last chunk, T = 1, T < 64, resets (including at t = 0 and twice in a chunk), an initial state,
// Dk = 64 / 128 / 256, Dv = 32 / 64 / 96, beta in [0, 1] and [0, 2], in-op q/k normalisation, fp32 and bf16.
// Needs the CUDA headers (bf16 types): skipped in builds without CUDA.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <ATen/autocast_mode.h>

#include "op_testing.h"
#include "subq/core/device.h"
#include "ops/gated_delta/gated_delta_cuda.h"
#include "ops/gated_delta/gated_delta_internal.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

#if defined(SUBQ_WITH_CUDA)
#include "emu/cuda_emu.h"
#define SUBQ_CK_EMULATE 1
#include "ops/gated_delta/gated_delta_cuda_kernels.cuh"

namespace {

using torch::Tensor;
namespace k = subq::ops::detail::gdn_kernels;
namespace d = subq::ops::detail;

emu::Options g_opt;  // thread order of the emulated launches (set per test pass)

void fill_nan(float* p, int64_t n) { std::fill(p, p + n, std::numeric_limits<float>::quiet_NaN()); }

template <int DK>
void emu_fwd(const d::GdnScanFwdArgs& a) {
  const auto& n = a.n;
  fill_nan(a.u, int64_t{n.bh} * n.chunks * n.chunk * n.value_dim);
  fill_nan(a.states, int64_t{n.bh} * n.chunks * n.value_dim * n.key_dim);
  fill_nan(a.s_out, int64_t{n.bh} * n.value_dim * n.key_dim);
  emu::launch(dim3(static_cast<unsigned>(n.value_dim / k::kRows), static_cast<unsigned>(n.bh)), dim3(k::kThreads),
              k::scan_fwd_smem<DK>(), [&] { k::gdn_scan_fwd_kernel<DK>(a); }, g_opt);
}
template <int DK>
void emu_bwd(const d::GdnScanBwdArgs& a) {
  const auto& n = a.n;
  const int64_t tiles = n.value_dim / k::kRows, rows = int64_t{n.bh} * n.chunks * n.chunk;
  fill_nan(a.du_tilde, rows * n.value_dim);
  fill_nan(a.dw_part, tiles * rows * n.key_dim);
  fill_nan(a.dk_end_part, tiles * rows * n.key_dim);
  fill_nan(a.dgamma_part, tiles * n.bh * n.chunks);
  fill_nan(a.ds0, int64_t{n.bh} * n.value_dim * n.key_dim);
  emu::launch(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(n.bh)), dim3(k::kThreads),
              k::scan_bwd_smem<DK>(), [&] { k::gdn_scan_bwd_kernel<DK>(a); }, g_opt);
}

void check_emu_sizes(const d::GdnScanSizes& n) {
  const std::string e = d::gated_delta_kernel_shape_error(n.key_dim, n.value_dim, n.bh);
  if (!e.empty()) throw std::runtime_error("emulated launcher: " + e);
  if (n.chunk < 1 || n.chunk > k::kMaxC) throw std::runtime_error("emulated launcher: bad chunk");
}

void scan_fwd(const d::GdnScanFwdArgs& a, void* stream) {
  if (stream != nullptr) throw std::runtime_error("emulated launcher got a CUDA stream");
  check_emu_sizes(a.n);
  switch (a.n.key_dim) {
    case 64: emu_fwd<64>(a); break;
    case 128: emu_fwd<128>(a); break;
    default: emu_fwd<256>(a); break;
  }
}
void scan_bwd(const d::GdnScanBwdArgs& a, void* stream) {
  if (stream != nullptr) throw std::runtime_error("emulated launcher got a CUDA stream");
  check_emu_sizes(a.n);
  switch (a.n.key_dim) {
    case 64: emu_bwd<64>(a); break;
    case 128: emu_bwd<128>(a); break;
    default: emu_bwd<256>(a); break;
  }
}
template <typename T>
void emu_step(const d::GdnStepArgs& a) {
  fill_nan(a.state_out, int64_t{a.bh} * a.value_dim * a.key_dim);
  emu::launch(dim3(static_cast<unsigned>((a.value_dim + k::kStepRows - 1) / k::kStepRows), static_cast<unsigned>(a.bh)),
              dim3(k::kStepThreads), 0, [&] { k::gdn_step_kernel<T>(a); }, g_opt);
}
void step(const d::GdnStepArgs& a, d::GdnKernelDtype dt, void*) {
  switch (dt) {
    case d::GdnKernelDtype::kBF16: emu_step<__nv_bfloat16>(a); break;
    case d::GdnKernelDtype::kF16: emu_step<__half>(a); break;
    case d::GdnKernelDtype::kF32: emu_step<float>(a); break;
  }
}
void inverse(const d::GdnInverseArgs& a, void*) {
  fill_nan(a.t, int64_t{a.count} * a.chunk * a.chunk);
  emu::launch(dim3(static_cast<unsigned>(a.count)), dim3(k::kInvThreads), k::kInvSmem, [&] { k::gdn_inverse_kernel(a); },
              g_opt);
}
std::string no_device_error(int) { return ""; }

const d::GatedDeltaLaunchers kEmulated{true, &no_device_error, &scan_fwd, &scan_bwd, &step, &inverse};

struct Case {
  int64_t b = 1, h = 2, t = 130, dk = 64, dv = 64;
  bool init = false, reset = false, l2 = false, neg = false, bf16 = false;
};

// A case from its sizes and flags ("init reset l2 neg bf16", any subset).
Case make_case(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, const std::string& flags = "") {
  Case c;
  c.b = b, c.h = h, c.t = t, c.dk = dk, c.dv = dv;
  auto has = [&](const char* f) { return flags.find(f) != std::string::npos; };
  c.init = has("init"), c.reset = has("reset"), c.l2 = has("l2"), c.neg = has("neg"), c.bf16 = has("bf16");
  return c;
}

std::string describe(const Case& c) {
  return subq::str("B", c.b, " H", c.h, " T", c.t, " Dk", c.dk, " Dv", c.dv, c.init ? " init" : "",
                   c.reset ? " reset" : "", c.l2 ? " l2" : "", c.neg ? " beta[0,2]" : "", c.bf16 ? " bf16" : " fp32");
}

struct Inputs {
  Tensor q, k, v, g, beta, s0, reset;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  using subq::test::randn;
  Inputs in;
  const auto dt = c.bf16 ? torch::kBFloat16 : torch::kFloat32;
  in.q = randn({c.b, c.h, c.t, c.dk}, seed, 1.0).to(dt);
  in.k = randn({c.b, c.h, c.t, c.dk}, seed + 1, 1.0).to(dt);
  if (!c.l2) {  // the op takes q, k as given: give it unit keys and scaled queries, as a model would
    in.q = (torch::nn::functional::normalize(in.q.to(torch::kFloat32), torch::nn::functional::NormalizeFuncOptions().dim(-1)) /
            std::sqrt(static_cast<double>(c.dk)))
               .to(dt);
    in.k = torch::nn::functional::normalize(in.k.to(torch::kFloat32), torch::nn::functional::NormalizeFuncOptions().dim(-1))
               .to(dt);
  }
  in.v = randn({c.b, c.h, c.t, c.dv}, seed + 2).to(dt);
  in.g = -torch::nn::functional::softplus(randn({c.b, c.h, c.t}, seed + 3, 1.0, -2.0)).to(torch::kFloat32);
  in.beta = torch::sigmoid(randn({c.b, c.h, c.t}, seed + 4)).to(torch::kFloat32) * (c.neg ? 2.0 : 1.0);
  if (c.init) in.s0 = randn({c.b, c.h, c.dv, c.dk}, seed + 5, 0.5).to(torch::kFloat32);
  if (c.reset) {
    in.reset = subq::test::rand_mask({c.b, c.t}, seed + 6, 0.04);
    in.reset.index_put_({0, 0}, true);
    if (c.t > 70) {
      in.reset.index_put_({0, 66}, true);
      in.reset.index_put_({0, 69}, true);
    }
  }
  return in;
}

void run_case(const Case& c) {
  INFO(describe(c));
  const Inputs in = make_inputs(c, 100 + static_cast<uint64_t>(c.t + c.dk + c.dv));
  subq::ops::GatedDeltaOptions opts;
  opts.l2_normalize_qk = c.l2;
  const double fwd_tol = c.bf16 ? 5e-3 : 1e-4, grad_tol = c.bf16 ? 1e-2 : 1e-4;

  std::vector<Tensor> inputs{in.q, in.k, in.v, in.g, in.beta};
  if (c.init) inputs.push_back(in.s0);
  auto loss_of = [&](bool kernels) {
    return [&, kernels](const std::vector<Tensor>& x) {
      const Tensor s0 = c.init ? x[5] : Tensor();
      const auto r = kernels ? d::gated_delta_kernel_path(kEmulated, x[0], x[1], x[2], x[3], x[4], s0, in.reset, c.l2)
                             : subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], s0, in.reset, opts);
      return subq::test::project({r.o, r.final_state});
    };
  };
  for (int pass = 0; pass < 2; ++pass) {
    g_opt.order = pass == 0 ? emu::Order::kAscending : emu::Order::kDescending;
    INFO("pass " << pass);
    {
      torch::NoGradGuard ng;
      const auto got = d::gated_delta_kernel_path(kEmulated, in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset, c.l2);
      const auto want = subq::ops::gated_delta_chunkwise(in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset, opts);
      REQUIRE(got.o.scalar_type() == in.q.scalar_type());
      REQUIRE(got.final_state.scalar_type() == torch::kFloat32);
      subq::test::require_close("o", got.o, want.o, fwd_tol);
      subq::test::require_close("final state", got.final_state, want.final_state, fwd_tol);
    }
    if (pass == 1) continue;  // gradients once (the backward kernel runs in both orders via the forward pass)
    const auto got = subq::test::grads_of(loss_of(true), inputs);
    const auto want = subq::test::grads_of(loss_of(false), inputs);
    const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
    for (size_t i = 0; i < inputs.size(); ++i) subq::test::require_close(names[i], got[i], want[i], grad_tol);
  }
}

}  // namespace

TEST_CASE("gated delta scan kernels through the glue (CPU emulation)", "[ops][gated_delta][kernels]") {
  run_case(make_case(1, 2, 130, 64, 64));                                                        // 3 chunks, ragged last one
  run_case(make_case(1, 1, 1, 64, 32));               // T = 1
  run_case(make_case(2, 1, 64, 64, 96, "init"));  // exactly one chunk, 3 value tiles
  run_case(make_case(1, 1, 150, 64, 64, "init reset neg"));
  run_case(make_case(1, 1, 40, 128, 32, "init l2"));  // T < 64, in-op norm
  run_case(make_case(1, 1, 100, 128, 64, "reset bf16"));
}

TEST_CASE("gated delta scan kernels, Dk = 256 (CPU emulation)", "[ops][gated_delta][kernels]") {
  run_case(make_case(1, 1, 70, 256, 32, "init reset neg"));
}

TEST_CASE("gated delta kernel path: gradients when only o or only the final state is used (CPU emulation)",
          "[ops][gated_delta][kernels]") {
  const Case c = make_case(1, 1, 100, 64, 32, "init reset");
  const Inputs in = make_inputs(c, 4321);
  g_opt.order = emu::Order::kAscending;
  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "o only" : "final state only"));
    auto loss_of = [&](bool kernels) {
      return [&, kernels](const std::vector<Tensor>& x) {
        const auto r = kernels ? d::gated_delta_kernel_path(kEmulated, x[0], x[1], x[2], x[3], x[4], x[5], in.reset, false)
                               : subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], x[5], in.reset);
        return subq::test::project({which == 0 ? r.o : r.final_state});
      };
    };
    const std::vector<Tensor> inputs{in.q, in.k, in.v, in.g, in.beta, in.s0};
    const auto got = subq::test::grads_of(loss_of(true), inputs);
    const auto want = subq::test::grads_of(loss_of(false), inputs);
    const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!want[i].defined()) {  // the input does not reach the loss (q for the final state): zero or undefined
        INFO(names[i]);
        CHECK((!got[i].defined() || torch::equal(got[i], torch::zeros_like(got[i]))));
      } else {
        subq::test::require_close(names[i], got[i], want[i], 1e-4);
      }
    }
  }
}

TEST_CASE("gated delta kernel path under bf16 autocast matches the reference under autocast (CPU emulation)",
          "[ops][gated_delta][kernels]") {
  const Case c = make_case(1, 2, 100, 64, 64, "init reset neg bf16");
  const Inputs in = make_inputs(c, 999);
  g_opt.order = emu::Order::kAscending;
  const std::vector<Tensor> inputs{in.q, in.k, in.v, in.g, in.beta, in.s0};
  auto loss_of = [&](bool kernels) {
    return [&, kernels](const std::vector<Tensor>& x) {
      subq::ops::GatedDeltaResult r;
      {
        subq::AutocastGuard ac(torch::Device(torch::kCPU), torch::kBFloat16);
        r = kernels ? d::gated_delta_kernel_path(kEmulated, x[0], x[1], x[2], x[3], x[4], x[5], in.reset, false)
                    : subq::ops::gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], x[5], in.reset);
      }
      return subq::test::project({r.o, r.final_state});
    };
  };
  {
    torch::NoGradGuard ng;
    subq::ops::GatedDeltaResult got, want;
    {
      subq::AutocastGuard ac(torch::Device(torch::kCPU), torch::kBFloat16);
      got = d::gated_delta_kernel_path(kEmulated, in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset, false);
      want = subq::ops::gated_delta_chunkwise(in.q, in.k, in.v, in.g, in.beta, in.s0, in.reset);
    }
    subq::test::require_close("o", got.o, want.o, 5e-3);
    subq::test::require_close("final state", got.final_state, want.final_state, 5e-3);
  }
  const auto got = subq::test::grads_of(loss_of(true), inputs);
  const auto want = subq::test::grads_of(loss_of(false), inputs);
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "ds0"};
  for (size_t i = 0; i < inputs.size(); ++i) subq::test::require_close(names[i], got[i], want[i], 1e-2);
  CHECK(!at::autocast::is_autocast_enabled(torch::kCPU));
}

TEST_CASE("gated delta backward scan alone, in both thread orders (CPU emulation)", "[ops][gated_delta][kernels]") {
  // The reverse scan against autograd of the chunk loop, with every cotangent given (du, dstates, dfinal),
  // in both thread orders.
  const int64_t B = 1, H = 1, nc = 3, C = 64, dk = 64, dv = 64;
  using subq::test::randn;
  const Tensor ut = randn({B, H, nc, C, dv}, 1).to(torch::kFloat32);
  const Tensor w = randn({B, H, nc, C, dk}, 2, 0.1).to(torch::kFloat32);
  const Tensor ke = randn({B, H, nc, C, dk}, 3, 0.1).to(torch::kFloat32);
  const Tensor ge = torch::rand({B, H, nc}, torch::kFloat32);
  const Tensor s0 = randn({B, H, dv, dk}, 4).to(torch::kFloat32);
  auto loop = [&](const std::vector<Tensor>& x) {
    Tensor s = x[4];
    std::vector<Tensor> us, st;
    for (int64_t c = 0; c < nc; ++c) {
      st.push_back(s);
      Tensor u = x[0].select(2, c) - torch::matmul(x[1].select(2, c), s.transpose(-1, -2));
      us.push_back(u);
      s = x[3].select(-1, c).unsqueeze(-1).unsqueeze(-1) * s + torch::matmul(u.transpose(-1, -2), x[2].select(2, c));
    }
    return subq::test::project({torch::stack(us, 2), torch::stack(st, 2), s}, 77);
  };
  const auto want = subq::test::grads_of(loop, {ut, w, ke, ge, s0});
  // Forward scan (emulated) for u and states, then the reverse scan with the loop's cotangents.
  Tensor u = torch::empty_like(ut), states = torch::empty({B, H, nc, dv, dk}), s_out = torch::empty({B, H, dv, dk});
  const Tensor du = randn({B, H, nc, C, dv}, 77).to(torch::kFloat32);
  const Tensor dst = randn({B, H, nc, dv, dk}, 78).to(torch::kFloat32);
  const Tensor dfin = randn({B, H, dv, dk}, 79).to(torch::kFloat32);
  for (int pass = 0; pass < 2; ++pass) {
    g_opt.order = pass == 0 ? emu::Order::kAscending : emu::Order::kDescending;
    d::GdnScanFwdArgs fa;
    fa.n = {static_cast<int>(B * H), static_cast<int>(nc), static_cast<int>(C), static_cast<int>(dk),
            static_cast<int>(dv)};
    fa.u_tilde = ut.data_ptr<float>();
    fa.w = w.data_ptr<float>();
    fa.k_end = ke.data_ptr<float>();
    fa.gamma_end = ge.data_ptr<float>();
    fa.s0 = s0.data_ptr<float>();
    fa.u = u.data_ptr<float>();
    fa.states = states.data_ptr<float>();
    fa.s_out = s_out.data_ptr<float>();
    scan_fwd(fa, nullptr);
    Tensor dut = torch::empty_like(ut), dw = torch::empty({dv / 32, B, H, nc, C, dk}), dke = torch::empty_like(dw);
    Tensor dg = torch::empty({dv / 32, B, H, nc}), ds0 = torch::empty({B, H, dv, dk});
    d::GdnScanBwdArgs ba;
    ba.n = fa.n;
    ba.u = u.data_ptr<float>();
    ba.w = fa.w;
    ba.k_end = fa.k_end;
    ba.gamma_end = fa.gamma_end;
    ba.states = states.data_ptr<float>();
    ba.du = du.data_ptr<float>();
    ba.dstates = dst.data_ptr<float>();
    ba.ds_out = dfin.data_ptr<float>();
    ba.du_tilde = dut.data_ptr<float>();
    ba.dw_part = dw.data_ptr<float>();
    ba.dk_end_part = dke.data_ptr<float>();
    ba.dgamma_part = dg.data_ptr<float>();
    ba.ds0 = ds0.data_ptr<float>();
    scan_bwd(ba, nullptr);
    INFO("pass " << pass);
    // project() weights the three outputs with seeds 77, 78, 79 (the same tensors as du, dst, dfin).
    subq::test::require_close("du_tilde", dut, want[0], 1e-4);
    subq::test::require_close("dw", dw.sum(0), want[1], 1e-4);
    subq::test::require_close("dk_end", dke.sum(0), want[2], 1e-4);
    subq::test::require_close("dgamma_end", dg.sum(0), want[3], 1e-4);
    subq::test::require_close("ds0", ds0, want[4], 1e-4);
  }
}

TEST_CASE("gated delta unit lower triangular inverse kernel (CPU emulation)", "[ops][gated_delta][kernels]") {
  for (int64_t C : {1, 5, 64}) {
    INFO("C " << C);
    // A like the UT transform's: strictly lower, entries beta (k_t . k_s) decay with |.| < 2
    const Tensor A = (torch::rand({3, C, C}) * 2 - 1).tril(-1).contiguous();
    Tensor upper_garbage = A + torch::triu(torch::full({C, C}, 7.f));  // must not be read
    Tensor T = torch::empty_like(A);
    d::GdnInverseArgs a;
    a.count = 3;
    a.chunk = static_cast<int>(C);
    a.a = upper_garbage.data_ptr<float>();
    a.t = T.data_ptr<float>();
    for (int pass = 0; pass < 2; ++pass) {
      g_opt.order = pass == 0 ? emu::Order::kAscending : emu::Order::kDescending;
      inverse(a, nullptr);
      const Tensor want = torch::linalg_inv(A.to(torch::kDouble) + torch::eye(C, torch::kDouble));
      subq::test::require_close("T", T, want, 1e-5);
      CHECK(torch::equal(T.triu(1), torch::zeros_like(T)));
    }
  }
}

TEST_CASE("gated delta decode-step kernel through the glue (CPU emulation)", "[ops][gated_delta][kernels]") {
  using subq::test::randn;
  for (bool l2 : {false, true})
    for (bool with_state : {false, true})
      for (auto dt : {torch::kFloat32, torch::kBFloat16})
        for (auto [dk, dv] : {std::pair<int64_t, int64_t>{64, 64}, {128, 20}, {256, 512}, {48, 40}}) {
          INFO("l2 " << l2 << " state " << with_state << " dtype " << dt << " Dk " << dk << " Dv " << dv);
          const int64_t B = 2, H = 2;
          Tensor q = randn({B, H, dk}, 11).to(dt), k = randn({B, H, dk}, 12).to(dt), v = randn({B, H, dv}, 13).to(dt);
          if (!l2) {
            q = (q.to(torch::kFloat32) / q.to(torch::kFloat32).norm(2, -1, true) / std::sqrt(double(dk))).to(dt);
            k = (k.to(torch::kFloat32) / k.to(torch::kFloat32).norm(2, -1, true)).to(dt);
          }
          const Tensor g = -torch::rand({B, H}), beta = 2 * torch::rand({B, H});
          const Tensor s = with_state ? randn({B, H, dv, dk}, 14).to(torch::kFloat32) : Tensor();
          subq::ops::GatedDeltaOptions opts;
          opts.l2_normalize_qk = l2;
          for (int pass = 0; pass < 2; ++pass) {
            g_opt.order = pass == 0 ? emu::Order::kAscending : emu::Order::kDescending;
            const auto got = d::gated_delta_step_kernel_path(kEmulated, q, k, v, g, beta, s, l2);
            const auto want = subq::ops::gated_delta_step(q, k, v, g, beta, s, opts);
            REQUIRE(got.o.scalar_type() == dt);
            subq::test::require_close("state", got.final_state, want.final_state, 1e-5);
            subq::test::require_close("o", got.o, want.o, dt == torch::kFloat32 ? 1e-5 : 5e-3);
          }
        }
}

#else
TEST_CASE("gated delta kernels (CPU emulation)", "[ops][gated_delta][kernels]") {
  SUBQ_SKIP("built without CUDA: the emulation needs the CUDA headers");
}
#endif
