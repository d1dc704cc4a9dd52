// data_parallel.cpp — bucketed, overlapped gradient averaging and ZeRO-1 (see data_parallel.h).
//
// Decisions:
//  * Own buckets and hooks rather than c10d's C++ Reducer: the Reducer needs a c10d::ProcessGroup and
//    a c10d backend (our CPU backend is not one, see comm.h), only all-reduces (no reduce-scatter for
//    ZeRO-1), and brings DDP's Python-facing machinery (unused-parameter search, static graph) that a
//    fixed training graph does not need. What it does that matters is kept: buckets in reverse
//    parameter order, launch on the last gradient of a bucket, strict bucket order across ranks.
//  * Gradients are copied into a flat bucket buffer (not made views of it): the trainer's zero_grad()
//    drops .grad tensors and AccumulateGrad may steal the incoming gradient, so views would not survive;
//    the copy is a small fraction of the step next to the collective.
//  * The hook runs on the autograd thread (for CUDA, the device's backward thread, with the producing
//    op's stream current): the copy and the collective are issued there, so they are ordered after the
//    gradient kernels on that stream; c10d's NCCL stream waits for it. finish() waits on the main thread
//    (its current stream then waits for the NCCL stream) before anything reads the averaged gradient.
//  * Averaging is sum then divide by world (not pre-division), as DDP does by default.
//  * ZeRO-1 slices are views of the parameters' own storage (p.detach().view(-1).narrow(...)), given
//    views of the reduced shard as their .grad, so the unchanged AdamW steps them in place; the updated
//    shard is then all-gathered into the bucket buffer and copied into every replica's parameters.
#include "subq/dist/data_parallel.h"

#include <algorithm>
#include <cmath>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/log.h"

namespace subq::dist {

struct DataParallel::Hook final : torch::autograd::PostAccumulateGradHook {
  DataParallel* dp;
  int index;
  Hook(DataParallel* d, int i) : dp(d), index(i) {}
  void operator()(const torch::autograd::Variable&) override { dp->on_grad_ready(index); }
};

DataParallel::DataParallel(Context& ctx, const std::vector<std::pair<std::string, torch::Tensor>>& params,
                           const train::OptimConfig& optim)
    : ctx_(ctx), comm_(ctx.comm()), optim_(optim), zero1_(ctx.config().zero1), world_(ctx.world()),
      rank_(ctx.rank()) {
  SUBQ_CHECK(ctx.distributed(), "DataParallel needs a distributed context");
  for (const auto& [name, p] : params) {
    SUBQ_CHECK(p.is_contiguous(), "parameter ", name, " is not contiguous");
    Param q;
    q.name = name;
    q.p = p;
    q.numel = p.numel();
    q.decay = train::AdamW::default_decay(name, p, optim);
    params_.push_back(std::move(q));
    replica_params_.push_back(p);
  }
  // buckets: reverse registration order, one dtype per bucket, about bucket_mb each
  const double cap_bytes = ctx.config().bucket_mb * 1024.0 * 1024.0;
  for (int i = static_cast<int>(params_.size()) - 1; i >= 0; --i) {
    Param& q = params_[static_cast<size_t>(i)];
    if (!q.p.requires_grad()) continue;
    const double bytes = static_cast<double>(q.numel) * static_cast<double>(q.p.element_size());
    bool fresh = buckets_.empty();
    if (!fresh) {
      const Bucket& last = buckets_.back();
      const Param& first = params_[static_cast<size_t>(last.params.front())];
      fresh = first.p.scalar_type() != q.p.scalar_type() ||
              static_cast<double>(last.numel) * static_cast<double>(first.p.element_size()) + bytes > cap_bytes;
    }
    if (fresh) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    q.bucket = static_cast<int>(buckets_.size()) - 1;
    q.offset = b.numel;
    b.params.push_back(i);
    b.numel += q.numel;
  }
  std::vector<std::pair<std::string, torch::Tensor>> slices;
  std::vector<bool> slice_decay;
  torch::NoGradGuard ng;
  for (auto& b : buckets_) {
    const Param& first = params_[static_cast<size_t>(b.params.front())];
    const auto opts = first.p.options().requires_grad(false);
    b.padded = zero1_ ? (b.numel + world_ - 1) / world_ * world_ : b.numel;
    b.buf = torch::zeros({b.padded}, opts);
    if (!zero1_) continue;
    const int64_t S = b.padded / world_, lo = static_cast<int64_t>(rank_) * S, hi = lo + S;
    b.shard = torch::zeros({S}, opts);
    for (int pi : b.params) {
      const Param& q = params_[static_cast<size_t>(pi)];
      const int64_t a = std::max(q.offset, lo), e = std::min(q.offset + q.numel, hi);
      if (a >= e) continue;
      Slice s{pi, a - q.offset, a - lo, e - a};
      b.slices.push_back(s);
      torch::Tensor view = q.p.detach().view(-1).narrow(0, s.param_offset, s.numel);
      view.mutable_grad() = b.shard.narrow(0, s.shard_offset, s.numel);
      slices.emplace_back(q.name, view);
      slice_decay.push_back(q.decay);
    }
  }
  if (zero1_) {
    if (slices.empty()) {  // a tiny model on many ranks: this rank owns only padding
      auto dummy = torch::zeros({1}, params.front().second.options().requires_grad(false));
      slices.emplace_back("<padding>", dummy);
      slice_decay.push_back(false);
    }
    opt_ = std::make_unique<train::AdamW>(slices, optim, slice_decay);
  } else {
    opt_ = std::make_unique<train::AdamW>(params, optim);
  }
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].bucket >= 0)
      torch::autograd::impl::set_post_acc_grad_hooks(params_[i].p, std::make_unique<Hook>(this, static_cast<int>(i)));
  int64_t total = 0;
  for (const auto& b : buckets_) total += b.numel;
  if (rank_ == 0)
    log::info(str("gradient sync: ", buckets_.size(), " bucket(s) of up to ", ctx.config().bucket_mb, " MiB (",
                  total, " values), ", zero1_ ? "reduce-scatter + ZeRO-1 sharded AdamW + all-gather" : "all-reduce",
                  " over ", world_, " ranks (", comm_.name(), ")"));
}

