// config.cpp — YAML -> typed structs: includes, overrides, validation, emission and explanation.
//
// Decisions:
//  * Each leaf key remembers where its value came from (file:line:col or "--set k=v") while files are
//    merged, so every error can point at the line to fix, even through includes.
//  * Integers accept integral floats ("1e6" for steps); numbers must be finite.
//  * Unknown keys suggest the nearest sibling key (edit distance), or a key of the same name in another
//    section ("model.lr" -> "optim.lr").
//  * Emitted doubles use the shortest representation that reads back exactly, so a resolved config
//    re-runs bit-identically.
#include "subq/core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <sstream>

#include "subq/core/error.h"

namespace fs = std::filesystem;

namespace subq::config {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::boolean: return "bool";
    case Kind::integer: return "int";
    case Kind::number: return "float";
    case Kind::string: return "string";
    case Kind::string_list: return "list[string]";
    case Kind::integer_list: return "list[int]";
    case Kind::number_list: return "list[float]";
    case Kind::section: return "section";
  }
  return "?";
}

const FieldInfo* SectionInfo::find(const std::string& name) const {
  for (const auto& f : fields)
    if (f.name == name) return &f;
  return nullptr;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

using Origins = std::map<std::string, std::string>;

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string mark_str(const std::string& file, const YAML::Mark& m) {
  if (m.is_null()) return file;
  return str(file, ":", m.line + 1, ":", m.column + 1);
}

void record_origins(const YAML::Node& node, const std::string& prefix, const std::string& origin_file,
                    Origins& origins) {
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      std::string key = it->first.Scalar();
      std::string path = join(prefix, key);
      origins[path] = mark_str(origin_file, it->first.Mark());
      record_origins(it->second, path, origin_file, origins);
    }
  } else if (!prefix.empty()) {
    origins[prefix] = mark_str(origin_file, node.Mark());
  }
}

// Deep merge: maps key by key, everything else replaced.
void merge(YAML::Node dst, const YAML::Node& src) {
  for (auto it = src.begin(); it != src.end(); ++it) {
    const std::string key = it->first.Scalar();
    YAML::Node d = dst[key];
    if (d.IsDefined() && d.IsMap() && it->second.IsMap()) {
      merge(d, it->second);
    } else {
      dst[key] = YAML::Clone(it->second);
    }
  }
}

std::string display_path(const fs::path& p) {
  std::error_code ec;
  auto rel = fs::relative(p, fs::current_path(), ec);
  if (!ec && !rel.empty() && rel.native().rfind("..", 0) != 0) return rel.string();
  return p.string();
}

YAML::Node parse_yaml(const std::string& text, const std::string& name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(str(mark_str(name, e.mark), ": YAML syntax error: ", e.msg,
                          "; fix the file's syntax (indentation, ':' after keys, quoting)"));
  }
}

YAML::Node load_file(const fs::path& path, std::vector<fs::path>& stack, Origins& origins,
                     const std::string& included_from);

YAML::Node load_text(const std::string& text, const std::string& name, const fs::path& dir,
                     std::vector<fs::path>& stack, Origins& origins) {
  YAML::Node node = parse_yaml(text, name);
  if (node.IsNull()) node = YAML::Node(YAML::NodeType::Map);
  if (!node.IsMap())
    throw ConfigError(str(name, ": the top level of a config must be a mapping of sections (model:, train:, ...)"));
  YAML::Node result(YAML::NodeType::Map);
  if (YAML::Node inc = node["include"]) {
    std::vector<std::pair<std::string, YAML::Mark>> paths;
    if (inc.IsScalar()) {
      paths.push_back({inc.Scalar(), inc.Mark()});
    } else if (inc.IsSequence()) {
      for (const auto& p : inc) {
        if (!p.IsScalar())
          throw ConfigError(str(mark_str(name, p.Mark()), ": include entries must be file paths"));
        paths.push_back({p.Scalar(), p.Mark()});
      }
    } else {
      throw ConfigError(str(mark_str(name, inc.Mark()), ": include must be a path or a list of paths"));
    }
    for (const auto& [p, mark] : paths) {
      fs::path ip = fs::path(p).is_absolute() ? fs::path(p) : dir / p;
      YAML::Node sub = load_file(ip, stack, origins, mark_str(name, mark));
      merge(result, sub);
    }
    node.remove("include");
  }
  record_origins(node, "", name, origins);
  merge(result, node);
  return result;
}

