// safetensors.cpp — see safetensors.h.
//
// Decisions:
//  * Writer: tensors are sorted by name (std::map) and laid out back to back in that order; the JSON
//    header is padded with spaces to a multiple of 8 bytes (as the reference implementation does) so
//    the data section is 8-byte aligned when memory-mapped. The file goes through fsx::write_file_atomic.
//  * Reader is strict: the header length must fit in the file, the header must be a JSON object whose
//    entries have exactly a known dtype, an integer shape and [begin, end] offsets; end - begin must
//    equal numel * element size, offsets must lie inside the data section and tensors must not overlap.
//    Every failure is an InputError naming the file and the offending tensor.
//  * The format is little-endian; subq only targets little-endian hosts, so bytes are copied as they are
//    (a static_assert-style runtime check refuses big-endian hosts).
//  * Tensors are read into freshly allocated CPU tensors (no mmap) so the result owns its memory.
#include "subq/core/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "subq/core/error.h"
#include "subq/core/fs.h"

namespace subq {

namespace {

struct DtypeName {
  torch::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {torch::kFloat64, "F64"}, {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"},
    {torch::kInt64, "I64"},   {torch::kInt32, "I32"},   {torch::kInt16, "I16"},   {torch::kInt8, "I8"},
    {torch::kUInt8, "U8"},    {torch::kBool, "BOOL"},
};

const char* dtype_name(torch::ScalarType t, const std::string& path, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw InputError(str("cannot save tensor '", tensor, "' to ", path, ": dtype ", c10::toString(t),
                       " is not supported by safetensors here (use F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"));
}

bool little_endian_host() {
  const uint16_t x = 1;
  unsigned char b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  SUBQ_CHECK(little_endian_host(), "safetensors I/O assumes a little-endian host");
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::vector<std::pair<const std::string*, torch::Tensor>> cpu;
  cpu.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      throw InputError(str("cannot save ", path, ": '__metadata__' is reserved and cannot name a tensor"));
    if (!t.defined()) throw InputError(str("cannot save ", path, ": tensor '", name, "' is undefined"));
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    nlohmann::json e;
    e["dtype"] = dtype_name(c.scalar_type(), path, name);
    e["shape"] = c.sizes().vec();
    e["data_offsets"] = {offset, offset + nbytes};
    header[name] = e;
    offset += nbytes;
    cpu.emplace_back(&name, std::move(c));
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.append(len, 8);
  out.append(h);
  for (const auto& [name, c] : cpu) {
    const size_t nbytes = static_cast<size_t>(c.numel()) * c.element_size();
    if (nbytes) out.append(static_cast<const char*>(c.data_ptr()), nbytes);
  }
  fsx::write_file_atomic(path, out);
}

SafetensorsFile load_safetensors(const std::string& path) {
  SUBQ_CHECK(little_endian_host(), "safetensors I/O assumes a little-endian host");
  const std::string data = fsx::read_file(path, "safetensors file");
  auto bad = [&](const std::string& what) {
    return InputError(str(path, ": not a valid safetensors file: ", what,
                          " (was it written completely? re-export or re-download it)"));
  };
  if (data.size() < 8) throw bad(str("only ", data.size(), " bytes, the 8-byte header length is missing"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(data[i]);
  if (n > data.size() - 8)
    throw bad(str("header length ", n, " exceeds the file size ", data.size(), " (truncated file?)"));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data.begin() + 8, data.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception& e) {
    throw bad(str("header is not JSON (", e.what(), ")"));
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = data.size() - data_start;

  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) throw bad("__metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) throw bad(str("__metadata__ value for '", m.key(), "' is not a string"));
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tbad = [&](const std::string& what) { return bad(str("tensor '", name, "': ", what)); };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw tbad("entry needs dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) throw tbad("dtype is not a string");
    const std::string dt = e["dtype"].get<std::string>();
    const DtypeName* found = nullptr;
    for (const auto& d : kDtypes)
      if (dt == d.name) found = &d;
    if (!found) throw tbad(str("unsupported dtype '", dt, "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"));
    if (!e["shape"].is_array()) throw tbad("shape is not a list");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        throw tbad("shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (uint64_t{1} << 62) / v) throw tbad("shape is too large");
      numel *= v;
      shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw tbad("data_offsets must be [begin, end] with non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    const uint64_t esize = c10::elementSize(found->type);
    if (en < b) throw tbad(str("data_offsets [", b, ", ", en, "] end before they begin"));
    if (en > data_size)
      throw tbad(str("data_offsets end ", en, " beyond the data section (", data_size, " bytes; truncated file?)"));
    if (en - b != numel * esize)
      throw tbad(str("data_offsets cover ", en - b, " bytes but shape ", e["shape"].dump(), " of ", dt, " needs ",
                     numel * esize));
    ranges.emplace_back(b, en);
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(found->type));
    if (en > b) std::memcpy(t.data_ptr(), data.data() + data_start + b, en - b);
    out.tensors[name] = std::move(t);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second &&
        ranges[i - 1].first != ranges[i - 1].second)
      throw bad(str("tensors overlap in the data section at byte ", ranges[i].first));
  return out;
}

}  // namespace subq
