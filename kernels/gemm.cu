/* The GEMMs on the GPU, mirroring engine/gemm.c: cuBLASLt with one pinned
 * algorithm per GEMM shape, and the bias + ReLU of the coupling nets fused
 * into the GEMM as its epilogue.
 *
 * A GEMM here is column-major, D (m x n) = op(A) (m x k) . op(B) (k x n),
 * with one dimension (the pixels, B*H*W) that grows with the batch and two
 * that are fixed by the layer. cuBLAS picks its kernel by shape, split-K
 * included, so an image's result could change with the batch it is in,
 * which the model contract forbids. Here each shape class gets one algorithm,
 * chosen once for all the batch sizes the backend runs (finc_cuda_gemm_plan),
 * with split-K forced off: every output element is then summed over k in the
 * same order at every batch size, and an image's result does not depend on
 * its batch (tests/cuda/test_backend_ops.c checks it bit for bit).
 *
 * TF32 (--precision tf32) applies to the plans marked tf32: the coupling
 * nets' F x F products. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"

#define HEURISTICS 16
#define CACHED_SIZES 16

/* The layouts of one call with the growing dimension g. */
typedef struct {
    cublasLtMatrixLayout_t a, b, d;
    int m, n;
} call_layouts;

struct finc_cuda_gemm_plan {
    cublasOperation_t opa, opb;
    int grow;                     /* 0: m grows with the batch, 1: n does */
    int fixed_mn, k;              /* the other of m, n; and k */
    int lda_fixed;                /* leading dimensions: a fixed value, or -1 for the growing one */
    int ldb_fixed;
    int relu_bias, tf32;
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulAlgo_t algo;
    int pinned;
    /* The layouts of the sizes run so far, so a call allocates nothing. */
    int cached_g[CACHED_SIZES];
    call_layouts cached[CACHED_SIZES];
    int ncached;
};

static cublasLtMatrixLayout_t layout(finc_cuda_ctx *c, int rows, int cols, int ld)
{
    cublasLtMatrixLayout_t l = NULL;
    if (FINC_CUBLAS_TRY(c, cublasLtMatrixLayoutCreate(&l, CUDA_R_32F, (uint64_t)rows, (uint64_t)cols, ld))) return NULL;
    return l;
}

static int layouts_of(finc_cuda_ctx *c, const finc_cuda_gemm_plan *p, int g, call_layouts *L)
{
    const int m = p->grow == 0 ? g : p->fixed_mn, n = p->grow == 1 ? g : p->fixed_mn;
    const int ar = p->opa == CUBLAS_OP_N ? m : p->k, ac = p->opa == CUBLAS_OP_N ? p->k : m;
    const int br = p->opb == CUBLAS_OP_N ? p->k : n, bc = p->opb == CUBLAS_OP_N ? n : p->k;
    L->m = m, L->n = n;
    L->a = layout(c, ar, ac, p->lda_fixed > 0 ? p->lda_fixed : g);
    L->b = layout(c, br, bc, p->ldb_fixed > 0 ? p->ldb_fixed : g);
    L->d = layout(c, m, n, m);
    return L->a && L->b && L->d ? 0 : -1;
}

static void layouts_free(call_layouts *L)
{
    if (L->a) cublasLtMatrixLayoutDestroy(L->a);
    if (L->b) cublasLtMatrixLayoutDestroy(L->b);
    if (L->d) cublasLtMatrixLayoutDestroy(L->d);
    memset(L, 0, sizeof *L);
}

/* An algorithm from the heuristic's lists for the largest and the smallest
 * size (the least aligned leading dimension) that, with split-K off, runs
 * every size in sizes[]. */
