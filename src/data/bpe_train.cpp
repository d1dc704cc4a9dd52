// bpe_train.cpp — learning a byte-level BPE vocabulary (train_bpe, train_bpe_texts).
//
// The algorithm is the standard incremental one (as in HF's BpeTrainer):
//   1. split special tokens out of the text, normalise (NFC for the qwen2/llama3 style, none for gpt2,
//      mirroring the tokenizers they come from), pre-tokenize with the chosen regex and count distinct
//      pieces ("words") — in parallel, one std::thread per share of the inputs, each with its own map;
//   2. count adjacent symbol pairs over all words (weighted by word count) and remember, per pair, the
//      words it occurs in;
//   3. repeatedly take the most frequent pair from a max-heap (lazy invalidation: an entry whose count no
//      longer equals the pair's current count is skipped), merge it in every word that holds it, and
//      update only the counts of the pairs around each merged occurrence.
// Determinism: ties on count are broken by the smaller pair of ids (left, then right), exactly like HF's
// trainer. Ids are assigned as HF does: special tokens first, then the 256 byte characters sorted by
// code point, then merged tokens in merge order. Nothing depends on thread scheduling: per-thread counts
// are summed, and every later step is sequential and ordered.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <queue>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "data/tokenizer_impl.h"
#include "data/unicode.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/progress.h"

