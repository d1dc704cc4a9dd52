// test_ssd_kernel_math.cpp — the algorithm of the SSD CUDA kernels (src/ops/ssd/ssd_cuda_*.cu), written
// out with LibTorch ops in fp64 on the CPU, against autograd of the chunkwise reference: forward scan
// (states entering each chunk), per-chunk outputs, reverse scan (state gradients leaving each chunk) and
// the per-chunk gradient formulas (dX, M, Q, u, r, dcum, ddt, dA, dD, dB and dC summed over the heads of
// a group), with resets, initial state, G > 1 and a ragged last chunk.
//
// Also: the dispatching entries (ssd(), ssd_decode(), SUBQ_OPS_IMPL) on the CPU, where they must run the
// references and the kernel entry points must refuse with a reason.
//
// This checks the math the kernels implement (every quantity has the kernels' name and meaning), not the
// CUDA code itself: that is tests/gpu/test_kernels_ssd.cpp on a GPU. Chunk length is a parameter here
// (the kernels use 64) so that small inputs span several chunks.
#include <cstdlib>
#include <limits>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/ops_impl.h"
#include "subq/ops/ssd.h"
#include "subq_catch.h"

namespace {

using torch::Tensor;
namespace F = torch::nn::functional;

struct Grads {
  Tensor y, final_state, dx, ddt, dA, dB, dC, dD, dh0;
};

Tensor pad_t(const Tensor& t, int64_t dim, int64_t len) {
  if (t.size(dim) == len) return t;
  std::vector<int64_t> shape = t.sizes().vec();
  shape[static_cast<size_t>(dim)] = len - t.size(dim);
  return torch::cat({t, torch::zeros(shape, t.options())}, dim);
}

// The kernels' algorithm. Shapes as in subq/ops/ssd.h; dy, dfinal: gradients of y and the final state.
Grads emulate(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& h0, const Tensor& reset, const Tensor& dy, const Tensor& dfinal, int64_t L) {
  const int64_t bs = x.size(0), H = x.size(1), T = x.size(2), P = x.size(3), G = B.size(1), N = B.size(3), hg = H / G;
  const int64_t nc = (T + L - 1) / L, Tp = nc * L;
  auto o = x.options();
  // groups -> heads (the kernels index group h / hg instead of copying)
  auto heads = [&](const Tensor& t) { return t.unsqueeze(2).expand({bs, G, hg, Tp, N}).reshape({bs, H, Tp, N}); };
  const Tensor xp = pad_t(x, 2, Tp), dyp = pad_t(dy, 2, Tp), dtp = pad_t(dt, 2, Tp);
  const Tensor Bh = heads(pad_t(B, 2, Tp)), Ch = heads(pad_t(C, 2, Tp));
  const Tensor rp = reset.defined() ? pad_t(reset.to(torch::kInt64), 1, Tp) : torch::zeros({bs, Tp}, o.dtype(torch::kInt64));
  const Tensor Dv = D.defined() ? D.view({1, H, 1, 1}) : torch::zeros({1, H, 1, 1}, o);
  const Tensor Av = A.view({1, H, 1});
  const Tensor tri = torch::ones({L, L}, o.dtype(torch::kBool)).tril();

  struct ChunkDecay {
    Tensor xc, dyc, dtc, Bc, Cc, cum, e, v, w, gamma, Lm, CB;
  };
  auto chunk = [&](int64_t c) {
    ChunkDecay k;
    k.xc = xp.narrow(2, c * L, L);
    k.dyc = dyp.narrow(2, c * L, L);
    k.dtc = dtp.narrow(2, c * L, L);
    k.Bc = Bh.narrow(2, c * L, L);
    k.Cc = Ch.narrow(2, c * L, L);
    k.cum = (k.dtc * Av).cumsum(-1);                          // [B,H,L] inclusive
    const Tensor seg = rp.narrow(1, c * L, L).cumsum(-1).unsqueeze(1);  // [B,1,L] document ids
    const Tensor cum_last = k.cum.select(-1, L - 1).unsqueeze(-1);
    const Tensor seg_last = seg.select(-1, L - 1).unsqueeze(-1);
    k.e = torch::where(seg.eq(0), torch::exp(k.cum), torch::zeros_like(k.cum));
    k.v = torch::where(seg.eq(seg_last), torch::exp(cum_last - k.cum), torch::zeros_like(k.cum));
    k.w = k.dtc * k.v;
    k.gamma = torch::where(seg_last.eq(0), torch::exp(cum_last), torch::zeros_like(cum_last)).squeeze(-1);  // [B,H]
    const Tensor same = seg.unsqueeze(-1).eq(seg.unsqueeze(-2)).logical_and(tri);  // [B,1,L,L] (t, s)
    k.Lm = torch::exp((k.cum.unsqueeze(-1) - k.cum.unsqueeze(-2)).masked_fill(same.logical_not(),
                                                                             -std::numeric_limits<double>::infinity()));
    k.CB = torch::matmul(k.Cc, k.Bc.transpose(-1, -2));
    return k;
  };

  Grads g;
  // forward scan: states[c] = the state entering chunk c
  std::vector<Tensor> states;
  Tensor S = h0.defined() ? h0.clone() : torch::zeros({bs, H, P, N}, o);
  std::vector<Tensor> ys;
  for (int64_t c = 0; c < nc; ++c) {
    const ChunkDecay k = chunk(c);
    states.push_back(S);
    const Tensor Gm = k.CB * k.Lm * k.dtc.unsqueeze(-2);  // (CB o L o dt_s)[t][s]
    ys.push_back(torch::matmul(Gm, k.xc) + k.e.unsqueeze(-1) * torch::matmul(k.Cc, S.transpose(-1, -2)) + Dv * k.xc);
    S = k.gamma.unsqueeze(-1).unsqueeze(-1) * S + torch::matmul((k.w.unsqueeze(-1) * k.xc).transpose(-1, -2), k.Bc);
  }
  g.y = torch::cat(ys, 2).narrow(2, 0, T);
  g.final_state = S;
  // reverse scan: dstates[c] = the gradient of the state leaving chunk c
  std::vector<Tensor> dstates(static_cast<size_t>(nc));
  Tensor dS = dfinal.defined() ? dfinal.clone() : torch::zeros({bs, H, P, N}, o);
  for (int64_t c = nc - 1; c >= 0; --c) {
    const ChunkDecay k = chunk(c);
    dstates[static_cast<size_t>(c)] = dS;
    dS = k.gamma.unsqueeze(-1).unsqueeze(-1) * dS + torch::matmul((k.e.unsqueeze(-1) * k.dyc).transpose(-1, -2), k.Cc);
  }
  g.dh0 = dS;
  // per-chunk gradients
  std::vector<Tensor> dxs, ddts, dBs, dCs;
  Tensor dA = torch::zeros({H}, o), dD = torch::zeros({H}, o);
  for (int64_t c = 0; c < nc; ++c) {
    const ChunkDecay k = chunk(c);
    const Tensor& S0 = states[static_cast<size_t>(c)];
    const Tensor& dS1 = dstates[static_cast<size_t>(c)];
    const Tensor dts = k.dtc.unsqueeze(-2);  // dt_s along columns
    const Tensor Gm = k.CB * k.Lm * dts;
    const Tensor DYX = torch::matmul(k.dyc, k.xc.transpose(-1, -2));
    const Tensor M = k.Lm * dts * DYX;
    const Tensor Q = k.CB * k.Lm * DYX;
    const Tensor XdS = torch::matmul(k.xc, dS1);
    const Tensor dYS = torch::matmul(k.dyc, S0);
    const Tensor u = (XdS * k.Bc).sum(-1), r = (dYS * k.Cc).sum(-1);
    dxs.push_back(torch::matmul(Gm.transpose(-1, -2), k.dyc) +
                  k.w.unsqueeze(-1) * torch::matmul(k.Bc, dS1.transpose(-1, -2)) + Dv * k.dyc);
    const Tensor dBh = torch::matmul(M.transpose(-1, -2), k.Cc) + k.w.unsqueeze(-1) * XdS;
    const Tensor dCh = torch::matmul(M, k.Bc) + k.e.unsqueeze(-1) * dYS;
    dBs.push_back(dBh.view({bs, G, hg, L, N}).sum(2));
    dCs.push_back(dCh.view({bs, G, hg, L, N}).sum(2));
    const Tensor rowT = (Q * dts).sum(-1), colQ = Q.sum(-2);
    const Tensor gdot = (dS1 * S0).sum(std::vector<int64_t>{-1, -2});
    Tensor dcum = rowT - k.dtc * colQ + k.e * r - k.w * u;
    dcum.select(-1, L - 1).add_(k.gamma * gdot + (k.w * u).sum(-1));
    const Tensor da = dcum.flip(-1).cumsum(-1).flip(-1);
    ddts.push_back(Av * da + colQ + k.v * u);
    dA += (k.dtc * da).sum(std::vector<int64_t>{0, 2});
    dD += (k.dyc * k.xc).sum(std::vector<int64_t>{0, 2, 3});
  }
  g.dx = torch::cat(dxs, 2).narrow(2, 0, T);
  g.ddt = torch::cat(ddts, 2).narrow(2, 0, T);
  g.dB = torch::cat(dBs, 2).narrow(2, 0, T);
  g.dC = torch::cat(dCs, 2).narrow(2, 0, T);
  g.dA = dA;
  g.dD = dD;
  return g;
}

void check_against_autograd(int64_t bs, int64_t H, int64_t G, int64_t T, int64_t P, int64_t N, int64_t L,
                            bool resets, bool init, bool fast, uint64_t seed) {
  INFO("B" << bs << " H" << H << " G" << G << " T" << T << " P" << P << " N" << N << " chunk " << L
           << (resets ? " reset" : "") << (init ? " init" : "") << (fast ? " fast" : ""));
  using subq::test::randn;
  const Tensor x = randn({bs, H, T, P}, seed + 1), B = randn({bs, G, T, N}, seed + 2), C = randn({bs, G, T, N}, seed + 3);
  const Tensor z = randn({bs, H, T}, seed + 4);
  const Tensor dt = fast ? F::softplus(z + 0.5) : F::softplus(z * 0.5 - 1.5);
  const Tensor uA = randn({H}, seed + 5).abs();
  const Tensor A = fast ? -(4.0 + uA) : -(0.05 + 0.5 * uA);
  const Tensor D = randn({H}, seed + 6);
  const Tensor h0 = init ? randn({bs, H, P, N}, seed + 7) : Tensor();
  Tensor reset;
  if (resets) {
    reset = subq::test::rand_mask({bs, T}, seed + 8, 0.05);
    auto a = reset.accessor<bool, 2>();
    for (int64_t pos : {L - 1, L, 2 * L + 1, T - 1})
      if (pos > 0 && pos < T) a[0][pos] = true;
    if (bs > 1) a[1][0] = true;
  }
  const Tensor dy = randn({bs, H, T, P}, seed + 9), dfinal = randn({bs, H, P, N}, seed + 10);

  std::vector<Tensor> leaves = {x, dt, A, B, C, D};
  if (init) leaves.push_back(h0);
  for (auto& t : leaves) t = t.detach().clone().requires_grad_(true);
  const auto ref = subq::ops::ssd_chunkwise(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                            init ? leaves[6] : Tensor(), reset, L);
  const Tensor loss = (ref.y * dy).sum() + (ref.final_state * dfinal).sum();
  const auto gr = torch::autograd::grad({loss}, leaves);

  const Grads em = emulate(x, dt, A, B, C, D, h0, reset, dy, dfinal, L);
  const double tol = 1e-10;
  subq::test::require_close("y", em.y, ref.y, tol);
  subq::test::require_close("final state", em.final_state, ref.final_state, tol);
  subq::test::require_close("dx", em.dx, gr[0], tol);
  subq::test::require_close("ddt", em.ddt, gr[1], tol);
  subq::test::require_close("dA", em.dA, gr[2], tol);
  subq::test::require_close("dB", em.dB, gr[3], tol);
  subq::test::require_close("dC", em.dC, gr[4], tol);
  subq::test::require_close("dD", em.dD, gr[5], tol);
  if (init) subq::test::require_close("dh0", em.dh0, gr[6], tol);
}

}  // namespace

