// test_safetensors.cpp — safetensors round trips for every dtype (values, shapes, metadata, empty and
// scalar tensors), the strict reader's errors on damaged files, and compatibility with the Python
// `safetensors` package in both directions (skipped when python3 cannot import it).
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "subq/core/error.h"
#include "subq/core/safetensors.h"
#include "subq_catch.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace {
subq::test::ShellRun run(const std::string& cmd) { return subq::test::run_shell(cmd); }

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("subq-st-" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_all(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

// One tensor per supported dtype, with values that exercise the whole range of each type.
subq::TensorMap all_dtypes() {
  torch::manual_seed(3);
  subq::TensorMap m;
  m["f64"] = torch::randn({3, 5}, torch::kFloat64);
  m["f32"] = torch::randn({7}, torch::kFloat32);
  m["f16"] = torch::randn({2, 3, 4}, torch::kFloat32).to(torch::kFloat16);
  m["bf16"] = torch::randn({4, 3}, torch::kFloat32).to(torch::kBFloat16);
  m["i64"] = torch::tensor({int64_t{-9000000000000LL}, int64_t{0}, int64_t{42}, int64_t{9000000000000LL}});
  m["i32"] = torch::randint(-100000, 100000, {6}, torch::kInt32);
  m["i16"] = torch::randint(-30000, 30000, {5}, torch::kInt16);
  m["i8"] = torch::randint(-128, 127, {9}, torch::kInt8);
  m["u8"] = torch::randint(0, 255, {2, 2}, torch::kUInt8);
  m["bool"] = torch::tensor({true, false, true});
  m["scalar"] = torch::tensor(3.5);
  m["empty"] = torch::zeros({0, 4});
  m["strided"] = torch::arange(12, torch::kFloat32).view({3, 4}).t();  // non-contiguous input
  return m;
}


bool python_has_safetensors() {
  static int have = -1;
  if (have < 0) have = run("python3 -c 'import safetensors.torch, torch'").rc == 0;
  return have == 1;
}

}  // namespace

TEST_CASE("safetensors round trip for every dtype", "[safetensors]") {
  auto dir = temp_dir();
  auto path = (dir / "all.safetensors").string();
  auto m = all_dtypes();
  subq::save_safetensors(path, m, {{"format", "test"}, {"note", "ünïcode ✓"}});
  auto f = subq::load_safetensors(path);
  REQUIRE(f.tensors.size() == m.size());
  for (const auto& [name, t] : m) {
    INFO(name);
    REQUIRE(f.tensors.count(name));
    const auto& r = f.tensors.at(name);
    CHECK(r.scalar_type() == t.scalar_type());
    CHECK(r.sizes() == t.sizes());
    CHECK(torch::equal(r, t));
  }
  CHECK(f.metadata.at("format") == "test");
  CHECK(f.metadata.at("note") == "ünïcode ✓");
  // header padded so the data section is 8-byte aligned
  std::string bytes = read_all(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  CHECK((8 + n) % 8 == 0);
  // no temp files left behind by the atomic write
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().filename().string().find(".tmp-") == std::string::npos;
  CHECK(files == 1);
  fs::remove_all(dir);
}

TEST_CASE("safetensors reader rejects damaged files with clear errors", "[safetensors]") {
  auto dir = temp_dir();
  auto good = (dir / "good.safetensors").string();
  subq::save_safetensors(good, {{"w", torch::ones({4, 4})}});
  const std::string bytes = read_all(good);
  auto expect_error = [&](const std::string& content, const std::string& needle) {
    auto p = dir / "bad.safetensors";
    write_all(p, content);
    try {
      subq::load_safetensors(p.string());
      FAIL("no error for " << needle);
    } catch (const subq::InputError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
      CHECK(std::string(e.what()).find(p.string()) != std::string::npos);
    }
  };
  expect_error("abc", "header length is missing");
  expect_error(bytes.substr(0, bytes.size() - 4), "truncated");
  std::string huge = bytes;
  huge[6] = '\x7f';
  expect_error(huge, "exceeds the file size");
  auto with_header = [&](const std::string& h) {
    std::string out(8, '\0');
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + h + std::string(64, '\0');
  };
  expect_error(with_header("{not json"), "not JSON");
  expect_error(with_header("[1,2]"), "not a JSON object");
  expect_error(with_header(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})"), "unsupported dtype");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})"), "needs 8");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[60,68]}})"), "beyond the data section");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})"), "non-negative");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[2]}})"), "needs dtype, shape and data_offsets");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})"),
               "overlap");
  expect_error(with_header(R"({"__metadata__":{"k":1}})"), "not a string");
  CHECK_THROWS_AS(subq::load_safetensors((dir / "missing.safetensors").string()), subq::InputError);
  CHECK_THROWS_AS(subq::save_safetensors((dir / "x.safetensors").string(),
                                         {{"c", torch::zeros({2}, torch::kComplexFloat)}}),
                  subq::InputError);
  fs::remove_all(dir);
}

