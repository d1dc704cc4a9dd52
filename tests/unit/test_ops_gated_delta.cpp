// test_ops_gated_delta.cpp — the Gated DeltaNet ops: chunkwise (WY/UT) vs recurrent (outputs, final
// states, gradients of q, k, v, g, beta and the initial state) on awkward shapes, with beta in [0, 1]
// and in [0, 2] (negative-eigenvalue variant), packed documents (resets), an independent explicit
// matrix-form recurrence, fp64 finite-difference gradients (with and without in-op q/k normalisation),
// decode steps, dtypes and argument errors.
//
// Reference values come from the recurrent form run in fp64; the chunkwise form under test runs in fp32.
#include <cmath>
#include <functional>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/gated_delta.h"
#include "subq_catch.h"

namespace {


using subq::ops::GatedDeltaOptions;
using subq::test::require_close;
using Vec = std::vector<torch::Tensor>;
constexpr auto f64 = torch::kFloat64;

struct GdnIn {
  torch::Tensor q, k, v, g, beta, h0, reset;
  Vec vec() const { return {q, k, v, g, beta, h0}; }
};
const std::vector<std::string> kNames = {"q", "k", "v", "g", "beta", "initial_state"};

torch::Tensor l2n(const torch::Tensor& x) { return x * torch::rsqrt(x.square().sum(-1, true) + 1e-6); }

// Packed-document flags: random starts, a start at a chunk boundary (32), a one-token document (32, 33),
// a document made of the last token, and t = 0 in row 1 (drops the initial state).
torch::Tensor make_reset(int64_t b, int64_t t) {
  torch::Tensor r = torch::rand({b, t}, torch::TensorOptions().dtype(f64)) < 0.05;
  auto a = r.accessor<bool, 2>();
  if (t >= 40) a[0][17] = a[0][32] = a[0][33] = true;
  if (t >= 3) a[0][t - 1] = true;
  if (b > 1) a[1][0] = true;
  return r;
}

// Caller-side preprocessing as in DESIGN.md: q, k L2-normalised, q scaled by Dk^-1/2. g = log alpha with
// alpha mostly in [0.9, 1) (the state carries across chunks); `strong` gives alpha ~ e^-10 per step.
// beta = sigmoid(.) or, with beta2, 2 sigmoid(.) in [0, 2].
GdnIn make_gdn(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, uint64_t seed, bool beta2, bool resets,
               bool strong = false) {
  torch::manual_seed(seed);
  auto o = torch::TensorOptions().dtype(f64);
  GdnIn in;
  in.q = l2n(torch::randn({b, h, t, dk}, o)) / std::sqrt(static_cast<double>(dk));
  in.k = l2n(torch::randn({b, h, t, dk}, o));
  in.v = torch::randn({b, h, t, dv}, o);
  in.g = strong ? -5.0 * torch::softplus(torch::randn({b, h, t}, o) + 2.0)
                : -0.1 * torch::softplus(torch::randn({b, h, t}, o));
  in.beta = torch::sigmoid(torch::randn({b, h, t}, o)) * (beta2 ? 2.0 : 1.0);
  in.h0 = torch::randn({b, h, dv, dk}, o) * 0.5;
  if (resets) in.reset = make_reset(b, t);
  return in;
}

Vec cast(const Vec& v, torch::ScalarType dt) { return subq::test::cast_all(v, dt); }

using GdnFn = std::function<subq::ops::GatedDeltaResult(const Vec&)>;
GdnFn chunkwise(const torch::Tensor& reset, int64_t chunk, bool normalize = false) {
  GatedDeltaOptions opt;
  opt.chunk_size = chunk;
  opt.l2_normalize_qk = normalize;
  return [reset, opt](const Vec& v) {
    return subq::ops::gated_delta_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], reset, opt);
  };
}
GdnFn recurrent(const torch::Tensor& reset, bool normalize = false) {
  GatedDeltaOptions opt;
  opt.l2_normalize_qk = normalize;
  return [reset, opt](const Vec& v) {
    return subq::ops::gated_delta_recurrent(v[0], v[1], v[2], v[3], v[4], v[5], reset, opt);
  };
}

std::function<torch::Tensor(const Vec&)> loss_of(GdnFn fn, torch::Tensor wo, torch::Tensor ws) {
  return [fn, wo, ws](const Vec& v) {
    auto r = fn(v);
    return subq::test::weighted_sum(r.o, wo) + subq::test::weighted_sum(r.final_state, ws);
  };
}

