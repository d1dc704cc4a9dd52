// test_prepare.cpp — `subq prepare code` as a library: glob and subtree matching, the text checks,
// the deterministic path-hash split, discovery (extensions, excluded directories, size limit, a file
// reached twice), and whole runs on a small generated tree: skipped files reported in the manifest,
// byte-identical output for 1 and 3 threads, documents that decode back to their files separated by
// eos, refusal to overwrite without force, and replacement with force.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/data/corpus.h"
#include "subq/data/hash.h"
#include "subq/data/shards.h"
#include "subq/data/tokenizer.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using namespace subq::data;

namespace {

struct Tree {
  fs::path root;
  explicit Tree(const std::string& tag) {
    root = fs::temp_directory_path() / ("subq-prep-" + tag + "-" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root);
  }
  ~Tree() { fs::remove_all(root); }
  void put(const std::string& rel, const std::string& bytes) const {
    fs::create_directories((root / rel).parent_path());
    std::ofstream(root / rel, std::ios::binary) << bytes;
  }
  std::string operator/(const std::string& rel) const { return (root / rel).string(); }
};

std::string py_source(int i) {
  std::string s = "# module " + std::to_string(i) + "\n";
  for (int k = 0; k < 6 + i % 5; ++k)
    s += "def f" + std::to_string(k) + "_" + std::to_string(i) + "(x, y=" + std::to_string(k) +
         "):\n    \"\"\"Return x plus y.\"\"\"\n    return x + y * " + std::to_string(i) + "\n\n";
  return s;
}

// A small source tree with some files that must be skipped.
void make_tree(const Tree& t) {
  for (int i = 0; i < 24; ++i) t.put("pkg/mod" + std::to_string(i) + ".py", py_source(i));
  for (int i = 0; i < 6; ++i)
    t.put("include/bits/h" + std::to_string(i) + ".h",
          "#pragma once\n// héllo → " + std::to_string(i) + "\ntemplate <typename T> T twice(T x) { return x + x; }\n");
  t.put("include/vector", "#pragma once\n#include <bits/h0.h>\nnamespace std { class vector; }\n");
  t.put("pkg/empty.py", "");
  t.put("pkg/blob.py", std::string("abc\0def", 7));
  t.put("pkg/latin1.py", "x = '\xe9t\xe9'\n");
  t.put("pkg/huge.py", std::string(5000, '#'));
  t.put("pkg/copy.py", py_source(3));  // same bytes as mod3.py
  t.put("pkg/literal.py", "s = '<|endoftext|>'\n");
  t.put("pkg/notes.txt", "not taken: wrong extension\n");
  t.put("pkg/__pycache__/mod1.cpython-311.py", "cached = 1\n");
  t.put("pkg/.hidden/secret.py", "hidden = 1\n");
}

PrepareOptions base_opts(const Tree& t, const std::string& out) {
  PrepareOptions o;
  o.inputs = {t / "pkg", t / "include"};
  o.out = out;
  o.vocab_size = 300;
  o.val_fraction = 0.25;
  o.max_file_bytes = 4096;
  o.shard_tokens = 700;
  o.threads = 1;
  o.show_progress = false;
  o.command = "test";
  return o;
}

std::string slurp(const fs::path& p) { return subq::fsx::read_file(p.string()); }

}  // namespace

TEST_CASE("glob patterns and subtree matching", "[prepare]") {
  CHECK(glob_match("*.py", "a.py"));
  CHECK_FALSE(glob_match("*.py", "d/a.py"));
  CHECK(glob_match("**/*.py", "a.py"));
  CHECK(glob_match("**/*.py", "d/e/a.py"));
  CHECK(glob_match("d/**", "d/e/a.py"));
  CHECK(glob_match("src/*/x?.[ch]", "src/lib/x1.h"));
  CHECK_FALSE(glob_match("src/*/x?.[ch]", "src/lib/x1.o"));
  CHECK(glob_match("[!a]*", "bcd"));
  CHECK_FALSE(glob_match("[!a]*", "abc"));
  CHECK(glob_match("[a-c]x", "bx"));
  CHECK(path_or_parent_matches("json", "json/decoder.py"));
  CHECK(path_or_parent_matches("json/", "json/decoder.py"));
  CHECK(path_or_parent_matches("./asyncio/*", "asyncio/sub/x.py"));
  CHECK_FALSE(path_or_parent_matches("json", "jsonx/decoder.py"));
  CHECK_FALSE(path_or_parent_matches("json", "a/json.py"));
}

