// batch.h — what the trainer consumes: batches of token windows, from any source that can say where
// it is (state) and resume there exactly (restore).
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace subq::data {

struct Batch {
  torch::Tensor inputs;     // [B, T] int64: tokens t_0..t_{T-1} of each window
  torch::Tensor targets;    // [B, T] int64: tokens t_1..t_T (next-token targets)
  torch::Tensor doc_start;  // [B, T] bool: true where inputs[b, t] is the first token of a document
                            // (after a separator, or t == 0): models that reset state per document
                            // reset there; position_ids restart there too
  torch::Tensor position_ids;  // [B, T] int64: position inside the current document
  int64_t target_bytes = -1;   // UTF-8 bytes the targets decode to (eval batches, for bits per byte);
                               // -1 when not computed
  int64_t tokens() const { return inputs.numel(); }
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The next batch (already on the source's device). Never ends: sources wrap around epochs.
  virtual Batch next() = 0;
  // Where the source is, as JSON that restore() accepts (saved in checkpoints).
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
};

}  // namespace subq::data
