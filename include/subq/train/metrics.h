// metrics.h — what the trainer measures and where it writes it.
//
// metrics.jsonl (RunDir::metrics_path) holds one JSON object per line:
//   per log step  {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "mem_gib",
//                  "elapsed_s", "data_s"}
//     loss         mean training loss (nats/token) over the steps since the previous log line
//     grad_norm    global gradient norm before clipping, at the logged step
//     tokens       tokens trained on so far (all steps, including resumed history)
//     tokens_per_s tokens / second of step time over the interval (data wait included, eval and
//                  checkpoint time excluded)
//     mfu          model FLOPs utilisation: flops_per_token(T) * tokens_per_s / peak FLOP/s of the GPU (dense
//                  bf16 peak under bf16 autocast, TF32 peak in fp32); null on CPU or an unknown GPU
//     mem_gib      peak CUDA memory allocated by tensors (GiB), or the process's peak RSS (VmHWM) on CPU
//     elapsed_s    wall time of the run so far, summed over launches
//     data_s       seconds of the interval spent waiting for batches
//   per eval      {"step", "eval_loss", "eval_ppl", "eval_bpb", "eval_tokens", "eval_bytes", "eval_batches"}
// On resume, lines with a step beyond the checkpoint are moved to metrics.superseded.jsonl, so
// metrics.jsonl is always one consistent history.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace subq::train {

// Dense peak FLOP/s of a GPU by its CUDA device name (H100/H200/GH200, A100, B200, L40S, ...) for the
// compute dtype (bf16 -> tensor-core bf16 peak; fp32 -> TF32 peak); nullopt when unknown.
std::optional<double> peak_flops(const std::string& gpu_name, torch::ScalarType compute);
// "cpu", or the CUDA device's name ("NVIDIA H200").
std::string device_name(const torch::Device& device);
// Peak CUDA memory allocated on `device` (GiB), or this process's peak resident set size on CPU.
double peak_memory_gib(const torch::Device& device);

// Appends JSON lines to a metrics file, flushing each line (a crash loses at most the line being written).
class MetricsWriter {
 public:
  explicit MetricsWriter(std::string path);
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

// Moves records with "step" > `step` from `path` to `superseded_path` (appended) and rewrites `path`
// atomically. Lines that are not JSON objects stay where they are. Returns the number moved.
int64_t truncate_metrics_after(const std::string& path, int64_t step, const std::string& superseded_path);

}  // namespace subq::train
