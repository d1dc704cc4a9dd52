// dist_internal.h — pieces shared by the files of src/dist (not a public header): the abort state every
// blocking wait polls, the store wait that names missing ranks, and the backend factories.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "subq/dist/comm.h"

namespace subq::dist::detail {

// Set once when this process must stop (another rank failed or died, the launcher saw a child die, the
// store vanished); every blocking wait checks it.
class FaultState {
 public:
  bool aborted() const { return aborted_.load(); }
  // First reason wins. Returns true when this call set it.
  bool set(const std::string& reason) {
    std::lock_guard<std::mutex> g(mu_);
    if (aborted_.load()) return false;
    reason_ = reason;
    aborted_.store(true);
    return true;
  }
  std::string reason() const {
    std::lock_guard<std::mutex> g(mu_);
    return reason_;
  }
  [[noreturn]] void raise() const;  // throws RuntimeError(reason + the relaunch hint)
  void throw_if_aborted() const {
    if (aborted()) raise();
  }

 private:
  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  std::string reason_;
};

// Waits until every key exists (keys[i] is written by ranks[i]), in slices so that an abort is seen within
// ~0.1 s. On timeout: RuntimeError naming `what`, the ranks whose keys are missing and dist.timeout_s.
// A lost store connection: RuntimeError naming the store's address.
void wait_keys(c10d::Store& store, const std::vector<std::string>& keys, const std::vector<int>& ranks,
               double timeout_s, const FaultState& fault, const std::string& what);

// Converts a c10d store exception into a RuntimeError that says what was being done.
[[noreturn]] void store_failed(const std::exception& e, const std::string& what);

std::unique_ptr<Comm> make_store_comm(c10::intrusive_ptr<c10d::Store> store, int rank, int world, double timeout_s,
                                      std::shared_ptr<FaultState> fault);
// Throws ConfigError where subq was built without NCCL.
std::unique_ptr<Comm> make_nccl_comm(c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                                     const torch::Device& device, double timeout_s, std::shared_ptr<FaultState> fault);

}  // namespace subq::dist::detail
