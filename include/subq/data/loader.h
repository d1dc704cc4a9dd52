// loader.h — batches of token windows from a memory-mapped shard set: the training BatchSource and the
// held-out (eval) iterator.
//
// Training (TokenWindowLoader). The shard set is one stream of N tokens. An epoch has W windows of
// seq_len+1 tokens whose starts are offset_e + k * seq_len (k < W): consecutive windows share one
// token, so every token is a target exactly once per epoch. With shuffle on, offset_e is drawn per epoch
// in [0, seq_len) (so window boundaries move between epochs; this costs one window: W = (N-1)/seq_len - 1)
// and the windows are visited in a seeded pseudo-random permutation of [0, W) computed on the fly
// (a Feistel network with cycle walking: O(1) memory for any corpus size, and position -> window is a
// pure function, so resuming is exact without replaying). The per-epoch offset and permutation depend
// only on (seed, epoch). Without shuffle, windows come in order from offset 0 (W = (N-1)/seq_len).
//
// Data parallel: epochs are concatenated into one global window sequence; rank r of world w takes the
// global positions r, r+w, r+2w, ... So within an epoch the ranks' windows are disjoint and together
// are the whole epoch, and every rank can always make its next batch (ranks stay in lockstep). Nothing
// else is needed for data parallel.
//
// The cursor is the number of windows all ranks together have consumed (`consumed`; every rank
// consumes batch_size windows per next()). state() = {kind, version, seed, shuffle, seq_len, world,
// tokens, windows_per_epoch, fingerprint, consumed, epoch, index}; restore() continues exactly: the
// batches after restore(state after k batches) equal, bitwise, the batches k+1, k+2, ... of an
// uninterrupted run. A state saved on a different shard set or seq_len is refused (InputError). A
// state saved with another world size is accepted: the new ranks continue from the same global
// position (rounded down to a multiple of the new world size).
//
// Prefetch: with prefetch > 0 a background thread prepares that many batches ahead into a bounded
// queue (CPU tensors, in page-locked memory when the device is CUDA); next() moves them to the device
// with non_blocking copies on the caller's current stream. Batches are identical with prefetch on or
// off. The thread starts on the first next(), stops on restore() and in the destructor; an exception
// in it (e.g. a corrupt shard) is rethrown by the consumer's next() (and by every later next()).
//
// doc_start / position_ids: a window's first token starts a document; so does every token that
// follows the eos separator (the eos itself ends the previous document). position_ids count from 0
// at each document start. The separator comes from the shards' header (override: eos_id).
//
// Eval (EvalWindows): sequential non-overlapping windows [k*T, k*T + T] over the whole held-out set
// (the last < T tokens that do not fill a window are not scored), in batches of up to batch_size (the
// last batch may be smaller), optionally capped at max_batches; for distributed eval, rank r takes
// batches r, r+w, ... Each batch carries target_bytes: the UTF-8 bytes of its targets, summed from a
// per-token byte-length table (token_byte_table(tokenizer)), for bits per byte.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "subq/data/batch.h"
#include "subq/data/data_config.h"
#include "subq/data/shards.h"
#include "subq/data/tokenizer.h"
#include "subq/train/train_config.h"

namespace subq::data {

struct LoaderOptions {
  std::string shards;             // shard directory (or one shard file)
  int64_t seq_len = 256;          // T: windows hold T+1 tokens
  int64_t batch_size = 8;         // B: windows per batch (per rank)
  uint64_t seed = 0;              // data order
  bool shuffle = true;            // seeded permutation + per-epoch offset; false = in order
  int64_t rank = 0, world = 1;    // data-parallel partition
  int64_t prefetch = 4;           // batches prepared ahead by a background thread; 0 = none
  torch::Device device = torch::kCPU;
  std::optional<int32_t> eos_id;  // document separator; default: the shards' header

  // From the data: section (data.train, seq_len, shuffle, prefetch) and the trainer's values.
  static LoaderOptions from_config(const DataConfig& cfg, int64_t batch_size, uint64_t seed, int64_t rank,
                                   int64_t world, torch::Device device);
};

class TokenWindowLoader final : public BatchSource {
 public:
  explicit TokenWindowLoader(LoaderOptions opts);
  ~TokenWindowLoader() override;
  TokenWindowLoader(const TokenWindowLoader&) = delete;
  TokenWindowLoader& operator=(const TokenWindowLoader&) = delete;

  Batch next() override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;

  const LoaderOptions& options() const { return opts_; }
  const ShardSet& shards() const { return *shards_; }
  uint64_t windows_per_epoch() const { return windows_; }
  // Start offset (in the concatenated stream) of the window at global position g (epoch g / W).
  uint64_t window_start(uint64_t g) const;
  // Windows consumed by all ranks together (the cursor).
  uint64_t consumed() const { return consumed_; }

 private:
  struct Item {
    Batch batch;
    uint64_t consumed_after = 0;
    std::exception_ptr error;
  };
  Batch make_batch(uint64_t consumed) const;  // CPU tensors for the rank's next batch_size windows
  Batch to_device(Batch b) const;
  void start_worker();
  void stop_worker();
  void worker_loop(uint64_t consumed);

  LoaderOptions opts_;
  std::shared_ptr<const ShardSet> shards_;
  std::optional<int32_t> eos_;
  uint64_t windows_ = 0;
  uint64_t consumed_ = 0;
  bool pin_ = false;

  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
  std::exception_ptr error_;
};

struct EvalOptions {
  std::string shards;             // held-out shard directory (or file)
  int64_t seq_len = 256;
  int64_t batch_size = 8;
  int64_t max_batches = 0;        // 0 = the whole set
  int64_t rank = 0, world = 1;    // rank r evaluates batches r, r+w, ...
  torch::Device device = torch::kCPU;
  std::vector<int32_t> token_bytes;  // UTF-8 bytes per token id; empty = target_bytes stays -1
  std::optional<int32_t> eos_id;     // default: the shards' header

  // From data.val, data.seq_len and the eval: section (batch_size, batches).
  static EvalOptions from_config(const DataConfig& data, const train::EvalConfig& eval, int64_t rank, int64_t world,
                                 torch::Device device, std::vector<int32_t> token_bytes);
};

class EvalWindows {
 public:
  explicit EvalWindows(EvalOptions opts);
  // The next batch of this rank, or nullopt at the end (then reset() starts over).
  std::optional<Batch> next();
  void reset() { batch_ = opts_.rank; }
  // Windows and batches of the whole pass (all ranks; max_batches applied).
  int64_t num_windows() const { return windows_; }
  int64_t num_batches() const;
  const ShardSet& shards() const { return *shards_; }

 private:
  EvalOptions opts_;
  std::shared_ptr<const ShardSet> shards_;
  std::optional<int32_t> eos_;
  int64_t windows_ = 0;
  int64_t batch_ = 0;  // index of this rank's next batch
};

// Fills rows of doc_start / position_ids for `rows` windows of T input tokens (row-major [rows, T]).
// Exposed for tests and for sources that build batches elsewhere.
void fill_doc_positions(const int64_t* inputs, int64_t rows, int64_t T, std::optional<int32_t> eos,
                        bool* doc_start, int64_t* position_ids);

// UTF-8 bytes each token id decodes to (0 for special tokens), indexed by id: EvalOptions::token_bytes.
inline std::vector<int32_t> token_byte_table(const Tokenizer& tok) {
  std::vector<int32_t> t(static_cast<size_t>(tok.vocab_size()), 0);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>(tok.token_bytes(static_cast<int32_t>(i)));
  return t;
}

}  // namespace subq::data
