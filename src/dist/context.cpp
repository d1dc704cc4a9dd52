// context.cpp — rendezvous, liveness monitor, abort protocol and string collectives (see context.h).
//
// Decisions:
//  * Four store connections per rank (main thread, monitor, collective backend, NCCL bootstrap), so a
//    long blocking wait on one never delays the heartbeat or the abort check on another.
//  * Heartbeats are counters (add("hb/<rank>", 1)), compared by the watcher on its own clock, so nodes
//    need no synchronised clocks. Each rank watches only the next rank (ring): one store read per
//    interval per rank; the watcher that sees a peer die publishes the abort key and everyone else reads
//    that. A rank that leaves normally sets "left/<rank>" first, so its silence is not taken for death.
//  * The abort key is written with compareSet, so the first reason stays (the root cause, not the echo).
//    The rank that hosts the store lingers up to 3 s after an abort until the others have read the key,
//    so they report the real reason rather than "lost the store".
//  * A rank that is told to abort but does not get out by itself within a few seconds (stuck in a CUDA
//    sync behind a NCCL kernel that will never finish) is ended by the monitor with _Exit(1) after the
//    reason is logged: exiting is the only way out of such a wait, and a relaunch resumes from the last
//    complete checkpoint.
#include "subq/dist/context.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dist_internal.h"
#include "subq/core/error.h"
#include "subq/core/log.h"

namespace subq::dist {

using clock_type = std::chrono::steady_clock;
using detail::FaultState;

namespace detail {

void FaultState::raise() const {
  throw RuntimeError(str(reason(), "; this rank stops too (a relaunch resumes from the last complete checkpoint)"));
}

[[noreturn]] void store_failed(const std::exception& e, const std::string& what) {
  std::string msg = e.what();
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) msg = ce->what_without_backtrace();
  throw RuntimeError(str("lost the rendezvous store during ", what, " (", msg,
                         "): the process hosting it (rank 0, or the launcher) died or the network failed"));
}

void wait_keys(c10d::Store& store, const std::vector<std::string>& keys, const std::vector<int>& ranks,
               double timeout_s, const FaultState& fault, const std::string& what) {
  // Polls with check() (exponential back-off to 5 ms) rather than blocking in wait(): c10d logs a warning
  // for every wait() that times out, and short slices are needed to notice an abort.
  const auto t0 = clock_type::now();
  int64_t sleep_us = 20;
  for (;;) {
    fault.throw_if_aborted();
    try {
      if (store.check(keys)) return;
    } catch (const c10::Error& e) {
      store_failed(e, what);
    }
    const double waited = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (waited < timeout_s) {
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
      sleep_us = std::min<int64_t>(sleep_us * 2, 5000);
      continue;
    }
    std::string missing;
    int n_missing = 0;
    try {
      for (size_t i = 0; i < keys.size(); ++i)
        if (!store.check({keys[i]})) {
          missing += str(missing.empty() ? "" : ", ", ranks[i]);
          ++n_missing;
        }
    } catch (const c10::Error& e) {
      store_failed(e, what);
    }
    throw RuntimeError(str(what, " timed out after ", timeout_s, " s (dist.timeout_s) waiting for ",
                           n_missing == 1 ? "rank " : "ranks ", missing.empty() ? std::string("?") : missing,
                           ": they died, hang, or run a different number of steps; this rank stops (a relaunch "
                           "resumes from the last complete checkpoint)"));
  }
}

}  // namespace detail

namespace {
std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string string_of(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}
}  // namespace

struct Context::Impl {
  LaunchEnv env;
  DistConfig cfg;
  c10::intrusive_ptr<c10d::TCPStore> tcp;  // the first connection (and the server when this rank hosts)
  c10::intrusive_ptr<c10d::Store> store;   // main thread
  c10::intrusive_ptr<c10d::Store> mon;     // monitor thread
  std::shared_ptr<FaultState> fault = std::make_shared<FaultState>();
  std::unique_ptr<Comm> comm;
  bool hosting = false;
  bool shut = false;
  uint64_t seq = 0;

