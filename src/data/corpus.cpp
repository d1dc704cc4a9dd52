// corpus.cpp — `subq prepare code`: source files -> tokenizer + train/val token shards + manifest
// (behaviour in subq/data/corpus.h).
//
// Decisions: three passes over the files. (1) Discovery walks the inputs without reading contents.
// (2) A parallel check reads each file once (size limit, NUL bytes, strict UTF-8, FNV-1a checksum);
// contents are not kept, so memory does not grow with the corpus. Duplicate contents are then dropped
// sequentially, in file order, so the kept copy does not depend on thread timing. (3) A parallel
// tokenization re-reads each kept file (from the page cache, normally), checks it still has the
// checksum of pass 2 (a file edited mid-run would make the manifest lie), and encodes it; the main
// thread writes the results strictly in file order through a bounded reorder window (workers never
// run more than `window` files ahead of the writer), so output bytes do not depend on the thread count.
// No Torch in this file.
#include "subq/data/corpus.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "subq/core/build_info.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/progress.h"
#include "subq/core/run_dir.h"
#include "subq/data/hash.h"
#include "subq/data/shards.h"
#include "subq/data/tokenizer.h"

namespace subq::data {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------------- defaults

const std::vector<std::string>& default_code_exts() {
  static const std::vector<std::string> e{".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".hpp", ".hxx",
                                          ".tcc", ".ipp", ".inl", ".cu", ".cuh", "none"};
  return e;
}

const std::vector<std::string>& always_excluded_dirs() {
  static const std::vector<std::string> d{".*", "__pycache__", "node_modules", "site-packages", "dist-packages"};
  return d;
}

const std::vector<std::string>& default_corpus_excluded_dirs() {
  // The stdlib's test suites hold deliberately broken and binary-ish data and would double the size;
  // config-* is the interpreter's build directory, lib-dynload compiled modules, ensurepip wheels.
  static const std::vector<std::string> d{"test", "tests", "idle_test", "config-*", "lib-dynload", "ensurepip"};
  return d;
}

namespace {

std::string python_stdlib_dir() {
  const char* py = std::getenv("SUBQ_PYTHON");
  std::string cmd = std::string(py && *py ? py : "python3") +
                    " -c 'import sysconfig;print(sysconfig.get_paths()[\"stdlib\"])' 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return "";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace

std::vector<std::string> default_code_inputs() {
  std::vector<std::string> out;
  std::error_code ec;
  const std::string py = python_stdlib_dir();
  if (!py.empty() && fs::is_directory(py, ec))
    out.push_back(py);
  else
    log::warn("default corpus: no Python standard library found (python3 did not answer); using the C++ headers only");
  std::vector<std::string> cxx;
  if (fs::is_directory("/usr/include/c++", ec))
    for (const auto& e : fs::directory_iterator("/usr/include/c++", ec))
      if (e.is_directory() && !e.is_symlink()) cxx.push_back(e.path().string());
  std::sort(cxx.begin(), cxx.end());
  if (cxx.empty()) log::warn("default corpus: no C++ standard headers in /usr/include/c++");
  out.insert(out.end(), cxx.begin(), cxx.end());
  if (out.empty())
    throw InputError("subq prepare code: the default corpus (Python standard library, /usr/include/c++) is not on "
                     "this machine; pass --input DIR_OR_GLOB");
  return out;
}

// -------------------------------------------------------------------------------------------- globs

namespace {

bool has_wildcard(std::string_view s) { return s.find_first_of("*?[") != std::string_view::npos; }

// One path component against one pattern component (no '/').
bool match_component(std::string_view p, std::string_view s) {
  size_t pi = 0, si = 0, star_p = std::string_view::npos, star_s = 0;
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star_p = pi++;
      star_s = si;
      continue;
    }
    if (pi < p.size()) {
      if (p[pi] == '?') {
        ++pi;
        ++si;
        continue;
      }
      if (p[pi] == '[') {
        size_t j = pi + 1;
        bool negate = false;
        if (j < p.size() && (p[j] == '!' || p[j] == '^')) {
          negate = true;
          ++j;
        }
        bool matched = false, closed = false;
        size_t first = j;
        for (; j < p.size(); ++j) {
          if (p[j] == ']' && j > first) {
            closed = true;
            break;
          }
          if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
            if (s[si] >= p[j] && s[si] <= p[j + 2]) matched = true;
            j += 2;
          } else if (p[j] == s[si]) {
            matched = true;
          }
        }
        if (closed) {
          if (matched != negate) {
            pi = j + 1;
            ++si;
            continue;
          }
        } else if (s[si] == '[') {  // an unclosed '[' is a literal
          ++pi;
          ++si;
          continue;
        }
      } else if (p[pi] == s[si]) {
        ++pi;
        ++si;
        continue;
      }
    }
    if (star_p == std::string_view::npos) return false;
    pi = star_p + 1;
    si = ++star_s;
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

std::vector<std::string_view> split_slash(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t k = s.find('/', start);
    if (k == std::string_view::npos) k = s.size();
    if (k > start) out.push_back(s.substr(start, k - start));
    start = k + 1;
  }
  return out;
}

bool match_parts(const std::vector<std::string_view>& p, size_t pi, const std::vector<std::string_view>& s, size_t si) {
  if (pi == p.size()) return si == s.size();
  if (p[pi] == "**") {
    for (size_t k = si; k <= s.size(); ++k)
      if (match_parts(p, pi + 1, s, k)) return true;
    return false;
  }
  return si < s.size() && match_component(p[pi], s[si]) && match_parts(p, pi + 1, s, si + 1);
}

std::string normalize_pattern(std::string p) {
  while (p.rfind("./", 0) == 0) p.erase(0, 2);
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view path) {
  return match_parts(split_slash(pattern), 0, split_slash(path), 0);
}

bool path_or_parent_matches(std::string_view pattern, std::string_view rel) {
  const std::string p = normalize_pattern(std::string(pattern));
  if (glob_match(p, rel)) return true;
  for (size_t k = rel.find('/'); k != std::string_view::npos; k = rel.find('/', k + 1))
    if (glob_match(p, rel.substr(0, k))) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------- split

bool is_held_out(std::string_view rel, double val_fraction, uint64_t seed, const std::vector<std::string>& val_subtrees) {
  for (const auto& pat : val_subtrees)
    if (path_or_parent_matches(pat, rel)) return true;
  Fnv1a h;
  h.update_u64(seed);
  h.update(rel);
  const double u = static_cast<double>(h.digest() >> 11) * 0x1.0p-53;
  return u < val_fraction;
}

// ---------------------------------------------------------------------------------------------- text

std::string text_problem(std::string_view b) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  const size_t n = b.size();
  if (const void* z = std::memchr(p, 0, n))
    return str("binary: NUL byte at offset ", static_cast<const unsigned char*>(z) - p);
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return str("invalid UTF-8 at byte ", i, " (lead byte 0x", std::hex, static_cast<int>(c), ")");
    }
    if (i + len > n) return str("invalid UTF-8 at byte ", i, " (sequence cut off at the end of the file)");
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return str("invalid UTF-8 at byte ", i + k, " (expected a continuation byte)");
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return str("invalid UTF-8 at byte ", i, " (overlong or out-of-range sequence)");
    if (cp >= 0xd800 && cp <= 0xdfff) return str("invalid UTF-8 at byte ", i, " (UTF-16 surrogate)");
    i += len;
  }
  return "";
}

