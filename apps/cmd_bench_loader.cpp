// cmd_bench_loader.cpp — `subq bench loader`: how fast the training loader serves batches from a shard
// set (tokens/s with and without the prefetch thread), so data loading can be ruled in or out as a
// bottleneck. Prints one JSON object to stdout; nothing is asserted.
#include <chrono>
#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "apps/cli.h"
#include "subq/core/build_info.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/data/loader.h"

namespace subq::cli {

namespace {

void add_bench_loader(CLI::App& app, Context& ctx) {
  auto* cmd = bench_command(app)->add_subcommand("loader", "training loader throughput on a shard set (JSON to stdout)");
  struct Opts {
    std::string shards = "data/cache/code/train";
    int64_t seq_len = 256, batch_size = 16, batches = 2000, prefetch = 4;
    std::string device = "cpu";
  };
  static Opts o;
  cmd->add_option("--shards", o.shards, "shard directory")->capture_default_str();
  cmd->add_option("--seq-len", o.seq_len, "tokens per sequence")->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "sequences per batch")->capture_default_str();
  cmd->add_option("--batches", o.batches, "batches to draw per setting")->capture_default_str();
  cmd->add_option("--prefetch", o.prefetch, "prefetch depth of the second measurement")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu or cuda[:N]: where batches are delivered")->capture_default_str();
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      nlohmann::json out;
      out["command"] = ctx.argv;
      out["commit"] = build_commit();
      out["date"] = utc_now_iso();
      out["device"] = o.device;
      out["cpu_threads"] = std::thread::hardware_concurrency();
      out["seq_len"] = o.seq_len;
      out["batch_size"] = o.batch_size;
      for (int64_t prefetch : {int64_t{0}, o.prefetch}) {
        data::LoaderOptions lo;
        lo.shards = o.shards;
        lo.seq_len = o.seq_len;
        lo.batch_size = o.batch_size;
        lo.prefetch = prefetch;
        lo.device = torch::Device(o.device);
        data::TokenWindowLoader ld(lo);
        ld.next();  // warm up (starts the thread, touches the first pages)
        const auto t0 = std::chrono::steady_clock::now();
        int64_t tokens = 0;
        for (int64_t i = 0; i < o.batches; ++i) tokens += ld.next().tokens();
        if (lo.device.is_cuda()) torch::cuda::synchronize();  // the last non_blocking copies
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        out["results"].push_back({{"prefetch", prefetch},
                                  {"batches", o.batches},
                                  {"seconds", s},
                                  {"tokens_per_s", static_cast<double>(tokens) / s},
                                  {"corpus_tokens", ld.shards().size()}});
      }
      std::printf("%s\n", out.dump(2).c_str());
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(95, add_bench_loader);

}  // namespace subq::cli
