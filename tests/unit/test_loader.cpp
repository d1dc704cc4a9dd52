// test_loader.cpp — the training loader and the eval iterator on a small synthetic shard set whose
// token ids encode their position (so every window's start can be read back from the batch):
// windows are consecutive tokens with shifted targets, an epoch visits every window exactly once,
// data-parallel ranks are disjoint and together cover the epoch, state/restore continues bitwise,
// prefetch on/off give equal batches, doc_start/position_ids follow the eos separator, errors in the
// prefetch thread reach the consumer, and eval windows/batches/bytes are exact.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "subq/core/error.h"
#include "subq/data/loader.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using namespace subq::data;

namespace {

constexpr int32_t kEos = 0;

struct Corpus {
  fs::path dir;
  std::vector<int32_t> stream;
  explicit Corpus(const std::string& tag, int64_t n = 4000, uint64_t shard_tokens = 1000) {
    dir = fs::temp_directory_path() / ("subq-loader-" + tag + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    // token i is i + 1, except document ends (eos = 0) after documents of varying length
    int64_t next_eos = 5;
    for (int64_t i = 0; i < n; ++i) {
      if (i == next_eos) {
        stream.push_back(kEos);
        next_eos = i + 2 + (i * 7919) % 53;
      } else {
        stream.push_back(static_cast<int32_t>(i + 1));
      }
    }
    ShardSetWriter w(dir.string(), n + 1, kEos, shard_tokens);
    w.append(stream);
    w.finish();
  }
  ~Corpus() { fs::remove_all(dir); }
  // The stream offset a window of inputs starts at (ids are position + 1; eos is never doubled).
  static int64_t start_of(const int64_t* row) { return row[0] != kEos ? row[0] - 1 : row[1] - 2; }
};

LoaderOptions opts_for(const Corpus& c, int64_t T, int64_t B) {
  LoaderOptions o;
  o.shards = c.dir.string();
  o.seq_len = T;
  o.batch_size = B;
  o.seed = 1234;
  o.prefetch = 0;
  return o;
}

bool same(const Batch& a, const Batch& b) {
  return torch::equal(a.inputs, b.inputs) && torch::equal(a.targets, b.targets) &&
         torch::equal(a.doc_start, b.doc_start) && torch::equal(a.position_ids, b.position_ids);
}

std::vector<int64_t> starts_of(const Batch& b) {
  std::vector<int64_t> s;
  const int64_t T = b.inputs.size(1);
  for (int64_t r = 0; r < b.inputs.size(0); ++r) s.push_back(Corpus::start_of(b.inputs.data_ptr<int64_t>() + r * T));
  return s;
}

}  // namespace

TEST_CASE("doc_start and position_ids restart after each eos", "[loader]") {
  const int64_t in[] = {5, 0, 7, 8, 0, 0, 9, 4, 3, 0, 2, 1};
  bool ds[12];
  int64_t pos[12];
  fill_doc_positions(in, 2, 6, 0, ds, pos);
  const bool want_ds[] = {1, 0, 1, 0, 0, 1, /*row 2*/ 1, 0, 0, 0, 1, 0};
  const int64_t want_pos[] = {0, 1, 0, 1, 2, 0, /*row 2*/ 0, 1, 2, 3, 0, 1};
  for (int i = 0; i < 12; ++i) {
    INFO("t " << i);
    CHECK(ds[i] == want_ds[i]);
    CHECK(pos[i] == want_pos[i]);
  }
  fill_doc_positions(in, 1, 6, std::nullopt, ds, pos);  // no separator: one document per window
  CHECK((ds[0] && !ds[2] && !ds[5] && pos[5] == 5));
}

TEST_CASE("windows are consecutive tokens, targets shifted by one, documents marked", "[loader]") {
  Corpus c("windows");
  TokenWindowLoader ld(opts_for(c, 16, 4));
  for (int k = 0; k < 10; ++k) {
    Batch b = ld.next();
    REQUIRE(b.inputs.sizes() == torch::IntArrayRef({4, 16}));
    CHECK(b.inputs.dtype() == torch::kInt64);
    CHECK(b.doc_start.dtype() == torch::kBool);
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t s = Corpus::start_of(b.inputs.data_ptr<int64_t>() + r * 16);
      CHECK(static_cast<uint64_t>(s) == ld.window_start(static_cast<uint64_t>(k * 4 + r)));
      bool ok = true;
      int64_t pos = 0;
      for (int64_t t = 0; t < 16; ++t) {
        ok = ok && b.inputs[r][t].item<int64_t>() == c.stream[s + t];
        ok = ok && b.targets[r][t].item<int64_t>() == c.stream[s + t + 1];
        const bool start = t == 0 || c.stream[s + t - 1] == kEos;
        pos = start ? 0 : pos + 1;
        ok = ok && b.doc_start[r][t].item<bool>() == start && b.position_ids[r][t].item<int64_t>() == pos;
      }
      CHECK(ok);
    }
  }
}

