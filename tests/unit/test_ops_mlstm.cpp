// test_ops_mlstm.cpp — the mLSTM references: chunkwise vs recurrent (outputs, final states, every
// gradient) over awkward shapes in fp64 (tight) and fp32 (vs an fp64 recurrent ground truth), packed
// documents with resets vs separate runs, no leaks across resets, decode steps continuing a chunkwise
// prefill, finite-difference gradients, dtypes and argument errors.
#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/mlstm.h"
#include "subq_catch.h"

using subq::ops::MlstmResult;
using subq::ops::MlstmState;
using torch::Tensor;
namespace st = subq::test;

namespace {

struct Gates {
  double i_scale, i_shift, f_scale, f_shift;
  bool extremes;  // set 5% of each gate to +-15 (the layer's soft cap)
};
// Gate pre-activations like a trained layer's (both denominator branches occur).
constexpr Gates kRealistic{2.0, -1.0, 1.5, 2.0, false};
// Wide ranges: strong forgetting, large input gates, soft-cap extremes (+-15) mixed in.
constexpr Gates kHarsh{4.0, 0.0, 3.0, 1.0, true};

struct Inputs {
  Tensor q, k, v, i, f;
  MlstmState init;  // undefined = zero state
  Tensor reset;     // undefined = none
};

struct Shape {
  int64_t b, h, t, dk, dv, chunk;
  bool init;
  double reset_p;
};

Inputs make(const Shape& s, uint64_t seed, Gates g) {
  Inputs in;
  in.q = st::randn({s.b, s.h, s.t, s.dk}, seed);
  in.k = st::randn({s.b, s.h, s.t, s.dk}, seed + 1);
  in.v = st::randn({s.b, s.h, s.t, s.dv}, seed + 2);
  in.i = st::randn({s.b, s.h, s.t}, seed + 3, g.i_scale, g.i_shift);
  in.f = st::randn({s.b, s.h, s.t}, seed + 4, g.f_scale, g.f_shift);
  if (g.extremes) {
    auto pick = st::rand_mask({s.b, s.h, s.t}, seed + 5, 0.05);
    in.i = torch::where(pick, 15.0 * torch::sign(in.i), in.i);
    in.f = torch::where(st::rand_mask({s.b, s.h, s.t}, seed + 6, 0.05), 15.0 * torch::sign(in.f), in.f);
  }
  if (s.init)
    in.init = {st::randn({s.b, s.h, s.dk, s.dv}, seed + 7), st::randn({s.b, s.h, s.dk}, seed + 8),
               st::randn({s.b, s.h}, seed + 9)};
  if (s.reset_p > 0) {
    in.reset = st::rand_mask({s.b, s.t}, seed + 10, s.reset_p);
    // always a reset at t = 0 of the last row and at a chunk boundary of the first
    in.reset.index_put_({s.b - 1, 0}, true);
    if (s.t > s.chunk) in.reset.index_put_({0, s.chunk}, true);
  }
  return in;
}

const std::vector<std::string> kNames{"h", "state.c", "state.n", "state.m", "dq", "dk", "dv", "digate",
                                      "dfgate", "dinitial.c", "dinitial.n", "dinitial.m"};

// Runs one form in `dt` and returns h, the final state and the gradients of every input of a random
// projection of (h, state), all in fp64.
std::vector<Tensor> run(const Inputs& in, bool chunkwise, int64_t chunk, torch::ScalarType dt) {
  std::vector<Tensor> leaves{in.q, in.k, in.v, in.i, in.f};
  if (in.init.defined()) leaves.insert(leaves.end(), {in.init.c, in.init.n, in.init.m});
  for (auto& x : leaves) x = x.detach().to(dt).requires_grad_(true);
  MlstmState init = in.init.defined() ? MlstmState{leaves[5], leaves[6], leaves[7]} : MlstmState{};
  MlstmResult r = chunkwise ? subq::ops::mlstm_chunkwise(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], init,
                                                         in.reset, chunk)
                            : subq::ops::mlstm_recurrent(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], init,
                                                         in.reset);
  auto loss = st::project({r.h, r.state.c, r.state.n, r.state.m});
  auto grads = torch::autograd::grad({loss}, leaves, {}, false, false, true);
  std::vector<Tensor> out{r.h, r.state.c, r.state.n, r.state.m};
  for (auto& g : grads) out.push_back(g.defined() ? g : torch::zeros({1}));
  for (auto& x : out) x = x.detach().to(torch::kDouble);
  return out;
}

