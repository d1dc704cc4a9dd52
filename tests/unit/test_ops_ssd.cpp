// test_ops_ssd.cpp — the SSD (Mamba-2) ops: chunkwise vs recurrent (outputs, final states, gradients of
// x, dt, A, B, C, D and the initial state) on awkward shapes, G > 1 groups, packed documents (resets),
// an independent O(T^2) attention-form computation, fp64 finite-difference gradients, decode steps,
// dtypes and argument errors.
//
// Reference values come from the recurrent form run in fp64 (the fp32 loop accumulates more rounding
// than the 1e-5 tolerance allows over hundreds of steps); the chunkwise form under test runs in fp32.
#include <cmath>
#include <functional>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/ssd.h"
#include "subq_catch.h"

namespace {


using subq::test::require_close;
using Vec = std::vector<torch::Tensor>;
constexpr auto f64 = torch::kFloat64;

struct SsdIn {
  torch::Tensor x, dt, A, B, C, D, h0, reset;
  Vec vec() const { return {x, dt, A, B, C, D, h0}; }
};
const std::vector<std::string> kNames = {"x", "dt", "A", "B", "C", "D", "initial_state"};

// Packed-document flags with awkward placements: random starts, a start at a chunk boundary (32), a
// one-token document (32, 33), a document made of the last token, and t = 0 in row 1 (drops h0).
torch::Tensor make_reset(int64_t b, int64_t t) {
  torch::Tensor r = torch::rand({b, t}, torch::TensorOptions().dtype(f64)) < 0.05;
  auto a = r.accessor<bool, 2>();
  if (t >= 40) a[0][17] = a[0][32] = a[0][33] = true;
  if (t >= 3) a[0][t - 1] = true;
  if (b > 1) a[1][0] = true;
  return r;
}

// Realistic Mamba-2 ranges: dt ~ softplus(N(-1.5, 0.5)) ~ 0.2, A in [-1.05, -0.05] (the state carries
// across chunks); `strong` uses A in [-16, -8] and dt up to ~2 (decays underflow within a chunk).
SsdIn make_ssd(int64_t b, int64_t h, int64_t g, int64_t t, int64_t p, int64_t n, uint64_t seed, bool resets,
               bool strong = false) {
  torch::manual_seed(seed);
  auto o = torch::TensorOptions().dtype(f64);
  SsdIn in;
  in.x = torch::randn({b, h, t, p}, o);
  in.dt = strong ? torch::softplus(torch::randn({b, h, t}, o) + 0.5)
                 : torch::softplus(torch::randn({b, h, t}, o) * 0.5 - 1.5);
  in.A = strong ? -(8.0 + 8.0 * torch::rand({h}, o)) : -(0.05 + torch::rand({h}, o));
  in.B = torch::randn({b, g, t, n}, o);
  in.C = torch::randn({b, g, t, n}, o);
  in.D = torch::randn({h}, o);
  in.h0 = torch::randn({b, h, p, n}, o);
  if (resets) in.reset = make_reset(b, t);
  return in;
}

Vec cast(const Vec& v, torch::ScalarType dt) { return subq::test::cast_all(v, dt); }

using SsdFn = std::function<subq::ops::SsdResult(const Vec&)>;
SsdFn chunkwise(const torch::Tensor& reset, int64_t chunk) {
  return [reset, chunk](const Vec& v) {
    return subq::ops::ssd_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], v[6], reset, chunk);
  };
}
SsdFn recurrent(const torch::Tensor& reset) {
  return [reset](const Vec& v) { return subq::ops::ssd_recurrent(v[0], v[1], v[2], v[3], v[4], v[5], v[6], reset); };
}

// Loss touching every output and the final state with fixed random weights.
std::function<torch::Tensor(const Vec&)> loss_of(SsdFn fn, torch::Tensor wy, torch::Tensor ws) {
  return [fn, wy, ws](const Vec& v) {
    auto r = fn(v);
    return subq::test::weighted_sum(r.y, wy) + subq::test::weighted_sum(r.final_state, ws);
  };
}

