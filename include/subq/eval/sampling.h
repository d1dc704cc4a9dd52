// sampling.h — choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).
//
// Order of the filters (as in Hugging Face's generate): divide by the temperature, keep the top-k
// logits, then keep the smallest prefix of the remaining distribution whose mass reaches top_p.
// temperature == 0 is greedy (argmax, no randomness; ties go to the lowest id). Ties at the k-th logit
// are all kept. The nucleus always keeps at least the most likely token.
//
// Draws use a CPU torch::Generator seeded by the caller, whatever device the logits are on: the
// filtered probabilities (B x V floats) are copied to the CPU for the draw, so one seed gives the same
// samples on CPU and GPU and the caller needs no per-device generator. Decoding has to bring the token
// back to the host each step anyway (end-of-sequence check, printing).
//
// Example:
//   subq::eval::SamplingOptions o{/*temperature=*/0.8, /*top_k=*/50, /*top_p=*/0.95};
//   torch::Generator gen = subq::eval::make_generator(1234);
//   torch::Tensor next = subq::eval::sample_next(logits_BxV, o, gen);   // [B] int64, CPU
#pragma once

#include <cstdint>

#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace subq::eval {

struct SamplingOptions {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off; in (0, 1]
};

// UsageError naming the option when a value is out of range.
void validate(const SamplingOptions& o);

// A CPU generator with this seed.
at::Generator make_generator(uint64_t seed);

// logits [B, V] (any float dtype and device) -> fp32 [B, V] on the same device: logits / temperature
// with the tokens removed by top-k / top-p set to -inf. Not meaningful for temperature 0 (greedy does
// not filter); it then applies the filters to the unscaled logits.
torch::Tensor filter_logits(const torch::Tensor& logits, const SamplingOptions& o);

// Next token per row: [B] int64 on the CPU.
torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& o, at::Generator& gen);

}  // namespace subq::eval
