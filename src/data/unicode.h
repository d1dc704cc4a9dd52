// unicode.h — internal Unicode support for the tokenizer (library subq_text): UTF-8 decoding that keeps
// invalid bytes, per-code-point classes for the pre-tokenizer regexes, NFC, and UTF-8 repair.
//
// Decisions:
//  * Tables come from scripts/gen_unicode_tables.py (Unicode 16.0, the version of the Oniguruma regex
//    engine inside HF `tokenizers`), written to unicode_tables.cpp. At first use they are expanded into a
//    two-stage lookup (256-code-point blocks, deduplicated) so that classifying a character is two loads.
//  * Invalid UTF-8 in the input is not rejected and not replaced: each invalid byte decodes to the
//    pseudo code point kInvalidBase + byte, classified as "other" (not letter, number or space), and
//    written back as the same byte. A byte-level tokenizer can encode any bytes losslessly this way.
//    (HF only accepts valid strings, so there is nothing to be compatible with.)
//  * NFC follows UAX #15 (decompose, canonical reordering, canonical composition with Hangul done
//    algorithmically). With hf_compat it applies the HF-legacy lists from the generator: combining marks
//    that HF's older normalisation data gives class 0, and the newer characters it neither decomposes
//    nor composes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace subq::data::unicode {

// General categories, in the generator's order.
enum Category : uint8_t {
  Cn, Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me, Nd, Nl, No, Pc, Pd, Ps, Pe, Pi, Pf, Po, Sm, Sc, Sk, So, Zs, Zl, Zp,
  Cc, Cf, Cs, Co, kCategoryCount
};

struct CategoryRange { uint32_t first, last; uint8_t cat; };
struct CccRange { uint32_t first, last; uint8_t ccc; };
struct Decomposition { uint32_t cp, d0, d1; };
struct Composition { uint32_t first, second, composite; };
struct CodeRange { uint32_t first, last; };

namespace tables {
extern const char* const kUnicodeVersion;
extern const bool kHfLegacyProbed;
extern const CategoryRange kCategoryRanges[];
extern const size_t kCategoryRangeCount;
extern const uint32_t kWhiteSpace[];
extern const size_t kWhiteSpaceCount;
extern const CccRange kCccRanges[];
extern const size_t kCccRangeCount;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;
extern const Composition kCompositions[];
extern const size_t kCompositionCount;
extern const CodeRange kNfcUnstable[];
extern const size_t kNfcUnstableCount;
extern const uint32_t kHfLegacyCcc0[];
extern const size_t kHfLegacyCcc0Count;
extern const Composition kHfLegacyNoCompose[];
extern const size_t kHfLegacyNoComposeCount;
extern const uint32_t kHfLegacyNoDecompose[];
extern const size_t kHfLegacyNoDecomposeCount;
}  // namespace tables

// Pseudo code points for invalid UTF-8 bytes: kInvalidBase + byte (outside Unicode's range).
constexpr uint32_t kInvalidBase = 0x110000;

// Class bits of one character, as the pre-tokenizer regexes see it.
enum ClassBit : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N}
  kSpace = 4,       // \s (White_Space)
  kNewline = 8,     // \r or \n
  kAsciiSpace = 16, // U+0020
  kApostrophe = 32, // '
  kUnstable = 64,   // may change under NFC (see gen_unicode_tables.py)
  kWord = 128,      // \w of Rust's regex crate (letters, marks, Nd, Pc, join controls; approximation)
};

// Decodes one character at p (p < end). Returns its length in bytes (>= 1) and stores the code point;
// an invalid byte yields length 1 and kInvalidBase + byte.
inline size_t decode_utf8(const unsigned char* p, const unsigned char* end, uint32_t& cp) {
  unsigned char b = p[0];
  if (b < 0x80) { cp = b; return 1; }
  size_t left = static_cast<size_t>(end - p);
  if (b >= 0xC2 && b <= 0xDF) {
    if (left >= 2 && (p[1] & 0xC0) == 0x80) { cp = ((b & 0x1Fu) << 6) | (p[1] & 0x3Fu); return 2; }
  } else if (b >= 0xE0 && b <= 0xEF) {
    if (left >= 3 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
      uint32_t c = ((b & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      if (c >= 0x800 && (c < 0xD800 || c > 0xDFFF)) { cp = c; return 3; }
    }
  } else if (b >= 0xF0 && b <= 0xF4) {
    if (left >= 4 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) {
      uint32_t c = ((b & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
      if (c >= 0x10000 && c <= 0x10FFFF) { cp = c; return 4; }
    }
  }
  cp = kInvalidBase + b;
  return 1;
}

// Appends the UTF-8 form of cp (or the raw byte of an invalid-byte pseudo code point).
void append_utf8(std::string& out, uint32_t cp);

// Class bits (ClassBit) of a code point; invalid-byte pseudo code points have none.
uint8_t classes(uint32_t cp);
Category category(uint32_t cp);
uint8_t combining_class(uint32_t cp);

// True when no character of `s` can change under NFC (fast path: ASCII, CJK, most text).
bool nfc_quick_check(std::string_view s);
// NFC of `s`. hf_compat applies HF's legacy normalisation data (see the file comment).
std::string nfc(std::string_view s, bool hf_compat = true);

// Replaces every maximal invalid UTF-8 subsequence by U+FFFD, like Rust's String::from_utf8_lossy
// (which HF's byte-level decoder uses) and Python's errors="replace".
std::string utf8_lossy(std::string_view bytes);

const char* unicode_version();

}  // namespace subq::data::unicode
