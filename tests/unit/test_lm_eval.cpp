// test_lm_eval.cpp — held-out metrics arithmetic: loss, perplexity and bits per byte on hand-computed
// cases (special tokens out of bpb, ignored targets out of everything), and evaluate_lm over a source
// against a direct computation.
#include <cmath>

#include <torch/torch.h>

#include "memory_source.h"
#include "subq/core/error.h"
#include "subq/eval/lm_eval.h"
#include "subq_catch.h"

namespace {

// A bigram "model": logits[b, t] = table[inputs[b, t]].
class BigramModel : public subq::models::LanguageModel {
 public:
  explicit BigramModel(int64_t vocab) : LanguageModel(make_cfg(vocab)) {
    table = register_parameter("table", torch::randn({vocab, vocab}));
  }
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor&) override {
    return table.index_select(0, tokens.reshape({-1})).view({tokens.size(0), tokens.size(1), -1});
  }
  std::unique_ptr<subq::models::DecodeState> new_decode_state(int64_t, int64_t) override { return nullptr; }
  torch::Tensor step(const torch::Tensor& t, subq::models::DecodeState&) override { return forward(t, {}); }
  double flops_per_token(int64_t) const override { return 0; }
  torch::Tensor table;

 private:
  static subq::models::ModelConfig make_cfg(int64_t v) {
    subq::models::ModelConfig c;
    c.vocab_size = v;
    return c;
  }
};

}  // namespace

TEST_CASE("bits per byte on a hand-computed case", "[lm_eval]") {
  // uniform logits over 4 tokens: every target costs ln 4 nats
  auto logits = torch::zeros({1, 5, 4});
  auto targets = torch::tensor({{0, 1, 2, 3, -100}}, torch::kInt64);
  auto bytes = torch::tensor({1, 2, 0, 3}, torch::kInt64);  // token 2 is special (0 bytes)
  subq::eval::LmEvalSums sums;
  sums.add(logits, targets, bytes);
  auto r = sums.result(true);
  CHECK(r.tokens == 4);  // -100 ignored
  CHECK(r.nats == Approx(4 * std::log(4.0)));
  CHECK(r.loss == Approx(std::log(4.0)));
  CHECK(r.ppl == Approx(4.0));
  CHECK(r.bytes == 6);
  CHECK(r.text_nats == Approx(3 * std::log(4.0)));
  REQUIRE(r.bpb);
  CHECK(*r.bpb == Approx(3 * 2.0 / 6.0));  // 3 tokens x 2 bits over 6 bytes = 1 bit per byte
  auto j = r.to_json();
  CHECK(j["eval_bpb"].get<double>() == Approx(1.0));
  CHECK(j["eval_ppl"].get<double>() == Approx(4.0));
  // without a bytes table there is no bpb
  subq::eval::LmEvalSums nob;
  nob.add(logits, targets, {});
  CHECK(!nob.result(false).bpb);
  CHECK(nob.result(false).to_json()["eval_bpb"].is_null());
}

TEST_CASE("bits per byte with non-uniform logits", "[lm_eval]") {
  torch::manual_seed(3);
  auto logits = torch::randn({2, 3, 5});
  auto targets = torch::tensor({{4, 0, 2}, {1, 1, 3}}, torch::kInt64);
  auto bytes = torch::tensor({2, 1, 4, 0, 7}, torch::kInt64);
  subq::eval::LmEvalSums sums;
  sums.add(logits, targets, bytes);
  auto r = sums.result(true);
  auto lp = torch::log_softmax(logits.to(torch::kFloat64), -1);
  double nats = 0, text = 0;
  int64_t nbytes = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 3; ++t) {
      int64_t y = targets[b][t].item<int64_t>();
      double n = -lp[b][t][y].item<double>();
      nats += n;
      int64_t by = bytes[y].item<int64_t>();
      if (by > 0) {
        text += n;
        nbytes += by;
      }
    }
  CHECK(r.loss == Approx(nats / 6).epsilon(1e-6));
  CHECK(r.bytes == nbytes);
  CHECK(*r.bpb == Approx(text / (std::log(2.0) * nbytes)).epsilon(1e-6));
}

TEST_CASE("evaluate_lm scores the requested batches of a source", "[lm_eval]") {
  torch::manual_seed(5);
  BigramModel m(16);
  subq::test::MemorySource src(16, 3, 8, 512);
  auto table = subq::eval::token_bytes_table(16, [](int64_t id) { return id % 4; });
  CHECK(table[5].item<int64_t>() == 1);
  subq::eval::LmEvalOptions o;
  o.batches = 4;
  o.token_bytes = table;
  auto r = subq::eval::evaluate_lm(m, src, o);
  CHECK(r.batches == 4);
  CHECK(r.tokens == 4 * 3 * 8);
  CHECK(src.cursor() == 4);
  // the same numbers directly
  subq::test::MemorySource again(16, 3, 8, 512);
  subq::eval::LmEvalSums sums;
  torch::NoGradGuard ng;
  for (int i = 0; i < 4; ++i) {
    auto b = again.next();
    sums.add(m.forward(b.inputs, {}), b.targets, table);
  }
  auto d = sums.result(true);
  CHECK(r.loss == Approx(d.loss).epsilon(1e-12));
  CHECK(*r.bpb == Approx(*d.bpb).epsilon(1e-12));
  CHECK(m.is_training());  // mode restored
  // an endless source needs a batch count
  subq::test::MemorySource endless(16, 3, 8, 512);
  o.batches = 0;
  CHECK_THROWS_AS(subq::eval::evaluate_lm(m, endless, o), subq::InputError);
  // a finite stream is scored to its end (eval.batches = 0), or capped
  int left = 5;
  subq::test::MemorySource finite(16, 3, 8, 512);
  auto stream = [&]() -> std::optional<subq::data::Batch> {
    if (left-- <= 0) return std::nullopt;
    return finite.next();
  };
  CHECK(subq::eval::evaluate_lm(m, stream, o).batches == 5);
  left = 5;
  o.batches = 2;
  CHECK(subq::eval::evaluate_lm(m, stream, o).batches == 2);
  // an evaluator scores the same batches every time
  subq::test::MemorySource val(16, 3, 8, 512);
  auto ev = subq::eval::source_evaluator(val, 3, table);
  auto e1 = ev(m, torch::kFloat32);
  auto e2 = ev(m, torch::kFloat32);
  CHECK(e1.batches == 3);
  CHECK(e1.loss == e2.loss);
  CHECK(val.cursor() == 3);
}