// Chunkwise (fp32 and fp64) against recurrent (fp64): outputs, final state, every gradient.
void compare_forms(const GdnIn& in, int64_t chunk) {
  subq::test::compare_chunkwise_to_recurrent<subq::ops::GatedDeltaResult>(
      recurrent(in.reset), chunkwise(in.reset, chunk),
      [](const subq::ops::GatedDeltaResult& r) {
        return std::vector<std::pair<std::string, torch::Tensor>>{{"o", r.o}, {"final state", r.final_state}};
      },
      in.vec(), kNames);
}

}  // namespace

TEST_CASE("gated delta chunkwise matches recurrent on awkward shapes, both beta ranges", "[ops][gated_delta]") {
  struct Case {
    int64_t b, h, t, dk, dv, chunk;
  };
  // T = 1, T = 63 < chunk, T not a multiple of the chunk, T = 257, odd head dims (7, 5, 60, 100).
  const std::vector<Case> cases = {
      {1, 1, 1, 8, 8, 64},    {2, 3, 63, 7, 5, 64}, {2, 2, 100, 60, 100, 32},
      {1, 2, 257, 16, 24, 64}, {2, 2, 50, 32, 32, 16}, {1, 3, 45, 3, 9, 1},
  };
  uint64_t seed = 200;
  for (const auto& c : cases)
    for (bool beta2 : {false, true})
      for (bool resets : {false, true}) {
        INFO("B=" << c.b << " H=" << c.h << " T=" << c.t << " Dk=" << c.dk << " Dv=" << c.dv << " chunk=" << c.chunk
                  << " beta in [0," << (beta2 ? 2 : 1) << "] resets=" << resets);
        compare_forms(make_gdn(c.b, c.h, c.t, c.dk, c.dv, ++seed, beta2, resets), c.chunk);
      }
}

TEST_CASE("gated delta chunkwise matches recurrent at model sizes", "[ops][gated_delta]") {
  // head dim 128, chunk 64, T = 300 (ragged last chunk), packed documents, beta in [0, 2].
  compare_forms(make_gdn(1, 2, 300, 128, 128, 4, true, true), 64);
}

TEST_CASE("gated delta chunkwise is stable under strong decay and without decay", "[ops][gated_delta]") {
  // alpha ~ e^-10 per step: within-chunk decays underflow to 0; nothing may overflow or divide by 0.
  compare_forms(make_gdn(2, 2, 130, 12, 10, 7, true, true, /*strong=*/true), 64);
  // alpha = 1 (g = 0), beta in [0, 2]: the pure (negative-eigenvalue) delta rule.
  GdnIn in = make_gdn(1, 2, 150, 12, 10, 8, true, true);
  in.g = torch::zeros_like(in.g);
  compare_forms(in, 64);
}

TEST_CASE("gated delta matches the explicit matrix-form recurrence", "[ops][gated_delta]") {
  // S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T with the Dk x Dk matrix formed.
  const int64_t b = 2, h = 2, t = 30, dk = 5, dv = 4;
  for (bool beta2 : {false, true}) {
    GdnIn in = make_gdn(b, h, t, dk, dv, 9 + beta2, beta2, true);
    torch::Tensor o = torch::zeros({b, h, t, dv}, f64), sT = torch::zeros({b, h, dv, dk}, f64);
    torch::Tensor eye = torch::eye(dk, f64);
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t hi = 0; hi < h; ++hi) {
        torch::Tensor s = in.h0[bi][hi].clone();
        for (int64_t ti = 0; ti < t; ++ti) {
          if (in.reset[bi][ti].item<bool>()) s.zero_();
          torch::Tensor k = in.k[bi][hi][ti].unsqueeze(1), v = in.v[bi][hi][ti].unsqueeze(1);
          double alpha = std::exp(in.g[bi][hi][ti].item<double>()), beta = in.beta[bi][hi][ti].item<double>();
          s = alpha * s.mm(eye - beta * k.mm(k.t())) + beta * v.mm(k.t());
          o[bi][hi][ti] = s.mv(in.q[bi][hi][ti]);
        }
        sT[bi][hi] = s;
      }
    INFO("beta in [0," << (beta2 ? 2 : 1) << "]");
    auto rec = recurrent(in.reset)(in.vec());
    require_close("recurrent o vs matrix form", rec.o, o, 1e-12);
    require_close("recurrent state vs matrix form", rec.final_state, sT, 1e-12);
    for (int64_t chunk : {4, 7, 64}) {
      INFO("chunk " << chunk);
      auto chk = chunkwise(in.reset, chunk)(in.vec());
      require_close("chunkwise o vs matrix form", chk.o, o, 1e-12);
      require_close("chunkwise state vs matrix form", chk.final_state, sT, 1e-12);
    }
  }
}

