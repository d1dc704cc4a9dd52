// cuda_emu.h — a small CPU emulator that runs subq's CUDA kernels (the device code of src/ops/*/ *.cuh,
// built on src/ops/common/chunk_kernels.cuh) thread by thread, so that their index math, shared-memory
// layouts, pipelines, barriers, warp collectives and outputs can be tested on a machine without a GPU.
//
// How: include this header, define SUBQ_CK_EMULATE, then include the kernel headers; call a kernel with
// emu::launch(grid, block, shared_bytes, [&] { kernel<...>(args); }, options). Every block runs its
// threads as cooperative user-level contexts (ucontext) in one OS thread: a thread runs until it reaches
// a barrier (__syncthreads, or the implicit warp barrier inside a warp collective), then the next one
// runs; warps take turns phase by phase (a warp runs until all its lanes wait at __syncthreads). Warp collectives (shuffles, ldmatrix.x4 with and without .trans, mma.sync m16n8k16 bf16/fp16) are
// emulated from their PTX definitions by exchanging values through per-warp slots between two warp
// barriers.
//
// What it catches: wrong addresses and strides, wrong fragment layouts, uninitialised shared memory
// (filled with NaN bytes at block start), output elements never written (callers pre-fill outputs with
// NaN), mismatched barriers (reported as a deadlock), and many missing barriers or cp.async waits:
// Options::order runs each phase's threads in ascending or descending order, so a reader that is not
// separated from its writer by a barrier sees stale data in one of the two orders; Options::copies
// performs cp.async copies either at issue (exposes prefetches that overwrite a buffer still in use) or
// only at cp.async.wait_group (exposes reads before the wait). What it cannot catch: timing, bank
// conflicts, register limits, and races between threads of one phase that happen to be benign in both
// orders.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace emu {

enum class Order { kAscending, kDescending };
enum class Copies { kAtIssue, kAtWait };

struct Options {
  Order order = Order::kAscending;
  Copies copies = Copies::kAtIssue;
};

struct Copy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};

struct Thread {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;
  bool done = false;
  bool waiting = false;
  std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                 // issued, not yet committed
};

struct WarpSlots {
  alignas(16) unsigned char data[32][64];
  const void* addr[32];
};

struct Block {
  dim3 grid, block, idx;
  int nthreads = 0;
  Options opt;
  std::vector<Thread>* threads = nullptr;
  std::vector<int> warp_arrived;
  std::vector<WarpSlots> slots;
  int block_arrived = 0;
  int cur = -1;
  ucontext_t sched{};
  unsigned char* smem = nullptr;
  const std::function<void()>* body = nullptr;
};

inline Block*& current() {
  static Block* b = nullptr;
  return b;
}
inline Thread& self() { return (*current()->threads)[static_cast<size_t>(current()->cur)]; }
inline int lane() { return current()->cur % 32; }
inline int warp() { return current()->cur / 32; }
inline unsigned char* dynamic_smem() { return current()->smem; }

inline dim3 thread_idx() {
  const Block& b = *current();
  const unsigned t = static_cast<unsigned>(b.cur);
  return dim3(t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y));
}
inline dim3 block_idx() { return current()->idx; }
inline dim3 block_dim() { return current()->block; }
inline dim3 grid_dim() { return current()->grid; }

inline void yield_to_scheduler() {
  Block& b = *current();
  swapcontext(&self().ctx, &b.sched);
}

inline void sync_block() {
  Block& b = *current();
  self().waiting = true;
  if (++b.block_arrived == b.nthreads) {
    b.block_arrived = 0;
    for (auto& t : *b.threads) t.waiting = false;
  }
  yield_to_scheduler();
}

inline void sync_warp() {
  Block& b = *current();
  const int w = warp();
  self().waiting = true;
  if (++b.warp_arrived[static_cast<size_t>(w)] == 32) {
    b.warp_arrived[static_cast<size_t>(w)] = 0;
    for (int l = 0; l < 32; ++l) (*b.threads)[static_cast<size_t>(w * 32 + l)].waiting = false;
  }
  yield_to_scheduler();
}

