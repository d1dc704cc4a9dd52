// test_ops_slstm.cpp — the sLSTM reference: a hand-computed two-step case, the fresh-state rule, packed
// documents with resets vs separate runs (and no leaks), step == sequence, finite-difference gradients
// of every input in fp64, fp32 vs fp64, dtypes and argument errors.
#include <cmath>
#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/slstm.h"
#include "subq_catch.h"

using subq::ops::SlstmResult;
using subq::ops::SlstmState;
using torch::Tensor;
namespace st = subq::test;

namespace {

// pre [B, T, 4, H, Dh] with gate statistics like a layer's: i~ around -1, f~ around +2.
Tensor make_pre(int64_t b, int64_t t, int64_t h, int64_t dh, uint64_t seed) {
  Tensor pre = st::randn({b, t, 4, h, dh}, seed);
  pre.select(2, subq::ops::kSlstmI).mul_(2.0).sub_(1.0);
  pre.select(2, subq::ops::kSlstmF).mul_(1.5).add_(2.0);
  return pre;
}
Tensor make_r(int64_t h, int64_t dh, uint64_t seed) { return st::randn({4, h, dh, dh}, seed, 0.5); }

// A state reached by running the op on a random prefix (so n >= 1, like any real state).
SlstmState warm_state(int64_t b, int64_t h, int64_t dh, const Tensor& r, uint64_t seed) {
  auto out = subq::ops::slstm_recurrent(make_pre(b, 6, h, dh, seed), r);
  return {out.state.h.detach(), out.state.c.detach(), out.state.n.detach(), out.state.m.detach()};
}

}  // namespace

TEST_CASE("slstm two steps by hand", "[ops][slstm]") {
  // B = H = 1, Dh = 2; values checked against an independent scalar implementation (Python, math module).
  const double pre_v[2][4][2] = {{{0.5, -1.2}, {0.3, -2.0}, {1.5, 0.2}, {0.8, -0.4}},
                                 {{-0.7, 0.9}, {1.1, -0.5}, {-0.3, 2.5}, {0.1, 1.3}}};
  const double r_v[4][2][2] = {{{0.2, -0.1}, {0.4, 0.3}}, {{-0.5, 0.6}, {0.2, -0.3}},
                               {{0.1, 0.2}, {-0.4, 0.5}}, {{0.3, -0.2}, {0.1, 0.4}}};
  Tensor pre = torch::zeros({1, 2, 4, 1, 2}, torch::kDouble), r = torch::zeros({4, 1, 2, 2}, torch::kDouble);
  for (int t = 0; t < 2; ++t)
    for (int g = 0; g < 4; ++g)
      for (int j = 0; j < 2; ++j) pre.index_put_({0, t, g, 0, j}, pre_v[t][g][j]);
  for (int g = 0; g < 4; ++g)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) r.index_put_({g, 0, i, j}, r_v[g][i][j]);

  // Step 1 from the zero state: fresh units, m = i~, n = 1, h = sigmoid(o~) tanh(z~).
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  const double h1_0 = sig(0.8) * std::tanh(0.5), h1_1 = sig(-0.4) * std::tanh(-1.2);
  const double expect_h[2][2] = {{0.318849045800643, -0.334555880998082}, {-0.22489852137666, 0.337501470037861}};
  CHECK(h1_0 == Approx(expect_h[0][0]).epsilon(1e-13));
  CHECK(h1_1 == Approx(expect_h[0][1]).epsilon(1e-13));

  auto out = subq::ops::slstm_recurrent(pre, r);
  for (int t = 0; t < 2; ++t)
    for (int j = 0; j < 2; ++j) {
      INFO("t = " << t << ", unit " << j);
      CHECK(out.h.index({0, t, 0, j}).item<double>() == Approx(expect_h[t][j]).epsilon(1e-12));
    }
  const double expect_c[2] = {-0.525497211549693, 0.518258637013743};
  const double expect_n[2] = {1.26283982082922, 1.15277262189719};
  const double expect_m[2] = {0.873664300900062, -0.20832380822019};
  for (int j = 0; j < 2; ++j) {
    CHECK(out.state.c.index({0, 0, j}).item<double>() == Approx(expect_c[j]).epsilon(1e-12));
    CHECK(out.state.n.index({0, 0, j}).item<double>() == Approx(expect_n[j]).epsilon(1e-12));
    CHECK(out.state.m.index({0, 0, j}).item<double>() == Approx(expect_m[j]).epsilon(1e-12));
    CHECK(out.state.h.index({0, 0, j}).item<double>() == Approx(expect_h[1][j]).epsilon(1e-12));
  }
  // the same by steps, in fp32
  auto s1 = subq::ops::slstm_step(pre.select(1, 0).to(torch::kFloat), r.to(torch::kFloat));
  CHECK(s1.state.m.index({0, 0, 0}).item<float>() == Approx(0.3).epsilon(1e-6));
  CHECK(s1.state.n.index({0, 0, 1}).item<float>() == 1.0f);
  auto s2 = subq::ops::slstm_step(pre.select(1, 1).to(torch::kFloat), r.to(torch::kFloat), s1.state);
  CHECK(s2.h.index({0, 0, 0}).item<float>() == Approx(expect_h[1][0]).epsilon(1e-5));
  CHECK(s2.h.index({0, 0, 1}).item<float>() == Approx(expect_h[1][1]).epsilon(1e-5));
}

