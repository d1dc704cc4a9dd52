// test_ops_short_conv.cpp — the short causal depthwise convolution: parallel and recurrent forms vs a
// naive scalar loop (bias, SiLU, cache, resets, K = 1..4, T = 1..37), decode steps continuing a parallel
// prefill, packed documents vs separate runs, finite-difference gradients, dtypes and argument errors.
#include <cmath>
#include <string>
#include <vector>

#include "op_testing.h"
#include "subq/core/error.h"
#include "subq/ops/short_conv.h"
#include "subq_catch.h"

using torch::Tensor;
namespace st = subq::test;

namespace {

// The definition in short_conv.h as a scalar loop in fp64: returns {y, final cache}.
std::pair<Tensor, Tensor> naive(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu, const Tensor& cache,
                                const Tensor& reset) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  auto dbl = [](const Tensor& t) { return t.detach().to(torch::kDouble).contiguous(); };
  Tensor xd = dbl(x), wd = dbl(w), bd = bias.defined() ? dbl(bias) : torch::zeros({C}, torch::kDouble);
  Tensor cd = cache.defined() ? dbl(cache) : torch::zeros({B, K - 1, C}, torch::kDouble);
  Tensor rd = reset.defined() ? reset.contiguous() : torch::zeros({B, T}, torch::kBool);
  auto xa = xd.accessor<double, 3>(), ca = cd.accessor<double, 3>();
  auto wa = wd.accessor<double, 2>();
  auto ba = bd.accessor<double, 1>();
  auto ra = rd.accessor<bool, 2>();
  Tensor y = torch::zeros({B, T, C}, torch::kDouble), out_cache = torch::zeros({B, K - 1, C}, torch::kDouble);
  auto ya = y.accessor<double, 3>(), oa = out_cache.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    auto value = [&](int64_t p, int64_t c) { return p >= 0 ? xa[b][p][c] : ca[b][p + K - 1][c]; };
    int64_t start = -1000000;  // first position of the current document
    for (int64_t t = 0; t < T; ++t) {
      if (ra[b][t]) start = t;
      for (int64_t c = 0; c < C; ++c) {
        double acc = ba[c];
        for (int64_t j = 0; j < K; ++j) {
          const int64_t p = t - (K - 1) + j;
          if (p >= start) acc += wa[c][j] * value(p, c);
        }
        ya[b][t][c] = silu ? acc / (1.0 + std::exp(-acc)) : acc;
      }
    }
    for (int64_t i = 0; i < K - 1; ++i) {
      const int64_t p = T - (K - 1) + i;
      for (int64_t c = 0; c < C; ++c) oa[b][i][c] = p >= start ? value(p, c) : 0.0;
    }
  }
  return {y, out_cache};
}

}  // namespace

TEST_CASE("short_conv parallel and recurrent forms equal a naive loop", "[ops][short_conv]") {
  uint64_t seed = 10;
  for (int64_t K : {1, 2, 4}) {
    for (int64_t T : {1, 3, 37}) {
      for (int variant = 0; variant < 4; ++variant) {
        const bool with_bias = variant & 1, silu = variant & 2;
        for (bool with_cache : {false, true}) {
          for (bool with_reset : {false, true}) {
            seed += 10;
            const int64_t B = 2, C = 5;
            Tensor x = st::randn({B, T, C}, seed), w = st::randn({C, K}, seed + 1);
            Tensor bias = with_bias ? st::randn({C}, seed + 2) : Tensor();
            Tensor cache = with_cache ? st::randn({B, K - 1, C}, seed + 3) : Tensor();
            Tensor reset = with_reset ? st::rand_mask({B, T}, seed + 4, 0.3) : Tensor();
            if (with_reset && T > 1) reset.index_put_({1, 1}, true);
            auto [y_ref, cache_ref] = naive(x, w, bias, silu, cache, reset);
            auto par = subq::ops::short_conv(x, w, bias, silu, cache, reset);
            auto rec = subq::ops::short_conv_recurrent(x, w, bias, silu, cache, reset);
            INFO("K=" << K << " T=" << T << " bias=" << with_bias << " silu=" << silu << " cache=" << with_cache
                      << " reset=" << with_reset);
            CHECK(st::rel_rms(par.y, y_ref) < 1e-13);
            CHECK(st::rel_rms(rec.y, y_ref) < 1e-13);
            CHECK(st::rel_rms(par.cache, cache_ref) == 0.0);
            CHECK(st::rel_rms(rec.cache, cache_ref) == 0.0);
            CHECK(par.cache.sizes() == at::IntArrayRef({B, K - 1, C}));
          }
        }
      }
    }
  }
}