TEST_CASE("text checks name binary and invalid UTF-8 input", "[prepare]") {
  CHECK(text_problem("plain ascii\n").empty());
  CHECK(text_problem("h\xc3\xa9llo \xe2\x86\x92 \xf0\x9f\x98\x80").empty());
  CHECK(text_problem(std::string("ab\0c", 4)) == "binary: NUL byte at offset 2");
  CHECK(text_problem("caf\xe9!").find("invalid UTF-8 at byte 3") == 0);
  CHECK(text_problem("\xc0\xaf").find("invalid UTF-8") == 0);          // overlong
  CHECK(text_problem("\xed\xa0\x80").find("surrogate") != std::string::npos);
  CHECK(text_problem("\xe2\x86").find("cut off") != std::string::npos);
  CHECK(text_problem("\xf4\x90\x80\x80").find("invalid UTF-8") == 0);  // > U+10FFFF
}

TEST_CASE("the split is a stable function of path and seed", "[prepare]") {
  // Pinned values: changing the hash or the rule would silently move files between splits.
  Fnv1a h;
  h.update_u64(0);
  h.update("json/decoder.py");
  const double u = static_cast<double>(h.digest() >> 11) * 0x1.0p-53;
  CHECK(is_held_out("json/decoder.py", u + 1e-9, 0, {}));
  CHECK_FALSE(is_held_out("json/decoder.py", u, 0, {}));
  int held = 0, differ = 0;
  for (int i = 0; i < 4000; ++i) {
    const std::string p = "dir" + std::to_string(i % 37) + "/file" + std::to_string(i) + ".py";
    const bool a = is_held_out(p, 0.1, 0, {});
    CHECK(a == is_held_out(p, 0.1, 0, {}));
    held += a;
    differ += a != is_held_out(p, 0.1, 1, {});
  }
  CHECK(held > 300);
  CHECK(held < 500);
  CHECK(differ > 100);  // the seed changes the split
  CHECK(is_held_out("asyncio/events.py", 0.0, 0, {"asyncio"}));
  CHECK_FALSE(is_held_out("json/x.py", 0.0, 0, {"asyncio"}));
}

TEST_CASE("discovery: extensions, excluded directories, size limit, globs, a file seen twice", "[prepare]") {
  Tree t("disc");
  make_tree(t);
  fs::create_symlink(t / "pkg/mod1.py", t / "pkg/link.py");
  PrepareOptions o = base_opts(t, t / "out");
  Discovery d = discover_sources(o);
  std::set<std::string> rels;
  for (const auto& f : d.files) rels.insert(f.rel);
  CHECK(rels.count("mod0.py"));
  CHECK(rels.count("bits/h0.h"));
  CHECK(rels.count("vector"));  // extension-less header
  CHECK_FALSE(rels.count("notes.txt"));
  CHECK_FALSE(rels.count("__pycache__/mod1.cpython-311.py"));
  CHECK_FALSE(rels.count(".hidden/secret.py"));
  CHECK_FALSE(rels.count("huge.py"));
  std::map<std::string, std::string> kinds;
  for (const auto& s : d.skipped) kinds[fs::path(s.path).filename().string()] = s.kind;
  CHECK(kinds["huge.py"] == "too_large");
  CHECK((kinds["link.py"] == "same_file" || kinds["mod1.py"] == "same_file"));
  // files come sorted within each input, inputs in order
  for (size_t i = 1; i < d.files.size(); ++i)
    if (d.files[i].input == d.files[i - 1].input) CHECK(d.files[i - 1].rel < d.files[i].rel);

  PrepareOptions g = o;
  g.inputs = {t.root.string() + "/pkg/mod1*.py"};
  Discovery dg = discover_sources(g);
  std::set<std::string> grels;
  for (const auto& f : dg.files) grels.insert(f.rel);
  CHECK(grels == std::set<std::string>{"mod1.py", "mod10.py", "mod11.py", "mod12.py", "mod13.py", "mod14.py",
                                       "mod15.py", "mod16.py", "mod17.py", "mod18.py", "mod19.py"});
  g.inputs = {t.root.string() + "/**/*.txt"};  // a glob naming files takes them whatever their extension
  CHECK(discover_sources(g).files.size() == 1);
  g.inputs = {t / "nope"};
  CHECK_THROWS_AS(discover_sources(g), subq::InputError);
}

