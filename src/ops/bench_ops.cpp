// bench_ops.cpp — see bench_ops.h. The timing loop, the machine measurements (bandwidth, matmul rate),
// the per-op input generators and the cost model behind the roofline floor.
//
// Decisions:
//  * Timing uses c10::Event (device-agnostic; CUDA events with timing enabled on a GPU), recorded on the
//    current stream around each call, so the host launch overhead between calls is not counted twice
//    and the per-call time is the device time. On the CPU the wall clock is used (ops are synchronous).
//  * Inputs are drawn like a trained model's: q, k L2-normalised (q scaled by D^-1/2) for gated_delta,
//    decays close to 1 (log-decay around -0.05), positive step sizes for ssd; a pool of `pool` sets is
//    generated before timing and cycled through.
//  * The backward pass is autograd's backward of the outputs with a fixed random output gradient
//    (torch::autograd::grad w.r.t. every float input), so no extra loss kernels are timed.
//  * Cost model (per batch row and head; Dk = Dv = D here, chunk C; counted as 2 FLOPs per multiply-add;
//    the causal tile counted in full, as chunkwise kernels compute it):
//      linear-attention part (all ops):  intra-chunk Q K^T and P V: 2C(Dk + Dv) per token; inter-chunk
//                                         Q S and the state update K^T V: 4 Dk Dv per token;
//      gated_delta adds the WY/UT work:   K K^T: 2C Dk, W = T K and U = T V: 2C(Dk + Dv), W S: 2 Dk Dv;
//      backward = 2 x forward (the usual ratio for matmul-dominated ops).
//    Bytes: every input read once and every output written once, in their dtypes (forward); fwd+bwd adds
//    reading the inputs and output gradients again and writing one gradient per input. The carried
//    states are not counted (a fused kernel keeps them on chip). This is a floor, not a prediction.
#include "subq/ops/bench_ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include <ATen/DeviceAccelerator.h>
#include <c10/core/Event.h>
#include <torch/torch.h>

#include "subq/core/build_info.h"
#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/ops/gated_delta.h"
#include "subq/ops/mlstm.h"
#include "subq/ops/ssd.h"
#include "subq/train/profile.h"

namespace subq::ops {

std::string OpShape::str() const { return subq::str("B", batch, " T", seq_len, " H", heads, " D", head_dim); }

OpShape parse_op_shape(const std::string& text) {
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      size_t used = 0;
      const long long x = std::stoll(part, &used);
      if (used != part.size() || x < 1) throw std::invalid_argument("bad");
      v.push_back(x);
    } catch (const std::exception&) {
      v.clear();
      break;
    }
  }
  if (v.size() != 4)
    throw UsageError(str("shape \"", text, "\" is not of the form B,T,H,D with positive integers (e.g. 8,4096,16,128)"));
  return {v[0], v[1], v[2], v[3]};
}

const std::vector<std::string>& bench_op_names() {
  static const std::vector<std::string> n = {"gated_delta", "gated_delta_neg", "ssd", "mlstm"};
  return n;
}
const std::vector<std::string>& bench_impl_names() {
  static const std::vector<std::string> n = {"reference", "cuda"};
  return n;
}