TEST_CASE("gated delta gradients match finite differences in fp64", "[ops][gated_delta]") {
  // Tiny shapes, T = 7 with chunk 3 (ragged last chunk), resets inside a chunk, both beta ranges.
  for (bool beta2 : {false, true})
    for (bool resets : {false, true}) {
      GdnIn in = make_gdn(2, 2, 7, 3, 2, 21 + 2 * beta2 + resets, beta2, false);
      if (resets) {
        in.reset = torch::zeros({2, 7}, torch::kBool);
        in.reset[0][4] = true;  // inside the second chunk
        in.reset[1][0] = true;  // discards h0 in row 1
        in.reset[1][3] = true;  // at a chunk start
      }
      torch::Tensor wo = torch::randn({2, 2, 7, 2}, f64), ws = torch::randn({2, 2, 2, 3}, f64);
      INFO("beta in [0," << (beta2 ? 2 : 1) << "] resets=" << resets);
      subq::test::fd_gradcheck("chunkwise", loss_of(chunkwise(in.reset, 3), wo, ws), in.vec(), kNames);
      subq::test::fd_gradcheck("recurrent", loss_of(recurrent(in.reset), wo, ws), in.vec(), kNames);
    }
}

TEST_CASE("gated delta in-op q/k normalisation", "[ops][gated_delta]") {
  // raw q, k (not normalised, not scaled): the flag must equal the caller-side preprocessing
  GdnIn in = make_gdn(2, 2, 70, 6, 5, 71, false, true);
  in.q = torch::randn_like(in.q) * 3.0;
  in.k = torch::randn_like(in.k) * 0.5;
  Vec pre = in.vec();
  pre[0] = l2n(in.q) / std::sqrt(6.0);
  pre[1] = l2n(in.k);
  auto want = recurrent(in.reset)(pre);
  auto rec = recurrent(in.reset, true)(in.vec());
  auto chk = chunkwise(in.reset, 16, true)(cast(in.vec(), torch::kFloat32));
  require_close("recurrent, normalised inside", rec.o, want.o, 1e-12);
  require_close("chunkwise fp32, normalised inside", chk.o, want.o, 1e-5);
  require_close("chunkwise fp32 state, normalised inside", chk.final_state, want.final_state, 1e-5);
  // gradients through the normalisation
  GdnIn tiny = make_gdn(1, 2, 6, 3, 2, 72, true, false);
  tiny.q = torch::randn_like(tiny.q);
  tiny.k = torch::randn_like(tiny.k);
  tiny.reset = torch::zeros({1, 6}, torch::kBool);
  tiny.reset[0][2] = true;
  torch::Tensor wo = torch::randn({1, 2, 6, 2}, f64), ws = torch::randn({1, 2, 2, 3}, f64);
  subq::test::fd_gradcheck("chunkwise, normalised inside", loss_of(chunkwise(tiny.reset, 4, true), wo, ws),
                           tiny.vec(), kNames);
  subq::test::fd_gradcheck("recurrent, normalised inside", loss_of(recurrent(tiny.reset, true), wo, ws),
                           tiny.vec(), kNames);
}

