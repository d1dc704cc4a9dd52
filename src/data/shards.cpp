// shards.cpp — token shard writer and memory-mapped reader (format in subq/data/shards.h).
//
// Decisions: the writer keeps a 1 MiB buffer and writes with write(2) into a temporary file whose
// header is a zero placeholder until finish() patches it with pwrite(2), so a crash can never leave a
// file with a valid header and missing tokens under the final name. The host must be little-endian
// (checked at compile time): ids are copied to and from the file without byte swapping. No Torch here.
#include "subq/data/shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/data/hash.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "subq token shards are little-endian and are read without byte swapping: build on a little-endian host"
#endif

namespace subq::data {

namespace fs = std::filesystem;

namespace {

constexpr size_t kWriteBuffer = 1 << 20;

void put_u32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t get_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::string printable_magic(const unsigned char* p) {
  std::string s;
  for (int i = 0; i < 8; ++i) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7f) {
      s.push_back(static_cast<char>(c));
    } else {
      static const char* hex = "0123456789abcdef";
      s += "\\x";
      s.push_back(hex[c >> 4]);
      s.push_back(hex[c & 15]);
    }
  }
  return s;
}

const char* kRerun = "re-run `subq prepare` to rebuild the shards";

}  // namespace

TokenDtype dtype_for_vocab(int64_t vocab_size) {
  return vocab_size > 0 && vocab_size <= 65536 ? TokenDtype::u16 : TokenDtype::u32;
}

const char* dtype_name(TokenDtype d) { return d == TokenDtype::u16 ? "uint16" : "uint32"; }

// ---------------------------------------------------------------------------------------------- header

std::string ShardHeader::encode() const {
  std::string out(kShardHeaderBytes, '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  std::memcpy(p, kShardMagic, 8);
  put_u32(p + 8, version);
  put_u32(p + 12, static_cast<uint32_t>(dtype));
  put_u64(p + 16, tokens);
  put_u64(p + 24, vocab_size);
  put_u32(p + 32, static_cast<uint32_t>(kShardHeaderBytes));
  put_u32(p + 36, eos_id ? static_cast<uint32_t>(*eos_id) : kNoEos);
  put_u64(p + 40, checksum);
  return out;
}

ShardHeader ShardHeader::decode(const void* bytes, uint64_t file_bytes, const std::string& path) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  if (file_bytes < kShardHeaderBytes)
    throw InputError(str(path, ": not a token shard: the file has ", file_bytes, " bytes, fewer than the ",
                         kShardHeaderBytes, "-byte header (truncated, or not a shard); ", kRerun));
  if (std::memcmp(p, kShardMagic, 8) != 0)
    throw InputError(str(path, ": not a subq token shard: it starts with '", printable_magic(p),
                         "', expected 'SUBQSHRD'; data.train / data.val must name shards written by `subq prepare`"));
  ShardHeader h;
  h.version = get_u32(p + 8);
  if (h.version != kShardVersion)
    throw InputError(str(path, ": token shard format version ", h.version, ", but this build of subq reads version ",
                         kShardVersion, "; ", kRerun, " with this build (or read it with the build that wrote it)"));
  uint32_t dt = get_u32(p + 12);
  if (dt != 2 && dt != 4)
    throw InputError(str(path, ": corrupt shard header: dtype ", dt, " is neither 2 (uint16) nor 4 (uint32); ", kRerun));
  h.dtype = static_cast<TokenDtype>(dt);
  h.tokens = get_u64(p + 16);
  h.vocab_size = get_u64(p + 24);
  uint32_t hs = get_u32(p + 32);
  if (hs != kShardHeaderBytes)
    throw InputError(str(path, ": corrupt shard header: header size ", hs, ", expected ", kShardHeaderBytes, "; ", kRerun));
  uint32_t eos = get_u32(p + 36);
  if (eos != kNoEos) h.eos_id = static_cast<int32_t>(eos);
  h.checksum = get_u64(p + 40);
  if (h.dtype == TokenDtype::u16 && h.vocab_size > 65536)
    throw InputError(str(path, ": corrupt shard header: vocab size ", h.vocab_size, " does not fit uint16 ids; ", kRerun));
  if (h.eos_id && h.vocab_size > 0 && static_cast<uint64_t>(*h.eos_id) >= h.vocab_size)
    throw InputError(str(path, ": corrupt shard header: eos id ", *h.eos_id, " >= vocab size ", h.vocab_size, "; ", kRerun));
  const uint64_t per = static_cast<uint64_t>(dt);
  const uint64_t payload = file_bytes - kShardHeaderBytes;
  if (h.tokens > (UINT64_MAX - kShardHeaderBytes) / per || payload < h.tokens * per)
    throw InputError(str(path, ": truncated: the header says ", h.tokens, " tokens (", h.tokens * per,
                         " bytes of ", dtype_name(h.dtype), " ids), the file holds ", payload / per, " (", payload,
                         " bytes after the header); the copy or the prepare run was cut short — ", kRerun));
  if (payload != h.tokens * per)
    throw InputError(str(path, ": the file is longer than its header says: ", h.tokens, " tokens (", h.tokens * per,
                         " bytes) expected after the header, ", payload,
                         " bytes found (trailing data, or a header from another file); ", kRerun));
  return h;
}

