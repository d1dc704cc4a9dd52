// loader.cpp — training and eval batches from memory-mapped token shards (design in subq/data/loader.h).
//
// Decisions: the permutation is a 4-round balanced Feistel network on the smallest even number of bits
// that covers W, keyed by SplitMix64 of (seed, epoch, round), with cycle walking back into [0, W)
// (fewer than 4 steps on average, as 2^bits < 4W); it is a bijection, so every window appears once per
// epoch. Batches are built on the CPU from the mmap (one int64 row scratch per window, copied into the
// batch tensors) and moved to the device by next() on the consumer thread, so the copy is ordered on
// the consumer's current CUDA stream; the caching host allocator keeps a pinned block alive until its
// non_blocking copy has finished.
#include "subq/data/loader.h"

#include <algorithm>
#include <cstring>

#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/data/hash.h"
#include "data/cursor.h"

namespace subq::data {

namespace {

constexpr int kStateVersion = 1;
const char* kStateKind = "token_windows";

struct EpochKey {
  uint64_t round[4];
  uint64_t offset_key;
};

EpochKey epoch_key(uint64_t seed, uint64_t epoch) {
  EpochKey k;
  const uint64_t base = mix64(mix64(seed) ^ mix64(epoch + 0x5bd1e9955bd1e995ULL));
  for (int r = 0; r < 4; ++r) k.round[r] = mix64(base + static_cast<uint64_t>(r) + 1);
  k.offset_key = mix64(base ^ 0xa0761d6478bd642fULL);
  return k;
}

// A pseudo-random bijection of [0, n), keyed per epoch.
uint64_t permute(uint64_t i, uint64_t n, const EpochKey& key) {
  if (n <= 1) return i;
  int bits = 0;
  while ((uint64_t{1} << bits) < n) ++bits;
  if (bits % 2) ++bits;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t x = i;
  do {
    uint64_t l = x >> half, r = x & mask;
    for (int round = 0; round < 4; ++round) {
      const uint64_t nl = r;
      r = l ^ (mix64(r ^ key.round[round]) & mask);
      l = nl;
    }
    x = (l << half) | r;
  } while (x >= n);
  return x;
}

torch::TensorOptions cpu_options(torch::ScalarType t, bool pin) {
  return torch::TensorOptions().dtype(t).device(torch::kCPU).pinned_memory(pin);
}

void check_ids(const int64_t* ids, int64_t n, uint64_t vocab, const ShardSet& set, uint64_t start) {
  if (vocab == 0) return;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || static_cast<uint64_t>(ids[i]) >= vocab)
      throw InputError(str(set.path(), ": token ", start + static_cast<uint64_t>(i), " has id ", ids[i],
                           ", outside the vocabulary of ", vocab, " the shards declare: the shards are corrupt; re-run "
                           "`subq prepare`"));
}

}  // namespace

void fill_doc_positions(const int64_t* inputs, int64_t rows, int64_t T, std::optional<int32_t> eos, bool* doc_start,
                        int64_t* position_ids) {
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t* in = inputs + b * T;
    bool* ds = doc_start + b * T;
    int64_t* pos = position_ids + b * T;
    for (int64_t t = 0; t < T; ++t) {
      const bool start = t == 0 || (eos && in[t - 1] == *eos);
      ds[t] = start;
      pos[t] = start ? 0 : pos[t - 1] + 1;
    }
  }
}

// ------------------------------------------------------------------------------------------ training

LoaderOptions LoaderOptions::from_config(const DataConfig& cfg, int64_t batch_size, uint64_t seed, int64_t rank,
                                         int64_t world, torch::Device device) {
  LoaderOptions o;
  o.shards = cfg.train;
  o.seq_len = cfg.seq_len;
  o.batch_size = batch_size;
  o.seed = seed;
  o.shuffle = cfg.shuffle;
  o.rank = rank;
  o.world = world;
  o.prefetch = cfg.prefetch;
  o.device = device;
  return o;
}

