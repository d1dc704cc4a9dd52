// corpus.h — turning directories of source files into a tokenized corpus: `subq prepare code`.
//
// Output (<out>, default data/cache/code):
//   tokenizer.json      the tokenizer the shards were made with (trained here, or a copy of --tokenizer)
//   train/shard-*.bin   token shards (subq/data/shards.h) of the training split
//   val/shard-*.bin     token shards of the held-out split (the directory is empty when no file is held out)
//   manifest.json       inputs, options, per-split file/byte/token counts and shards with checksums, one
//                       entry per file (path, split, bytes, tokens, checksum), skipped files with reasons,
//                       the tokenizer's checksum, the command, subq's commit and the date
//
// Inputs are directories (walked recursively), single files, or globs (`src/**/*.py`: `*`, `?` and
// `[...]` stay inside one path component, `**` spans any number). A glob's root is its longest
// wildcard-free directory prefix; a file is taken when its path relative to that root, or one of the
// directories above it, matches. Without inputs, the default corpus is this machine's Python standard
// library (without site-packages, dist-packages, tests and build config) and the C++ standard library
// headers (/usr/include/c++/<version>, extension-less headers included).
//
// Each file's split is a pure function of its path relative to its input root and the seed: FNV-1a 64
// of (seed as 8 little-endian bytes, relative path), top 53 bits as a fraction u in [0, 1), held out when
// u < val_fraction, or when the path or a directory above it matches a --val-subtree pattern. Paths,
// not contents, decide, so a file keeps its split as the corpus grows, and one relative path (e.g. the
// same header in two GCC versions) lands in one split. Files whose bytes equal an earlier file's are
// skipped as duplicates (the earlier one, in input order then path order, is kept) so no text is both
// trained on and held out.
//
// Every file is checked before use; files that cannot be used are skipped and reported (a warning each,
// up to a limit, then a count; all of them in the manifest): unreadable, binary (a NUL byte), invalid
// UTF-8, over --max-file-bytes; empty files and duplicates are skipped and counted. Documents are
// separated by the tokenizer's eos token (required). Text is encoded with special tokens disabled, so a
// literal "<|endoftext|>" in a source file is ordinary text, never a separator.
//
// Work is parallel (std::thread workers) with results written in file order, so the output is
// byte-identical for any thread count. The output is built in <out>.tmp-<pid>-<n> and renamed into
// place at the end; an existing non-empty <out> is refused unless force, and then replaced only once
// the new one is complete. Leftover temporaries of runs that were killed are removed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace subq::data {

struct PrepareOptions {
  std::vector<std::string> inputs;        // directories, files or globs; empty = default_code_inputs()
  std::string out = "data/cache/code";
  std::string tokenizer;                  // an existing tokenizer.json; "" = train one on the train split
  int64_t vocab_size = 8192;              // when training
  double val_fraction = 0.02;             // share of files (by path hash) held out
  std::vector<std::string> val_subtrees;  // patterns: matching directories go to val whole
  std::vector<std::string> exts;          // file extensions taken (".py"; "none" = extension-less); empty = defaults
  std::vector<std::string> exclude_dirs;  // extra directory names (globs) never entered
  int64_t max_file_bytes = 1 << 20;
  int64_t shard_tokens = 100000000;
  int64_t threads = 0;                    // 0 = all cores
  uint64_t seed = 0;                      // of the split
  bool force = false;                     // replace an existing non-empty out
  bool show_progress = true;
  int64_t max_warnings = 20;              // per-file warnings printed before only counting
  std::string command;                    // the command line, for the manifest
};

// The default corpus: the Python stdlib directory and each /usr/include/c++/<version> directory found.
std::vector<std::string> default_code_inputs();
// Extensions taken by default: Python and C/C++/CUDA sources and headers, and "none".
const std::vector<std::string>& default_code_exts();
// Directory names never entered (VCS, caches, installed packages); with the default corpus also the
// stdlib's tests, build config and compiled modules.
const std::vector<std::string>& always_excluded_dirs();
const std::vector<std::string>& default_corpus_excluded_dirs();

// Glob match of a '/'-separated relative path: *, ?, [abc], [a-z], [!x] inside one component, ** across.
bool glob_match(std::string_view pattern, std::string_view path);
// True when `rel` or one of its parent directories matches `pattern` (how inputs and --val-subtree match).
bool path_or_parent_matches(std::string_view pattern, std::string_view rel);

// The held-out decision for a file (see above).
bool is_held_out(std::string_view rel, double val_fraction, uint64_t seed, const std::vector<std::string>& val_subtrees);

// "" when `bytes` is usable text, else why not ("binary: NUL byte at offset 17", "invalid UTF-8 at byte 5").
std::string text_problem(std::string_view bytes);

struct SourceFile {
  std::string path;   // as found (absolute or relative to the cwd)
  std::string rel;    // relative to its input root, '/'-separated
  int input = 0;      // index into the inputs
  uint64_t bytes = 0;
};
struct SkippedFile {
  std::string path;
  std::string kind;    // too_large, unreadable, binary, invalid_utf8, empty, duplicate, same_file
  std::string reason;  // the details, for people
};
struct Discovery {
  std::vector<std::string> inputs;   // as given (or the defaults)
  std::vector<std::string> roots;    // each input's root directory
  std::vector<SourceFile> files;     // in input order, then relative path order; no file twice
  std::vector<SkippedFile> skipped;  // over the size limit, unreadable directories, the same file twice
};
// Walks the inputs (no file contents read). InputError when an input matches nothing that exists.
Discovery discover_sources(const PrepareOptions& opts);

// Runs the whole preparation; returns the manifest it wrote.
nlohmann::json prepare_code(const PrepareOptions& opts);

}  // namespace subq::data