DataParallel::~DataParallel() {
  for (auto& q : params_)
    if (q.bucket >= 0) torch::autograd::impl::set_post_acc_grad_hooks(q.p, nullptr);
}

void DataParallel::broadcast_module(torch::nn::Module& module) {
  torch::NoGradGuard ng;
  // parameters through the bucket buffers (one collective per bucket), buffers one by one
  for (auto& b : buckets_) {
    for (int pi : b.params) {
      const Param& q = params_[static_cast<size_t>(pi)];
      b.buf.narrow(0, q.offset, q.numel).copy_(q.p.view(-1));
    }
    comm_.broadcast(b.buf, 0)->wait();
    for (int pi : b.params) {
      const Param& q = params_[static_cast<size_t>(pi)];
      q.p.view(-1).copy_(b.buf.narrow(0, q.offset, q.numel));
    }
  }
  for (auto& q : params_)
    if (q.bucket < 0) comm_.broadcast(q.p.detach(), 0)->wait();
  for (auto& b : module.named_buffers()) {
    torch::Tensor t = b.value();
    if (t.is_contiguous()) comm_.broadcast(t, 0)->wait();
  }
}

void DataParallel::on_grad_ready(int index) {
  if (!sync_) return;
  std::lock_guard<std::mutex> g(mu_);
  Bucket& b = buckets_[static_cast<size_t>(params_[static_cast<size_t>(index)].bucket)];
  ++b.ready;
  launch_ready();
}

void DataParallel::launch_ready() {
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == static_cast<int>(buckets_[next_launch_].params.size()))
    launch(buckets_[next_launch_++]);
}

void DataParallel::pack_grads(Bucket& b) {
  torch::NoGradGuard ng;
  for (int pi : b.params) {
    const Param& q = params_[static_cast<size_t>(pi)];
    auto dst = b.buf.narrow(0, q.offset, q.numel);
    const auto& g = q.p.grad();
    if (g.defined()) dst.view(g.sizes()).copy_(g);
    else dst.zero_();
  }
  if (b.padded > b.numel) b.buf.narrow(0, b.numel, b.padded - b.numel).zero_();
}

void DataParallel::launch(Bucket& b) {
  pack_grads(b);
  b.work = zero1_ ? comm_.reduce_scatter(b.shard, b.buf) : comm_.allreduce(b.buf, ReduceOp::sum);
  b.launched = true;
  ++launched_total_;
}