// Every lane deposits v; returns lane src's value (src outside [0, 32): the caller's own).
template <typename V>
V exchange(V v, int src) {
  static_assert(sizeof(V) <= 64, "slot too small");
  Block& b = *current();
  WarpSlots& s = b.slots[static_cast<size_t>(warp())];
  std::memcpy(s.data[lane()], &v, sizeof(V));
  sync_warp();
  V out;
  std::memcpy(&out, s.data[(src >= 0 && src < 32) ? src : lane()], sizeof(V));
  sync_warp();
  return out;
}

// ---- cp.async ----
inline void do_copy(const Copy& c) {
  if (c.valid)
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
  else
    std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
}
inline void cp_async(void* dst, const void* src, int bytes, bool valid) {
  const Copy c{dst, src, bytes, valid};
  if (current()->opt.copies == Copies::kAtIssue)
    do_copy(c);
  else
    self().open.push_back(c);
}
inline void cp_async_commit() {
  Thread& t = self();
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}
inline void cp_async_wait(int pending) {
  Thread& t = self();
  while (static_cast<int>(t.groups.size()) > pending) {
    for (const Copy& c : t.groups.front()) do_copy(c);
    t.groups.erase(t.groups.begin());
  }
}

// ---- ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 ----
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  Block& b = *current();
  WarpSlots& s = b.slots[static_cast<size_t>(warp())];
  s.addr[lane()] = p;
  sync_warp();
  const int l = lane();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {  // row l/4 of matrix i, columns 2(l%4), +1
      const auto* row = static_cast<const uint16_t*>(s.addr[8 * i + l / 4]);
      lo = row[2 * (l % 4)];
      hi = row[2 * (l % 4) + 1];
    } else {  // rows 2(l%4), +1 of matrix i, column l/4
      lo = static_cast<const uint16_t*>(s.addr[8 * i + 2 * (l % 4)])[l / 4];
      hi = static_cast<const uint16_t*>(s.addr[8 * i + 2 * (l % 4) + 1])[l / 4];
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  sync_warp();
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ----
template <typename T>
inline float half_bits_to_float(uint16_t bits) {
  T v;
  std::memcpy(static_cast<void*>(&v), &bits, 2);
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(v);
  else
    return __half2float(v);
}

template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Block& b = *current();
  WarpSlots& s = b.slots[static_cast<size_t>(warp())];
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  std::memcpy(s.data[lane()], mine, sizeof(mine));
  sync_warp();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    uint32_t v[6];
    std::memcpy(v, s.data[l], sizeof(v));
    const int g = l / 4, q = l % 4;
    auto lo = [](uint32_t x) { return half_bits_to_float<T>(static_cast<uint16_t>(x & 0xffffu)); };
    auto hi = [](uint32_t x) { return half_bits_to_float<T>(static_cast<uint16_t>(x >> 16)); };
    A[g][2 * q] = lo(v[0]);
    A[g][2 * q + 1] = hi(v[0]);
    A[g + 8][2 * q] = lo(v[1]);
    A[g + 8][2 * q + 1] = hi(v[1]);
    A[g][2 * q + 8] = lo(v[2]);
    A[g][2 * q + 9] = hi(v[2]);
    A[g + 8][2 * q + 8] = lo(v[3]);
    A[g + 8][2 * q + 9] = hi(v[3]);
    B[2 * q][g] = lo(v[4]);
    B[2 * q + 1][g] = hi(v[4]);
    B[2 * q + 8][g] = lo(v[5]);
    B[2 * q + 9][g] = hi(v[5]);
  }
  const int g = lane() / 4, q = lane() % 4;
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
  for (int i = 0; i < 4; ++i) {
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A[rows[i]][k] * B[k][cols[i]];
    d[i] = acc;
  }
  sync_warp();
}

// ---- launch ----
inline void trampoline();

