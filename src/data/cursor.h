// cursor.h — what the batch sources' restore() share (loader.cpp, synthetic_source.cpp): reading a saved
// data cursor (BatchSource::state(), kept in trainer_state.json) with errors that say what does not match
// and how to resume instead.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "subq/core/error.h"

namespace subq::data::cursor {

// Field `key` of cursor s; an InputError when it is absent, naming the run the cursor should come from
// (`from`, e.g. "a token-window loader").
const nlohmann::json& need(const nlohmann::json& s, const char* key, const std::string& from);

// The cursor's kind and format version must be `kind` / `version`; `noun` names this side in the error
// ("loader", "source").
void check_kind(const nlohmann::json& s, const std::string& kind, int version, const std::string& from,
                const char* noun);

// The saved "consumed" count to resume from with `world` data-parallel ranks: unchanged for the same world
// size, else rounded down to a multiple of it (with a warning naming the `unit`: "window", "example").
uint64_t resume_consumed(const nlohmann::json& s, int64_t world, const std::string& from, const char* unit);

// Runs read(), turning a JSON type error (a field of the wrong type) into an InputError naming the cursor.
template <typename F>
void read_guarded(const nlohmann::json& s, F&& read) {
  try {
    read();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(str("data cursor ", s.dump(), " is malformed: ", e.what()));
  }
}

}  // namespace subq::data::cursor
