// unicode.cpp — lookups over the generated Unicode tables (unicode_tables.cpp), NFC, UTF-8 repair.
//
// The per-code-point table is built once, on first use, from the generated ranges: a two-stage table
// (stage 1: block index per 256 code points; stage 2: deduplicated blocks of uint16 = category << 8 |
// class bits). Building it takes a few milliseconds; afterwards classifying a character costs two loads.
// The NFC path (decompose, reorder, compose) only runs on strings that contain an NFC-unstable
// character, which source code almost never does.
#include "data/unicode.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace subq::data::unicode {

namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

struct Tables {
  std::vector<uint16_t> stage1;  // block index per 256 code points
  std::vector<uint16_t> stage2;  // blocks of 256 entries
  std::unordered_map<uint64_t, uint32_t> compose;         // (first << 21 | second) -> composite
  std::unordered_map<uint64_t, uint32_t> compose_legacy;  // the same minus HF-legacy pairs
  std::unordered_set<uint32_t> legacy_ccc0, legacy_nodecomp;

  Tables() {
    std::vector<uint16_t> full(0x110000, 0);
    for (size_t i = 0; i < tables::kCategoryRangeCount; ++i) {
      const auto& r = tables::kCategoryRanges[i];
      uint8_t bits = 0;
      switch (r.cat) {
        case Lu: case Ll: case Lt: case Lm: case Lo: bits = kLetter | kWord; break;
        case Nd: bits = kNumber | kWord; break;
        case Nl: bits = kNumber | kWord; break;  // Nl is Alphabetic, hence \w
        case No: bits = kNumber; break;
        case Mn: case Mc: case Me: case Pc: bits = kWord; break;
        default: break;
      }
      for (uint32_t c = r.first; c <= r.last; ++c) full[c] = static_cast<uint16_t>((r.cat << 8) | bits);
    }
    for (size_t i = 0; i < tables::kWhiteSpaceCount; ++i) full[tables::kWhiteSpace[i]] |= kSpace;
    full['\r'] |= kNewline;
    full['\n'] |= kNewline;
    full[' '] |= kAsciiSpace;
    full['\''] |= kApostrophe;
    full[0x200C] |= kWord;
    full[0x200D] |= kWord;
    for (size_t i = 0; i < tables::kNfcUnstableCount; ++i)
      for (uint32_t c = tables::kNfcUnstable[i].first; c <= tables::kNfcUnstable[i].last; ++c) full[c] |= kUnstable;

    const uint32_t nblocks = 0x110000 / 256;
    stage1.resize(nblocks);
    std::unordered_map<std::string, uint16_t> seen;
    for (uint32_t b = 0; b < nblocks; ++b) {
      std::string key(reinterpret_cast<const char*>(&full[b * 256]), 256 * sizeof(uint16_t));
      auto it = seen.find(key);
      if (it == seen.end()) {
        uint16_t idx = static_cast<uint16_t>(stage2.size() / 256);
        stage2.insert(stage2.end(), full.begin() + b * 256, full.begin() + (b + 1) * 256);
        it = seen.emplace(std::move(key), idx).first;
      }
      stage1[b] = it->second;
    }

    for (size_t i = 0; i < tables::kHfLegacyCcc0Count; ++i) legacy_ccc0.insert(tables::kHfLegacyCcc0[i]);
    for (size_t i = 0; i < tables::kHfLegacyNoDecomposeCount; ++i) legacy_nodecomp.insert(tables::kHfLegacyNoDecompose[i]);
    std::unordered_set<uint64_t> no_compose;
    for (size_t i = 0; i < tables::kHfLegacyNoComposeCount; ++i) {
      const auto& p = tables::kHfLegacyNoCompose[i];
      no_compose.insert((uint64_t(p.first) << 21) | p.second);
    }
    for (size_t i = 0; i < tables::kCompositionCount; ++i) {
      const auto& p = tables::kCompositions[i];
      uint64_t key = (uint64_t(p.first) << 21) | p.second;
      compose[key] = p.composite;
      if (!no_compose.count(key)) compose_legacy[key] = p.composite;
    }
  }

  uint16_t entry(uint32_t cp) const {
    if (cp >= 0x110000) return 0;
    return stage2[size_t(stage1[cp >> 8]) * 256 + (cp & 0xFF)];
  }
};

const Tables& T() {
  static const Tables t;
  return t;
}

