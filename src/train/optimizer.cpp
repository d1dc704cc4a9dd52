// optimizer.cpp — AdamW (see optimizer.h for the update rule and the state format).
//
// Decisions:
//  * Two groups (decay / no-decay), each stepped with one fused call or one set of foreach calls.
//    Parameters are further split by dtype for the fused kernel, which wants one dtype per call.
//  * The step count lives twice: as an int64 on the host (for the foreach path's per-tensor bias
//    corrections, computed in double without a device sync) and as an fp32 scalar tensor on the device
//    (the fused kernel's state_steps, incremented before the call as torch.optim does). They never
//    diverge: both advance together.
//  * The foreach path mirrors torch.optim's multi-tensor AdamW operation by operation (lerp for the first
//    moment, addcmul for the second, per-tensor step sizes) so its rounding matches PyTorch's.
#include "subq/train/optimizer.h"

#include <algorithm>
#include <cmath>

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcdiv.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/_fused_adamw.h>
#include <torch/torch.h>

#include "subq/core/error.h"

namespace subq::train {

bool use_fused_adamw(const std::string& mode, const torch::Device& device) {
  const bool supported = device.is_cuda() || device.is_cpu();
  if (mode == "off") return false;
  if (mode == "auto") return device.is_cuda();
  if (mode == "on") {
    if (!supported)
      throw ConfigError(str("optim.fused = on: no fused AdamW kernel for device ", device.str(),
                            "; use optim.fused=auto or off"));
    return true;
  }
  throw ConfigError(str("optim.fused = '", mode, "': use auto, on or off"));
}

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const OptimConfig& cfg) : cfg_(cfg) {
  init(params, nullptr);
}

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const OptimConfig& cfg,
             const std::vector<bool>& decay)
    : cfg_(cfg) {
  SUBQ_CHECK(decay.size() == params.size(), "AdamW: one decay flag per parameter");
  init(params, &decay);
}

bool AdamW::default_decay(const std::string& name, const torch::Tensor& p, const OptimConfig& cfg) {
  for (const auto& sub : cfg.no_decay)
    if (!sub.empty() && name.find(sub) != std::string::npos) return false;
  return p.dim() >= 2;
}

void AdamW::init(const std::vector<std::pair<std::string, torch::Tensor>>& params, const std::vector<bool>* decay) {
  const auto& cfg = cfg_;
  SUBQ_CHECK(cfg.betas.size() == 2, "optim.betas needs two values");
  if (cfg.name != "adamw") throw ConfigError(str("optim.name = '", cfg.name, "': only adamw is implemented"));
  SUBQ_CHECK(!params.empty(), "AdamW needs parameters");
  const auto device = params.front().second.device();
  fused_ = use_fused_adamw(cfg.fused, device);
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, p] = params[i];
    SUBQ_CHECK(p.is_floating_point(), "parameter ", name, " is not floating point");
    if (p.device() != device)
      throw InternalError(str("AdamW: parameter ", name, " is on ", p.device().str(), ", others on ", device.str()));
    Slot s;
    s.name = name;
    s.param = p;
    s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    s.step_t = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    s.decay = decay ? (*decay)[i] : default_decay(name, p, cfg);
    slots_.push_back(std::move(s));
    params_.push_back(p);
  }
}

bool AdamW::decays(const std::string& name) const {
  for (const auto& s : slots_)
    if (s.name == name) return s.decay;
  throw InternalError(str("AdamW: no parameter named ", name));
}

int64_t AdamW::num_decay() const {
  int64_t n = 0;
  for (const auto& s : slots_) n += s.decay;
  return n;
}
int64_t AdamW::num_no_decay() const { return static_cast<int64_t>(slots_.size()) - num_decay(); }

void AdamW::zero_grad() {
  for (auto& s : slots_)
    if (s.param.grad().defined()) s.param.mutable_grad().reset();
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  for (bool decay : {true, false}) {
    // group by dtype (the fused kernel takes one dtype per call)
    std::vector<std::pair<torch::ScalarType, std::vector<Slot*>>> groups;
    for (auto& s : slots_) {
      if (s.decay != decay || !s.param.grad().defined()) continue;
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == s.param.scalar_type(); });
      if (it == groups.end()) {
        groups.push_back({s.param.scalar_type(), {}});
        it = groups.end() - 1;
      }
      it->second.push_back(&s);
    }
    for (auto& g : groups) step_group(g.second, lr, decay ? cfg_.weight_decay : 0.0);
  }
}