namespace {

using Clock = std::chrono::steady_clock;

// Times fn() once on `device`, in milliseconds.
double time_once(const torch::Device& device, const std::function<void()>& fn) {
  if (device.is_cpu()) {
    auto t0 = Clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  }
  c10::Event start(device.type(), c10::EventFlag::BACKEND_DEFAULT);
  c10::Event stop(device.type(), c10::EventFlag::BACKEND_DEFAULT);
  auto stream = at::accelerator::getCurrentStream(device.index());
  start.record(stream);
  fn();
  stop.record(stream);
  stop.synchronize();
  return start.elapsedTime(stop);
}

void sync(const torch::Device& device) {
  if (!device.is_cpu()) at::accelerator::synchronizeDevice(device.index());
}

nlohmann::json summary(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {{"median", med}, {"min", v.front()}, {"max", v.back()}, {"n", static_cast<int64_t>(n)}};
}

double median_ms(const torch::Device& device, int reps, const std::function<void()>& fn) {
  fn();  // warm-up
  sync(device);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(time_once(device, fn));
  return summary(t)["median"].get<double>();
}

struct Machine {
  double bandwidth_gbs = 0;   // device memory bandwidth (read + write) from a copy
  double matmul_tflops = 0;   // square matmul rate in `matmul_dtype`
  std::string matmul_dtype;
  int64_t matmul_n = 0;
};

Machine measure_machine(const torch::Device& device, torch::ScalarType dtype) {
  torch::NoGradGuard ng;
  Machine m;
  const bool gpu = !device.is_cpu();
  const int64_t bytes = gpu ? (int64_t{1} << 30) : (int64_t{1} << 27);
  auto src = torch::empty({bytes / 4}, torch::TensorOptions().dtype(torch::kFloat32).device(device)).uniform_();
  auto dst = torch::empty_like(src);
  const double copy_ms = median_ms(device, 10, [&] { dst.copy_(src); });
  m.bandwidth_gbs = 2.0 * static_cast<double>(bytes) / (copy_ms * 1e-3) / 1e9;
  const auto mm_dtype = gpu ? dtype : torch::kFloat32;
  m.matmul_n = gpu ? 8192 : 1024;
  auto a = torch::randn({m.matmul_n, m.matmul_n}, torch::TensorOptions().dtype(mm_dtype).device(device));
  auto b = torch::randn_like(a);
  auto c = torch::empty_like(a);
  const double mm_ms = median_ms(device, gpu ? 10 : 3, [&] { at::mm_out(c, a, b); });
  m.matmul_tflops = 2.0 * std::pow(static_cast<double>(m.matmul_n), 3) / (mm_ms * 1e-3) / 1e12;
  m.matmul_dtype = c10::toString(mm_dtype);
  return m;
}

// One op's inputs (float tensors that get gradients, plus non-differentiable extras) and its call.
struct OpInputs {
  std::vector<torch::Tensor> diff;  // differentiable inputs, in the order the call uses them
};

struct OpCase {
  // Fresh inputs for `shape` in `dtype` on `device`.
  std::function<OpInputs(const OpShape&, torch::ScalarType, const torch::Device&)> make;
  // Runs the op with the given (possibly grad-requiring) inputs; returns its outputs to differentiate.
  std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&, int64_t chunk)> run;
  int64_t default_chunk = 64;
  bool wy = false;  // gated delta's WY/UT work
  // The subq CUDA kernel of the op (impl "cuda"), if there is one: its call, why it cannot run a given
  // input set ("" = it can), and its fixed chunk size.
  std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)> run_cuda;
  std::function<std::string(const std::vector<torch::Tensor>&)> cuda_unsupported;
  int64_t cuda_chunk = 64;
};

torch::TensorOptions opt(torch::ScalarType dt, const torch::Device& d) { return torch::TensorOptions().dtype(dt).device(d); }

torch::Tensor l2n(const torch::Tensor& x) { return x / (x.pow(2).sum(-1, true) + 1e-6).sqrt(); }

OpCase gated_delta_case(bool neg) {
  OpCase c;
  c.wy = true;
  c.make = [neg](const OpShape& s, torch::ScalarType dt, const torch::Device& d) {
    torch::NoGradGuard ng;
    auto f32 = opt(torch::kFloat32, d);
    auto q = (l2n(torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, f32)) /
              std::sqrt(static_cast<double>(s.head_dim))).to(dt);
    auto k = l2n(torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, f32)).to(dt);
    auto v = torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, opt(dt, d));
    auto g = -torch::exp(torch::randn({s.batch, s.heads, s.seq_len}, f32) - 3.0);
    auto beta = torch::sigmoid(torch::randn({s.batch, s.heads, s.seq_len}, f32)) * (neg ? 2.0 : 1.0);
    return OpInputs{{q, k, v, g, beta}};
  };
  c.run = [](const std::vector<torch::Tensor>& x, int64_t chunk) {
    GatedDeltaOptions o;
    o.chunk_size = chunk;
    return std::vector<torch::Tensor>{gated_delta_chunkwise(x[0], x[1], x[2], x[3], x[4], {}, {}, o).o};
  };
  c.run_cuda = [](const std::vector<torch::Tensor>& x) {
    return std::vector<torch::Tensor>{gated_delta_cuda(x[0], x[1], x[2], x[3], x[4]).o};
  };
  c.cuda_unsupported = [](const std::vector<torch::Tensor>& x) { return gated_delta_cuda_unsupported(x[0], x[2]); };
  return c;
}

