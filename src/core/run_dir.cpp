// run_dir.cpp — see run_dir.h.
#include "subq/core/run_dir.h"

#include <ctime>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "subq/core/build_info.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"

namespace fs = std::filesystem;

namespace subq {

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  return load_run_config(path.empty() ? std::vector<std::string>{} : std::vector<std::string>{path}, overrides);
}

RunConfig load_run_config(const std::vector<std::string>& paths, const std::vector<std::string>& overrides) {
  config::Source src;
  if (!paths.empty()) {
    src.path = paths.front();
    src.layers.assign(paths.begin() + 1, paths.end());
  }
  src.overrides = overrides;
  RunConfig cfg = config::load<RunConfig>(src);
  if (cfg.run.name.empty()) {
    for (const auto& p : paths) cfg.run.name += (cfg.run.name.empty() ? "" : "-") + fs::path(p).stem().string();
    if (cfg.run.name.empty()) cfg.run.name = "run";
  }
  return cfg;
}

std::string run_dir_path(const RunConfig& cfg) { return (fs::path(cfg.run.out_dir) / cfg.run.name).string(); }

std::string utc_now_iso() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RunDir open_run_dir(const RunConfig& cfg, const std::vector<std::string>& argv) {
  RunDir rd{run_dir_path(cfg)};
  std::error_code ec;
  fs::create_directories(rd.path, ec);
  if (ec) throw RuntimeError(str("cannot create run directory ", rd.path, ": ", ec.message(),
                                 "; choose another run.out_dir"));
  fs::create_directories(rd.checkpoints_path(), ec);
  fsx::write_file_atomic(rd.config_path(), config::to_yaml(cfg));
  nlohmann::json meta;
  meta["commit"] = build_commit();
  meta["version"] = build_version();
  meta["started"] = utc_now_iso();
  meta["command"] = argv;
  meta["cwd"] = fs::current_path().string();
  // run.json keeps the history of launches: append this one.
  nlohmann::json all = nlohmann::json::array();
  std::string jp = rd.path + "/run.json";
  if (fs::exists(jp)) {
    try {
      all = nlohmann::json::parse(fsx::read_file(jp));
      if (!all.is_array()) all = nlohmann::json::array({all});
    } catch (const std::exception&) {
      all = nlohmann::json::array();
    }
  }
  all.push_back(meta);
  fsx::write_file_atomic(jp, all.dump(2) + "\n");
  log::add_file(rd.log_path());
  return rd;
}

}  // namespace subq