TEST_CASE("slstm fresh units take m = i~ (no underflow for very negative input gates)", "[ops][slstm]") {
  Tensor pre = make_pre(2, 3, 1, 3, 11).to(torch::kFloat);
  pre.select(2, subq::ops::kSlstmI).fill_(-200.0f);  // far below fp32's exp range
  Tensor reset = torch::zeros({2, 3}, torch::kBool);
  reset.index_put_({1, 2}, true);
  auto out = subq::ops::slstm_recurrent(pre, make_r(1, 3, 12).to(torch::kFloat), {}, reset);
  CHECK(st::all_finite(out.h));
  auto first = torch::sigmoid(pre.select(1, 0).select(1, 3)) * torch::tanh(pre.select(1, 0).select(1, 0));
  CHECK(st::rel_rms(out.h.select(1, 0), first) < 1e-6);
  // after the reset at (1, 2) the unit is fresh again: h = sigmoid(o~ + R h) tanh(z~ + R h) with h_prev = 0
  auto again = torch::sigmoid(pre.index({1, 2, 3})) * torch::tanh(pre.index({1, 2, 0}));
  CHECK(st::rel_rms(out.h.index({1, 2}), again) < 1e-6);
  CHECK(out.state.m.index({1}).eq(-200.0f).all().item<bool>());
  CHECK(out.state.n.index({1}).eq(1.0f).all().item<bool>());
  // gradients stay finite too (the overflowing forget branch of fresh units is never evaluated)
  Tensor p = pre.clone().requires_grad_(true);
  auto o2 = subq::ops::slstm_recurrent(p, make_r(1, 3, 12).to(torch::kFloat), {}, reset);
  o2.h.sum().backward();
  CHECK(st::all_finite(p.grad()));
}