TEST_CASE("an epoch visits every window once; epochs and seeds reorder", "[loader]") {
  Corpus c("epoch");
  const int64_t T = 16;
  TokenWindowLoader ld(opts_for(c, T, 8));
  const uint64_t W = ld.windows_per_epoch();
  CHECK(W == (4000 - 1) / 16 - 1);
  for (uint64_t epoch = 0; epoch < 2; ++epoch) {
    std::set<uint64_t> idx;
    const uint64_t off = ld.window_start(epoch * W) % T;
    for (uint64_t i = 0; i < W; ++i) {
      const uint64_t s = ld.window_start(epoch * W + i);
      CHECK(s % T == off);  // one offset per epoch
      CHECK(s + T + 1 <= 4000);
      idx.insert(s / T);
    }
    CHECK(idx.size() == W);
  }
  std::vector<uint64_t> e0, e1;
  for (uint64_t i = 0; i < 20; ++i) {
    e0.push_back(ld.window_start(i));
    e1.push_back(ld.window_start(W + i));
  }
  CHECK(e0 != e1);
  auto o = opts_for(c, T, 8);
  o.seed = 99;
  TokenWindowLoader other(o);
  std::vector<uint64_t> s99;
  for (uint64_t i = 0; i < 20; ++i) s99.push_back(other.window_start(i));
  CHECK(s99 != e0);
  o.shuffle = false;
  TokenWindowLoader seq(o);
  CHECK(seq.windows_per_epoch() == (4000 - 1) / 16);
  for (uint64_t i = 0; i < 5; ++i) CHECK(seq.window_start(i) == i * T);
}

TEST_CASE("data-parallel ranks take disjoint windows that together cover the epoch", "[loader]") {
  Corpus c("ranks");
  const int64_t T = 32, B = 3, world = 3;
  auto base = opts_for(c, T, B);
  TokenWindowLoader one(base);
  const uint64_t W = one.windows_per_epoch();  // 123: not a multiple of B * world
  std::vector<int64_t> all;
  for (int64_t r = 0; r < world; ++r) {
    auto o = base;
    o.rank = r;
    o.world = world;
    o.prefetch = 2;
    TokenWindowLoader ld(o);
    const uint64_t batches = (W + B * world - 1) / (B * world);
    for (uint64_t k = 0; k < batches; ++k) {
      auto s = starts_of(ld.next());
      for (int64_t i = 0; i < B; ++i) {
        const uint64_t g = (k * B + static_cast<uint64_t>(i)) * world + static_cast<uint64_t>(r);
        CHECK(static_cast<uint64_t>(s[i]) == one.window_start(g));
        if (g < W) all.push_back(s[i]);  // epoch 0
      }
    }
  }
  std::set<int64_t> uniq(all.begin(), all.end());
  CHECK(all.size() == W);
  CHECK(uniq.size() == W);
  std::set<uint64_t> want;
  for (uint64_t g = 0; g < W; ++g) want.insert(one.window_start(g));
  CHECK(std::equal(uniq.begin(), uniq.end(), want.begin(), want.end(),
                   [](int64_t a, uint64_t b) { return static_cast<uint64_t>(a) == b; }));
}

TEST_CASE("state after k batches + restore gives the same following batches, bitwise", "[loader]") {
  Corpus c("resume");
  auto o = opts_for(c, 64, 5);  // W = 61: the run below crosses epochs
  o.prefetch = 3;
  TokenWindowLoader a(o);
  for (int k = 0; k < 11; ++k) a.next();
  const std::string saved = a.state().dump();
  std::vector<Batch> want;
  for (int k = 0; k < 9; ++k) want.push_back(a.next());

  auto j = nlohmann::json::parse(saved);
  CHECK(j["consumed"] == 55);
  CHECK(j["epoch"] == 0);
  CHECK(j["index"] == 55);
  CHECK(j["seed"] == 1234);
  for (int64_t prefetch : {int64_t{0}, int64_t{2}}) {
    auto o2 = o;
    o2.prefetch = prefetch;
    o2.seed = 777;  // the state carries the seed
    TokenWindowLoader b(o2);
    b.next();  // a consumed batch (and a running prefetch thread) must not matter
    b.restore(j);
    for (int k = 0; k < 9; ++k) {
      INFO("prefetch " << prefetch << " batch " << k);
      CHECK(same(b.next(), want[k]));
    }
    CHECK(b.state()["epoch"] == 1);
  }
  // restoring in place rewinds
  a.restore(j);
  CHECK(same(a.next(), want[0]));

  auto other = opts_for(c, 32, 5);
  TokenWindowLoader wrong(other);
  try {
    wrong.restore(j);
    FAIL("cursor for another seq_len accepted");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("saved for other data") != std::string::npos);
  }
  CHECK_THROWS_AS(wrong.restore(nlohmann::json{{"kind", "something"}}), subq::InputError);
}

