// memory_source.h — an in-memory, deterministic BatchSource for trainer and eval tests.
//
// The corpus is a fixed pseudo-random "language" (each token mostly follows from the previous one by a
// fixed rule, with seeded noise) so a tiny model can learn it. Window b of batch c starts at
// (c * batch + b) * stride, plus — when `jitter` > 0 — a random shift in [0, jitter) drawn from the
// *global* CPU generator. So a batch depends on both the cursor (state()) and the global RNG: exact
// resume needs both restored, which is what the trainer's resume test checks.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <torch/torch.h>

#include "subq/data/batch.h"

namespace subq::test {

class MemorySource : public data::BatchSource {
 public:
  MemorySource(int64_t vocab, int64_t batch, int64_t seq_len, int64_t corpus_len = 4096, uint64_t seed = 7,
               int64_t jitter = 0)
      : vocab_(vocab), batch_(batch), seq_(seq_len), jitter_(jitter) {
    std::mt19937_64 rng(seed);
    corpus_.resize(static_cast<size_t>(corpus_len));
    int64_t t = 1;
    for (auto& x : corpus_) {
      // mostly deterministic successor, sometimes a random token
      t = (rng() % 5 == 0) ? static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab)) : (t * 5 + 3) % vocab;
      x = t;
    }
  }

  data::Batch next() override {
    const int64_t span = seq_ + 1;
    const int64_t n_windows = (static_cast<int64_t>(corpus_.size()) - span - jitter_) / seq_;
    auto win = torch::empty({batch_, span}, torch::TensorOptions().dtype(torch::kInt64));
    auto a = win.accessor<int64_t, 2>();
    for (int64_t b = 0; b < batch_; ++b) {
      int64_t start = ((cursor_ * batch_ + b) % n_windows) * seq_;
      if (jitter_ > 0) start += torch::randint(0, jitter_, {1}, torch::TensorOptions().dtype(torch::kInt64)).item<int64_t>();
      for (int64_t i = 0; i < span; ++i) a[b][i] = corpus_[static_cast<size_t>(start + i)];
    }
    ++cursor_;
    data::Batch out;
    out.inputs = win.narrow(1, 0, seq_).contiguous();
    out.targets = win.narrow(1, 1, seq_).contiguous();
    out.doc_start = torch::zeros({batch_, seq_}, torch::TensorOptions().dtype(torch::kBool));
    out.doc_start.select(1, 0).fill_(true);
    out.position_ids = torch::arange(seq_, torch::TensorOptions().dtype(torch::kInt64)).unsqueeze(0).expand({batch_, seq_});
    return out;
  }
  nlohmann::json state() const override { return {{"cursor", cursor_}}; }
  void restore(const nlohmann::json& st) override {
    if (!ignore_restore) cursor_ = st.at("cursor").get<int64_t>();
  }

  bool ignore_restore = false;  // for the test that proves the resume test can fail
  int64_t cursor() const { return cursor_; }

 private:
  int64_t vocab_, batch_, seq_, jitter_;
  int64_t cursor_ = 0;
  std::vector<int64_t> corpus_;
};

}  // namespace subq::test