OpCase ssd_case() {
  OpCase c;
  c.make = [](const OpShape& s, torch::ScalarType dt, const torch::Device& d) {
    torch::NoGradGuard ng;
    auto f32 = opt(torch::kFloat32, d);
    auto x = torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, opt(dt, d));
    auto delta = torch::softplus(torch::randn({s.batch, s.heads, s.seq_len}, f32) - 2.0);
    auto A = -torch::exp(torch::rand({s.heads}, f32) * std::log(16.0));
    auto B = torch::randn({s.batch, 1, s.seq_len, s.head_dim}, opt(dt, d));
    auto C = torch::randn({s.batch, 1, s.seq_len, s.head_dim}, opt(dt, d));
    auto D = torch::ones({s.heads}, f32);
    return OpInputs{{x, delta, A, B, C, D}};
  };
  c.run = [](const std::vector<torch::Tensor>& x, int64_t chunk) {
    return std::vector<torch::Tensor>{ssd_chunkwise(x[0], x[1], x[2], x[3], x[4], x[5], {}, {}, chunk).y};
  };
  c.run_cuda = [](const std::vector<torch::Tensor>& x) {
    return std::vector<torch::Tensor>{ssd_cuda(x[0], x[1], x[2], x[3], x[4], x[5]).y};
  };
  c.cuda_unsupported = [](const std::vector<torch::Tensor>& x) { return ssd_cuda_unsupported(x[0], x[3]); };
  return c;
}

OpCase mlstm_case() {
  OpCase c;
  c.make = [](const OpShape& s, torch::ScalarType dt, const torch::Device& d) {
    torch::NoGradGuard ng;
    auto f32 = opt(torch::kFloat32, d);
    auto q = torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, opt(dt, d));
    auto k = torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, opt(dt, d));
    auto v = torch::randn({s.batch, s.heads, s.seq_len, s.head_dim}, opt(dt, d));
    auto i = torch::randn({s.batch, s.heads, s.seq_len}, f32);
    auto f = torch::randn({s.batch, s.heads, s.seq_len}, f32) + 3.0;
    return OpInputs{{q, k, v, i, f}};
  };
  c.run = [](const std::vector<torch::Tensor>& x, int64_t chunk) {
    return std::vector<torch::Tensor>{mlstm_chunkwise(x[0], x[1], x[2], x[3], x[4], {}, {}, chunk).h};
  };
  c.run_cuda = [](const std::vector<torch::Tensor>& x) {
    return std::vector<torch::Tensor>{mlstm_cuda(x[0], x[1], x[2], x[3], x[4]).h};
  };
  c.cuda_unsupported = [](const std::vector<torch::Tensor>& x) { return mlstm_cuda_unsupported(x[0], x[2]); };
  return c;
}

OpCase op_case(const std::string& name) {
  if (name == "gated_delta") return gated_delta_case(false);
  if (name == "gated_delta_neg") return gated_delta_case(true);
  if (name == "ssd") return ssd_case();
  if (name == "mlstm") return mlstm_case();
  throw UsageError(str("unknown op \"", name, "\" (choose from gated_delta, gated_delta_neg, ssd, mlstm)"));
}

struct Cost {
  double bytes_fwd = 0, bytes_fwd_bwd = 0, flops_fwd = 0, flops_fwd_bwd = 0;
};

Cost op_cost(const OpCase& c, const OpShape& s, const std::vector<torch::Tensor>& in,
             const std::vector<torch::Tensor>& out, int64_t chunk) {
  Cost k;
  double in_bytes = 0, out_bytes = 0;
  for (const auto& t : in) in_bytes += static_cast<double>(t.numel() * t.element_size());
  for (const auto& t : out) out_bytes += static_cast<double>(t.numel() * t.element_size());
  k.bytes_fwd = in_bytes + out_bytes;
  k.bytes_fwd_bwd = k.bytes_fwd + in_bytes + out_bytes + in_bytes;
  const double D = static_cast<double>(s.head_dim), C = static_cast<double>(std::min(chunk, s.seq_len));
  double per_token = 2 * C * (D + D) + 4 * D * D;
  if (c.wy) per_token += 2 * C * D + 2 * C * (D + D) + 2 * D * D;
  const double tokens = static_cast<double>(s.batch * s.heads * s.seq_len);
  k.flops_fwd = per_token * tokens;
  k.flops_fwd_bwd = 3 * k.flops_fwd;
  return k;
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  if (s == "fp16" || s == "float16") return torch::kFloat16;
  if (s == "fp32" || s == "float32") return torch::kFloat32;
  throw UsageError(str("dtype \"", s, "\" is not one of bf16, fp16, fp32"));
}

}  // namespace

