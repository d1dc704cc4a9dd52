// bench_train.cpp — see bench_train.h.
//
// Decisions:
//  * Reuse over re-implementation: the timed steps are train()'s own steps (same forward, loss, backward,
//    clipping, AdamW and host read-back), and the per-step numbers are the trainer's own metrics lines
//    (train.log_every = 1): tokens_per_s over the step's wall time, mfu against the GPU's peak, mem_gib.
//    So a bench number is what `subq train` would log for that config, minus data loading.
//  * The run is forced to a throwaway directory: run.resume = never, no eval, checkpoints only at the
//    end (train() always writes a final one; it lands in the temporary directory and is deleted).
//  * Synthetic data: uniform random token ids (seeded) in a pool of 8 batches pre-placed on the device;
//    the cost of a step does not depend on token values, and an empty data pipeline isolates compute.
//  * Medians, not means: the first steps after warm-up and the occasional allocator or OS hiccup skew a
//    mean; min and max are reported beside the median so the spread is visible.
#include "subq/train/bench_train.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <thread>

#include <ATen/DeviceAccelerator.h>
#include <torch/torch.h>

#include "subq/core/build_info.h"
#include "subq/core/config.h"
#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/data/batch.h"
#include "subq/dist/context.h"
#include "subq/models/model.h"
#include "subq/train/metrics.h"
#include "subq/train/trainer.h"

namespace fs = std::filesystem;

namespace subq::train {

namespace {

// Endless batches of random tokens from a fixed pool on the device.
class SyntheticTokens : public data::BatchSource {
 public:
  SyntheticTokens(int64_t vocab, int64_t batch, int64_t seq_len, const torch::Device& device, uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    auto doc = torch::zeros({batch, seq_len}, torch::TensorOptions().dtype(torch::kBool));
    doc.select(1, 0).fill_(true);
    auto pos = torch::arange(seq_len, i64).unsqueeze(0).expand({batch, seq_len}).contiguous();
    for (int i = 0; i < 8; ++i) {
      auto win = torch::randint(0, vocab, {batch, seq_len + 1}, gen, i64);
      data::Batch b;
      b.inputs = win.narrow(1, 0, seq_len).contiguous().to(device);
      b.targets = win.narrow(1, 1, seq_len).contiguous().to(device);
      b.doc_start = doc.to(device);
      b.position_ids = pos.to(device);
      pool_.push_back(std::move(b));
    }
  }
  data::Batch next() override { return pool_[static_cast<size_t>(cursor_++ % static_cast<int64_t>(pool_.size()))]; }
  nlohmann::json state() const override { return {{"cursor", cursor_}}; }
  void restore(const nlohmann::json& st) override { cursor_ = st.value("cursor", int64_t{0}); }

 private:
  std::vector<data::Batch> pool_;
  int64_t cursor_ = 0;
};

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& parent) {
    fs::path base = parent.empty() ? fs::temp_directory_path() : fs::path(parent);
    path = base / str("subq-bench-train-", ::getpid(), "-", std::random_device{}());
    std::error_code ec;
    fs::create_directories(path / "checkpoints", ec);
    if (ec) throw RuntimeError(str("cannot create the benchmark's scratch directory ", path.string(), ": ", ec.message()));
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

nlohmann::json stats(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return nullptr;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {{"median", med}, {"min", v.front()}, {"max", v.back()}};
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      auto c = line.find(':');
      if (c != std::string::npos) return line.substr(line.find_first_not_of(" \t", c + 1));
    }
  return "unknown";
}

// Resets VmHWM (peak RSS) to the current RSS where the kernel allows it; false otherwise.
bool reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  bool ok = std::fputs("5", f) >= 0;
  ok = (std::fclose(f) == 0) && ok;
  return ok;
}

}  // namespace

