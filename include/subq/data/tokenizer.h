// tokenizer.h — byte-level BPE tokenizers in the Hugging Face `tokenizer.json` format.
//
// Loads GPT-2, Qwen2/Qwen3 and Llama-3 style files (their regex pre-tokenizers with Unicode
// categories, NFC normaliser, added and special tokens incl. FIM markers) and encodes/decodes exactly
// as the HF `tokenizers` library does. train_bpe() learns a vocabulary from text and returns a
// tokenizer whose to_json() HF `tokenizers` loads. No Torch here (library subq_text).
//
// Example:
//   auto tok = subq::data::Tokenizer::from_file("tokenizer.json");
//   std::vector<int32_t> ids = tok.encode("def f(x):\n    return x\n");
//   std::string back = tok.decode(ids);   // == the input
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace subq::data {

class Tokenizer {
 public:
  // HF tokenizer.json. InputError naming the file and the unsupported part when it cannot be used.
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& name = "<json>");
  // GPT-2's original files (encoder.json + vocab.bpe).
  static Tokenizer from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);

  // Encodes text; added/special tokens written literally in `text` become their ids when
  // `allow_special` (HF's default behaviour), else they are encoded as ordinary text. Thread-safe.
  // Never adds template tokens (BOS/EOS of a post-processor): HF's add_special_tokens=False. Bytes that
  // are not valid UTF-8 are kept and encoded as their byte tokens (HF accepts only valid strings).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
  std::string decode(const int32_t* ids, size_t n, bool skip_special = false) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const {
    return decode(ids.data(), ids.size(), skip_special);
  }
  // The raw bytes the ids stand for, without replacing invalid UTF-8 (decode() replaces each maximal
  // invalid sequence by U+FFFD, as HF does). decode_bytes(encode(s, false)) == s for any bytes s when the
  // tokenizer has no normaliser (or s is already NFC).
  std::string decode_bytes(const int32_t* ids, size_t n, bool skip_special = false) const;
  std::string decode_bytes(const std::vector<int32_t>& ids, bool skip_special = false) const {
    return decode_bytes(ids.data(), ids.size(), skip_special);
  }

  // Largest id + 1, added tokens included.
  int64_t vocab_size() const;
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int32_t id) const;
  // UTF-8 bytes the token decodes to (0 for special tokens): for bits-per-byte.
  int64_t token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;
  // The document separator: the first of <|endoftext|>, <|end_of_text|>, </s>, <eos> present.
  std::optional<int32_t> eos_id() const;

  // The tokenizer as HF tokenizer.json text; save() writes it atomically.
  std::string to_json() const;
  void save(const std::string& path) const;

  struct Impl;
  // Internal (subq_text): wraps a finished Impl; used by the loaders and by train_bpe.
  static Tokenizer from_impl(std::shared_ptr<const Impl> impl);

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// A tokenizer from `path`: a tokenizer.json file, or a directory holding tokenizer.json or GPT-2's
// encoder.json + vocab.bpe. InputError saying what was looked for otherwise.
Tokenizer load_tokenizer(const std::string& path);

struct BpeTrainOptions {
  int64_t vocab_size = 8192;          // including the 256 byte tokens and the special tokens
  int64_t min_frequency = 2;          // merges need a pair seen at least this often
  std::vector<std::string> special_tokens{"<|endoftext|>"};
  std::string pre_tokenizer = "gpt2";  // "gpt2", "qwen2" (Qwen2 regex + NFC) or "llama3" (\p{N}{1,3} + NFC)
  int64_t threads = 0;                // 0 = all cores
  bool show_progress = true;
};

// Learns a byte-level BPE tokenizer from the given files (read as UTF-8 text).
Tokenizer train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& opts);
// Same, from in-memory texts.
Tokenizer train_bpe_texts(const std::vector<std::string>& texts, const BpeTrainOptions& opts);

}  // namespace subq::data
