// test_tokenizer.cpp — subq's byte-level BPE tokenizer against Hugging Face `tokenizers`.
//
// Goldens (tests/data/tokenizer/goldens.json, from scripts/gen_tokenizer_goldens.py) hold HF's ids and
// decodes for real code excerpts, hard Unicode, added tokens and 300 random strings (half of them over all of Unicode), for Qwen3, Qwen3
// without added tokens, a Llama-3-style variant of Qwen3 and GPT-2. The tokenizer files themselves come
// from ../shared/data (not committed): those tests skip when it is absent. Training tests build their
// own corpus; the HF-compatibility check of a trained tokenizer runs python3 + tokenizers when present.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "data/tokenizer_impl.h"
#include "data/unicode.h"
#include "subq/data/tokenizer.h"
#include "subq_catch.h"

using subq::data::BpeTrainOptions;
using subq::data::Tokenizer;
using json = nlohmann::json;

namespace {

std::string data_dir() { return subq::test::source_dir() + "/tests/data/tokenizer"; }

const json& goldens() {
  static const json g = json::parse(subq::fsx::read_file(data_dir() + "/goldens.json"));
  return g;
}

std::string tokenizers_dir() {
  std::string s = subq::test::shared_data_dir();
  return s.empty() ? s : s + "/tokenizers";
}

const std::string kQwen2Re =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kLlama3Re =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The tokenizers of the goldens, built as scripts/gen_tokenizer_goldens.py builds them.
struct Loaded {
  std::optional<Tokenizer> qwen3, qwen3_plain, llama3_style, gpt2, gpt2_prefix_space;
};
const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded r;
    std::string dir = tokenizers_dir();
    if (dir.empty()) return r;
    std::string qpath = dir + "/qwen3/tokenizer.json";
    std::string text = subq::fsx::read_file(qpath);
    r.qwen3 = Tokenizer::from_json(text, qpath);
    json j = json::parse(text);
    json plain = j;
    plain["added_tokens"] = json::array();
    r.qwen3_plain = Tokenizer::from_json(plain.dump(), "qwen3_plain");
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = kLlama3Re;
    j["model"]["ignore_merges"] = true;
    r.llama3_style = Tokenizer::from_json(j.dump(), "llama3_style");
    r.gpt2 = Tokenizer::from_gpt2_files(dir + "/gpt2/encoder.json", dir + "/gpt2/vocab.bpe");
    json g = json::parse(r.gpt2->to_json());
    g["pre_tokenizer"]["add_prefix_space"] = true;
    r.gpt2_prefix_space = Tokenizer::from_json(g.dump(), "gpt2_prefix_space");
    return r;
  }();
  return l;
}

const Tokenizer& by_name(const std::string& name) {
  const Loaded& l = loaded();
  if (name == "qwen3") return *l.qwen3;
  if (name == "qwen3_plain") return *l.qwen3_plain;
  if (name == "llama3_style") return *l.llama3_style;
  if (name == "gpt2_prefix_space") return *l.gpt2_prefix_space;
  return *l.gpt2;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string show(const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); }