TEST_CASE("slstm packed documents with resets equal separate runs; nothing leaks", "[ops][slstm]") {
  const int64_t H = 2, Dh = 5, T = 30;
  const std::vector<std::vector<int64_t>> docs{{4, 11, 1, 14}, {30}};
  Tensor pre = make_pre(2, T, H, Dh, 21), r = make_r(H, Dh, 22);
  SlstmState init = warm_state(2, H, Dh, r, 23);
  Tensor reset = torch::zeros({2, T}, torch::kBool);
  int64_t at = 0;
  for (size_t j = 0; j < docs[0].size(); ++j) {
    if (j > 0) reset.index_put_({0, at}, true);
    at += docs[0][j];
  }
  auto packed = subq::ops::slstm_recurrent(pre, r, init, reset);
  at = 0;
  for (size_t j = 0; j < docs[0].size(); ++j) {
    const int64_t len = docs[0][j];
    SlstmState s0;
    if (j == 0) s0 = {init.h.narrow(0, 0, 1), init.c.narrow(0, 0, 1), init.n.narrow(0, 0, 1), init.m.narrow(0, 0, 1)};
    auto alone = subq::ops::slstm_recurrent(pre.narrow(0, 0, 1).narrow(1, at, len), r, s0);
    INFO("document " << j);
    CHECK(st::rel_rms(packed.h.narrow(0, 0, 1).narrow(1, at, len), alone.h) < 1e-13);
    if (j + 1 == docs[0].size()) {
      CHECK(st::rel_rms(packed.state.h.narrow(0, 0, 1), alone.state.h) < 1e-13);
      CHECK(st::rel_rms(packed.state.c.narrow(0, 0, 1), alone.state.c) < 1e-13);
      CHECK(st::rel_rms(packed.state.n.narrow(0, 0, 1), alone.state.n) < 1e-13);
      CHECK(st::rel_rms(packed.state.m.narrow(0, 0, 1), alone.state.m) < 1e-13);
    }
    at += len;
  }
  // row 1 has no reset: it continues from its initial state
  SlstmState s1{init.h.narrow(0, 1, 1), init.c.narrow(0, 1, 1), init.n.narrow(0, 1, 1), init.m.narrow(0, 1, 1)};
  CHECK(st::rel_rms(packed.h.narrow(0, 1, 1), subq::ops::slstm_recurrent(pre.narrow(0, 1, 1), r, s1).h) < 1e-13);
  // changing document 1 (tokens 4..14 of row 0) changes it, not what follows
  Tensor other = pre.clone();
  other.narrow(0, 0, 1).narrow(1, 4, 11).copy_(make_pre(1, 11, H, Dh, 24));
  auto changed = subq::ops::slstm_recurrent(other, r, init, reset);
  CHECK(st::rel_rms(changed.h.narrow(0, 0, 1).narrow(1, 4, 11), packed.h.narrow(0, 0, 1).narrow(1, 4, 11)) > 0.1);
  CHECK(st::rel_rms(changed.h.narrow(0, 0, 1).narrow(1, 15, 15), packed.h.narrow(0, 0, 1).narrow(1, 15, 15)) == 0.0);
  CHECK(st::rel_rms(changed.state.c, packed.state.c) == 0.0);
}

TEST_CASE("slstm step by step equals the sequence", "[ops][slstm]") {
  const int64_t B = 3, T = 12, H = 2, Dh = 4;
  Tensor pre = make_pre(B, T, H, Dh, 31).to(torch::kFloat), r = make_r(H, Dh, 32).to(torch::kFloat);
  SlstmState init = warm_state(B, H, Dh, r, 33);
  Tensor reset = st::rand_mask({B, T}, 34, 0.2);
  auto seq = subq::ops::slstm_recurrent(pre, r, init, reset);
  SlstmState s = init;
  for (int64_t t = 0; t < T; ++t) {
    auto step = subq::ops::slstm_step(pre.select(1, t), r, s, reset.select(1, t));
    INFO("t = " << t);
    CHECK(st::rel_rms(step.h, seq.h.select(1, t)) == 0.0);
    s = step.state;
  }
  CHECK(st::rel_rms(s.c, seq.state.c) == 0.0);
  CHECK(st::rel_rms(s.m, seq.state.m) == 0.0);
  CHECK(st::rel_rms(s.h, seq.h.select(1, T - 1)) == 0.0);
}

TEST_CASE("slstm gradients match finite differences (fp64, tiny shapes)", "[ops][slstm]") {
  const int64_t B = 2, T = 4, H = 2, Dh = 2;
  Tensor pre = make_pre(B, T, H, Dh, 41), r = make_r(H, Dh, 42);
  Tensor reset = torch::zeros({B, T}, torch::kBool);
  reset.index_put_({1, 2}, true);
  SECTION("from a warm initial state, with a reset") {
    SlstmState init = warm_state(B, H, Dh, r, 43);
    auto f = [&](const std::vector<Tensor>& x) {
      auto o = subq::ops::slstm_recurrent(x[0], x[1], SlstmState{x[2], x[3], x[4], x[5]}, reset);
      return st::project({o.h, o.state.h, o.state.c, o.state.n, o.state.m});
    };
    auto checks = st::grad_check(f, {pre, r, init.h, init.c, init.n, init.m},
                                 {"pre", "r", "initial.h", "initial.c", "initial.n", "initial.m"});
    for (auto& c : checks) {
      INFO(c.name << ": max |autograd - finite difference| = " << c.max_err << ", max |grad| = " << c.max_grad);
      CHECK(c.ok(1e-6));
      CHECK(c.max_grad > 0);
    }
  }
  SECTION("from the zero state (fresh units)") {
    auto f = [&](const std::vector<Tensor>& x) {
      auto o = subq::ops::slstm_recurrent(x[0], x[1], {}, reset);
      return st::project({o.h, o.state.c, o.state.n, o.state.m});
    };
    auto checks = st::grad_check(f, {pre, r}, {"pre", "r"});
    for (auto& c : checks) {
      INFO(c.name << ": max |autograd - finite difference| = " << c.max_err << ", max |grad| = " << c.max_grad);
      CHECK(c.ok(1e-6));
      CHECK(c.max_grad > 0);
    }
  }
}

