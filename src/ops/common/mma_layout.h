// mma_layout.h — the index math of the tensor-core fragments used by chunk_kernels.cuh, as plain
// functions that compile for the host too, so that tests/unit/test_mma_layout.cpp can emulate ldmatrix
// and mma.sync on the CPU with exactly the addresses the kernels use.
//
// mma.sync m16n8k16 (row.col), g = lane / 4, q = lane % 4:
//   A regs a0..a3 hold (row g, k 2q..2q+1), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)
//   B regs b0, b1 hold (k 2q..2q+1, n g), (k 2q+8.., n g)
//   C/D c0..c3 hold (g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)
// ldmatrix.m8n8.x4: lane l gives the address of row l % 8 of matrix l / 8; without .trans lane l receives
// (row l / 4, columns 2(l % 4), +1) of each matrix, with .trans (rows 2(l % 4), +1, column l / 4).
#pragma once

#if defined(__CUDACC__)
#define SUBQ_HD __host__ __device__ __forceinline__
#else
#define SUBQ_HD inline
#endif

namespace subq::ops::ck {

// A (row, column) position in a stored (shared-memory) tile.
struct RowCol {
  int row, col;
};

// Row address lane `lane` passes to ldmatrix.x4 for the A operand (16 x 16 at (m0, k0)):
//   stored row-major A[m][k] (no .trans): matrices (m,k), (m+8,k), (m,k+8), (m+8,k+8) = a0..a3
SUBQ_HD RowCol ldsm_a_row_major(int lane, int m0, int k0) {
  return {m0 + (lane & 7) + ((lane >> 3) & 1) * 8, k0 + (lane >> 4) * 8};
}
//   stored k-major A[k][m] (.trans): stored blocks (k,m), (k,m+8), (k+8,m), (k+8,m+8) = a0..a3
SUBQ_HD RowCol ldsm_a_k_major(int lane, int m0, int k0) {
  return {k0 + (lane & 7) + (lane >> 4) * 8, m0 + ((lane >> 3) & 1) * 8};
}
// ... for the B operands of two n-tiles (16 x 16 at (k0, n0)); registers r0, r1 = b0, b1 of the first
// n-tile, r2, r3 = b0, b1 of the second:
//   stored n-major B[n][k] (no .trans): matrices (n,k), (n,k+8), (n+8,k), (n+8,k+8)
SUBQ_HD RowCol ldsm_b_n_major(int lane, int n0, int k0) {
  return {n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8};
}
//   stored k-major B[k][n] (.trans): stored blocks (k,n), (k+8,n), (k,n+8), (k+8,n+8)
SUBQ_HD RowCol ldsm_b_k_major(int lane, int n0, int k0) {
  return {k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8};
}

// Position (row, column) within a 16 x 8 NT accumulator of element acc[j][i] held by `lane`.
SUBQ_HD RowCol acc_position(int lane, int j, int i) {
  return {(lane >> 2) + (i >> 1) * 8, 8 * j + 2 * (lane & 3) + (i & 1)};
}

}  // namespace subq::ops::ck