TEST_CASE("short_conv decode steps continue a parallel prefill", "[ops][short_conv]") {
  const int64_t B = 3, T = 20, C = 8, K = 4;
  Tensor x = st::randn({B, T, C}, 100, 1.0, 0.0, torch::kFloat), w = st::randn({C, K}, 101, 1.0, 0.0, torch::kFloat);
  Tensor bias = st::randn({C}, 102, 1.0, 0.0, torch::kFloat);
  Tensor reset = st::rand_mask({B, T}, 103, 0.15);
  auto full = subq::ops::short_conv(x, w, bias, true, {}, reset);
  const int64_t prefix = 9;
  auto pre = subq::ops::short_conv(x.narrow(1, 0, prefix), w, bias, true, {}, reset.narrow(1, 0, prefix));
  CHECK(st::rel_rms(pre.y, full.y.narrow(1, 0, prefix)) < 1e-6);
  Tensor cache = pre.cache;
  for (int64_t t = prefix; t < T; ++t) {
    auto step = subq::ops::short_conv_step(x.select(1, t), w, bias, true, cache, reset.select(1, t));
    INFO("t = " << t);
    CHECK(st::rel_rms(step.y, full.y.select(1, t)) < 1e-6);
    cache = step.cache;
  }
  CHECK(st::rel_rms(cache, full.cache) == 0.0);
  // a first step without a cache sees zeros
  auto first = subq::ops::short_conv_step(x.select(1, 0), w, bias, false);
  CHECK(st::rel_rms(first.y, x.select(1, 0) * w.select(1, K - 1) + bias) < 1e-6);
}

TEST_CASE("short_conv packed documents with resets equal separate runs; nothing leaks", "[ops][short_conv]") {
  const int64_t C = 6, K = 4;
  const std::vector<int64_t> docs{2, 7, 1, 5};  // 15 tokens; the first continues from the cache
  Tensor x = st::randn({1, 15, C}, 200), w = st::randn({C, K}, 201), bias = st::randn({C}, 202);
  Tensor cache = st::randn({1, K - 1, C}, 203);
  Tensor reset = torch::zeros({1, 15}, torch::kBool);
  int64_t at = 0;
  for (size_t j = 0; j < docs.size(); ++j) {
    if (j > 0) reset.index_put_({0, at}, true);
    at += docs[j];
  }
  auto packed = subq::ops::short_conv(x, w, bias, true, cache, reset);
  at = 0;
  for (size_t j = 0; j < docs.size(); ++j) {
    auto alone = subq::ops::short_conv(x.narrow(1, at, docs[j]), w, bias, true, j == 0 ? cache : Tensor());
    INFO("document " << j);
    CHECK(st::rel_rms(packed.y.narrow(1, at, docs[j]), alone.y) < 1e-14);
    if (j + 1 == docs.size()) CHECK(st::rel_rms(packed.cache, alone.cache) == 0.0);
    at += docs[j];
  }
  // the last document is 5 >= K-1 tokens long; a final document of 1 token keeps zeros before it
  Tensor reset2 = reset.clone();
  reset2.index_put_({0, 14}, true);
  auto tail = subq::ops::short_conv(x, w, bias, false, cache, reset2);
  CHECK(tail.cache.narrow(1, 0, K - 2).abs().sum().item<double>() == 0.0);
  CHECK(st::rel_rms(tail.cache.select(1, K - 2), x.select(1, 14)) == 0.0);
  // changing document 1 (tokens 2..8) changes it, not the others
  Tensor other = x.clone();
  other.narrow(1, 2, 7).copy_(st::randn({1, 7, C}, 204));
  auto changed = subq::ops::short_conv(other, w, bias, true, cache, reset);
  CHECK(st::rel_rms(changed.y.narrow(1, 2, 7), packed.y.narrow(1, 2, 7)) > 0.1);
  CHECK(st::rel_rms(changed.y.narrow(1, 9, 6), packed.y.narrow(1, 9, 6)) == 0.0);
  CHECK(st::rel_rms(changed.y.narrow(1, 0, 2), packed.y.narrow(1, 0, 2)) == 0.0);
}