static int pin(finc_cuda_ctx *c, finc_cuda_gemm_plan *p, const int *sizes, int nsizes)
{
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[2 * HEURISTICS];
    int got = 0;
    const uint64_t ws = c->blas_ws_bytes;
    const uint32_t align = 16;
    call_layouts L;
    memset(&L, 0, sizeof L);
    if (FINC_CUBLAS_TRY(c, cublasLtMatmulPreferenceCreate(&pref)) ||
        FINC_CUBLAS_TRY(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                sizeof ws)))
        return -1;
    const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        if (FINC_CUBLAS_TRY(c, cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &align, sizeof align))) {
            cublasLtMatmulPreferenceDestroy(pref);
            return -1;
        }
    int rc = 0;
    for (int end = 0; end < 2 && rc == 0; end++) {
        int n = 0;
        rc = layouts_of(c, p, sizes[end == 0 ? nsizes - 1 : 0], &L);
        if (rc == 0 && FINC_CUBLAS_TRY(c, cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, L.a, L.b, L.d, L.d, pref,
                                                                          HEURISTICS, res + got, &n)))
            rc = -1;
        layouts_free(&L);
        got += n;
        if (nsizes == 1) break;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (rc) return -1;
    const int32_t one = 1;
    const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
    for (int r = 0; r < got; r++) {
        if (res[r].state != CUBLAS_STATUS_SUCCESS) continue;
        cublasLtMatmulAlgo_t algo = res[r].algo;
        if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one, sizeof one) !=
                CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &none, sizeof none) !=
                CUBLAS_STATUS_SUCCESS)
            continue;
        int ok = 1;
        for (int s = 0; s < nsizes && ok; s++) {
            cublasLtMatmulHeuristicResult_t chk;
            ok = layouts_of(c, p, sizes[s], &L) == 0 &&
                 cublasLtMatmulAlgoCheck(c->lt, p->desc, L.a, L.b, L.d, L.d, &algo, &chk) == CUBLAS_STATUS_SUCCESS &&
                 chk.workspaceSize <= ws;
            layouts_free(&L);
        }
        if (ok) {
            p->algo = algo;
            p->pinned = 1;
            return 0;
        }
    }
    finc_cuda_fail(c, __FILE__, __LINE__,
                   "cuBLASLt offers no algorithm without split-K that runs every batch size for the GEMM "
                   "m %s %d, n %s %d, k %d (%d candidates)", p->grow == 0 ? "=" : "fixed", p->grow == 0 ? sizes[0] : p->fixed_mn,
                   p->grow == 1 ? "=" : "fixed", p->grow == 1 ? sizes[0] : p->fixed_mn, p->k, got);
    return -1;
}

static finc_cuda_gemm_plan *plan_new(finc_cuda_ctx *c, cublasOperation_t opa, cublasOperation_t opb, int grow,
                                     int fixed_mn, int k, int lda, int ldb, int relu_bias, int tf32, const int *sizes,
                                     int nsizes)
{
    for (int i = 0; i < c->n_plans; i++) {
        finc_cuda_gemm_plan *p = c->plans[i];
        if (p->opa == opa && p->opb == opb && p->grow == grow && p->fixed_mn == fixed_mn && p->k == k &&
            p->lda_fixed == lda && p->ldb_fixed == ldb && p->relu_bias == relu_bias && p->tf32 == tf32)
            return p;
    }
    FINC_CHECK(c->n_plans < FINC_CUDA_MAX_PLANS);
    finc_cuda_gemm_plan *p = (finc_cuda_gemm_plan *)calloc(1, sizeof *p);
    if (!p) {
        finc_cuda_fail(c, __FILE__, __LINE__, "out of host memory for GEMM plans");
        return NULL;
    }
    c->plans[c->n_plans++] = p;
    p->opa = opa, p->opb = opb, p->grow = grow, p->fixed_mn = fixed_mn, p->k = k;
    p->lda_fixed = lda, p->ldb_fixed = ldb, p->relu_bias = relu_bias, p->tf32 = tf32;
    const cublasComputeType_t ct = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const int32_t ta = opa, tb = opb;
    const uint32_t epi = relu_bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    if (FINC_CUBLAS_TRY(c, cublasLtMatmulDescCreate(&p->desc, ct, CUDA_R_32F)) ||
        FINC_CUBLAS_TRY(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta)) ||
        FINC_CUBLAS_TRY(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb)) ||
        FINC_CUBLAS_TRY(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi)))
        return NULL;
    return pin(c, p, sizes, nsizes) == 0 ? p : NULL;
}