// ------------------------------------------------------------------------------------------ discovery

namespace {

struct InputSpec {
  std::string spec, root, pattern;  // pattern "" = everything under root
  bool single_file = false;
};

std::string generic(const fs::path& p) { return p.generic_string(); }

InputSpec parse_input(const std::string& spec) {
  InputSpec in;
  in.spec = spec;
  std::error_code ec;
  if (!has_wildcard(spec)) {
    if (fs::is_regular_file(spec, ec)) {
      fs::path p(spec);
      in.root = p.has_parent_path() ? p.parent_path().string() : ".";
      in.pattern = p.filename().string();
      in.single_file = true;
    } else if (fs::is_directory(spec, ec)) {
      in.root = spec;
    } else {
      throw InputError(str("input not found: ", spec, " (give a directory, a file or a glob such as 'src/**/*.py')"));
    }
    return in;
  }
  const bool absolute = !spec.empty() && spec[0] == '/';
  auto parts = split_slash(spec);
  std::string root = absolute ? "/" : "";
  size_t k = 0;
  for (; k < parts.size() && !has_wildcard(parts[k]); ++k) {
    if (!root.empty() && root.back() != '/') root += "/";
    root += std::string(parts[k]);
  }
  if (root.empty()) root = ".";
  std::string pattern;
  for (; k < parts.size(); ++k) {
    if (!pattern.empty()) pattern += "/";
    pattern += std::string(parts[k]);
  }
  if (!fs::is_directory(root, ec))
    throw InputError(str("input ", spec, ": its directory ", root, " does not exist"));
  in.root = root;
  in.pattern = pattern;
  return in;
}

bool excluded_dir(const std::string& name, const std::vector<std::string>& excludes) {
  for (const auto& e : excludes)
    if (match_component(e, name)) return true;
  return false;
}

bool ext_taken(const fs::path& p, const std::set<std::string>& exts) {
  std::string e = p.extension().string();
  return exts.count(e.empty() ? "none" : e) > 0;
}

}  // namespace