nlohmann::json bench_train(const RunConfig& base, const BenchTrainOptions& opts, dist::Context* dist) {
  if (opts.steps < 1) throw UsageError(str("--steps must be >= 1, got ", opts.steps));
  if (opts.warmup < 1) throw UsageError(str("--warmup must be >= 1 (the first step allocates and tunes), got ", opts.warmup));
  if (base.model.vocab_size <= 0)
    throw ConfigError("bench train needs model.vocab_size: set it (--set model.vocab_size=N) or make data.tokenizer "
                      "point at an existing tokenizer.json");

  TempDir tmp(opts.work_dir);
  RunConfig cfg = base;
  cfg.run.out_dir = tmp.path.parent_path().string();
  cfg.run.name = tmp.path.filename().string();
  cfg.run.resume = "never";
  cfg.train.steps = opts.warmup + opts.steps;
  cfg.train.log_every = 1;
  cfg.train.ckpt_every = 0;
  cfg.train.keep_last = 1;
  cfg.eval.every = 0;
  RunDir rd{tmp.path.string()};

  const bool distributed = dist && dist->distributed();
  const int64_t world = distributed ? dist->world() : 1;
  const torch::Device device = distributed ? dist->device() : resolve_device(cfg.run.device);
  const torch::ScalarType compute = resolve_dtype(cfg.run.dtype, device);
  if (cfg.run.threads > 0) at::set_num_threads(static_cast<int>(cfg.run.threads));
  SyntheticTokens source(cfg.model.vocab_size, cfg.train.batch_size, cfg.data.seq_len, device,
                         static_cast<uint64_t>(cfg.run.seed) + 1 + static_cast<uint64_t>(distributed ? dist->rank() : 0));
  TrainData data;
  data.train = &source;

  bool rss_reset = false;
  if (device.is_cuda()) {
    const auto idx = device.has_index() ? device.index() : 0;
    at::accelerator::resetPeakStats(idx);
  } else {
    rss_reset = reset_peak_rss();
  }
  log::info(str("bench train: ", opts.warmup, " warm-up + ", opts.steps, " measured steps of ", cfg.model.arch,
                " at batch ", cfg.train.batch_size, " x seq ", cfg.data.seq_len, " x accum ", cfg.train.grad_accum,
                " on ", device.str(), " (", c10::toString(compute), ")"));
  TrainResult tr = train(cfg, rd, data, {}, dist);
  if (distributed && !dist->is_main()) return nullptr;  // rank 0 reports

  // The trainer's own per-step metrics.
  std::vector<double> tok_s, mfu, mem, loss;
  {
    std::ifstream f(rd.metrics_path());
    std::string line;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("loss") || !j.contains("step")) continue;
      auto num = [&](const char* k) {
        return j.contains(k) && j[k].is_number() ? j[k].get<double>() : std::numeric_limits<double>::quiet_NaN();
      };
      loss.push_back(num("loss"));
      mem.push_back(num("mem_gib"));
      if (j["step"].get<int64_t>() <= opts.warmup) continue;
      tok_s.push_back(num("tokens_per_s"));
      mfu.push_back(num("mfu"));
    }
  }
  if (static_cast<int64_t>(tok_s.size()) != opts.steps)
    throw InternalError(str("bench train: expected ", opts.steps, " measured metrics lines, found ", tok_s.size()));

  const int64_t tokens_per_step = cfg.train.batch_size * cfg.data.seq_len * cfg.train.grad_accum * world;
  std::vector<double> step_s;
  for (double t : tok_s) step_s.push_back(t > 0 ? static_cast<double>(tokens_per_step) / t : NAN);
  nlohmann::json tok_stats = stats(tok_s);

  // FLOPs per token from the model itself (built on the CPU after the run, so it adds nothing to the
  // measured peaks).
  double flops_tok = 0;
  {
    torch::NoGradGuard ng;
    auto m = models::create_model(cfg.model);
    flops_tok = m->flops_per_token(cfg.data.seq_len);
  }
  const std::string dev_name = device_name(device);
  const auto peak = device.is_cuda() ? peak_flops(dev_name, compute) : std::nullopt;

  nlohmann::json machine = machine_info(/*probe_kernels=*/false);
  machine["device"] = dev_name;
  machine["cpu"] = cpu_model_name();
  machine["cpu_threads"] = at::get_num_threads();
  machine["hardware_concurrency"] = static_cast<int64_t>(std::thread::hardware_concurrency());

  nlohmann::json memory;
  if (device.is_cuda()) {
    const auto idx = device.has_index() ? device.index() : 0;
    auto st = at::accelerator::getDeviceStats(idx);
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const double gib = 1024.0 * 1024.0 * 1024.0;
    memory = {{"kind", "cuda caching allocator peaks"},
              {"peak_allocated_gib", static_cast<double>(st.allocated_bytes[agg].peak) / gib},
              {"peak_reserved_gib", static_cast<double>(st.reserved_bytes[agg].peak) / gib}};
  } else {
    double m = 0;
    for (double v : mem)
      if (std::isfinite(v)) m = std::max(m, v);
    memory = {{"kind", rss_reset ? "peak RSS of the run (VmHWM, reset before it)" : "peak RSS of the process (VmHWM)"},
              {"peak_rss_gib", m}};
  }

  std::string command;
  for (const auto& a : opts.argv) command += (command.empty() ? "" : " ") + a;
  nlohmann::json r;
  r["bench"] = "train";
  r["date"] = utc_now_iso();
  r["commit"] = build_commit();
  r["version"] = build_version();
  r["command"] = command;
  r["machine"] = machine;
  r["model"] = {{"arch", cfg.model.arch},
                {"params", tr.num_params},
                {"d_model", cfg.model.d_model},
                {"n_layers", cfg.model.n_layers},
                {"n_heads", cfg.model.n_heads},
                {"vocab_size", cfg.model.vocab_size},
                {"flops_per_token", flops_tok}};
  r["setup"] = {{"device", device.str()},
                {"compute_dtype", c10::toString(compute)},
                {"batch_size", cfg.train.batch_size},
                {"seq_len", cfg.data.seq_len},
                {"grad_accum", cfg.train.grad_accum},
                {"world", world},
                {"tokens_per_step", tokens_per_step},
                {"warmup_steps", opts.warmup},
                {"measured_steps", opts.steps},
                {"data", "synthetic uniform token ids, pre-placed on the device"}};
  r["tokens_per_s"] = tok_stats;
  r["step_time_s"] = stats(step_s);
  r["mfu"] = stats(mfu);  // per GPU
  r["peak_flops"] = peak ? nlohmann::json(*peak) : nlohmann::json(nullptr);
  r["achieved_tflops"] = tok_stats.is_null() ? nlohmann::json(nullptr)
                                             : nlohmann::json(tok_stats["median"].get<double>() * flops_tok / 1e12);
  r["memory"] = memory;
  r["loss"] = {{"first", loss.empty() ? nlohmann::json(nullptr) : nlohmann::json(loss.front())},
               {"last", loss.empty() ? nlohmann::json(nullptr) : nlohmann::json(loss.back())}};
  r["skipped_steps"] = tr.skipped_steps;
  r["config"] = config::to_yaml(base);
  return r;
}

}  // namespace subq::train
