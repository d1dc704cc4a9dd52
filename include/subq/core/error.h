// error.h — subq's error types and the CHECK macro family.
//
// Errors carry a message that names the input and the fix. Only apps/ turns them into exit codes:
//   UsageError / ConfigError / InputError -> exit 2 (the user's input is wrong),
//   RuntimeError / InternalError / anything else -> exit 1.
// SUBQ_CHECK* are for internal invariants: they throw InternalError with the failed expression and
// file:line. For user input, throw ConfigError/InputError with a helpful message instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace subq {

// Concatenates any streamable values into a string: str("x = ", 3, "!") == "x = 3!".
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual int exit_code() const { return 1; }
};

// Bad command line usage.
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// A configuration value (YAML file, include, --set override) is wrong.
class ConfigError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// An input file or directory (data, checkpoint, tokenizer) is missing or malformed.
class InputError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// Something failed while running (I/O, NaN policy, device failure).
class RuntimeError : public Error {
 public:
  using Error::Error;
};

// An internal invariant does not hold: a bug in subq.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace subq

#define SUBQ_CHECK(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) ::subq::detail::check_failed(#cond, __FILE__, __LINE__, ::subq::str("" __VA_ARGS__)); \
  } while (0)
#define SUBQ_CHECK_EQ(a, b, ...) SUBQ_CHECK((a) == (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
#define SUBQ_CHECK_NE(a, b, ...) SUBQ_CHECK((a) != (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
#define SUBQ_CHECK_LT(a, b, ...) SUBQ_CHECK((a) < (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
#define SUBQ_CHECK_LE(a, b, ...) SUBQ_CHECK((a) <= (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
#define SUBQ_CHECK_GT(a, b, ...) SUBQ_CHECK((a) > (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
#define SUBQ_CHECK_GE(a, b, ...) SUBQ_CHECK((a) >= (b), "(", (a), " vs ", (b), ") " __VA_ARGS__)
