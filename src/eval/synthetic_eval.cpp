// synthetic_eval.cpp — per-length accuracy on the synthetic tasks (see synthetic_eval.h).
//
// Decisions:
//  * Counts are integers read back once per batch (one small stacked tensor), so results are exact
//    fractions independent of batching, and the same on every device.
//  * Padded rows of a batch cost compute but never change a result: padding has target -100 and the
//    models are causal, so a sequence's predictions do not see its padding.
#include "subq/eval/synthetic_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include <torch/torch.h>

#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/data/synthetic.h"

namespace subq::eval {

namespace {
double frac(int64_t a, int64_t b) {
  return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : std::numeric_limits<double>::quiet_NaN();
}
std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
}  // namespace

double SyntheticLengthResult::seq_acc() const { return frac(seq_correct, examples); }
double SyntheticLengthResult::tok_acc() const { return frac(tok_correct, targets); }
double SyntheticLengthResult::final_acc() const { return frac(final_correct, examples); }
double SyntheticLengthResult::loss() const {
  return targets > 0 ? nats / static_cast<double>(targets) : std::numeric_limits<double>::quiet_NaN();
}

nlohmann::json SyntheticLengthResult::to_json() const {
  return {{"len", len},           {"min_len", lo},           {"max_len", hi},
          {"examples", examples}, {"targets", targets},      {"seq_acc", num(seq_acc())},
          {"tok_acc", num(tok_acc())}, {"final_acc", num(final_acc())}, {"loss", num(loss())}};
}

void SyntheticLengthResult::add(const torch::Tensor& logits, const torch::Tensor& targets_in) {
  torch::NoGradGuard ng;
  SUBQ_CHECK(logits.dim() == 3 && targets_in.dim() == 2 && logits.size(0) == targets_in.size(0) &&
                 logits.size(1) == targets_in.size(1),
             "logits ", logits.sizes(), " and targets ", targets_in.sizes(), " do not match");
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  auto tg = targets_in.to(logits.device(), torch::kInt64);
  auto mask = tg >= 0;
  auto pred = logits.argmax(-1);
  auto correct = (pred == tg) & mask;
  auto nats_t = torch::nn::functional::cross_entropy(
      logits.reshape({-1, V}).to(torch::kFloat32), tg.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(data::kIgnoreTarget));
  // last supervised position of each row: the largest t with mask (t * mask is maximal there)
  auto pos = torch::arange(T, tg.options()).unsqueeze(0).expand({B, T});
  auto last = (pos * mask.to(torch::kInt64)).argmax(1, /*keepdim=*/true);
  auto final_ok = correct.gather(1, last).squeeze(1);
  auto seq_ok = (correct == mask).all(1);
  auto rows_with_targets = mask.any(1).sum();
  auto host = torch::stack({mask.sum().to(torch::kFloat64), correct.sum().to(torch::kFloat64),
                            seq_ok.sum().to(torch::kFloat64), final_ok.sum().to(torch::kFloat64),
                            nats_t.to(torch::kFloat64), rows_with_targets.to(torch::kFloat64)})
                  .to(torch::kCPU);
  auto a = host.accessor<double, 1>();
  SUBQ_CHECK(static_cast<int64_t>(a[5]) == B, "a synthetic eval batch has rows without a supervised target");
  targets += static_cast<int64_t>(a[0]);
  tok_correct += static_cast<int64_t>(a[1]);
  seq_correct += static_cast<int64_t>(a[2]);
  final_correct += static_cast<int64_t>(a[3]);
  nats += a[4];
  examples += B;
}

nlohmann::json SyntheticEvalResult::to_json() const {
  nlohmann::json j;
  j["task"] = task;
  j["running"] = running;
  j["eval_len_mode"] = mode;
  j["lengths"] = nlohmann::json::array();
  for (const auto& l : lengths) j["lengths"].push_back(l.to_json());
  return j;
}

std::string SyntheticEvalResult::table() const {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%8s  %11s  %9s  %9s  %9s  %9s  %9s\n", "length", "lengths", "examples", "seq_acc",
                "tok_acc", "final_acc", "loss");
  out += buf;
  for (const auto& l : lengths) {
    const std::string span = l.lo == l.hi ? std::to_string(l.hi) : std::to_string(l.lo) + "-" + std::to_string(l.hi);
    std::snprintf(buf, sizeof buf, "%8lld  %11s  %9lld  %9.4f  %9.4f  %9.4f  %9.4f\n", static_cast<long long>(l.len),
                  span.c_str(), static_cast<long long>(l.examples), l.seq_acc(), l.tok_acc(), l.final_acc(), l.loss());
    out += buf;
  }
  return out;
}

