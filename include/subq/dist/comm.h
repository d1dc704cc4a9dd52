// comm.h — the collectives data parallel needs, behind one small interface with two backends:
//
//   nccl   c10d::ProcessGroupNCCL from LibTorch (CUDA tensors). Collectives run on c10d's own NCCL
//          stream, which first waits for the issuing thread's current stream; Work::wait() makes the
//          caller's current stream wait for the collective (no host sync). NCCL return codes are checked
//          by c10d; its errors come back as subq::RuntimeError naming the collective.
//   store  CPU collectives through the rendezvous TCPStore (the role Gloo plays in PyTorch: the torch
//          wheel ships ProcessGroupGloo's symbols but not the gloo headers needed to construct it). Each
//          rank writes its contribution under a per-collective key (in chunks of at most 1 MiB: c10d's
//          libuv store server rejects large messages) and reads the others'; reductions add the ranks'
//          contributions in rank order, so every rank gets bitwise the same result. Operations run in
//          issue order on one background thread, so they overlap with the caller's compute like NCCL's.
//          Tens of MB/s: meant for tests, debugging and small CPU runs, not for speed.
//
// Every collective must be issued by all ranks in the same order with matching shapes. A collective
// that does not complete within dist.timeout_s fails with a message naming the ranks that did not
// arrive (store) or the collective that timed out (nccl, through c10d's watchdog); an abort requested
// by another rank or by the launcher fails the pending and every later collective with its reason.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/types.h>

namespace subq::dist {

enum class ReduceOp { sum, max };

class Work {
 public:
  virtual ~Work() = default;
  // Completes the collective from the caller's point of view: the store backend blocks until the result
  // is in the output tensor; NCCL orders the caller's current CUDA stream after it. Throws on failure.
  virtual void wait() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class Comm {
 public:
  virtual ~Comm() = default;
  virtual std::string name() const = 0;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // In place over every rank's `t` (contiguous).
  virtual WorkPtr allreduce(torch::Tensor t, ReduceOp op) = 0;
  // input: world * n elements (contiguous); output: n elements = the sum over ranks of input's
  // segment [rank * n, (rank + 1) * n).
  virtual WorkPtr reduce_scatter(torch::Tensor output, torch::Tensor input) = 0;
  // input: n elements; output: world * n elements, rank r's input at [r * n, (r + 1) * n).
  virtual WorkPtr all_gather(torch::Tensor output, torch::Tensor input) = 0;
  // root's `t` to every rank, in place.
  virtual WorkPtr broadcast(torch::Tensor t, int root) = 0;
  // Stops using the transport after a fault (unblocks pending NCCL kernels); idempotent, noexcept.
  virtual void abort() noexcept {}
  // Orderly teardown at the end of a run (every rank calls it).
  virtual void shutdown() {}
};

}  // namespace subq::dist