Discovery discover_sources(const PrepareOptions& opts) {
  Discovery d;
  const bool defaults = opts.inputs.empty();
  d.inputs = defaults ? default_code_inputs() : opts.inputs;
  std::vector<std::string> excludes = always_excluded_dirs();
  if (defaults) excludes.insert(excludes.end(), default_corpus_excluded_dirs().begin(), default_corpus_excluded_dirs().end());
  excludes.insert(excludes.end(), opts.exclude_dirs.begin(), opts.exclude_dirs.end());
  std::set<std::string> exts;
  for (auto e : opts.exts.empty() ? default_code_exts() : opts.exts) {
    if (e.empty()) continue;
    if (e != "none" && e[0] != '.') e = "." + e;
    exts.insert(e);
  }

  std::map<std::pair<dev_t, ino_t>, std::string> seen;  // the same file reached twice (links, overlapping inputs)
  for (size_t ii = 0; ii < d.inputs.size(); ++ii) {
    const InputSpec in = parse_input(d.inputs[ii]);
    d.roots.push_back(in.root);
    std::vector<SourceFile> found;
    auto consider = [&](const fs::path& path, const std::string& rel, bool explicit_match) {
      if (!explicit_match && !ext_taken(path, exts)) return;
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) {
        d.skipped.push_back({path.string(), "unreadable", str("unreadable: ", std::strerror(errno))});
        return;
      }
      SourceFile f{path.string(), rel, static_cast<int>(ii), static_cast<uint64_t>(st.st_size)};
      found.push_back(f);
    };
    if (in.single_file) {
      consider(fs::path(in.spec), in.pattern, true);
    } else {
      std::error_code ec;
      fs::recursive_directory_iterator it(in.root, fs::directory_options::skip_permission_denied, ec), end;
      if (ec) throw InputError(str("cannot read input directory ", in.root, ": ", ec.message()));
      for (; it != end; it.increment(ec)) {
        if (ec) {
          d.skipped.push_back({in.root, "unreadable", str("unreadable directory entry: ", ec.message())});
          ec.clear();
          continue;
        }
        const fs::path& path = it->path();
        const std::string name = path.filename().string();
        std::error_code ec2;
        if (it->is_directory(ec2)) {
          if (excluded_dir(name, excludes)) it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file(ec2) || name.empty() || name[0] == '.') continue;
        const std::string rel = generic(path.lexically_relative(in.root));
        bool explicit_match = false;
        if (!in.pattern.empty()) {
          explicit_match = glob_match(in.pattern, rel);
          if (!explicit_match && !path_or_parent_matches(in.pattern, rel)) continue;
        }
        consider(path, rel, explicit_match);
      }
    }
    std::sort(found.begin(), found.end(), [](const SourceFile& a, const SourceFile& b) { return a.rel < b.rel; });
    if (found.empty()) log::warn(str("input ", d.inputs[ii], " holds no file with a taken extension"));
    for (auto& f : found) {
      struct stat st;
      if (::stat(f.path.c_str(), &st) == 0) {
        auto [pos, fresh] = seen.emplace(std::make_pair(st.st_dev, st.st_ino), f.path);
        if (!fresh) {
          d.skipped.push_back({f.path, "same_file", str("the same file as ", pos->second)});
          continue;
        }
      }
      if (static_cast<int64_t>(f.bytes) > opts.max_file_bytes) {
        d.skipped.push_back({f.path, "too_large", str(f.bytes, " bytes, over --max-file-bytes ", opts.max_file_bytes)});
        continue;
      }
      d.files.push_back(std::move(f));
    }
  }
  return d;
}