// Chunkwise (fp32 and fp64) against recurrent (fp64): outputs, final state, every gradient.
void compare_forms(const SsdIn& in, int64_t chunk) {
  subq::test::compare_chunkwise_to_recurrent<subq::ops::SsdResult>(
      recurrent(in.reset), chunkwise(in.reset, chunk),
      [](const subq::ops::SsdResult& r) {
        return std::vector<std::pair<std::string, torch::Tensor>>{{"y", r.y}, {"final state", r.final_state}};
      },
      in.vec(), kNames);
}

}  // namespace

TEST_CASE("ssd chunkwise matches recurrent on awkward shapes", "[ops][ssd]") {
  struct Case {
    int64_t b, h, g, t, p, n, chunk;
  };
  // T = 1, T = 63 < chunk, T not a multiple of the chunk, T = 257, odd P/N (7, 5, 60, 100), G > 1.
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 8, 4, 64},  {2, 3, 1, 63, 7, 5, 64},    {2, 4, 2, 100, 60, 16, 32},
      {1, 2, 2, 257, 16, 100, 64}, {2, 4, 4, 50, 5, 7, 16}, {1, 6, 3, 45, 3, 9, 1},
  };
  uint64_t seed = 100;
  for (const auto& c : cases) {
    for (bool resets : {false, true}) {
      INFO("B=" << c.b << " H=" << c.h << " G=" << c.g << " T=" << c.t << " P=" << c.p << " N=" << c.n
                << " chunk=" << c.chunk << " resets=" << resets);
      compare_forms(make_ssd(c.b, c.h, c.g, c.t, c.p, c.n, ++seed, resets), c.chunk);
    }
  }
}

TEST_CASE("ssd chunkwise matches recurrent at Mamba-2 sizes", "[ops][ssd]") {
  // headdim 64, d_state 128, the default chunk 256, T spanning a ragged third chunk, packed documents.
  compare_forms(make_ssd(1, 2, 1, 600, 64, 128, 3, true), 256);
}

TEST_CASE("ssd chunkwise is stable under strong decay", "[ops][ssd]") {
  // a_t down to about -40 per step: a chunk of 64 decays by far more than exp(-1000); nothing may overflow.
  SsdIn in = make_ssd(2, 2, 1, 130, 9, 11, 7, true, /*strong=*/true);
  compare_forms(in, 64);
}

