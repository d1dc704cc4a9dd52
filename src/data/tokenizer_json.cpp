// tokenizer_json.cpp — reading and writing HF tokenizer.json, and GPT-2's original encoder.json +
// vocab.bpe.
//
// What is accepted (anything else is an InputError naming the file and the part, so a user learns at
// load time, not from silently different ids):
//   normalizer     null | NFC | Sequence of NFC
//   pre_tokenizer  ByteLevel (use_regex: the GPT-2 regex) | Sequence[Split(Regex = one of the patterns
//                  in tokenizer_pretokenize.h, behavior Isolated, invert false), ByteLevel(use_regex
//                  false)]; ByteLevel must come last; add_prefix_space only on a lone ByteLevel
//   model          BPE without dropout, subword prefix/suffix or byte fallback; merges as "a b" strings
//                  or [a, b] pairs; ignore_merges
//   decoder        ByteLevel (or a Sequence holding only it)
//   post_processor kept verbatim for to_json(); encode() never adds template tokens (it behaves as HF's
//                  encode(..., add_special_tokens=False)). truncation/padding are ignored.
// to_json() writes the current HF layout (merges as pairs, vocab ordered by id), which tokenizers >= 0.20
// reads; it is canonical rather than a copy of the input, so a loaded and re-saved file says the same.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "data/tokenizer_impl.h"
#include "data/unicode.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"

namespace subq::data {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& name, const std::string& part, const std::string& msg) {
  throw InputError(str(name, ": ", part, ": ", msg));
}

// j[key] without copying, or a null value when absent.
const json& member(const json& j, const char* key) {
  static const json null_value;
  if (!j.is_object()) return null_value;
  auto it = j.find(key);
  return it == j.end() ? null_value : *it;
}

std::string type_of(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

bool get_bool(const json& j, const char* key, bool dflt, const std::string& name, const std::string& part) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) bad(name, str(part, ".", key), "must be true or false");
  return it->get<bool>();
}

bool parse_normalizer(const json& j, const std::string& name, const std::string& part) {
  if (j.is_null()) return false;
  std::string t = type_of(j);
  if (t == "NFC") return true;
  if (t == "Sequence") {
    bool nfc = false;
    const json& list = member(j, "normalizers");
    for (size_t i = 0; i < list.size(); ++i) nfc |= parse_normalizer(list[i], name, str(part, ".normalizers[", i, "]"));
    return nfc;
  }
  bad(name, part, str("type \"", t, "\" is not supported (subq supports NFC, a Sequence of NFC, or null)"));
}

detail::PretokConfig parse_pretokenizer(const json& j, const std::string& name) {
  if (j.is_null()) bad(name, "pre_tokenizer", "is null; subq needs a ByteLevel pre-tokenizer (byte-level BPE)");
  std::vector<std::pair<const json*, std::string>> items;
  if (type_of(j) == "Sequence") {
    const json& list = member(j, "pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) items.emplace_back(&list[i], str("pre_tokenizer.pretokenizers[", i, "]"));
  } else {
    items.emplace_back(&j, "pre_tokenizer");
  }
  detail::PretokConfig cfg;
  bool byte_level = false, have_split = false;
  for (size_t i = 0; i < items.size(); ++i) {
    const json& it = *items[i].first;
    const std::string& part = items[i].second;
    std::string t = type_of(it);
    if (t == "ByteLevel") {
      if (i + 1 != items.size()) bad(name, part, "ByteLevel must be the last pre-tokenizer of the sequence");
      byte_level = true;
      cfg.add_prefix_space = get_bool(it, "add_prefix_space", true, name, part);
      if (get_bool(it, "use_regex", true, name, part)) {
        if (cfg.regex) bad(name, part, "use_regex=true after a Split: two regex pre-tokenizers are not supported");
        cfg.regex = detail::RegexKind::gpt2;
      }
      if (cfg.add_prefix_space && have_split)
        bad(name, part, "add_prefix_space=true after a Split is not supported (set it to false)");
    } else if (t == "Split") {
      if (cfg.regex) bad(name, part, "only one Split pre-tokenizer is supported");
      const json& pat = member(it, "pattern");
      std::string regex;
      if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) regex = pat["Regex"].get<std::string>();
      else bad(name, part + ".pattern", "must be {\"Regex\": ...} with one of the GPT-2, Qwen2 or Llama-3 patterns");
      auto kind = detail::regex_kind_of(regex);
      if (!kind)
        bad(name, part + ".pattern",
            str("the regex ", json(regex).dump(), " is not supported; subq implements the GPT-2, Qwen2 and Llama-3 "
                "pre-tokenizer regexes exactly (src/data/tokenizer_pretokenize.h)"));
      std::string behavior = it.value("behavior", std::string());
      if (behavior != "Isolated") bad(name, part + ".behavior", str("\"", behavior, "\" is not supported (only Isolated)"));
      if (get_bool(it, "invert", false, name, part)) bad(name, part + ".invert", "true is not supported");
      cfg.regex = kind;
      cfg.split_form = true;
      have_split = true;
    } else {
      bad(name, part, str("type \"", t, "\" is not supported (subq supports ByteLevel, and Split with a GPT-2, "
                          "Qwen2 or Llama-3 regex followed by ByteLevel)"));
    }
  }
  if (!byte_level) bad(name, "pre_tokenizer", "has no ByteLevel pre-tokenizer; subq reads byte-level BPE tokenizers only");
  return cfg;
}