TEST_CASE("gated delta packed documents equal separate runs and never leak", "[ops][gated_delta]") {
  const int64_t b = 2, h = 3, t = 90, dk = 8, dv = 6, chunk = 16;
  GdnIn in = make_gdn(b, h, t, dk, dv, 31, true, true);
  Vec v32 = cast(in.vec(), torch::kFloat32);
  auto packed = chunkwise(in.reset, chunk)(v32);
  auto packed_rec = recurrent(in.reset)(in.vec());
  auto rs = in.reset.accessor<bool, 2>();
  for (int64_t bi = 0; bi < b; ++bi) {
    std::vector<int64_t> starts = {0};
    for (int64_t ti = 1; ti < t; ++ti)
      if (rs[bi][ti]) starts.push_back(ti);
    REQUIRE(starts.size() >= 3);  // several documents per row
    starts.push_back(t);
    torch::Tensor state;
    for (size_t d = 0; d + 1 < starts.size(); ++d) {
      const int64_t s0 = starts[d], len = starts[d + 1] - s0;
      INFO("row " << bi << " document at " << s0 << " length " << len);
      Vec doc;
      for (int i = 0; i < 5; ++i) doc.push_back(v32[i].narrow(0, bi, 1).narrow(2, s0, len));
      // the first document continues the initial state unless the row starts with a reset
      doc.push_back((d == 0 && !rs[bi][0]) ? v32[5].narrow(0, bi, 1) : torch::Tensor());
      auto alone = chunkwise({}, chunk)(doc);
      require_close("document outputs (chunkwise)", packed.o.narrow(0, bi, 1).narrow(2, s0, len), alone.o, 1e-5);
      require_close("document outputs (recurrent)", packed_rec.o.narrow(0, bi, 1).narrow(2, s0, len), alone.o, 1e-5);
      state = alone.final_state;
    }
    require_close("final state = last document's state", packed.final_state.narrow(0, bi, 1), state, 1e-5);
  }

  // Changing tokens 0..16 of row 0 changes their outputs but nothing from token 17 on.
  Vec changed = v32;
  for (int i = 0; i < 5; ++i) {
    changed[i] = changed[i].clone();
    changed[i].narrow(0, 0, 1).narrow(2, 0, 17).uniform_(-0.9, -0.1);
  }
  auto after = chunkwise(in.reset, chunk)(changed);
  REQUIRE(subq::test::rel_rms(after.o.narrow(2, 0, 17), packed.o.narrow(2, 0, 17)) > 1e-2);
  CHECK(torch::equal(after.o.narrow(2, 17, t - 17), packed.o.narrow(2, 17, t - 17)));
  CHECK(torch::equal(after.o.narrow(0, 1, 1), packed.o.narrow(0, 1, 1)));
  CHECK(torch::equal(after.final_state, packed.final_state));

  // No gradient flows from later documents' outputs into the first tokens' inputs.
  for (const GdnFn& fn : {chunkwise(in.reset, chunk), recurrent(in.reset)}) {
    Vec grads = subq::test::grads_of(
        [&](const Vec& v) { return fn(v).o.narrow(0, 0, 1).narrow(2, 17, t - 17).square().sum(); }, v32);
    for (int i = 0; i < 5; ++i) {
      INFO("input " << kNames[i]);
      CHECK(grads[i].narrow(0, 0, 1).narrow(2, 0, 17).abs().max().item<double>() == 0.0);
      CHECK(grads[i].narrow(0, 0, 1).narrow(2, 17, t - 17).abs().max().item<double>() > 0.0);
    }
  }
}

TEST_CASE("gated delta prefill then decode steps equal the recurrent pass", "[ops][gated_delta]") {
  const int64_t b = 2, h = 3, t = 40, t0 = 29, dk = 7, dv = 6;
  GdnIn in = make_gdn(b, h, t, dk, dv, 41, true, false);
  auto full = recurrent({})(in.vec());
  Vec pre;
  for (int i = 0; i < 5; ++i) pre.push_back(in.vec()[i].narrow(2, 0, t0));
  pre.push_back(in.h0);
  auto p = chunkwise({}, 8)(pre);
  require_close("prefill outputs", p.o, full.o.narrow(2, 0, t0), 1e-12);
  torch::Tensor state = p.final_state;
  for (int64_t ti = t0; ti < t; ++ti) {
    auto st = subq::ops::gated_delta_step(in.q.select(2, ti), in.k.select(2, ti), in.v.select(2, ti),
                                          in.g.select(2, ti), in.beta.select(2, ti), state);
    require_close("decode output", st.o, full.o.select(2, ti), 1e-12);
    state = st.final_state;
  }
  require_close("decode final state", state, full.final_state, 1e-12);
  // the step's own normalisation flag matches the sequence form's
  GatedDeltaOptions norm;
  norm.l2_normalize_qk = true;
  torch::Tensor q0 = torch::randn({b, h, dk}, f64), k0 = torch::randn({b, h, dk}, f64);
  auto st = subq::ops::gated_delta_step(q0, k0, in.v.select(2, 0), in.g.select(2, 0), in.beta.select(2, 0), {}, norm);
  auto seq = subq::ops::gated_delta_recurrent(q0.unsqueeze(2), k0.unsqueeze(2), in.v.narrow(2, 0, 1),
                                              in.g.narrow(2, 0, 1), in.beta.narrow(2, 0, 1), {}, {}, norm);
  require_close("normalised step", st.o, seq.o.squeeze(2), 1e-14);
}