YAML::Node load_file(const fs::path& path, std::vector<fs::path>& stack, Origins& origins,
                     const std::string& included_from) {
  std::error_code ec;
  fs::path canon = fs::weakly_canonical(path, ec);
  if (ec) canon = path;
  std::string shown = display_path(canon);
  if (!fs::exists(canon)) {
    if (included_from.empty())
      throw ConfigError(str("config file not found: ", path.string(), "; check the path (run from the project root?)"));
    throw ConfigError(str(included_from, ": included file not found: ", path.string(),
                          "; include paths are relative to the including file"));
  }
  if (fs::is_directory(canon))
    throw ConfigError(str("config path is a directory, not a YAML file: ", path.string()));
  for (const auto& s : stack) {
    if (s == canon) {
      std::string chain;
      for (const auto& t : stack) chain += display_path(t) + " -> ";
      throw ConfigError(str("include cycle: ", chain, shown, "; remove one of these includes"));
    }
  }
  FILE* f = std::fopen(canon.c_str(), "rb");
  if (!f) throw ConfigError(str("cannot read config file ", shown, "; check its permissions"));
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  stack.push_back(canon);
  YAML::Node out = load_text(text, shown, canon.parent_path(), stack, origins);
  stack.pop_back();
  return out;
}

void apply_override(YAML::Node root, const std::string& ov, Origins& origins) {
  auto eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(str("--set ", ov, ": expected key.path=value (e.g. --set model.d_model=512)"));
  std::string path = ov.substr(0, eq);
  std::string value = ov.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) throw ConfigError(str("--set ", ov, ": empty component in key path '", path, "'"));
    parts.push_back(p);
  }
  YAML::Node v;
  if (value.empty()) {
    v = YAML::Node(std::string());
  } else {
    try {
      v = YAML::Load(value);
    } catch (const YAML::ParserException& e) {
      throw ConfigError(str("--set ", ov, ": cannot parse the value as YAML (", e.msg, "); quote it"));
    }
  }
  // Walk/create maps. yaml-cpp nodes are handles, so assign through a chain of child handles.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (next.IsDefined() && !next.IsNull() && !next.IsMap())
      throw ConfigError(str("--set ", ov, ": '", parts[i], "' is not a section"));
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = v;
  origins[path] = "--set " + ov;
  // a replaced section loses the origins of its old children
  for (auto it = origins.begin(); it != origins.end();) {
    if (it->first.rfind(path + ".", 0) == 0) it = origins.erase(it); else ++it;
  }
}

void collect_leaf_paths(const SectionInfo& info, const std::string& prefix, std::vector<std::string>& out) {
  for (const auto& f : info.fields) {
    std::string p = join(prefix, f.name);
    if (f.kind == Kind::section) collect_leaf_paths(*f.section, p, out);
    out.push_back(p);
  }
}

struct Parser {
  const SectionInfo& root;
  const Origins& origins;

  std::string where(const std::string& path) const {
    auto it = origins.find(path);
    return it == origins.end() ? std::string() : " (" + it->second + ")";
  }

  static std::string show(const YAML::Node& n) {
    if (n.IsScalar()) return "'" + n.Scalar() + "'";
    if (n.IsSequence()) return "a list";
    if (n.IsMap()) return "a mapping";
    return "nothing";
  }

  [[noreturn]] void fail(const std::string& path, const YAML::Node& n, const std::string& problem) const {
    throw ConfigError(str(path, " = ", show(n), where(path), ": ", problem));
  }

  std::string suggestion(const SectionInfo& info, const std::string& prefix, const std::string& key) const {
    size_t best = std::numeric_limits<size_t>::max();
    std::string best_name;
    for (const auto& f : info.fields) {
      size_t d = edit_distance(key, f.name);
      if (d < best) { best = d; best_name = f.name; }
    }
    size_t tol = std::max<size_t>(2, key.size() / 3);
    if (!best_name.empty() && best <= tol) return join(prefix, best_name);
    // same name elsewhere?
    std::vector<std::string> all;
    collect_leaf_paths(root, "", all);
    best = std::numeric_limits<size_t>::max();
    for (const auto& p : all) {
      auto dot = p.rfind('.');
      std::string leaf = dot == std::string::npos ? p : p.substr(dot + 1);
      size_t d = edit_distance(key, leaf);
      if (d < best) { best = d; best_name = p; }
    }
    if (best <= 1) return best_name;
    return "";
  }