TEST_CASE("the SSD kernels' chunk decomposition and gradient formulas equal autograd of the reference",
          "[ops][ssd]") {
  check_against_autograd(2, 4, 2, 70, 5, 3, 16, /*resets=*/true, /*init=*/true, /*fast=*/false, 10);
  check_against_autograd(2, 4, 2, 70, 5, 3, 16, true, true, true, 20);
  check_against_autograd(1, 3, 1, 33, 4, 6, 8, false, false, false, 30);
  check_against_autograd(2, 2, 1, 1, 3, 2, 16, true, true, false, 40);      // T = 1
  check_against_autograd(2, 2, 2, 64, 4, 4, 16, true, false, true, 50);     // whole chunks only
  check_against_autograd(1, 6, 3, 130, 2, 5, 64, true, true, false, 60);    // the kernels' chunk length
}

TEST_CASE("ssd dispatch on the CPU runs the references; the kernel entry points refuse with a reason", "[ops][ssd]") {
  using subq::test::randn;
  const Tensor x = randn({2, 4, 50, 64}, 1, 1.0, 0.0, torch::kFloat32);
  const Tensor dt = torch::softplus(randn({2, 4, 50}, 2, 1.0, -1.0, torch::kFloat32));
  const Tensor A = -torch::ones({4});
  const Tensor B = randn({2, 2, 50, 64}, 3, 1.0, 0.0, torch::kFloat32), C = randn({2, 2, 50, 64}, 4, 1.0, 0.0, torch::kFloat32);
  const Tensor D = torch::ones({4});
  subq::test::OpsImplEnv env;
  env.set(nullptr);
  CHECK(subq::ops::ops_impl() == subq::ops::OpsImpl::kAuto);
  CHECK_FALSE(subq::ops::ssd_cuda_unsupported(x, B).empty());
  auto r = subq::ops::ssd(x, dt, A, B, C, D, {}, {}, 16);
  auto ref = subq::ops::ssd_chunkwise(x, dt, A, B, C, D, {}, {}, 16);
  CHECK(torch::equal(r.y, ref.y));
  CHECK(torch::equal(r.final_state, ref.final_state));
  auto s = subq::ops::ssd_decode(x.select(2, 0), dt.select(2, 0), A, B.select(2, 0), C.select(2, 0), D, r.final_state);
  auto s_ref = subq::ops::ssd_step(x.select(2, 0), dt.select(2, 0), A, B.select(2, 0), C.select(2, 0), D, r.final_state);
  CHECK(torch::equal(s.y, s_ref.y));
  CHECK_THROWS_AS(subq::ops::ssd_cuda(x, dt, A, B, C, D), subq::InputError);
  env.set("reference");
  CHECK(torch::equal(subq::ops::ssd(x, dt, A, B, C, D, {}, {}, 16).y, ref.y));
  env.set("cuda");
  CHECK_THROWS_AS(subq::ops::ssd(x, dt, A, B, C, D), subq::InputError);
  CHECK_THROWS_AS(subq::ops::ssd_decode(x.select(2, 0), dt.select(2, 0), A, B.select(2, 0), C.select(2, 0), D, {}),
                  subq::InputError);
  env.set("fast");
  CHECK_THROWS_AS(subq::ops::ssd(x, dt, A, B, C, D), subq::UsageError);
}
