// comm_nccl.cpp — the NCCL backend: LibTorch's c10d::ProcessGroupNCCL behind subq's Comm (see comm.h).
//
// Decisions:
//  * c10d rather than raw NCCL: it brings the communicator bootstrap through the TCPStore, its own
//    (side) CUDA stream per device with the correct event ordering against the caller's current stream,
//    allocator bookkeeping for tensors in flight, NCCL return-code checks, and a watchdog thread that
//    aborts a collective exceeding the timeout (dist.timeout_s) instead of hanging forever.
//  * The process's current CUDA device is set to its rank's GPU before anything touches CUDA, so no rank
//    creates a context on cuda:0.
//  * The communicator is created eagerly (eagerConnectSingleDevice) so a broken NCCL setup fails at start
//    with NCCL's message, not at the first gradient bucket.
//  * The options mirror what torch.distributed sets for its default group (group name "0", all global
//    ranks, a "nccl/" prefix in the store), so NCCL_* and TORCH_NCCL_* environment variables behave as
//    they do under PyTorch. NCCL_NVLS_ENABLE defaults to 0 (NVLink SHARP off) unless the user set it:
//    the shared H200 machines require it (docs/distributed.md).
//  * The class layout of ProcessGroupNCCL depends on the NCCL version macros; subq compiles against the
//    nccl.h of the same NCCL release the torch wheel links (2.28 on both machines), checked below.
#include <cstdlib>

#include <torch/torch.h>

#include "dist_internal.h"
#include "subq/core/error.h"
#include "subq/core/log.h"

#if defined(SUBQ_WITH_NCCL) && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <nccl.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define SUBQ_HAVE_C10D_NCCL 1
#endif

namespace subq::dist::detail {

#ifdef SUBQ_HAVE_C10D_NCCL
namespace {

std::string nccl_hint() {
  return "(NCCL_DEBUG=WARN shows NCCL's own log; a rank that died or hangs makes the others time out after "
         "dist.timeout_s)";
}

class NcclWork final : public Work {
 public:
  NcclWork(c10::intrusive_ptr<c10d::Work> w, std::string what, std::shared_ptr<FaultState> fault)
      : w_(std::move(w)), what_(std::move(what)), fault_(std::move(fault)) {}
  void wait() override {
    try {
      w_->wait();
    } catch (const c10::Error& e) {
      if (fault_->aborted()) fault_->raise();
      throw RuntimeError(str("NCCL ", what_, " failed: ", e.what_without_backtrace(), " ", nccl_hint()));
    }
  }

 private:
  c10::intrusive_ptr<c10d::Work> w_;
  std::string what_;
  std::shared_ptr<FaultState> fault_;
};

class NcclComm final : public Comm {
 public:
  NcclComm(c10::intrusive_ptr<c10d::Store> store, int rank, int world, const torch::Device& device, double timeout_s,
           std::shared_ptr<FaultState> fault)
      : rank_(rank), world_(world), fault_(std::move(fault)) {
    if (!device.is_cuda() || !device.has_index())
      throw InternalError(str("NCCL backend needs a CUDA device with an index, got ", device.str()));
    int version = 0;
    ncclGetVersion(&version);
    if (version / 100 != NCCL_VERSION_CODE / 100)
      log::warn(str("NCCL runtime ", version, " differs from the headers subq was built with (", NCCL_VERSION_CODE,
                    "); rebuild subq against the NCCL that torch loads if collectives misbehave"));
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    // this process's GPU becomes the current device, so nothing (CUDA context, cuBLAS) lands on cuda:0
    c10::cuda::set_device(device.index());
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    opts->group_name = "0";
    for (int r = 0; r < world; ++r) opts->global_ranks_in_group.push_back(static_cast<uint64_t>(r));
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl/", store), rank,
                                                        world, opts);
      pg_->setBoundDeviceId(device);
      pg_->eagerConnectSingleDevice(device);
    } catch (const c10::Error& e) {
      if (fault_->aborted()) fault_->raise();
      throw RuntimeError(str("cannot set up NCCL on ", device.str(), " (rank ", rank, " of ", world,
                             "): ", e.what_without_backtrace(), " ", nccl_hint()));
    }
  }
  ~NcclComm() override {
    try {
      if (pg_ && !down_) pg_->shutdown();
    } catch (...) {
    }
  }

  std::string name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  WorkPtr allreduce(torch::Tensor t, ReduceOp op) override {
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = op == ReduceOp::sum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
    return call("allreduce", t, [&] { return pg_->allreduce(v, o); });
  }
  WorkPtr reduce_scatter(torch::Tensor output, torch::Tensor input) override {
    return call("reduce_scatter", input, [&] { return pg_->_reduce_scatter_base(output, input); });
  }
  WorkPtr all_gather(torch::Tensor output, torch::Tensor input) override {
    return call("all_gather", output, [&] { return pg_->_allgather_base(output, input); });
  }
  WorkPtr broadcast(torch::Tensor t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return call("broadcast", t, [&] { return pg_->broadcast(v, o); });
  }
  void abort() noexcept override {
    try {
      if (pg_ && !down_) pg_->abort();
      down_ = true;
    } catch (...) {
    }
  }
  void shutdown() override {
    if (!pg_ || down_) return;
    down_ = true;
    try {
      pg_->shutdown();
    } catch (const c10::Error& e) {
      log::warn(str("NCCL shutdown: ", e.what_without_backtrace()));
    }
  }

 private:
  template <typename F>
  WorkPtr call(const char* op, const torch::Tensor& t, F&& f) {
    fault_->throw_if_aborted();
    if (!t.is_cuda()) throw InternalError(str("NCCL ", op, " got a tensor on ", t.device().str()));
    const std::string what = str(op, " of ", t.numel() * t.element_size(), " bytes");
    try {
      return std::make_shared<NcclWork>(f(), what, fault_);
    } catch (const c10::Error& e) {
      if (fault_->aborted()) fault_->raise();
      throw RuntimeError(str("NCCL ", what, " failed: ", e.what_without_backtrace(), " ", nccl_hint()));
    }
  }

  int rank_, world_;
  std::shared_ptr<FaultState> fault_;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
  std::atomic<bool> down_{false};
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                                     const torch::Device& device, double timeout_s, std::shared_ptr<FaultState> fault) {
  return std::make_unique<NcclComm>(std::move(store), rank, world, device, timeout_s, std::move(fault));
}

#else

std::unique_ptr<Comm> make_nccl_comm(c10::intrusive_ptr<c10d::Store>, int, int, const torch::Device&, double,
                                     std::shared_ptr<FaultState>) {
  throw ConfigError("dist.backend = nccl: this subq was built without NCCL (no CUDA toolkit / nccl.h at build time); "
                    "rebuild with -DSUBQ_CUDA=ON where NCCL is installed, or train on CPU with dist.backend=store");
}

#endif

}  // namespace subq::dist::detail
