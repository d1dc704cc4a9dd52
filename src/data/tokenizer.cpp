// tokenizer.cpp — encoding and decoding with a byte-level BPE tokenizer, exactly as HF `tokenizers`.
//
// Pipeline of encode(), in HF's order:
//   1. added tokens with normalized=false are split out of the raw text (leftmost, then longest match,
//      honouring single_word/lstrip/rstrip like HF's AddedVocabulary);
//   2. each remaining segment is NFC-normalised (when the file has the NFC normaliser; skipped when a
//      quick check shows the segment cannot change), then added tokens with normalized=true are split out;
//   3. ByteLevel's add_prefix_space, then the regex pre-tokenizer cuts pieces (tokenizer_pretokenize.cpp);
//   4. each piece's bytes are merged by BPE (lowest merge rank first, leftmost on ties — the order of HF's
//      priority queue), or taken whole when ignore_merges and the piece is a vocabulary token.
// Pieces of up to 64 bytes are cached per thread (a flat open-addressing table of 128k 12-byte slots,
// cleared when half full): source code repeats its words, so most pieces skip BPE. Caches are
// thread_local and keyed by the tokenizer's serial number (the last 4 tokenizers a thread used keep
// theirs), so encode() is safe to call from many threads on one Tokenizer without locks.
// BPE uses a rank array and linear scans for short words (cheap, cache-friendly) and a binary heap over
// a linked list for long ones (a 10,000-character run of spaces must not be quadratic).
// Decoding is HF's ByteLevel decoder: each token's characters map back to bytes (a token containing a
// character outside the byte map contributes its UTF-8 text), and invalid UTF-8 in the joined bytes
// becomes U+FFFD per maximal invalid subsequence (Rust's from_utf8_lossy).
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <queue>

#include "data/tokenizer_impl.h"
#include "data/unicode.h"
#include "subq/core/error.h"

namespace subq::data {

namespace detail {

const std::array<uint32_t, 256>& byte_to_char() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

int char_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t{};
    t.fill(-1);
    const auto& f = byte_to_char();
    for (int b = 0; b < 256; ++b) t[f[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

std::string bytes_to_token_string(std::string_view bytes) {
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) unicode::append_utf8(s, byte_to_char()[b]);
  return s;
}

std::optional<std::string> token_string_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  const auto* end = p + token.size();
  while (p < end) {
    uint32_t cp;
    p += unicode::decode_utf8(p, end, cp);
    int b = char_to_byte(cp);
    if (b < 0) return std::nullopt;
    out.push_back(static_cast<char>(b));
  }
  return out;
}

void MergeTable::build(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::vector<int32_t>& results) {
  size_t cap = 16;
  while (cap < merges.size() * 2 + 2) cap <<= 1;
  slots_.assign(cap, Slot{kEmpty, 0, 0});
  mask_ = cap - 1;
  for (size_t r = 0; r < merges.size(); ++r) {
    uint64_t key = (uint64_t(uint32_t(merges[r].first)) << 32) | uint32_t(merges[r].second);
    size_t i = hash(key) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    if (slots_[i].key == key) continue;  // a repeated merge keeps its first (lowest) rank, like HF
    slots_[i] = Slot{key, static_cast<int32_t>(r), results[r]};
  }
}

namespace {

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (s.size() * 0xC2B2AE3D27D4EB4FULL);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0xC4CEB9FE1A85EC53ULL;
  h ^= h >> 32;
  return h;
}

// Per-thread cache of piece -> ids. Slots are 12 bytes (a 32-bit hash tag, the entry's offset and
// lengths) so the table stays small enough for the L2 cache; an entry's key bytes and ids sit next to
// each other in one arena, so a hit costs two memory accesses.
class WordCache {
 public:
  static constexpr size_t kMaxKey = 64;
  uint64_t owner() const { return owner_; }
  void reset(uint64_t owner) {
    if (owner_ == owner) return;
    owner_ = owner;
    clear();
  }
  // Appends the cached ids of `key` to `out`; false when absent.
  bool find(std::string_view key, uint64_t h, std::vector<int32_t>& out) const {
    if (slots_.empty()) return false;
    uint32_t tag = tag_of(h);
    size_t i = h & kMask;
    for (;;) {
      const Slot& s = slots_[i];
      if (s.tag == 0) return false;
      if (s.tag == tag && s.key_len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0) {
        size_t old = out.size();
        out.resize(old + s.ids_len);
        std::memcpy(out.data() + old, arena_.data() + s.off + key.size(), s.ids_len * sizeof(int32_t));
        return true;
      }
      i = (i + 1) & kMask;
    }
  }
  void insert(std::string_view key, uint64_t h, const int32_t* ids, size_t n) {
    if (slots_.empty()) slots_.resize(kSlots);
    if (count_ * 2 >= kSlots || arena_.size() > (64u << 20)) clear();
    size_t i = h & kMask;
    while (slots_[i].tag != 0) i = (i + 1) & kMask;
    slots_[i] = Slot{tag_of(h), static_cast<uint32_t>(arena_.size()), static_cast<uint16_t>(key.size()),
                     static_cast<uint16_t>(n)};
    arena_.append(key);
    arena_.append(reinterpret_cast<const char*>(ids), n * sizeof(int32_t));
    ++count_;
  }