void check_decoder(const json& j, const std::string& name) {
  std::string t = type_of(j);
  if (t == "ByteLevel") return;
  if (t == "Sequence") {
    const json& list = member(j, "decoders");
    if (list.size() == 1 && type_of(list[0]) == "ByteLevel") return;
  }
  bad(name, "decoder", str(j.is_null() ? std::string("is null") : str("type \"", t, "\" is not supported"),
                           "; subq needs the ByteLevel decoder"));
}

// tokens[id] = token for every vocab entry; ids may leave holes.
void put_token(Tokenizer::Impl& im, int64_t id, const std::string& token, const std::string& part) {
  if (id < 0 || id > 100000000) bad(im.name, part, str("id ", id, " of \"", token, "\" is out of range"));
  if (static_cast<size_t>(id) >= im.tokens.size()) {
    im.tokens.resize(id + 1);
    im.present.resize(id + 1, 0);
  }
  im.tokens[id] = token;
  im.present[id] = 1;
}

void read_vocab(Tokenizer::Impl& im, const json& vocab, const std::string& part) {
  if (!vocab.is_object()) bad(im.name, part, "must be an object {token: id}");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) bad(im.name, part, str("the id of \"", it.key(), "\" is not an integer"));
    int64_t id = it.value().get<int64_t>();
    put_token(im, id, it.key(), part);
    im.model_vocab[it.key()] = static_cast<int32_t>(id);
  }
}

void add_merge(Tokenizer::Impl& im, const std::string& a, const std::string& b, size_t r, const std::string& part) {
  auto ia = im.model_vocab.find(a), ib = im.model_vocab.find(b);
  if (ia == im.model_vocab.end() || ib == im.model_vocab.end())
    bad(im.name, str(part, "[", r, "]"), str("\"", a, " ", b, "\" uses a token that is not in model.vocab"));
  im.merges.emplace_back(ia->second, ib->second);
}

void read_merge_line(Tokenizer::Impl& im, const std::string& line, size_t r, const std::string& part) {
  size_t sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != std::string::npos)
    bad(im.name, str(part, "[", r, "]"), str(json(line).dump(), " is not of the form \"left right\""));
  add_merge(im, line.substr(0, sp), line.substr(sp + 1), r, part);
}

void check_model_options(const json& m, const std::string& name) {
  auto it = m.find("dropout");
  if (it != m.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0.0))
    bad(name, "model.dropout", "BPE dropout is not supported (set it to null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto k = m.find(key);
    if (k != m.end() && !k->is_null() && !(k->is_string() && k->get<std::string>().empty()))
      bad(name, str("model.", key), "is not supported by byte-level BPE (set it to null)");
  }
  if (get_bool(m, "byte_fallback", false, name, "model"))
    bad(name, "model.byte_fallback", "true is not supported (that is SentencePiece-style BPE, not byte-level)");
}

