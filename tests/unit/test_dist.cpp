// test_dist.cpp — data-parallel building blocks in one process, ranks as threads (each with its own store
// connections), on the CPU store backend:
//  * the launch environment (torchrun / subq launch / Slurm variables, node lists, device per rank);
//  * collectives: all-reduce (sum, max; bitwise equal on every rank), reduce-scatter, all-gather, broadcast,
//    tensors spanning several store chunks; string exchanges; the config check;
//  * faults: a collective that a rank never joins times out naming that rank; an abort on one rank stops
//    the others' pending collective with its reason (no timeout);
//  * DataParallel: W ranks x B/W rows give the parameters of one process x B after K AdamW steps (fp32
//    tolerance), with and without ZeRO-1, with tiny buckets (many buckets, padding), gradient
//    accumulation launching collectives only on the last micro-batch; the gathered ZeRO-1 optimizer state
//    equals the unsharded one, and a full state loads back (re-sharded) exactly.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <map>
#include <thread>

#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/dist/context.h"
#include "subq/dist/data_parallel.h"
#include "subq/dist/launch_env.h"
#include "subq/train/optimizer.h"
#include "subq_catch.h"

using subq::dist::Context;
using subq::dist::LaunchEnv;

namespace {

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

LaunchEnv env_for(int rank, int world, int port) {
  LaunchEnv e;
  e.rank = rank;
  e.world = world;
  e.local_rank = rank;
  e.local_world = world;
  e.master_addr = "127.0.0.1";
  e.master_port = port;
  e.source = "test";
  return e;
}

// Runs fn(rank, ctx) on `world` threads, each joined to one process group (then shut down in order unless
// `orderly` is false); rethrows the first failure.
void run_ranks(int world, const subq::dist::DistConfig& cfg, const std::function<void(int, Context&)>& fn,
               bool orderly = true) {
  subq::log::set_level("error");
  const int port = free_port();
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        auto ctx = Context::join(env_for(r, world, port), cfg, torch::Device(torch::kCPU));
        fn(r, *ctx);
        if (orderly) ctx->shutdown();
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  subq::log::set_rank(0);
  subq::log::set_level("error");
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

subq::dist::DistConfig fast_cfg(double timeout_s = 20) {
  subq::dist::DistConfig c;
  c.timeout_s = timeout_s;
  c.init_timeout_s = 30;
  return c;
}

}  // namespace

TEST_CASE("launch environment: torchrun, subq launch, Slurm, single", "[dist][env]") {
  auto from = [](std::map<std::string, std::string> m) {
    return LaunchEnv::from_environment([m](const char* k) -> const char* {
      auto it = m.find(k);
      return it == m.end() ? nullptr : it->second.c_str();
    });
  };
  auto single = from({});
  CHECK(!single.distributed());
  CHECK(single.world == 1);

  auto tr = from({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                  {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "29500"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                  {"TORCHELASTIC_RESTART_COUNT", "2"}});
  CHECK(tr.distributed());
  CHECK(tr.rank == 3);
  CHECK(tr.local_rank == 1);
  CHECK(tr.local_world == 2);
  CHECK(tr.master_addr == "node7");
  CHECK(tr.master_port == 29500);
  CHECK(tr.store_hosted_elsewhere);
  CHECK(tr.source == "torchrun");
  CHECK(tr.store_prefix == "subq/2/");

  auto sl = from({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "8"}, {"SLURM_LOCALID", "1"},
                  {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"}, {"SLURM_STEP_NODELIST", "gpu[012-013,020]"},
                  {"SLURM_JOB_ID", "123456"}});
  CHECK(sl.source == "slurm");
  CHECK(sl.rank == 5);
  CHECK(sl.world == 8);
  CHECK(sl.local_rank == 1);
  CHECK(sl.local_world == 4);
  CHECK(sl.master_addr == "gpu012");
  CHECK(sl.master_port == 15000 + 123456 % 10000);
  CHECK(!sl.store_hosted_elsewhere);
  // a one-task step (a plain command inside an sbatch script) is a single process; so is SUBQ_NO_SLURM
  CHECK(!from({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_NTASKS", "8"}}).distributed());
  CHECK(!from({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SUBQ_NO_SLURM", "1"}}).distributed());

  CHECK(subq::dist::first_slurm_host("a1,b2") == "a1");
  CHECK(subq::dist::first_slurm_host("node[7-9]") == "node7");
  CHECK(subq::dist::first_slurm_host("rack[1-2]-gpu[3],x") == "rack1-gpu[3]");
  CHECK(subq::dist::first_slurm_host("solo") == "solo");

  CHECK_THROWS_AS(from({{"WORLD_SIZE", "2"}, {"RANK", "0"}}), subq::UsageError);  // no MASTER_PORT
  CHECK_THROWS_AS(from({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_PORT", "1"}}), subq::UsageError);
  CHECK_THROWS_AS(from({{"WORLD_SIZE", "two"}}), subq::UsageError);
  CHECK_THROWS_AS(from({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}), subq::UsageError);  // no RANK

  // devices: cpu stays cpu; an explicit cuda:N is refused under data parallel
  auto two = env_for(1, 2, 1);
  CHECK(subq::dist::device_for("cpu", two).is_cpu());
  if (!torch::cuda::is_available()) CHECK(subq::dist::device_for("auto", two).is_cpu());
  CHECK_THROWS_AS(subq::dist::device_for("cuda:1", two), subq::ConfigError);
}

TEST_CASE("store backend collectives agree on every rank", "[dist][comm]") {
  const int W = 3;
  std::vector<torch::Tensor> sums(W), maxes(W), scattered(W), gathered(W), bcast(W), big(W);
  std::vector<std::vector<std::string>> strings(W);
  run_ranks(W, fast_cfg(), [&](int r, Context& ctx) {
    auto& c = ctx.comm();
    CHECK(c.name() == "store");
    auto x = torch::arange(7, torch::kFloat32) * 0.1f + static_cast<float>(r) / 3.0f;
    c.allreduce(x, subq::dist::ReduceOp::sum)->wait();
    sums[static_cast<size_t>(r)] = x;
    auto m = torch::tensor({static_cast<double>(r), -static_cast<double>(r), 2.5});
    c.allreduce(m, subq::dist::ReduceOp::max)->wait();
    maxes[static_cast<size_t>(r)] = m;
    auto in = torch::arange(W * 4, torch::kFloat64) + 100.0 * r;
    auto out = torch::empty({4}, torch::kFloat64);
    c.reduce_scatter(out, in)->wait();
    scattered[static_cast<size_t>(r)] = out;
    auto g = torch::empty({W * 2}, torch::kInt64);
    c.all_gather(g, torch::full({2}, r, torch::kInt64))->wait();
    gathered[static_cast<size_t>(r)] = g;
    auto b = r == 1 ? torch::tensor({4.0f, 5.0f}) : torch::zeros({2});
    c.broadcast(b, 1)->wait();
    bcast[static_cast<size_t>(r)] = b;
    // 700k floats = 2.8 MB: several 1 MiB store chunks; issued asynchronously before waiting
    auto l = torch::full({700000}, static_cast<float>(r + 1));
    l[r] = 1000.0f;
    auto w1 = c.allreduce(l, subq::dist::ReduceOp::sum);
    auto l2 = torch::ones({10});
    auto w2 = c.allreduce(l2, subq::dist::ReduceOp::sum);
    w1->wait();
    w2->wait();
    CHECK(l2.sum().item<float>() == 10.0f * W);
    big[static_cast<size_t>(r)] = l;
    strings[static_cast<size_t>(r)] = ctx.all_gather_string("test", "rank" + std::to_string(r));
    CHECK(ctx.broadcast_string("test", r == 0 ? "from zero" : "ignored") == "from zero");
    ctx.check_same("value", "same");
    CHECK_THROWS_AS(ctx.check_same("value", r == 2 ? "other" : "same"), subq::ConfigError);
  });
  auto expect_sum = torch::arange(7, torch::kFloat32) * 0.1f * W + (0.0f + 1.0f / 3.0f + 2.0f / 3.0f);
  for (int r = 0; r < W; ++r) {
    CHECK(torch::allclose(sums[r], expect_sum));
    CHECK(torch::equal(sums[r], sums[0]));  // bitwise the same on every rank
    CHECK(torch::equal(maxes[r], torch::tensor({2.0, 0.0, 2.5})));
    auto seg = torch::arange(r * 4, r * 4 + 4, torch::kFloat64) * W + 100.0 * (0 + 1 + 2);
    CHECK(torch::equal(scattered[r], seg));
    CHECK(torch::equal(gathered[r], torch::tensor({0, 0, 1, 1, 2, 2}, torch::kInt64)));
    CHECK(torch::equal(bcast[r], torch::tensor({4.0f, 5.0f})));
    CHECK(torch::equal(big[r], big[0]));
    CHECK(strings[r] == std::vector<std::string>{"rank0", "rank1", "rank2"});
  }
  CHECK(big[0][0].item<float>() == 1000.0f + 2 + 3);
  CHECK(big[0][5].item<float>() == 6.0f);
}

TEST_CASE("a collective a rank never joins times out naming it; an abort stops the others", "[dist][fault]") {
  std::string timeout_msg;
  std::atomic<bool> timed_out{false};
  run_ranks(2, fast_cfg(2.0), [&](int r, Context& ctx) {
    if (r == 0) {
      auto t = torch::ones({3});
      try {
        ctx.comm().allreduce(t, subq::dist::ReduceOp::sum)->wait();
      } catch (const subq::RuntimeError& e) {
        timeout_msg = e.what();
      }
      timed_out = true;
    } else {
      while (!timed_out) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ctx.barrier("after the timeout");  // the string exchanges still work
  });
  INFO(timeout_msg);
  CHECK_THAT(timeout_msg, Catch::Matchers::Contains("timed out"));
  CHECK_THAT(timeout_msg, Catch::Matchers::Contains("waiting for rank 1"));
  CHECK_THAT(timeout_msg, Catch::Matchers::Contains("dist.timeout_s"));

  std::string abort_msg;
  std::atomic<bool> issued{false};
  run_ranks(
      2, fast_cfg(30.0),
      [&](int r, Context& ctx) {
        if (r == 0) {
          auto t = torch::ones({3});
          auto w = ctx.comm().allreduce(t, subq::dist::ReduceOp::sum);
          issued = true;
          try {
            w->wait();
          } catch (const subq::RuntimeError& e) {
            abort_msg = e.what();
          }
        } else {
          while (!issued) std::this_thread::sleep_for(std::chrono::milliseconds(10));
          ctx.abort("rank 1 failed: boom");
          CHECK_THROWS_AS(ctx.throw_if_aborted(), subq::RuntimeError);
        }
      },
      /*orderly=*/false);
  INFO(abort_msg);
  CHECK_THAT(abort_msg, Catch::Matchers::Contains("rank 1 failed: boom"));
  CHECK(abort_msg.find("timed out") == std::string::npos);
}

namespace {

torch::nn::Sequential tiny_mlp() {
  return torch::nn::Sequential(torch::nn::Linear(5, 7), torch::nn::Tanh(), torch::nn::Linear(7, 3));
}
std::vector<std::pair<std::string, torch::Tensor>> named(torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}
void copy_params(torch::nn::Module& dst, const std::vector<torch::Tensor>& src) {
  torch::NoGradGuard ng;
  auto ps = dst.parameters();
  for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(src[i]);
}

}  // namespace

TEST_CASE("data parallel: W ranks x B/W rows == one process x B rows (all-reduce and ZeRO-1)", "[dist][dp]") {
  const int W = 2, B = 8, K = 4;
  torch::manual_seed(7);
  auto ref = tiny_mlp();
  std::vector<torch::Tensor> init;
  for (const auto& p : ref->parameters()) init.push_back(p.detach().clone());
  std::vector<torch::Tensor> X, Y;
  for (int k = 0; k < K; ++k) {
    X.push_back(torch::randn({B, 5}));
    Y.push_back(torch::randn({B, 3}));
  }
  subq::train::OptimConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 0.1;
  oc.grad_clip = 0.5;
  oc.no_decay = {"bias"};
  // reference: one process, the whole batch
  subq::train::AdamW ref_opt(named(*ref), oc);
  std::vector<double> ref_norms;
  for (int k = 0; k < K; ++k) {
    torch::mse_loss(ref->forward(X[k]), Y[k]).backward();
    const double gn = subq::train::clip_grad_norm(ref_opt.params(), 0.0).item<double>();
    ref_norms.push_back(gn);
    if (gn > oc.grad_clip) subq::train::scale_grads(ref_opt.params(), oc.grad_clip / (gn + 1e-6));
    ref_opt.step(oc.lr);
    ref_opt.zero_grad();
  }
  const auto ref_state = ref_opt.state_tensors();

  for (bool zero1 : {false, true})
    for (int accum : {1, 2}) {
      INFO("zero1 " << zero1 << ", grad_accum " << accum);
      auto cfg = fast_cfg();
      cfg.zero1 = zero1;
      cfg.bucket_mb = 1e-4;  // ~100 bytes: one bucket per parameter or two, odd sizes, padding under ZeRO-1
      std::vector<std::vector<torch::Tensor>> finals(W);
      std::vector<std::vector<double>> norms(W);
      std::vector<subq::TensorMap> gathered(W);
      std::vector<subq::TensorMap> reloaded(W);
      run_ranks(W, cfg, [&](int r, Context& ctx) {
        auto m = tiny_mlp();
        copy_params(*m, init);
        if (r == 1) {  // a different init on rank 1: broadcast_module must overwrite it
          torch::NoGradGuard ng;
          for (auto& p : m->parameters()) p.add_(1.0);
        }
        subq::dist::DataParallel dp(ctx, named(*m), oc);
        CHECK(dp.num_buckets() >= 3);
        dp.broadcast_module(*m);
        const int rows = B / W / accum;
        for (int k = 0; k < K; ++k) {
          torch::Tensor loss_sum = torch::zeros({});
          for (int a = 0; a < accum; ++a) {
            const int64_t first = r * (B / W) + a * rows;
            const int64_t before = dp.collectives_launched();
            dp.set_sync(a + 1 == accum);
            auto loss = torch::mse_loss(m->forward(X[k].narrow(0, first, rows)), Y[k].narrow(0, first, rows));
            (loss / accum).backward();
            loss_sum += loss.detach();
            if (a + 1 < accum) CHECK(dp.collectives_launched() == before);  // no sync before the last micro-batch
            else CHECK(dp.collectives_launched() == before + dp.num_buckets());
          }
          auto s = dp.finish(loss_sum / accum, false);
          norms[static_cast<size_t>(r)].push_back(s.grad_norm);
          if (s.grad_norm > oc.grad_clip) dp.scale_grads(oc.grad_clip / (s.grad_norm + 1e-6));
          dp.step(oc.lr);
          dp.zero_grad();
        }
        for (const auto& p : m->parameters()) finals[static_cast<size_t>(r)].push_back(p.detach().clone());
        gathered[static_cast<size_t>(r)] = dp.gather_optimizer_state();
        dp.load_optimizer_state(r == 0 ? &ref_state : nullptr);
        reloaded[static_cast<size_t>(r)] = dp.gather_optimizer_state();
      });
      auto want = ref->parameters();
      for (int r = 0; r < W; ++r) {
        for (size_t i = 0; i < want.size(); ++i) {
          INFO("rank " << r << " parameter " << i);
          CHECK(torch::allclose(finals[r][i], want[i], 1e-5, 1e-6));
          CHECK(torch::equal(finals[r][i], finals[0][i]));  // replicas stay identical
        }
        for (int k = 0; k < K; ++k) CHECK(norms[r][k] == Approx(ref_norms[k]).epsilon(1e-5));
      }
      CHECK(gathered[1].empty());
      REQUIRE(gathered[0].size() == ref_state.size());
      for (const auto& [name, t] : ref_state) {
        INFO(name);
        REQUIRE(gathered[0].count(name));
        CHECK(torch::allclose(gathered[0].at(name).to(t.scalar_type()), t, 1e-4, 1e-7));
        CHECK(torch::equal(reloaded[0].at(name), t));  // load + gather is exact
      }
    }
}
