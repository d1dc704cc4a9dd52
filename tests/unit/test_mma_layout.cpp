// test_mma_layout.cpp — the tensor-core index math of the CUDA kernels (src/ops/common/mma_layout.h, used
// by ck::warp_gemm and the fragment helpers of chunk_kernels.cuh) checked on the CPU: ldmatrix.x4 (with and
// without .trans) and mma.sync m16n8k16 are emulated lane by lane from their PTX definitions, fed with the
// addresses the kernels compute, and the product must equal a plain matrix product for all four operand
// orientations (A row- or k-major, B n- or k-major), at offsets inside larger padded tiles. Integer-valued
// inputs make every sum exact. Also checks that each mma fragment register is filled exactly once.
#include <vector>

#include "ops/common/mma_layout.h"
#include "subq_catch.h"

namespace {

using subq::ops::ck::RowCol;

// ldmatrix.m8n8.x4 on a stored tile (pitch ld): lane l of the result holds, for matrices i = 0..3, two
// consecutive 16-bit elements: without .trans (row l/4, cols 2(l%4), +1) of matrix i, whose row r starts
// at the address given by lane 8i + r; with .trans (rows 2(l%4), +1, col l/4) of that matrix.
void ldmatrix_x4(const std::vector<float>& s, int ld, const RowCol (&addr)[32], bool trans, float (&out)[32][4][2]) {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      if (!trans) {
        const RowCol a = addr[8 * i + l / 4];
        out[l][i][0] = s[static_cast<size_t>(a.row * ld + a.col + 2 * (l % 4))];
        out[l][i][1] = s[static_cast<size_t>(a.row * ld + a.col + 2 * (l % 4) + 1)];
      } else {
        const RowCol a0 = addr[8 * i + 2 * (l % 4)], a1 = addr[8 * i + 2 * (l % 4) + 1];
        out[l][i][0] = s[static_cast<size_t>(a0.row * ld + a0.col + l / 4)];
        out[l][i][1] = s[static_cast<size_t>(a1.row * ld + a1.col + l / 4)];
      }
    }
}

// mma.sync m16n8k16 row.col: rebuild A (16x16) and B (16x8) from the lanes' registers, D += A B.
void mma_16816(float (&acc)[32][4], const float (&a)[32][4][2], const float (&b)[32][4][2], int b_first) {
  float A[16][16] = {}, B[16][8] = {};
  int fillA[16][16] = {}, fillB[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, q = l % 4;
    for (int e = 0; e < 2; ++e) {
      A[g][2 * q + e] = a[l][0][e];
      A[g + 8][2 * q + e] = a[l][1][e];
      A[g][2 * q + 8 + e] = a[l][2][e];
      A[g + 8][2 * q + 8 + e] = a[l][3][e];
      ++fillA[g][2 * q + e];
      ++fillA[g + 8][2 * q + e];
      ++fillA[g][2 * q + 8 + e];
      ++fillA[g + 8][2 * q + 8 + e];
      B[2 * q + e][g] = b[l][b_first][e];
      B[2 * q + 8 + e][g] = b[l][b_first + 1][e];
      ++fillB[2 * q + e][g];
      ++fillB[2 * q + 8 + e][g];
    }
  }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) REQUIRE(fillA[r][c] == 1);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) REQUIRE(fillB[r][c] == 1);
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, q = l % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int i = 0; i < 4; ++i) {
      float d = 0;
      for (int k = 0; k < 16; ++k) d += A[rows[i]][k] * B[k][cols[i]];
      acc[l][i] += d;
    }
  }
}