// ------------------------------------------------------------------------------------------- prepare

namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

// Reads at most limit + 1 bytes (so an over-limit file is detected without reading it all).
bool read_source(const std::string& path, int64_t limit, std::string& out, std::string& err) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    err = str("unreadable: ", std::strerror(errno));
    return false;
  }
  out.clear();
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = str("unreadable: ", std::strerror(errno));
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(out.size()) > limit) break;
  }
  ::close(fd);
  return true;
}

// Runs fn(i) for i in [0, n) on `threads` threads; the first exception is rethrown after all stop.
template <typename Fn>
void parallel_for(size_t n, int64_t threads, Fn fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mu;
  auto work = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= n || failed.load()) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, static_cast<int64_t>(n)));
  for (int64_t k = 1; k < t; ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

std::string json_path_list(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

bool is_bad_kind(const std::string& kind) {
  return kind == "unreadable" || kind == "binary" || kind == "invalid_utf8" || kind == "too_large";
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (1u << 20))
    std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(b) / (1 << 20));
  else
    std::snprintf(buf, sizeof buf, "%.1f kB", static_cast<double>(b) / 1024);
  return buf;
}

// Removes <name>.tmp-<pid>-* / <name>.old-<pid>-* siblings left by prepare runs that no longer live.
void remove_stale_temporaries(const fs::path& out) {
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string name = out.filename().string();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    for (const char* tag : {".tmp-", ".old-"}) {
      const std::string prefix = name + tag;
      if (n.rfind(prefix, 0) != 0) continue;
      const long pid = std::strtol(n.c_str() + prefix.size(), nullptr, 10);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        log::info(str("removing ", e.path().string(), ", left by an interrupted `subq prepare`"));
        fs::remove_all(e.path(), ec);
      }
    }
  }
}

bool inside(const fs::path& child, const fs::path& parent) {
  std::error_code ec;
  const fs::path c = fs::weakly_canonical(child, ec), p = fs::weakly_canonical(parent, ec);
  auto ci = c.begin();
  for (auto pi = p.begin(); pi != p.end(); ++pi, ++ci) {
    if (pi->empty()) continue;  // trailing separator
    if (ci == c.end() || *ci != *pi) return false;
  }
  return true;
}

struct FileRecord {
  SourceFile src;
  bool ok = false;
  bool val = false;
  uint64_t checksum = 0;
  uint64_t tokens = 0;
  std::string kind, reason;
};

struct SplitStats {
  uint64_t files = 0, bytes = 0, tokens = 0;
  std::vector<ShardFileInfo> shards;
};

}  // namespace

