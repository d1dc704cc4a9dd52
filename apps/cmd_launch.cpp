// cmd_launch.cpp — `subq launch --nproc N [--nnodes M --node-rank R --master-addr A --master-port P] -- <subq
// command>`: starts N local processes of `subq <command>` (e.g. `train --config X.yaml`) as ranks of one
// data-parallel job, with the torchrun-style environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT), and watches them.
//
// Decisions:
//  * The launcher hosts the rendezvous TCPStore itself (on node 0; port 0 = a free port chosen by the OS
//    when single-node), so no port has to be guessed and the store outlives any rank: when a rank dies,
//    the others still learn why. Children get SUBQ_STORE_HOSTED=1 and only connect.
//  * A child that dies (signal) or exits non-zero without having left the group in order makes the launcher
//    publish the reason ("rank 1 (pid 4242) was killed by signal 9 (Killed)") as the group's abort key: the
//    other ranks stop within about a second with that message. Children still alive --grace-s seconds
//    later are killed. The exit status is the first failing child's (1 for a signal), 0 when all succeed.
//  * Children run in their own process group (so a terminal's Ctrl-C reaches them once, through the
//    launcher, which forwards SIGINT/SIGTERM: they checkpoint and stop; a second signal is forwarded as
//    SIGKILL) and get SIGTERM if the launcher itself dies (PR_SET_PDEATHSIG).
//  * NCCL_NVLS_ENABLE=0 is set for the children unless already set: NVLink SHARP stays off on the shared
//    H200 machines (docs/distributed.md says how to turn it on elsewhere).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "apps/cli.h"
#include "subq/core/error.h"
#include "subq/core/log.h"

extern char** environ;

namespace subq::cli {

namespace {

volatile sig_atomic_t g_signal = 0;
volatile sig_atomic_t g_signal_count = 0;
extern "C" void on_launcher_signal(int sig) {
  g_signal = sig;
  g_signal_count = g_signal_count + 1;
}

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool alive = false;
  int status = 0;
};

std::string describe_exit(const Child& c) {
  if (WIFSIGNALED(c.status))
    return str("rank ", c.rank, " (pid ", c.pid, ") was killed by signal ", WTERMSIG(c.status), " (",
               strsignal(WTERMSIG(c.status)), ")");
  return str("rank ", c.rank, " (pid ", c.pid, ") exited with status ", WEXITSTATUS(c.status));
}

struct LaunchOpts {
  int nproc = 1, nnodes = 1, node_rank = 0, master_port = 0;
  std::string master_addr;
  double grace_s = 30;
  std::vector<std::string> command;
};

int run_launch(const LaunchOpts& o) {
  if (o.nproc < 1) throw UsageError(str("--nproc must be >= 1, got ", o.nproc));
  if (o.nnodes < 1 || o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw UsageError(str("--node-rank ", o.node_rank, " is not in [0, --nnodes ", o.nnodes, ")"));
  if (o.command.empty())
    throw UsageError("nothing to launch: give the subq command after --, e.g. subq launch --nproc 2 -- train -c X.yaml");
  if (o.command.front() == "launch") throw UsageError("subq launch cannot launch itself");
  if (o.nnodes > 1 && (o.master_addr.empty() || o.master_port == 0))
    throw UsageError("--nnodes > 1 needs --master-addr (node 0's host name) and --master-port (a free port on it)");
  const int world = o.nproc * o.nnodes;
  const std::string addr = o.master_addr.empty() ? "127.0.0.1" : o.master_addr;

  // the rendezvous store: hosted here on node 0, joined by the other nodes' launchers
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(o.master_port);
  so.isServer = o.node_rank == 0;
  so.waitWorkers = false;
  so.timeout = std::chrono::seconds(600);
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(addr, so);
  } catch (const c10::Error& e) {
    throw RuntimeError(str("cannot ", so.isServer ? "host" : "reach", " the rendezvous store at ", addr, ":",
                           o.master_port, ": ", e.what_without_backtrace()));
  }
  const int port = tcp->getPort();
  auto store = c10::make_intrusive<c10d::PrefixStore>("subq/0/", tcp);

  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) throw RuntimeError("cannot find the subq executable (/proc/self/exe)");
  exe[n] = '\0';

  // environment: the parent's, minus what would confuse the children, plus the launch variables
  std::map<std::string, std::string> base;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    const auto eq = kv.find('=');
    if (eq != std::string::npos) base[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const char* k : {"TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID"})
    base.erase(k);
  if (!base.count("NCCL_NVLS_ENABLE")) base["NCCL_NVLS_ENABLE"] = "0";
  base["WORLD_SIZE"] = std::to_string(world);
  base["LOCAL_WORLD_SIZE"] = std::to_string(o.nproc);
  base["GROUP_RANK"] = std::to_string(o.node_rank);
  base["MASTER_ADDR"] = addr;
  base["MASTER_PORT"] = std::to_string(port);
  base["SUBQ_STORE_HOSTED"] = "1";