// The loop of ck::warp_gemm<T, NT, a_k_major, b_k_major> with emulated instructions; acc[j][lane][i].
template <int NT>
void warp_gemm(std::vector<std::vector<float>>& acc, bool a_k_major, bool b_k_major, const std::vector<float>& A,
               int lda, int m0, const std::vector<float>& B, int ldb, int n0, int K) {
  for (int k0 = 0; k0 < K; k0 += 16) {
    RowCol addr[32];
    for (int l = 0; l < 32; ++l)
      addr[l] = a_k_major ? subq::ops::ck::ldsm_a_k_major(l, m0, k0) : subq::ops::ck::ldsm_a_row_major(l, m0, k0);
    float a[32][4][2];
    ldmatrix_x4(A, lda, addr, a_k_major, a);
    for (int j = 0; j < NT; j += 2) {
      for (int l = 0; l < 32; ++l)
        addr[l] = b_k_major ? subq::ops::ck::ldsm_b_k_major(l, n0 + 8 * j, k0)
                            : subq::ops::ck::ldsm_b_n_major(l, n0 + 8 * j, k0);
      float b[32][4][2];
      ldmatrix_x4(B, ldb, addr, b_k_major, b);
      for (int t = 0; t < 2; ++t) {
        float part[32][4];
        for (int l = 0; l < 32; ++l)
          for (int i = 0; i < 4; ++i) part[l][i] = acc[static_cast<size_t>(j + t)][static_cast<size_t>(l * 4 + i)];
        mma_16816(part, a, b, 2 * t);
        for (int l = 0; l < 32; ++l)
          for (int i = 0; i < 4; ++i) acc[static_cast<size_t>(j + t)][static_cast<size_t>(l * 4 + i)] = part[l][i];
      }
    }
  }
}

void check_orientation(bool a_k_major, bool b_k_major) {
  INFO("A " << (a_k_major ? "k-major" : "row-major") << ", B " << (b_k_major ? "k-major" : "n-major"));
  constexpr int M = 48, N = 64, K = 48, NT = 4, pitch_pad = 8;
  const int m0 = 16, n0 = 32;  // the warp's tile inside the larger stored tiles
  // logical A (M x K), B (K x N) with small integers
  std::vector<float> Al(M * K), Bl(K * N);
  for (int i = 0; i < M * K; ++i) Al[static_cast<size_t>(i)] = static_cast<float>((i * 7 + 3) % 11 - 5);
  for (int i = 0; i < K * N; ++i) Bl[static_cast<size_t>(i)] = static_cast<float>((i * 5 + 1) % 13 - 6);
  // stored forms
  const int lda = (a_k_major ? M : K) + pitch_pad, ldb = (b_k_major ? N : K) + pitch_pad;
  std::vector<float> As(static_cast<size_t>((a_k_major ? K : M) * lda), 1e9f), Bs(static_cast<size_t>((b_k_major ? K : N) * ldb), 1e9f);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k)
      As[static_cast<size_t>(a_k_major ? k * lda + m : m * lda + k)] = Al[static_cast<size_t>(m * K + k)];
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n)
      Bs[static_cast<size_t>(b_k_major ? k * ldb + n : n * ldb + k)] = Bl[static_cast<size_t>(k * N + n)];
  std::vector<std::vector<float>> acc(NT, std::vector<float>(32 * 4, 0.f));
  warp_gemm<NT>(acc, a_k_major, b_k_major, As, lda, m0, Bs, ldb, n0, K);
  int covered = 0;
  for (int j = 0; j < NT; ++j)
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) {
        const RowCol p = subq::ops::ck::acc_position(l, j, i);
        float want = 0;
        for (int k = 0; k < K; ++k)
          want += Al[static_cast<size_t>((m0 + p.row) * K + k)] * Bl[static_cast<size_t>(k * N + n0 + p.col)];
        INFO("acc[" << j << "] lane " << l << " reg " << i << " -> (" << p.row << ", " << p.col << ")");
        REQUIRE(acc[static_cast<size_t>(j)][static_cast<size_t>(l * 4 + i)] == want);
        ++covered;
      }
  CHECK(covered == 16 * 8 * NT);
}

}  // namespace

TEST_CASE("ldmatrix/mma fragment addressing of the CUDA kernels reproduces matrix products", "[ops][kernels]") {
  for (bool ak : {false, true})
    for (bool bk : {false, true}) check_orientation(ak, bk);
  // acc_position covers every element of a 16 x 8 tile exactly once per n-tile
  int seen[16][8] = {};
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const RowCol p = subq::ops::ck::acc_position(l, 0, i);
      ++seen[p.row][p.col];
    }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) CHECK(seen[r][c] == 1);
}