TEST_CASE("gated delta optional arguments and dtypes", "[ops][gated_delta]") {
  GdnIn in = make_gdn(2, 2, 37, 5, 4, 51, false, false);
  Vec v = cast(in.vec(), torch::kFloat32);
  GatedDeltaOptions opt;
  opt.chunk_size = 16;
  auto a = subq::ops::gated_delta_chunkwise(v[0], v[1], v[2], v[3], v[4], {}, {}, opt);
  auto b = subq::ops::gated_delta_chunkwise(v[0], v[1], v[2], v[3], v[4], torch::zeros({2, 2, 4, 5}), {}, opt);
  require_close("undefined initial state = zeros", a.o, b.o, 1e-7);
  opt.chunk_size = 1000;
  auto big = subq::ops::gated_delta_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], {}, opt);
  auto ref = recurrent({})(in.vec());
  require_close("chunk > T", big.o, ref.o, 1e-5);
  auto empty = subq::ops::gated_delta_chunkwise(v[0].narrow(2, 0, 0), v[1].narrow(2, 0, 0), v[2].narrow(2, 0, 0),
                                                v[3].narrow(2, 0, 0), v[4].narrow(2, 0, 0), v[5]);
  CHECK(empty.o.size(2) == 0);
  require_close("T = 0 keeps the state", empty.final_state, v[5], 1e-7);

  // non-contiguous inputs (token-major tensors permuted to head-first, as models produce them)
  auto strided = [](const torch::Tensor& t) {
    std::vector<int64_t> perm(static_cast<size_t>(t.dim()));
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
    std::swap(perm[1], perm[2]);
    torch::Tensor s = t.permute(perm).contiguous().permute(perm);
    REQUIRE(!s.is_contiguous());
    return s;
  };
  Vec vs;
  for (const auto& t : v) vs.push_back(strided(t));
  opt.chunk_size = 16;
  auto nc = subq::ops::gated_delta_chunkwise(vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], {}, opt);
  auto cc = subq::ops::gated_delta_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], {}, opt);
  require_close("non-contiguous inputs", nc.o, cc.o, 1e-7);
  require_close("non-contiguous inputs, state", nc.final_state, cc.final_state, 1e-7);

  // bf16 q, k, v: computed in fp32, o returned in bf16, state fp32
  Vec vb = v;
  for (int i : {0, 1, 2}) vb[i] = v[i].to(torch::kBFloat16);
  opt.chunk_size = 16;
  auto lo = subq::ops::gated_delta_chunkwise(vb[0], vb[1], vb[2], vb[3], vb[4], vb[5], {}, opt);
  CHECK(lo.o.scalar_type() == torch::kBFloat16);
  CHECK(lo.final_state.scalar_type() == torch::kFloat32);
  auto hi = recurrent({})(cast(vb, f64));
  require_close("bf16 output (rounding only)", lo.o.to(torch::kFloat32), hi.o, 1e-2);
  require_close("bf16 inputs, fp32 state", lo.final_state, hi.final_state, 1e-5);
}

TEST_CASE("gated delta rejects bad arguments with a message naming them", "[ops][gated_delta]") {
  GdnIn in = make_gdn(2, 2, 10, 4, 3, 61, false, true);
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      FAIL("no exception; expected one mentioning " << needle);
    } catch (const subq::InputError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  using subq::ops::gated_delta_chunkwise;
  expect_error([&] { gated_delta_chunkwise(in.q, in.k.narrow(3, 0, 3), in.v, in.g, in.beta); }, "k has shape");
  expect_error([&] { gated_delta_chunkwise(in.q, in.k, in.v.narrow(2, 0, 9), in.g, in.beta); }, "v has shape");
  expect_error([&] { gated_delta_chunkwise(in.q, in.k, in.v, in.g.unsqueeze(-1), in.beta); }, "g has shape");
  expect_error([&] { subq::ops::gated_delta_recurrent(in.q, in.k, in.v, in.g, in.beta.narrow(1, 0, 1)); },
               "beta has shape");
  expect_error([&] { gated_delta_chunkwise(in.q, in.k, in.v, in.g, in.beta, in.h0.transpose(2, 3)); },
               "initial_state has shape");
  expect_error([&] { gated_delta_chunkwise(in.q, in.k, in.v, in.g, in.beta, {}, in.reset.narrow(1, 0, 5)); },
               "reset has shape");
  expect_error([&] { gated_delta_chunkwise(in.q, in.k.to(torch::kFloat32), in.v, in.g, in.beta); }, "one dtype");
  GatedDeltaOptions bad;
  bad.chunk_size = -2;
  expect_error([&] { gated_delta_chunkwise(in.q, in.k, in.v, in.g, in.beta, {}, {}, bad); }, "chunk_size");
  expect_error([&] { subq::ops::gated_delta_step(in.q.select(2, 0), in.k.select(2, 0), in.v.select(2, 0),
                                                 in.g, in.beta.select(2, 0), {}); },
               "g_t has 3 dimensions");
}
