// launch_env.h — which process of a data-parallel job this is, read from the environment a launcher
// leaves behind.
//
// Sources, first match wins:
//   1. torchrun-style (also what `subq launch` sets): WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE,
//      MASTER_ADDR, MASTER_PORT. TORCHELASTIC_USE_AGENT_STORE=True (torchrun) or SUBQ_STORE_HOSTED=1
//      (`subq launch`) means the launcher already hosts the TCPStore, so rank 0 only connects to it.
//   2. Slurm (`srun subq train ...`): SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS),
//      SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE; MASTER_ADDR defaults to the
//      first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST, MASTER_PORT to 15000 + SLURM_JOB_ID mod
//      10000 (so two jobs sharing a node do not collide). SUBQ_NO_SLURM=1 ignores Slurm variables (for
//      a plain `subq train` inside an sbatch script, which sees SLURM_NTASKS but is a single process).
//   3. Neither: a single process (world 1).
// The store's keys are prefixed per launch attempt (TORCHELASTIC_RESTART_COUNT, SLURM_RESTART_COUNT),
// so a restarted job never reads a previous attempt's keys from a long-lived agent store.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <torch/types.h>

namespace subq::dist {

struct LaunchEnv {
  int rank = 0, world = 1;
  int local_rank = 0, local_world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  bool store_hosted_elsewhere = false;  // the launcher hosts the TCPStore; rank 0 connects as a client
  std::string source = "single";        // "single", "torchrun", "subq launch", "slurm"
  std::string store_prefix = "subq/0/";

  bool distributed() const { return world > 1; }

  // Reads the variables listed above through `get` (getenv by default; tests pass a map). UsageError
  // names the variable and the fix when they are inconsistent (RANK >= WORLD_SIZE, no MASTER_PORT, ...).
  static LaunchEnv from_environment(const std::function<const char*(const char*)>& get = {});
};

// First host name of a Slurm node list: "gpu[012-015,020],cpu1" -> "gpu012"; "a,b" -> "a".
std::string first_slurm_host(const std::string& nodelist);

// The device of this process: run.device "auto"/"cuda" -> cuda:<local_rank> when several processes share
// a node (cuda:0 when each process sees a single GPU, as with Slurm's --gpus-per-task=1), "cpu" -> cpu.
// An explicit cuda:N is accepted only for a single process (ConfigError otherwise).
torch::Device device_for(const std::string& run_device, const LaunchEnv& env);

}  // namespace subq::dist