TEST_CASE("safetensors files written here load in Python's safetensors", "[safetensors][python]") {
  if (!python_has_safetensors()) SUBQ_SKIP("python3 with safetensors and torch is not available");
  auto dir = temp_dir();
  auto path = (dir / "cpp.safetensors").string();
  auto m = all_dtypes();
  subq::save_safetensors(path, m, {{"who", "subq"}});
  std::string script = dir / "read.py";
  write_all(script,
            "import json, sys, torch\n"
            "from safetensors import safe_open\n"
            "from safetensors.torch import load_file\n"
            "t = load_file(sys.argv[1])\n"
            "with safe_open(sys.argv[1], 'pt') as f: meta = f.metadata()\n"
            "out = {k: {'dtype': str(v.dtype), 'shape': list(v.shape), 'sum': float(v.double().sum())} for k, v in t.items()}\n"
            "print(json.dumps({'tensors': out, 'meta': meta}))\n");
  auto r = run("python3 " + script + " " + path);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  CHECK(j["meta"]["who"] == "subq");
  const std::map<std::string, std::string> torch_names{
      {"f64", "torch.float64"}, {"f32", "torch.float32"}, {"f16", "torch.float16"}, {"bf16", "torch.bfloat16"},
      {"i64", "torch.int64"},   {"i32", "torch.int32"},   {"i16", "torch.int16"},   {"i8", "torch.int8"},
      {"u8", "torch.uint8"},    {"bool", "torch.bool"}};
  for (const auto& [name, t] : m) {
    INFO(name);
    auto e = j["tensors"][name];
    REQUIRE(e.is_object());
    if (torch_names.count(name)) CHECK(e["dtype"] == torch_names.at(name));
    CHECK(e["shape"].get<std::vector<int64_t>>() == t.sizes().vec());
    CHECK(e["sum"].get<double>() == Approx(t.to(torch::kFloat64).sum().item<double>()).epsilon(1e-12));
  }
  fs::remove_all(dir);
}

TEST_CASE("safetensors files written by Python load here", "[safetensors][python]") {
  if (!python_has_safetensors()) SUBQ_SKIP("python3 with safetensors and torch is not available");
  auto dir = temp_dir();
  auto path = (dir / "py.safetensors").string();
  std::string script = dir / "write.py";
  write_all(script,
            "import sys, torch\n"
            "from safetensors.torch import save_file\n"
            "d = {}\n"
            "for n, dt in [('f64', torch.float64), ('f32', torch.float32), ('f16', torch.float16), ('bf16', torch.bfloat16),\n"
            "              ('i64', torch.int64), ('i32', torch.int32), ('i16', torch.int16), ('i8', torch.int8), ('u8', torch.uint8)]:\n"
            "    d[n] = (torch.arange(24) - (0 if dt == torch.uint8 else 11)).reshape(2, 3, 4).to(dt)\n"
            "d['bool'] = torch.tensor([True, False, False, True])\n"
            "d['scalar'] = torch.tensor(-2.25)\n"
            "save_file(d, sys.argv[1], metadata={'from': 'python'})\n");
  auto r = run("python3 " + script + " " + path);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  auto f = subq::load_safetensors(path);
  CHECK(f.metadata.at("from") == "python");
  const std::map<std::string, torch::ScalarType> types{
      {"f64", torch::kFloat64}, {"f32", torch::kFloat32}, {"f16", torch::kFloat16}, {"bf16", torch::kBFloat16},
      {"i64", torch::kInt64},   {"i32", torch::kInt32},   {"i16", torch::kInt16},   {"i8", torch::kInt8},
      {"u8", torch::kUInt8}};
  for (const auto& [name, type] : types) {
    INFO(name);
    auto expect = (torch::arange(24) - (type == torch::kUInt8 ? 0 : 11)).reshape({2, 3, 4}).to(type);
    REQUIRE(f.tensors.count(name));
    CHECK(f.tensors.at(name).scalar_type() == type);
    CHECK(torch::equal(f.tensors.at(name), expect));
  }
  CHECK(torch::equal(f.tensors.at("bool"), torch::tensor({true, false, false, true})));
  CHECK(f.tensors.at("scalar").dim() == 0);
  CHECK(f.tensors.at("scalar").item<float>() == -2.25f);
  fs::remove_all(dir);
}