// Fresh context for t that runs trampoline() and then resumes `link` (kept out of launch(): getcontext
// returns twice, which would make the compiler distrust launch()'s locals).
__attribute__((noinline)) inline void init_context(Thread& t, size_t stack_size, ucontext_t* link) {
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = t.stack.get();
  t.ctx.uc_stack.ss_size = stack_size;
  t.ctx.uc_link = link;
  makecontext(&t.ctx, trampoline, 0);
}

inline void trampoline() {
  Block& b = *current();
  (*b.body)();
  self().done = true;  // returning resumes uc_link = the scheduler
}

// Runs body() as grid x block threads; `shared_bytes` of dynamic shared memory per block, filled with
// 0xff bytes (NaN in bf16, fp16 and fp32) at block start. Throws std::runtime_error on a deadlock.
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body, Options opt = {}) {
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n % 32 != 0) throw std::runtime_error("emu::launch: block size must be a multiple of 32");
  constexpr size_t kStack = 256 * 1024;
  std::vector<Thread> threads(static_cast<size_t>(n));
  for (auto& t : threads) t.stack.reset(new char[kStack]);
  std::unique_ptr<unsigned char[]> smem_store(new unsigned char[shared_bytes + 128]);
  unsigned char* smem = smem_store.get() + (128 - reinterpret_cast<uintptr_t>(smem_store.get()) % 128) % 128;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.grid = grid;
        b.block = block;
        b.idx = dim3(x, y, z);
        b.nthreads = n;
        b.opt = opt;
        b.threads = &threads;
        b.warp_arrived.assign(static_cast<size_t>(n / 32), 0);
        b.slots.resize(static_cast<size_t>(n / 32));
        b.smem = smem;
        b.body = &body;
        std::memset(smem, 0xff, shared_bytes);
        for (auto& t : threads) {
          t.done = t.waiting = false;
          t.groups.clear();
          t.open.clear();
          init_context(t, kStack, &b.sched);
        }
        current() = &b;
        // Warp by warp: a warp runs (its lanes interleaving at warp collectives) until every lane waits at
        // a block barrier or has finished; only then does the next warp start. So each warp runs a whole
        // phase before the others start it, which exposes reads not separated from writes by a barrier.
        const int nwarps = n / 32;
        for (;;) {
          bool ran = false, all_done = true;
          for (int wk = 0; wk < nwarps; ++wk) {
            const int w = opt.order == Order::kAscending ? wk : nwarps - 1 - wk;
            for (bool progress = true; progress;) {
              progress = false;
              for (int lk = 0; lk < 32; ++lk) {
                const int i = w * 32 + (opt.order == Order::kAscending ? lk : 31 - lk);
                Thread& t = threads[static_cast<size_t>(i)];
                if (t.done || t.waiting) continue;
                b.cur = i;
                swapcontext(&b.sched, &t.ctx);
                progress = ran = true;
              }
            }
          }
          for (const auto& t : threads) all_done = all_done && t.done;
          if (all_done) break;
          if (!ran) {
            current() = nullptr;
            throw std::runtime_error("emu::launch: deadlock in block (" + std::to_string(x) + ", " + std::to_string(y) +
                                     ", " + std::to_string(z) + "): threads wait at barriers that others never reach");
          }
        }
        current() = nullptr;
      }
}

}  // namespace emu

// ---- the CUDA built-ins the kernels use ----
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
inline void __syncthreads() { ::emu::sync_block(); }
template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int mask) {
  return ::emu::exchange(v, ::emu::lane() ^ mask);
}
template <typename V>
inline V __shfl_up_sync(unsigned, V v, unsigned delta) {
  const int src = ::emu::lane() - static_cast<int>(delta);
  return ::emu::exchange(v, src >= 0 ? src : -1);
}
template <typename V>
inline V __shfl_down_sync(unsigned, V v, unsigned delta) {
  const int src = ::emu::lane() + static_cast<int>(delta);
  return ::emu::exchange(v, src < 32 ? src : -1);
}
template <typename V>
inline V __shfl_sync(unsigned, V v, int src) {
  return ::emu::exchange(v, src & 31);
}
inline int min(int a, int b) { return a < b ? a : b; }
