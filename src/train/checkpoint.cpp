// checkpoint.cpp — writing, finding, cleaning and loading checkpoints (see checkpoint.h for the layout).
//
// Decisions:
//  * Crash safety comes from the directory protocol, not from the files: everything is written into
//    step-N.tmp-<pid>, COMPLETE last, the directory fsynced and renamed to step-N. Readers only trust
//    directories with COMPLETE. Replacing an existing step-N (a run resumed from an earlier step that
//    reaches N again) moves the old one to step-N.old-<pid> first, renames the new one in, then deletes
//    the old: at every instant one complete step-N exists or can be restored by the cleaner.
//  * Model tensors are saved as the fp32 master weights on the CPU, parameters and buffers alike, under
//    the module's own names (for the transformer: Hugging Face Llama names minus "model.").
//  * RNG states are the generators' get_state() byte tensors in base64 inside trainer_state.json, so the
//    whole trainer state is one human-readable file.
#include "subq/train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "subq/core/config.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/run_dir.h"
#include "subq/core/safetensors.h"
#include "subq/train/optimizer.h"

namespace fs = std::filesystem;

namespace subq::train {

namespace {

constexpr const char* kComplete = "COMPLETE";

// "step-<digits>" followed by `suffix` (e.g. "" or ".tmp-"): the step, or -1.
int64_t parse_step(const std::string& name, std::string* rest = nullptr) {
  if (name.rfind("step-", 0) != 0) return -1;
  size_t i = 5;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == 5 || i - 5 > 18) return -1;
  if (rest) *rest = name.substr(i);
  else if (i != name.size()) return -1;
  return std::stoll(name.substr(5, i - 5));
}

std::string ckpt_root(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string step_name(int64_t step) { return str("step-", step); }

TensorMap model_tensors(const torch::nn::Module& model) {
  TensorMap out;
  for (const auto& p : model.named_parameters()) out[p.key()] = p.value().detach().to(torch::kCPU);
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value().detach().to(torch::kCPU);
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ base64
std::string base64_encode(const std::string& bytes) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (i + 1 == bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) throw InputError(str("malformed base64 (length ", text.size(), " is not a multiple of 4)"));
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int pad = 0;
    uint32_t v = 0;
    for (size_t j = 0; j < 4; ++j) {
      char c = text[i + j];
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++pad;
        v <<= 6;
        continue;
      }
      int d = val(c);
      if (d < 0 || pad > 0) throw InputError(str("malformed base64 at character ", i + j));
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out += static_cast<char>((v >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(v & 0xff);
  }
  return out;
}

// --------------------------------------------------------------------------------------------------- RNG
namespace {
std::string generator_bytes(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  torch::Tensor st = gen.get_state().contiguous();
  return std::string(static_cast<const char*>(st.data_ptr()), static_cast<size_t>(st.numel()));
}

void set_generator_bytes(at::Generator gen, const std::string& bytes, const std::string& what) {
  torch::Tensor st = torch::empty({static_cast<int64_t>(bytes.size())}, torch::TensorOptions().dtype(torch::kUInt8));
  if (!bytes.empty()) std::memcpy(st.data_ptr(), bytes.data(), bytes.size());
  std::lock_guard<std::mutex> lock(gen.mutex());
  try {
    gen.set_state(st);
  } catch (const c10::Error& e) {
    throw InputError(str("cannot restore the ", what, " random generator state from the checkpoint (",
                         e.what_without_backtrace(), "); was it written by another LibTorch version?"));
  }
}
}  // namespace

nlohmann::json capture_rng_state() {
  nlohmann::json j;
  j["cpu"] = base64_encode(generator_bytes(at::globalContext().defaultGenerator(c10::Device(c10::kCPU))));
  nlohmann::json cuda = nlohmann::json::array();
  const int64_t n = torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  for (int64_t i = 0; i < n; ++i)
    cuda.push_back(base64_encode(generator_bytes(
        at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i))))));
  j["cuda"] = cuda;
  return j;
}