void compare(const std::vector<Tensor>& a, const std::vector<Tensor>& b, double tol) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    double e = st::rel_rms(a[i], b[i]);
    INFO(kNames[i] << ": rel RMS error " << e << " (tolerance " << tol << ")");
    CHECK(st::all_finite(a[i]));
    CHECK(e < tol);
  }
}

std::string shape_name(const Shape& s) {
  return subq::str("B=", s.b, " H=", s.h, " T=", s.t, " Dk=", s.dk, " Dv=", s.dv, " chunk=", s.chunk,
                   s.init ? " +initial" : "", s.reset_p > 0 ? " +resets" : "");
}

const std::vector<Shape> kShapes{
    {1, 1, 1, 4, 4, 64, false, 0.0},    {2, 3, 63, 7, 5, 64, true, 0.05},  {2, 2, 100, 60, 100, 32, true, 0.03},
    {1, 2, 257, 7, 9, 64, true, 0.02}, {2, 1, 64, 8, 8, 16, false, 0.1}, {2, 2, 40, 5, 3, 8, true, 0.3},
    {1, 2, 10, 3, 4, 1, true, 0.2},    {2, 2, 37, 16, 16, 64, false, 0.0}};

}  // namespace

TEST_CASE("mlstm chunkwise equals recurrent in fp64 (outputs, states, all gradients)", "[ops][mlstm]") {
  uint64_t seed = 100;
  for (const auto& s : kShapes) {
    SECTION(shape_name(s)) {
      auto in = make(s, seed, kHarsh);
      auto ref = run(in, false, 0, torch::kDouble);
      auto chk = run(in, true, s.chunk, torch::kDouble);
      compare(chk, ref, 1e-9);
    }
    seed += 20;
  }
}

TEST_CASE("mlstm chunkwise in fp32 matches an fp64 recurrent ground truth", "[ops][mlstm]") {
  uint64_t seed = 500;
  for (const auto& s : kShapes) {
    SECTION(shape_name(s)) {
      auto in = make(s, seed, kRealistic);
      auto ref = run(in, false, 0, torch::kDouble);
      auto chk = run(in, true, s.chunk, torch::kFloat);
      compare(chk, ref, 1e-5);
    }
    seed += 20;
  }
}