TEST_CASE("short_conv gradients match finite differences (fp64)", "[ops][short_conv]") {
  const int64_t B = 2, T = 5, C = 3, K = 3;
  Tensor x = st::randn({B, T, C}, 300), w = st::randn({C, K}, 301), bias = st::randn({C}, 302);
  Tensor cache = st::randn({B, K - 1, C}, 303);
  Tensor reset = torch::zeros({B, T}, torch::kBool);
  reset.index_put_({1, 2}, true);
  for (int form = 0; form < 3; ++form) {
    const char* name = form == 0 ? "parallel (conv1d)" : form == 1 ? "parallel (masked taps)" : "recurrent";
    SECTION(name) {
      auto f = [&](const std::vector<Tensor>& in) {
        auto r = form == 0   ? subq::ops::short_conv(in[0], in[1], in[2], true, in[3])
                 : form == 1 ? subq::ops::short_conv(in[0], in[1], in[2], true, in[3], reset)
                             : subq::ops::short_conv_recurrent(in[0], in[1], in[2], true, in[3], reset);
        return st::project({r.y, r.cache});
      };
      auto checks = st::grad_check(f, {x, w, bias, cache}, {"x", "weight", "bias", "cache"});
      for (auto& c : checks) {
        INFO(c.name << ": max |autograd - finite difference| = " << c.max_err << ", max |grad| = " << c.max_grad);
        CHECK(c.ok(1e-7));
        CHECK(c.max_grad > 0);
      }
    }
  }
}

TEST_CASE("short_conv reduced-precision input: fp32 math, output in the input dtype", "[ops][short_conv]") {
  Tensor x = st::randn({2, 16, 32}, 400).to(torch::kBFloat16), w = st::randn({32, 4}, 401).to(torch::kFloat);
  auto low = subq::ops::short_conv(x, w, {}, true);
  auto ref = subq::ops::short_conv(x.to(torch::kFloat), w, {}, true);
  CHECK(low.y.scalar_type() == torch::kBFloat16);
  CHECK(low.cache.scalar_type() == torch::kFloat);
  CHECK(st::rel_rms(low.y, ref.y) < 1e-2);
  CHECK(st::rel_rms(low.cache, ref.cache) == 0.0);
}

TEST_CASE("short_conv rejects bad arguments with messages naming them", "[ops][short_conv]") {
  Tensor x = torch::randn({2, 10, 8}), w = torch::randn({8, 4});
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const subq::InputError& e) {
      return e.what();
    }
    return "<no InputError>";
  };
  auto has = [](const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; };
  CHECK(has(message([&] { subq::ops::short_conv(x, torch::randn({7, 4})); }), "short_conv: weight must have shape [C, K]"));
  CHECK(has(message([&] { subq::ops::short_conv(x, w, torch::randn({7})); }), "bias must have shape [C]"));
  CHECK(has(message([&] { subq::ops::short_conv(x, w, {}, false, torch::randn({2, 4, 8})); }),
            "cache must have shape [B, K-1, C] = [2, 3, 8]"));
  CHECK(has(message([&] { subq::ops::short_conv(x, w, {}, false, {}, torch::zeros({2, 10})); }), "reset must be a bool"));
  CHECK(has(message([&] { subq::ops::short_conv(x.select(1, 0), w); }), "x must have 3 dimensions [B, T, C]"));
  CHECK(has(message([&] { subq::ops::short_conv_step(x, w); }), "short_conv_step: x must have 2 dimensions [B, C]"));
  CHECK(has(message([&] { subq::ops::short_conv(x, torch::randn({8, 0})); }), "K >= 1"));
}