// ---------------------------------------------------------------------------------------------- writer

ShardWriter::ShardWriter(std::string path, int64_t vocab_size, std::optional<int32_t> eos_id)
    : path_(std::move(path)), hash_state_(Fnv1a::kOffset) {
  header_.dtype = dtype_for_vocab(vocab_size);
  header_.vocab_size = vocab_size > 0 ? static_cast<uint64_t>(vocab_size) : 0;
  header_.eos_id = eos_id;
  if (eos_id && (*eos_id < 0 || (vocab_size > 0 && *eos_id >= vocab_size)))
    throw InputError(str("writing ", path_, ": eos id ", *eos_id, " is outside the vocabulary of ", vocab_size));
  std::random_device rd;
  tmp_ = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw RuntimeError(str("cannot create ", tmp_, ": ", std::strerror(errno)));
  buf_.reserve(kWriteBuffer);
  buf_.assign(kShardHeaderBytes, 0);  // placeholder header: zero magic until finish()
}

ShardWriter::~ShardWriter() {
  if (!finished_ && fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void ShardWriter::flush_buffer() {
  const unsigned char* p = buf_.data();
  size_t left = buf_.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw RuntimeError(str("cannot write ", tmp_, ": ", std::strerror(errno), " (disk full?)"));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  buf_.clear();
}

void ShardWriter::append(const int32_t* ids, size_t n) {
  SUBQ_CHECK(!finished_, "append after finish on ", path_);
  const size_t per = static_cast<size_t>(header_.dtype);
  const uint64_t limit = header_.vocab_size > 0 ? header_.vocab_size : (per == 2 ? 65536ULL : 0x100000000ULL);
  for (size_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (id < 0 || static_cast<uint64_t>(id) >= limit)
      throw InputError(str("writing ", path_, ": token id ", id, " is outside [0, ", limit,
                           "): the tokenizer's vocabulary is larger than the shard's vocab size"));
    if (buf_.size() + per > kWriteBuffer) flush_buffer();
    unsigned char b[4];
    if (per == 2) {
      uint16_t v = static_cast<uint16_t>(id);
      std::memcpy(b, &v, 2);
    } else {
      uint32_t v = static_cast<uint32_t>(id);
      std::memcpy(b, &v, 4);
    }
    for (size_t k = 0; k < per; ++k) {
      hash_state_ = (hash_state_ ^ b[k]) * Fnv1a::kPrime;
      buf_.push_back(b[k]);
    }
  }
  header_.tokens += n;
}

ShardHeader ShardWriter::finish() {
  SUBQ_CHECK(!finished_, "finish called twice on ", path_);
  flush_buffer();
  header_.checksum = hash_state_;
  const std::string head = header_.encode();
  if (::pwrite(fd_, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size()))
    throw RuntimeError(str("cannot write the header of ", tmp_, ": ", std::strerror(errno)));
  if (::fsync(fd_) != 0) throw RuntimeError(str("cannot fsync ", tmp_, ": ", std::strerror(errno)));
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    throw RuntimeError(str("cannot rename ", tmp_, " to ", path_, ": ", std::strerror(e)));
  }
  finished_ = true;
  fsx::fsync_dir(fs::path(path_).parent_path().string());
  return header_;
}

ShardSetWriter::ShardSetWriter(std::string dir, int64_t vocab_size, std::optional<int32_t> eos_id,
                               uint64_t shard_tokens)
    : dir_(std::move(dir)), vocab_size_(vocab_size), eos_id_(eos_id), shard_tokens_(shard_tokens) {
  if (shard_tokens_ == 0) throw UsageError("shard size must be at least 1 token");
}

void ShardSetWriter::append(const int32_t* ids, size_t n) {
  while (n > 0) {
    if (!cur_) {
      char name[32];
      std::snprintf(name, sizeof name, "shard-%05zu.bin", done_.size());
      cur_ = std::make_unique<ShardWriter>((fs::path(dir_) / name).string(), vocab_size_, eos_id_);
    }
    const uint64_t room = shard_tokens_ - cur_->tokens();
    const size_t take = static_cast<size_t>(std::min<uint64_t>(room, n));
    cur_->append(ids, take);
    ids += take;
    n -= take;
    total_ += take;
    if (cur_->tokens() == shard_tokens_) {
      done_.push_back({cur_->path(), cur_->finish()});
      cur_.reset();
    }
  }
}

std::vector<ShardFileInfo> ShardSetWriter::finish() {
  if (cur_) {
    done_.push_back({cur_->path(), cur_->finish()});
    cur_.reset();
  }
  return done_;
}

// ---------------------------------------------------------------------------------------------- reader

ShardReader::ShardReader(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      throw InputError(str("token shard not found: ", path, "; run `subq prepare code` (or fix data.train / data.val)"));
    throw InputError(str("cannot open token shard ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw InputError(str("cannot stat token shard ", path, ": ", std::strerror(e)));
  }
  const uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < kShardHeaderBytes) {
    ::close(fd);
    unsigned char zero[kShardHeaderBytes] = {};
    ShardHeader::decode(zero, bytes, path);  // throws the "too small" message
  }
  void* m = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  int e = errno;
  ::close(fd);
  if (m == MAP_FAILED) throw InputError(str("cannot memory-map token shard ", path, ": ", std::strerror(e)));
  map_ = static_cast<const unsigned char*>(m);
  map_bytes_ = bytes;
  try {
    header_ = ShardHeader::decode(map_, bytes, path);
  } catch (...) {
    release();
    throw;
  }
}

ShardReader::~ShardReader() { release(); }

void ShardReader::release() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

ShardReader::ShardReader(ShardReader&& o) noexcept
    : path_(std::move(o.path_)), header_(o.header_), map_(o.map_), map_bytes_(o.map_bytes_) {
  o.map_ = nullptr;
  o.map_bytes_ = 0;
}

ShardReader& ShardReader::operator=(ShardReader&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    header_ = o.header_;
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
  }
  return *this;
}

