// test_shards.cpp — token shard format: round trips (uint16 and uint32 ids), shard sets read across
// shard boundaries, and the reader's specific message for each kind of damage (bad magic, unknown
// version, bad dtype, truncation, trailing bytes, too small to hold a header, flipped payload bytes).
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "subq/core/error.h"
#include "subq/data/hash.h"
#include "subq/data/shards.h"
#include "subq_catch.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace subq::data;

namespace {
using subq::test::TempDir;


std::vector<int32_t> random_ids(size_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const std::string& p, const std::string& b) { std::ofstream(p, std::ios::binary) << b; }

// The InputError message of opening `path`, "" when it opens.
std::string open_error(const std::string& path) {
  try {
    ShardReader r(path);
    return "";
  } catch (const subq::InputError& e) {
    return e.what();
  }
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

}  // namespace

TEST_CASE("fnv1a64 matches the published test vectors and streams", "[shards]") {
  CHECK(fnv1a64("") == 0xcbf29ce484222325ULL);
  CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cULL);
  CHECK(fnv1a64("foobar") == 0x85944171f73967e8ULL);
  Fnv1a h;
  h.update("foo");
  h.update("bar");
  CHECK(h.digest() == fnv1a64("foobar"));
  CHECK(hash_hex(0x85944171f73967e8ULL) == "fnv1a64:85944171f73967e8");
}