TEST_CASE("prefetch on and off give the same batches", "[loader]") {
  Corpus c("prefetch");
  auto o = opts_for(c, 24, 4);
  TokenWindowLoader off(o);
  o.prefetch = 3;
  TokenWindowLoader on(o);
  for (int k = 0; k < 60; ++k) REQUIRE(same(off.next(), on.next()));  // 60 * 4 > one epoch of 165
  CHECK(off.state() == on.state());
  o.prefetch = 1;
  TokenWindowLoader unused(o);  // destroyed with a running worker and a full queue
  unused.next();
}

TEST_CASE("an error in the prefetch thread reaches the consumer", "[loader]") {
  Corpus c("error", 4000, 4000);
  // Patch the header's vocab size below the ids present (the payload is untouched): batches must fail.
  const fs::path shard = c.dir / "shard-00000.bin";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t vocab = 100;
    f.seekp(24);
    f.write(reinterpret_cast<const char*>(&vocab), 8);
  }
  auto o = opts_for(c, 16, 2);
  o.prefetch = 2;
  TokenWindowLoader ld(o);
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      ld.next();
      FAIL("batch with out-of-vocabulary ids delivered");
    } catch (const subq::InputError& e) {
      CHECK(std::string(e.what()).find("outside the vocabulary") != std::string::npos);
    }
  }
}

TEST_CASE("options come from the data: and eval: sections", "[loader]") {
  DataConfig d;
  d.train = "a/train";
  d.val = "a/val";
  d.seq_len = 128;
  d.prefetch = 2;
  d.shuffle = false;
  auto lo = LoaderOptions::from_config(d, 12, 5, 1, 4, torch::kCPU);
  CHECK((lo.shards == "a/train" && lo.seq_len == 128 && lo.batch_size == 12 && lo.seed == 5 && lo.rank == 1 &&
         lo.world == 4 && lo.prefetch == 2 && !lo.shuffle));
  subq::train::EvalConfig e;
  e.batch_size = 3;
  e.batches = 7;
  auto eo = EvalOptions::from_config(d, e, 0, 1, torch::kCPU, {1, 2});
  CHECK((eo.shards == "a/val" && eo.seq_len == 128 && eo.batch_size == 3 && eo.max_batches == 7 &&
         eo.token_bytes.size() == 2));
}

TEST_CASE("too little data is refused with a hint", "[loader]") {
  Corpus c("small", 10, 100);
  try {
    TokenWindowLoader ld(opts_for(c, 16, 1));
    FAIL("accepted");
  } catch (const subq::InputError& e) {
    CHECK(std::string(e.what()).find("lower data.seq_len") != std::string::npos);
  }
}

TEST_CASE("eval windows: sequential, non-overlapping, exact bytes, rank split", "[loader]") {
  Corpus c("eval", 1000, 300);
  EvalOptions o;
  o.shards = c.dir.string();
  o.seq_len = 16;
  o.batch_size = 8;
  o.token_bytes.resize(1001);
  for (size_t i = 0; i < o.token_bytes.size(); ++i) o.token_bytes[i] = i == kEos ? 0 : static_cast<int32_t>(1 + i % 3);
  EvalWindows ev(o);
  CHECK(ev.num_windows() == 62);  // (1000 - 1) / 16
  CHECK(ev.num_batches() == 8);   // 7 full + one of 6
  int64_t windows = 0, bytes = 0;
  int nb = 0;
  while (auto b = ev.next()) {
    ++nb;
    const int64_t rows = b->inputs.size(0);
    CHECK(rows == (nb < 8 ? 8 : 6));
    auto s = starts_of(*b);
    for (int64_t r = 0; r < rows; ++r) CHECK(s[r] == (windows + r) * 16);
    windows += rows;
    CHECK(b->target_bytes > 0);
    bytes += b->target_bytes;
    CHECK(b->doc_start[0][0].item<bool>());
  }
  CHECK(windows == 62);
  int64_t want = 0;
  for (int64_t i = 1; i <= 62 * 16; ++i) want += o.token_bytes[static_cast<size_t>(c.stream[i])];
  CHECK(bytes == want);
  ev.reset();
  CHECK(ev.next().has_value());

  o.max_batches = 3;
  o.world = 2;
  int64_t seen = 0;
  for (int64_t r = 0; r < 2; ++r) {
    o.rank = r;
    EvalWindows part(o);
    CHECK(part.num_batches() == 3);
    while (auto b = part.next()) seen += b->inputs.size(0);
  }
  CHECK(seen == 3 * 8);

  o.token_bytes.clear();
  o.rank = 0;
  o.world = 1;
  EvalWindows nob(o);
  CHECK(nob.next()->target_bytes == -1);
  o.token_bytes.assign(10, 1);  // a table for a smaller vocabulary than the shards'
  CHECK_THROWS_AS(EvalWindows(o), subq::InputError);
}