namespace subq::data {

namespace {

using WordCounts = std::unordered_map<std::string, int64_t>;

struct Pretok {
  detail::RegexKind kind;
  bool nfc;
  std::vector<std::string> specials;
};

// Counts the pre-tokenized pieces of `text` (special tokens removed) into `counts`.
void count_text(const Pretok& pt, std::string_view text, WordCounts& counts, detail::PretokScratch& scratch,
                std::vector<std::pair<uint32_t, uint32_t>>& pieces) {
  auto count_segment = [&](std::string_view seg) {
    if (seg.empty()) return;
    std::string norm;
    if (pt.nfc && !unicode::nfc_quick_check(seg)) {
      norm = unicode::nfc(seg);
      seg = norm;
    }
    pieces.clear();
    detail::pretokenize(pt.kind, seg, pieces, scratch);
    for (const auto& [a, b] : pieces) ++counts[std::string(seg.substr(a, b - a))];
  };
  size_t start = 0, pos = 0;
  while (!pt.specials.empty() && pos < text.size()) {
    size_t best_len = 0;
    for (const auto& s : pt.specials)
      if (s.size() > best_len && text.compare(pos, s.size(), s) == 0) best_len = s.size();
    if (best_len == 0) {
      ++pos;
      continue;
    }
    count_segment(text.substr(start, pos - start));
    pos += best_len;
    start = pos;
  }
  count_segment(text.substr(start));
}

// Counts words over `n` inputs with `threads` workers; get(i) returns the i-th input's text.
template <typename Get>
WordCounts count_words(size_t n, const Pretok& pt, int64_t threads, bool show_progress, int64_t total_bytes, Get get) {
  size_t nt = static_cast<size_t>(std::max<int64_t>(1, std::min<int64_t>(threads, static_cast<int64_t>(n))));
  std::vector<WordCounts> local(nt);
  std::unique_ptr<Progress> progress;
  if (show_progress) progress = std::make_unique<Progress>("bpe: pre-tokenizing", (total_bytes + (1 << 20) - 1) >> 20, "MB");
  std::vector<std::exception_ptr> errors(nt);
  auto work = [&](size_t t) {
    try {
      detail::PretokScratch scratch;
      std::vector<std::pair<uint32_t, uint32_t>> pieces;
      int64_t pending = 0;
      for (size_t i = t; i < n; i += nt) {
        std::string holder;
        std::string_view text = get(i, holder);
        count_text(pt, text, local[t], scratch, pieces);
        pending += static_cast<int64_t>(text.size());
        if (progress && pending >= (1 << 20)) {
          progress->advance(pending >> 20);
          pending &= (1 << 20) - 1;
        }
      }
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < nt; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  if (progress) {
    progress->set((total_bytes + (1 << 20) - 1) >> 20);
    progress->finish();
  }
  for (size_t t = 1; t < nt; ++t) {
    for (auto& [w, c] : local[t]) local[0][w] += c;
    WordCounts().swap(local[t]);
  }
  return std::move(local[0]);
}

inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

Tokenizer train_from_counts(WordCounts counts, const Pretok& pt, const BpeTrainOptions& opts) {
  auto im = std::make_shared<Tokenizer::Impl>();
  im->name = "<trained>";
  im->nfc = pt.nfc;
  im->pretok.regex = pt.kind;
  im->pretok.split_form = pt.kind != detail::RegexKind::gpt2;
  // ids: special tokens, then the byte alphabet sorted by character, then merges
  for (const auto& s : pt.specials) {
    detail::AddedToken t;
    t.id = static_cast<int32_t>(im->tokens.size());
    t.content = s;
    t.special = true;
    im->tokens.push_back(s);
    im->model_vocab[s] = t.id;
    im->added.push_back(t);
  }
  std::vector<int32_t> byte_to_id(256);
  {
    std::vector<int> order(256);
    for (int b = 0; b < 256; ++b) order[b] = b;
    const auto& b2c = detail::byte_to_char();
    std::sort(order.begin(), order.end(), [&](int x, int y) { return b2c[x] < b2c[y]; });
    for (int b : order) {
      byte_to_id[b] = static_cast<int32_t>(im->tokens.size());
      std::string s;
      unicode::append_utf8(s, b2c[b]);
      im->model_vocab[s] = byte_to_id[b];
      im->tokens.push_back(std::move(s));
    }
  }
  std::vector<std::string> bytes_of(im->tokens.size());  // raw bytes of each model token
  for (int b = 0; b < 256; ++b) bytes_of[byte_to_id[b]] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, int32_t> id_of_bytes;
  for (int b = 0; b < 256; ++b) id_of_bytes[bytes_of[byte_to_id[b]]] = byte_to_id[b];

  // words, sorted for a reproducible layout
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  WordCounts().swap(counts);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> wcount(sorted.size());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const std::string& w = sorted[i].first;
    words[i].resize(w.size());
    for (size_t k = 0; k < w.size(); ++k) words[i][k] = byte_to_id[static_cast<unsigned char>(w[k])];
    wcount[i] = sorted[i].second;
  }
  std::vector<std::pair<std::string, int64_t>>().swap(sorted);

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  pair_count.reserve(1 << 20);
  where.reserve(1 << 20);
  for (uint32_t i = 0; i < words.size(); ++i) {
    const auto& w = words[i];
    for (size_t k = 0; k + 1 < w.size(); ++k) {
      uint64_t key = pair_key(w[k], w[k + 1]);
      pair_count[key] += wcount[i];
      auto& v = where[key];
      if (v.empty() || v.back() != i) v.push_back(i);
    }
  }
  struct Entry {
    int64_t count;
    uint64_t pair;
    bool operator<(const Entry& o) const {  // max-heap: higher count, then smaller pair first
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [p, c] : pair_count)
    if (c > 0) heap.push(Entry{c, p});

  const int64_t target = opts.vocab_size;
  std::unique_ptr<Progress> progress;
  int64_t to_learn = std::max<int64_t>(0, target - static_cast<int64_t>(im->tokens.size()));
  if (opts.show_progress) progress = std::make_unique<Progress>("bpe: merging", to_learn, "merges");
  std::vector<uint32_t> stamp(words.size(), 0);
  uint32_t round = 0;
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged_word;
  while (static_cast<int64_t>(im->tokens.size()) < target && !heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    if (pc == pair_count.end() || pc->second != top.count) continue;  // stale entry
    if (top.count < std::max<int64_t>(1, opts.min_frequency)) break;
    int32_t a = static_cast<int32_t>(top.pair >> 32), b = static_cast<int32_t>(top.pair & 0xFFFFFFFFu);
    std::string nb = bytes_of[a] + bytes_of[b];
    int32_t new_id;
    auto existing = id_of_bytes.find(nb);
    if (existing != id_of_bytes.end()) {
      new_id = existing->second;
    } else {
      new_id = static_cast<int32_t>(im->tokens.size());
      std::string ts = detail::bytes_to_token_string(nb);
      im->model_vocab[ts] = new_id;
      im->tokens.push_back(std::move(ts));
      bytes_of.push_back(nb);
      id_of_bytes.emplace(std::move(nb), new_id);
    }
    im->merges.emplace_back(a, b);
    ++round;
    delta.clear();
    std::vector<uint32_t> positions = std::move(where[top.pair]);
    where.erase(top.pair);
    for (uint32_t wi : positions) {
      if (stamp[wi] == round) continue;
      stamp[wi] = round;
      auto& w = words[wi];
      int64_t c = wcount[wi];
      merged_word.clear();
      bool changed = false;
      for (size_t k = 0; k < w.size();) {
        if (k + 1 < w.size() && w[k] == a && w[k + 1] == b) {
          changed = true;
          delta[top.pair] -= c;
          if (!merged_word.empty()) {
            int32_t prev = merged_word.back();
            delta[pair_key(prev, a)] -= c;
            delta[pair_key(prev, new_id)] += c;
            auto& v = where[pair_key(prev, new_id)];
            if (v.empty() || v.back() != wi) v.push_back(wi);
          }
          if (k + 2 < w.size()) {
            int32_t next = w[k + 2];
            // the next occurrence's left side is handled when it is merged (prev is then new_id)
            delta[pair_key(b, next)] -= c;
            delta[pair_key(new_id, next)] += c;
            auto& v = where[pair_key(new_id, next)];
            if (v.empty() || v.back() != wi) v.push_back(wi);
          }
          merged_word.push_back(new_id);
          k += 2;
        } else {
          merged_word.push_back(w[k]);
          ++k;
        }
      }
      if (changed) w.assign(merged_word.begin(), merged_word.end());
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& cnt = pair_count[p];
      cnt += d;
      if (cnt > 0) heap.push(Entry{cnt, p});
      else pair_count.erase(p);
    }
    if (progress) progress->advance();
  }
  if (progress) progress->finish();
  im->present.assign(im->tokens.size(), 1);
  im->finalize();
  log::info(str("bpe: learned ", im->merges.size(), " merges; vocabulary ", im->tokens.size(), " tokens (",
                pt.specials.size(), " special)"));
  return Tokenizer::from_impl(im);
}

Pretok make_pretok(const BpeTrainOptions& opts) {
  Pretok pt;
  if (opts.pre_tokenizer == "gpt2") pt.kind = detail::RegexKind::gpt2;
  else if (opts.pre_tokenizer == "qwen2") pt.kind = detail::RegexKind::qwen2;
  else if (opts.pre_tokenizer == "llama3") pt.kind = detail::RegexKind::llama3;
  else
    throw ConfigError(str("train_bpe: pre_tokenizer \"", opts.pre_tokenizer, "\" is unknown; use gpt2, qwen2 or llama3"));
  pt.nfc = pt.kind != detail::RegexKind::gpt2;
  std::unordered_set<std::string> seen;
  for (const auto& s : opts.special_tokens) {
    if (s.empty()) throw ConfigError("train_bpe: a special token is empty");
    if (seen.insert(s).second) pt.specials.push_back(s);
  }
  int64_t minimum = 256 + static_cast<int64_t>(pt.specials.size());
  if (opts.vocab_size < minimum)
    throw ConfigError(str("train_bpe: vocab_size ", opts.vocab_size, " is below the ", minimum,
                          " tokens every byte-level vocabulary holds (256 bytes + ", pt.specials.size(),
                          " special tokens)"));
  return pt;
}

int64_t thread_count(const BpeTrainOptions& opts) {
  if (opts.threads > 0) return opts.threads;
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

}  // namespace

Tokenizer train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& opts) {
  Pretok pt = make_pretok(opts);
  if (files.empty()) throw InputError("train_bpe: no input files");
  int64_t total = 0;
  for (const auto& f : files) {
    std::error_code ec;
    auto size = std::filesystem::file_size(f, ec);
    if (ec) throw InputError(str("train_bpe: cannot read input file ", f, ": ", ec.message()));
    total += static_cast<int64_t>(size);
  }
  WordCounts counts = count_words(files.size(), pt, thread_count(opts), opts.show_progress, total,
                                  [&](size_t i, std::string& holder) -> std::string_view {
                                    holder = fsx::read_file(files[i], "training file");
                                    return holder;
                                  });
  return train_from_counts(std::move(counts), pt, opts);
}

Tokenizer train_bpe_texts(const std::vector<std::string>& texts, const BpeTrainOptions& opts) {
  Pretok pt = make_pretok(opts);
  int64_t total = 0;
  for (const auto& t : texts) total += static_cast<int64_t>(t.size());
  WordCounts counts = count_words(texts.size(), pt, thread_count(opts), opts.show_progress, total,
                                  [&](size_t i, std::string&) -> std::string_view { return texts[i]; });
  return train_from_counts(std::move(counts), pt, opts);
}

}  // namespace subq::data