void finc_cuda_gemm_run(finc_cuda_ctx *c, finc_cuda_gemm_plan *p, int g, const float *A, const float *B, float *D,
                        const float *bias)
{
    if (g == 0) return;
    call_layouts L, *use = NULL;
    for (int i = 0; i < p->ncached && !use; i++)
        if (p->cached_g[i] == g) use = &p->cached[i];
    if (!use) {
        if (layouts_of(c, p, g, &L) != 0) {
            layouts_free(&L);
            return;
        }
        if (p->ncached < CACHED_SIZES) {
            p->cached_g[p->ncached] = g;
            p->cached[p->ncached] = L;
            use = &p->cached[p->ncached++];
        }
    }
    const call_layouts *lay = use ? use : &L;
    const float one = 1.0f, zero = 0.0f;
    if (p->relu_bias)
        FINC_CUBLAS_TRY(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                          sizeof bias));
    FINC_CUBLAS_TRY(c, cublasLtMatmul(c->lt, p->desc, &one, A, lay->a, B, lay->b, &zero, D, lay->d, D, lay->d,
                                      &p->algo, c->blas_ws, c->blas_ws_bytes, c->stream));
    if (!use) layouts_free(&L);
}

/* The plans of a model's GEMMs, for the growing dimension at every size in
 * sizes (batch sizes, times each level's H*W). */
int finc_cuda_gemm_init(finc_cuda_ctx *c, const int *batches, int nbatches)
{
    const finc_model *m = c->m;
    const int F = m->cfg.width;
    FINC_CHECK(nbatches <= 64);
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        const int C = lv->c, HW = lv->h * lv->w, cin = C / 2, K1 = cin * 9;
        int sizes[64];
        for (int i = 0; i < nbatches; i++) sizes[i] = batches[i] * HW;
        finc_cuda_level_gemms *g = &c->level_gemms[l];
        /* conv1: h1 (F x N, pixel-major) = W1 (F, K1) . col (K1, N): A row-major is op T of a K1 x F col-major. */
        g->conv1 = plan_new(c, CUBLAS_OP_T, CUBLAS_OP_T, 1, F, K1, K1, -1, 1, 0, sizes, nbatches);
        /* conv2: h2 (F x N) = W2 (F, F) . h1 (F x N) */
        g->conv2 = plan_new(c, CUBLAS_OP_T, CUBLAS_OP_N, 1, F, F, F, F, 1, c->tf32, sizes, nbatches);
        /* conv3: taps (cout*9, N) row-major is taps^T (N x cout*9) = h2^T . W3taps^T */
        g->conv3 = plan_new(c, CUBLAS_OP_T, CUBLAS_OP_N, 0, C * 9, F, F, F, 0, 0, sizes, nbatches);
        /* 1x1: y (C, N) row-major is y^T (N x C) = x^T (N x C) . W^T */
        g->conv1x1 = plan_new(c, CUBLAS_OP_N, CUBLAS_OP_N, 0, C, C, -1, C, 0, 0, sizes, nbatches);
        if (!g->conv1 || !g->conv2 || !g->conv3 || !g->conv1x1) return -1;
    }
    return 0;
}

void finc_cuda_gemm_free(finc_cuda_ctx *c)
{
    for (int i = 0; i < c->n_plans; i++) {
        finc_cuda_gemm_plan *p = c->plans[i];
        for (int j = 0; j < p->ncached; j++) layouts_free(&p->cached[j]);
        if (p->desc) cublasLtMatmulDescDestroy(p->desc);
        free(p);
    }
    c->n_plans = 0;
}

const finc_cuda_level_gemms *finc_cuda_gemms_of(const finc_cuda_ctx *c, int C)
{
    for (int l = 0; l < c->m->cfg.levels; l++)
        if (c->m->levels[l].c == C) return &c->level_gemms[l];
    FINC_CHECK(!"no GEMM plans for this channel count");
    return NULL;
}