TEST_CASE("prepare: skip reporting, decodable documents, same bytes for any thread count", "[prepare]") {
  Tree t("run");
  make_tree(t);
  PrepareOptions o = base_opts(t, t / "out1");
  const nlohmann::json m = prepare_code(o);

  // skipped files, each with its reason
  std::map<std::string, std::string> kinds;
  for (const auto& s : m["skipped"]) kinds[fs::path(s["path"].get<std::string>()).filename().string()] = s["kind"];
  CHECK(kinds["empty.py"] == "empty");
  CHECK(kinds["blob.py"] == "binary");
  CHECK(kinds["latin1.py"] == "invalid_utf8");
  CHECK(kinds["huge.py"] == "too_large");
  CHECK(kinds["mod3.py"] == "duplicate");  // copy.py has the same bytes and comes first in path order
  CHECK(kinds.count("copy.py") == 0);
  CHECK(m["skipped_counts"]["binary"] == 1);

  // per-file entries, split totals and shards agree with each other and with the files on disk
  const fs::path out = t / "out1";
  REQUIRE(fs::exists(out / "manifest.json"));
  CHECK(nlohmann::json::parse(slurp(out / "manifest.json")) == m);
  auto tok = Tokenizer::from_file((out / "tokenizer.json").string());
  CHECK(m["tokenizer"]["checksum"] == hash_hex(fnv1a64(slurp(out / "tokenizer.json"))));
  const int32_t eos = m["tokenizer"]["eos_id"];
  CHECK(tok.eos_id() == std::optional<int32_t>(eos));
  for (const char* split : {"train", "val"}) {
    INFO(split);
    const auto& s = m["splits"][split];
    CHECK(s["files"].get<int64_t>() > 0);
    uint64_t files = 0, bytes = 0, tokens = 0;
    std::vector<std::string> texts;
    for (const auto& f : m["files"])
      if (f["split"] == split) {
        ++files;
        bytes += f["bytes"].get<uint64_t>();
        tokens += f["tokens"].get<uint64_t>() + 1;
        texts.push_back(slurp(f["path"].get<std::string>()));
        CHECK(f["checksum"] == hash_hex(fnv1a64(texts.back())));
      }
    CHECK(s["files"] == files);
    CHECK(s["bytes"] == bytes);
    CHECK(s["tokens"] == tokens);
    ShardSet set((out / split).string());
    CHECK(set.size() == tokens);
    CHECK(set.eos_id() == std::optional<int32_t>(eos));
    for (const auto& sh : set.shards()) CHECK_NOTHROW(sh.verify());
    CHECK(set.shards().size() == s["shards"].size());
    // the stream is the files in order, each followed by eos (so the literal "<|endoftext|>" in
    // literal.py must have been encoded as text: as a separator it would split that document)
    std::vector<int64_t> all(set.size());
    set.read(0, all.size(), all.data());
    CHECK(all.back() == eos);
    std::vector<std::string> docs;
    std::vector<int32_t> cur;
    for (int64_t id : all) {
      if (id == eos) {
        docs.push_back(tok.decode(cur));
        cur.clear();
      } else {
        cur.push_back(static_cast<int32_t>(id));
      }
    }
    CHECK(docs == texts);
  }
  bool literal_found = false;
  for (const auto& f : m["files"]) literal_found = literal_found || f["rel"] == "literal.py";
  CHECK(literal_found);

  // 3 threads: the same bytes
  PrepareOptions o3 = o;
  o3.out = t / "out3";
  o3.threads = 3;
  prepare_code(o3);
  size_t compared = 0;
  for (const auto& e : fs::recursive_directory_iterator(out)) {
    if (!e.is_regular_file() || e.path().filename() == "manifest.json") continue;  // it holds timings
    const fs::path rel = e.path().lexically_relative(out);
    INFO(rel.string());
    CHECK(slurp(e.path()) == slurp(t.root / "out3" / rel));
    ++compared;
  }
  CHECK(compared == 1 + m["splits"]["train"]["shards"].size() + m["splits"]["val"]["shards"].size());
  CHECK(m["splits"]["train"]["shards"].size() > 1);  // several shards, so order across shards is tested
  auto m3 = nlohmann::json::parse(slurp(t.root / "out3" / "manifest.json"));
  CHECK(m3["files"] == m["files"]);
  CHECK(m3["splits"] == m["splits"]);
}