uint8_t ccc_of(uint32_t cp, bool hf) {
  if (cp < 0x300 || cp >= 0x110000) return 0;
  const auto* begin = tables::kCccRanges;
  const auto* end = begin + tables::kCccRangeCount;
  auto it = std::upper_bound(begin, end, cp, [](uint32_t c, const CccRange& r) { return c < r.first; });
  if (it == begin) return 0;
  --it;
  if (cp > it->last) return 0;
  if (hf && T().legacy_ccc0.count(cp)) return 0;
  return it->ccc;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out, bool hf) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* begin = tables::kDecompositions;
  const auto* end = begin + tables::kDecompositionCount;
  auto it = std::lower_bound(begin, end, cp, [](const Decomposition& d, uint32_t c) { return d.cp < c; });
  if (it == end || it->cp != cp || (hf && T().legacy_nodecomp.count(cp))) {
    out.push_back(cp);
    return;
  }
  decompose(it->d0, out, hf);
  if (it->d1) decompose(it->d1, out, hf);
}

bool compose_pair(uint32_t a, uint32_t b, bool hf, uint32_t& out) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    out = kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    return true;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    out = a + (b - kTBase);
    return true;
  }
  const auto& m = hf ? T().compose_legacy : T().compose;
  auto it = m.find((uint64_t(a) << 21) | b);
  if (it == m.end()) return false;
  out = it->second;
  return true;
}

}  // namespace

const char* unicode_version() { return tables::kUnicodeVersion; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x110000) {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(cp - kInvalidBase));  // an invalid input byte, kept as it was
  }
}

uint8_t classes(uint32_t cp) { return static_cast<uint8_t>(T().entry(cp) & 0xFF); }
Category category(uint32_t cp) { return static_cast<Category>(T().entry(cp) >> 8); }
uint8_t combining_class(uint32_t cp) { return ccc_of(cp, false); }

bool nfc_quick_check(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  const Tables& t = T();
  while (p < end) {
    if (*p < 0x80) { ++p; continue; }
    uint32_t cp;
    p += decode_utf8(p, end, cp);
    if (t.entry(cp) & kUnstable) return false;
  }
  return true;
}

std::string nfc(std::string_view s, bool hf) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  std::vector<uint32_t> d;
  d.reserve(s.size() + 8);
  while (p < end) {
    uint32_t cp;
    p += decode_utf8(p, end, cp);
    decompose(cp, d, hf);
  }
  // canonical ordering: stable sort of each run of non-starters by combining class
  std::vector<uint8_t> cc(d.size());
  for (size_t i = 0; i < d.size(); ++i) cc[i] = ccc_of(d[i], hf);
  for (size_t i = 0; i < d.size();) {
    if (cc[i] == 0) { ++i; continue; }
    size_t j = i;
    while (j < d.size() && cc[j] != 0) ++j;
    for (size_t a = i + 1; a < j; ++a)  // insertion sort: runs are short
      for (size_t b = a; b > i && cc[b - 1] > cc[b]; --b) {
        std::swap(cc[b - 1], cc[b]);
        std::swap(d[b - 1], d[b]);
      }
    i = j;
  }
  // canonical composition (UAX #15): a character composes with the last starter unless blocked by an
  // intervening character of equal or higher class (or any starter)
  std::vector<uint32_t> out;
  out.reserve(d.size());
  if (!d.empty()) {
    size_t starter = 0;
    out.push_back(d[0]);
    int last_class = cc[0] == 0 ? 0 : 256;  // leading non-starter: nothing composes until a starter
    for (size_t i = 1; i < d.size(); ++i) {
      uint32_t ch = d[i], composite;
      int ch_class = cc[i];
      if ((last_class < ch_class || last_class == 0) && compose_pair(out[starter], ch, hf, composite)) {
        out[starter] = composite;
        continue;
      }
      if (ch_class == 0) starter = out.size();
      last_class = ch_class;
      out.push_back(ch);
    }
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t c : out) append_utf8(r, c);
  return r;
}

std::string utf8_lossy(std::string_view bytes) {
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    unsigned char b = s[i];
    if (b < 0x80) { out.push_back(static_cast<char>(b)); ++i; continue; }
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) { need = 2; lo = 0xA0; }
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) need = 2;
    else if (b == 0xED) { need = 2; hi = 0x9F; }
    else if (b == 0xF0) { need = 3; lo = 0x90; }
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) { need = 3; hi = 0x8F; }
    else { out.append(kReplacement); ++i; continue; }
    size_t j = i + 1;
    bool ok = true;
    for (int k = 0; k < need; ++k, ++j) {
      unsigned char l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
      if (j >= n || s[j] < l || s[j] > h) { ok = false; break; }
    }
    if (ok) out.append(bytes.substr(i, j - i));
    else out.append(kReplacement);
    i = j;
  }
  return out;
}

}  // namespace subq::data::unicode