void AdamW::step_group(std::vector<Slot*>& slots, double lr, double wd) {
  if (slots.empty()) return;
  const double b1 = cfg_.betas[0], b2 = cfg_.betas[1], eps = cfg_.eps;
  std::vector<torch::Tensor> p, g, m, v, st;
  p.reserve(slots.size());
  for (auto* s : slots) {
    ++s->step;
    p.push_back(s->param);
    g.push_back(s->param.grad());
    m.push_back(s->exp_avg);
    v.push_back(s->exp_avg_sq);
    st.push_back(s->step_t);
  }
  at::_foreach_add_(st, 1.0);
  if (fused_) {
    at::_fused_adamw_(p, g, m, v, {}, st, lr, b1, b2, wd, eps, /*amsgrad=*/false, /*maximize=*/false);
    return;
  }
  if (wd != 0.0) at::_foreach_mul_(p, 1.0 - lr * wd);
  at::_foreach_lerp_(m, g, 1.0 - b1);
  at::_foreach_mul_(v, b2);
  at::_foreach_addcmul_(v, g, g, 1.0 - b2);
  std::vector<at::Scalar> neg_step_size, bc2_sqrt;
  for (auto* s : slots) {
    const double t = static_cast<double>(s->step);
    const double bc1 = 1.0 - std::pow(b1, t);
    const double bc2 = 1.0 - std::pow(b2, t);
    neg_step_size.emplace_back(-lr / bc1);
    bc2_sqrt.emplace_back(std::sqrt(bc2));
  }
  auto denom = at::_foreach_sqrt(v);
  at::_foreach_div_(denom, bc2_sqrt);
  at::_foreach_add_(denom, eps);
  at::_foreach_addcdiv_(p, m, denom, neg_step_size);
}

TensorMap AdamW::state_tensors() const {
  TensorMap out;
  for (const auto& s : slots_) {
    out[s.name + ".exp_avg"] = s.exp_avg;
    out[s.name + ".exp_avg_sq"] = s.exp_avg_sq;
    out[s.name + ".step"] = torch::tensor(s.step, torch::TensorOptions().dtype(torch::kInt64));
  }
  return out;
}

void AdamW::load_state_tensors(const TensorMap& state, const std::string& what) {
  std::vector<std::string> problems;
  size_t used = 0;
  for (const auto& s : slots_) {
    for (const char* suffix : {".exp_avg", ".exp_avg_sq", ".step"}) {
      const std::string key = s.name + suffix;
      auto it = state.find(key);
      if (it == state.end()) {
        problems.push_back(str("missing '", key, "'"));
        continue;
      }
      ++used;
      const auto& t = it->second;
      const bool is_step = std::string(suffix) == ".step";
      if (is_step ? t.numel() != 1 : t.sizes() != s.param.sizes())
        problems.push_back(str("'", key, "' has shape ", t.sizes(), ", expected ",
                               is_step ? std::string("[]") : str(s.param.sizes())));
    }
  }
  if (used != state.size()) {
    for (const auto& [k, t] : state) {
      bool known = false;
      for (const auto& s : slots_)
        for (const char* suffix : {".exp_avg", ".exp_avg_sq", ".step"})
          if (k == s.name + suffix) known = true;
      if (!known) problems.push_back(str("unexpected '", k, "' (no such parameter)"));
    }
  }
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 8; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 8) list += str("; and ", problems.size() - 8, " more");
    throw InputError(str(what, " does not match the model: ", list,
                         " (was the checkpoint written for a different model config?)"));
  }
  torch::NoGradGuard ng;
  for (auto& s : slots_) {
    s.exp_avg.copy_(state.at(s.name + ".exp_avg"));
    s.exp_avg_sq.copy_(state.at(s.name + ".exp_avg_sq"));
    s.step = state.at(s.name + ".step").to(torch::kInt64).item<int64_t>();
    s.step_t.fill_(static_cast<double>(s.step));
  }
}

void AdamW::save(const std::string& path) const { save(path, state_tensors()); }

void AdamW::save(const std::string& path, const TensorMap& state) const {
  std::map<std::string, std::string> meta{
      {"format", "subq-adamw-1"},
      {"betas", str(cfg_.betas[0], ",", cfg_.betas[1])},
      {"eps", str(cfg_.eps)},
      {"weight_decay", str(cfg_.weight_decay)},
  };
  save_safetensors(path, state, meta);
}

TensorMap AdamW::read_state(const std::string& path) {
  auto f = load_safetensors(path);
  auto it = f.metadata.find("format");
  if (it == f.metadata.end() || it->second != "subq-adamw-1")
    throw InputError(str(path, ": not a subq AdamW state file (metadata format = '",
                         it == f.metadata.end() ? std::string() : it->second, "', expected subq-adamw-1)"));
  return std::move(f.tensors);
}

void AdamW::load(const std::string& path) { load_state_tensors(read_state(path), path); }

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty())
    return torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(
                                params.empty() ? torch::Device(torch::kCPU) : params.front().device()));
  auto norms = at::_foreach_norm(grads, 2);
  auto total = torch::stack(norms).to(torch::kFloat32).norm(2);
  if (max_norm > 0) {
    auto coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }
  return total;
}

void scale_grads(const std::vector<torch::Tensor>& params, double factor) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (!grads.empty()) at::_foreach_mul_(grads, factor);
}

}  // namespace subq::train
