// cmd_tokenizer.cpp — `subq tokenizer train|encode|decode` and `subq bench tokenizer`.
//
//   subq tokenizer train --input PATH... [--ext .py,.cpp,...] [--vocab-size N] [--pre-tokenizer gpt2|qwen2|llama3]
//                        [--special TOKEN...] [--min-frequency N] [--threads N] --out tokenizer.json
//   subq tokenizer encode --tokenizer FILE (--text S | --file F) [--no-special]     ids as a JSON list
//   subq tokenizer decode --tokenizer FILE --ids 1,2,3 [--skip-special]              the text
//   subq bench tokenizer --tokenizer FILE --input FILE_OR_DIR [--ext ...] [--max-mb N] [--passes N]
//                        [--out bench/results/tokenizer.json]
// --tokenizer takes a tokenizer.json or a directory with tokenizer.json or GPT-2's encoder.json +
// vocab.bpe. Inputs are files or directories (walked recursively, sorted, filtered by --ext; files
// named explicitly are always taken; --ext all takes every file, e.g. for extension-less C++ headers).
// The bench encodes on one thread: one warm-up pass (reported as cold_pass_mb_s: the word cache starts
// empty), then --passes timed passes; it reports their median and appends a record (commit, CPU model,
// command, date) to the --out JSON list, written atomically.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "apps/cli.h"
#include "subq/core/build_info.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/data/tokenizer.h"

namespace subq::cli {

namespace {

namespace fs = std::filesystem;

const char* kDefaultExts =
    ".py,.pyi,.c,.h,.cc,.cpp,.cxx,.hpp,.hh,.hxx,.cu,.cuh,.rs,.go,.java,.kt,.scala,.js,.jsx,.ts,.tsx,.rb,.php,"
    ".cs,.swift,.m,.mm,.sh,.bash,.lua,.pl,.r,.jl,.hs,.ml,.zig,.sql,.cmake,.toml,.yaml,.yml,.json,.md";

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// Files under the inputs: directories recursively (sorted), filtered by extension.
std::vector<std::string> collect_files(const std::vector<std::string>& inputs, const std::string& ext_list) {
  bool all = ext_list == "all" || ext_list == "*";
  std::set<std::string> exts;
  for (auto e : split_list(ext_list)) exts.insert(e[0] == '.' ? e : "." + e);
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied, ec);
           it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) break;
        if (!it->is_regular_file(ec)) continue;
        if (all || exts.count(it->path().extension().string())) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      throw InputError(str("input ", in, " is neither a file nor a directory"));
    }
  }
  if (files.empty())
    throw InputError(str("no input files under ", inputs.empty() ? std::string("(none given)") : inputs[0],
                         " with extensions ", ext_list, " (use --ext to change the filter, --ext all for every file)"));
  return files;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  return "unknown";
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