std::shared_ptr<Tokenizer::Impl> parse_tokenizer_json(const std::string& text, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw InputError(str(name, ": not valid JSON (", e.what(), "); expected a Hugging Face tokenizer.json"));
  }
  if (!j.is_object() || !j.contains("model"))
    throw InputError(str(name, ": has no \"model\"; expected a Hugging Face tokenizer.json"));
  auto im = std::make_shared<Tokenizer::Impl>();
  im->name = name;
  const json& m = j["model"];
  std::string mtype = type_of(m);
  if (mtype.empty() && m.is_object() && m.contains("merges")) mtype = "BPE";
  if (mtype != "BPE")
    bad(name, "model.type", str("\"", mtype, "\" is not supported; subq reads byte-level BPE tokenizers (model.type \"BPE\")"));
  check_model_options(m, name);
  im->nfc = parse_normalizer(member(j, "normalizer"), name, "normalizer");
  im->pretok = parse_pretokenizer(member(j, "pre_tokenizer"), name);
  check_decoder(member(j, "decoder"), name);
  im->ignore_merges = get_bool(m, "ignore_merges", false, name, "model");
  read_vocab(*im, member(m, "vocab"), "model.vocab");
  const json& merges = member(m, "merges");
  if (!merges.is_array() && !merges.is_null()) bad(name, "model.merges", "must be a list");
  im->merges.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    if (e.is_string()) {
      read_merge_line(*im, e.get<std::string>(), r, "model.merges");
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      add_merge(*im, e[0].get<std::string>(), e[1].get<std::string>(), r, "model.merges");
    } else {
      bad(name, str("model.merges[", r, "]"), "must be \"left right\" or [\"left\", \"right\"]");
    }
  }
  const json& added = member(j, "added_tokens");
  if (!added.is_array() && !added.is_null()) bad(name, "added_tokens", "must be a list");
  for (size_t k = 0; k < added.size(); ++k) {
    const json& a = added[k];
    std::string part = str("added_tokens[", k, "]");
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      bad(name, part, "needs an integer \"id\" and a string \"content\"");
    detail::AddedToken t;
    t.id = a["id"].get<int32_t>();
    t.content = a["content"].get<std::string>();
    t.single_word = get_bool(a, "single_word", false, name, part);
    t.lstrip = get_bool(a, "lstrip", false, name, part);
    t.rstrip = get_bool(a, "rstrip", false, name, part);
    t.special = get_bool(a, "special", false, name, part);
    t.normalized = get_bool(a, "normalized", !t.special, name, part);
    put_token(*im, t.id, t.content, part);
    im->added.push_back(std::move(t));
  }
  auto pp = j.find("post_processor");
  if (pp != j.end()) im->post_processor_json = pp->dump();
  im->finalize();
  return im;
}

}  // namespace

Tokenizer Tokenizer::from_impl(std::shared_ptr<const Impl> impl) { return Tokenizer(std::move(impl)); }

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& name) {
  return Tokenizer(parse_tokenizer_json(json_text, name));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  return from_json(fsx::read_file(path, "tokenizer"), path);
}

Tokenizer Tokenizer::from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  auto im = std::make_shared<Impl>();
  im->name = encoder_json;
  json enc;
  try {
    enc = json::parse(fsx::read_file(encoder_json, "GPT-2 encoder.json"));
  } catch (const json::parse_error& e) {
    throw InputError(str(encoder_json, ": not valid JSON (", e.what(), "); expected GPT-2's encoder.json {token: id}"));
  }
  read_vocab(*im, enc, "encoder");
  im->name = vocab_bpe;
  std::istringstream lines(fsx::read_file(vocab_bpe, "GPT-2 vocab.bpe"));
  std::string line;
  size_t r = 0;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    read_merge_line(*im, line, r++, "merges");
  }
  im->name = encoder_json;
  im->pretok.regex = detail::RegexKind::gpt2;
  im->pretok.add_prefix_space = false;
  if (auto it = im->model_vocab.find("<|endoftext|>"); it != im->model_vocab.end()) {
    detail::AddedToken t;
    t.id = it->second;
    t.content = "<|endoftext|>";
    t.special = true;
    im->added.push_back(t);
  }
  im->finalize();
  return Tokenizer(im);
}