// A minimal valid byte-level BPE tokenizer.json (256 byte tokens, two merges), to be broken by tests.
json tiny_tokenizer() {
  json vocab = json::object();
  int id = 0;
  // GPT-2's byte-to-character map
  std::vector<int> bs;
  for (int b = 33; b <= 126; ++b) bs.push_back(b);
  for (int b = 161; b <= 172; ++b) bs.push_back(b);
  for (int b = 174; b <= 255; ++b) bs.push_back(b);
  std::vector<int> cs = bs;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) s.push_back(static_cast<char>(cp));
    else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return s;
  };
  for (size_t i = 0; i < bs.size(); ++i) vocab[utf8(cs[i])] = id++;
  vocab["ab"] = id++;
  vocab["abc"] = id++;
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array({{{"id", id}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b", json::array({"ab", "c"})})}};
  return j;
}

std::string load_error(const json& j) {
  try {
    Tokenizer::from_json(j.dump(), "bad.json");
  } catch (const subq::InputError& e) {
    return e.what();
  }
  return "(no error)";
}

bool python_tokenizers_available() {
  static const bool ok = std::system("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0;
  return ok;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

// HF `tokenizers`' ids for `inputs` with the tokenizer file at `tok_path` (python3 via popen).
json hf_encode(const std::string& tok_path, const json& inputs, const std::string& scratch_dir) {
  std::string in_path = scratch_dir + "/inputs.json";
  subq::fsx::write_file_atomic(in_path, inputs.dump());
  std::string out = run_capture("python3 -c 'import json,sys; from tokenizers import Tokenizer; "
                                "t=Tokenizer.from_file(sys.argv[1]); "
                                "print(json.dumps([t.encode(s, add_special_tokens=False).ids for s in json.load(open(sys.argv[2]))]))' " +
                                tok_path + " " + in_path);
  INFO("HF output: " << out.substr(0, 300));
  json hf = json::parse(out, nullptr, false);
  REQUIRE(hf.is_array());
  REQUIRE(hf.size() == inputs.size());
  return hf;
}

std::vector<std::string> training_corpus() {
  std::vector<std::string> texts;
  for (const auto& f : goldens()["code_files"]) texts.push_back(subq::fsx::read_file(data_dir() + "/code/" + f.get<std::string>()));
  for (const auto& [k, v] : goldens()["cases"].items()) texts.push_back(v.get<std::string>());
  return texts;
}

}  // namespace

TEST_CASE("tokenizer: HF goldens (ids and decodes) for Qwen3, Llama-3 style and GPT-2 (+ prefix space)", "[tokenizer]") {
  if (tokenizers_dir().empty()) SUBQ_SKIP("../shared/data is absent: no tokenizer files to compare with HF goldens");
  const json& g = goldens();
  for (const std::string name : {"qwen3", "qwen3_plain", "llama3_style", "gpt2", "gpt2_prefix_space"}) {
    const Tokenizer& tok = by_name(name);
    const json& res = g["results"][name];
    bool allow_special = name != "qwen3_plain";
    for (const auto& [cname, expect] : res["cases"].items()) {
      std::string text = g["cases"][cname].get<std::string>();
      INFO(name << " case " << cname << ": " << show(text));
      auto ids = tok.encode(text, allow_special);
      CHECK(ids == ids_of(expect["ids"]));
      CHECK(tok.decode(ids_of(expect["ids"])) == expect["decoded"].get<std::string>());
    }
    for (const auto& [fname, expect] : res["code"].items()) {
      std::string text = subq::fsx::read_file(data_dir() + "/code/" + fname);
      INFO(name << " code file " << fname);
      auto ids = tok.encode(text, allow_special);
      CHECK(ids == ids_of(expect));
      CHECK(tok.decode(ids) == text);
    }
    const json& fuzz = g["fuzz"];
    for (size_t i = 0; i < fuzz.size(); ++i) {
      std::string text = fuzz[i].get<std::string>();
      INFO(name << " fuzz " << i << ": " << show(text));
      CHECK(tok.encode(text, allow_special) == ids_of(res["fuzz"][i]));
    }
    for (const auto& [cname, decodes] : res["token_decodes"].items()) {
      auto ids = ids_of(res["cases"][cname]["ids"]);
      REQUIRE(ids.size() == decodes.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        INFO(name << " single-token decode of id " << ids[i] << " in " << cname);
        CHECK(tok.decode(&ids[i], 1) == decodes[i].get<std::string>());
      }
    }
    auto ids = ids_of(res["cases"]["added_tokens"]["ids"]);
    CHECK(tok.decode(ids, true) == res["skip_special"]["added_tokens"].get<std::string>());
  }
}

TEST_CASE("tokenizer: added tokens, specials, eos_id, token_bytes", "[tokenizer]") {
  if (tokenizers_dir().empty()) SUBQ_SKIP("../shared/data is absent: no tokenizer files");
  const Tokenizer& q = *loaded().qwen3;
  const Tokenizer& g = *loaded().gpt2;
  CHECK(q.vocab_size() == 151669);
  CHECK(g.vocab_size() == 50257);
  CHECK(q.eos_id() == 151643);
  CHECK(g.eos_id() == 50256);
  CHECK(q.token_to_id("<|fim_prefix|>") == 151659);
  CHECK(q.is_special(151643));
  CHECK_FALSE(q.is_special(151659));  // FIM markers are added but not special in Qwen3
  CHECK(q.id_to_token(151659) == "<|fim_prefix|>");
  CHECK(q.token_bytes(151643) == 0);
  CHECK(q.token_bytes(151659) == 14);
  CHECK(q.encode("<|fim_prefix|>x<|endoftext|>") == std::vector<int32_t>{151659, 87, 151643});
  CHECK(q.encode("<|endoftext|>", false).size() > 1);
  CHECK(q.decode(q.encode("a<|endoftext|>b"), true) == "ab");
  for (const Tokenizer* t : {&q, &g}) {
    std::string text = subq::fsx::read_file(data_dir() + "/code/cpp_optional.txt") + "héllo 👨‍👩‍👧 中文";
    int64_t bytes = 0;
    for (int32_t id : t->encode(text)) bytes += t->token_bytes(id);
    CHECK(bytes == static_cast<int64_t>(text.size()));
  }
  CHECK(g.id_to_token(g.encode(" hello")[0]) == "Ġhello");
  CHECK_THROWS_AS(g.decode(std::vector<int32_t>{50257}), subq::InputError);
  CHECK_THROWS_AS(g.id_to_token(-1), subq::InputError);
}

TEST_CASE("tokenizer: raw bytes round trip, invalid UTF-8 and replacement characters", "[tokenizer]") {
  if (tokenizers_dir().empty()) SUBQ_SKIP("../shared/data is absent: no tokenizer files");
  std::mt19937 rng(42);
  for (const Tokenizer* t : {&*loaded().gpt2, &*loaded().qwen3_plain}) {
    for (int rep = 0; rep < 50; ++rep) {
      std::string s(rng() % 200, '\0');
      for (auto& c : s) c = static_cast<char>(rng() % 4 == 0 ? 0x80 + rng() % 128 : rng() % 128);
      if (t == &*loaded().qwen3_plain) {  // NFC-stable bytes only (the normaliser may change valid text)
        for (auto& c : s) if (static_cast<unsigned char>(c) >= 0x80) c = static_cast<char>(0xF8 + rng() % 8);
      }
      INFO("bytes " << show(s));
      CHECK(t->decode_bytes(t->encode(s, false)) == s);
    }
  }
  const Tokenizer& g = *loaded().gpt2;
  // "é" is two bytes; a lone first byte decodes to U+FFFD like HF's from_utf8_lossy
  std::vector<int32_t> ids = g.encode("\xC3");
  CHECK(g.decode(ids) == "\xEF\xBF\xBD");
  CHECK(g.decode(g.encode("\xF0\x9F\x98")) == "\xEF\xBF\xBD");          // truncated 4-byte sequence: one U+FFFD
  CHECK(g.decode(g.encode("\xED\xA0\x80")) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate: three
}

TEST_CASE("tokenizer: heap BPE (long words) and scan BPE (short words) agree", "[tokenizer]") {
  if (tokenizers_dir().empty()) SUBQ_SKIP("../shared/data is absent: no tokenizer files");
  std::string dir = tokenizers_dir() + "/gpt2";
  // fresh instances: each has its own word cache, so every word is merged by the path in force
  std::mt19937 rng(7);
  std::vector<std::string> words;
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzeeeaaa";
  for (int i = 0; i < 300; ++i) {
    std::string w(1 + rng() % 200, 'a');
    for (auto& c : w) c = alphabet[rng() % alphabet.size()];
    words.push_back(w);
  }
  words.push_back(std::string(1000, ' '));
  words.push_back(std::string(999, 'a'));
  subq::data::detail::set_bpe_scan_limit(0);  // everything through the heap
  Tokenizer heap = Tokenizer::from_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
  std::vector<std::vector<int32_t>> by_heap;
  for (const auto& w : words) by_heap.push_back(heap.encode(w));
  subq::data::detail::set_bpe_scan_limit(SIZE_MAX);  // everything through the scan
  Tokenizer scan = Tokenizer::from_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
  for (size_t i = 0; i < words.size(); ++i) {
    INFO("word of " << words[i].size() << " bytes");
    CHECK(scan.encode(words[i]) == by_heap[i]);
    CHECK(scan.decode(by_heap[i]) == words[i]);
  }
  subq::data::detail::set_bpe_scan_limit(48);
}

TEST_CASE("tokenizer: to_json round trip and save", "[tokenizer]") {
  if (tokenizers_dir().empty()) SUBQ_SKIP("../shared/data is absent: no tokenizer files");
  std::string text = subq::fsx::read_file(data_dir() + "/code/py_argparse.txt") + " <|endoftext|> e\u0301 1234";
  for (const Tokenizer* t : {&*loaded().gpt2, &*loaded().llama3_style}) {
    Tokenizer back = Tokenizer::from_json(t->to_json(), "roundtrip");
    CHECK(back.encode(text) == t->encode(text));
    CHECK(back.vocab_size() == t->vocab_size());
    CHECK(back.to_json() == t->to_json());
  }
  std::string path = (std::filesystem::temp_directory_path() / ("subq_test_tokenizer_save_" + std::to_string(getpid()) + ".json")).string();
  loaded().gpt2->save(path);
  CHECK(Tokenizer::from_file(path).encode(text) == loaded().gpt2->encode(text));
  std::filesystem::remove(path);
}

TEST_CASE("tokenizer: malformed and unsupported files name the problem", "[tokenizer]") {
  CHECK(Tokenizer::from_json(tiny_tokenizer().dump(), "tiny").encode("abcab") == std::vector<int32_t>{257, 256});
  CHECK_THAT(load_error(json::parse("{}")), Catch::Matchers::Contains("has no \"model\""));
  try {
    Tokenizer::from_json("{not json", "broken.json");
    FAIL("no error");
  } catch (const subq::InputError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("broken.json: not valid JSON"));
  }
  json j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("bad.json: model.type: \"WordPiece\" is not supported"));
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("pre_tokenizer: type \"Whitespace\" is not supported"));
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({
      {{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}, {"behavior", "Isolated"}, {"invert", false}},
      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("pre_tokenizer.pretokenizers[0].pattern: the regex \"\\\\w+\" is not supported"));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = kQwen2Re;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("behavior: \"Removed\" is not supported"));
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Isolated";
  CHECK(load_error(j) == "(no error)");
  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("normalizer: type \"Lowercase\" is not supported"));
  j = tiny_tokenizer();
  j["decoder"] = nullptr;
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("decoder: is null"));
  j = tiny_tokenizer();
  j["model"]["merges"].push_back("a zz");
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("model.merges[2]: \"a zz\" uses a token that is not in model.vocab"));
  j = tiny_tokenizer();
  j["model"]["merges"].push_back("abc");
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("model.merges[2]: \"abc\" is not of the form"));
  j = tiny_tokenizer();
  j["model"]["merges"].push_back(json::array({"c", "c"}));
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("makes \"cc\", which is not in model.vocab"));
  j = tiny_tokenizer();
  j["model"]["vocab"].erase("Ā");
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("model.vocab has no token for byte 0x0"));
  j = tiny_tokenizer();
  j["model"]["byte_fallback"] = true;
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("model.byte_fallback"));
  j = tiny_tokenizer();
  j["model"]["dropout"] = 0.1;
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("model.dropout"));
  j = tiny_tokenizer();
  j["added_tokens"][0].erase("id");
  CHECK_THAT(load_error(j), Catch::Matchers::Contains("added_tokens[0]: needs an integer \"id\""));
  CHECK_THROWS_AS(Tokenizer::from_file("/nonexistent/tokenizer.json"), subq::InputError);
}