TokenWindowLoader::TokenWindowLoader(LoaderOptions opts) : opts_(std::move(opts)) {
  if (opts_.seq_len < 1) throw ConfigError(str("data.seq_len must be >= 1, got ", opts_.seq_len));
  if (opts_.batch_size < 1) throw ConfigError(str("batch size must be >= 1, got ", opts_.batch_size));
  if (opts_.world < 1 || opts_.rank < 0 || opts_.rank >= opts_.world)
    throw InternalError(str("loader: rank ", opts_.rank, " is not in [0, world ", opts_.world, ")"));
  if (opts_.prefetch < 0) throw ConfigError(str("data.prefetch must be >= 0, got ", opts_.prefetch));
  shards_ = std::make_shared<const ShardSet>(opts_.shards);
  eos_ = opts_.eos_id ? opts_.eos_id : shards_->eos_id();
  const uint64_t n = shards_->size();
  const uint64_t T = static_cast<uint64_t>(opts_.seq_len);
  const uint64_t w0 = n >= 1 ? (n - 1) / T : 0;
  if (w0 == 0)
    throw InputError(str(opts_.shards, " holds ", n, " tokens, fewer than one window of data.seq_len + 1 = ", T + 1,
                         "; lower data.seq_len or prepare more data"));
  windows_ = (opts_.shuffle && w0 >= 2) ? w0 - 1 : w0;
  pin_ = opts_.device.is_cuda();
}

TokenWindowLoader::~TokenWindowLoader() { stop_worker(); }

uint64_t TokenWindowLoader::window_start(uint64_t g) const {
  const uint64_t epoch = g / windows_, i = g % windows_;
  const uint64_t T = static_cast<uint64_t>(opts_.seq_len);
  if (!opts_.shuffle) return i * T;
  const EpochKey key = epoch_key(opts_.seed, epoch);
  // Offsets up to T-1 when there is room (always when W = (N-1)/T - 1 >= 1); see loader.h.
  const uint64_t room = std::min<uint64_t>(T - 1, shards_->size() - 1 - windows_ * T);
  const uint64_t offset = key.offset_key % (room + 1);
  return offset + permute(i, windows_, key) * T;
}

Batch TokenWindowLoader::make_batch(uint64_t consumed) const {
  const int64_t B = opts_.batch_size, T = opts_.seq_len;
  const uint64_t world = static_cast<uint64_t>(opts_.world), rank = static_cast<uint64_t>(opts_.rank);
  Batch b;
  b.inputs = torch::empty({B, T}, cpu_options(torch::kInt64, pin_));
  b.targets = torch::empty({B, T}, cpu_options(torch::kInt64, pin_));
  b.doc_start = torch::empty({B, T}, cpu_options(torch::kBool, pin_));
  b.position_ids = torch::empty({B, T}, cpu_options(torch::kInt64, pin_));
  int64_t* in = b.inputs.data_ptr<int64_t>();
  int64_t* tg = b.targets.data_ptr<int64_t>();
  std::vector<int64_t> row(static_cast<size_t>(T + 1));
  const uint64_t j0 = consumed / world;  // this rank's windows consumed so far
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t g = (j0 + static_cast<uint64_t>(r)) * world + rank;
    const uint64_t start = window_start(g);
    shards_->read(start, row.size(), row.data());
    check_ids(row.data(), T + 1, shards_->vocab_size(), *shards_, start);
    std::memcpy(in + r * T, row.data(), sizeof(int64_t) * static_cast<size_t>(T));
    std::memcpy(tg + r * T, row.data() + 1, sizeof(int64_t) * static_cast<size_t>(T));
  }
  fill_doc_positions(in, B, T, eos_, b.doc_start.data_ptr<bool>(), b.position_ids.data_ptr<int64_t>());
  return b;
}

Batch TokenWindowLoader::to_device(Batch b) const {
  if (opts_.device.is_cpu()) return b;
  b.inputs = b.inputs.to(opts_.device, /*non_blocking=*/true);
  b.targets = b.targets.to(opts_.device, true);
  b.doc_start = b.doc_start.to(opts_.device, true);
  b.position_ids = b.position_ids.to(opts_.device, true);
  return b;
}

void TokenWindowLoader::worker_loop(uint64_t consumed) {
  const uint64_t step = static_cast<uint64_t>(opts_.batch_size * opts_.world);
  const size_t cap = static_cast<size_t>(opts_.prefetch);
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || queue_.size() < cap; });
      if (stop_) return;
    }
    Item it;
    try {
      it.batch = make_batch(consumed);
      consumed += step;
      it.consumed_after = consumed;
    } catch (...) {
      it.error = std::current_exception();
    }
    const bool failed = static_cast<bool>(it.error);
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(std::move(it));
    }
    cv_.notify_all();
    if (failed) return;
  }
}