TEST_CASE("mlstm packed documents with resets equal separate runs; nothing leaks", "[ops][mlstm]") {
  // row 0: documents of 5, 40, 1, 30 tokens; the first continues from the row's initial state (no reset
  // at t = 0). Row 1: 20 + 56 tokens, reset at t = 0 (its initial state is discarded).
  const std::vector<std::vector<int64_t>> docs{{5, 40, 1, 30}, {20, 56}};
  Shape s{2, 2, 76, 6, 5, 16, true, 0.0};
  auto in = make(s, 900, kHarsh);
  in.reset = torch::zeros({2, 76}, torch::kBool);
  for (int64_t b = 0; b < 2; ++b) {
    int64_t at = 0;
    for (size_t j = 0; j < docs[b].size(); ++j) {
      if (j > 0 || b == 1) in.reset.index_put_({b, at}, true);
      at += docs[b][j];
    }
  }
  for (bool chunkwise : {false, true}) {
    SECTION(chunkwise ? "chunkwise" : "recurrent") {
      auto op = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& i, const Tensor& f,
                    const MlstmState& init, const Tensor& reset) {
        return chunkwise ? subq::ops::mlstm_chunkwise(q, k, v, i, f, init, reset, s.chunk)
                         : subq::ops::mlstm_recurrent(q, k, v, i, f, init, reset);
      };
      auto packed = op(in.q, in.k, in.v, in.i, in.f, in.init, in.reset);
      for (int64_t b = 0; b < 2; ++b) {
        int64_t at = 0;
        for (size_t j = 0; j < docs[b].size(); ++j) {
          const int64_t len = docs[b][j];
          auto sl = [&](const Tensor& x) { return x.narrow(0, b, 1).narrow(2, at, len); };
          MlstmState init;
          if (j == 0 && b == 0)
            init = {in.init.c.narrow(0, b, 1), in.init.n.narrow(0, b, 1), in.init.m.narrow(0, b, 1)};
          auto alone = op(sl(in.q), sl(in.k), sl(in.v), sl(in.i), sl(in.f), init, Tensor());
          INFO("row " << b << " document " << j);
          CHECK(st::rel_rms(sl(packed.h), alone.h) < 1e-12);
          if (j + 1 == docs[b].size()) {
            CHECK(st::rel_rms(packed.state.c.narrow(0, b, 1), alone.state.c) < 1e-12);
            CHECK(st::rel_rms(packed.state.n.narrow(0, b, 1), alone.state.n) < 1e-12);
            CHECK(st::rel_rms(packed.state.m.narrow(0, b, 1), alone.state.m) < 1e-12);
          }
          at += len;
        }
      }
      // Changing document 1 of row 0 (tokens 5..44) changes it but nothing after it.
      auto changed = in;
      auto noise = [&](const Tensor& x, uint64_t seed) {
        auto y = x.clone();
        y.narrow(0, 0, 1).narrow(2, 5, 40).copy_(st::randn(y.narrow(0, 0, 1).narrow(2, 5, 40).sizes(), seed, 3.0));
        return y;
      };
      changed.q = noise(in.q, 1);
      changed.k = noise(in.k, 2);
      changed.v = noise(in.v, 3);
      changed.i = noise(in.i, 4);
      changed.f = noise(in.f, 5);
      auto other = op(changed.q, changed.k, changed.v, changed.i, changed.f, in.init, in.reset);
      auto row0 = [](const Tensor& h, int64_t from, int64_t len) { return h.narrow(0, 0, 1).narrow(2, from, len); };
      CHECK(st::rel_rms(row0(other.h, 5, 40), row0(packed.h, 5, 40)) > 0.1);  // the test can fail
      CHECK(st::rel_rms(row0(other.h, 45, 31), row0(packed.h, 45, 31)) < 1e-12);
      CHECK(st::rel_rms(row0(other.h, 0, 5), row0(packed.h, 0, 5)) < 1e-12);
      CHECK(st::rel_rms(other.h.narrow(0, 1, 1), packed.h.narrow(0, 1, 1)) < 1e-12);
      CHECK(st::rel_rms(other.state.c, packed.state.c) < 1e-12);
      CHECK(st::rel_rms(other.state.m, packed.state.m) < 1e-12);
    }
  }
}

TEST_CASE("mlstm decode steps continue a chunkwise prefill exactly", "[ops][mlstm]") {
  Shape s{2, 3, 50, 8, 6, 16, true, 0.08};
  auto in = make(s, 1300, kRealistic);
  auto full = subq::ops::mlstm_chunkwise(in.q, in.k, in.v, in.i, in.f, in.init, in.reset, s.chunk);
  const int64_t prefix = 37;
  auto pre = subq::ops::mlstm_chunkwise(in.q.narrow(2, 0, prefix), in.k.narrow(2, 0, prefix),
                                        in.v.narrow(2, 0, prefix), in.i.narrow(2, 0, prefix),
                                        in.f.narrow(2, 0, prefix), in.init, in.reset.narrow(1, 0, prefix), s.chunk);
  CHECK(st::rel_rms(pre.h, full.h.narrow(2, 0, prefix)) < 1e-12);
  MlstmState state = pre.state;
  for (int64_t t = prefix; t < s.t; ++t) {
    auto step = subq::ops::mlstm_step(in.q.select(2, t), in.k.select(2, t), in.v.select(2, t), in.i.select(2, t),
                                      in.f.select(2, t), state, in.reset.select(1, t));
    INFO("t = " << t);
    CHECK(st::rel_rms(step.h, full.h.select(2, t)) < 1e-10);
    state = step.state;
  }
  CHECK(st::rel_rms(state.c, full.state.c) < 1e-10);
  CHECK(st::rel_rms(state.n, full.state.n) < 1e-10);
  CHECK(st::rel_rms(state.m, full.state.m) < 1e-12);
  // a step from the zero state equals a length-1 sequence
  auto one = subq::ops::mlstm_step(in.q.select(2, 0), in.k.select(2, 0), in.v.select(2, 0), in.i.select(2, 0),
                                   in.f.select(2, 0));
  auto seq = subq::ops::mlstm_recurrent(in.q.narrow(2, 0, 1), in.k.narrow(2, 0, 1), in.v.narrow(2, 0, 1),
                                        in.i.narrow(2, 0, 1), in.f.narrow(2, 0, 1));
  CHECK(st::rel_rms(one.h, seq.h.select(2, 0)) == 0.0);
}

