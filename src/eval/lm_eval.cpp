// lm_eval.cpp — held-out loss, perplexity and bits per byte (see lm_eval.h for the definitions).
//
// Per-token nats come from cross_entropy(reduction=none) on fp32 logits; sums are accumulated in double
// on the host, one read-back per batch (eval is not on the training hot path).
#include "subq/eval/lm_eval.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"

namespace subq::eval {

nlohmann::json LmEvalResult::to_json() const {
  nlohmann::json j;
  j["eval_loss"] = loss;
  j["eval_ppl"] = ppl;
  j["eval_bpb"] = bpb ? nlohmann::json(*bpb) : nlohmann::json(nullptr);
  j["eval_tokens"] = tokens;
  j["eval_bytes"] = bytes;
  j["eval_batches"] = batches;
  if (extra.is_object())
    for (const auto& [k, v] : extra.items()) j[k] = v;
  return j;
}

void LmEvalSums::add(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& token_bytes) {
  torch::NoGradGuard ng;
  SUBQ_CHECK(logits.dim() == 3 && targets.dim() == 2 && logits.size(0) == targets.size(0) &&
                 logits.size(1) == targets.size(1),
             "logits ", logits.sizes(), " and targets ", targets.sizes(), " do not match");
  const int64_t V = logits.size(2);
  auto flat_t = targets.reshape({-1}).to(logits.device(), torch::kInt64);
  auto tok_nats = torch::nn::functional::cross_entropy(
      logits.reshape({-1, V}).to(torch::kFloat32), flat_t,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(-100));
  auto valid = flat_t >= 0;
  tok_nats = torch::where(valid, tok_nats, torch::zeros_like(tok_nats)).to(torch::kFloat64);
  std::vector<torch::Tensor> parts{tok_nats.sum(), valid.sum().to(torch::kFloat64)};
  if (token_bytes.defined()) {
    auto tb = token_bytes.to(logits.device(), torch::kInt64);
    auto in_range = valid & (flat_t < tb.size(0));
    auto idx = torch::where(in_range, flat_t, torch::zeros_like(flat_t));
    auto b = torch::where(in_range, tb.index_select(0, idx), torch::zeros_like(idx));
    auto has_bytes = b > 0;
    parts.push_back(torch::where(has_bytes, tok_nats, torch::zeros_like(tok_nats)).sum());
    parts.push_back(b.sum().to(torch::kFloat64));
  }
  auto host = torch::stack(parts).to(torch::kCPU);
  auto acc = host.accessor<double, 1>();
  nats += acc[0];
  tokens += static_cast<int64_t>(acc[1]);
  if (token_bytes.defined()) {
    text_nats += acc[2];
    bytes += static_cast<int64_t>(acc[3]);
  }
  ++batches;
}

LmEvalResult LmEvalSums::result(bool have_bytes) const {
  LmEvalResult r;
  r.tokens = tokens;
  r.bytes = bytes;
  r.batches = batches;
  r.nats = nats;
  r.text_nats = text_nats;
  r.loss = tokens > 0 ? nats / static_cast<double>(tokens) : std::numeric_limits<double>::quiet_NaN();
  r.ppl = std::exp(r.loss);
  if (have_bytes && bytes > 0) r.bpb = text_nats / (std::log(2.0) * static_cast<double>(bytes));
  return r;
}

LmEvalResult evaluate_lm(models::LanguageModel& model, const BatchStream& stream, const LmEvalOptions& opts) {
  auto params = model.parameters();
  SUBQ_CHECK(!params.empty());
  const torch::Device device = params.front().device();
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard ng;
  LmEvalSums sums;
  try {
    while (opts.batches <= 0 || sums.batches < opts.batches) {
      std::optional<data::Batch> b = stream();
      if (!b) break;
      auto inputs = b->inputs.to(device);
      auto targets = b->targets.to(device);
      auto doc = b->doc_start.defined() ? b->doc_start.to(device) : torch::Tensor();
      torch::Tensor logits;
      {
        AutocastGuard ac(device, opts.compute);
        logits = model.forward(inputs, doc);
      }
      sums.add(logits, targets, opts.token_bytes);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  return sums.result(opts.token_bytes.defined());
}

LmEvalResult evaluate_lm(models::LanguageModel& model, data::BatchSource& source, const LmEvalOptions& opts) {
  if (opts.batches <= 0)
    throw InputError("eval.batches = 0 asks for the whole held-out set, but this data source is endless; set "
                     "eval.batches to a positive number");
  return evaluate_lm(model, [&]() -> std::optional<data::Batch> { return source.next(); }, opts);
}

Evaluator source_evaluator(data::BatchSource& source, int64_t batches, torch::Tensor token_bytes) {
  nlohmann::json start = source.state();
  return [&source, start, batches, token_bytes](models::LanguageModel& model, torch::ScalarType compute) {
    source.restore(start);
    LmEvalOptions o;
    o.batches = batches;
    o.token_bytes = token_bytes;
    o.compute = compute;
    return evaluate_lm(model, source, o);
  };
}

torch::Tensor token_bytes_table(int64_t vocab_size, const std::function<int64_t(int64_t)>& bytes_of) {
  SUBQ_CHECK(vocab_size > 0);
  auto t = torch::zeros({vocab_size}, torch::TensorOptions().dtype(torch::kInt64));
  auto a = t.accessor<int64_t, 1>();
  for (int64_t i = 0; i < vocab_size; ++i) a[i] = bytes_of(i);
  return t;
}

}  // namespace subq::eval