LmEvalResult SyntheticEvalResult::as_lm_result() const {
  LmEvalResult r;
  r.extra = nlohmann::json::object();
  for (const auto& l : lengths) {
    r.nats += l.nats;
    r.tokens += l.targets;
    const std::string k = std::to_string(l.len);
    r.extra["eval_seq_acc_" + k] = num(l.seq_acc());
    r.extra["eval_tok_acc_" + k] = num(l.tok_acc());
    r.extra["eval_final_acc_" + k] = num(l.final_acc());
    r.summary += str(r.summary.empty() ? "" : ", ", "seq_acc@", k, " ", fixed(l.seq_acc(), 4), ", tok_acc@", k, " ",
                     fixed(l.tok_acc(), 4));
  }
  r.loss = r.tokens > 0 ? r.nats / static_cast<double>(r.tokens) : std::numeric_limits<double>::quiet_NaN();
  r.ppl = std::exp(r.loss);
  return r;
}

SyntheticEvalResult evaluate_synthetic(models::LanguageModel& model, const data::SyntheticConfig& cfg,
                                       const std::vector<int64_t>& lens, const SyntheticEvalOptions& opts) {
  SUBQ_CHECK(opts.batch_size >= 1);
  const data::SyntheticTask task(cfg);
  const auto els = data::synthetic_eval_lengths(task, cfg, lens, "data.synthetic.eval_lens");
  auto params = model.parameters();
  SUBQ_CHECK(!params.empty());
  const torch::Device device = params.front().device();
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard ng;
  SyntheticEvalResult res;
  res.task = task.name();
  res.running = task.running();
  res.mode = cfg.eval_len_mode;
  try {
    for (const auto& el : els) {
      SyntheticLengthResult lr;
      lr.len = el.len;
      lr.lo = el.lo;
      lr.hi = el.hi;
      for (int64_t start = 0; start < cfg.eval_examples; start += opts.batch_size) {
        const int64_t n = std::min(opts.batch_size, cfg.eval_examples - start);
        std::vector<data::SyntheticExample> rows;
        rows.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) rows.push_back(data::synthetic_eval_example(task, cfg, el, start + i));
        data::Batch b = data::make_synthetic_batch(rows, device);
        torch::Tensor logits;
        {
          AutocastGuard ac(device, opts.compute);
          logits = model.forward(b.inputs, b.doc_start);
        }
        lr.add(logits, b.targets);
      }
      res.lengths.push_back(lr);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  return res;
}

Evaluator synthetic_evaluator(const data::SyntheticConfig& cfg, int64_t batch_size) {
  return [cfg, batch_size](models::LanguageModel& model, torch::ScalarType compute) {
    SyntheticEvalOptions o;
    o.batch_size = batch_size;
    o.compute = compute;
    auto r = evaluate_synthetic(model, cfg, cfg.periodic_eval_lens(), o);
    auto lm = r.as_lm_result();
    lm.batches = 0;
    for (const auto& l : r.lengths) lm.batches += (l.examples + batch_size - 1) / batch_size;
    return lm;
  };
}

}  // namespace subq::eval
