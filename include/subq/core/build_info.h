// build_info.h — what was built: commit (with -dirty), version, build type, compiler.
// The definitions are generated at build time by cmake/write_build_info.cmake.
#pragma once

namespace subq {
const char* build_commit();
const char* build_version();
const char* build_type();
const char* build_compiler();
}  // namespace subq
