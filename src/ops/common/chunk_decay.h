// chunk_decay.h — internal machinery shared by the chunkwise references of the gated linear recurrences
// (SSD / Mamba-2, Gated DeltaNet): compute-dtype choice, argument checks, time padding, stable segment
// sums of log-decays, and the masks that keep packed documents (reset flags) from interacting.
//
// Non-obvious decisions:
//  * Segment sums are built with the "segsum" construction (mask-then-cumsum over a [C, C] copy of the
//    log-decays), not as differences of one cumulative sum: cs_t - cs_s loses eps*|cs| of absolute
//    precision in the exponent, which is visible at the 1e-5 test tolerance once a chunk has decayed by
//    exp(-100). The construction costs one [C, C] cumsum per chunk, the size of the score matrix anyway.
//  * Entries that must vanish (s > t, or s and t in different documents) are set to -inf *before* exp,
//    never multiplied by 0 after: exp of a positive upper-triangle segment sum can overflow and inf * 0
//    is NaN. exp(-inf) = 0 has a zero gradient, so autograd stays finite.
//  * Documents are numbered by an inclusive cumulative sum of the reset flags ("segment ids"): tokens t
//    and s interact iff their ids match; a token sees the state carried into its chunk iff its id equals
//    the id just before the chunk; the carried state survives a chunk iff the chunk's last id does.
#pragma once

#include <torch/torch.h>

#include <initializer_list>
#include <string>

namespace subq::ops::detail {

// fp64 when any defined tensor is fp64 (finite-difference tests), else fp32 (states are always fp32).
torch::ScalarType compute_dtype(std::initializer_list<const torch::Tensor*> tensors);

// Argument checks that throw subq::InputError naming `op` and `name` and saying what was expected.
void check_float(const std::string& op, const std::string& name, const torch::Tensor& t);
void check_shape(const std::string& op, const std::string& name, const torch::Tensor& t,
                 c10::IntArrayRef expected, const std::string& layout);
void check_same_device(const std::string& op, const std::string& name, const torch::Tensor& t,
                       const torch::Tensor& ref);
// reset: undefined, or bool [B, T] on ref's device.
void check_reset(const std::string& op, const torch::Tensor& reset, int64_t batch, int64_t time,
                 const torch::Tensor& ref);
void check_chunk_size(const std::string& op, int64_t chunk_size);

// Zero-pads dimension `dim` of x to length `len` (returns x itself when already that long).
torch::Tensor pad_time(const torch::Tensor& x, int64_t dim, int64_t len);

// a [..., C] -> [..., C, C] with out[t, s] = sum_{s < r <= t} a[r] for s <= t (0 on the diagonal) and
// -inf for s > t. When `same_segment` is defined (bool, broadcastable to the output), entries where it is
// false are -inf too.
torch::Tensor segsum(const torch::Tensor& a, const torch::Tensor& same_segment = {});

// Reset masks for a padded [B, nc * C] reset tensor viewed as nc chunks of C tokens.
struct ChunkSegments {
  torch::Tensor same_segment;  // bool [B, nc, C, C]: tokens t and s belong to the same document
  torch::Tensor from_carry;    // bool [B, nc, C]: token t still sees the state carried into its chunk
  torch::Tensor passes;        // bool [B, nc]: the carried state survives to the end of the chunk
};
ChunkSegments chunk_segments(const torch::Tensor& reset_padded, int64_t chunk_size);

}  // namespace subq::ops::detail