DataParallel::StepSync DataParallel::finish(const torch::Tensor& loss_local, bool stop_vote) {
  {
    std::lock_guard<std::mutex> g(mu_);
    // buckets whose gradients did not all arrive (unused parameters): launch the rest in order
    for (; next_launch_ < buckets_.size(); ++next_launch_) launch(buckets_[next_launch_]);
    next_launch_ = 0;
  }
  torch::NoGradGuard ng;
  const double inv = 1.0 / static_cast<double>(world_);
  torch::Tensor sq = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(ctx_.device()));
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    b.launched = false;
    b.ready = 0;
    if (zero1_) {
      b.shard.mul_(inv);
      sq += b.shard.to(torch::kFloat32).pow(2).sum();
    } else {
      b.buf.mul_(inv);
      for (int pi : b.params) {
        Param& q = params_[static_cast<size_t>(pi)];
        if (!q.p.grad().defined()) q.p.mutable_grad() = torch::zeros_like(q.p);
        q.p.mutable_grad().copy_(b.buf.narrow(0, q.offset, q.numel).view(q.p.sizes()));
      }
    }
  }
  auto stats = torch::stack({loss_local.detach().to(torch::kFloat32).reshape({}),
                             torch::full({}, stop_vote ? 1.0f : 0.0f, sq.options()), sq});
  comm_.allreduce(stats, ReduceOp::sum)->wait();
  torch::Tensor gn = zero1_ ? stats[2].sqrt() : train::clip_grad_norm(replica_params_, 0.0).to(torch::kFloat32);
  auto host = torch::stack({stats[0] * inv, stats[1], gn.reshape({})}).to(torch::kCPU);
  StepSync s;
  s.loss = host[0].item<double>();
  s.stop = host[1].item<double>() > 0.5;
  s.grad_norm = host[2].item<double>();
  return s;
}

void DataParallel::scale_grads(double factor) {
  torch::NoGradGuard ng;
  if (!zero1_) {
    train::scale_grads(replica_params_, factor);
    return;
  }
  for (auto& b : buckets_) b.shard.mul_(factor);
}

void DataParallel::step(double lr) {
  opt_->step(lr);
  if (!zero1_) return;
  torch::NoGradGuard ng;
  // the updated slices -> the shard buffers -> all-gathered into every replica
  for (auto& b : buckets_) {
    b.shard.zero_();
    for (const auto& s : b.slices) {
      const Param& q = params_[static_cast<size_t>(s.param)];
      b.shard.narrow(0, s.shard_offset, s.numel).copy_(q.p.view(-1).narrow(0, s.param_offset, s.numel));
    }
    b.work = comm_.all_gather(b.buf, b.shard);
  }
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    for (int pi : b.params) {
      const Param& q = params_[static_cast<size_t>(pi)];
      q.p.view(-1).copy_(b.buf.narrow(0, q.offset, q.numel));
    }
  }
}

void DataParallel::zero_grad() {
  for (auto& q : params_)
    if (q.p.grad().defined()) q.p.mutable_grad().reset();
}

TensorMap DataParallel::gather_optimizer_state() {
  if (!zero1_) return rank_ == 0 ? opt_->state_tensors() : TensorMap{};
  torch::NoGradGuard ng;
  TensorMap local = opt_->state_tensors();
  TensorMap out;
  // step counts: every slice of a parameter has the same; the owner's wins (max over ranks)
  auto steps = torch::zeros({static_cast<int64_t>(params_.size())},
                            torch::TensorOptions().dtype(torch::kFloat64).device(ctx_.device()));
  for (const auto& b : buckets_)
    for (const auto& s : b.slices)
      steps[s.param].fill_(static_cast<double>(local.at(params_[static_cast<size_t>(s.param)].name + ".step").item<int64_t>()));
  comm_.allreduce(steps, ReduceOp::max)->wait();
  auto steps_host = steps.to(torch::kCPU);
  for (const char* which : {".exp_avg", ".exp_avg_sq"}) {
    for (auto& b : buckets_) {
      b.shard.zero_();
      for (const auto& s : b.slices)
        b.shard.narrow(0, s.shard_offset, s.numel).copy_(local.at(params_[static_cast<size_t>(s.param)].name + which));
      comm_.all_gather(b.buf, b.shard)->wait();
      if (rank_ != 0) continue;
      for (int pi : b.params) {
        const Param& q = params_[static_cast<size_t>(pi)];
        out[q.name + which] = b.buf.narrow(0, q.offset, q.numel).view(q.p.sizes()).to(torch::kCPU, /*non_blocking=*/false,
                                                                                       /*copy=*/true);
      }
    }
  }
  if (rank_ != 0) return {};
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param& q = params_[i];
    if (q.bucket < 0) {  // frozen parameters are never stepped: zero moments, step 0
      out[q.name + ".exp_avg"] = torch::zeros(q.p.sizes(), q.p.options().device(torch::kCPU));
      out[q.name + ".exp_avg_sq"] = torch::zeros(q.p.sizes(), q.p.options().device(torch::kCPU));
    }
    out[q.name + ".step"] = torch::tensor(static_cast<int64_t>(steps_host[static_cast<int64_t>(i)].item<double>()),
                                          torch::TensorOptions().dtype(torch::kInt64));
  }
  return out;
}

