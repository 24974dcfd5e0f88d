/* finc_sgemm over oneDNN's dnnl_sgemm (row-major, OpenMP runtime). The choice and
 * the measurements behind it are in docs/gemm-choice.md. */
#include "gemm.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <threads.h>

#include <dnnl.h>

static atomic_int g_threads; /* 0: OpenMP default */

void finc_gemm_set_threads(int n) { atomic_store(&g_threads, n > 0 ? n : 0); }

int finc_gemm_threads(void) { return atomic_load(&g_threads); }

static char g_name[64];
static once_flag g_name_once = ONCE_FLAG_INIT;

static void name_init(void) {
    const dnnl_version_t *v = dnnl_version();
    snprintf(g_name, sizeof g_name, "oneDNN %d.%d.%d dnnl_sgemm", v->major, v->minor, v->patch);
}

const char *finc_gemm_backend(void) {
    call_once(&g_name_once, name_init);
    return g_name;
}

static void gemm_fail(const char *what, int M, int N, int K, int lda, int ldb, int ldc) {
    fprintf(stderr, "finc_sgemm: %s (M=%d N=%d K=%d lda=%d ldb=%d ldc=%d)\n", what, M, N, K, lda,
            ldb, ldc);
    abort();
}

void finc_sgemm_t(int transA, int transB, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float *C, int ldc, float beta) {
    if (M < 0 || N < 0 || K < 0) gemm_fail("negative size", M, N, K, lda, ldb, ldc);
    if (M == 0 || N == 0) return;
    if (ldc < N) gemm_fail("ldc < N", M, N, K, lda, ldb, ldc);
    if (K == 0) { /* C = beta C; dnnl would do the same, without the corner case */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        }
        return;
    }
    if (lda < (transA ? M : K) || ldb < (transB ? K : N))
        gemm_fail("leading dimension too small", M, N, K, lda, ldb, ldc);

    int n = atomic_load(&g_threads);
    if (n > 0 && !omp_in_parallel() && omp_get_max_threads() != n) omp_set_num_threads(n);

    dnnl_status_t st = dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, 1.0f, A, lda,
                                  B, ldb, beta, C, ldc);
    if (st != dnnl_success) gemm_fail("dnnl_sgemm failed", M, N, K, lda, ldb, ldc);
}

void finc_sgemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                int ldc, float beta) {
    finc_sgemm_t(0, 0, M, N, K, A, lda, B, ldb, C, ldc, beta);
}
