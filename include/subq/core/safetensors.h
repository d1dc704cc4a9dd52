// safetensors.h — reading and writing the safetensors format (weights, optimizer state, exports).
//
// Format: 8-byte little-endian header length N, N bytes of JSON ({"name": {"dtype", "shape",
// "data_offsets": [begin, end]}, "__metadata__": {str: str}}), then the raw little-endian tensor bytes.
// No pickles: a file from elsewhere cannot run code. Supported dtypes: F64 F32 F16 BF16 I64 I32 I16
// I8 U8 BOOL. Writing is atomic (temporary file + rename).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace subq {

using TensorMap = std::map<std::string, torch::Tensor>;

// Writes tensors (any device; copied to CPU, made contiguous) and string metadata to `path` atomically.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  TensorMap tensors;                            // CPU tensors owning their memory
  std::map<std::string, std::string> metadata;
};
// Reads a whole file. InputError naming the file and what is wrong (truncated, bad header, bad dtype,
// offsets out of range).
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace subq