void restore_rng_state(const nlohmann::json& rng) {
  if (!rng.is_object() || !rng.contains("cpu") || !rng["cpu"].is_string())
    throw InputError("trainer state: 'rng' needs a base64 'cpu' entry");
  set_generator_bytes(at::globalContext().defaultGenerator(c10::Device(c10::kCPU)),
                      base64_decode(rng["cpu"].get<std::string>()), "CPU");
  if (!rng.contains("cuda") || !rng["cuda"].is_array()) return;
  const auto& cuda = rng["cuda"];
  const int64_t n = torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  if (static_cast<int64_t>(cuda.size()) != n && !cuda.empty())
    log::warn(str("checkpoint holds CUDA RNG states for ", cuda.size(), " device(s), ", n,
                  " visible now: restoring the first ", std::min<int64_t>(n, cuda.size())));
  for (int64_t i = 0; i < std::min<int64_t>(n, static_cast<int64_t>(cuda.size())); ++i)
    set_generator_bytes(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i))),
                        base64_decode(cuda[static_cast<size_t>(i)].get<std::string>()), str("cuda:", i));
}

// ------------------------------------------------------------------------------------------- discovery
std::vector<CheckpointRef> list_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointRef> out;
  const fs::path root = ckpt_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    const int64_t step = parse_step(name);
    if (step < 0 || !e.is_directory()) continue;
    if (!fs::exists(e.path() / kComplete)) continue;
    out.push_back({e.path().string(), step});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

nlohmann::json read_trainer_state(const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / "trainer_state.json").string();
  const std::string text = fsx::read_file(path, "checkpoint trainer state");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(str(path, ": not valid JSON (", e.what(), "); the checkpoint is damaged, use an earlier one"));
  }
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer())
    throw InputError(str(path, ": missing 'step'; the checkpoint is damaged, use an earlier one"));
  return j;
}

CheckpointRef resolve_checkpoint(const std::string& p) {
  const fs::path path(p);
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw InputError(str("checkpoint or run directory not found: ", p));
  if (fs::exists(path / kComplete)) {
    auto st = read_trainer_state(p);
    return {p, st["step"].get<int64_t>()};
  }
  if (fs::is_directory(path / "checkpoints")) {
    auto latest = latest_checkpoint(p);
    if (!latest)
      throw InputError(str("run directory ", p, " has no complete checkpoint yet; let training reach a checkpoint ",
                           "(train.ckpt_every) or name a checkpoint directory"));
    return *latest;
  }
  if (fs::exists(path / "trainer_state.json") || parse_step(path.filename().string()) >= 0)
    throw InputError(str("checkpoint ", p, " is incomplete (no COMPLETE marker: its save was interrupted); ",
                         "use an earlier checkpoint"));
  throw InputError(str(p, " is neither a checkpoint directory (step-N with COMPLETE) nor a run directory ",
                       "(with checkpoints/)"));
}

// ---------------------------------------------------------------------------------------------- weights
void load_model_weights(torch::nn::Module& model, const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / "model.safetensors").string();
  auto file = load_safetensors(path);
  std::vector<std::string> problems;
  std::vector<std::pair<torch::Tensor, const torch::Tensor*>> copies;
  auto expect = [&](const std::string& name, const torch::Tensor& dst) {
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) {
      problems.push_back(str("missing '", name, "'"));
      return;
    }
    if (it->second.sizes() != dst.sizes()) {
      problems.push_back(str("'", name, "' has shape ", it->second.sizes(), " in the file, the model needs ", dst.sizes()));
      return;
    }
    copies.emplace_back(dst, &it->second);
  };
  size_t known = 0;
  for (const auto& p : model.named_parameters()) {
    expect(p.key(), p.value());
    known += file.tensors.count(p.key());
  }
  for (const auto& b : model.named_buffers()) {
    expect(b.key(), b.value());
    known += file.tensors.count(b.key());
  }
  if (known != file.tensors.size()) {
    auto params = model.named_parameters();
    auto buffers = model.named_buffers();
    for (const auto& [name, t] : file.tensors)
      if (!params.contains(name) && !buffers.contains(name)) problems.push_back(str("unexpected '", name, "'"));
  }
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 8; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 8) list += str("; and ", problems.size() - 8, " more");
    throw InputError(str(path, " does not match the model: ", list,
                         " (the model config differs from the one the checkpoint was trained with?)"));
  }
  torch::NoGradGuard ng;
  for (auto& [dst, src] : copies) dst.copy_(*src);
}