TEST_CASE("tokenizer: added-token flags lstrip, rstrip, single_word, normalized", "[tokenizer]") {
  json j = tiny_tokenizer();
  int next = j["added_tokens"][0]["id"].get<int>() + 1;
  j["added_tokens"].push_back({{"id", next}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"special", true},
                               {"normalized", false}});
  j["added_tokens"].push_back({{"id", next + 1}, {"content", "xy"}, {"single_word", true}, {"normalized", true}});
  Tokenizer t = Tokenizer::from_json(j.dump(), "flags");
  // lstrip/rstrip swallow the surrounding whitespace
  CHECK(t.encode("a <m> b") == std::vector<int32_t>{t.encode("a")[0], next, t.encode("b")[0]});
  // single_word: only outside words
  CHECK(t.encode("xy") == std::vector<int32_t>{next + 1});
  CHECK(t.encode("axy").size() == 3);
  CHECK(t.encode("(xy)")[1] == next + 1);
}

TEST_CASE("tokenizer: added tokens match leftmost, then longest, among many", "[tokenizer]") {
  json j = tiny_tokenizer();
  int base = j["added_tokens"][0]["id"].get<int>() + 1;
  for (int k = 0; k < 300; ++k)  // like Llama-3's reserved tokens: a shared "<|" prefix
    j["added_tokens"].push_back({{"id", base + k}, {"content", "<|r" + std::to_string(k) + "|>"}, {"special", true},
                                 {"normalized", false}});
  int a = base + 300;
  j["added_tokens"].push_back({{"id", a}, {"content", "<|a|>"}, {"special", true}, {"normalized", false}});
  j["added_tokens"].push_back({{"id", a + 1}, {"content", "<|a|>b"}, {"special", true}, {"normalized", false}});
  j["added_tokens"].push_back({{"id", a + 2}, {"content", "|a"}, {"special", false}, {"normalized", false}});
  Tokenizer t = Tokenizer::from_json(j.dump(), "many");
  int32_t c = t.encode("c")[0], x = t.encode("x")[0], lt = t.encode("<")[0];
  CHECK(t.encode("<|a|>bc") == std::vector<int32_t>{a + 1, c});          // longest at the same start
  CHECK(t.encode("<|a|>c") == std::vector<int32_t>{a, c});
  CHECK(t.encode("<|r299|>x<|r7|>") == std::vector<int32_t>{base + 299, x, base + 7});
  CHECK(t.encode("<|ax") == std::vector<int32_t>{lt, a + 2, x});        // leftmost: "|a" starts before nothing longer
  CHECK(t.decode(t.encode("x<|r12|><|a|>b"), true) == "x");
}