  void unknown(const SectionInfo& info, const std::string& prefix, const std::string& key) const {
    std::string path = join(prefix, key);
    std::string msg = str("unknown config key '", path, "'", where(path));
    std::string s = suggestion(info, prefix, key);
    if (!s.empty()) msg += str("; did you mean '", s, "'?");
    std::string valid;
    for (const auto& f : info.fields) valid += (valid.empty() ? "" : ", ") + f.name;
    if (prefix.empty()) valid += ", include";
    msg += str(" (valid keys", prefix.empty() ? "" : " in '" + prefix + "'", ": ", valid,
               "; `subq config --explain` lists them all)");
    throw ConfigError(msg);
  }

  int64_t as_int(const std::string& path, const YAML::Node& n) const {
    if (!n.IsScalar()) fail(path, n, "expected an integer");
    const std::string& s = n.Scalar();
    try {
      size_t pos = 0;
      long long v = std::stoll(s, &pos, 0);
      if (pos == s.size()) return v;
    } catch (...) {
    }
    try {
      size_t pos = 0;
      double d = std::stod(s, &pos);
      if (pos == s.size() && std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.2e18)
        return static_cast<int64_t>(d);
    } catch (...) {
    }
    fail(path, n, "expected an integer");
  }

  double as_num(const std::string& path, const YAML::Node& n) const {
    if (!n.IsScalar()) fail(path, n, "expected a number");
    std::string s = n.Scalar();
    std::string low = s;
    std::transform(low.begin(), low.end(), low.begin(), ::tolower);
    if (low == ".nan" || low == ".inf" || low == "-.inf" || low == "+.inf" || low == "nan" || low == "inf")
      fail(path, n, "expected a finite number");
    try {
      size_t pos = 0;
      double d = std::stod(s, &pos);
      if (pos == s.size()) {
        if (!std::isfinite(d)) fail(path, n, "expected a finite number");
        return d;
      }
    } catch (const ConfigError&) {
      throw;
    } catch (...) {
    }
    fail(path, n, "expected a number (e.g. 3e-4)");
  }

  bool as_bool(const std::string& path, const YAML::Node& n) const {
    if (n.IsScalar()) {
      std::string s = n.Scalar();
      std::transform(s.begin(), s.end(), s.begin(), ::tolower);
      if (s == "true" || s == "yes" || s == "on") return true;
      if (s == "false" || s == "no" || s == "off") return false;
    }
    fail(path, n, "expected true or false");
  }

  std::string as_str(const FieldInfo& f, const std::string& path, const YAML::Node& n) const {
    if (!n.IsScalar()) fail(path, n, "expected a string");
    std::string s = n.Scalar();
    check_choice(f, path, n, s);
    if (!f.allow_empty && s.empty()) fail(path, n, "must not be empty");
    return s;
  }

  void check_choice(const FieldInfo& f, const std::string& path, const YAML::Node& n, const std::string& s) const {
    if (f.choices.empty()) return;
    if (std::find(f.choices.begin(), f.choices.end(), s) != f.choices.end()) return;
    std::string list, near;
    size_t best = std::numeric_limits<size_t>::max();
    for (const auto& c : f.choices) {
      list += (list.empty() ? "" : ", ") + c;
      size_t d = edit_distance(s, c);
      if (d < best) { best = d; near = c; }
    }
    std::string hint = best <= std::max<size_t>(2, s.size() / 3) ? str("; did you mean '", near, "'?") : "";
    fail(path, n, str("must be one of: ", list, hint));
  }

  void check_bounds(const FieldInfo& f, const std::string& path, const YAML::Node& n, double v) const {
    if (f.min) {
      bool bad = f.min_inclusive ? v < *f.min : v <= *f.min;
      if (bad) fail(path, n, str("must be ", f.min_inclusive ? ">= " : "> ", *f.min));
    }
    if (f.max) {
      bool bad = f.max_inclusive ? v > *f.max : v >= *f.max;
      if (bad) fail(path, n, str("must be ", f.max_inclusive ? "<= " : "< ", *f.max));
    }
  }