void add_tokenizer_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("tokenizer", "train, or encode/decode with, a byte-level BPE tokenizer");
  cmd->require_subcommand(1);

  struct TrainOpts {
    std::vector<std::string> inputs, specials{"<|endoftext|>"};
    std::string ext = kDefaultExts, pre = "gpt2", out;
    int64_t vocab = 8192, min_freq = 2, threads = 0;
  };
  static TrainOpts t;
  auto* train = cmd->add_subcommand("train", "learn a vocabulary from source files; writes HF tokenizer.json");
  train->add_option("--input", t.inputs, "files or directories (recursive)")->required()->take_all();
  train->add_option("--ext", t.ext, "comma-separated extensions to take from directories, or 'all'")->capture_default_str();
  train->add_option("--vocab-size", t.vocab, "vocabulary size incl. 256 byte tokens and special tokens")->capture_default_str();
  train->add_option("--pre-tokenizer", t.pre, "gpt2, qwen2 or llama3 (regex; qwen2/llama3 add NFC)")->capture_default_str();
  train->add_option("--special", t.specials, "special tokens (ids 0..k-1)")->take_all();
  train->add_option("--min-frequency", t.min_freq, "least count of a pair to merge")->capture_default_str();
  train->add_option("--threads", t.threads, "threads for counting (0 = all cores)")->capture_default_str();
  train->add_option("--out", t.out, "output tokenizer.json")->required();
  train->callback([&ctx] {
    ctx.action = [] {
      auto files = collect_files(t.inputs, t.ext);
      data::BpeTrainOptions o;
      o.vocab_size = t.vocab;
      o.min_frequency = t.min_freq;
      o.special_tokens = t.specials;
      o.pre_tokenizer = t.pre;
      o.threads = t.threads;
      o.show_progress = true;
      log::info(str("tokenizer train: ", files.size(), " files, vocab ", t.vocab, ", pre-tokenizer ", t.pre));
      auto t0 = std::chrono::steady_clock::now();
      data::Tokenizer tok = data::train_bpe(files, o);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tok.save(t.out);
      log::info(str("tokenizer train: wrote ", t.out, " (", tok.vocab_size(), " tokens) in ", s, " s"));
      return 0;
    };
  });

  struct EncodeOpts {
    std::string tokenizer, text, file;
    bool no_special = false;
  };
  static EncodeOpts e;
  auto* enc = cmd->add_subcommand("encode", "print the ids of a text as a JSON list");
  enc->add_option("--tokenizer", e.tokenizer, "tokenizer.json, or a directory with it or encoder.json + vocab.bpe")->required();
  auto* text_opt = enc->add_option("--text", e.text, "the text");
  auto* file_opt = enc->add_option("--file", e.file, "a file whose content is the text");
  text_opt->excludes(file_opt);
  enc->add_flag("--no-special", e.no_special, "encode special-token strings as plain text");
  enc->callback([&ctx, text_opt, file_opt] {
    ctx.action = [text_opt, file_opt] {
      if (text_opt->count() == 0 && file_opt->count() == 0)
        throw UsageError("subq tokenizer encode: give --text S or --file F");
      data::Tokenizer tok = data::load_tokenizer(e.tokenizer);
      std::string text = file_opt->count() ? fsx::read_file(e.file, "input file") : e.text;
      std::string out = nlohmann::json(tok.encode(text, !e.no_special)).dump() + "\n";
      std::fputs(out.c_str(), stdout);
      return 0;
    };
  });

  struct DecodeOpts {
    std::string tokenizer, ids;
    bool skip_special = false;
  };
  static DecodeOpts d;
  auto* dec = cmd->add_subcommand("decode", "print the text of comma-separated ids");
  dec->add_option("--tokenizer", d.tokenizer, "tokenizer.json, or a directory with it or encoder.json + vocab.bpe")->required();
  dec->add_option("--ids", d.ids, "ids, e.g. 1,2,3 (a JSON list works too)")->required();
  dec->add_flag("--skip-special", d.skip_special, "leave special tokens out");
  dec->callback([&ctx] {
    ctx.action = [] {
      std::string s = d.ids;
      for (char& c : s)
        if (c == '[' || c == ']' || c == ' ') c = ',';
      std::vector<int32_t> ids;
      for (const auto& item : split_list(s)) {
        size_t pos = 0;
        long long v = 0;
        try {
          v = std::stoll(item, &pos);
        } catch (const std::exception&) {
          pos = 0;
        }
        if (pos != item.size() || v < 0 || v > INT32_MAX)
          throw UsageError(str("subq tokenizer decode: --ids: \"", item, "\" is not a token id (give e.g. --ids 1,2,3)"));
        ids.push_back(static_cast<int32_t>(v));
      }
      data::Tokenizer tok = data::load_tokenizer(d.tokenizer);
      std::string out = tok.decode(ids, d.skip_special);
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fputc('\n', stdout);
      return 0;
    };
  });
}