uint32_t ShardReader::at(uint64_t i) const {
  SUBQ_CHECK_LT(i, header_.tokens, "token index out of range in ", path_);
  const unsigned char* p = map_ + kShardHeaderBytes + i * static_cast<uint64_t>(header_.dtype);
  if (header_.dtype == TokenDtype::u16) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  return get_u32(p);
}

void ShardReader::read(uint64_t begin, uint64_t n, int64_t* out) const {
  SUBQ_CHECK(begin <= header_.tokens && n <= header_.tokens - begin, "read [", begin, ", +", n, ") past the ",
             header_.tokens, " tokens of ", path_);
  const unsigned char* p = map_ + kShardHeaderBytes;
  if (header_.dtype == TokenDtype::u16) {
    const unsigned char* q = p + begin * 2;
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, q + 2 * i, 2);
      out[i] = v;
    }
  } else {
    const unsigned char* q = p + begin * 4;
    for (uint64_t i = 0; i < n; ++i) out[i] = get_u32(q + 4 * i);
  }
}

uint64_t ShardReader::compute_checksum() const {
  Fnv1a h;
  h.update(map_ + kShardHeaderBytes, map_bytes_ - kShardHeaderBytes);
  return h.digest();
}

void ShardReader::verify() const {
  const uint64_t got = compute_checksum();
  if (got != header_.checksum)
    throw InputError(str(path_, ": corrupt token shard: the payload checksum is ", hash_hex(got), ", the header says ",
                         hash_hex(header_.checksum), " (bytes changed after writing); ", kRerun));
}

