// synthetic_source.cpp — the training BatchSource of the synthetic tasks and the padded batch layout
// (see synthetic.h).
//
// Decisions:
//  * The cursor is one counter (examples consumed by all ranks); example g is a pure function of
//    (run.seed, g), so restore() only sets the counter and no generator state is saved.
//  * The fingerprint in the cursor lists every key that changes the training stream (task, lengths,
//    modulus, operators); a cursor from another config is refused rather than silently continued on a
//    different distribution.
//  * Batches are built on the CPU and copied to the device in one go; they are small (B x T int64), so
//    no pinned memory or prefetch thread is needed.
#include <algorithm>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/data/synthetic.h"
#include "data/cursor.h"

namespace subq::data {

namespace {
constexpr const char* kStateKind = "synthetic";
constexpr int kStateVersion = 1;

std::string stream_fingerprint(const SyntheticConfig& c) {
  std::string ops;
  for (const auto& o : c.arith_ops) ops += o;
  return str("task=", c.task, ";train_len=", c.train_len, ";train_min_len=", c.train_min_len, ";modulus=", c.modulus,
             ";ops=", ops);
}
}  // namespace

Batch make_synthetic_batch(const std::vector<SyntheticExample>& examples, const torch::Device& device) {
  SUBQ_CHECK(!examples.empty(), "empty batch");
  const int64_t B = static_cast<int64_t>(examples.size());
  int64_t T = 0;
  for (const auto& e : examples) T = std::max<int64_t>(T, static_cast<int64_t>(e.inputs.size()));
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto inputs = torch::full({B, T}, kSyntheticPad, i64);
  auto targets = torch::full({B, T}, kIgnoreTarget, i64);
  auto in = inputs.accessor<int64_t, 2>();
  auto tg = targets.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& e = examples[static_cast<size_t>(b)];
    SUBQ_CHECK(e.inputs.size() == e.targets.size(), "example with ", e.inputs.size(), " inputs and ",
               e.targets.size(), " targets");
    for (size_t t = 0; t < e.inputs.size(); ++t) {
      in[b][static_cast<int64_t>(t)] = e.inputs[t];
      tg[b][static_cast<int64_t>(t)] = e.targets[t];
    }
  }
  Batch out;
  out.doc_start = torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kBool));
  out.doc_start.select(1, 0).fill_(true);
  out.position_ids = torch::arange(T, i64).unsqueeze(0).expand({B, T}).contiguous();
  out.inputs = inputs;
  out.targets = targets;
  if (!device.is_cpu()) {
    out.inputs = out.inputs.to(device);
    out.targets = out.targets.to(device);
    out.doc_start = out.doc_start.to(device);
    out.position_ids = out.position_ids.to(device);
  }
  return out;
}

SyntheticSource::SyntheticSource(SyntheticSourceOptions opts)
    : opts_(std::move(opts)), task_(opts_.cfg), fingerprint_(stream_fingerprint(opts_.cfg)) {
  SUBQ_CHECK(opts_.batch_size >= 1 && opts_.world >= 1 && opts_.rank >= 0 && opts_.rank < opts_.world,
             "batch ", opts_.batch_size, ", rank ", opts_.rank, " of ", opts_.world);
  lo_ = task_.ceil_len(opts_.cfg.train_min_len);
  hi_ = task_.floor_len(opts_.cfg.train_len);
}

SyntheticExample SyntheticSource::example(uint64_t g) const {
  SyntheticRng rng(opts_.seed, 0, g);
  const int64_t T = task_.draw_len(lo_, hi_, rng);
  return task_.generate(T, rng);
}

Batch SyntheticSource::next() {
  const uint64_t w = static_cast<uint64_t>(opts_.world);
  std::vector<SyntheticExample> rows;
  rows.reserve(static_cast<size_t>(opts_.batch_size));
  for (int64_t k = 0; k < opts_.batch_size; ++k)
    rows.push_back(example(consumed_ + static_cast<uint64_t>(opts_.rank) + static_cast<uint64_t>(k) * w));
  consumed_ += static_cast<uint64_t>(opts_.batch_size) * w;
  return make_synthetic_batch(rows, opts_.device);
}

nlohmann::json SyntheticSource::state() const {
  return {{"kind", kStateKind}, {"version", kStateVersion}, {"seed", opts_.seed}, {"fingerprint", fingerprint_},
          {"world", opts_.world}, {"consumed", consumed_}};
}

void SyntheticSource::restore(const nlohmann::json& s) {
  const std::string from = "a synthetic-task run";
  cursor::read_guarded(s, [&] {
    cursor::check_kind(s, kStateKind, kStateVersion, from, "source");
    if (cursor::need(s, "fingerprint", from).get<std::string>() != fingerprint_)
      throw InputError(str("the checkpoint's data cursor was saved for another synthetic stream (",
                           s.at("fingerprint").get<std::string>(), "); now: ", fingerprint_,
                           ". Resume with the data.synthetic settings the run started with, or start a new run"));
    const uint64_t seed = cursor::need(s, "seed", from).get<uint64_t>();
    const uint64_t consumed = cursor::resume_consumed(s, opts_.world, from, "example");
    opts_.seed = seed;
    consumed_ = consumed;
  });
}

}  // namespace subq::data