TEST_CASE("ssd matches the O(T^2) attention form", "[ops][ssd]") {
  // y_t = sum_{s<=t, same doc} (C_t . B_s) exp(sum_{s<r<=t} a_r) dt_s x_s
  //       + [no reset in 0..t] exp(sum_{r<=t} a_r) h0 C_t + D x_t, computed with explicit loops.
  const int64_t b = 2, h = 4, g = 2, t = 21, p = 3, n = 5;
  SsdIn in = make_ssd(b, h, g, t, p, n, 11, true);
  in.reset[0][9] = true;
  in.reset[0][10] = true;
  auto x = in.x.accessor<double, 4>();
  auto dt = in.dt.accessor<double, 3>();
  auto A = in.A.accessor<double, 1>();
  auto Bm = in.B.accessor<double, 4>();
  auto Cm = in.C.accessor<double, 4>();
  auto D = in.D.accessor<double, 1>();
  auto h0 = in.h0.accessor<double, 4>();
  auto rs = in.reset.accessor<bool, 2>();
  torch::Tensor y = torch::zeros({b, h, t, p}, f64);
  torch::Tensor hT = torch::zeros({b, h, p, n}, f64);
  auto ya = y.accessor<double, 4>();
  auto ha = hT.accessor<double, 4>();
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hi = 0; hi < h; ++hi) {
      const int64_t gi = hi / (h / g);
      // weight of token s in the state after token tt (0 when a reset lies in (s, tt]); s = -1: h0
      auto weight = [&](int64_t s, int64_t tt) {
        double logdec = 0.0;
        for (int64_t r = s + 1; r <= tt; ++r) {
          if (rs[bi][r]) return 0.0;
          logdec += dt[bi][hi][r] * A[hi];
        }
        return std::exp(logdec);
      };
      for (int64_t tt = 0; tt < t; ++tt) {
        for (int64_t pi = 0; pi < p; ++pi) {
          double acc = D[hi] * x[bi][hi][tt][pi];
          double w0 = weight(-1, tt);
          for (int64_t ni = 0; ni < n; ++ni) acc += w0 * h0[bi][hi][pi][ni] * Cm[bi][gi][tt][ni];
          for (int64_t s = 0; s <= tt; ++s) {
            double cb = 0.0;
            for (int64_t ni = 0; ni < n; ++ni) cb += Cm[bi][gi][tt][ni] * Bm[bi][gi][s][ni];
            acc += cb * weight(s, tt) * dt[bi][hi][s] * x[bi][hi][s][pi];
          }
          ya[bi][hi][tt][pi] = acc;
        }
      }
      for (int64_t pi = 0; pi < p; ++pi)
        for (int64_t ni = 0; ni < n; ++ni) {
          double acc = weight(-1, t - 1) * h0[bi][hi][pi][ni];
          for (int64_t s = 0; s < t; ++s)
            acc += weight(s, t - 1) * dt[bi][hi][s] * x[bi][hi][s][pi] * Bm[bi][gi][s][ni];
          ha[bi][hi][pi][ni] = acc;
        }
    }
  auto rec = subq::ops::ssd_recurrent(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset);
  require_close("recurrent y vs attention form", rec.y, y, 1e-12);
  require_close("recurrent state vs attention form", rec.final_state, hT, 1e-12);
  for (int64_t chunk : {4, 8, 64}) {
    INFO("chunk " << chunk);
    auto chk = subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0, in.reset, chunk);
    require_close("chunkwise y vs attention form", chk.y, y, 1e-12);
    require_close("chunkwise state vs attention form", chk.final_state, hT, 1e-12);
  }
}

TEST_CASE("ssd gradients match finite differences in fp64", "[ops][ssd]") {
  // Tiny shapes, T = 7 with chunk 3 (ragged last chunk), G = 2 groups, resets inside a chunk.
  for (bool resets : {false, true}) {
    SsdIn in = make_ssd(2, 4, 2, 7, 3, 2, 21 + resets, false);
    if (resets) {
      in.reset = torch::zeros({2, 7}, torch::kBool);
      in.reset[0][4] = true;  // inside the second chunk
      in.reset[1][0] = true;  // discards h0 in row 1
      in.reset[1][3] = true;  // at a chunk start
    }
    torch::Tensor wy = torch::randn({2, 4, 7, 3}, f64), ws = torch::randn({2, 4, 3, 2}, f64);
    INFO("resets=" << resets);
    subq::test::fd_gradcheck("chunkwise", loss_of(chunkwise(in.reset, 3), wy, ws), in.vec(), kNames);
    subq::test::fd_gradcheck("recurrent", loss_of(recurrent(in.reset), wy, ws), in.vec(), kNames);
  }
}

