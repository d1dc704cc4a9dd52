// schema.h — typed configuration structs with a documented schema, without macros.
//
// A config section is a plain struct whose members have their defaults as initialisers and which
// describes itself once:
//
//   struct OptimConfig {
//     double lr = 3e-4;
//     std::string name = "adamw";
//     static void describe(subq::config::Section<OptimConfig>& s) {
//       s.field("lr", &OptimConfig::lr, "peak learning rate").min(0, /*inclusive=*/false);
//       s.field("name", &OptimConfig::name, "optimizer").choices({"adamw", "sgd"});
//     }
//   };
//
// Nested sections are fields whose type has its own describe(). Supported leaf types: bool, int64_t,
// double, std::string, std::vector<std::string|int64_t|double>. The schema knows each key's type,
// default (read from a default-constructed struct), doc string and constraints; the loader
// (config_loader.h) uses it to parse, validate, explain and emit configs. YAML never appears here, so
// this header is cheap to include anywhere.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace subq::config {

enum class Kind { boolean, integer, number, string, string_list, integer_list, number_list, section };
const char* kind_name(Kind k);

struct SectionInfo;

// One key of a section. Accessors work on a type-erased pointer to the struct holding the field.
struct FieldInfo {
  std::string name;
  Kind kind;
  std::string doc;
  std::function<void*(void*)> member;                 // struct* -> member*
  const SectionInfo* section = nullptr;               // for Kind::section
  std::optional<double> min, max;                     // numeric bounds
  bool min_inclusive = true, max_inclusive = true;
  std::vector<std::string> choices;                   // allowed strings (string and string_list)
  bool allow_empty = true;                            // strings: may be ""
};

// Cross-field validation: returns "" when fine, else a message; `key` names the offending key
// (relative to the section) so errors point at it.
struct SectionCheck {
  std::string key;
  std::function<std::string(const void*)> fn;
};

struct SectionInfo {
  std::string type_name;
  std::vector<FieldInfo> fields;
  std::vector<SectionCheck> checks;
  std::function<std::shared_ptr<void>()> make_default;  // default-constructed instance
  const FieldInfo* find(const std::string& name) const;
};

template <typename T>
const SectionInfo& schema_of();

// Fluent handle to refine the field just declared.
class FieldRef {
 public:
  explicit FieldRef(FieldInfo* f) : f_(f) {}
  FieldRef& min(double v, bool inclusive = true) { f_->min = v; f_->min_inclusive = inclusive; return *this; }
  FieldRef& max(double v, bool inclusive = true) { f_->max = v; f_->max_inclusive = inclusive; return *this; }
  FieldRef& range(double lo, double hi) { return min(lo).max(hi); }
  FieldRef& choices(std::vector<std::string> c) { f_->choices = std::move(c); return *this; }
  FieldRef& non_empty() { f_->allow_empty = false; return *this; }

 private:
  FieldInfo* f_;
};

namespace detail {
template <typename M> struct kind_of;
template <> struct kind_of<bool> { static constexpr Kind value = Kind::boolean; };
template <> struct kind_of<int64_t> { static constexpr Kind value = Kind::integer; };
template <> struct kind_of<double> { static constexpr Kind value = Kind::number; };
template <> struct kind_of<std::string> { static constexpr Kind value = Kind::string; };
template <> struct kind_of<std::vector<std::string>> { static constexpr Kind value = Kind::string_list; };
template <> struct kind_of<std::vector<int64_t>> { static constexpr Kind value = Kind::integer_list; };
template <> struct kind_of<std::vector<double>> { static constexpr Kind value = Kind::number_list; };

template <typename T, typename = void> struct has_describe : std::false_type {};
template <typename T>
struct has_describe<T, std::void_t<decltype(&T::describe)>> : std::true_type {};
}  // namespace detail

template <typename T>
class Section {
 public:
  explicit Section(SectionInfo* info) : info_(info) {}

  template <typename M>
  FieldRef field(const std::string& name, M T::*ptr, const std::string& doc) {
    FieldInfo f;
    f.name = name;
    f.doc = doc;
    f.member = [ptr](void* obj) -> void* { return &(static_cast<T*>(obj)->*ptr); };
    if constexpr (detail::has_describe<M>::value) {
      f.kind = Kind::section;
      f.section = &schema_of<M>();
    } else {
      f.kind = detail::kind_of<M>::value;
    }
    info_->fields.push_back(std::move(f));
    return FieldRef(&info_->fields.back());
  }

  // A cross-field check; `fn` returns "" when the struct is valid, else the error message.
  void check(const std::string& key, std::function<std::string(const T&)> fn) {
    info_->checks.push_back({key, [fn](const void* p) { return fn(*static_cast<const T*>(p)); }});
  }

 private:
  SectionInfo* info_;
};

template <typename T>
const SectionInfo& schema_of() {
  static const SectionInfo info = [] {
    SectionInfo s;
    s.type_name = typeid(T).name();
    s.fields.reserve(64);  // FieldRef keeps a pointer into this vector while describing
    Section<T> sec(&s);
    T::describe(sec);
    s.make_default = [] { return std::static_pointer_cast<void>(std::make_shared<T>()); };
    return s;
  }();
  return info;
}

}  // namespace subq::config