nlohmann::json prepare_code(const PrepareOptions& opts) {
  const auto t_start = clock_type::now();
  if (!(opts.val_fraction >= 0 && opts.val_fraction < 1))
    throw UsageError(str("--val-fraction must be in [0, 1), got ", opts.val_fraction));
  if (opts.max_file_bytes < 1) throw UsageError(str("--max-file-bytes must be >= 1, got ", opts.max_file_bytes));
  if (opts.shard_tokens < 1) throw UsageError(str("--shard-tokens must be >= 1, got ", opts.shard_tokens));
  if (opts.threads < 0) throw UsageError(str("--threads must be >= 0, got ", opts.threads));
  if (opts.tokenizer.empty() && opts.vocab_size < 257)
    throw UsageError(str("--vocab-size must be at least 257 (256 byte tokens + end of text), got ", opts.vocab_size));
  const int64_t threads =
      opts.threads > 0 ? opts.threads : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));

  // ---- output directory: refuse to overwrite before doing any work
  fs::path out = fs::path(opts.out).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  if (out.empty() || out == "." || out == "/")
    throw UsageError(str("--out ", opts.out, " cannot be used: give a directory of its own (e.g. data/cache/code)"));
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw UsageError(str("--out ", out.string(), " exists and is not a directory"));
    if (!fs::is_empty(out, ec) && !opts.force)
      throw UsageError(str(out.string(), " already exists and is not empty",
                           fs::exists(out / "manifest.json") ? " (it holds an earlier `subq prepare` output)" : "",
                           "; pass --force to replace it (the old contents stay until the new output is complete), "
                           "or choose another --out"));
  }

  // ---- discovery
  Discovery disc = discover_sources(opts);
  for (const auto& root : disc.roots)
    if (inside(root, out))
      throw UsageError(str("input ", root, " is inside --out ", out.string(),
                           ": the output would replace its own input; choose another --out"));
  if (disc.files.empty())
    throw InputError(str("no source files found in ", json_path_list(disc.inputs), " (extensions ",
                         json_path_list(opts.exts.empty() ? default_code_exts() : opts.exts),
                         "); check --input and --ext"));
  log::info(str("prepare: ", disc.files.size(), " candidate files in ", json_path_list(disc.inputs)));
  const double t_discover = seconds_since(t_start);

  // ---- pass 1: read and check every file (parallel)
  const auto t_check0 = clock_type::now();
  std::vector<FileRecord> recs(disc.files.size());
  {
    std::unique_ptr<Progress> prog;
    if (opts.show_progress) prog = std::make_unique<Progress>("checking files", static_cast<int64_t>(recs.size()), "files");
    parallel_for(recs.size(), threads, [&](size_t i) {
      FileRecord& r = recs[i];
      r.src = disc.files[i];
      std::string text, err;
      if (!read_source(r.src.path, opts.max_file_bytes, text, err)) {
        r.kind = "unreadable";
        r.reason = err;
      } else if (static_cast<int64_t>(text.size()) > opts.max_file_bytes) {
        r.kind = "too_large";
        r.reason = str("over --max-file-bytes ", opts.max_file_bytes, " (the file grew since it was listed)");
      } else if (text.empty()) {
        r.kind = "empty";
        r.reason = "empty file";
      } else if (std::string p = text_problem(text); !p.empty()) {
        r.kind = p.rfind("binary", 0) == 0 ? "binary" : "invalid_utf8";
        r.reason = p;
      } else {
        r.ok = true;
        r.src.bytes = text.size();
        r.checksum = fnv1a64(text);
      }
      if (prog) prog->advance();
    });
  }
  // duplicates (sequential, in file order) and the split
  std::vector<SkippedFile> skipped = disc.skipped;
  {
    std::unordered_map<uint64_t, size_t> first;
    for (size_t i = 0; i < recs.size(); ++i) {
      FileRecord& r = recs[i];
      if (!r.ok) {
        skipped.push_back({r.src.path, r.kind, r.reason});
        continue;
      }
      auto [pos, fresh] = first.emplace(r.checksum, i);
      if (!fresh && recs[pos->second].src.bytes == r.src.bytes) {
        r.ok = false;
        r.kind = "duplicate";
        r.reason = str("same contents as ", recs[pos->second].src.path);
        skipped.push_back({r.src.path, r.kind, r.reason});
        continue;
      }
      r.val = is_held_out(r.src.rel, opts.val_fraction, opts.seed, opts.val_subtrees);
    }
  }
  std::vector<size_t> kept;
  uint64_t train_files = 0;
  for (size_t i = 0; i < recs.size(); ++i)
    if (recs[i].ok) {
      kept.push_back(i);
      train_files += recs[i].val ? 0 : 1;
    }
  {  // report skipped files: a warning for each bad one (up to a limit), counts for all
    int64_t warned = 0, bad = 0;
    std::map<std::string, int64_t> by_kind;
    for (const auto& s : skipped) {
      ++by_kind[s.kind];
      if (!is_bad_kind(s.kind)) continue;
      ++bad;
      if (warned < opts.max_warnings) {
        log::warn(str("skipping ", s.path, ": ", s.reason));
        ++warned;
      }
    }
    if (bad > warned)
      log::warn(str("... and ", bad - warned, " more unusable files (all listed in ", (out / "manifest.json").string(), ")"));
    if (!skipped.empty()) {
      std::string s;
      for (const auto& [k, n] : by_kind) s += str(s.empty() ? "" : ", ", n, " ", k);
      log::info(str("skipped ", skipped.size(), " files: ", s));
    }
  }
  if (kept.empty()) throw InputError(str("none of the files in ", json_path_list(disc.inputs), " is usable text"));
  if (train_files == 0)
    throw InputError(str("every usable file is held out (--val-fraction ", opts.val_fraction,
                         ", --val-subtree ...): nothing is left to train on"));
  const double t_check = seconds_since(t_check0);

  // ---- temporary output directory
  remove_stale_temporaries(out);
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  std::random_device rd;
  const fs::path tmp = fs::path(out.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 100000));
  struct TmpGuard {
    fs::path p;
    bool armed = true;
    ~TmpGuard() {
      if (armed) {
        std::error_code e;
        fs::remove_all(p, e);
      }
    }
  } guard{tmp};
  fs::create_directories(tmp / "train");
  fs::create_directories(tmp / "val");

  // ---- tokenizer
  const auto t_tok0 = clock_type::now();
  std::optional<Tokenizer> tok;
  std::string tokenizer_source;
  const std::string tok_path = (tmp / "tokenizer.json").string();
  if (!opts.tokenizer.empty()) {
    const std::string text = fsx::read_file(opts.tokenizer, "tokenizer");
    tok = Tokenizer::from_json(text, opts.tokenizer);
    fsx::write_file_atomic(tok_path, text);
    tokenizer_source = opts.tokenizer;
  } else {
    std::vector<std::string> train_paths;
    for (size_t i : kept)
      if (!recs[i].val) train_paths.push_back(recs[i].src.path);
    log::info(str("training a byte-level BPE tokenizer (vocab ", opts.vocab_size, ") on the ", train_paths.size(),
                  " train files"));
    BpeTrainOptions bo;
    bo.vocab_size = opts.vocab_size;
    bo.threads = threads;
    bo.show_progress = opts.show_progress;
    tok = train_bpe(train_paths, bo);
    tok->save(tok_path);
    tokenizer_source = str("trained on the train split (vocab ", opts.vocab_size, ")");
  }
  const std::optional<int32_t> eos = tok->eos_id();
  if (!eos)
    throw InputError(str("tokenizer ", opts.tokenizer.empty() ? tok_path : opts.tokenizer,
                         " has no end-of-text token (<|endoftext|>, <|end_of_text|>, </s> or <eos>): documents need a "
                         "separator; use a tokenizer that has one, or let `subq prepare` train one"));
  const int64_t vocab = tok->vocab_size();
  const double t_tokenizer = seconds_since(t_tok0);

  // ---- pass 2: tokenize (parallel) and write shards in file order
  const auto t_enc0 = clock_type::now();
  SplitStats stats[2];
  {
    ShardSetWriter writers[2] = {
        ShardSetWriter((tmp / "train").string(), vocab, eos, static_cast<uint64_t>(opts.shard_tokens)),
        ShardSetWriter((tmp / "val").string(), vocab, eos, static_cast<uint64_t>(opts.shard_tokens))};
    const size_t n = kept.size();
    const size_t window = static_cast<size_t>(4 * threads + 8);
    std::vector<std::vector<int32_t>> slots(window);
    std::vector<std::exception_ptr> errors(window);
    std::vector<char> ready(window, 0);
    std::mutex mu;
    std::condition_variable cv;
    size_t written = 0;
    bool abort = false;
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (;;) {
        const size_t i = next.fetch_add(1);
        if (i >= n) return;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return abort || i < written + window; });
          if (abort) return;
        }
        std::vector<int32_t> ids;
        std::exception_ptr err;
        try {
          const FileRecord& r = recs[kept[i]];
          std::string text, rerr;
          if (!read_source(r.src.path, opts.max_file_bytes, text, rerr) || fnv1a64(text) != r.checksum)
            throw InputError(str(r.src.path, " changed or became unreadable while `subq prepare` ran",
                                 rerr.empty() ? "" : " (" + rerr + ")", "; run it again when the inputs are stable"));
          ids = tok->encode(text, /*allow_special=*/false);
        } catch (...) {
          err = std::current_exception();
        }
        {
          std::lock_guard<std::mutex> lk(mu);
          slots[i % window] = std::move(ids);
          errors[i % window] = err;
          ready[i % window] = 1;
        }
        cv.notify_all();
      }
    };
    std::vector<std::thread> pool;
    for (int64_t k = 0; k < std::min<int64_t>(threads, static_cast<int64_t>(n)); ++k) pool.emplace_back(work);
    std::unique_ptr<Progress> prog;
    if (opts.show_progress) prog = std::make_unique<Progress>("tokenizing", static_cast<int64_t>(n), "files");
    std::exception_ptr failure;
    try {
      for (size_t i = 0; i < n; ++i) {
        std::vector<int32_t> ids;
        std::exception_ptr err;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return ready[i % window] != 0; });
          ids = std::move(slots[i % window]);
          err = errors[i % window];
          slots[i % window] = {};
          errors[i % window] = nullptr;
          ready[i % window] = 0;
        }
        if (err) std::rethrow_exception(err);
        FileRecord& r = recs[kept[i]];
        const int s = r.val ? 1 : 0;
        writers[s].append(ids);
        writers[s].append(&*eos, 1);
        r.tokens = ids.size();
        stats[s].files += 1;
        stats[s].bytes += r.src.bytes;
        stats[s].tokens += ids.size() + 1;
        {
          std::lock_guard<std::mutex> lk(mu);
          written = i + 1;
        }
        cv.notify_all();
        if (prog) {
          prog->advance();
          prog->set_postfix(str(stats[0].tokens + stats[1].tokens, " tokens"));
        }
      }
    } catch (...) {
      failure = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      abort = true;
    }
    cv.notify_all();
    for (auto& th : pool) th.join();
    if (failure) std::rethrow_exception(failure);
    for (int s = 0; s < 2; ++s) stats[s].shards = writers[s].finish();
  }
  const double t_encode = seconds_since(t_enc0);

  // ---- manifest
  const std::string tok_text = fsx::read_file(tok_path, "tokenizer");
  nlohmann::json m;
  m["format"] = "subq-code-corpus";
  m["version"] = 1;
  m["command"] = opts.command;
  m["commit"] = build_commit();
  m["date"] = utc_now_iso();
  nlohmann::json inputs = nlohmann::json::array();
  for (size_t i = 0; i < disc.inputs.size(); ++i) inputs.push_back({{"input", disc.inputs[i]}, {"root", disc.roots[i]}});
  m["inputs"] = inputs;
  m["default_inputs"] = opts.inputs.empty();
  std::vector<std::string> excl = always_excluded_dirs();
  if (opts.inputs.empty()) excl.insert(excl.end(), default_corpus_excluded_dirs().begin(), default_corpus_excluded_dirs().end());
  excl.insert(excl.end(), opts.exclude_dirs.begin(), opts.exclude_dirs.end());
  m["options"] = {{"val_fraction", opts.val_fraction},
                  {"val_subtrees", opts.val_subtrees},
                  {"exts", opts.exts.empty() ? default_code_exts() : opts.exts},
                  {"excluded_dirs", excl},
                  {"max_file_bytes", opts.max_file_bytes},
                  {"shard_tokens", opts.shard_tokens},
                  {"seed", opts.seed},
                  {"split_rule", "held out when fnv1a64(seed as 8 LE bytes + relative path) >> 11, / 2^53, is < "
                                 "val_fraction, or a val_subtree matches the path or a parent directory"}};
  m["tokenizer"] = {{"file", "tokenizer.json"},
                    {"source", tokenizer_source},
                    {"checksum", hash_hex(fnv1a64(tok_text))},
                    {"vocab_size", vocab},
                    {"eos_id", *eos},
                    {"eos_token", tok->id_to_token(*eos)}};
  const char* names[2] = {"train", "val"};
  uint64_t all_tokens = 0, all_bytes = 0;
  for (int s = 0; s < 2; ++s) {
    nlohmann::json shards = nlohmann::json::array();
    for (const auto& sh : stats[s].shards)
      shards.push_back({{"file", str(names[s], "/", fs::path(sh.path).filename().string())},
                        {"tokens", sh.header.tokens},
                        {"dtype", dtype_name(sh.header.dtype)},
                        {"checksum", hash_hex(sh.header.checksum)}});
    m["splits"][names[s]] = {{"files", stats[s].files},
                             {"bytes", stats[s].bytes},
                             {"tokens", stats[s].tokens},
                             {"documents", stats[s].files},
                             {"bytes_per_token", stats[s].tokens ? static_cast<double>(stats[s].bytes) / stats[s].tokens : 0.0},
                             {"shards", shards}};
    all_tokens += stats[s].tokens;
    all_bytes += stats[s].bytes;
  }
  m["token_counts_note"] = "split tokens include one eos per document; per-file tokens do not";
  nlohmann::json files = nlohmann::json::array();
  for (size_t i : kept) {
    const FileRecord& r = recs[i];
    files.push_back({{"path", r.src.path},
                     {"rel", r.src.rel},
                     {"input", r.src.input},
                     {"split", r.val ? "val" : "train"},
                     {"bytes", r.src.bytes},
                     {"tokens", r.tokens},
                     {"checksum", hash_hex(r.checksum)}});
  }
  m["files"] = files;
  nlohmann::json sk = nlohmann::json::array();
  std::map<std::string, int64_t> by_kind;
  for (const auto& s : skipped) {
    sk.push_back({{"path", s.path}, {"kind", s.kind}, {"reason", s.reason}});
    ++by_kind[s.kind];
  }
  m["skipped"] = sk;
  m["skipped_counts"] = by_kind;
  const double total = seconds_since(t_start);
  m["timings_s"] = {{"discover", t_discover}, {"check", t_check}, {"tokenizer", t_tokenizer}, {"tokenize", t_encode},
                    {"total", total}, {"threads", threads}};
  fsx::write_file_atomic((tmp / "manifest.json").string(), m.dump(2) + "\n");
  fsx::fsync_dir(tmp.string());

  // ---- swap into place
  if (fs::exists(out)) {
    const fs::path old = fs::path(out.string() + ".old-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 100000));
    fs::rename(out, old);
    try {
      fs::rename(tmp, out);
    } catch (...) {
      fs::rename(old, out, ec);  // put the previous output back
      throw;
    }
    guard.armed = false;
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, out);
    guard.armed = false;
  }
  fsx::fsync_dir(out.has_parent_path() ? out.parent_path().string() : ".");

  auto shards_word = [](size_t n) { return str(n, n == 1 ? " shard" : " shards"); };
  log::info(str("prepared ", out.string(), " in ", Progress::format_duration(total), ": train ", stats[0].files, " files, ",
                human_bytes(stats[0].bytes), ", ", stats[0].tokens, " tokens (", shards_word(stats[0].shards.size()),
                "); val ", stats[1].files, " files, ", human_bytes(stats[1].bytes), ", ", stats[1].tokens, " tokens (",
                shards_word(stats[1].shards.size()), "); ",
                all_tokens ? str(static_cast<double>(all_bytes) / static_cast<double>(all_tokens)) : std::string("-"),
                " bytes/token"));
  return m;
}

}  // namespace subq::data