  void parse_section(const SectionInfo& info, void* obj, const YAML::Node& node, const std::string& prefix) const {
    if (!node.IsMap()) fail(prefix, node, "expected a section (a mapping of keys)");
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.Scalar();
      const FieldInfo* f = info.find(key);
      if (!f) unknown(info, prefix, key);
      parse_field(*f, f->member(obj), it->second, join(prefix, key));
    }
    for (const auto& c : info.checks) {
      std::string msg = c.fn(obj);
      if (!msg.empty()) {
        std::string path = join(prefix, c.key);
        throw ConfigError(str(path, where(path), ": ", msg));
      }
    }
  }

  void parse_field(const FieldInfo& f, void* m, const YAML::Node& n, const std::string& path) const {
    if (n.IsNull() && f.kind != Kind::string)
      fail(path, n, str("has no value; give a ", kind_name(f.kind), " or remove the key"));
    switch (f.kind) {
      case Kind::boolean: *static_cast<bool*>(m) = as_bool(path, n); break;
      case Kind::integer: {
        int64_t v = as_int(path, n);
        check_bounds(f, path, n, static_cast<double>(v));
        *static_cast<int64_t*>(m) = v;
        break;
      }
      case Kind::number: {
        double v = as_num(path, n);
        check_bounds(f, path, n, v);
        *static_cast<double*>(m) = v;
        break;
      }
      case Kind::string:
        *static_cast<std::string*>(m) = n.IsNull() ? std::string() : as_str(f, path, n);
        break;
      case Kind::string_list:
      case Kind::integer_list:
      case Kind::number_list: {
        if (!n.IsSequence()) fail(path, n, str("expected a list, e.g. [a, b]"));
        size_t i = 0;
        if (f.kind == Kind::string_list) {
          auto& out = *static_cast<std::vector<std::string>*>(m);
          out.clear();
          for (const auto& e : n) out.push_back(as_str(f, str(path, "[", i++, "]"), e));
        } else if (f.kind == Kind::integer_list) {
          auto& out = *static_cast<std::vector<int64_t>*>(m);
          out.clear();
          for (const auto& e : n) {
            std::string p = str(path, "[", i++, "]");
            int64_t v = as_int(p, e);
            check_bounds(f, p, e, static_cast<double>(v));
            out.push_back(v);
          }
        } else {
          auto& out = *static_cast<std::vector<double>*>(m);
          out.clear();
          for (const auto& e : n) {
            std::string p = str(path, "[", i++, "]");
            double v = as_num(p, e);
            check_bounds(f, p, e, v);
            out.push_back(v);
          }
        }
        break;
      }
      case Kind::section: parse_section(*f.section, m, n, path); break;
    }
  }
};

std::string fmt_double(double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // keep it a float when read back as YAML ("1" -> "1.0")
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  YAML::Node n;
  try {
    n = YAML::Load(s);
  } catch (...) {
    return true;
  }
  if (!n.IsScalar() || n.Scalar() != s) return true;
  static const char* special[] = {"true", "false", "yes", "no", "on", "off", "null", "~", "True", "False", "Null"};
  for (auto* w : special)
    if (s == w) return true;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end && *end == '\0';
}

void emit_string(YAML::Emitter& out, const std::string& s) {
  if (needs_quotes(s)) out << YAML::DoubleQuoted << s;
  else out << s;
}

void emit_section(YAML::Emitter& out, const SectionInfo& info, const void* obj, bool docs) {
  out << YAML::BeginMap;
  for (const auto& f : info.fields) {
    if (docs) out << YAML::Comment(f.doc);
    out << YAML::Key << f.name << YAML::Value;
    void* m = f.member(const_cast<void*>(obj));
    switch (f.kind) {
      case Kind::boolean: out << (*static_cast<bool*>(m) ? "true" : "false"); break;
      case Kind::integer: out << *static_cast<int64_t*>(m); break;
      case Kind::number: out << fmt_double(*static_cast<double*>(m)); break;
      case Kind::string: emit_string(out, *static_cast<std::string*>(m)); break;
      case Kind::string_list:
        out << YAML::Flow << YAML::BeginSeq;
        for (const auto& s : *static_cast<std::vector<std::string>*>(m)) emit_string(out, s);
        out << YAML::EndSeq;
        break;
      case Kind::integer_list:
        out << YAML::Flow << YAML::BeginSeq;
        for (auto v : *static_cast<std::vector<int64_t>*>(m)) out << v;
        out << YAML::EndSeq;
        break;
      case Kind::number_list:
        out << YAML::Flow << YAML::BeginSeq;
        for (auto v : *static_cast<std::vector<double>*>(m)) out << fmt_double(v);
        out << YAML::EndSeq;
        break;
      case Kind::section: emit_section(out, *f.section, m, docs); break;
    }
  }
  out << YAML::EndMap;
}

