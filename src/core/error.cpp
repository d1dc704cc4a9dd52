// error.cpp — the out-of-line part of the CHECK macros.
#include "subq/core/error.h"

namespace subq::detail {

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(str("internal check failed at ", file, ":", line, ": ", expr, msg.empty() ? "" : " ", msg,
                          " (this is a bug in subq; please report it with the command you ran)"));
}

}  // namespace subq::detail
