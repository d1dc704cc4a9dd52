// registry.cpp — the model registry (see model.h) and LanguageModel helpers.
//
// Architectures register themselves from static initialisers in their own .cpp (SUBQ_REGISTER_MODEL);
// subq_torch is a shared library, so those initialisers always run. The registry lives in a
// function-local static, so registration order across translation units does not matter.
#include <algorithm>

#include "subq/core/error.h"
#include "subq/models/model.h"

namespace subq::models {

namespace {
std::vector<ModelEntry>& registry() {
  static std::vector<ModelEntry> r;
  return r;
}
}  // namespace

bool register_model(ModelEntry entry) {
  auto& r = registry();
  for (const auto& e : r)
    SUBQ_CHECK(e.name != entry.name, "model '", entry.name, "' registered twice");
  r.push_back(std::move(entry));
  std::sort(r.begin(), r.end(), [](const ModelEntry& a, const ModelEntry& b) { return a.name < b.name; });
  return true;
}

const std::vector<ModelEntry>& model_registry() { return registry(); }

std::shared_ptr<LanguageModel> create_model(const ModelConfig& cfg) {
  for (const auto& e : registry())
    if (e.name == cfg.arch) return e.create(cfg);
  std::string names;
  for (const auto& e : registry()) names += (names.empty() ? "" : ", ") + e.name;
  throw InputError(str("model.arch = '", cfg.arch, "' is not a registered architecture; use one of: ",
                       names.empty() ? std::string("(none built in)") : names));
}

int64_t LanguageModel::num_params() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace subq::models