// ---------------------------------------------------------------------------------------------- set

std::vector<std::string> list_shard_files(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw InputError(str("token shard directory not found: ", dir, "; run `subq prepare code` (or fix data.train / data.val)"));
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 10 && name.rfind("shard-", 0) == 0 && name.compare(name.size() - 4, 4, ".bin") == 0 &&
        e.is_regular_file())
      out.push_back(e.path().string());
  }
  if (ec) throw InputError(str("cannot list token shard directory ", dir, ": ", ec.message()));
  if (out.empty())
    throw InputError(str(dir, " holds no shard-*.bin token shards; run `subq prepare code` to create them (or fix "
                         "data.train / data.val)"));
  std::sort(out.begin(), out.end());
  return out;
}

ShardSet::ShardSet(const std::string& dir_or_file) : path_(dir_or_file) {
  std::error_code ec;
  std::vector<std::string> files;
  if (fs::is_regular_file(dir_or_file, ec))
    files.push_back(dir_or_file);
  else
    files = list_shard_files(dir_or_file);
  for (const auto& f : files) {
    ShardReader r(f);
    if (!shards_.empty()) {
      const ShardHeader& a = shards_.front().header();
      const ShardHeader& b = r.header();
      if (a.vocab_size != b.vocab_size || a.eos_id != b.eos_id || a.dtype != b.dtype)
        throw InputError(str("token shards of ", dir_or_file, " disagree: ", shards_.front().path(), " has vocab size ",
                             a.vocab_size, ", eos ", a.eos_id ? std::to_string(*a.eos_id) : "none", ", but ", f,
                             " has vocab size ", b.vocab_size, ", eos ", b.eos_id ? std::to_string(*b.eos_id) : "none",
                             "; they come from different `subq prepare` runs: keep one run's shards per directory"));
    }
    starts_.push_back(total_);
    total_ += r.size();
    shards_.push_back(std::move(r));
  }
  vocab_size_ = shards_.front().header().vocab_size;
  eos_id_ = shards_.front().header().eos_id;
}

void ShardSet::read(uint64_t begin, uint64_t n, int64_t* out) const {
  SUBQ_CHECK(begin <= total_ && n <= total_ - begin, "read [", begin, ", +", n, ") past the ", total_,
             " tokens of ", path_);
  // The shard holding `begin`: the last start <= begin.
  size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  while (n > 0) {
    const uint64_t local = begin - starts_[s];
    const uint64_t take = std::min<uint64_t>(n, shards_[s].size() - local);
    shards_[s].read(local, take, out);
    out += take;
    begin += take;
    n -= take;
    ++s;
  }
}

uint64_t ShardSet::fingerprint() const {
  Fnv1a h;
  for (const auto& s : shards_) {
    h.update_u64(s.size());
    h.update_u64(s.header().checksum);
  }
  return h.digest();
}

}  // namespace subq::data