TEST_CASE("mlstm zero state: first step by hand", "[ops][mlstm]") {
  // B = H = 1, Dk = 1, Dv = 1: m_1 = max(logsigmoid(f), i), i' = exp(i - m_1), C = n = i' k,
  // h = C q/sqrt(1) / (max(|n q|, exp(-m_1)) + 1e-6).
  const double q = 0.7, k = -1.3, v = 2.0, i = -2.0, f = 1.0;
  auto t = [](double x) { return torch::full({1, 1, 1, 1}, x, torch::kDouble); };
  auto g = [](double x) { return torch::full({1, 1, 1}, x, torch::kDouble); };
  auto r = subq::ops::mlstm_recurrent(t(q), t(k), t(v), g(i), g(f));
  auto c = subq::ops::mlstm_chunkwise(t(q), t(k), t(v), g(i), g(f));
  const double lf = -std::log1p(std::exp(-f));
  const double m1 = std::max(lf, i), ia = std::exp(i - m1);
  const double h = ia * k * v * q / (std::max(std::abs(ia * k * q), std::exp(-m1)) + 1e-6);
  CHECK(r.h.item<double>() == Approx(h).epsilon(1e-12));
  CHECK(c.h.item<double>() == Approx(h).epsilon(1e-12));
  CHECK(r.state.m.item<double>() == Approx(m1).epsilon(1e-14));
  CHECK(c.state.m.item<double>() == Approx(m1).epsilon(1e-14));
  CHECK(c.state.n.item<double>() == Approx(ia * k).epsilon(1e-12));
}

TEST_CASE("mlstm gradients match finite differences (fp64, tiny shapes, resets, initial state)", "[ops][mlstm]") {
  Shape s{2, 1, 5, 3, 2, 2, true, 0.0};
  auto in = make(s, 1700, kRealistic);
  Tensor reset = torch::zeros({2, 5}, torch::kBool);
  reset.index_put_({1, 2}, true);
  reset.index_put_({0, 4}, true);
  for (bool chunkwise : {false, true}) {
    SECTION(chunkwise ? "chunkwise" : "recurrent") {
      auto f = [&](const std::vector<Tensor>& x) {
        MlstmState init{x[5], x[6], x[7]};
        auto r = chunkwise ? subq::ops::mlstm_chunkwise(x[0], x[1], x[2], x[3], x[4], init, reset, s.chunk)
                           : subq::ops::mlstm_recurrent(x[0], x[1], x[2], x[3], x[4], init, reset);
        return st::project({r.h, r.state.c, r.state.n, r.state.m});
      };
      auto checks = st::grad_check(f, {in.q, in.k, in.v, in.i, in.f, in.init.c, in.init.n, in.init.m},
                                   {"q", "k", "v", "igate", "fgate", "initial.c", "initial.n", "initial.m"});
      for (auto& c : checks) {
        INFO(c.name << ": max |autograd - finite difference| = " << c.max_err << ", max |grad| = " << c.max_grad);
        CHECK(c.ok(1e-6));
        CHECK(c.max_grad > 0);
      }
    }
  }
}

TEST_CASE("mlstm reduced-precision inputs: fp32 math, output in the input dtype", "[ops][mlstm]") {
  Shape s{2, 2, 70, 16, 8, 32, true, 0.05};
  auto in = make(s, 2100, kRealistic);
  auto bq = in.q.to(torch::kBFloat16), bk = in.k.to(torch::kBFloat16), bv = in.v.to(torch::kBFloat16);
  MlstmState init{in.init.c.to(torch::kFloat), in.init.n.to(torch::kFloat), in.init.m.to(torch::kFloat)};
  auto fi = in.i.to(torch::kFloat), ff = in.f.to(torch::kFloat);
  auto low = subq::ops::mlstm_chunkwise(bq, bk, bv, fi, ff, init, in.reset, s.chunk);
  auto ref = subq::ops::mlstm_chunkwise(bq.to(torch::kFloat), bk.to(torch::kFloat), bv.to(torch::kFloat), fi, ff, init,
                                        in.reset, s.chunk);
  CHECK(low.h.scalar_type() == torch::kBFloat16);
  CHECK(low.state.c.scalar_type() == torch::kFloat);
  CHECK(st::rel_rms(low.h, ref.h) < 1e-2);
  CHECK(st::rel_rms(low.state.c, ref.state.c) < 1e-6);
  auto rec = subq::ops::mlstm_recurrent(bq, bk, bv, fi, ff, init, in.reset);
  CHECK(rec.h.scalar_type() == torch::kBFloat16);
  CHECK(st::rel_rms(rec.state.c, ref.state.c) < 1e-5);
}