nlohmann::json bench_ops(const BenchOpsOptions& o) {
  if (o.iters < 1 || o.warmup < 0 || o.pool < 1)
    throw UsageError(str("--iters (", o.iters, ") and --pool (", o.pool, ") must be >= 1, --warmup (", o.warmup, ") >= 0"));
  for (const auto& impl : o.impls)
    if (std::find(bench_impl_names().begin(), bench_impl_names().end(), impl) == bench_impl_names().end())
      throw UsageError(str("unknown implementation \"", impl, "\" (choose from reference, cuda)"));
  for (const auto& op : o.ops) op_case(op);  // validates the names before any work
  const torch::Device device = resolve_device(o.device);
  const torch::ScalarType dtype = parse_dtype(o.dtype);

  log::info(str("bench ops: measuring ", device.str(), " memory bandwidth and matmul rate"));
  const Machine m = measure_machine(device, dtype);
  log::info(str("bench ops: ", std::round(m.bandwidth_gbs), " GB/s copy bandwidth, ",
                std::round(m.matmul_tflops * 10) / 10, " TFLOP/s ", m.matmul_dtype, " matmul (", m.matmul_n, "^3)"));

  nlohmann::json results = nlohmann::json::array();
  for (const auto& shape : o.shapes) {
    for (const auto& op : o.ops) {
      const OpCase c = op_case(op);
      const int64_t chunk = o.chunk_size > 0 ? o.chunk_size : c.default_chunk;
      for (const auto& impl : o.impls) {
        nlohmann::json r = {{"op", op},
                            {"impl", impl},
                            {"shape", {{"B", shape.batch}, {"T", shape.seq_len}, {"H", shape.heads}, {"D", shape.head_dim}}},
                            {"chunk_size", chunk},
                            {"dtype", c10::toString(dtype)}};
        std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&, int64_t)> run = c.run;
        int64_t chunk_used = chunk;
        if (impl == "cuda") {
          std::string why;
          if (!c.run_cuda)
            why = "no subq CUDA kernel for this op";
          else if (device.is_cpu())
            why = "the subq CUDA kernels need a CUDA device (this run uses the CPU)";
          if (!why.empty()) {
            r["skipped"] = why;
            results.push_back(r);
            continue;
          }
          run = [&c](const std::vector<torch::Tensor>& x, int64_t) { return c.run_cuda(x); };
          chunk_used = c.cuda_chunk;
          r["chunk_size"] = chunk_used;
        }
        torch::manual_seed(1234);
        std::vector<OpInputs> pool;
        for (int64_t i = 0; i < o.pool; ++i) pool.push_back(c.make(shape, dtype, device));
        if (impl == "cuda") {
          const std::string why = c.cuda_unsupported(pool[0].diff);
          if (!why.empty()) {
            r["skipped"] = why;
            results.push_back(r);
            continue;
          }
        }
        std::vector<torch::Tensor> grads_out;
        std::vector<torch::Tensor> out0;
        {
          torch::NoGradGuard ng;
          out0 = run(pool[0].diff, chunk_used);
          for (const auto& t : out0) grads_out.push_back(torch::randn_like(t));
        }
        const Cost cost = op_cost(c, shape, pool[0].diff, out0, chunk_used);
        out0.clear();
        if (!device.is_cpu()) {
          sync(device);
          at::accelerator::resetPeakStats(device.index());
        }
        auto fwd = [&](int64_t i) {
          torch::NoGradGuard ng;
          auto out = run(pool[static_cast<size_t>(i % o.pool)].diff, chunk_used);
        };
        auto fwd_bwd = [&](int64_t i) {
          std::vector<torch::Tensor> leaves;
          for (const auto& t : pool[static_cast<size_t>(i % o.pool)].diff) leaves.push_back(t.detach().requires_grad_(true));
          auto out = run(leaves, chunk_used);
          auto g = torch::autograd::grad(out, leaves, grads_out, false, false, true);
        };
        std::vector<double> t_fwd, t_fb;
        for (int64_t i = 0; i < o.warmup; ++i) fwd(i);
        sync(device);
        for (int64_t i = 0; i < o.iters; ++i) t_fwd.push_back(time_once(device, [&] { fwd(i); }));
        if (o.backward) {
          for (int64_t i = 0; i < o.warmup; ++i) fwd_bwd(i);
          sync(device);
          for (int64_t i = 0; i < o.iters; ++i) t_fb.push_back(time_once(device, [&] { fwd_bwd(i); }));
        }
        const double floor_fwd =
            std::max(cost.bytes_fwd / (m.bandwidth_gbs * 1e9), cost.flops_fwd / (m.matmul_tflops * 1e12)) * 1e3;
        const double floor_fb =
            std::max(cost.bytes_fwd_bwd / (m.bandwidth_gbs * 1e9), cost.flops_fwd_bwd / (m.matmul_tflops * 1e12)) * 1e3;
        r["fwd_ms"] = summary(t_fwd);
        r["floor_ms"] = {{"fwd", floor_fwd}, {"fwd_bwd", floor_fb}};
        r["bytes"] = {{"fwd", cost.bytes_fwd}, {"fwd_bwd", cost.bytes_fwd_bwd}};
        r["flops"] = {{"fwd", cost.flops_fwd}, {"fwd_bwd", cost.flops_fwd_bwd}};
        const double med_f = r["fwd_ms"]["median"].get<double>();
        r["ratio_to_floor"] = {{"fwd", med_f / floor_fwd}};
        std::string line = str(op, " [", impl, "] ", shape.str(), ": fwd ", med_f, " ms (floor ", floor_fwd, ")");
        if (o.backward) {
          r["fwd_bwd_ms"] = summary(t_fb);
          const double med_fb = r["fwd_bwd_ms"]["median"].get<double>();
          r["ratio_to_floor"]["fwd_bwd"] = med_fb / floor_fb;
          line += str(", fwd+bwd ", med_fb, " ms (floor ", floor_fb, ")");
        }
        if (!device.is_cpu()) {
          auto st = at::accelerator::getDeviceStats(device.index());
          const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
          r["peak_allocated_gib"] = static_cast<double>(st.allocated_bytes[agg].peak) / (1024.0 * 1024.0 * 1024.0);
        }
        log::info(line);
        if (o.profile_top > 0) {
          // one warm call, not timed: what each kernel of it costs (device time summed by kernel name)
          train::StepProfiler prof;
          prof.start();
          if (o.backward)
            fwd_bwd(o.iters);
          else
            fwd(o.iters);
          nlohmann::json p = prof.stop(o.profile_top);
          p["note"] = o.backward ? "kernels of one forward+backward call (device time per kernel name)"
                                 : "kernels of one forward call (device time per kernel name)";
          log::info(str("profile of one ", o.backward ? "fwd+bwd" : "fwd", " call: ", op, " [", impl, "] ", shape.str()));
          train::log_profile(p);
          r["profile"] = p;
        }
        results.push_back(r);
      }
    }
  }

  std::string command;
  for (const auto& a : o.argv) command += (command.empty() ? "" : " ") + a;
  nlohmann::json j;
  j["bench"] = "ops";
  j["date"] = utc_now_iso();
  j["commit"] = build_commit();
  j["version"] = build_version();
  j["command"] = command;
  j["machine"] = machine_info(false);
  j["device"] = device.str();
  j["measured"] = {{"copy_bandwidth_gbs", m.bandwidth_gbs},
                   {"matmul_tflops", m.matmul_tflops},
                   {"matmul_dtype", m.matmul_dtype},
                   {"matmul_n", m.matmul_n}};
  j["options"] = {
      {"iters", o.iters}, {"warmup", o.warmup}, {"pool", o.pool}, {"backward", o.backward}, {"profile_top", o.profile_top}};
  j["results"] = results;
  return j;
}

}  // namespace subq::ops
