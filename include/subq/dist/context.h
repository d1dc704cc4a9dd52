// context.h — the process group of a data-parallel run: created once per process, passed to the trainer.
//
// Context() is a single process (world 1): no store, no threads, nothing to synchronise; the trainer then
// runs exactly the single-process code. Context::join(env, cfg, device) for world > 1:
//   1. rendezvous through c10d's TCPStore at MASTER_ADDR:MASTER_PORT: rank 0 hosts it unless the launcher
//      does (`subq launch`, torchrun's agent store); every rank waits for the others up to
//      dist.init_timeout_s and the world is checked (same world size, one process per (host, device));
//   2. the collective backend for the device (comm.h): NCCL on CUDA, the store backend on CPU;
//   3. a monitor thread that keeps a heartbeat in the store, watches the next rank's heartbeat and the
//      shared abort key. A rank whose heartbeat stops for dist.timeout_s / 2 (at least min(timeout_s, 5 s);
//      process killed, machine gone) is declared dead; a rank that fails sets the abort key with its
//      reason; `subq launch` sets it when a child dies. Any of these makes every rank fail its pending collective with that reason and
//      exit with status 1; a rank stuck inside a CUDA/NCCL call is ended by the monitor a few seconds
//      later (after c10d's abort of the NCCL communicators) so no rank hangs.
// shutdown() is the orderly end (every rank calls it after its last collective): the backend is torn
// down and the rank hosting the store waits for every other rank to leave before closing it.
//
// Small host-side collectives (strings: configs, checkpoint plans, RNG states) go through the store.
// Example:
//   auto env = subq::dist::LaunchEnv::from_environment();
//   auto ctx = env.distributed() ? subq::dist::Context::join(env, cfg.dist, subq::dist::device_for(cfg.run.device, env))
//                                : std::make_unique<subq::dist::Context>();
//   ctx->check_same("config", config::to_yaml(cfg));
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "subq/dist/comm.h"
#include "subq/dist/dist_config.h"
#include "subq/dist/launch_env.h"

namespace subq::dist {

class Context {
 public:
  Context();  // a single process
  static std::unique_ptr<Context> join(const LaunchEnv& env, const DistConfig& cfg, const torch::Device& device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  int local_rank() const { return env_.local_rank; }
  bool distributed() const { return env_.world > 1; }
  bool is_main() const { return env_.rank == 0; }
  const LaunchEnv& env() const { return env_; }
  const DistConfig& config() const { return cfg_; }
  const torch::Device& device() const { return device_; }
  Comm& comm();  // InternalError for a single process

  // Through the store, in issue order (every rank calls them in the same order). `tag` names the exchange
  // in timeout messages. With world 1 they return at once.
  std::vector<std::string> all_gather_string(const std::string& tag, const std::string& mine);
  std::string broadcast_string(const std::string& tag, const std::string& value, int root = 0);
  void barrier(const std::string& tag);
  // Every rank must pass the same `value`; ConfigError naming `what` and the ranks that differ otherwise.
  void check_same(const std::string& what, const std::string& value);

  // Tells every rank to stop (first reason wins) and tears down the backend; never throws. Apps call it
  // when a rank fails, so the others exit with this rank's reason instead of waiting for a timeout.
  void abort(const std::string& reason) noexcept;
  // RuntimeError carrying the reason when this process was told to abort.
  void throw_if_aborted() const;
  // The orderly end of the run (every rank, after its last collective). Idempotent.
  void shutdown();

  struct Impl;

 private:
  LaunchEnv env_;
  DistConfig cfg_;
  torch::Device device_{torch::kCPU};
  std::unique_ptr<Impl> impl_;
};

// Runs `fn` (the rank's whole job); when it throws, aborts the group with "rank R failed: <what>" so the
// other ranks stop at once, then rethrows. A world-1 context just runs it.
template <typename Fn>
auto run_guarded(Context& ctx, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    if (ctx.distributed()) ctx.abort(std::string("rank ") + std::to_string(ctx.rank()) + " failed: " + e.what());
    throw;
  }
}

}  // namespace subq::dist
