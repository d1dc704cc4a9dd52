// comm_store.cpp — the CPU collective backend through the rendezvous TCPStore (see comm.h).
//
// Decisions:
//  * One background thread runs the collectives in issue order (a FIFO), so a bucket's reduction
//    overlaps the rest of backward as with NCCL, and a blocking wait never runs inside an autograd hook.
//  * Keys are "c<seq>/<src>[/<dst>]/<chunk>", seq counting this rank's collectives (the same on every
//    rank, as every rank issues the same collectives). A rank writes its chunks in order through one
//    connection, which the server handles in order, so waiting for the last chunk means all are there.
//  * Reductions add the contributions in rank order into a fresh accumulator on every rank, so all ranks
//    hold bitwise the same result (and the same result run after run).
//  * Cleanup: after a collective each rank increments "c<seq>/done"; the one that brings it to world has
//    seen everybody finish reading, and deletes the collective's keys.
//  * After the first failure (timeout, abort, lost store) every later collective fails at once with the
//    same error, so a run with many pending buckets does not wait one timeout per bucket.
//  * CUDA tensors are accepted (dist.backend=store on a GPU, for debugging): copied to the host when the
//    collective is issued and back in wait().
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <thread>

#include <torch/torch.h>

#include "dist_internal.h"
#include "subq/core/error.h"

namespace subq::dist::detail {

namespace {

constexpr size_t kChunk = 1 << 20;  // bytes per store value

size_t num_chunks(size_t nbytes) { return nbytes == 0 ? 1 : (nbytes + kChunk - 1) / kChunk; }

class StoreWork final : public Work {
 public:
  std::shared_future<void> done;
  torch::Tensor user, host;  // host != user when the user tensor lives on a GPU
  void wait() override {
    done.get();  // rethrows the collective's error
    if (host.defined() && !host.is_same(user)) user.copy_(host);
  }
};

class StoreComm final : public Comm {
 public:
  StoreComm(c10::intrusive_ptr<c10d::Store> store, int rank, int world, double timeout_s,
            std::shared_ptr<FaultState> fault)
      : store_(std::move(store)), rank_(rank), world_(world), timeout_s_(timeout_s), fault_(std::move(fault)) {
    worker_ = std::thread([this] { loop(); });
  }
  ~StoreComm() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  std::string name() const override { return "store"; }
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  WorkPtr allreduce(torch::Tensor t, ReduceOp op) override {
    return issue("allreduce", t, [this, op](uint64_t seq, torch::Tensor& h) {
      const size_t nb = bytes(h);
      publish(key(seq, rank_), h.data_ptr(), nb);
      torch::Tensor acc;
      for (int r = 0; r < world_; ++r) {
        torch::Tensor c = h;
        if (r != rank_) {
          c = torch::empty_like(h);
          fetch(key(seq, r), r, c.data_ptr(), nb, seq, "allreduce");
        }
        if (r == 0) acc = c.clone();
        else if (op == ReduceOp::sum) acc.add_(c);
        else acc = torch::maximum(acc, c);
      }
      h.copy_(acc);
      finish(seq, [&](std::vector<std::string>& keys) {
        for (int r = 0; r < world_; ++r) add_chunk_keys(keys, key(seq, r), nb);
      });
    });
  }

  WorkPtr reduce_scatter(torch::Tensor output, torch::Tensor input) override {
    SUBQ_CHECK(input.numel() == output.numel() * world_, "reduce_scatter: input must hold world x output elements");
    auto in_host = host_copy(input);
    return issue("reduce_scatter", output, [this, in_host](uint64_t seq, torch::Tensor& h) {
      const int64_t n = h.numel();
      const size_t nb = bytes(h);
      for (int d = 0; d < world_; ++d)
        if (d != rank_) publish(key(seq, rank_, d), in_host.narrow(0, d * n, n).data_ptr(), nb);
      torch::Tensor acc;
      for (int r = 0; r < world_; ++r) {
        torch::Tensor c = in_host.narrow(0, static_cast<int64_t>(rank_) * n, n);
        if (r != rank_) {
          c = torch::empty_like(h);
          fetch(key(seq, r, rank_), r, c.data_ptr(), nb, seq, "reduce_scatter");
        }
        if (r == 0) acc = c.clone();
        else acc.add_(c);
      }
      h.copy_(acc);
      finish(seq, [&](std::vector<std::string>& keys) {
        for (int s = 0; s < world_; ++s)
          for (int d = 0; d < world_; ++d)
            if (s != d) add_chunk_keys(keys, key(seq, s, d), nb);
      });
    });
  }

  WorkPtr all_gather(torch::Tensor output, torch::Tensor input) override {
    SUBQ_CHECK(output.numel() == input.numel() * world_, "all_gather: output must hold world x input elements");
    auto in_host = host_copy(input);
    return issue("all_gather", output, [this, in_host](uint64_t seq, torch::Tensor& h) {
      const int64_t n = in_host.numel();
      const size_t nb = bytes(in_host);
      publish(key(seq, rank_), in_host.data_ptr(), nb);
      for (int r = 0; r < world_; ++r) {
        auto seg = h.narrow(0, static_cast<int64_t>(r) * n, n);
        if (r == rank_) seg.copy_(in_host);
        else fetch(key(seq, r), r, seg.data_ptr(), nb, seq, "all_gather");
      }
      finish(seq, [&](std::vector<std::string>& keys) {
        for (int r = 0; r < world_; ++r) add_chunk_keys(keys, key(seq, r), nb);
      });
    });
  }