std::string value_str(const FieldInfo& f, const void* m) {
  switch (f.kind) {
    case Kind::boolean: return *static_cast<const bool*>(m) ? "true" : "false";
    case Kind::integer: return std::to_string(*static_cast<const int64_t*>(m));
    case Kind::number: return fmt_double(*static_cast<const double*>(m));
    case Kind::string: {
      const auto& s = *static_cast<const std::string*>(m);
      return s.empty() ? "\"\"" : s;
    }
    case Kind::string_list: {
      std::string r = "[";
      for (const auto& s : *static_cast<const std::vector<std::string>*>(m)) r += (r.size() > 1 ? ", " : "") + s;
      return r + "]";
    }
    case Kind::integer_list: {
      std::string r = "[";
      for (auto v : *static_cast<const std::vector<int64_t>*>(m)) r += (r.size() > 1 ? ", " : "") + std::to_string(v);
      return r + "]";
    }
    case Kind::number_list: {
      std::string r = "[";
      for (auto v : *static_cast<const std::vector<double>*>(m)) r += (r.size() > 1 ? ", " : "") + fmt_double(v);
      return r + "]";
    }
    case Kind::section: return "";
  }
  return "";
}

std::string num_str(double v) {
  if (std::floor(v) == v && std::fabs(v) < 1e15) return std::to_string(static_cast<long long>(v));
  return fmt_double(v);
}

void describe_rec(const SectionInfo& info, const void* obj, const std::string& prefix, std::vector<KeyDoc>& out) {
  for (const auto& f : info.fields) {
    std::string path = join(prefix, f.name);
    void* m = f.member(const_cast<void*>(obj));
    if (f.kind == Kind::section) {
      describe_rec(*f.section, m, path, out);
      continue;
    }
    KeyDoc d;
    d.path = path;
    d.type = kind_name(f.kind);
    d.default_value = value_str(f, m);
    d.doc = f.doc;
    std::string c;
    if (f.min) c += str(f.min_inclusive ? ">=" : ">", num_str(*f.min));
    if (f.max) c += str(c.empty() ? "" : ", ", f.max_inclusive ? "<=" : "<", num_str(*f.max));
    if (!f.choices.empty()) {
      std::string l;
      for (const auto& ch : f.choices) l += (l.empty() ? "" : "|") + ch;
      c += (c.empty() ? "" : ", ") + l;
    }
    if (!f.allow_empty) c += (c.empty() ? "" : ", ") + std::string("non-empty");
    d.constraints = c;
    out.push_back(d);
  }
}

}  // namespace

void load_into(const SectionInfo& info, void* out, const Source& src) {
  Origins origins;
  std::vector<fs::path> stack;
  YAML::Node root(YAML::NodeType::Map);
  if (!src.text.empty()) {
    root = load_text(src.text, src.path.empty() ? "<text>" : src.path, fs::current_path(), stack, origins);
  } else if (!src.path.empty()) {
    root = load_file(src.path, stack, origins, "");
  }
  for (const auto& layer : src.layers) merge(root, load_file(layer, stack, origins, ""));
  for (const auto& ov : src.overrides) apply_override(root, ov, origins);
  Parser p{info, origins};
  p.parse_section(info, out, root, "");
}

std::string to_yaml(const SectionInfo& info, const void* obj, bool with_docs) {
  YAML::Emitter out;
  out.SetIndent(2);
  emit_section(out, info, obj, with_docs);
  std::string s = out.c_str();
  if (s.empty() || s.back() != '\n') s += '\n';
  return s;
}

std::vector<KeyDoc> describe_keys(const SectionInfo& info) {
  auto def = info.make_default();
  std::vector<KeyDoc> out;
  describe_rec(info, def.get(), "", out);
  return out;
}

std::string explain(const SectionInfo& info, const std::string& prefix) {
  auto keys = describe_keys(info);
  std::ostringstream os;
  size_t w = 0;
  for (const auto& k : keys)
    if (prefix.empty() || k.path.rfind(prefix, 0) == 0) w = std::max(w, k.path.size());
  std::string section;
  size_t shown = 0;
  for (const auto& k : keys) {
    if (!prefix.empty() && k.path.rfind(prefix, 0) != 0) continue;
    std::string sec = k.path.substr(0, k.path.find('.'));
    if (sec != section) {
      os << (shown ? "\n" : "") << sec << ":\n";
      section = sec;
    }
    os << "  " << k.path << std::string(w - k.path.size() + 2, ' ') << k.type << " = " << k.default_value;
    if (!k.constraints.empty()) os << "  {" << k.constraints << "}";
    os << "\n" << std::string(w + 4, ' ') << k.doc << "\n";
    ++shown;
  }
  if (!shown) throw UsageError(str("no config key starts with '", prefix, "'; run `subq config --explain` for all keys"));
  return os.str();
}

}  // namespace subq::config
