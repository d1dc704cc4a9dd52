// data_parallel.h — gradient synchronisation and the optimizer of a data-parallel run (world > 1).
//
// Every rank holds a full replica of the model. Gradients are averaged over ranks in buckets of about
// dist.bucket_mb, each bucket launched as soon as the last of its gradients has been accumulated during
// backward (post-accumulate-grad hooks on the parameters), so communication overlaps the rest of
// backward. Buckets hold the parameters in reverse registration order (the order backward produces their
// gradients) and are launched strictly in bucket order on every rank, so all ranks issue the same
// collectives in the same order. With gradient accumulation only the last micro-batch's backward
// launches them (set_sync(false) before the others): earlier micro-batches accumulate locally, with no
// communication.
//
// Without ZeRO-1 each bucket is all-reduced, every rank ends with the averaged gradient in param.grad
// and runs the same AdamW step on its full replica. With dist.zero1 each bucket (padded to a multiple of
// world) is reduce-scattered: rank r keeps the averaged gradient of the r-th 1/world of it and an AdamW
// over exactly those parameter slices (1/world of the moments), steps them, and the updated slices are
// all-gathered back into every replica. Both give the same parameters as one process training on the
// union of the ranks' batches, up to float rounding (tested).
//
// Gradients that a parameter did not receive on a step count as zeros under data parallel (so a
// parameter unused in one step is still stepped, with a zero gradient); a single process skips it.
//
// The optimizer state saved in checkpoints is always the full, unsharded AdamW state, named as a single
// process names it (optimizer.h); gather_optimizer_state() assembles it on rank 0 and
// load_optimizer_state() spreads rank 0's copy to every rank (re-sharding it for ZeRO-1), so a checkpoint
// resumes on any number of ranks, with or without ZeRO-1.
//
// Example (the trainer's step):
//   for (micro...) { dp.set_sync(micro == last); loss.backward(); }
//   auto s = dp.finish(loss_mean_local, stop_requested());  // waits, reduces loss/norm: one host read
//   if (clip) dp.scale_grads(c);  dp.step(lr);  dp.zero_grad();
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "subq/core/safetensors.h"
#include "subq/dist/context.h"
#include "subq/train/optimizer.h"

namespace subq::dist {

class DataParallel {
 public:
  // params: the model's named parameters (all on ctx.device()); ctx must be distributed.
  DataParallel(Context& ctx, const std::vector<std::pair<std::string, torch::Tensor>>& params,
               const train::OptimConfig& optim);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Rank 0's parameters and buffers to every rank (after rank 0 loaded a checkpoint, and at the start of a
  // fresh run so that replicas are identical whatever the initialisation did).
  void broadcast_module(torch::nn::Module& module);

  // Whether the next backward reduces gradients (true for the last micro-batch of a step).
  void set_sync(bool sync) { sync_ = sync; }

  struct StepSync {
    double loss = 0;       // mean over ranks of loss_local
    double grad_norm = 0;  // global norm of the averaged gradient (before clipping)
    bool stop = false;     // any rank voted to stop
  };
  // After the last backward of the step: waits for every bucket and averages; then one small all-reduce
  // carries the loss, the stop votes and (ZeRO-1) the squared norm, read back to the host once.
  StepSync finish(const torch::Tensor& loss_local, bool stop_vote);

  void scale_grads(double factor);  // the averaged gradients (clipping)
  void step(double lr);             // AdamW step (ZeRO-1: the shard's step, then all-gather)
  void zero_grad();

  bool zero1() const { return zero1_; }
  train::AdamW& optimizer() { return *opt_; }  // the local optimizer (ZeRO-1: over this rank's slices)
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t collectives_launched() const { return launched_total_; }  // gradient collectives so far (tests)

  // The full AdamW state (optimizer.h names) on rank 0, an empty map elsewhere. Collective under ZeRO-1.
  TensorMap gather_optimizer_state();
  // Loads the full state that rank 0 passes (others pass nullptr) on every rank. InputError on every rank
  // when rank 0's state does not match the model.
  void load_optimizer_state(const TensorMap* state_on_rank0);

  struct Hook;

 private:
  struct Param {
    std::string name;
    torch::Tensor p;
    int bucket = -1;
    int64_t offset = 0, numel = 0;
    bool decay = true;
  };
  struct Slice {  // ZeRO-1: the part of a parameter in this rank's shard of its bucket
    int param = 0;
    int64_t param_offset = 0, shard_offset = 0, numel = 0;
  };
  struct Bucket {
    std::vector<int> params;
    std::vector<Slice> slices;
    int64_t numel = 0, padded = 0;
    torch::Tensor buf, shard;
    int ready = 0;
    bool launched = false;
    WorkPtr work;
  };
  void on_grad_ready(int param);
  void launch(Bucket& b);
  void launch_ready();
  void pack_grads(Bucket& b);

  Context& ctx_;
  Comm& comm_;
  train::OptimConfig optim_;
  bool zero1_ = false;
  int world_ = 1, rank_ = 0;
  std::vector<Param> params_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<train::AdamW> opt_;
  std::vector<torch::Tensor> replica_params_;  // every parameter (for the unsharded norm and scaling)
  bool sync_ = true;
  size_t next_launch_ = 0;
  int64_t launched_total_ = 0;
  std::mutex mu_;
};

}  // namespace subq::dist
