// run_assets.cpp — see run_assets.h.
#include "subq/eval/run_assets.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "subq/core/error.h"
#include "subq/core/fs.h"

namespace fs = std::filesystem;

namespace subq::eval {

namespace {
// Launch directories recorded in run.json, newest first.
std::vector<std::string> launch_dirs(const std::string& run_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  const std::string p = run_dir + "/run.json";
  if (run_dir.empty() || !fs::exists(p, ec)) return out;
  nlohmann::json j = nlohmann::json::parse(fsx::read_file(p, "run.json"), nullptr, false);
  if (j.is_object()) j = nlohmann::json::array({j});
  if (!j.is_array()) return out;
  for (auto it = j.rbegin(); it != j.rend(); ++it)
    if (it->is_object() && it->contains("cwd") && (*it)["cwd"].is_string()) {
      std::string c = (*it)["cwd"].get<std::string>();
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    }
  return out;
}
}  // namespace

std::string resolve_run_path(const std::string& path, const std::string& run_dir) {
  if (path.empty()) return "";
  std::error_code ec;
  if (fs::exists(path, ec)) return path;
  if (fs::path(path).is_absolute()) return "";
  for (const auto& d : launch_dirs(run_dir)) {
    fs::path p = fs::path(d) / path;
    if (fs::exists(p, ec)) return p.string();
  }
  return "";
}

std::string run_dir_of_checkpoint(const std::string& checkpoint_dir) {
  fs::path p = fs::absolute(checkpoint_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  fs::path run = p.parent_path().parent_path();
  std::error_code ec;
  if (p.parent_path().filename() == "checkpoints" || fs::exists(run / "config.yaml", ec) ||
      fs::exists(run / "run.json", ec))
    return run.string();
  return "";
}

data::Tokenizer load_run_tokenizer(const RunConfig& cfg, const std::string& run_dir, const std::string& override_path,
                                   std::string* resolved_path) {
  std::string path;
  if (!override_path.empty()) {
    std::error_code ec;
    if (!fs::exists(override_path, ec))
      throw InputError(str("tokenizer ", override_path, " (--tokenizer) does not exist"));
    path = override_path;
  } else {
    if (cfg.data.tokenizer.empty())
      throw InputError("the run's config has no data.tokenizer; pass the tokenizer.json it was trained with as --tokenizer");
    path = resolve_run_path(cfg.data.tokenizer, run_dir);
    if (path.empty()) {
      std::string tried = cfg.data.tokenizer + " (from " + fs::current_path().string() + ")";
      for (const auto& d : launch_dirs(run_dir)) tried += ", " + (fs::path(d) / cfg.data.tokenizer).string();
      throw InputError(str("the run's tokenizer (data.tokenizer = ", cfg.data.tokenizer, ") was not found; tried ",
                           tried, ". Run from the directory training ran in, or pass --tokenizer PATH"));
    }
  }
  if (resolved_path) *resolved_path = path;
  return data::Tokenizer::from_file(path);
}

std::vector<int64_t> undecodable_ids(const data::Tokenizer& tok, int64_t limit) {
  std::vector<int64_t> out;
  const int64_t n = std::min(limit, tok.vocab_size());
  for (int64_t id = 0; id < n; ++id) {
    try {
      (void)tok.token_bytes(static_cast<int32_t>(id));
    } catch (const InputError&) {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace subq::eval
