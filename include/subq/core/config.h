// config.h — loading YAML configs into typed structs (see schema.h for how structs describe themselves).
//
// Pipeline: read the file, resolve `include:` (a path or list of paths, relative to the including file,
// merged depth-first so the including file wins; maps merge key by key, lists and scalars replace),
// merge the further files of `layers` on top in order (each with its own includes; later files win:
// `subq train --config task.yaml --config models/gdn.yaml`), apply `--set key.path=value` overrides in
// order (values parsed as YAML: 512, 3e-4, [1,2], true), then parse into the struct. Every problem is a ConfigError naming the key path, the value, where it
// came from (file:line:col or --set) and the fix: unknown keys (with the nearest valid key), wrong
// types, out-of-range values, bad choices, missing files, include cycles, YAML syntax errors.
#pragma once

#include <string>
#include <vector>

#include "subq/core/schema.h"

namespace subq::config {

struct Source {
  std::string path;                    // YAML file ("" for none: defaults only)
  std::vector<std::string> overrides;  // "key.path=value"
  std::string text;                    // when non-empty, YAML text used instead of reading `path`
  std::vector<std::string> layers = {};  // further YAML files merged on top of `path`, in order
};

// Parses `src` into *out (which must be of the type `info` describes). Throws ConfigError.
void load_into(const SectionInfo& info, void* out, const Source& src);

template <typename T>
T load(const Source& src) {
  T out;
  load_into(schema_of<T>(), &out, src);
  return out;
}

// The full config as YAML (every key, defaults included) that load() reads back to the same struct.
// With docs, each key is preceded by its doc string as a comment.
std::string to_yaml(const SectionInfo& info, const void* obj, bool with_docs = false);
template <typename T>
std::string to_yaml(const T& obj, bool with_docs = false) {
  return to_yaml(schema_of<T>(), &obj, with_docs);
}

// One entry per leaf key: dotted path, type, default, constraints and doc.
struct KeyDoc {
  std::string path, type, default_value, constraints, doc;
};
std::vector<KeyDoc> describe_keys(const SectionInfo& info);
// Human-readable table of describe_keys(), filtered to keys starting with `prefix` (if non-empty).
std::string explain(const SectionInfo& info, const std::string& prefix = "");

// Levenshtein distance (for "did you mean").
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace subq::config
