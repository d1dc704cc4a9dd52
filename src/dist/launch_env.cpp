// launch_env.cpp — see launch_env.h. Pure parsing (no sockets, no CUDA beyond counting devices), so the
// rules are unit-tested with fake environments.
#include "subq/dist/launch_env.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include <torch/cuda.h>

#include "subq/core/device.h"
#include "subq/core/error.h"

namespace subq::dist {

namespace {

int to_int(const char* name, const char* value, int min_value) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  if (errno || end == value || *end != '\0' || v < min_value || v > 1 << 30)
    throw UsageError(str("environment variable ", name, "=", value, " is not an integer >= ", min_value,
                         "; fix the launcher's environment (or unset it for a single process)"));
  return static_cast<int>(v);
}

// "4(x2),3" -> 4: tasks on the first node of SLURM_TASKS_PER_NODE.
int first_tasks_per_node(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  return i ? std::atoi(s.substr(0, i).c_str()) : 1;
}

}  // namespace

std::string first_slurm_host(const std::string& list) {
  // the first entry ends at a comma outside brackets
  std::string entry;
  int depth = 0;
  for (char c : list) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    entry += c;
  }
  const size_t lb = entry.find('[');
  if (lb == std::string::npos) return entry;
  const size_t rb = entry.find(']', lb);
  if (rb == std::string::npos) throw UsageError(str("cannot parse the Slurm node list '", list, "'; set MASTER_ADDR"));
  std::string range = entry.substr(lb + 1, rb - lb - 1);
  range = range.substr(0, range.find(','));
  range = range.substr(0, range.find('-'));
  return entry.substr(0, lb) + range + entry.substr(rb + 1);
}

LaunchEnv LaunchEnv::from_environment(const std::function<const char*(const char*)>& get_fn) {
  auto get = [&](const char* k) -> const char* {
    const char* v = get_fn ? get_fn(k) : std::getenv(k);
    return (v && *v) ? v : nullptr;
  };
  LaunchEnv e;
  int restart = 0;
  if (const char* w = get("WORLD_SIZE")) {
    e.world = to_int("WORLD_SIZE", w, 1);
    const char* r = get("RANK");
    if (!r && e.world > 1)
      throw UsageError(str("WORLD_SIZE=", e.world, " but RANK is not set; launch with `subq launch`, torchrun or srun"));
    e.rank = r ? to_int("RANK", r, 0) : 0;
    e.local_rank = get("LOCAL_RANK") ? to_int("LOCAL_RANK", get("LOCAL_RANK"), 0) : e.rank;
    e.local_world = get("LOCAL_WORLD_SIZE") ? to_int("LOCAL_WORLD_SIZE", get("LOCAL_WORLD_SIZE"), 1) : e.world;
    if (get("MASTER_ADDR")) e.master_addr = get("MASTER_ADDR");
    if (const char* p = get("MASTER_PORT")) e.master_port = to_int("MASTER_PORT", p, 1);
    else if (e.world > 1)
      throw UsageError(str("WORLD_SIZE=", e.world, " but MASTER_PORT is not set: every rank needs MASTER_ADDR and ",
                           "MASTER_PORT of the rendezvous (rank 0's host and a free port)"));
    const char* hosted = get("SUBQ_STORE_HOSTED");
    const char* agent = get("TORCHELASTIC_USE_AGENT_STORE");
    e.store_hosted_elsewhere = (hosted && std::string(hosted) == "1") || (agent && std::string(agent) == "True");
    e.source = hosted ? "subq launch" : (get("TORCHELASTIC_RUN_ID") || agent ? "torchrun" : "environment");
    if (const char* rc = get("TORCHELASTIC_RESTART_COUNT")) restart = to_int("TORCHELASTIC_RESTART_COUNT", rc, 0);
  } else if (get("SLURM_PROCID") && !get("SUBQ_NO_SLURM")) {
    const char* n = get("SLURM_STEP_NUM_TASKS") ? get("SLURM_STEP_NUM_TASKS") : get("SLURM_NTASKS");
    e.world = n ? to_int("SLURM_STEP_NUM_TASKS", n, 1) : 1;
    if (e.world == 1) return e;  // one Slurm task: a plain single process
    e.source = "slurm";
    e.rank = to_int("SLURM_PROCID", get("SLURM_PROCID"), 0);
    e.local_rank = get("SLURM_LOCALID") ? to_int("SLURM_LOCALID", get("SLURM_LOCALID"), 0) : 0;
    const char* tpn = get("SLURM_STEP_TASKS_PER_NODE") ? get("SLURM_STEP_TASKS_PER_NODE") : get("SLURM_TASKS_PER_NODE");
    e.local_world = tpn ? first_tasks_per_node(tpn) : 1;
    if (get("MASTER_ADDR")) {
      e.master_addr = get("MASTER_ADDR");
    } else {
      const char* nl = get("SLURM_STEP_NODELIST") ? get("SLURM_STEP_NODELIST") : get("SLURM_JOB_NODELIST");
      if (!nl)
        throw UsageError("running under Slurm without MASTER_ADDR or SLURM_JOB_NODELIST: set MASTER_ADDR to the first "
                         "node's host name");
      e.master_addr = first_slurm_host(nl);
    }
    if (const char* p = get("MASTER_PORT")) {
      e.master_port = to_int("MASTER_PORT", p, 1);
    } else {
      const char* job = get("SLURM_JOB_ID");
      e.master_port = 15000 + (job ? to_int("SLURM_JOB_ID", job, 0) % 10000 : 0);
    }
    if (const char* rc = get("SLURM_RESTART_COUNT")) restart = to_int("SLURM_RESTART_COUNT", rc, 0);
  } else {
    return e;
  }
  if (e.rank >= e.world)
    throw UsageError(str("rank ", e.rank, " is not below the world size ", e.world, " (", e.source,
                         " environment); check RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS"));
  if (e.local_rank >= e.local_world) e.local_world = e.local_rank + 1;
  e.store_prefix = str("subq/", restart, "/");
  return e;
}

torch::Device device_for(const std::string& spec, const LaunchEnv& env) {
  if (!env.distributed()) return resolve_device(spec);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  const bool have = torch::cuda::is_available();
  if (spec == "auto" && !have) return torch::Device(torch::kCPU);
  if (spec != "auto" && spec != "cuda")
    throw ConfigError(str("run.device = ", spec, " with ", env.world, " data-parallel processes: use run.device=cuda ",
                          "(each process takes cuda:LOCAL_RANK) or cpu"));
  if (!have)
    throw InputError(str("run.device = ", spec, ": rank ", env.rank, " sees no CUDA GPU; use --set run.device=cpu"));
  const int n = static_cast<int>(torch::cuda::device_count());
  if (env.local_rank < n) return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  if (n == 1) return torch::Device(torch::kCUDA, 0);  // one GPU per process (CUDA_VISIBLE_DEVICES per task)
  throw InputError(str("rank ", env.rank, " has local rank ", env.local_rank, " but sees only ", n,
                       " GPU(s): start at most one process per GPU on each node (--nproc / --ntasks-per-node)"));
}

}  // namespace subq::dist