void TokenWindowLoader::start_worker() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = false;
    queue_.clear();
  }
  worker_ = std::thread([this, c = consumed_] { worker_loop(c); });
}

void TokenWindowLoader::stop_worker() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  std::lock_guard<std::mutex> lk(mu_);
  queue_.clear();
}

Batch TokenWindowLoader::next() {
  if (error_) std::rethrow_exception(error_);
  const uint64_t step = static_cast<uint64_t>(opts_.batch_size * opts_.world);
  if (opts_.prefetch == 0) {
    Batch b = make_batch(consumed_);
    consumed_ += step;
    return to_device(std::move(b));
  }
  if (!worker_.joinable()) start_worker();
  Item it;
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !queue_.empty(); });
    it = std::move(queue_.front());
    queue_.pop_front();
  }
  cv_.notify_all();
  if (it.error) {
    error_ = it.error;
    std::rethrow_exception(error_);
  }
  consumed_ = it.consumed_after;
  return to_device(std::move(it.batch));
}

nlohmann::json TokenWindowLoader::state() const {
  nlohmann::json j;
  j["kind"] = kStateKind;
  j["version"] = kStateVersion;
  j["seed"] = opts_.seed;
  j["shuffle"] = opts_.shuffle;
  j["seq_len"] = opts_.seq_len;
  j["world"] = opts_.world;
  j["tokens"] = shards_->size();
  j["windows_per_epoch"] = windows_;
  j["fingerprint"] = hash_hex(shards_->fingerprint());
  j["consumed"] = consumed_;
  j["epoch"] = consumed_ / windows_;
  j["index"] = consumed_ % windows_;
  return j;
}

void TokenWindowLoader::restore(const nlohmann::json& s) {
  const std::string from = "a token-window loader";
  auto need = [&](const char* key) -> const nlohmann::json& { return cursor::need(s, key, from); };
  cursor::read_guarded(s, [&] {
    cursor::check_kind(s, kStateKind, kStateVersion, from, "loader");
    const std::string fp = hash_hex(shards_->fingerprint());
    if (need("seq_len").get<int64_t>() != opts_.seq_len || need("tokens").get<uint64_t>() != shards_->size() ||
        need("fingerprint").get<std::string>() != fp || need("shuffle").get<bool>() != opts_.shuffle)
      throw InputError(str("the checkpoint's data cursor was saved for other data (seq_len ", s.at("seq_len"), ", ",
                           s.at("tokens"), " tokens, shards ", s.at("fingerprint"), ", shuffle ", s.at("shuffle"),
                           "); now: seq_len ", opts_.seq_len, ", ", shards_->size(), " tokens, shards ", fp,
                           ", shuffle ", opts_.shuffle, " in ", opts_.shards,
                           ". Resume with the data.train and data.seq_len the run started with, or start a new run"));
    const uint64_t seed = need("seed").get<uint64_t>();
    const uint64_t consumed = cursor::resume_consumed(s, opts_.world, from, "window");
    stop_worker();
    error_ = nullptr;
    opts_.seed = seed;
    consumed_ = consumed;
  });
}

// ---------------------------------------------------------------------------------------------- eval

EvalOptions EvalOptions::from_config(const DataConfig& data, const train::EvalConfig& eval, int64_t rank,
                                     int64_t world, torch::Device device, std::vector<int32_t> token_bytes) {
  EvalOptions o;
  o.shards = data.val;
  o.seq_len = data.seq_len;
  o.batch_size = eval.batch_size;
  o.max_batches = eval.batches;
  o.rank = rank;
  o.world = world;
  o.device = device;
  o.token_bytes = std::move(token_bytes);
  return o;
}