 private:
  static constexpr size_t kSlots = size_t(1) << 17;
  static constexpr size_t kMask = kSlots - 1;
  struct Slot {
    uint32_t tag = 0;  // 0 = empty
    uint32_t off = 0;
    uint16_t key_len = 0, ids_len = 0;
  };
  static uint32_t tag_of(uint64_t h) { return static_cast<uint32_t>(h >> 32) | 1u; }
  void clear() {
    if (!slots_.empty()) std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    count_ = 0;
  }
  uint64_t owner_ = 0;
  std::vector<Slot> slots_;
  std::string arena_;
  size_t count_ = 0;
};

struct EncodeState {
  PretokScratch scratch;
  std::vector<std::pair<uint32_t, uint32_t>> pieces;
  // caches of the last few tokenizers used on this thread (least recently used one is recycled), so
  // alternating between two tokenizers does not clear a cache on every call
  static constexpr int kCaches = 4;
  WordCache caches[kCaches];
  uint64_t last_use[kCaches] = {};
  uint64_t clock = 0;
  WordCache* cache = nullptr;
  void select_cache(uint64_t serial) {
    int pick = 0;
    for (int i = 0; i < kCaches; ++i) {
      if (caches[i].owner() == serial) { pick = i; break; }
      if (last_use[i] < last_use[pick]) pick = i;
    }
    caches[pick].reset(serial);
    last_use[pick] = ++clock;
    cache = &caches[pick];
  }
  std::vector<int32_t> sym, ranks, word;
  std::string normalized, prefixed;
};

EncodeState& state() {
  thread_local EncodeState s;
  return s;
}

std::atomic<size_t> g_scan_limit{48};

// BPE over the symbols in `sym` (initial byte ids), in place.
void bpe_merge(const MergeTable& mt, std::vector<int32_t>& sym, std::vector<int32_t>& ranks) {
  size_t n = sym.size();
  if (n < 2) return;
  if (n <= g_scan_limit.load(std::memory_order_relaxed)) {
    ranks.resize(n);
    int32_t r = 0, m = 0;
    for (size_t i = 0; i + 1 < n; ++i) ranks[i] = mt.find(sym[i], sym[i + 1], r, m) ? r : INT_MAX;
    ranks[n - 1] = INT_MAX;
    while (n > 1) {
      size_t best = 0;
      int32_t best_rank = INT_MAX;
      for (size_t i = 0; i + 1 < n; ++i)
        if (ranks[i] < best_rank) { best_rank = ranks[i]; best = i; }
      if (best_rank == INT_MAX) break;
      mt.find(sym[best], sym[best + 1], r, m);
      sym[best] = m;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      --n;
      ranks[best] = best + 1 < n && mt.find(sym[best], sym[best + 1], r, m) ? r : INT_MAX;
      if (best > 0) ranks[best - 1] = mt.find(sym[best - 1], sym[best], r, m) ? r : INT_MAX;
    }
    return;
  }
  // long words: linked list + heap ordered by (rank, position)
  struct Node { int32_t id, prev, next; };
  std::vector<Node> nodes(n);
  for (size_t i = 0; i < n; ++i)
    nodes[i] = Node{sym[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  struct Cand { int32_t rank, pos, left, right; };
  auto cmp = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  std::priority_queue<Cand, std::vector<Cand>, decltype(cmp)> heap(cmp);
  auto push = [&](int32_t i) {
    int32_t j = nodes[i].next;
    int32_t r = 0, m = 0;
    if (j >= 0 && mt.find(nodes[i].id, nodes[j].id, r, m)) heap.push(Cand{r, i, nodes[i].id, nodes[j].id});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Node& a = nodes[c.pos];
    if (a.id != c.left || a.next < 0 || nodes[a.next].id != c.right) continue;  // stale
    int32_t r = 0, m = 0;
    mt.find(c.left, c.right, r, m);
    int32_t b = a.next;
    a.id = m;
    a.next = nodes[b].next;
    if (a.next >= 0) nodes[a.next].prev = c.pos;
    nodes[b].id = -1;
    if (a.prev >= 0) push(a.prev);
    push(c.pos);
  }
  sym.clear();
  for (int32_t i = 0; i >= 0; i = nodes[i].next) sym.push_back(nodes[i].id);
}

void encode_word(const Tokenizer::Impl& im, std::string_view w, std::vector<int32_t>& out, EncodeState& st) {
  if (w.size() == 1) {
    out.push_back(im.byte_id[static_cast<unsigned char>(w[0])]);
    return;
  }
  bool cacheable = w.size() <= WordCache::kMaxKey;
  uint64_t h = 0;
  if (cacheable) {
    h = hash_bytes(w);
    if (st.cache->find(w, h, out)) return;
  }
  if (im.ignore_merges) {
    auto it = im.model_bytes.find(std::string(w));
    if (it != im.model_bytes.end()) {
      out.push_back(it->second);
      if (cacheable) st.cache->insert(w, h, &it->second, 1);
      return;
    }
  }
  st.sym.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) st.sym[i] = im.byte_id[static_cast<unsigned char>(w[i])];
  bpe_merge(im.merge_table, st.sym, st.ranks);
  out.insert(out.end(), st.sym.begin(), st.sym.end());
  if (cacheable) st.cache->insert(w, h, st.sym.data(), st.sym.size());
}

// Pre-tokenizes and BPE-encodes one normalised segment that holds no added token.
void encode_plain(const Tokenizer::Impl& im, std::string_view text, std::vector<int32_t>& out, EncodeState& st) {
  if (text.empty()) return;
  if (im.pretok.add_prefix_space && text[0] != ' ') {
    st.prefixed.assign(1, ' ');
    st.prefixed.append(text);
    text = st.prefixed;
  }
  if (!im.pretok.regex) {
    encode_word(im, text, out, st);
    return;
  }
  st.pieces.clear();
  detail::pretokenize(*im.pretok.regex, text, st.pieces, st.scratch);
  for (const auto& [a, b] : st.pieces) encode_word(im, text.substr(a, b - a), out, st);
}

bool is_space_cp(uint32_t cp) { return (unicode::classes(cp) & unicode::kSpace) != 0; }

// Whether the text before `pos` ends with a \w character / after `pos` starts with one.
bool ends_with_word(std::string_view t, size_t pos) {
  if (pos == 0) return false;
  size_t b = pos - 1;
  while (b > 0 && (static_cast<unsigned char>(t[b]) & 0xC0) == 0x80) --b;
  uint32_t cp;
  unicode::decode_utf8(reinterpret_cast<const unsigned char*>(t.data()) + b,
                       reinterpret_cast<const unsigned char*>(t.data()) + pos, cp);
  return (unicode::classes(cp) & unicode::kWord) != 0;
}
bool starts_with_word(std::string_view t, size_t pos) {
  if (pos >= t.size()) return false;
  uint32_t cp;
  unicode::decode_utf8(reinterpret_cast<const unsigned char*>(t.data()) + pos,
                       reinterpret_cast<const unsigned char*>(t.data()) + t.size(), cp);
  return (unicode::classes(cp) & unicode::kWord) != 0;
}
size_t leading_space_end(std::string_view t, size_t pos) {
  const auto* base = reinterpret_cast<const unsigned char*>(t.data());
  while (pos < t.size()) {
    uint32_t cp;
    size_t len = unicode::decode_utf8(base + pos, base + t.size(), cp);
    if (!is_space_cp(cp)) break;
    pos += len;
  }
  return pos;
}
size_t trailing_space_start(std::string_view t, size_t pos) {
  const auto* base = reinterpret_cast<const unsigned char*>(t.data());
  while (pos > 0) {
    size_t b = pos - 1;
    while (b > 0 && (base[b] & 0xC0) == 0x80 && pos - b < 4) --b;
    uint32_t cp;
    if (unicode::decode_utf8(base + b, base + pos, cp) != pos - b || !is_space_cp(cp)) break;
    pos = b;
  }
  return pos;
}

}  // namespace

void set_bpe_scan_limit(size_t n) { g_scan_limit.store(n); }

// Splits `text` at the added tokens whose `normalized` flag equals `normalized_set`, as HF's
// AddedVocabulary::find_matches; calls on_text(segment) and on_token(id) in order.
template <typename OnText, typename OnToken>
void split_added(const Tokenizer::Impl& im, std::string_view text, bool normalized_set, OnText on_text, OnToken on_token) {
  const AddedTrie& trie = normalized_set ? im.added_norm : im.added_raw;
  size_t start_offset = 0, pos = 0, n = text.size();
  while (pos < n) {
    if (!trie.may_start(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    size_t plen = 0;
    int32_t k = trie.longest(text, pos, plen);
    if (k < 0) {
      ++pos;
      continue;
    }
    const AddedToken* hit = &im.added[k];
    size_t start = pos, stop = pos + plen;
    pos = stop;
    if (hit->single_word && (ends_with_word(text, start) || starts_with_word(text, stop))) continue;
    if (hit->lstrip) start = std::max(trailing_space_start(text, start), start_offset);
    if (hit->rstrip) stop = leading_space_end(text, stop);
    start = std::max(start, start_offset);
    if (start_offset < start) on_text(text.substr(start_offset, start - start_offset));
    on_token(hit->id);
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < n) on_text(text.substr(start_offset));
}

}  // namespace detail

using detail::EncodeState;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  const Impl& im = *impl_;
  EncodeState& st = detail::state();
  st.select_cache(im.serial);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  auto normalized_segment = [&](std::string_view seg) {
    std::string norm;
    if (im.nfc && !unicode::nfc_quick_check(seg)) {
      norm = unicode::nfc(seg);
      seg = norm;
    }
    if (allow_special && im.has_normalized_added) {
      detail::split_added(im, seg, true, [&](std::string_view t) { detail::encode_plain(im, t, out, st); },
                          [&](int32_t id) { out.push_back(id); });
    } else {
      detail::encode_plain(im, seg, out, st);
    }
  };
  if (allow_special && im.has_raw_added) {
    detail::split_added(im, text, false, normalized_segment, [&](int32_t id) { out.push_back(id); });
  } else {
    normalized_segment(text);
  }
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n, bool skip_special) const {
  return unicode::utf8_lossy(decode_bytes(ids, n, skip_special));
}

std::string Tokenizer::decode_bytes(const int32_t* ids, size_t n, bool skip_special) const {
  const Impl& im = *impl_;
  std::string bytes;
  bytes.reserve(n * 4);
  for (size_t i = 0; i < n; ++i) {
    int32_t id = ids[i];
    if (id < 0 || id >= im.vocab_size() || !im.present[id])
      throw InputError(str("decode: token id ", id, " is not in the vocabulary of ", im.name, " (ids are 0..",
                           im.vocab_size() - 1, ")"));
    if (skip_special && im.special[id]) continue;
    bytes.append(im.token_bytes[id]);
  }
  return bytes;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  auto a = impl_->added_vocab.find(token);
  if (a != impl_->added_vocab.end()) return a->second;
  auto m = impl_->model_vocab.find(token);
  if (m != impl_->model_vocab.end()) return m->second;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const Impl& im = *impl_;
  if (id < 0 || id >= im.vocab_size() || !im.present[id])
    throw InputError(str("id_to_token: token id ", id, " is not in the vocabulary of ", im.name));
  return im.tokens[id];
}

int64_t Tokenizer::token_bytes(int32_t id) const {
  const Impl& im = *impl_;
  if (id < 0 || id >= im.vocab_size() || !im.present[id])
    throw InputError(str("token_bytes: token id ", id, " is not in the vocabulary of ", im.name));
  return im.special[id] ? 0 : static_cast<int64_t>(im.token_bytes[id].size());
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < impl_->vocab_size() && impl_->special[id];
}

std::optional<int32_t> Tokenizer::eos_id() const {
  for (const char* t : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"})
    if (auto id = token_to_id(t)) return id;
  return std::nullopt;
}

void Tokenizer::Impl::finalize() {
  static std::atomic<uint64_t> next_serial{1};
  serial = next_serial++;
  int32_t n = vocab_size();
  present.resize(n, 0);
  special.assign(n, 0);
  token_bytes.assign(n, std::string());
  model_bytes.clear();
  for (int32_t id = 0; id < n; ++id) {
    if (!present[id]) continue;
    auto b = detail::token_string_to_bytes(tokens[id]);
    token_bytes[id] = b ? *b : tokens[id];
  }
  for (const auto& [tok, id] : model_vocab) {
    auto b = detail::token_string_to_bytes(tok);
    if (b) model_bytes.emplace(*b, id);
  }
  const auto& b2c = detail::byte_to_char();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(s, b2c[b]);
    auto it = model_vocab.find(s);
    if (it == model_vocab.end())
      throw InputError(str(name, ": model.vocab has no token for byte 0x", std::hex, b, std::dec, " (\"", s,
                           "\"); a byte-level BPE vocabulary needs all 256 byte tokens"));
    byte_id[b] = it->second;
  }
  std::vector<int32_t> results(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    std::string merged = tokens[a] + tokens[b];
    auto it = model_vocab.find(merged);
    if (it == model_vocab.end())
      throw InputError(str(name, ": model.merges[", r, "] (\"", tokens[a], "\" \"", tokens[b], "\") makes \"", merged,
                           "\", which is not in model.vocab"));
    results[r] = it->second;
  }
  merge_table.build(merges, results);

  added_vocab.clear();
  added_raw.clear();
  added_norm.clear();
  has_raw_added = has_normalized_added = false;
  for (size_t k = 0; k < added.size(); ++k) {
    const auto& t = added[k];
    added_vocab[t.content] = t.id;
    if (t.special) special[t.id] = 1;
    if (t.content.empty()) continue;
    if (t.normalized) {
      added_norm.insert(nfc ? unicode::nfc(t.content) : t.content, static_cast<int32_t>(k));
      has_normalized_added = true;
    } else {
      added_raw.insert(t.content, static_cast<int32_t>(k));
      has_raw_added = true;
    }
  }
}

}  // namespace subq::data