void add_bench_tokenizer(CLI::App& app, Context& ctx) {
  auto* cmd = bench_command(app)->add_subcommand("tokenizer", "encoding throughput (MB/s, one thread)");
  struct Opts {
    std::string tokenizer, out, ext = kDefaultExts;
    std::vector<std::string> inputs;
    double max_mb = 8;
    int passes = 5;
  };
  static Opts o;
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer.json, or a directory with it or encoder.json + vocab.bpe")->required();
  cmd->add_option("--input", o.inputs, "files or directories of text to encode")->required()->take_all();
  cmd->add_option("--ext", o.ext, "extensions to take from directories, or 'all'")->capture_default_str();
  cmd->add_option("--max-mb", o.max_mb, "stop collecting input after this many MB")->capture_default_str();
  cmd->add_option("--passes", o.passes, "timed passes (after one warm-up); the median is reported")->capture_default_str();
  cmd->add_option("--out", o.out, "append the result to this JSON list (e.g. bench/results/tokenizer-cpu.json)");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      if (o.passes < 1) throw UsageError("subq bench tokenizer: --passes must be at least 1");
      auto t0 = std::chrono::steady_clock::now();
      data::Tokenizer tok = data::load_tokenizer(o.tokenizer);
      double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::vector<std::string> texts;
      int64_t bytes = 0;
      for (const auto& f : collect_files(o.inputs, o.ext)) {
        if (bytes >= o.max_mb * 1e6) break;
        texts.push_back(fsx::read_file(f, "bench input"));
        bytes += static_cast<int64_t>(texts.back().size());
      }
      int64_t tokens = 0;
      auto w0 = std::chrono::steady_clock::now();
      for (const auto& t : texts) tokens += static_cast<int64_t>(tok.encode(t).size());  // warm-up (cold cache)
      double cold_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      std::vector<double> mbs;
      for (int p = 0; p < o.passes; ++p) {
        auto a = std::chrono::steady_clock::now();
        int64_t n = 0;
        for (const auto& t : texts) n += static_cast<int64_t>(tok.encode(t).size());
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
        if (n != tokens) throw InternalError("bench tokenizer: token count changed between passes");
        mbs.push_back(bytes / 1e6 / s);
      }
      std::vector<double> sorted = mbs;
      std::sort(sorted.begin(), sorted.end());
      double median = sorted[sorted.size() / 2];
      if (sorted.size() % 2 == 0) median = 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
      nlohmann::ordered_json r;
      r["bench"] = "tokenizer";
      r["tokenizer"] = o.tokenizer;
      r["input"] = o.inputs;
      r["files"] = texts.size();
      r["bytes"] = bytes;
      r["tokens"] = tokens;
      r["bytes_per_token"] = tokens ? double(bytes) / double(tokens) : 0.0;
      r["threads"] = 1;
      r["passes_mb_s"] = mbs;
      r["median_mb_s"] = median;
      r["cold_pass_mb_s"] = bytes / 1e6 / cold_s;
      r["load_s"] = load_s;
      r["commit"] = build_commit();
      r["build_type"] = build_type();
      r["machine"] = cpu_model();
      r["command"] = joined(ctx.argv);
      r["date"] = utc_now();
      std::string line = r.dump(2);
      std::fputs((line + "\n").c_str(), stdout);
      log::info(str("bench tokenizer: ", o.tokenizer, ": ", median, " MB/s median over ", o.passes, " passes, ",
                    bytes / 1e6, " MB, ", double(bytes) / double(std::max<int64_t>(1, tokens)), " bytes/token"));
      if (!o.out.empty()) {
        nlohmann::ordered_json all = nlohmann::ordered_json::array();
        std::error_code ec;
        if (fs::exists(o.out, ec)) {
          all = nlohmann::ordered_json::parse(fsx::read_file(o.out, "bench result file"), nullptr, false);
          if (!all.is_array())
            throw InputError(str(o.out, ": exists but is not a JSON list of results; move it away or pick another --out"));
        }
        all.push_back(r);
        fs::path parent = fs::path(o.out).parent_path();
        if (!parent.empty()) fs::create_directories(parent, ec);
        fsx::write_file_atomic(o.out, all.dump(2) + "\n");
        log::info(str("bench tokenizer: appended the result to ", o.out));
      }
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(60, add_tokenizer_command);
SUBQ_REGISTER_COMMAND(90, add_bench_tokenizer);

}  // namespace subq::cli
