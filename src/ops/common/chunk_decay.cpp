// chunk_decay.cpp — see chunk_decay.h.
#include "ops/common/chunk_decay.h"

#include <limits>
#include <sstream>

#include "subq/core/error.h"

namespace subq::ops::detail {

namespace {
std::string sizes_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}
}  // namespace

torch::ScalarType compute_dtype(std::initializer_list<const torch::Tensor*> tensors) {
  for (const torch::Tensor* t : tensors)
    if (t->defined() && t->scalar_type() == torch::kFloat64) return torch::kFloat64;
  return torch::kFloat32;
}

void check_float(const std::string& op, const std::string& name, const torch::Tensor& t) {
  if (!t.defined()) throw InputError(str(op, ": ", name, " is undefined; pass a floating-point tensor"));
  if (!t.is_floating_point())
    throw InputError(str(op, ": ", name, " has dtype ", t.scalar_type(),
                         "; pass a floating-point tensor (fp32, bf16, fp16 or fp64)"));
}

void check_shape(const std::string& op, const std::string& name, const torch::Tensor& t,
                 c10::IntArrayRef expected, const std::string& layout) {
  if (t.sizes() != expected)
    throw InputError(str(op, ": ", name, " has shape ", sizes_str(t.sizes()), ", expected ", layout, " = ",
                         sizes_str(expected), " (head-first layout; see the op's header)"));
}

void check_same_device(const std::string& op, const std::string& name, const torch::Tensor& t,
                       const torch::Tensor& ref) {
  if (t.device() != ref.device())
    throw InputError(str(op, ": ", name, " is on ", t.device(), " but the other inputs are on ", ref.device(),
                         "; move all inputs to one device"));
}

void check_reset(const std::string& op, const torch::Tensor& reset, int64_t batch, int64_t time,
                 const torch::Tensor& ref) {
  if (!reset.defined()) return;
  if (reset.scalar_type() != torch::kBool)
    throw InputError(str(op, ": reset has dtype ", reset.scalar_type(),
                         "; pass a bool [B, T] tensor (true = a document starts at this token)"));
  check_shape(op, "reset", reset, {batch, time}, "[B, T]");
  check_same_device(op, "reset", reset, ref);
}

void check_chunk_size(const std::string& op, int64_t chunk_size) {
  if (chunk_size < 1) throw InputError(str(op, ": chunk_size = ", chunk_size, "; use a positive chunk size (e.g. 64)"));
}

torch::Tensor pad_time(const torch::Tensor& x, int64_t dim, int64_t len) {
  int64_t d = dim < 0 ? dim + x.dim() : dim;
  int64_t have = x.size(d);
  SUBQ_CHECK_LE(have, len);
  if (have == len) return x;
  std::vector<int64_t> pad(static_cast<size_t>(2 * (x.dim() - d)), 0);
  pad[pad.size() - 1] = len - have;  // torch pads from the last dimension backwards: (last_lo, last_hi, ...)
  return torch::constant_pad_nd(x, pad, 0);
}

torch::Tensor segsum(const torch::Tensor& a, const torch::Tensor& same_segment) {
  const int64_t c = a.size(-1);
  auto opts_b = torch::TensorOptions().dtype(torch::kBool).device(a.device());
  torch::Tensor strict_lower = torch::ones({c, c}, opts_b).tril(-1);  // [r, s]: r > s
  torch::Tensor lower = torch::ones({c, c}, opts_b).tril(0);          // [t, s]: t >= s
  // rep[..., r, s] = a[r] where r > s, else 0; cumsum over r gives sum_{s < r <= t} a[r] at row t.
  std::vector<int64_t> exp_sizes = a.sizes().vec();
  exp_sizes.push_back(c);
  torch::Tensor x = a.unsqueeze(-1).expand(exp_sizes).masked_fill(strict_lower.logical_not(), 0.0);
  torch::Tensor s = x.cumsum(-2);
  torch::Tensor keep = lower;
  if (same_segment.defined()) keep = torch::logical_and(keep, same_segment);
  return s.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
}

ChunkSegments chunk_segments(const torch::Tensor& reset_padded, int64_t chunk_size) {
  const int64_t b = reset_padded.size(0);
  const int64_t nc = reset_padded.size(1) / chunk_size;
  torch::Tensor r = reset_padded.to(torch::kInt64);
  torch::Tensor seg = r.cumsum(1);        // inclusive: id of the document token t belongs to
  torch::Tensor before = seg - r;         // id of the state just before token t is consumed
  torch::Tensor seg_c = seg.view({b, nc, chunk_size});
  torch::Tensor prev = before.view({b, nc, chunk_size}).select(2, 0);  // id carried into each chunk
  ChunkSegments out;
  out.same_segment = seg_c.unsqueeze(-1).eq(seg_c.unsqueeze(-2));
  out.from_carry = seg_c.eq(prev.unsqueeze(-1));
  out.passes = seg_c.select(2, chunk_size - 1).eq(prev);
  return out;
}

}  // namespace subq::ops::detail
