// ssd_cuda_scan.cu — the sequential part of the SSD kernels: one pass over the chunks carrying the state
// (forward) or the state gradient (reverse), plus the device queries of ssd_cuda.h.
//
// Forward, chunk c (local positions t, cum = inclusive cumulative log-decay, seg = document ids):
//   store S (the state entering chunk c, rounded to the operand dtype) to states[c];
//   S <- gamma S + (w o X)^T B,  w_s = dt_s exp(cum_63 - cum_s) [seg_s = seg_63],  gamma = exp(cum_63) [seg_63 = 0]
// Reverse, chunks last to first, with dS starting at the final-state gradient:
//   store dS (the gradient of the state leaving chunk c) to states[c];
//   dS <- gamma dS + (e o dY)^T C,  e_t = exp(cum_t) [seg_t = 0]
// Both are the same product: a 64 x 64 tile of the state (rows: head-dim p, columns: state-dim n) +=
// U'^T V with U' = diag(weights) U, K = the chunk's 64 tokens.
//
// Decisions:
//  * Grid (P/64 * N/64, H, B), 4 warps; warp w owns state rows 16w..16w+15 and all 64 columns (32 fp32
//    registers). Splitting N as well as P doubles the blocks at no extra work (each state column depends
//    only on its own B column), which matters because the chunk loop is sequential.
//  * Three-stage cp.async pipeline (U tile, V tile, dt, reset flags per stage, 18.5 KB each; 66 KB in
//    all, so three blocks fit on an SM): the loads of chunks c+1, c+2 overlap the work of chunk c.
//  * U is scaled by the weights in shared memory (rounded back to the operand dtype) rather than in the
//    fragments: one vectorised pass, and the mma loop stays generic.
//  * The stored states go through a shared staging tile so that global stores are 16-byte vectors.
#include <cuda_runtime.h>

#include <map>
#include <mutex>

#include "ops/common/chunk_kernels.cuh"
#include "ops/ssd/ssd_cuda.h"
#include "subq/core/error.h"
#include "subq/ops/cuda_check.h"

namespace subq::ops::detail {

namespace {

using ck::kChunk;

constexpr int kScanThreads = 128;
constexpr int kScanStages = 3;
constexpr int kTile = 64;
constexpr int kTilePitch = ck::pitch_of(kTile);

template <typename T>
struct ScanStage {
  T u[kChunk * kTilePitch];
  T v[kChunk * kTilePitch];
  float dt[kChunk];
  int rst[kChunk];
};

template <typename T>
constexpr size_t scan_smem_bytes() {
  return kScanStages * sizeof(ScanStage<T>) + kTile * kTilePitch * sizeof(T) + (kChunk + 4) * sizeof(float);
}

template <typename T, bool kReverse>
__global__ void __launch_bounds__(kScanThreads) ssd_scan_kernel(const SsdScanArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto* stages = reinterpret_cast<ScanStage<T>*>(smem);
  T* out_tile = reinterpret_cast<T*>(smem + kScanStages * sizeof(ScanStage<T>));
  float* wts = reinterpret_cast<float*>(out_tile + kTile * kTilePitch);
  float* gamma_s = wts + kChunk;

  const int P = a.n.head_dim, N = a.n.state_dim, T_len = a.n.time, H = a.n.heads, nc = a.n.chunks;
  const int n_pt = P / kTile;
  const int pt = blockIdx.x % n_pt, nt = blockIdx.x / n_pt;
  const int h = blockIdx.y, b = blockIdx.z;
  const int g = h / (H / a.n.groups);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m0 = 16 * warp;

  const T* u_bh = static_cast<const T*>(a.u.ptr) + b * a.u.s0 + h * a.u.s1 + pt * kTile;
  const T* v_bg = static_cast<const T*>(a.v.ptr) + b * a.v.s0 + g * a.v.s1 + nt * kTile;
  const float* dt_bh = a.dt + b * a.dt_s0 + h * a.dt_s1;
  const int* rst_b = a.reset ? a.reset + static_cast<int64_t>(b) * T_len : nullptr;
  const float A = a.A[h];
  const int64_t bh = static_cast<int64_t>(b) * H + h;

  auto chunk_at = [&](int i) { return kReverse ? nc - 1 - i : i; };
  auto load = [&](int stage, int c) {
    ScanStage<T>& st = stages[stage];
    const int t0 = c * kChunk, rows = min(kChunk, T_len - t0);
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.u, kTilePitch, u_bh + t0 * a.u.s2, a.u.s2, rows);
    ck::cp_async_tile<T, kChunk, kTile, kScanThreads>(st.v, kTilePitch, v_bg + t0 * a.v.s2, a.v.s2, rows);
    ck::cp_async_vec<float, kChunk, kScanThreads>(st.dt, dt_bh + t0 * a.dt_s2, a.dt_s2, rows);
    if (rst_b) ck::cp_async_vec<int, kChunk, kScanThreads>(st.rst, rst_b + t0, 1, rows);
  };

  float acc[8][4];
  ck::zero(acc);
  if (a.s_in) {
    const float* s = a.s_in + (bh * P + pt * kTile) * N + nt * kTile;
    ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { acc[j][e] = s[static_cast<int64_t>(r) * N + col]; });
  }