TEST_CASE("ssd packed documents equal separate runs and never leak", "[ops][ssd]") {
  const int64_t b = 2, h = 4, g = 2, t = 90, p = 6, n = 8, chunk = 16;
  SsdIn in = make_ssd(b, h, g, t, p, n, 31, true);
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
      Vec doc = {v32[0].narrow(0, bi, 1).narrow(2, s0, len), v32[1].narrow(0, bi, 1).narrow(2, s0, len), v32[2],
                 v32[3].narrow(0, bi, 1).narrow(2, s0, len), v32[4].narrow(0, bi, 1).narrow(2, s0, len), v32[5],
                 // the first document continues the initial state unless the row starts with a reset
                 (d == 0 && !rs[bi][0]) ? v32[6].narrow(0, bi, 1) : torch::Tensor()};
      auto alone = chunkwise({}, chunk)(doc);
      require_close("document outputs (chunkwise)", packed.y.narrow(0, bi, 1).narrow(2, s0, len), alone.y, 1e-5);
      require_close("document outputs (recurrent)", packed_rec.y.narrow(0, bi, 1).narrow(2, s0, len), alone.y, 1e-5);
      state = alone.final_state;
    }
    require_close("final state = last document's state", packed.final_state.narrow(0, bi, 1), state, 1e-5);
  }

  // Changing document 1 of row 0 (tokens 0..16) changes its outputs but nothing after token 17.
  Vec changed = v32;
  for (int i : {0, 1, 3, 4}) {
    changed[i] = changed[i].clone();
    changed[i].narrow(0, 0, 1).narrow(2, 0, 17).uniform_(0.1, 0.9);
  }
  auto after = chunkwise(in.reset, chunk)(changed);
  REQUIRE(subq::test::rel_rms(after.y.narrow(2, 0, 17), packed.y.narrow(2, 0, 17)) > 1e-2);
  CHECK(torch::equal(after.y.narrow(2, 17, t - 17), packed.y.narrow(2, 17, t - 17)));
  CHECK(torch::equal(after.y.narrow(0, 1, 1), packed.y.narrow(0, 1, 1)));
  CHECK(torch::equal(after.final_state, packed.final_state));

  // No gradient flows from later documents' outputs into document 1's inputs.
  for (const SsdFn& fn : {chunkwise(in.reset, chunk), recurrent(in.reset)}) {
    Vec grads = subq::test::grads_of(
        [&](const Vec& v) { return fn(v).y.narrow(0, 0, 1).narrow(2, 17, t - 17).square().sum(); }, v32);
    for (int i : {0, 1, 3, 4}) {
      INFO("input " << kNames[i]);
      CHECK(grads[i].narrow(0, 0, 1).narrow(2, 0, 17).abs().max().item<double>() == 0.0);
      CHECK(grads[i].narrow(0, 0, 1).narrow(2, 17, t - 17).abs().max().item<double>() > 0.0);
    }
  }
}

TEST_CASE("ssd prefill then decode steps equal the recurrent pass", "[ops][ssd]") {
  const int64_t b = 2, h = 4, g = 1, t = 40, t0 = 29, p = 7, n = 6;
  SsdIn in = make_ssd(b, h, g, t, p, n, 41, false);
  auto full = subq::ops::ssd_recurrent(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0);
  auto pre = subq::ops::ssd_chunkwise(in.x.narrow(2, 0, t0), in.dt.narrow(2, 0, t0), in.A, in.B.narrow(2, 0, t0),
                                      in.C.narrow(2, 0, t0), in.D, in.h0, {}, 8);
  require_close("prefill outputs", pre.y, full.y.narrow(2, 0, t0), 1e-12);
  torch::Tensor state = pre.final_state;
  for (int64_t ti = t0; ti < t; ++ti) {
    auto st = subq::ops::ssd_step(in.x.select(2, ti), in.dt.select(2, ti), in.A, in.B.select(2, ti),
                                  in.C.select(2, ti), in.D, state);
    require_close("decode output", st.y, full.y.select(2, ti), 1e-12);
    state = st.final_state;
  }
  require_close("decode final state", state, full.final_state, 1e-12);
  // a step from no state equals a step from zeros
  auto s1 = subq::ops::ssd_step(in.x.select(2, 0), in.dt.select(2, 0), in.A, in.B.select(2, 0), in.C.select(2, 0),
                                {}, {});
  auto s2 = subq::ops::ssd_step(in.x.select(2, 0), in.dt.select(2, 0), in.A, in.B.select(2, 0), in.C.select(2, 0),
                                torch::zeros({h}, f64), torch::zeros({b, h, p, n}, f64));
  require_close("step with defaults", s1.y, s2.y, 1e-15);
}