TEST_CASE("shards round-trip uint16 and uint32 ids with header fields", "[shards]") {
  TempDir dir("shards-rt");
  for (int64_t vocab : {int64_t{300}, int64_t{65536}, int64_t{70001}}) {
    INFO("vocab " << vocab);
    const auto ids = random_ids(10007, static_cast<int32_t>(vocab), 7);
    const std::string p = dir / ("s" + std::to_string(vocab) + ".bin");
    ShardWriter w(p, vocab, 5);
    w.append(ids.data(), 3);
    w.append(ids.data() + 3, ids.size() - 3);
    const ShardHeader h = w.finish();
    ShardReader r(p);
    CHECK(r.size() == ids.size());
    CHECK(r.header().dtype == (vocab <= 65536 ? TokenDtype::u16 : TokenDtype::u32));
    CHECK(r.header().vocab_size == static_cast<uint64_t>(vocab));
    CHECK(r.header().eos_id == std::optional<int32_t>(5));
    CHECK(r.header().checksum == h.checksum);
    CHECK(fs::file_size(p) == kShardHeaderBytes + ids.size() * static_cast<size_t>(r.header().dtype));
    std::vector<int64_t> back(ids.size());
    r.read(0, ids.size(), back.data());
    bool same = true;
    for (size_t i = 0; i < ids.size(); ++i) same = same && back[i] == ids[i];
    CHECK(same);
    CHECK(r.at(1234) == static_cast<uint32_t>(ids[1234]));
    CHECK_NOTHROW(r.verify());
  }
  // no eos, empty shard
  {
    const std::string p = dir / "empty.bin";
    ShardWriter w(p, 100, std::nullopt);
    w.finish();
    ShardReader r(p);
    CHECK(r.size() == 0);
    CHECK_FALSE(r.header().eos_id.has_value());
  }
  // nothing but the final file remains: no temporaries
  for (const auto& e : fs::directory_iterator(dir.path)) CHECK(e.path().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("an unfinished writer leaves no file; out-of-vocabulary ids are refused", "[shards]") {
  TempDir dir("shards-abort");
  {
    ShardWriter w(dir / "a.bin", 100, 0);
    w.append(random_ids(50, 100, 1));
  }
  CHECK(fs::is_empty(dir.path));
  ShardWriter w(dir / "b.bin", 100, 0);
  std::vector<int32_t> bad{1, 2, 100};
  CHECK_THROWS_AS(w.append(bad), subq::InputError);
  CHECK_THROWS_AS(ShardWriter(dir / "c.bin", 100, 100), subq::InputError);
}

TEST_CASE("the reader names each kind of damage and the fix", "[shards]") {
  TempDir dir("shards-bad");
  const std::string good = dir / "good.bin";
  {
    ShardWriter w(good, 1000, 0);
    w.append(random_ids(500, 1000, 3));
    w.finish();
  }
  const std::string bytes = read_bytes(good);

  auto damaged = [&](const std::string& name, std::string b) {
    write_bytes(dir / name, b);
    return open_error(dir / name);
  };
  CHECK(open_error(good).empty());

  std::string b = bytes;
  b[0] = 'X';
  auto e = damaged("magic.bin", b);
  CHECK(has(e, "not a subq token shard"));
  CHECK(has(e, "XUBQSHRD"));

  b = bytes;
  b[8] = 2;  // version 2
  e = damaged("version.bin", b);
  CHECK(has(e, "format version 2"));
  CHECK(has(e, "reads version 1"));

  b = bytes;
  b[12] = 3;  // dtype 3
  e = damaged("dtype.bin", b);
  CHECK(has(e, "dtype 3"));

  e = damaged("truncated.bin", bytes.substr(0, bytes.size() - 10));
  CHECK(has(e, "truncated: the header says 500 tokens"));
  CHECK(has(e, "the file holds 495"));
  CHECK(has(e, "re-run `subq prepare`"));

  e = damaged("long.bin", bytes + "xy");
  CHECK(has(e, "longer than its header says"));

  e = damaged("tiny.bin", bytes.substr(0, 100));
  CHECK(has(e, "fewer than the 256-byte header"));

  CHECK(has(open_error(dir / "missing.bin"), "token shard not found"));

  b = bytes;
  b[kShardHeaderBytes + 17] ^= 0x01;
  write_bytes(dir / "flipped.bin", b);
  ShardReader r(dir / "flipped.bin");  // opening does not read the payload
  try {
    r.verify();
    FAIL("verify passed on a damaged payload");
  } catch (const subq::InputError& ex) {
    CHECK(has(ex.what(), "checksum"));
  }
}

TEST_CASE("a shard set is one stream across shard boundaries", "[shards]") {
  TempDir dir("shards-set");
  const auto ids = random_ids(1000, 512, 11);
  ShardSetWriter w(dir.path.string(), 512, 3, 300);
  w.append(ids.data(), 10);
  w.append(ids.data() + 10, 990);
  const auto files = w.finish();
  REQUIRE(files.size() == 4);  // 300 + 300 + 300 + 100
  CHECK(files.back().header.tokens == 100);
  CHECK(fs::path(files[0].path).filename() == "shard-00000.bin");
  CHECK(fs::path(files[3].path).filename() == "shard-00003.bin");

  ShardSet set(dir.path.string());
  CHECK(set.size() == 1000);
  CHECK(set.eos_id() == std::optional<int32_t>(3));
  CHECK(set.vocab_size() == 512);
  for (uint64_t begin : {0u, 250u, 299u, 300u, 595u, 899u, 900u}) {
    for (uint64_t n : {1u, 7u, 100u}) {
      if (begin + n > 1000) continue;
      std::vector<int64_t> out(n);
      set.read(begin, n, out.data());
      bool same = true;
      for (uint64_t i = 0; i < n; ++i) same = same && out[i] == ids[begin + i];
      INFO("begin " << begin << " n " << n);
      CHECK(same);
    }
  }
  std::vector<int64_t> all(1000);
  set.read(0, 1000, all.data());
  CHECK(all[999] == ids[999]);
  CHECK_THROWS_AS(set.read(990, 11, all.data()), subq::InternalError);

  // a stray shard from another run is refused with a message naming both files
  {
    ShardWriter other(dir / "shard-00009.bin", 1000, 3);
    other.append(random_ids(10, 1000, 1));
    other.finish();
  }
  try {
    ShardSet bad(dir.path.string());
    FAIL("mixed shard set accepted");
  } catch (const subq::InputError& e) {
    CHECK(has(e.what(), "disagree"));
    CHECK(has(e.what(), "shard-00009.bin"));
  }

  TempDir empty("shards-none");
  try {
    ShardSet none(empty.path.string());
    FAIL("empty directory accepted");
  } catch (const subq::InputError& e) {
    CHECK(has(e.what(), "no shard-*.bin"));
    CHECK(has(e.what(), "subq prepare code"));
  }
  CHECK_THROWS_AS(ShardSet(empty / "nope"), subq::InputError);
}