TEST_CASE("prepare refuses a non-empty output unless forced, and replaces it whole", "[prepare]") {
  Tree t("force");
  make_tree(t);
  // train a tokenizer once and pass it in: --tokenizer copies it
  PrepareOptions o = base_opts(t, t / "out");
  prepare_code(o);
  const std::string tok_file = (t.root / "tok.json").string();
  fs::copy_file(t.root / "out" / "tokenizer.json", tok_file);
  const std::string before = slurp(t.root / "out" / "manifest.json");

  o.tokenizer = tok_file;
  o.val_fraction = 0.5;
  try {
    prepare_code(o);
    FAIL("overwrote without --force");
  } catch (const subq::UsageError& e) {
    CHECK(std::string(e.what()).find("--force") != std::string::npos);
  }
  CHECK(slurp(t.root / "out" / "manifest.json") == before);

  o.force = true;
  auto m = prepare_code(o);
  CHECK(m["options"]["val_fraction"] == 0.5);
  CHECK(m["tokenizer"]["source"] == tok_file);
  CHECK(slurp(t.root / "out" / "tokenizer.json") == slurp(tok_file));
  CHECK(nlohmann::json::parse(slurp(t.root / "out" / "manifest.json")) == m);
  for (const auto& e : fs::directory_iterator(t.root)) {  // no temporaries or old copies left
    const std::string n = e.path().filename().string();
    CHECK(n.find(".tmp-") == std::string::npos);
    CHECK(n.find(".old-") == std::string::npos);
  }
  // a failing run (input inside --out) leaves the output as it was
  const std::string now = slurp(t.root / "out" / "manifest.json");
  PrepareOptions bad = o;
  bad.inputs = {t / "out"};
  CHECK_THROWS_AS(prepare_code(bad), subq::UsageError);
  CHECK(slurp(t.root / "out" / "manifest.json") == now);
  // a temporary left by a killed run (its pid no longer lives) is removed by the next run
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  const fs::path stale = t.root / ("out.tmp-" + std::to_string(child) + "-12");
  fs::create_directories(stale / "train");
  prepare_code(o);
  CHECK_FALSE(fs::exists(stale));
  // a tokenizer without an end-of-text token: refused, and the half-built output is removed
  BpeTrainOptions bo;
  bo.vocab_size = 270;
  bo.special_tokens = {};
  bo.show_progress = false;
  const std::string no_eos = (t.root / "no-eos.json").string();
  train_bpe_texts({py_source(1), py_source(2)}, bo).save(no_eos);
  PrepareOptions ne = base_opts(t, t / "out-noeos");
  ne.tokenizer = no_eos;
  try {
    prepare_code(ne);
    FAIL("a tokenizer without eos was accepted");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("no end-of-text token") != std::string::npos);
  }
  for (const auto& e : fs::directory_iterator(t.root)) CHECK(e.path().filename().string().rfind("out-noeos", 0) != 0);
  // nothing usable
  PrepareOptions none = base_opts(t, t / "out-none");
  none.inputs = {t / "pkg/blob.py"};
  CHECK_THROWS_AS(prepare_code(none), subq::InputError);
  CHECK_FALSE(fs::exists(t.root / "out-none"));
}
