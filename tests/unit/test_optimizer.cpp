// test_optimizer.cpp — AdamW (foreach and fused) against a reference written out here element by element
// in double precision, no-decay grouping, state save/load continuing bitwise, strict state loading,
// gradient clipping, and the learning-rate schedules' values.
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/train/optimizer.h"
#include "subq/train/schedule.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using subq::train::AdamW;
using subq::train::OptimConfig;

namespace {

struct Case {
  std::vector<std::pair<std::string, torch::Tensor>> params;
};

Case make_params() {
  torch::manual_seed(11);
  Case c;
  c.params = {{"layers.0.self_attn.q_proj.weight", torch::randn({5, 7})},
              {"layers.0.input_layernorm.weight", torch::randn({7})},
              {"embed_tokens.weight", torch::randn({9, 7})},
              {"head.scale", torch::randn({3})}};
  for (auto& [n, p] : c.params) p.set_requires_grad(true);
  return c;
}

torch::Tensor grad_for(int64_t step, size_t i, const torch::Tensor& p) {
  auto g = torch::Generator(at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + i)));
  return torch::randn(p.sizes(), g, torch::TensorOptions().dtype(torch::kFloat32)) * 0.3;
}

// Reference AdamW, element by element in double: torch.optim.AdamW's documented algorithm.
struct RefAdamW {
  double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  std::vector<std::vector<double>> p, m, v;
  std::vector<bool> decay;
  int64_t t = 0;
  void step(double lr, const std::vector<torch::Tensor>& grads) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      auto g = grads[i].to(torch::kFloat64).contiguous();
      const double* gp = g.data_ptr<double>();
      for (size_t k = 0; k < p[i].size(); ++k) {
        if (decay[i]) p[i][k] *= 1.0 - lr * wd;
        m[i][k] = b1 * m[i][k] + (1 - b1) * gp[k];
        v[i][k] = b2 * v[i][k] + (1 - b2) * gp[k] * gp[k];
        const double mhat = m[i][k] / (1 - std::pow(b1, t));
        const double vhat = v[i][k] / (1 - std::pow(b2, t));
        p[i][k] -= lr * mhat / (std::sqrt(vhat) + eps);
      }
    }
  }
};

std::vector<double> flat(const torch::Tensor& t) {
  auto d = t.detach().to(torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

double max_rel(const std::vector<double>& a, const torch::Tensor& b) {
  auto fb = flat(b);
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::fabs(a[k] - fb[k]) / (std::fabs(a[k]) + 1e-3));
  return worst;
}

OptimConfig optim_cfg(const std::string& fused) {
  OptimConfig o;
  o.lr = 1e-2;
  o.betas = {0.9, 0.95};
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  o.fused = fused;
  return o;
}

void set_grads(Case& c, int64_t step) {
  for (size_t i = 0; i < c.params.size(); ++i) c.params[i].second.mutable_grad() = grad_for(step, i, c.params[i].second);
}

}  // namespace

TEST_CASE("AdamW groups: 1-D and no_decay names are not decayed", "[optimizer]") {
  auto c = make_params();
  AdamW opt(c.params, optim_cfg("off"));
  CHECK(opt.decays("layers.0.self_attn.q_proj.weight"));
  CHECK(!opt.decays("layers.0.input_layernorm.weight"));  // 1-D (and "norm")
  CHECK(!opt.decays("embed_tokens.weight"));              // "embed"
  CHECK(!opt.decays("head.scale"));                       // 1-D
  CHECK(opt.num_decay() == 1);
  CHECK(opt.num_no_decay() == 3);
  auto o = optim_cfg("off");
  o.no_decay = {};
  AdamW all(c.params, o);
  CHECK(all.decays("embed_tokens.weight"));
  CHECK(!all.decays("head.scale"));  // 1-D params are never decayed
}

TEST_CASE("AdamW matches the reference (foreach and fused)", "[optimizer]") {
  CHECK(!subq::train::use_fused_adamw("auto", torch::Device(torch::kCPU)));
  CHECK(subq::train::use_fused_adamw("on", torch::Device(torch::kCPU)));
  CHECK(!subq::train::use_fused_adamw("off", torch::Device(torch::kCPU)));
  std::vector<std::vector<torch::Tensor>> finals;
  for (const std::string mode : {"off", "on"}) {
    INFO("fused " << mode);
    auto c = make_params();
    AdamW opt(c.params, optim_cfg(mode));
    CHECK(opt.fused() == (mode == "on"));
    RefAdamW ref;
    for (auto& [n, p] : c.params) {
      ref.p.push_back(flat(p));
      ref.m.emplace_back(p.numel(), 0.0);
      ref.v.emplace_back(p.numel(), 0.0);
      ref.decay.push_back(opt.decays(n));
    }
    const double lrs[] = {1e-2, 2e-2, 5e-3, 1e-2, 3e-2, 1e-3};
    for (int64_t s = 1; s <= 6; ++s) {
      set_grads(c, s);
      std::vector<torch::Tensor> g;
      for (auto& [n, p] : c.params) g.push_back(p.grad().clone());
      opt.step(lrs[s - 1]);
      opt.zero_grad();
      ref.step(lrs[s - 1], g);
    }
    std::vector<torch::Tensor> f;
    for (size_t i = 0; i < c.params.size(); ++i) {
      INFO(c.params[i].first);
      CHECK(max_rel(ref.p[i], c.params[i].second) < 2e-5);
      CHECK(!c.params[i].second.grad().defined());
      f.push_back(c.params[i].second.detach().clone());
    }
    finals.push_back(f);
  }
  // fused and foreach agree to float rounding
  for (size_t i = 0; i < finals[0].size(); ++i) CHECK(torch::allclose(finals[0][i], finals[1][i], 1e-6, 1e-7));
}