TEST_CASE("mlstm empty sequences return the initial state", "[ops][mlstm]") {
  Shape s{2, 2, 3, 4, 5, 64, true, 0.0};
  auto in = make(s, 2300, kRealistic);
  auto e = [](const Tensor& x) { return x.narrow(2, 0, 0); };
  for (bool chunkwise : {false, true}) {
    auto r = chunkwise ? subq::ops::mlstm_chunkwise(e(in.q), e(in.k), e(in.v), e(in.i), e(in.f), in.init)
                       : subq::ops::mlstm_recurrent(e(in.q), e(in.k), e(in.v), e(in.i), e(in.f), in.init);
    CHECK(r.h.sizes() == at::IntArrayRef({2, 2, 0, 5}));
    CHECK(st::rel_rms(r.state.c, in.init.c) == 0.0);
    CHECK(st::rel_rms(r.state.m, in.init.m) == 0.0);
  }
}

TEST_CASE("mlstm rejects bad arguments with messages naming them", "[ops][mlstm]") {
  auto q = torch::randn({2, 3, 10, 4}), k = torch::randn({2, 3, 10, 4}), v = torch::randn({2, 3, 10, 5});
  auto i = torch::randn({2, 3, 10}), f = torch::randn({2, 3, 10});
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const subq::InputError& e) {
      return e.what();
    }
    return "<no InputError>";
  };
  auto has = [](const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; };
  std::string m1 = message([&] { subq::ops::mlstm_chunkwise(q, k.narrow(2, 0, 9), v, i, f); });
  CHECK(has(m1, "mlstm_chunkwise: k must have shape [B, H, T, Dk]"));
  CHECK(has(m1, "[2, 3, 9, 4]"));
  CHECK(has(message([&] { subq::ops::mlstm_recurrent(q.select(2, 0), k, v, i, f); }), "q must have 4 dimensions"));
  CHECK(has(message([&] { subq::ops::mlstm_chunkwise(q, k, v, i.narrow(2, 0, 3), f); }), "igate"));
  CHECK(has(message([&] { subq::ops::mlstm_chunkwise(q, k, v, i, f, {}, torch::zeros({2, 10})); }), "reset must be a bool"));
  CHECK(has(message([&] { subq::ops::mlstm_chunkwise(q, k, v, i, f, {}, torch::zeros({2, 9}, torch::kBool)); }),
            "reset must have shape [B, T]"));
  CHECK(has(message([&] { subq::ops::mlstm_chunkwise(q, k, v, i, f, {}, {}, 0); }), "chunk_size"));
  CHECK(has(message([&] { subq::ops::mlstm_chunkwise(q, k, v, i, f, MlstmState{torch::zeros({2, 3, 4, 5}), {}, {}}); }),
            "all of c, n and m"));
  CHECK(has(message([&] { subq::ops::mlstm_recurrent(q, k, v.to(torch::kDouble), i, f); }), "share one dtype"));
  CHECK(has(message([&] {
              subq::ops::mlstm_step(q.select(2, 0), k.select(2, 0), v.select(2, 0), i.select(2, 0), f.select(2, 0),
                                    MlstmState{torch::zeros({2, 3, 4, 4}), torch::zeros({2, 3, 4}), torch::zeros({2, 3})});
            }),
            "state.c must have shape [B, H, Dk, Dv]"));
  CHECK(has(message([&] { subq::ops::mlstm_recurrent(q, k, v, i, f.to(torch::kLong)); }), "fgate must be a floating"));
}
