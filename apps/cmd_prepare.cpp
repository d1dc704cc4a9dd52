// cmd_prepare.cpp — `subq prepare <task>`: build the token shards a run trains on.
//   subq prepare code [--input DIR_OR_GLOB ...] [--out data/cache/code] [--tokenizer FILE | --vocab-size N]
//                     [--val-fraction F] [--val-subtree PATTERN ...] [--ext .py,.h,none] [--max-file-bytes N]
//                     [--shard-tokens N] [--threads N] [--seed S] [--exclude-dir NAME ...] [--force]
// Everything it does is in subq/data/corpus.h; this file only maps flags to PrepareOptions.
#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/data/corpus.h"

namespace subq::cli {

namespace {

std::string join_argv(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    const bool quote = a.empty() || a.find_first_of(" \t'\"*?[$") != std::string::npos;
    s += quote ? "'" + a + "'" : a;
  }
  return s;
}

void add_prepare_command(CLI::App& app, Context& ctx) {
  auto* prep = app.add_subcommand("prepare", "turn raw data into token shards (subq prepare code --help)");
  prep->require_subcommand(1);
  auto* code = prep->add_subcommand(
      "code", "source files -> tokenizer.json + train/val token shards + manifest.json (default corpus: this "
              "machine's Python standard library and C++ standard headers)");
  static data::PrepareOptions o;
  static std::vector<std::string> exts;
  code->add_option("-i,--input", o.inputs,
                   "a directory, file or glob ('src/**/*.py'; quote it); repeatable. Default: the Python standard "
                   "library and /usr/include/c++/*");
  code->add_option("-o,--out", o.out, "output directory")->capture_default_str();
  auto* tok = code->add_option("--tokenizer", o.tokenizer,
                               "use this tokenizer.json (HF format; copied into --out) instead of training one");
  code->add_option("--vocab-size", o.vocab_size, "vocabulary of the trained tokenizer (byte tokens and <|endoftext|> "
                                                 "included)")
      ->capture_default_str()
      ->excludes(tok);
  code->add_option("--val-fraction", o.val_fraction, "share of files held out (by a hash of the relative path)")
      ->capture_default_str();
  code->add_option("--val-subtree", o.val_subtrees,
                   "hold out every file under directories matching this pattern (relative to an input root, e.g. "
                   "json or 'asyncio/*'); repeatable");
  code->add_option("--ext", exts,
                   "file extensions to take, comma-separated ('none' = files without one). Default: .py,.pyi,.c,.h,"
                   ".cc,.cpp,.cxx,.hh,.hpp,.hxx,.tcc,.ipp,.inl,.cu,.cuh,none")
      ->delimiter(',');
  code->add_option("--exclude-dir", o.exclude_dirs, "never enter directories with this name (glob); repeatable");
  code->add_option("--max-file-bytes", o.max_file_bytes, "skip (and report) larger files")->capture_default_str();
  code->add_option("--shard-tokens", o.shard_tokens, "tokens per shard file")->capture_default_str();
  code->add_option("--threads", o.threads, "worker threads; 0 = all cores")->capture_default_str();
  code->add_option("--seed", o.seed, "seed of the train/val split")->capture_default_str();
  code->add_flag("--force", o.force, "replace a non-empty --out (only once the new output is complete)");
  code->add_option("--max-warnings", o.max_warnings, "unusable files reported one by one before only counting")
      ->capture_default_str();
  code->callback([&ctx] {
    ctx.action = [&ctx] {
      o.exts = exts;
      o.command = join_argv(ctx.argv);
      data::prepare_code(o);
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(30, add_prepare_command);

}  // namespace subq::cli