  std::thread monitor;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;

  c10::intrusive_ptr<c10d::Store> connection() {
    return c10::make_intrusive<c10d::PrefixStore>(env.store_prefix, tcp->clone());
  }

  // Sets the shared abort key (first reason wins) without throwing.
  void publish_abort(const std::string& reason) noexcept {
    try {
      if (store) store->compareSet("abort", {}, bytes_of(reason));
    } catch (...) {
    }
  }

  // This process must stop: remember why, stop the backend, and make sure we do exit.
  void on_fault(const std::string& reason) {
    if (!fault->set(reason)) return;
    log::error(reason);
    if (comm) comm->abort();
    std::unique_lock<std::mutex> lk(mu);
    if (cv.wait_for(lk, std::chrono::seconds(5), [&] { return stop; })) return;
    log::error(str("rank ", env.rank, " did not stop by itself within 5 s of the abort (stuck in a collective); "
                   "exiting now"));
    log::flush();
    std::_Exit(1);
  }

  void monitor_loop() {
    const double interval = std::clamp(cfg.timeout_s / 10.0, 0.1, 1.0);
    // half the timeout, but never under min(timeout, 5 s): a loaded machine can starve a thread for a moment
    const double dead_after = std::max(cfg.timeout_s / 2.0, std::min(cfg.timeout_s, 5.0));
    const int peer = (env.rank + 1) % env.world;
    int64_t last = -1;
    auto last_change = clock_type::now();
    bool acked = false;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu);
        if (cv.wait_for(lk, std::chrono::duration<double>(interval), [&] { return stop; })) return;
      }
      std::string reason;
      try {
        mon->add(str("hb/", env.rank), 1);
        if (mon->check({"abort"})) {
          reason = string_of(mon->get("abort"));
          if (!acked) mon->add("abort_ack", 1);
          acked = true;
        } else {
          const int64_t v = mon->add(str("hb/", peer), 0);
          if (v != last) {
            last = v;
            last_change = clock_type::now();
          } else if (std::chrono::duration<double>(clock_type::now() - last_change).count() > dead_after &&
                     !mon->check({str("left/", peer)})) {
            reason = str("rank ", peer, " stopped responding: no heartbeat for ", dead_after,
                         " s (its process was killed or crashed, or its machine is gone; dist.timeout_s = ",
                         cfg.timeout_s, ")");
            try {
              mon->compareSet("abort", {}, bytes_of(reason));
            } catch (...) {
            }
          }
        }
      } catch (const std::exception& e) {
        std::string msg = e.what();
        if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) msg = ce->what_without_backtrace();
        reason = str("lost the rendezvous store at ", env.master_addr, ":", env.master_port, " (", msg,
                     "): the process hosting it (", env.store_hosted_elsewhere ? "the launcher" : "rank 0",
                     ") died or the network failed");
      }
      if (!reason.empty()) {
        on_fault(reason);
        return;
      }
    }
  }

  void stop_monitor() {
    {
      std::lock_guard<std::mutex> g(mu);
      stop = true;
    }
    cv.notify_all();
    if (monitor.joinable()) monitor.join();
  }
};

Context::Context() = default;

Context::~Context() {
  if (!impl_) return;
  impl_->stop_monitor();
  if (!impl_->shut && impl_->comm) impl_->comm->abort();
  impl_->comm.reset();
}

Comm& Context::comm() {
  if (!impl_ || !impl_->comm) throw InternalError("Context::comm() on a single-process context");
  return *impl_->comm;
}

