// dist_procs.h — helpers for tests that run several `subq` processes at once (data-parallel e2e tests):
// start one in the background with extra environment variables and its output in a file, wait for it
// with a deadline (then SIGKILL: a test never hangs), find a free TCP port, prepare the tiny code corpus,
// and compare two checkpoints' weights.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "e2e/cli_run.h"
#include "subq/core/safetensors.h"
#include "subq_catch.h"

extern char** environ;

namespace subq::test {

// A port nobody listens on right now (bind to port 0 and read it back).
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

inline std::vector<std::string> split_args(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// A `subq` process in the background (cwd: the source tree), stdout+stderr to `log`.
struct Proc {
  pid_t pid = -1;
  std::string log;
  std::optional<int> status;  // raw wait status once reaped

  Proc(const std::string& args, const std::map<std::string, std::string>& env, std::string log_path)
      : log(std::move(log_path)) {
    std::map<std::string, std::string> all;
    for (char** e = environ; *e; ++e) {
      std::string kv(*e);
      auto eq = kv.find('=');
      if (eq != std::string::npos) all[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (const auto& [k, v] : env) all[k] = v;
    std::vector<std::string> env_s, arg_s{binary()};
    for (const auto& [k, v] : all) env_s.push_back(k + "=" + v);
    for (auto& a : split_args(args)) arg_s.push_back(a);
    std::vector<char*> envp, argv;
    for (auto& s : env_s) envp.push_back(s.data());
    envp.push_back(nullptr);
    for (auto& s : arg_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    const std::string dir = source_dir();
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      FILE* f = std::fopen(log.c_str(), "w");
      if (!f || chdir(dir.c_str()) != 0) _exit(126);
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
  }
  ~Proc() { kill_now(); }

  void kill_now() {
    if (pid > 0 && !status) {
      ::kill(pid, SIGKILL);
      int st = 0;
      waitpid(pid, &st, 0);
      status = st;
    }
  }
  // Waits up to `seconds`; on the deadline kills it and returns false.
  bool wait(double seconds) {
    if (status) return true;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        status = st;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill_now();
    return false;
  }
  bool running() {
    if (status) return false;
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      status = st;
      return false;
    }
    return true;
  }
  int exit_code() const { return status && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1; }
  std::string output() const {
    std::ifstream f(log);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  }
};

// The torchrun-style environment of rank `rank` of `world` (rank 0 hosts the store on `port`).
inline std::map<std::string, std::string> rank_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},       {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)}, {"LOCAL_WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", std::to_string(port)}};
}

// Highest "step" with a "loss" in a run's metrics.jsonl (0 when none yet).
inline int64_t last_logged_step(const std::filesystem::path& run_dir) {
  std::ifstream f(run_dir / "metrics.jsonl");
  int64_t s = 0;
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("loss") && j["step"].is_number_integer()) s = std::max(s, j["step"].get<int64_t>());
  }
  return s;
}

// Largest |a - b| / (atol + rtol |b|) over two checkpoints' model tensors (<= 1 means allclose).
inline double weights_distance(const std::string& ckpt_a, const std::string& ckpt_b, double rtol, double atol) {
  auto a = load_safetensors(ckpt_a + "/model.safetensors").tensors;
  auto b = load_safetensors(ckpt_b + "/model.safetensors").tensors;
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (const auto& [k, t] : a) {
    REQUIRE(b.count(k));
    auto x = t.to(torch::kFloat64), y = b.at(k).to(torch::kFloat64);
    worst = std::max(worst, ((x - y).abs() / (atol + rtol * y.abs())).max().item<double>());
  }
  return worst;
}

}  // namespace subq::test