TEST_CASE("tokenizer: training is deterministic and HF loads the result identically", "[tokenizer][train]") {
  auto texts = training_corpus();
  BpeTrainOptions o;
  o.vocab_size = 600;
  o.show_progress = false;
  o.special_tokens = {"<|endoftext|>", "<|fim_prefix|>"};
  o.threads = 1;
  Tokenizer a = subq::data::train_bpe_texts(texts, o);
  o.threads = 3;
  Tokenizer b = subq::data::train_bpe_texts(texts, o);
  CHECK(a.to_json() == b.to_json());
  CHECK(a.vocab_size() == 600);
  CHECK(a.token_to_id("<|endoftext|>") == 0);
  CHECK(a.eos_id() == 0);
  CHECK(a.is_special(1));
  for (const auto& t : texts) CHECK(a.decode(a.encode(t)) == t);  // gpt2 style: no normaliser
  std::string code = texts[0];
  CHECK(a.decode(a.encode(code)) == code);
  CHECK(a.encode(code).size() < code.size() / 2);  // merges were learned and used
  // training from files gives the same tokenizer as from texts
  std::vector<std::string> files;
  auto dir = std::filesystem::temp_directory_path() / ("subq_test_bpe_train_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  for (size_t i = 0; i < texts.size(); ++i) {
    files.push_back((dir / ("t" + std::to_string(i) + ".txt")).string());
    std::ofstream(files.back(), std::ios::binary) << texts[i];
  }
  o.threads = 2;
  CHECK(subq::data::train_bpe(files, o).to_json() == a.to_json());

  for (const char* style : {"gpt2", "qwen2"}) {
    o.pre_tokenizer = style;
    Tokenizer t = subq::data::train_bpe_texts(texts, o);
    std::string tok_path = (dir / (std::string(style) + ".json")).string();
    t.save(tok_path);
    if (!python_tokenizers_available()) {
      WARN("SKIPPED: python3 with tokenizers not importable: HF compatibility of trained tokenizers not checked");
      continue;
    }
    json inputs = json::array();
    for (const auto& s : texts) inputs.push_back(s);
    for (const auto& s : goldens()["fuzz"]) inputs.push_back(s);
    json hf = hf_encode(tok_path, inputs, dir.string());
    for (size_t i = 0; i < inputs.size(); ++i) {
      INFO(style << " input " << i << ": " << show(inputs[i].get<std::string>().substr(0, 80)));
      CHECK(t.encode(inputs[i].get<std::string>()) == ids_of(hf[i]));
    }
  }
  // a loaded tokenizer saved by subq loads in HF too (GPT-2: small enough to be quick)
  if (!tokenizers_dir().empty() && python_tokenizers_available()) {
    std::string path = (dir / "gpt2_resaved.json").string();
    loaded().gpt2->save(path);
    json inputs = json::array();
    for (const auto& s : texts) inputs.push_back(s);
    json hf = hf_encode(path, inputs, dir.string());
    for (size_t i = 0; i < inputs.size(); ++i) CHECK(loaded().gpt2->encode(inputs[i].get<std::string>()) == ids_of(hf[i]));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("tokenizer: training options are validated", "[tokenizer][train]") {
  BpeTrainOptions o;
  o.show_progress = false;
  o.vocab_size = 100;
  CHECK_THROWS_AS(subq::data::train_bpe_texts({"abc"}, o), subq::ConfigError);
  o.vocab_size = 300;
  o.pre_tokenizer = "bert";
  CHECK_THROWS_AS(subq::data::train_bpe_texts({"abc"}, o), subq::ConfigError);
  o.pre_tokenizer = "gpt2";
  CHECK_THROWS_AS(subq::data::train_bpe({"/nonexistent/file.py"}, o), subq::InputError);
  // a tiny corpus stops early (min_frequency) instead of inventing merges
  Tokenizer t = subq::data::train_bpe_texts({"ab ab ab cd"}, o);
  CHECK(t.vocab_size() < 300);
  CHECK(t.decode(t.encode("ab ab cd")) == "ab ab cd");
}

TEST_CASE("unicode: categories, NFC, UTF-8 repair (no tokenizer files needed)", "[tokenizer][unicode]") {
  namespace u = subq::data::unicode;
  CHECK(std::string(u::unicode_version()) == "16.0.0");
  CHECK(u::category('A') == u::Lu);
  CHECK(u::category(0x4E2D) == u::Lo);       // 中
  CHECK(u::category(0x0301) == u::Mn);
  CHECK(u::category(0x10D50) == u::Lu);      // GARAY CAPITAL LETTER A, new in Unicode 16
  CHECK(u::category(0x0378) == u::Cn);       // unassigned
  CHECK((u::classes(0x3000) & u::kSpace) != 0);
  CHECK((u::classes(0x200B) & u::kSpace) == 0);  // zero width space is not White_Space
  CHECK((u::classes(0x00BD) & u::kNumber) != 0);  // ½ is \p{N}
  CHECK(u::combining_class(0x0301) == 230);
  CHECK(u::nfc("e\xCC\x81") == "\xC3\xA9");                           // e + acute -> é
  CHECK(u::nfc("a\xCC\xA3\xCC\x82") == "\xE1\xBA\xAD");               // a + dot below + circumflex -> ậ
  CHECK(u::nfc("a\xCC\x82\xCC\xA3") == "\xE1\xBA\xAD");               // reordered first
  CHECK(u::nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8") == "\xEA\xB0\x81");  // Hangul jamo -> 각
  CHECK(u::nfc("\xE2\x84\xAB") == "\xC3\x85");                        // Angstrom sign -> Å
  CHECK(u::nfc("\xCC\x81" "a") == "\xCC\x81" "a");                    // leading mark stays
  CHECK(u::nfc("x\xFF\xC3") == "x\xFF\xC3");                          // invalid bytes pass through
  CHECK(u::nfc_quick_check("plain ascii and 中文"));
  CHECK_FALSE(u::nfc_quick_check("e\xCC\x81"));
  CHECK(u::utf8_lossy("ok \xC3\xA9") == "ok \xC3\xA9");
  CHECK(u::utf8_lossy("\xC3") == "\xEF\xBF\xBD");
  CHECK(u::utf8_lossy("\xF0\x9F\x98" "a") == "\xEF\xBF\xBD" "a");    // maximal subpart: one U+FFFD
  CHECK(u::utf8_lossy("\xC0\xAF") == "\xEF\xBF\xBD\xEF\xBF\xBD");     // overlong: each byte
  CHECK(u::utf8_lossy("\xF4\x90\x80\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("bpe training equals a brute-force reference", "[tokenizer][train]") {
  // The reference recounts every pair from scratch before each merge (no incremental bookkeeping) and
  // takes the most frequent pair, ties to the smaller (left id, right id): what the heap must reproduce.
  std::vector<std::string> texts = training_corpus();
  texts.resize(4);
  BpeTrainOptions o;
  o.vocab_size = 450;
  o.show_progress = false;
  o.special_tokens = {"<|endoftext|>"};
  Tokenizer t = subq::data::train_bpe_texts(texts, o);
  json merges = json::parse(t.to_json())["model"]["merges"];

  std::map<std::string, int64_t> counts;
  subq::data::detail::PretokScratch scratch;
  std::vector<std::pair<uint32_t, uint32_t>> pieces;
  for (const auto& text : texts) {
    size_t start = 0;
    for (;;) {
      size_t p = text.find("<|endoftext|>", start);
      std::string_view seg = std::string_view(text).substr(start, p == std::string::npos ? std::string::npos : p - start);
      pieces.clear();
      subq::data::detail::pretokenize(subq::data::detail::RegexKind::gpt2, seg, pieces, scratch);
      for (auto [a, b] : pieces) ++counts[std::string(seg.substr(a, b - a))];
      if (p == std::string::npos) break;
      start = p + 13;
    }
  }
  std::vector<std::string> id_bytes{"<|endoftext|>"};  // id -> bytes
  std::map<std::string, int32_t> ids;
  std::vector<int> order(256);
  for (int b = 0; b < 256; ++b) order[b] = b;
  const auto& b2c = subq::data::detail::byte_to_char();
  std::sort(order.begin(), order.end(), [&](int x, int y) { return b2c[x] < b2c[y]; });
  for (int b : order) {
    ids[std::string(1, static_cast<char>(b))] = static_cast<int32_t>(id_bytes.size());
    id_bytes.push_back(std::string(1, static_cast<char>(b)));
  }
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> wc;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> s;
    for (char ch : w) s.push_back(ids[std::string(1, ch)]);
    words.push_back(s);
    wc.push_back(c);
  }
  std::vector<std::pair<std::string, std::string>> ref;
  while (static_cast<int64_t>(id_bytes.size()) < o.vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (size_t i = 0; i < words.size(); ++i)
      for (size_t k = 0; k + 1 < words[i].size(); ++k) pc[{words[i][k], words[i][k + 1]}] += wc[i];
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pc)  // map order: ascending pairs, so '>' keeps the smallest on ties
      if (c > best_count) { best_count = c; best = p; }
    if (best_count < o.min_frequency) break;
    std::string nb = id_bytes[best.first] + id_bytes[best.second];
    int32_t nid;
    if (ids.count(nb)) nid = ids[nb];
    else {
      nid = static_cast<int32_t>(id_bytes.size());
      ids[nb] = nid;
      id_bytes.push_back(nb);
    }
    ref.emplace_back(subq::data::detail::bytes_to_token_string(id_bytes[best.first]),
                     subq::data::detail::bytes_to_token_string(id_bytes[best.second]));
    for (auto& w : words) {
      std::vector<int32_t> out;
      for (size_t k = 0; k < w.size(); ++k) {
        if (k + 1 < w.size() && w[k] == best.first && w[k + 1] == best.second) { out.push_back(nid); ++k; }
        else out.push_back(w[k]);
      }
      w = out;
    }
  }
  REQUIRE(merges.size() == ref.size());
  for (size_t r = 0; r < ref.size(); ++r) {
    INFO("merge " << r);
    CHECK(merges[r][0].get<std::string>() == ref[r].first);
    CHECK(merges[r][1].get<std::string>() == ref[r].second);
  }
}
