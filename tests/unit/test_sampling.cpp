// test_sampling.cpp — next-token sampling on fixed logits: greedy, the token sets top-k and top-p allow,
// temperature scaling, determinism per seed, and option validation.
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "subq/core/error.h"
#include "subq/eval/sampling.h"
#include "subq_catch.h"

using subq::eval::SamplingOptions;

namespace {
// One row of logits whose softmax is exactly `probs`, repeated `rows` times (each row is one draw).
torch::Tensor logits_for(const std::vector<double>& probs, int64_t rows) {
  auto p = torch::tensor(probs, torch::kFloat64);
  return p.log().to(torch::kFloat32).unsqueeze(0).repeat({rows, 1});
}
std::set<int64_t> drawn(const torch::Tensor& t) {
  std::set<int64_t> s;
  auto a = t.accessor<int64_t, 1>();
  for (int64_t i = 0; i < a.size(0); ++i) s.insert(a[i]);
  return s;
}
std::set<int64_t> allowed(const torch::Tensor& filtered_row) {
  std::set<int64_t> s;
  for (int64_t i = 0; i < filtered_row.size(0); ++i)
    if (std::isfinite(filtered_row[i].item<float>())) s.insert(i);
  return s;
}
}  // namespace

TEST_CASE("greedy picks the argmax and ignores the generator", "[sampling]") {
  auto l = torch::tensor({{0.1f, 2.0f, -1.0f, 1.9f}, {3.0f, 0.0f, 3.0f, 1.0f}});
  SamplingOptions o{0.0, 0, 1.0};
  auto g = subq::eval::make_generator(1);
  auto t = subq::eval::sample_next(l, o, g);
  CHECK(t.dtype() == torch::kLong);
  CHECK(t[0].item<int64_t>() == 1);
  CHECK(t[1].item<int64_t>() == 0);  // tie -> lowest id
}

TEST_CASE("top-k allows exactly the k most likely tokens (and ties at the k-th)", "[sampling]") {
  std::vector<double> p{0.05, 0.4, 0.1, 0.3, 0.15};
  auto l = logits_for(p, 4000);
  SamplingOptions o{1.0, 2, 1.0};
  CHECK(allowed(subq::eval::filter_logits(l, o)[0]) == std::set<int64_t>{1, 3});
  auto g = subq::eval::make_generator(7);
  auto t = subq::eval::sample_next(l, o, g);
  CHECK(drawn(t) == std::set<int64_t>{1, 3});
  // Renormalised over {1, 3}: P(1) = 0.4 / 0.7.
  double f1 = (t == 1).sum().item<int64_t>() / 4000.0;
  CHECK(std::fabs(f1 - 0.4 / 0.7) < 0.04);
  o.top_k = 3;
  CHECK(allowed(subq::eval::filter_logits(l, o)[0]) == std::set<int64_t>{1, 3, 4});
  auto tie = torch::tensor({{1.0f, 2.0f, 2.0f, 0.0f}});
  CHECK(allowed(subq::eval::filter_logits(tie, SamplingOptions{1.0, 1, 1.0})[0]) == std::set<int64_t>{1, 2});
  o.top_k = 99;  // larger than the vocabulary: no filtering
  CHECK(allowed(subq::eval::filter_logits(l, o)[0]).size() == 5);
}

TEST_CASE("top-p keeps the smallest set whose mass reaches p", "[sampling]") {
  std::vector<double> p{0.15, 0.5, 0.05, 0.3};
  auto l = logits_for(p, 3000);
  auto set_for = [&](double top_p) {
    return allowed(subq::eval::filter_logits(l, SamplingOptions{1.0, 0, top_p})[0]);
  };
  CHECK(set_for(0.3) == std::set<int64_t>{1});
  CHECK(set_for(0.5 - 1e-3) == std::set<int64_t>{1});
  CHECK(set_for(0.7) == std::set<int64_t>{1, 3});
  CHECK(set_for(0.85) == std::set<int64_t>{0, 1, 3});
  CHECK(set_for(0.97) == std::set<int64_t>{0, 1, 2, 3});
  CHECK(set_for(1.0) == std::set<int64_t>{0, 1, 2, 3});
  auto g = subq::eval::make_generator(3);
  CHECK(drawn(subq::eval::sample_next(l, SamplingOptions{1.0, 0, 0.7}, g)) == std::set<int64_t>{1, 3});
  // top-k then top-p: top-2 leaves {1: 0.625, 3: 0.375}; p = 0.6 then keeps only token 1.
  CHECK(allowed(subq::eval::filter_logits(l, SamplingOptions{1.0, 2, 0.6})[0]) == std::set<int64_t>{1});
}

TEST_CASE("temperature scales logits and sharpens or flattens the draw", "[sampling]") {
  auto l = logits_for({0.6, 0.4}, 4000);
  auto f = subq::eval::filter_logits(l, SamplingOptions{0.5, 0, 1.0});
  CHECK(torch::allclose(f, l / 0.5));
  auto g = subq::eval::make_generator(11);
  double cold = (subq::eval::sample_next(l, SamplingOptions{0.25, 0, 1.0}, g) == 0).sum().item<int64_t>() / 4000.0;
  double hot = (subq::eval::sample_next(l, SamplingOptions{4.0, 0, 1.0}, g) == 0).sum().item<int64_t>() / 4000.0;
  // p0 at T=0.25: 0.6^4 / (0.6^4 + 0.4^4) = 0.835; at T=4: 0.6^.25 / (...) = 0.525
  CHECK(std::fabs(cold - 0.835) < 0.04);
  CHECK(std::fabs(hot - 0.525) < 0.04);
}

TEST_CASE("same seed, same samples; another seed, other samples", "[sampling]") {
  auto l = torch::randn({64, 50}, torch::TensorOptions().dtype(torch::kFloat32));
  SamplingOptions o{1.0, 20, 0.9};
  auto g1 = subq::eval::make_generator(42), g2 = subq::eval::make_generator(42), g3 = subq::eval::make_generator(43);
  auto a = subq::eval::sample_next(l, o, g1), b = subq::eval::sample_next(l, o, g2), c = subq::eval::sample_next(l, o, g3);
  CHECK(torch::equal(a, b));
  CHECK_FALSE(torch::equal(a, c));
  // A second draw from the same generator moves on.
  auto a2 = subq::eval::sample_next(l, o, g1);
  CHECK_FALSE(torch::equal(a, a2));
  // bf16 logits are accepted.
  auto g4 = subq::eval::make_generator(42);
  CHECK(subq::eval::sample_next(l.to(torch::kBFloat16), o, g4).size(0) == 64);
}

TEST_CASE("out-of-range sampling options are usage errors", "[sampling]") {
  CHECK_THROWS_AS(subq::eval::validate(SamplingOptions{-0.1, 0, 1.0}), subq::UsageError);
  CHECK_THROWS_AS(subq::eval::validate(SamplingOptions{1.0, -1, 1.0}), subq::UsageError);
  CHECK_THROWS_AS(subq::eval::validate(SamplingOptions{1.0, 0, 0.0}), subq::UsageError);
  CHECK_THROWS_AS(subq::eval::validate(SamplingOptions{1.0, 0, 1.5}), subq::UsageError);
  CHECK_NOTHROW(subq::eval::validate(SamplingOptions{0.0, 5, 0.5}));
}
