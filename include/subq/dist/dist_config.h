// dist_config.h — the `dist:` section: how a data-parallel run synchronises (docs/distributed.md).
//
// These keys matter only when the process is one of several (WORLD_SIZE > 1 from `subq launch`,
// torchrun, or srun's SLURM_* variables); a single process ignores them and trains exactly as it
// would without them. Every rank must run with the same values (checked at start).
#pragma once

#include <cstdint>
#include <string>

#include "subq/core/schema.h"

namespace subq::dist {

struct DistConfig {
  std::string backend = "auto";
  double bucket_mb = 25;
  bool zero1 = false;
  double timeout_s = 300;
  double init_timeout_s = 600;

  static void describe(config::Section<DistConfig>& s) {
    s.field("backend", &DistConfig::backend,
            "collective backend: auto (nccl on CUDA, store on CPU), nccl (CUDA tensors through NCCL), store (CPU "
            "collectives through the rendezvous TCPStore: correct and deterministic but slow, for tests and "
            "debugging; the torch wheel ships c10d's Gloo backend without its headers, so subq cannot build it)")
        .choices({"auto", "nccl", "store"});
    s.field("bucket_mb", &DistConfig::bucket_mb,
            "gradient bucket size in MiB: gradients are reduced bucket by bucket while backward still runs")
        .min(0, false);
    s.field("zero1", &DistConfig::zero1,
            "ZeRO stage 1: reduce-scatter gradients, keep 1/world of the AdamW state per rank, all-gather the "
            "updated parameters (checkpoints still hold the full state, so they resume on any number of ranks)");
    s.field("timeout_s", &DistConfig::timeout_s,
            "seconds a collective may wait for the other ranks before the run fails; a rank whose process is gone is "
            "detected after about half of it (heartbeats through the store)")
        .min(1);
    s.field("init_timeout_s", &DistConfig::init_timeout_s,
            "seconds to wait at start for every rank to join the rendezvous (MASTER_ADDR:MASTER_PORT)")
        .min(1);
  }
};

}  // namespace subq::dist