EvalWindows::EvalWindows(EvalOptions opts) : opts_(std::move(opts)) {
  if (opts_.seq_len < 1) throw ConfigError(str("data.seq_len must be >= 1, got ", opts_.seq_len));
  if (opts_.batch_size < 1) throw ConfigError(str("eval batch size must be >= 1, got ", opts_.batch_size));
  if (opts_.max_batches < 0) throw ConfigError(str("eval.batches must be >= 0, got ", opts_.max_batches));
  if (opts_.world < 1 || opts_.rank < 0 || opts_.rank >= opts_.world)
    throw InternalError(str("eval: rank ", opts_.rank, " is not in [0, world ", opts_.world, ")"));
  shards_ = std::make_shared<const ShardSet>(opts_.shards);
  eos_ = opts_.eos_id ? opts_.eos_id : shards_->eos_id();
  const uint64_t n = shards_->size();
  windows_ = n >= 1 ? static_cast<int64_t>((n - 1) / static_cast<uint64_t>(opts_.seq_len)) : 0;
  if (windows_ == 0)
    throw InputError(str(opts_.shards, " holds ", n, " held-out tokens, fewer than one window of data.seq_len + 1 = ",
                         opts_.seq_len + 1, "; lower data.seq_len, prepare with a larger --val-fraction, or set "
                         "data.val: \"\" to turn eval off"));
  if (!opts_.token_bytes.empty() && shards_->vocab_size() > opts_.token_bytes.size())
    throw InputError(str("the token byte table has ", opts_.token_bytes.size(), " entries but ", opts_.shards,
                         " was written for a vocabulary of ", shards_->vocab_size(),
                         ": data.tokenizer is not the tokenizer the shards were prepared with"));
  batch_ = opts_.rank;
}

int64_t EvalWindows::num_batches() const {
  const int64_t all = (windows_ + opts_.batch_size - 1) / opts_.batch_size;
  return opts_.max_batches > 0 ? std::min(all, opts_.max_batches) : all;
}

std::optional<Batch> EvalWindows::next() {
  if (batch_ >= num_batches()) return std::nullopt;
  const int64_t T = opts_.seq_len;
  const int64_t first = batch_ * opts_.batch_size;
  const int64_t B = std::min(opts_.batch_size, windows_ - first);
  batch_ += opts_.world;
  const auto cpu = [](torch::ScalarType t) { return torch::TensorOptions().dtype(t).device(torch::kCPU); };
  Batch b;
  b.inputs = torch::empty({B, T}, cpu(torch::kInt64));
  b.targets = torch::empty({B, T}, cpu(torch::kInt64));
  b.doc_start = torch::empty({B, T}, cpu(torch::kBool));
  b.position_ids = torch::empty({B, T}, cpu(torch::kInt64));
  int64_t* in = b.inputs.data_ptr<int64_t>();
  int64_t* tg = b.targets.data_ptr<int64_t>();
  std::vector<int64_t> row(static_cast<size_t>(T + 1));
  int64_t bytes = 0;
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t start = static_cast<uint64_t>(first + r) * static_cast<uint64_t>(T);
    shards_->read(start, row.size(), row.data());
    check_ids(row.data(), T + 1, shards_->vocab_size(), *shards_, start);
    std::memcpy(in + r * T, row.data(), sizeof(int64_t) * static_cast<size_t>(T));
    std::memcpy(tg + r * T, row.data() + 1, sizeof(int64_t) * static_cast<size_t>(T));
    if (!opts_.token_bytes.empty())
      for (int64_t t = 1; t <= T; ++t) {
        const auto id = static_cast<size_t>(row[static_cast<size_t>(t)]);
        if (id >= opts_.token_bytes.size())
          throw InputError(str(opts_.shards, ": token id ", id, " has no entry in the token byte table (",
                               opts_.token_bytes.size(), " ids): data.tokenizer does not match the shards"));
        bytes += opts_.token_bytes[id];
      }
  }
  fill_doc_positions(in, B, T, eos_, b.doc_start.data_ptr<bool>(), b.position_ids.data_ptr<int64_t>());
  b.target_bytes = opts_.token_bytes.empty() ? -1 : bytes;
  if (!opts_.device.is_cpu()) {
    b.inputs = b.inputs.to(opts_.device);
    b.targets = b.targets.to(opts_.device);
    b.doc_start = b.doc_start.to(opts_.device);
    b.position_ids = b.position_ids.to(opts_.device);
  }
  return b;
}

}  // namespace subq::data