void DataParallel::load_optimizer_state(const TensorMap* state) {
  // rank 0 checks the state against the model and tells everybody, so all ranks fail alike
  std::string problem;
  if (rank_ == 0) {
    SUBQ_CHECK(state != nullptr, "rank 0 needs the optimizer state to load");
    for (const auto& q : params_)
      for (const char* which : {".exp_avg", ".exp_avg_sq", ".step"}) {
        auto it = state->find(q.name + which);
        const bool is_step = std::string(which) == ".step";
        if (it == state->end()) problem = str("missing '", q.name, which, "'");
        else if (is_step ? it->second.numel() != 1 : it->second.sizes() != q.p.sizes())
          problem = str("'", q.name, which, "' has shape ", it->second.sizes(), ", the model needs ",
                        is_step ? std::string("[]") : str(q.p.sizes()));
        if (!problem.empty()) break;
      }
    if (problem.empty() && state->size() != params_.size() * 3)
      problem = str("it holds ", state->size(), " tensors, the model's AdamW state has ", params_.size() * 3);
  }
  problem = ctx_.broadcast_string("optimizer state check", problem);
  if (!problem.empty())
    throw InputError(str("the checkpoint's optimizer state does not match the model: ", problem,
                         " (was it written for a different model config?)"));
  torch::NoGradGuard ng;
  auto steps = torch::zeros({static_cast<int64_t>(params_.size())},
                            torch::TensorOptions().dtype(torch::kFloat64).device(ctx_.device()));
  if (rank_ == 0)
    for (size_t i = 0; i < params_.size(); ++i)
      steps[static_cast<int64_t>(i)].fill_(static_cast<double>(state->at(params_[i].name + ".step").item<int64_t>()));
  comm_.broadcast(steps, 0)->wait();
  auto steps_host = steps.to(torch::kCPU);
  auto step_of = [&](int i) {
    return torch::tensor(static_cast<int64_t>(steps_host[i].item<double>()), torch::TensorOptions().dtype(torch::kInt64));
  };
  TensorMap mine;  // what the local AdamW loads (its slots' names and shapes)
  for (const char* which : {".exp_avg", ".exp_avg_sq"}) {
    for (auto& b : buckets_) {
      if (rank_ == 0)
        for (int pi : b.params) {
          const Param& q = params_[static_cast<size_t>(pi)];
          b.buf.narrow(0, q.offset, q.numel).copy_(state->at(q.name + which).reshape({-1}));
        }
      comm_.broadcast(b.buf, 0)->wait();
      if (zero1_) {
        const int64_t lo = static_cast<int64_t>(rank_) * (b.padded / world_);
        for (const auto& s : b.slices)
          mine[params_[static_cast<size_t>(s.param)].name + which] =
              b.buf.narrow(0, lo + s.shard_offset, s.numel).clone();
      } else {
        for (int pi : b.params) {
          const Param& q = params_[static_cast<size_t>(pi)];
          mine[q.name + which] = b.buf.narrow(0, q.offset, q.numel).view(q.p.sizes()).clone();
        }
      }
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param& q = params_[i];
    if (zero1_) {
      if (mine.count(q.name + ".exp_avg")) mine[q.name + ".step"] = step_of(static_cast<int>(i));
    } else {
      mine[q.name + ".step"] = step_of(static_cast<int>(i));
      if (q.bucket < 0) {  // frozen: not in a bucket, zero moments
        mine[q.name + ".exp_avg"] = torch::zeros_like(q.p);
        mine[q.name + ".exp_avg_sq"] = torch::zeros_like(q.p);
      }
    }
  }
  if (zero1_ && mine.empty()) {  // the padding-only placeholder slot
    mine["<padding>.exp_avg"] = torch::zeros({1}, ctx_.device());
    mine["<padding>.exp_avg_sq"] = torch::zeros({1}, ctx_.device());
    mine["<padding>.step"] = torch::tensor(int64_t{0});
  }
  opt_->load_state_tensors(mine, "the checkpoint's optimizer state");
}

}  // namespace subq::dist