std::unique_ptr<Context> Context::join(const LaunchEnv& env, const DistConfig& cfg, const torch::Device& device) {
  auto ctx = std::make_unique<Context>();
  ctx->env_ = env;
  ctx->cfg_ = cfg;
  ctx->device_ = device;
  if (!env.distributed()) return ctx;
  ctx->impl_ = std::make_unique<Impl>();
  Impl& im = *ctx->impl_;
  im.env = env;
  im.cfg = cfg;
  log::set_rank(env.rank);

  std::string backend = cfg.backend;
  if (backend == "auto") backend = device.is_cuda() ? "nccl" : "store";
  if (backend == "nccl" && !device.is_cuda())
    throw ConfigError(str("dist.backend = nccl needs CUDA tensors but this rank runs on ", device.str(),
                          "; use dist.backend=auto or store for CPU training"));

  // 1. connect (rank 0 hosts the store unless the launcher does)
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = env.rank == 0 && !env.store_hosted_elsewhere;
  o.waitWorkers = false;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.init_timeout_s * 1000));
  im.hosting = o.isServer;
  try {
    im.tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
  } catch (const c10::Error& e) {
    throw RuntimeError(str("rank ", env.rank, ": cannot ", o.isServer ? "host" : "reach", " the rendezvous store at ",
                           env.master_addr, ":", env.master_port, " (", e.what_without_backtrace(), "). ",
                           o.isServer ? "Is the port in use? Choose another MASTER_PORT."
                                      : "Is rank 0 running, and are MASTER_ADDR/MASTER_PORT right (and reachable)?"));
  }
  im.tcp->setTimeout(std::chrono::milliseconds(static_cast<int64_t>(cfg.init_timeout_s * 1000)));
  im.store = c10::make_intrusive<c10d::PrefixStore>(env.store_prefix, im.tcp);

  // 2. wait for every rank; check one process per (host, device)
  nlohmann::json me{{"host", host_name()}, {"pid", static_cast<int64_t>(::getpid())}, {"device", device.str()}};
  std::vector<std::string> infos;
  {
    std::vector<std::string> keys;
    std::vector<int> ranks;
    for (int r = 0; r < env.world; ++r) {
      keys.push_back(str("join/", r));
      ranks.push_back(r);
    }
    try {
      im.store->set(str("join/", env.rank), bytes_of(me.dump()));
    } catch (const c10::Error& e) {
      detail::store_failed(e, "the rendezvous");
    }
    detail::wait_keys(*im.store, keys, ranks, cfg.init_timeout_s, *im.fault,
                      str("the rendezvous of ", env.world, " ranks at ", env.master_addr, ":", env.master_port));
    try {
      for (const auto& k : keys) infos.push_back(string_of(im.store->get(k)));
    } catch (const c10::Error& e) {
      detail::store_failed(e, "the rendezvous");
    }
  }
  if (!device.is_cpu()) {
    for (int a = 0; a < env.world; ++a)
      for (int b = a + 1; b < env.world; ++b) {
        auto ja = nlohmann::json::parse(infos[static_cast<size_t>(a)]);
        auto jb = nlohmann::json::parse(infos[static_cast<size_t>(b)]);
        if (ja["host"] == jb["host"] && ja["device"] == jb["device"])
          throw ConfigError(str("ranks ", a, " and ", b, " both use ", ja["device"].get<std::string>(), " on ",
                                ja["host"].get<std::string>(), ": start one process per GPU (LOCAL_RANK picks it)"));
      }
  }
  im.tcp->setTimeout(std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_s * 1000)));

  // 3. the collective backend and the monitor
  if (backend == "nccl") im.comm = detail::make_nccl_comm(im.connection(), env.rank, env.world, device, cfg.timeout_s, im.fault);
  else im.comm = detail::make_store_comm(im.connection(), env.rank, env.world, cfg.timeout_s, im.fault);
  im.mon = im.connection();
  im.monitor = std::thread([&im] { im.monitor_loop(); });
  ctx->barrier("start");
  if (env.rank == 0)
    log::info(str("data parallel: ", env.world, " processes (", env.source, "), backend ", im.comm->name(),
                  ", rendezvous ", env.master_addr, ":", env.master_port, im.hosting ? " (hosted by rank 0)" : "",
                  ", dist.timeout_s ", cfg.timeout_s));
  log::debug(str("rank ", env.rank, " pid ", ::getpid(), " on ", me["host"].get<std::string>(), " uses ", device.str()));
  return ctx;
}