  struct sigaction sa {};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::vector<Child> children(static_cast<size_t>(o.nproc));
  const pid_t parent = getpid();
  for (int local = 0; local < o.nproc; ++local) {
    auto env = base;
    const int rank = o.node_rank * o.nproc + local;
    env["RANK"] = std::to_string(rank);
    env["LOCAL_RANK"] = std::to_string(local);
    // everything execve needs is built before fork (the child may only call async-signal-safe functions)
    std::vector<std::string> env_strings, arg_strings{exe};
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    for (const auto& a : o.command) arg_strings.push_back(a);
    std::vector<char*> envp, argv;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    for (auto& s : arg_strings) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) throw RuntimeError(str("fork failed: ", std::strerror(errno)));
    if (pid == 0) {
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);  // the launcher died before prctl took effect
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      execve(exe, argv.data(), envp.data());
      _exit(127);
    }
    children[static_cast<size_t>(local)] = {rank, pid, true, 0};
    log::info(str("rank ", rank, ": pid ", pid));
  }
  log::info(str("launched ", o.nproc, " process(es) of ", world, " (node ", o.node_rank, " of ", o.nnodes,
                "), rendezvous ", addr, ":", port, ": subq ", [&] {
                  std::string c;
                  for (const auto& a : o.command) c += (c.empty() ? "" : " ") + a;
                  return c;
                }()));

  using clock = std::chrono::steady_clock;
  int alive = o.nproc, forwarded = 0;
  std::string first_failure;
  int exit_code = 0;
  std::optional<clock::time_point> kill_at;
  while (alive > 0) {
    if (g_signal_count > forwarded) {
      const int sig = g_signal_count > 1 ? SIGKILL : g_signal;
      forwarded = g_signal_count;
      log::warn(str("launcher got signal ", g_signal, ": forwarding ", sig == SIGKILL ? "SIGKILL" : strsignal(sig),
                    " to the ranks"));
      for (auto& c : children)
        if (c.alive) kill(c.pid, sig);
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (auto& c : children) {
        if (c.pid != pid) continue;
        c.alive = false;
        c.status = status;
        --alive;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok) break;
        const std::string what = describe_exit(c);
        bool left = false;
        try {
          left = store->check({str("left/", c.rank)});
        } catch (const c10::Error&) {
        }
        if (first_failure.empty()) {
          first_failure = what;
          exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }
        if (!left) {  // it did not leave in order: tell the others, and give them time to stop
          try {
            store->compareSet("abort", {}, std::vector<uint8_t>(what.begin(), what.end()));
          } catch (const c10::Error&) {
          }
          log::error(what);
          if (!kill_at) kill_at = clock::now() + std::chrono::duration_cast<clock::duration>(
                                                     std::chrono::duration<double>(o.grace_s));
        } else {
          log::warn(what);
        }
        break;
      }
      continue;
    }
    if (kill_at && clock::now() > *kill_at) {
      for (auto& c : children)
        if (c.alive) {
          log::error(str("rank ", c.rank, " (pid ", c.pid, ") still running ", o.grace_s,
                         " s after the failure: killing it"));
          kill(c.pid, SIGKILL);
        }
      kill_at.reset();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (first_failure.empty()) log::info(str("all ", o.nproc, " rank(s) finished"));
  else log::error(str("launch failed: ", first_failure));
  return exit_code;
}

void add_launch_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand(
      "launch", "run a subq command as N data-parallel processes: subq launch --nproc 2 -- train -c X.yaml");
  static LaunchOpts o;
  cmd->add_option("--nproc", o.nproc, "processes on this node (one per GPU)")->required();
  cmd->add_option("--nnodes", o.nnodes, "nodes of the job (each runs one `subq launch`)")->capture_default_str();
  cmd->add_option("--node-rank", o.node_rank, "this node's index in [0, nnodes)")->capture_default_str();
  cmd->add_option("--master-addr", o.master_addr, "node 0's host name (multi-node; default 127.0.0.1)");
  cmd->add_option("--master-port", o.master_port, "rendezvous port on node 0 (multi-node; default: a free port)");
  cmd->add_option("--grace-s", o.grace_s, "seconds the other ranks get to stop after one fails, then SIGKILL")
      ->capture_default_str();
  cmd->add_option("command", o.command, "the subq command to run, after --")->expected(-1);
  cmd->callback([&ctx] { ctx.action = [] { return run_launch(o); }; });
}

}  // namespace

SUBQ_REGISTER_COMMAND(45, add_launch_command);

}  // namespace subq::cli
