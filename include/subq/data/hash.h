// hash.h — the one stable 64-bit hash subq uses for data: file and shard checksums, the train/val split
// of `subq prepare`, and the seeded window permutation of the loader.
//
// Why not std::hash: its values differ between standard libraries and releases, and the split of a
// corpus (which file is held out) must be the same on every machine and every build, forever. FNV-1a
// (64-bit, offset basis 0xcbf29ce484222325, prime 0x100000001b3) is simple, has no seed table and is
// byte-order independent because it consumes bytes. It is not cryptographic: checksums here detect
// accidental corruption and mismatched files, nothing adversarial. mix64() (the SplitMix64 finaliser)
// turns structured integers (seed, epoch, round) into well-spread keys.
//
// Example:
//   subq::data::Fnv1a h;
//   h.update(header, 256);
//   h.update(payload, n);
//   std::string hex = subq::data::hash_hex(h.digest());   // "fnv1a64:0123456789abcdef"
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace subq::data {

// Streaming FNV-1a 64: feeding bytes in any chunking gives the same digest.
class Fnv1a {
 public:
  static constexpr uint64_t kOffset = 0xcbf29ce484222325ULL;
  static constexpr uint64_t kPrime = 0x100000001b3ULL;

  void update(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    uint64_t h = h_;
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= kPrime;
    }
    h_ = h;
  }
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Feeds v as 8 little-endian bytes (so the digest does not depend on the host's byte order).
  void update_u64(uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    update(b, 8);
  }
  uint64_t digest() const { return h_; }

 private:
  uint64_t h_ = kOffset;
};

inline uint64_t fnv1a64(std::string_view s) {
  Fnv1a h;
  h.update(s);
  return h.digest();
}

// SplitMix64 finaliser: a bijection on 64-bit integers with good avalanche.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// "fnv1a64:" + 16 lower-case hex digits: the form checksums take in manifests.
inline std::string hash_hex(uint64_t h) {
  static const char* digits = "0123456789abcdef";
  std::string s = "fnv1a64:";
  for (int i = 15; i >= 0; --i) s.push_back(digits[(h >> (4 * i)) & 0xf]);
  return s;
}

}  // namespace subq::data