std::vector<std::string> Context::all_gather_string(const std::string& tag, const std::string& mine) {
  if (!distributed()) return {mine};
  Impl& im = *impl_;
  const uint64_t seq = im.seq++;
  std::vector<std::string> keys;
  std::vector<int> ranks;
  for (int r = 0; r < world(); ++r) {
    keys.push_back(str("s", seq, "/", r));
    ranks.push_back(r);
  }
  std::vector<std::string> out;
  try {
    im.store->set(keys[static_cast<size_t>(rank())], bytes_of(mine));
  } catch (const c10::Error& e) {
    detail::store_failed(e, tag);
  }
  detail::wait_keys(*im.store, keys, ranks, cfg_.timeout_s, *im.fault, str("exchange '", tag, "'"));
  try {
    for (const auto& k : keys) out.push_back(string_of(im.store->get(k)));
    if (im.store->add(str("s", seq, "/done"), 1) == world()) {
      for (const auto& k : keys) im.store->deleteKey(k);
      im.store->deleteKey(str("s", seq, "/done"));
    }
  } catch (const c10::Error& e) {
    detail::store_failed(e, tag);
  }
  return out;
}

std::string Context::broadcast_string(const std::string& tag, const std::string& value, int root) {
  if (!distributed()) return value;
  Impl& im = *impl_;
  const uint64_t seq = im.seq++;
  const std::string key = str("b", seq);
  std::string out = value;
  try {
    if (rank() == root) im.store->set(key, bytes_of(value));
  } catch (const c10::Error& e) {
    detail::store_failed(e, tag);
  }
  detail::wait_keys(*im.store, {key}, {root}, cfg_.timeout_s, *im.fault, str("broadcast '", tag, "'"));
  try {
    if (rank() != root) out = string_of(im.store->get(key));
    if (im.store->add(key + "/done", 1) == world()) {
      im.store->deleteKey(key);
      im.store->deleteKey(key + "/done");
    }
  } catch (const c10::Error& e) {
    detail::store_failed(e, tag);
  }
  return out;
}

void Context::barrier(const std::string& tag) { all_gather_string(tag, ""); }

void Context::check_same(const std::string& what, const std::string& value) {
  auto all = all_gather_string(what, value);
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += str(differ.empty() ? "" : ", ", r);
  if (!differ.empty())
    throw ConfigError(str("the ", what, " of rank(s) ", differ, " differs from rank 0's: every rank must run the same ",
                          "command with the same --set overrides and files"));
}

void Context::abort(const std::string& reason) noexcept {
  if (!impl_) return;
  Impl& im = *impl_;
  im.fault->set(reason);
  im.publish_abort(reason);
  if (im.comm) im.comm->abort();
  if (im.hosting) {  // let the others read the reason before the store goes away
    const auto t0 = clock_type::now();
    try {
      while (im.store->add("abort_ack", 0) < world() - 1 &&
             std::chrono::duration<double>(clock_type::now() - t0).count() < 3.0)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } catch (...) {
    }
  }
}

void Context::throw_if_aborted() const {
  if (impl_) impl_->fault->throw_if_aborted();
}

void Context::shutdown() {
  if (!impl_ || impl_->shut) return;
  Impl& im = *impl_;
  im.shut = true;
  try {
    im.store->set(str("left/", rank()), bytes_of("1"));
  } catch (const c10::Error&) {
  }
  im.stop_monitor();
  im.fault->throw_if_aborted();
  im.comm->shutdown();
  try {
    im.store->add("exit", 1);
    if (im.hosting) {  // the others may still be talking to the store: close it when all have left
      const auto t0 = clock_type::now();
      while (im.store->add("exit", 0) < world() &&
             std::chrono::duration<double>(clock_type::now() - t0).count() < cfg_.timeout_s)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  } catch (const c10::Error& e) {
    log::warn(str("rank ", rank(), ": the store went away during shutdown (", e.what_without_backtrace(), ")"));
  }
}

}  // namespace subq::dist