TEST_CASE("slstm in fp32 and bf16 tracks fp64", "[ops][slstm]") {
  const int64_t B = 2, T = 64, H = 3, Dh = 7;
  Tensor pre = make_pre(B, T, H, Dh, 51), r = make_r(H, Dh, 52);
  Tensor reset = st::rand_mask({B, T}, 53, 0.05);
  auto run = [&](torch::ScalarType dt) {
    Tensor p = pre.to(dt).requires_grad_(true), rr = r.to(torch::kFloat).to(dt == torch::kDouble ? dt : torch::kFloat);
    rr.requires_grad_(true);
    auto o = subq::ops::slstm_recurrent(p, rr, {}, reset);
    auto g = torch::autograd::grad({st::project({o.h, o.state.c})}, {p, rr});
    return std::vector<Tensor>{o.h, o.state.c, g[0], g[1]};
  };
  auto ref = run(torch::kDouble);
  auto f32 = run(torch::kFloat);
  const char* names[] = {"h", "state.c", "dpre", "dr"};
  for (int i = 0; i < 4; ++i) {
    double e = st::rel_rms(f32[i], ref[i]);
    INFO(names[i] << ": fp32 vs fp64 rel RMS " << e);
    CHECK(e < 1e-5);
  }
  auto b16 = subq::ops::slstm_recurrent(pre.to(torch::kBFloat16), r.to(torch::kFloat), {}, reset);
  CHECK(b16.h.scalar_type() == torch::kBFloat16);
  CHECK(b16.state.c.scalar_type() == torch::kFloat);
  CHECK(st::rel_rms(b16.h, ref[0]) < 3e-2);
}

TEST_CASE("slstm rejects bad arguments with messages naming them", "[ops][slstm]") {
  Tensor pre = torch::randn({2, 5, 4, 3, 8}), r = torch::randn({4, 3, 8, 8});
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const subq::InputError& e) {
      return e.what();
    }
    return "<no InputError>";
  };
  auto has = [](const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; };
  CHECK(has(message([&] { subq::ops::slstm_recurrent(pre.narrow(2, 0, 3), r); }), "gates z, i, f, o"));
  CHECK(has(message([&] { subq::ops::slstm_recurrent(pre, r.narrow(3, 0, 7)); }), "r must have shape [4, H, Dh, Dh]"));
  CHECK(has(message([&] { subq::ops::slstm_recurrent(pre.select(1, 0), r); }), "pre must have 5 dimensions"));
  CHECK(has(message([&] { subq::ops::slstm_recurrent(pre, r, SlstmState{torch::zeros({2, 3, 8}), {}, {}, {}}); }),
            "all of h, c, n and m"));
  CHECK(has(message([&] {
              auto z = torch::zeros({2, 3, 8});
              subq::ops::slstm_recurrent(pre, r, SlstmState{z, z, z, torch::zeros({2, 3, 7})});
            }),
            "initial.m must have shape [B, H, Dh]"));
  CHECK(has(message([&] { subq::ops::slstm_recurrent(pre, r, {}, torch::zeros({2, 4}, torch::kBool)); }),
            "reset must have shape [B, T]"));
  CHECK(has(message([&] { subq::ops::slstm_step(pre.select(1, 0), r, {}, torch::zeros({2, 1}, torch::kBool)); }),
            "reset must have shape [B]"));
  CHECK(has(message([&] { subq::ops::slstm_step(pre, r); }), "slstm_step: pre must have 4 dimensions"));
}
