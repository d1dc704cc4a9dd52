// cmd_version.cpp — `subq version`: commit, build, LibTorch/CUDA/NCCL versions, registered model
// architectures, GPUs seen, and whether a subq kernel launches on each GPU.
#include <cstdio>

#include "apps/cli.h"
#include "subq/core/build_info.h"
#include "subq/core/device.h"
#include "subq/models/model.h"

namespace subq::cli {

namespace {
void add_version_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("version", "print the build (commit, LibTorch, CUDA, NCCL) and the GPUs seen");
  static bool json = false, no_probe = false;
  cmd->add_flag("--json", json, "print JSON");
  cmd->add_flag("--no-probe", no_probe, "do not launch the test kernel on each GPU");
  cmd->callback([&ctx] {
    ctx.action = [] {
      nlohmann::json j = machine_info(!no_probe);
      j["subq"] = build_version();
      j["commit"] = build_commit();
      j["build_type"] = build_type();
      j["compiler"] = build_compiler();
      nlohmann::json models = nlohmann::json::array();
      for (const auto& m : models::model_registry()) models.push_back({{"name", m.name}, {"description", m.description}});
      j["models"] = models;
      if (json) {
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
      }
      std::printf("subq %s (commit %s, %s, %s)\n", build_version(), build_commit(), build_type(), build_compiler());
      std::printf("libtorch %s\n", j["libtorch"].get<std::string>().c_str());
      if (j["cuda_built"].get<bool>())
        std::printf("cuda runtime %s, driver %s\n", j["cuda_runtime"].get<std::string>().c_str(),
                    j["cuda_driver"].get<std::string>().c_str());
      else
        std::printf("cuda: not built (no nvcc at configure time)\n");
      std::printf("nccl %s\n", j.value("nccl", std::string("unavailable")).c_str());
      std::printf("models:");
      for (const auto& m : j["models"]) std::printf(" %s", m["name"].get<std::string>().c_str());
      std::printf("\n");
      const auto& gpus = j["gpus"];
      std::printf("gpus seen: %zu\n", gpus.size());
      for (const auto& g : gpus)
        std::printf("  [%d] %s (sm %s, %.1f GiB, %d SMs)%s%s\n", g["index"].get<int>(),
                    g["name"].get<std::string>().c_str(), g["compute_capability"].get<std::string>().c_str(),
                    g["memory_gib"].get<double>(), g["sms"].get<int>(), g.contains("kernel_probe") ? " kernel probe: " : "",
                    g.contains("kernel_probe") ? g["kernel_probe"].get<std::string>().c_str() : "");
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(10, add_version_command);

}  // namespace subq::cli
