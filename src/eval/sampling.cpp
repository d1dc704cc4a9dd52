// sampling.cpp — see sampling.h. The nucleus cut is computed on the descending sort: a token is removed
// when the mass of the tokens strictly before it already reaches top_p, which keeps the smallest set whose
// mass is >= top_p and always the first token.
#include "subq/eval/sampling.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "subq/core/error.h"

namespace subq::eval {

void validate(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    throw UsageError(str("temperature must be >= 0 (0 = greedy), got ", o.temperature));
  if (o.top_k < 0) throw UsageError(str("top-k must be >= 0 (0 = off), got ", o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw UsageError(str("top-p must be in (0, 1] (1 = off), got ", o.top_p));
}

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

torch::Tensor filter_logits(const torch::Tensor& logits, const SamplingOptions& o) {
  validate(o);
  SUBQ_CHECK(logits.dim() == 2, "logits must be [B, V], got ", logits.sizes());
  const double neg_inf = -std::numeric_limits<double>::infinity();
  torch::Tensor x = logits.to(torch::kFloat32);
  if (o.temperature > 0) x = x / o.temperature;
  const int64_t V = x.size(1);
  if (o.top_k > 0 && o.top_k < V) {
    torch::Tensor kth = std::get<0>(x.topk(o.top_k, /*dim=*/1)).narrow(1, o.top_k - 1, 1);  // [B, 1]
    x = x.masked_fill(x < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, idx] = x.sort(/*dim=*/1, /*descending=*/true);
    torch::Tensor probs = torch::softmax(sorted, 1);
    torch::Tensor before = probs.cumsum(1) - probs;  // mass strictly before each token
    torch::Tensor remove_sorted = before >= o.top_p;
    remove_sorted.narrow(1, 0, 1).fill_(false);
    torch::Tensor remove = torch::zeros_like(remove_sorted).scatter(1, idx, remove_sorted);
    x = x.masked_fill(remove, neg_inf);
  }
  return x;
}

torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& o, at::Generator& gen) {
  validate(o);
  SUBQ_CHECK(logits.dim() == 2, "logits must be [B, V], got ", logits.sizes());
  if (o.temperature == 0) return logits.to(torch::kFloat32).argmax(1).to(torch::kCPU, torch::kLong);
  torch::Tensor probs = torch::softmax(filter_logits(logits, o), 1).to(torch::kCPU);
  return torch::multinomial(probs, 1, /*replacement=*/false, gen).squeeze(1);
}

}  // namespace subq::eval
