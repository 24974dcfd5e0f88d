/* Dense single-precision GEMM for the CPU backend's convolutions.
 *
 * Activations are (C, B, H, W), so a 1x1 conv is Y(F, B*HW) = W(F, Cin) X(Cin, B*HW)
 * and a 3x3 conv is a GEMM on im2col(X) or a GEMM followed by a shift-add. All
 * matrices are row-major. The library behind this is oneDNN's dnnl_sgemm (the
 * measured winner over OpenBLAS, see docs/gemm-choice.md); it runs on the OpenMP
 * runtime the rest of the engine uses.
 *
 * Determinism: with oneDNN 2.6.3 every output column depends only on its own input
 * column (bit-identical whether an image is computed alone or inside a batch of 64,
 * at any column offset) and results do not change between calls; see
 * docs/gemm-choice.md for what was checked. */
#ifndef FINC_GEMM_H
#define FINC_GEMM_H

/* C(M, N) = A(M, K) B(K, N) + beta C. Row-major with leading dimensions lda >= K,
 * ldb >= N, ldc >= N. With beta == 0, C is write-only (may hold NaN on entry).
 * Aborts with a message on arguments that break these rules (a caller bug). */
void finc_sgemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                int ldc, float beta);

/* As finc_sgemm with op(A) = A^T when transA (A stored (K, M), lda >= M) and
 * op(B) = B^T when transB (B stored (N, K), ldb >= K). */
void finc_sgemm_t(int transA, int transB, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float *C, int ldc, float beta);

/* Threads for later GEMMs; n <= 0 restores the OpenMP default. The GEMM uses
 * omp_get_max_threads() of the calling thread, so each call from a thread whose
 * OpenMP thread count differs from n sets it there (omp_set_num_threads), which
 * also applies to that thread's later OpenMP regions. Called inside an OpenMP
 * parallel region, a GEMM runs on the calling thread only. */
void finc_gemm_set_threads(int n);
/* The count set by finc_gemm_set_threads, or 0 for the OpenMP default. */
int finc_gemm_threads(void);

/* "oneDNN 2.6.3 dnnl_sgemm" or similar, for logs and benchmarks. */
const char *finc_gemm_backend(void);

#endif