  WorkPtr broadcast(torch::Tensor t, int root) override {
    return issue("broadcast", t, [this, root](uint64_t seq, torch::Tensor& h) {
      const size_t nb = bytes(h);
      if (rank_ == root) publish(key(seq, root), h.data_ptr(), nb);
      else fetch(key(seq, root), root, h.data_ptr(), nb, seq, "broadcast");
      finish(seq, [&](std::vector<std::string>& keys) { add_chunk_keys(keys, key(seq, root), nb); });
    });
  }

  void abort() noexcept override { fault_->set("the collective backend was aborted"); }

 private:
  using Body = std::function<void(uint64_t seq, torch::Tensor& host)>;

  static size_t bytes(const torch::Tensor& t) { return static_cast<size_t>(t.numel()) * t.element_size(); }
  static torch::Tensor host_copy(const torch::Tensor& t) {
    return t.is_cpu() ? t.contiguous() : t.to(torch::kCPU).contiguous();
  }
  static std::string key(uint64_t seq, int src) { return str("c", seq, "/", src); }
  static std::string key(uint64_t seq, int src, int dst) { return str("c", seq, "/", src, "/", dst); }
  static void add_chunk_keys(std::vector<std::string>& keys, const std::string& base, size_t nb) {
    for (size_t i = 0; i < num_chunks(nb); ++i) keys.push_back(str(base, "/", i));
  }

  WorkPtr issue(const char* op, const torch::Tensor& t, Body body) {
    SUBQ_CHECK(t.is_contiguous(), "store backend: ", op, " needs a contiguous tensor");
    auto w = std::make_shared<StoreWork>();
    w->user = t;
    w->host = t.is_cpu() ? t : t.to(torch::kCPU);
    auto task = std::make_shared<std::packaged_task<void()>>();
    torch::Tensor host = w->host;
    {
      std::lock_guard<std::mutex> g(mu_);
      const uint64_t seq = next_seq_++;
      *task = std::packaged_task<void()>([this, seq, host, body]() mutable {
        if (failed_) std::rethrow_exception(failed_);
        try {
          fault_->throw_if_aborted();
          body(seq, host);
        } catch (...) {
          failed_ = std::current_exception();
          throw;
        }
      });
      w->done = task->get_future().share();
      queue_.push_back([task] { (*task)(); });
    }
    cv_.notify_all();
    return w;
  }

  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and drained
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  void publish(const std::string& base, const void* data, size_t nb) {
    const auto* p = static_cast<const uint8_t*>(data);
    try {
      for (size_t i = 0, n = num_chunks(nb); i < n; ++i) {
        const size_t off = i * kChunk, len = std::min(kChunk, nb - std::min(nb, off));
        store_->set(str(base, "/", i), std::vector<uint8_t>(p + off, p + off + len));
      }
    } catch (const c10::Error& e) {
      store_failed(e, "a collective's write to the store");
    }
  }

  void fetch(const std::string& base, int src, void* data, size_t nb, uint64_t seq, const char* op) {
    const size_t n = num_chunks(nb);
    wait_keys(*store_, {str(base, "/", n - 1)}, {src}, timeout_s_, *fault_,
              str("collective #", seq, " (", op, ", ", nb, " bytes)"));
    auto* p = static_cast<uint8_t*>(data);
    try {
      for (size_t i = 0; i < n; ++i) {
        auto v = store_->get(str(base, "/", i));
        const size_t off = i * kChunk;
        if (off + v.size() > nb || (i + 1 == n && off + v.size() != nb))
          throw InternalError(str("store backend: rank ", src, " sent ", off + v.size(), " bytes for collective #", seq,
                                  " (", op, "), expected ", nb, ": ranks issued different collectives"));
        if (!v.empty()) std::memcpy(p + off, v.data(), v.size());
      }
    } catch (const c10::Error& e) {
      store_failed(e, str("reading collective #", seq, " from the store"));
    }
  }

  template <typename Keys>
  void finish(uint64_t seq, Keys&& list_keys) {
    try {
      if (store_->add(str("c", seq, "/done"), 1) == world_) {
        std::vector<std::string> keys;
        list_keys(keys);
        keys.push_back(str("c", seq, "/done"));
        for (const auto& k : keys) store_->deleteKey(k);
      }
    } catch (const c10::Error& e) {
      store_failed(e, str("finishing collective #", seq));
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, world_;
  double timeout_s_;
  std::shared_ptr<FaultState> fault_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t next_seq_ = 0;
  bool stop_ = false;
  std::exception_ptr failed_;  // touched by the worker thread only
  std::thread worker_;
};

}  // namespace

std::unique_ptr<Comm> make_store_comm(c10::intrusive_ptr<c10d::Store> store, int rank, int world, double timeout_s,
                                      std::shared_ptr<FaultState> fault) {
  return std::make_unique<StoreComm>(std::move(store), rank, world, timeout_s, std::move(fault));
}

}  // namespace subq::dist::detail
