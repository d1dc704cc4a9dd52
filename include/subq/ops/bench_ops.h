// bench_ops.h — `subq bench ops`: forward and forward+backward time of the recurrence ops at given
// shapes, beside the roofline floor this machine allows.
//
// For every (op, implementation, shape) the driver draws a pool of fresh random input sets on the device
// (so no timing reuses an input that is already in a cache, and random generation is not timed), warms
// up, then times `iters` forward calls and `iters` forward+backward calls (backward of a fixed random
// projection of every output, gradients of every differentiable input), each one on its own with device
// events (CUDA events on a GPU, the wall clock after a device synchronisation elsewhere), and reports
// the median, min and max in milliseconds.
//
// The floor: the machine's memory bandwidth (a timed device-to-device copy) and its matmul rate (a timed
// square matmul in the op's dtype: tensor cores for bf16 on a GPU) are measured first; then for each op
// floor = max(bytes / bandwidth, flops / matmul rate), where bytes is the unavoidable traffic (read every
// input once, write every output once; for fwd+bwd additionally read the inputs and the output gradients
// and write the input gradients) and flops the matmul work of the chunkwise algorithm at the op's chunk
// size (see bench_ops.cpp, op_cost()). `ratio_to_floor` = measured median / floor.
//
// Ops: gated_delta (beta in [0, 1]), gated_delta_neg (beta in [0, 2]), ssd (Mamba-2; n_groups 1, state
// dim = the shape's D), mlstm. Shapes are "B,T,H,D" (head dim D for q, k and v). Implementations:
// "reference" (the chunkwise LibTorch-ops form, src/ops/<op>/reference_chunkwise.cpp) and, where a
// custom kernel for the device exists, "cuda" (ssd: subq::ops::ssd_cuda, chunk 64, reported as such; the
// other ops and unsupported shapes/dtypes/devices are reported as skipped with the reason).
//
// profile_top > 0 adds a per-kernel breakdown: one extra untimed call under LibTorch's profiler, its
// kernels summed by name (what each of a fused op's kernels costs at the benchmark's shape).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace subq::ops {

struct OpShape {
  int64_t batch = 8, seq_len = 4096, heads = 16, head_dim = 128;
  std::string str() const;
};

// "8,4096,16,128" -> OpShape; UsageError naming the text and the expected form otherwise.
OpShape parse_op_shape(const std::string& text);

struct BenchOpsOptions {
  std::vector<std::string> ops = {"gated_delta", "gated_delta_neg", "ssd", "mlstm"};
  std::vector<std::string> impls = {"reference"};
  std::vector<OpShape> shapes = {{8, 4096, 16, 128}, {2, 16384, 16, 128}};
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string dtype = "bf16";   // bf16 | fp16 | fp32
  int64_t chunk_size = 0;       // 0 = each op's default (64; ssd 64 too: the reference's default)
  int64_t iters = 20, warmup = 3, pool = 4;
  bool backward = true;         // also time forward+backward
  int64_t profile_top = 0;      // > 0: one more call (fwd+bwd, or fwd with backward = false) after the timed
                                // ones runs under the profiler (train/profile.h); its top kernels by device
                                // time go into the entry's "profile" and the log
  std::vector<std::string> argv;  // the command, recorded in the result
};

// Names accepted in BenchOpsOptions::ops / impls.
const std::vector<std::string>& bench_op_names();
const std::vector<std::string>& bench_impl_names();

// Runs the benchmark; returns one JSON object (machine, commit, date, command, measured bandwidth and
// matmul rate, one entry per op x impl x shape). An implementation that is not available on the device
// (cuda on a CPU) is reported as skipped with the reason, not timed.
nlohmann::json bench_ops(const BenchOpsOptions& opts);

}  // namespace subq::ops
