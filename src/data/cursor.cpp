// cursor.cpp — see cursor.h.
#include "data/cursor.h"

#include "subq/core/error.h"
#include "subq/core/log.h"

namespace subq::data::cursor {

const nlohmann::json& need(const nlohmann::json& s, const char* key, const std::string& from) {
  if (!s.is_object() || !s.contains(key))
    throw InputError(str("data cursor: missing '", key, "' in ", s.dump(), "; the checkpoint's trainer_state.json is not from ",
                         from));
  return s.at(key);
}

void check_kind(const nlohmann::json& s, const std::string& kind, int version, const std::string& from,
                const char* noun) {
  if (need(s, "kind", from).get<std::string>() != kind)
    throw InputError(str("data cursor of kind '", s.at("kind").get<std::string>(), "' cannot resume a ", kind, " ",
                         noun, ": the checkpoint was written for another data.task"));
  if (need(s, "version", from).get<int>() != version)
    throw InputError(str("data cursor version ", s.at("version").get<int>(), " is not ", version,
                         ": the checkpoint comes from another subq version"));
}

uint64_t resume_consumed(const nlohmann::json& s, int64_t world, const std::string& from, const char* unit) {
  uint64_t consumed = need(s, "consumed", from).get<uint64_t>();
  const int64_t saved_world = need(s, "world", from).get<int64_t>();
  const uint64_t w = static_cast<uint64_t>(world);
  if (saved_world != world) {
    log::warn(str("data cursor was saved with ", saved_world, " data-parallel ranks, resuming with ", world,
                  ": continuing from global ", unit, " ", consumed - consumed % w, " of ", consumed));
    consumed -= consumed % w;
  }
  return consumed;
}

}  // namespace subq::data::cursor