// ------------------------------------------------------------------------------------------------ save
std::string save_checkpoint(const std::string& run_dir, int64_t step, const torch::nn::Module& model,
                            const AdamW* optimizer, const nlohmann::json& trainer_state, int64_t keep_last,
                            const TensorMap* optimizer_state) {
  SUBQ_CHECK(keep_last >= 1);
  const fs::path root = ckpt_root(run_dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw RuntimeError(str("cannot create ", root.string(), ": ", ec.message()));
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp = root / str(step_name(step), ".tmp-", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw RuntimeError(str("cannot create ", tmp.string(), ": ", ec.message(), " (disk full? permissions?)"));

  save_safetensors((tmp / "model.safetensors").string(), model_tensors(model), {{"format", "subq-model-1"}});
  if (optimizer && optimizer_state) optimizer->save((tmp / "optimizer.safetensors").string(), *optimizer_state);
  else if (optimizer) optimizer->save((tmp / "optimizer.safetensors").string());
  nlohmann::json st = trainer_state;
  st["format"] = 1;
  st["step"] = step;
  if (!st.contains("saved")) st["saved"] = utc_now_iso();
  fsx::write_file_atomic((tmp / "trainer_state.json").string(), st.dump(2) + "\n");
  fsx::write_file_atomic((tmp / kComplete).string(), nlohmann::json{{"step", step}, {"saved", st["saved"]}}.dump() + "\n");
  fsx::fsync_dir(tmp.string());

  fs::path old;
  if (fs::exists(final_dir)) {
    old = root / str(step_name(step), ".old-", ::getpid());
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) throw RuntimeError(str("cannot move aside ", final_dir.string(), ": ", ec.message()));
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) throw RuntimeError(str("cannot rename ", tmp.string(), " to ", final_dir.string(), ": ", ec.message()));
  fsx::fsync_dir(root.string());
  if (!old.empty()) fs::remove_all(old, ec);

  auto all = list_checkpoints(run_dir);
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) {
    if (all[i].step == step) continue;
    fs::remove_all(all[i].path, ec);
    if (ec) log::warn(str("could not delete old checkpoint ", all[i].path, ": ", ec.message()));
    else log::debug(str("deleted old checkpoint ", all[i].path, " (train.keep_last = ", keep_last, ")"));
  }
  return final_dir.string();
}

int64_t clean_incomplete_checkpoints(const std::string& run_dir) {
  const fs::path root = ckpt_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return 0;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(root, ec)) entries.push_back(e.path());
  std::sort(entries.begin(), entries.end());
  int64_t n = 0;
  // restore moved-aside checkpoints first, so the incomplete-directory sweep below sees the final state
  for (const auto& p : entries) {
    std::string rest;
    const int64_t step = parse_step(p.filename().string(), &rest);
    if (step < 0 || rest.rfind(".old-", 0) != 0) continue;
    const fs::path final_dir = root / step_name(step);
    if (fs::exists(final_dir / kComplete) || !fs::exists(p / kComplete)) {
      fs::remove_all(p, ec);
      log::warn(str("removed ", p.string(), " (left by an interrupted checkpoint replacement)"));
    } else {
      fs::remove_all(final_dir, ec);
      fs::rename(p, final_dir, ec);
      log::warn(str("restored checkpoint ", final_dir.string(), " from ", p.filename().string(),
                    " (its replacement was interrupted)"));
    }
    ++n;
  }
  for (const auto& p : entries) {
    std::string rest;
    const int64_t step = parse_step(p.filename().string(), &rest);
    if (step < 0 || !fs::exists(p)) continue;
    const bool tmp = rest.rfind(".tmp-", 0) == 0;
    const bool incomplete = rest.empty() && fs::is_directory(p) && !fs::exists(p / kComplete);
    if (!tmp && !incomplete) continue;
    fs::remove_all(p, ec);
    log::warn(str("removed incomplete checkpoint ", p.string(), " (a save was interrupted)"));
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------- loading
RunConfig checkpoint_config(const std::string& checkpoint_dir, const std::vector<std::string>& overrides) {
  auto st = read_trainer_state(checkpoint_dir);
  if (!st.contains("config") || !st["config"].is_string())
    throw InputError(str(checkpoint_dir, "/trainer_state.json has no 'config'; the checkpoint is damaged"));
  std::string text = st["config"].get<std::string>();
  return config::load<RunConfig>({str(checkpoint_dir, "/trainer_state.json (config)"), overrides, text});
}

LoadedModel load_model(const std::string& run_or_checkpoint, const std::vector<std::string>& overrides) {
  LoadedModel out;
  out.checkpoint = resolve_checkpoint(run_or_checkpoint);
  out.config = checkpoint_config(out.checkpoint.path, overrides);
  out.model = models::create_model(out.config.model);
  load_model_weights(*out.model, out.checkpoint.path);
  return out;
}

}  // namespace subq::train
