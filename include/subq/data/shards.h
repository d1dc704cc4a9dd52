// shards.h — token shards: the binary files `subq prepare` writes and the loaders memory-map.
//
// A shard is a 256-byte header followed by the token ids, little-endian, uint16 when the vocabulary
// has at most 65536 ids, else uint32. Header (every integer little-endian):
//
//   offset size field
//        0    8 magic        the bytes "SUBQSHRD"
//        8    4 version      uint32, kShardVersion (1); a reader refuses versions it does not know
//       12    4 dtype        uint32, bytes per token id: 2 (uint16) or 4 (uint32)
//       16    8 tokens       uint64, number of token ids after the header
//       24    8 vocab_size   uint64, every id is < vocab_size (0 = not recorded)
//       32    4 header_size  uint32, always 256 (lets a reader find the payload without knowing fields)
//       36    4 eos_id       uint32, the document separator id, 0xffffffff = none
//       40    8 checksum     uint64, FNV-1a 64 (subq/data/hash.h) of the payload bytes
//       48  208 reserved     zero
//
// The file size must be exactly 256 + tokens * dtype. A shard set is a directory of shard-*.bin files
// (shard-00000.bin, shard-00001.bin, ...) read in name order as one concatenated token stream; all
// shards of a set share dtype, vocab_size and eos_id.
//
// Writers are streaming (tokens go out through a buffer as they come) and atomic: they write to
// <path>.tmp-<pid>-<random>, patch the header at the end, fsync and rename, so a reader never sees a
// half-written shard; a writer destroyed before finish() removes its temporary file. Readers mmap
// the file, check magic, version, dtype, header size and the file size against the token count, and
// throw InputError saying what is wrong and what to do. The checksum is only recomputed by verify()
// (it reads every byte), not on open, so opening a large shard set is instant.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace subq::data {

constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 256;
constexpr char kShardMagic[8] = {'S', 'U', 'B', 'Q', 'S', 'H', 'R', 'D'};
constexpr uint32_t kNoEos = 0xffffffffu;

// Bytes per token id: the dtype field's value.
enum class TokenDtype : uint32_t { u16 = 2, u32 = 4 };
// uint16 when every id of a vocabulary of this size fits (vocab_size <= 65536), else uint32.
TokenDtype dtype_for_vocab(int64_t vocab_size);
const char* dtype_name(TokenDtype d);

struct ShardHeader {
  uint32_t version = kShardVersion;
  TokenDtype dtype = TokenDtype::u16;
  uint64_t tokens = 0;
  uint64_t vocab_size = 0;
  std::optional<int32_t> eos_id;
  uint64_t checksum = 0;  // FNV-1a 64 of the payload

  // The 256 header bytes.
  std::string encode() const;
  // Parses and checks the header of a file of `file_bytes` bytes (magic, version, dtype, header size,
  // size consistency); InputError naming `path`, the problem and the fix.
  static ShardHeader decode(const void* bytes, uint64_t file_bytes, const std::string& path);
};

// Streams token ids into one shard file.
class ShardWriter {
 public:
  // vocab_size > 0 picks the dtype and bounds-checks every id; eos_id is recorded in the header.
  ShardWriter(std::string path, int64_t vocab_size, std::optional<int32_t> eos_id);
  ~ShardWriter();  // without finish(): removes the temporary file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(const int32_t* ids, size_t n);
  void append(const std::vector<int32_t>& ids) { append(ids.data(), ids.size()); }
  // Writes the header, fsyncs and renames the file into place. Returns the final header.
  ShardHeader finish();

  uint64_t tokens() const { return header_.tokens; }
  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  std::string path_, tmp_;
  int fd_ = -1;
  ShardHeader header_;
  uint64_t hash_state_;
  std::vector<unsigned char> buf_;
  bool finished_ = false;
};

struct ShardFileInfo {
  std::string path;  // full path of the written shard
  ShardHeader header;
};

// Streams token ids into dir/shard-00000.bin, shard-00001.bin, ..., starting a new shard every
// `shard_tokens` tokens (documents may continue across a shard boundary: readers see one stream).
// Writes nothing when no token was appended. `dir` must exist.
class ShardSetWriter {
 public:
  ShardSetWriter(std::string dir, int64_t vocab_size, std::optional<int32_t> eos_id, uint64_t shard_tokens);
  void append(const int32_t* ids, size_t n);
  void append(const std::vector<int32_t>& ids) { append(ids.data(), ids.size()); }
  std::vector<ShardFileInfo> finish();
  uint64_t tokens() const { return total_; }

 private:
  std::string dir_;
  int64_t vocab_size_;
  std::optional<int32_t> eos_id_;
  uint64_t shard_tokens_, total_ = 0;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<ShardFileInfo> done_;
};

// One memory-mapped shard (read-only). Movable, not copyable.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&& o) noexcept;
  ShardReader& operator=(ShardReader&& o) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return header_.tokens; }
  uint32_t at(uint64_t i) const;  // bounds-checked
  // Copies tokens [begin, begin + n) into out (widened to int64).
  void read(uint64_t begin, uint64_t n, int64_t* out) const;
  // FNV-1a 64 of the payload, recomputed (reads the whole file).
  uint64_t compute_checksum() const;
  // InputError when the payload does not match the header's checksum.
  void verify() const;

 private:
  void release();
  std::string path_;
  ShardHeader header_;
  const unsigned char* map_ = nullptr;
  size_t map_bytes_ = 0;
};

// The shard-*.bin files of a directory, in name order. InputError when the directory is missing or
// holds none.
std::vector<std::string> list_shard_files(const std::string& dir);

// A shard set: one shard file, or a directory of shard-*.bin, read as one concatenated stream.
class ShardSet {
 public:
  explicit ShardSet(const std::string& dir_or_file);

  const std::string& path() const { return path_; }
  uint64_t size() const { return total_; }  // tokens in all shards
  uint64_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  const std::vector<ShardReader>& shards() const { return shards_; }
  // Copies tokens [begin, begin + n) of the concatenated stream into out; reads may cross shards.
  void read(uint64_t begin, uint64_t n, int64_t* out) const;
  // A cheap fingerprint of the set (the shards' token counts and checksums from their headers): a
  // loader cursor saved on one set is refused on another.
  uint64_t fingerprint() const;

 private:
  std::string path_;
  std::vector<ShardReader> shards_;
  std::vector<uint64_t> starts_;  // first global index of each shard
  uint64_t total_ = 0, vocab_size_ = 0;
  std::optional<int32_t> eos_id_;
};

}  // namespace subq::data
