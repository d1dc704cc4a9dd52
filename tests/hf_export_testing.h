// hf_export_testing.h — running scripts/check_hf_export.py from the model tests: the exported folders are
// loaded by Hugging Face transformers (and flash-linear-attention for GDN) in Python and compared with
// subq's reference outputs. Each case is "out_dir:reference.safetensors"; the script prints one JSON
// line per case and exits 3 when its Python packages are not importable (127: no interpreter).
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "subq_catch.h"
#include "test_support.h"

namespace subq::test {

struct HfExportCheck {
  bool importable = false;               // false: skip the test (the Python side is missing)
  int rc = 0;                            // the script's exit status
  std::string out;                       // its whole output
  std::vector<nlohmann::json> cases;     // one parsed JSON line per case
};

// Runs the check with $SUBQ_PYTHON (default python3) over `cases`.
inline HfExportCheck run_hf_export_check(const std::vector<std::string>& cases) {
  const char* py = std::getenv("SUBQ_PYTHON");
  std::string cmd = std::string(py ? py : "python3") + " '" + source_dir() + "/scripts/check_hf_export.py'";
  for (const auto& c : cases) cmd += " --case '" + c + "'";
  const ShellRun r = run_shell(cmd);
  HfExportCheck h;
  h.rc = r.rc;
  h.out = r.out;
  h.importable = r.rc != 3 && r.rc != 127;
  size_t at = 0;
  while (at < r.out.size()) {
    size_t end = r.out.find('\n', at);
    if (end == std::string::npos) end = r.out.size();
    const std::string line = r.out.substr(at, end - at);
    if (!line.empty() && line[0] == '{') {
      INFO(line);
      h.cases.push_back(nlohmann::json::parse(line));
      REQUIRE(h.cases.back().contains("max_abs_diff"));
    }
    at = end + 1;
  }
  return h;
}

}  // namespace subq::test
