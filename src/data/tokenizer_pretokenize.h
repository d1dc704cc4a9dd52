// tokenizer_pretokenize.h — the regex pre-tokenizers of byte-level BPE tokenizers, as hand-written
// matchers (internal to subq_text).
//
// std::regex has no Unicode categories, and a general regex engine is not needed: tokenizer.json files
// in the wild use a handful of patterns. We recognise them by their exact text and run a dedicated
// matcher that reproduces Oniguruma's leftmost-first backtracking result for that pattern (HF uses
// Oniguruma). Pieces cover the text completely (every alternative set below matches any character).
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   qwen2   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//           \s*[\r\n]+|\s+(?!\S)|\s+
//   llama3  the qwen2 pattern with \p{N}{1,3}
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace subq::data::detail {

enum class RegexKind { gpt2, qwen2, llama3 };

// The pattern text of a kind, exactly as tokenizer.json files write it.
const std::string& regex_pattern(RegexKind kind);
// The kind whose pattern equals `pattern`; nullopt for any other pattern.
std::optional<RegexKind> regex_kind_of(const std::string& pattern);
const char* regex_kind_name(RegexKind kind);

struct PretokScratch {
  std::vector<uint8_t> cls;   // class bits per character
  std::vector<uint32_t> off;  // byte offset of each character, plus the end
};

// Appends the pieces of `text` as [begin, end) byte offsets into `text`.
void pretokenize(RegexKind kind, std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& pieces,
                 PretokScratch& scratch);

}  // namespace subq::data::detail