  for (int s = 0; s < kScanStages - 1; ++s) {
    if (s < nc) load(s, chunk_at(s));
    ck::cp_async_commit();
  }
  T* states = static_cast<T*>(a.states);
  for (int i = 0; i < nc; ++i) {
    const int c = chunk_at(i);
    ck::cp_async_wait<kScanStages - 2>();  // chunk i's group has landed (this thread's copies)
    __syncthreads();                       // ... everyone's; and everyone is done with iteration i - 1
    if (i + kScanStages - 1 < nc) load((i + kScanStages - 1) % kScanStages, chunk_at(i + kScanStages - 1));
    ck::cp_async_commit();
    ScanStage<T>& st = stages[i % kScanStages];

    if (warp == 0) {
      const ck::LaneDecay d = ck::chunk_decay_warp(st.dt, rst_b ? st.rst : nullptr, A);
      const int t0 = 2 * lane;
      if constexpr (!kReverse) {
        wts[t0] = d.seg0 == d.seg_last ? st.dt[t0] * expf(d.cum_last - d.cum0) : 0.f;
        wts[t0 + 1] = d.seg1 == d.seg_last ? st.dt[t0 + 1] * expf(d.cum_last - d.cum1) : 0.f;
      } else {
        wts[t0] = d.seg0 == 0 ? expf(d.cum0) : 0.f;
        wts[t0 + 1] = d.seg1 == 0 ? expf(d.cum1) : 0.f;
      }
      if (lane == 0) *gamma_s = d.seg_last == 0 ? expf(d.cum_last) : 0.f;
    }
    ck::store_frag<T>(out_tile, kTilePitch, acc, m0, 0);  // the value entering (fwd) / leaving (rev) chunk c
    __syncthreads();

    ck::scale_tile_rows<T, kChunk, kTile, kScanThreads>(st.u, kTilePitch, wts);
    ck::store_tile<T, kTile, kTile, kScanThreads>(states + ((bh * nc + c) * P + pt * kTile) * N + nt * kTile, N,
                                                  out_tile, kTilePitch, kTile);
    __syncthreads();

    const float gamma = *gamma_s;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] *= gamma;
    ck::warp_gemm<T, 8, /*A k-major: U[t][p]*/ true, /*B k-major: V[t][n]*/ true>(acc, st.u, kTilePitch, m0, st.v,
                                                                                kTilePitch, 0, kChunk);
  }
  ck::cp_async_wait<0>();  // no copies in flight when the block exits (all groups past nc are empty)

  float* so = a.s_out + (bh * P + pt * kTile) * N + nt * kTile;
  ck::for_each_frag<8>(m0, 0, [&](int j, int e, int r, int col) { so[static_cast<int64_t>(r) * N + col] = acc[j][e]; });
}

template <typename T, bool kReverse>
void launch_scan(const SsdScanArgs& a, cudaStream_t stream) {
  constexpr size_t smem = scan_smem_bytes<T>();
  static_assert(smem <= 227 * 1024, "scan tile does not fit in shared memory");
  auto kernel = ssd_scan_kernel<T, kReverse>;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((a.n.head_dim / kTile) * (a.n.state_dim / kTile)),
                  static_cast<unsigned>(a.n.heads), static_cast<unsigned>(a.n.batch));
  kernel<<<grid, kScanThreads, smem, stream>>>(a);
  SUBQ_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_scan_dir(const SsdScanArgs& a, cudaStream_t stream) {
  if (a.reverse)
    launch_scan<T, true>(a, stream);
  else
    launch_scan<T, false>(a, stream);
}

}  // namespace

bool ssd_cuda_built() { return true; }

std::string ssd_cuda_device_error(int device) {
  static std::mutex mu;
  static std::map<int, std::string> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  std::string err;
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess) return "cannot query the current CUDA device";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    err = str("cannot query CUDA device ", device);
  } else if (prop.major < 8) {
    err = str("CUDA device ", device, " (", prop.name, ", sm_", prop.major, prop.minor,
              ") has no bf16 tensor cores; the SSD kernels need sm_80 or newer");
  } else if (cudaSetDevice(device) == cudaSuccess) {
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, ssd_scan_kernel<__nv_bfloat16, false>);
    if (e != cudaSuccess) {
      err = str("no SSD kernel image for CUDA device ", device, " (", prop.name, ", sm_", prop.major, prop.minor,
                "): ", cudaGetErrorString(e), "; rebuild with -DSUBQ_CUDA_ARCHS including ", prop.major, prop.minor,
                prop.major == 9 ? "a" : "");
      cudaGetLastError();  // clear the (non-sticky) error so that later launch checks do not report it
    }
    cudaSetDevice(prev);
  } else {
    err = str("cannot select CUDA device ", device);
    cudaGetLastError();
  }
  cache[device] = err;
  return err;
}

int ssd_cuda_sm_count(int device) {
  int n = 0;
  SUBQ_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

void ssd_cuda_scan(const SsdScanArgs& a, SsdKernelDtype dtype, void* stream) {
  SUBQ_CHECK(a.n.head_dim % kTile == 0 && a.n.state_dim % kTile == 0, "ssd scan: P = ", a.n.head_dim,
             ", N = ", a.n.state_dim, " must be multiples of 64");
  SUBQ_CHECK(a.n.time >= 1 && a.n.chunks == (a.n.time + kChunk - 1) / kChunk, "ssd scan: bad chunk count");
  SUBQ_CHECK(a.n.groups >= 1 && a.n.heads % a.n.groups == 0, "ssd scan: heads not a multiple of groups");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SsdKernelDtype::kBF16: launch_scan_dir<__nv_bfloat16>(a, s); break;
    case SsdKernelDtype::kF16: launch_scan_dir<__half>(a, s); break;
    default: SUBQ_CHECK(false, "ssd scan: operand dtype must be bf16 or fp16");
  }
}

}  // namespace subq::ops::detail
