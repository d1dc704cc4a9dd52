// tokenizer_pretokenize.cpp — hand-written matchers for the GPT-2, Qwen2 and Llama-3 pre-tokenizer
// regexes (see tokenizer_pretokenize.h for the patterns).
//
// Each matcher first classifies every character (class bits from unicode.h; a 128-entry table for
// ASCII), then walks the alternatives of the pattern in order at the current position, exactly as a
// backtracking engine would, and emits the first alternative that matches. Derivations of the tricky
// alternatives (with a run of whitespace [i, e) and e < n meaning a non-space follows):
//   \s+(?!\S)    matches [i, e) when e == n, else backtracks one character: [i, e-1) if e-i >= 2, else fails
//   \s*[\r\n]+   matches [i, k+1) where k is the last \r or \n inside the run (fails if there is none)
// Case-insensitive contractions (qwen2/llama3) follow Oniguruma's Unicode case folding: 's' also
// matches U+017F LATIN SMALL LETTER LONG S; the other letters only fold within ASCII.
// Invalid UTF-8 bytes are single characters with no class ("other").
#include "data/tokenizer_pretokenize.h"

#include "data/unicode.h"

namespace subq::data::detail {

namespace {

using unicode::kApostrophe;
using unicode::kAsciiSpace;
using unicode::kLetter;
using unicode::kNewline;
using unicode::kNumber;
using unicode::kSpace;

struct AsciiClasses {
  uint8_t c[128];
  AsciiClasses() {
    for (uint32_t i = 0; i < 128; ++i) c[i] = unicode::classes(i) & (kLetter | kNumber | kSpace | kNewline | kAsciiSpace | kApostrophe);
  }
};

void classify(std::string_view text, PretokScratch& s) {
  static const AsciiClasses ascii;
  s.cls.clear();
  s.off.clear();
  const auto* base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* p = base;
  const auto* end = base + text.size();
  while (p < end) {
    s.off.push_back(static_cast<uint32_t>(p - base));
    if (*p < 0x80) {
      s.cls.push_back(ascii.c[*p]);
      ++p;
    } else {
      uint32_t cp;
      p += unicode::decode_utf8(p, end, cp);
      s.cls.push_back(unicode::classes(cp) & (kLetter | kNumber | kSpace));
    }
  }
  s.off.push_back(static_cast<uint32_t>(text.size()));
}

inline bool is_other(uint8_t c) { return (c & (kLetter | kNumber | kSpace)) == 0; }

// Length in characters of a contraction at i (c[i] is an apostrophe), 0 if none.
size_t contraction(std::string_view text, const PretokScratch& s, size_t i, size_t n, bool fold) {
  if (i + 1 >= n) return 0;
  auto lower = [&](size_t k) -> int {
    uint32_t a = s.off[k], b = s.off[k + 1];
    if (b - a == 1) {
      int ch = static_cast<unsigned char>(text[a]);
      if (fold && ch >= 'A' && ch <= 'Z') ch += 32;
      return ch;
    }
    // U+017F LATIN SMALL LETTER LONG S folds to 's'
    if (fold && b - a == 2 && static_cast<unsigned char>(text[a]) == 0xC5 && static_cast<unsigned char>(text[a + 1]) == 0xBF)
      return 's';
    return -1;
  };
  int c1 = lower(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= n) return 0;
  int c2 = lower(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

template <typename Pred>
inline size_t run(const std::vector<uint8_t>& c, size_t i, size_t n, Pred pred) {
  while (i < n && pred(c[i])) ++i;
  return i;
}

// \s+(?!\S)|\s+ at i (c[i] is whitespace): end of the match.
inline size_t space_run(const std::vector<uint8_t>& c, size_t i, size_t n) {
  size_t e = run(c, i, n, [](uint8_t x) { return (x & kSpace) != 0; });
  if (e == n || e - i < 2) return e;
  return e - 1;
}

void gpt2(std::string_view text, PretokScratch& s, std::vector<std::pair<uint32_t, uint32_t>>& out) {
  const auto& c = s.cls;
  const size_t n = c.size();
  size_t i = 0;
  while (i < n) {
    size_t e;
    uint8_t x = c[i];
    size_t k;
    if ((x & kApostrophe) && (k = contraction(text, s, i, n, false)) != 0) {
      e = i + k;
    } else if (!(x & kSpace) || ((x & kAsciiSpace) && i + 1 < n && !(c[i + 1] & kSpace))) {
      // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+'
      size_t j = (x & kSpace) ? i + 1 : i;
      uint8_t y = c[j];
      if (y & kLetter) e = run(c, j, n, [](uint8_t z) { return (z & kLetter) != 0; });
      else if (y & kNumber) e = run(c, j, n, [](uint8_t z) { return (z & kNumber) != 0; });
      else e = run(c, j, n, [](uint8_t z) { return is_other(z); });
    } else {
      e = space_run(c, i, n);
    }
    out.emplace_back(s.off[i], s.off[e]);
    i = e;
  }
}

void qwen2(std::string_view text, PretokScratch& s, std::vector<std::pair<uint32_t, uint32_t>>& out,
           size_t max_digits) {
  const auto& c = s.cls;
  const size_t n = c.size();
  size_t i = 0;
  auto letters = [](uint8_t z) { return (z & kLetter) != 0; };
  while (i < n) {
    size_t e, k;
    uint8_t x = c[i];
    if ((x & kApostrophe) && (k = contraction(text, s, i, n, true)) != 0) {
      e = i + k;  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    } else if (x & kLetter) {
      e = run(c, i, n, letters);  // [^\r\n\p{L}\p{N}]?\p{L}+ without the prefix
    } else if (!(x & (kNewline | kNumber)) && i + 1 < n && (c[i + 1] & kLetter)) {
      e = run(c, i + 1, n, letters);  // ... with a one-character prefix (space, tab, punctuation)
    } else if (x & kNumber) {
      e = i + 1;  // \p{N}{1,max}
      while (e < n && e - i < max_digits && (c[e] & kNumber)) ++e;
    } else if (is_other(x) || ((x & kAsciiSpace) && i + 1 < n && is_other(c[i + 1]))) {
      // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
      e = run(c, (x & kSpace) ? i + 1 : i, n, [](uint8_t z) { return is_other(z); });
      e = run(c, e, n, [](uint8_t z) { return (z & kNewline) != 0; });
    } else {
      // whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
      size_t r = run(c, i, n, [](uint8_t z) { return (z & kSpace) != 0; });
      size_t last_nl = SIZE_MAX;
      for (size_t q = r; q > i; --q)
        if (c[q - 1] & kNewline) { last_nl = q - 1; break; }
      if (last_nl != SIZE_MAX) e = last_nl + 1;
      else if (r == n || r - i < 2) e = r;
      else e = r - 1;
    }
    out.emplace_back(s.off[i], s.off[e]);
    i = e;
  }
}

}  // namespace

const std::string& regex_pattern(RegexKind kind) {
  static const std::string gpt2_pat = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  static const std::string qwen2_pat =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string llama3_pat =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  switch (kind) {
    case RegexKind::gpt2: return gpt2_pat;
    case RegexKind::qwen2: return qwen2_pat;
    case RegexKind::llama3: return llama3_pat;
  }
  return gpt2_pat;
}

std::optional<RegexKind> regex_kind_of(const std::string& pattern) {
  for (RegexKind k : {RegexKind::gpt2, RegexKind::qwen2, RegexKind::llama3})
    if (pattern == regex_pattern(k)) return k;
  return std::nullopt;
}

const char* regex_kind_name(RegexKind kind) {
  switch (kind) {
    case RegexKind::gpt2: return "gpt2";
    case RegexKind::qwen2: return "qwen2";
    case RegexKind::llama3: return "llama3";
  }
  return "?";
}

void pretokenize(RegexKind kind, std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& pieces,
                 PretokScratch& scratch) {
  if (text.empty()) return;
  classify(text, scratch);
  switch (kind) {
    case RegexKind::gpt2: gpt2(text, scratch, pieces); break;
    case RegexKind::qwen2: qwen2(text, scratch, pieces, 1); break;
    case RegexKind::llama3: qwen2(text, scratch, pieces, 3); break;
  }
}

}  // namespace subq::data::detail