TEST_CASE("AdamW skips parameters without gradients", "[optimizer]") {
  auto c = make_params();
  AdamW opt(c.params, optim_cfg("off"));
  auto before = c.params[2].second.detach().clone();
  set_grads(c, 1);
  c.params[2].second.mutable_grad().reset();
  opt.step(1e-2);
  CHECK(torch::equal(before, c.params[2].second.detach()));
  auto st = opt.state_tensors();
  CHECK(st.at("embed_tokens.weight.step").item<int64_t>() == 0);
  CHECK(st.at("head.scale.step").item<int64_t>() == 1);
}

TEST_CASE("AdamW state saves and loads; continuing is bitwise identical", "[optimizer]") {
  fs::path dir = fs::temp_directory_path() / ("subq-opt-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const std::string mode : {"off", "on"}) {
    INFO("fused " << mode);
    auto a = make_params();
    AdamW oa(a.params, optim_cfg(mode));
    for (int64_t s = 1; s <= 3; ++s) {
      set_grads(a, s);
      oa.step(1e-2);
    }
    const auto path = (dir / "opt.safetensors").string();
    oa.save(path);
    // a second copy of the parameters and a fresh optimizer that loads the state
    Case b;
    for (auto& [n, p] : a.params) b.params.push_back({n, p.detach().clone().set_requires_grad(true)});
    AdamW ob(b.params, optim_cfg(mode));
    ob.load(path);
    for (int64_t s = 4; s <= 6; ++s) {
      set_grads(a, s);
      set_grads(b, s);
      oa.step(2e-2);
      ob.step(2e-2);
    }
    for (size_t i = 0; i < a.params.size(); ++i) CHECK(torch::equal(a.params[i].second, b.params[i].second));
  }
  // strict loading
  auto c = make_params();
  AdamW oc(c.params, optim_cfg("off"));
  auto st = oc.state_tensors();
  st.erase("head.scale.exp_avg");
  st["ghost.exp_avg"] = torch::zeros({1});
  try {
    oc.load_state_tensors(st);
    FAIL("no error");
  } catch (const subq::InputError& e) {
    std::string msg = e.what();
    CHECK(msg.find("missing 'head.scale.exp_avg'") != std::string::npos);
    CHECK(msg.find("unexpected 'ghost.exp_avg'") != std::string::npos);
  }
  auto st2 = oc.state_tensors();
  st2["embed_tokens.weight.exp_avg"] = torch::zeros({2, 2});
  CHECK_THROWS_AS(oc.load_state_tensors(st2), subq::InputError);
  fs::remove_all(dir);
}

TEST_CASE("global gradient norm and clipping", "[optimizer]") {
  auto c = make_params();
  set_grads(c, 1);
  std::vector<torch::Tensor> ps;
  double sq = 0;
  for (auto& [n, p] : c.params) {
    ps.push_back(p);
    sq += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  }
  auto n = subq::train::clip_grad_norm(ps, 0.0);
  CHECK(n.item<double>() == Approx(std::sqrt(sq)).epsilon(1e-6));
  subq::train::clip_grad_norm(ps, 0.5);
  double after = 0;
  for (auto& p : ps) after += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  CHECK(std::sqrt(after) == Approx(0.5).epsilon(1e-5));
  subq::train::scale_grads(ps, 2.0);
  double doubled = 0;
  for (auto& p : ps) doubled += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  CHECK(std::sqrt(doubled) == Approx(1.0).epsilon(1e-5));
}

TEST_CASE("learning-rate schedules", "[schedule]") {
  using subq::train::lr_at;
  subq::train::ScheduleConfig s;
  s.warmup_steps = 10;
  s.min_lr_ratio = 0.1;
  const double lr = 1.0;
  const int64_t S = 110;
  // warmup is shared by every kind
  for (const std::string kind : {"cosine", "wsd", "linear", "constant"}) {
    s.kind = kind;
    INFO(kind);
    CHECK(lr_at(1, s, lr, S) == Approx(0.1));
    CHECK(lr_at(5, s, lr, S) == Approx(0.5));
    CHECK(lr_at(10, s, lr, S) == Approx(1.0));
  }
  s.kind = "cosine";
  CHECK(lr_at(60, s, lr, S) == Approx(0.55));  // halfway: min + (1 - min) / 2
  CHECK(lr_at(110, s, lr, S) == Approx(0.1));
  CHECK(lr_at(35, s, lr, S) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25))));
  CHECK(lr_at(500, s, lr, S) == Approx(0.1));  // past the end: final value
  s.kind = "linear";
  CHECK(lr_at(60, s, lr, S) == Approx(0.55));
  CHECK(lr_at(85, s, lr, S) == Approx(1.0 - 0.9 * 0.75));
  CHECK(lr_at(110, s, lr, S) == Approx(0.1));
  s.kind = "constant";
  CHECK(lr_at(60, s, lr, S) == Approx(1.0));
  CHECK(lr_at(110, s, lr, S) == Approx(1.0));
  s.kind = "wsd";
  s.decay_fraction = 0.2;  // last 22 steps decay: 89..110
  CHECK(lr_at(88, s, lr, S) == Approx(1.0));
  CHECK(lr_at(99, s, lr, S) == Approx(1.0 - 0.9 * 11.0 / 22.0));
  CHECK(lr_at(110, s, lr, S) == Approx(0.1));
  s.warmup_steps = 0;
  s.kind = "cosine";
  CHECK(lr_at(1, s, 2.0, 11) == Approx(0.2 + 1.8 * 0.5 * (1 + std::cos(M_PI / 11.0))));
}