TEST_CASE("ssd optional arguments and dtypes", "[ops][ssd]") {
  SsdIn in = make_ssd(2, 2, 2, 37, 5, 4, 51, false);
  Vec v = cast(in.vec(), torch::kFloat32);
  // undefined initial state = zeros; undefined D = no skip
  auto a = subq::ops::ssd_chunkwise(v[0], v[1], v[2], v[3], v[4], {}, {}, {}, 16);
  auto b = subq::ops::ssd_chunkwise(v[0], v[1], v[2], v[3], v[4], torch::zeros({2}), torch::zeros({2, 2, 5, 4}), {}, 16);
  require_close("defaults", a.y, b.y, 1e-7);
  auto r = subq::ops::ssd_recurrent(in.x, in.dt, in.A, in.B, in.C);
  require_close("defaults vs recurrent", a.y, r.y, 1e-5);
  // chunk larger than T, and T = 0
  auto big = subq::ops::ssd_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], v[6], {}, 1000);
  auto ref = subq::ops::ssd_recurrent(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0);
  require_close("chunk > T", big.y, ref.y, 1e-5);
  auto empty = subq::ops::ssd_chunkwise(v[0].narrow(2, 0, 0), v[1].narrow(2, 0, 0), v[2], v[3].narrow(2, 0, 0),
                                        v[4].narrow(2, 0, 0), v[5], v[6]);
  CHECK(empty.y.size(2) == 0);
  require_close("T = 0 keeps the state", empty.final_state, v[6], 1e-7);

  // non-contiguous inputs (token-major tensors permuted to head-first, as models produce them)
  auto strided = [](const torch::Tensor& t) {
    std::vector<int64_t> perm(static_cast<size_t>(t.dim()));
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
    std::swap(perm[1], perm[2]);
    torch::Tensor s = t.permute(perm).contiguous().permute(perm);
    REQUIRE(!s.is_contiguous());
    return s;
  };
  auto nc = subq::ops::ssd_chunkwise(strided(v[0]), strided(v[1]), v[2], strided(v[3]), strided(v[4]), v[5],
                                     strided(v[6]), {}, 16);
  auto cc = subq::ops::ssd_chunkwise(v[0], v[1], v[2], v[3], v[4], v[5], v[6], {}, 16);
  require_close("non-contiguous inputs", nc.y, cc.y, 1e-7);
  require_close("non-contiguous inputs, state", nc.final_state, cc.final_state, 1e-7);

  // bf16 inputs: computed in fp32, y returned in bf16, state fp32
  Vec vb = v;
  for (int i : {0, 3, 4}) vb[i] = v[i].to(torch::kBFloat16);
  auto lo = subq::ops::ssd_chunkwise(vb[0], vb[1], vb[2], vb[3], vb[4], vb[5], vb[6], {}, 16);
  CHECK(lo.y.scalar_type() == torch::kBFloat16);
  CHECK(lo.final_state.scalar_type() == torch::kFloat32);
  auto hi = subq::ops::ssd_recurrent(vb[0].to(f64), vb[1].to(f64), vb[2].to(f64), vb[3].to(f64), vb[4].to(f64),
                                     vb[5].to(f64), vb[6].to(f64));
  require_close("bf16 output (rounding only)", lo.y.to(torch::kFloat32), hi.y, 1e-2);
  require_close("bf16 inputs, fp32 state", lo.final_state, hi.final_state, 1e-5);
}

TEST_CASE("ssd rejects bad arguments with a message naming them", "[ops][ssd]") {
  SsdIn in = make_ssd(2, 4, 2, 10, 3, 5, 61, true);
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      FAIL("no exception; expected one mentioning " << needle);
    } catch (const subq::InputError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B.narrow(1, 0, 1).repeat({1, 3, 1, 1}), in.C); },
               "multiple of G");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt.narrow(2, 0, 9), in.A, in.B, in.C); }, "dt has shape");
  expect_error([&] { subq::ops::ssd_recurrent(in.x, in.dt, in.A.narrow(0, 0, 3), in.B, in.C); }, "A has shape");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C.narrow(3, 0, 4)); }, "C has shape");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C, in.D, in.h0.transpose(2, 3)); },
               "initial_state has shape");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C, {}, {}, in.reset.to(torch::kInt64)); },
               "reset has dtype");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B.to(torch::kFloat32), in.C); }, "one dtype");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x, in.dt, in.A, in.B, in.C, {}, {}, {}, 0); }, "chunk_size");
  expect_error([&] { subq::ops::ssd_chunkwise(in.x.to(torch::kInt64), in.dt, in.A, in.B, in.C); }, "x has dtype");
}
