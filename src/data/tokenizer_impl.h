// tokenizer_impl.h — the inside of subq::data::Tokenizer, shared by tokenizer.cpp (encode/decode),
// tokenizer_json.cpp (tokenizer.json in and out) and bpe_train.cpp (training). Internal to subq_text.
//
// Decisions:
//  * BPE runs on raw bytes, never on GPT-2's byte-to-unicode strings: the 256 single-byte tokens and the
//    merges are turned into ids once, and a word is merged as a sequence of ids. The printable-character
//    form only exists at the file boundary (vocab keys, merges) and for id_to_token().
//  * Merges live in an open-addressing hash table keyed by the pair of ids (left << 32 | right), which is
//    several times faster than std::unordered_map on this hot path.
//  * Every byte value must have its single-byte token (InputError otherwise): with all 256 present, any
//    text encodes losslessly and there is no unknown-token path to get wrong.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer_pretokenize.h"
#include "subq/data/tokenizer.h"

namespace subq::data::detail {

// GPT-2's reversible byte <-> printable character map (bytes that are printable Latin-1 map to
// themselves, the rest to U+0100 onwards in byte order).
const std::array<uint32_t, 256>& byte_to_char();
// The byte a character stands for, or -1.
int char_to_byte(uint32_t cp);
// Raw bytes -> the printable form used in tokenizer.json; and back (nullopt when a character is not
// one of the 256 byte characters).
std::string bytes_to_token_string(std::string_view bytes);
std::optional<std::string> token_string_to_bytes(std::string_view token);

// Words of up to this many bytes are merged by linear scans, longer ones with a heap (default 48).
// For tests, which compare the two paths; not thread-safe against concurrent encoding.
void set_bpe_scan_limit(size_t n);

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

class MergeTable {
 public:
  void build(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::vector<int32_t>& results);
  // rank and merged id of (a, b); false when the pair is not a merge
  bool find(int32_t a, int32_t b, int32_t& rank, int32_t& merged) const {
    if (slots_.empty()) return false;
    uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    size_t i = hash(key) & mask_;
    for (;;) {
      const Slot& s = slots_[i];
      if (s.key == key) { rank = s.rank; merged = s.merged; return true; }
      if (s.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
  struct Slot { uint64_t key; int32_t rank, merged; };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Byte trie of added-token patterns: the longest pattern starting at a position, in O(its length)
// whatever the number of added tokens (Llama-3 has 256 reserved ones, all starting with "<|").
class AddedTrie {
 public:
  void clear() {
    nodes_.assign(1, Node{});
    first_.fill(false);
  }
  // The first pattern inserted wins over a later identical one.
  void insert(std::string_view pattern, int32_t index) {
    if (pattern.empty()) return;
    first_[static_cast<unsigned char>(pattern[0])] = true;
    int32_t cur = 0;
    for (unsigned char b : pattern) {
      int32_t nxt = child(cur, b);
      if (nxt < 0) {
        nxt = static_cast<int32_t>(nodes_.size());
        nodes_[cur].next.emplace_back(b, nxt);
        nodes_.emplace_back();
      }
      cur = nxt;
    }
    if (nodes_[cur].index < 0) nodes_[cur].index = index;
  }
  bool may_start(unsigned char b) const { return first_[b]; }
  // Index of the longest pattern at text[pos..] (its length in len), or -1.
  int32_t longest(std::string_view text, size_t pos, size_t& len) const {
    int32_t cur = 0, best = -1;
    for (size_t i = pos; i < text.size(); ++i) {
      cur = child(cur, static_cast<unsigned char>(text[i]));
      if (cur < 0) break;
      if (nodes_[cur].index >= 0) {
        best = nodes_[cur].index;
        len = i + 1 - pos;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t index = -1;
  };
  int32_t child(int32_t node, unsigned char b) const {
    for (const auto& [c, n] : nodes_[node].next)
      if (c == b) return n;
    return -1;
  }
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

struct PretokConfig {
  std::optional<RegexKind> regex;  // none: the whole text is one piece (ByteLevel with use_regex=false)
  bool add_prefix_space = false;   // ByteLevel's add_prefix_space
  bool split_form = false;         // written as Sequence[Split(regex), ByteLevel] (Qwen/Llama) or ByteLevel alone
};

}  // namespace subq::data::detail

namespace subq::data {

struct Tokenizer::Impl {
  std::string name;  // the file it came from, for messages
  bool nfc = false;
  detail::PretokConfig pretok;
  // model
  std::vector<std::string> tokens;          // id -> token string as in tokenizer.json ("" for holes)
  std::vector<uint8_t> present;             // id -> 1 when the id is a model or added token
  std::vector<std::string> token_bytes;     // id -> bytes the ByteLevel decoder turns it into
  std::unordered_map<std::string, int32_t> model_vocab;  // token string -> id (model only)
  std::unordered_map<std::string, int32_t> model_bytes;  // raw bytes -> id (model only, ignore_merges)
  std::vector<std::pair<int32_t, int32_t>> merges;       // in rank order
  detail::MergeTable merge_table;
  std::array<int32_t, 256> byte_id{};
  bool ignore_merges = false;
  // added tokens, in file order
  std::vector<detail::AddedToken> added;
  std::unordered_map<std::string, int32_t> added_vocab;  // content -> id
  std::vector<uint8_t> special;                          // id -> 1 for special added tokens
  // added-token matching (values: indices into `added`); normalized=true tokens match their
  // normalised content
  detail::AddedTrie added_raw, added_norm;
  bool has_raw_added = false, has_normalized_added = false;
  std::string post_processor_json = "null";              // kept verbatim for to_json()
  uint64_t serial = 0;                                   // identifies this instance for word caches

  // Fills the derived tables (byte ids, merge table, token bytes, added-token lookups) from tokens,
  // merges and added. InputError naming `name` when the vocabulary cannot be used.
  void finalize();
  int32_t vocab_size() const { return static_cast<int32_t>(tokens.size()); }
};

}  // namespace subq::data