std::string Tokenizer::to_json() const {
  // Written by hand rather than through nlohmann::ordered_json, whose ordered map makes inserting
  // 150k vocabulary entries quadratic; strings are escaped by nlohmann.
  const Impl& im = *impl_;
  auto q = [](const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); };
  auto b = [](bool v) { return v ? "true" : "false"; };
  std::string o;
  o.reserve(im.tokens.size() * 40 + 4096);
  o += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
  std::vector<const detail::AddedToken*> sorted;
  for (const auto& t : im.added) sorted.push_back(&t);
  std::stable_sort(sorted.begin(), sorted.end(), [](auto* x, auto* y) { return x->id < y->id; });
  for (size_t k = 0; k < sorted.size(); ++k) {
    const auto* t = sorted[k];
    o += str(k ? "," : "", "\n    {\"id\": ", t->id, ", \"content\": ", q(t->content), ", \"single_word\": ",
             b(t->single_word), ", \"lstrip\": ", b(t->lstrip), ", \"rstrip\": ", b(t->rstrip),
             ", \"normalized\": ", b(t->normalized), ", \"special\": ", b(t->special), "}");
  }
  o += sorted.empty() ? "],\n" : "\n  ],\n";
  o += str("  \"normalizer\": ", im.nfc ? "{\"type\": \"NFC\"}" : "null", ",\n");
  auto byte_level = [&](bool aps, bool use_regex) {
    return str("{\"type\": \"ByteLevel\", \"add_prefix_space\": ", b(aps), ", \"trim_offsets\": false, \"use_regex\": ",
               b(use_regex), "}");
  };
  if (im.pretok.regex && (im.pretok.split_form || *im.pretok.regex != detail::RegexKind::gpt2)) {
    o += str("  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [\n    {\"type\": \"Split\", \"pattern\": ",
             "{\"Regex\": ", q(detail::regex_pattern(*im.pretok.regex)), "}, \"behavior\": \"Isolated\", \"invert\": false},\n    ",
             byte_level(false, false), "\n  ]},\n");
  } else {
    o += str("  \"pre_tokenizer\": ", byte_level(im.pretok.add_prefix_space, im.pretok.regex.has_value()), ",\n");
  }
  o += str("  \"post_processor\": ", json::parse(im.post_processor_json).dump(), ",\n");
  o += str("  \"decoder\": ", byte_level(false, false), ",\n");
  o += str("  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n",
           "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n",
           "    \"byte_fallback\": false,\n    \"ignore_merges\": ", b(im.ignore_merges), ",\n    \"vocab\": {");
  bool first = true;
  for (int32_t id = 0; id < im.vocab_size(); ++id) {
    if (!im.present[id]) continue;
    auto it = im.model_vocab.find(im.tokens[id]);
    if (it == im.model_vocab.end() || it->second != id) continue;
    o += first ? "\n      " : ",\n      ";
    first = false;
    o += q(im.tokens[id]);
    o += ": ";
    o += std::to_string(id);
  }
  o += first ? "},\n    \"merges\": [" : "\n    },\n    \"merges\": [";
  for (size_t r = 0; r < im.merges.size(); ++r) {
    o += r ? ",\n      [" : "\n      [";
    o += q(im.tokens[im.merges[r].first]);
    o += ", ";
    o += q(im.tokens[im.merges[r].second]);
    o += "]";
  }
  o += im.merges.empty() ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";
  return o;
}

Tokenizer load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    if (fs::exists(dir / "tokenizer.json", ec)) return Tokenizer::from_file((dir / "tokenizer.json").string());
    if (fs::exists(dir / "encoder.json", ec) && fs::exists(dir / "vocab.bpe", ec))
      return Tokenizer::from_gpt2_files((dir / "encoder.json").string(), (dir / "vocab.bpe").string());
    throw InputError(str(path, ": this directory has neither tokenizer.json nor GPT-2's encoder.json + vocab.bpe; "
                         "give a tokenizer.json file or such a directory"));
  }
  if (!fs::exists(path, ec))
    throw InputError(str(path, ": no such file; give a tokenizer.json, or a directory with tokenizer.json or "
                         "encoder.json + vocab.bpe"));
  return Tokenizer::from_file(path);
}

void Tokenizer::save(const std::string& path) const { fsx::write_file_atomic(path, to_json()); }

}  // namespace subq::data
