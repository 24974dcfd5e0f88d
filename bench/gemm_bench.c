/* GEMM / convolution library comparison for finc's dense convolutions.
 *
 * Build (standalone, from the repository root):
 *   mkdir -p build && gcc -std=c11 -D_GNU_SOURCE -O3 -march=native -fopenmp -Wall -Wextra \
 *       -Wshadow -Werror bench/gemm_bench.c -ldnnl -lopenblas -lm -o build/gemm_bench
 *
 * Run one library per process (OpenBLAS's pthread pool and oneDNN's OpenMP team
 * would otherwise spin against each other on a 2-core machine):
 *   OMP_NUM_THREADS=2 build/gemm_bench info
 *   OMP_NUM_THREADS=2 build/gemm_bench peak  openblas|dnnl
 *   OMP_NUM_THREADS=2 build/gemm_bench gemm  openblas|dnnl   1x1 GEMM, im2col+GEMM, GEMM+col2im
 *   OMP_NUM_THREADS=2 build/gemm_bench conv  dnnl            oneDNN convolution primitive
 *   OMP_NUM_THREADS=2 build/gemm_bench det   openblas|dnnl   per-image results vs batch size
 *   OMP_NUM_THREADS=2 build/gemm_bench mixed openblas|dnnl   GEMM chained with an OpenMP loop
 *
 * Activations are (C, B, H, W): a 1x1 conv is Y(F, B*HW) = W(F, Cin) X(Cin, B*HW),
 * a 3x3 pad-1 conv with small Cin is im2col to (Cin*9, B*HW) then a GEMM, and a
 * 3x3 conv with large Cin and small Cout is T(Cout*9, B*HW) = W'(Cout*9, F) X
 * followed by a shift-add (col2im). Times are the median of NRUN runs after
 * warm-up; every run repeats the op until it lasts >= MIN_RUN_S. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <dnnl.h>

#define NTHREADS 2
#define NRUN 9
#define MIN_RUN_S 0.02

enum { LIB_OB = 0, LIB_DNNL = 1 };
static const char *lib_name[] = {"openblas", "dnnl_sgemm"};

/* ------------------------------------------------------------------ utils */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *falloc(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(p, 0, bytes);
    return p;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}
static void fill(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*op_fn)(void *ctx);

/* Median seconds per call (and min through *tmin). */
static double time_op(op_fn f, void *ctx, double *tmin) {
    for (int i = 0; i < 3; i++) f(ctx);
    double t0 = now_s();
    f(ctx);
    double one = now_s() - t0;
    int reps = one >= MIN_RUN_S ? 1 : (int)(MIN_RUN_S / (one > 1e-7 ? one : 1e-7)) + 1;
    if (reps > 100000) reps = 100000;
    double ts[NRUN];
    for (int r = 0; r < NRUN; r++) {
        t0 = now_s();
        for (int i = 0; i < reps; i++) f(ctx);
        ts[r] = (now_s() - t0) / reps;
    }
    qsort(ts, NRUN, sizeof ts[0], cmp_double);
    if (tmin) *tmin = ts[0];
    return ts[NRUN / 2];
}

static void sgemm_lib(int lib, int M, int N, int K, const float *A, int lda, const float *B,
                      int ldb, float *C, int ldc) {
    if (lib == LIB_OB)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb,
                    0.0f, C, ldc);
    else
        dnnl_sgemm('N', 'N', M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
}

/* X (C, B, H, W) -> col (C*9, B*H*W), zero padding 1. Each (row, image) plane is
 * one shifted copy (a shift by dy*W + dx within the plane) plus zeroed border rows
 * and column; OpenMP over planes when there is enough work. */
static void im2col3(float *col, const float *X, int C, int B, int H, int W) {
    size_t HW = (size_t)H * W, N = (size_t)B * HW;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)C * 9 * N >= 32768)
    for (int ck = 0; ck < C * 9; ck++)
        for (int b = 0; b < B; b++) {
            int c = ck / 9, k = ck % 9, dy = k / 3 - 1, dx = k % 3 - 1;
            float *d = col + (size_t)ck * N + (size_t)b * HW;
            const float *s = X + (size_t)c * N + (size_t)b * HW;
            int y0 = dy < 0 ? 1 : 0, y1 = dy > 0 ? H - 1 : H;
            if (y0 > 0) memset(d, 0, (size_t)W * sizeof(float));
            if (y1 < H) memset(d + (size_t)(H - 1) * W, 0, (size_t)W * sizeof(float));
            /* p in [p0, p1): d[p] = s[p + dy*W + dx]; the column that has no source
             * (x = 0 for dx = -1, x = W-1 for dx = +1) is zeroed afterwards. */
            long p0 = (long)y0 * W + (dx < 0 ? 1 : 0), p1 = (long)y1 * W - (dx > 0 ? 1 : 0);
            if (p1 > p0)
                memcpy(d + p0, s + p0 + (long)dy * W + dx, (size_t)(p1 - p0) * sizeof(float));
            if (dx != 0)
                for (int y = y0; y < y1; y++) d[(size_t)y * W + (dx < 0 ? 0 : W - 1)] = 0.0f;
        }
}

/* T (Co*9, B*H*W) -> Y (Co, B, H, W), H <= 64: Y[o, p] = sum_k T[(o, k), p + off(k)], k in
 * order 0..8 for every pixel. Each k is one contiguous shifted add over the plane;
 * the column the shift wraps into is saved before and restored after, so it is as
 * if it were skipped. OpenMP over (o, image) planes. */
static void col2im3(float *Y, const float *T, int Co, int B, int H, int W) {
    size_t HW = (size_t)H * W, N = (size_t)B * HW;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)Co * 9 * N >= 32768)
    for (int o = 0; o < Co; o++)
        for (int b = 0; b < B; b++) {
            float *yo = Y + (size_t)o * N + (size_t)b * HW;
            float save[64];
            memset(yo, 0, HW * sizeof(float));
            for (int k = 0; k < 9; k++) {
                int dy = k / 3 - 1, dx = k % 3 - 1;
                const float *t = T + ((size_t)o * 9 + k) * N + (size_t)b * HW;
                int y0 = dy < 0 ? 1 : 0, y1 = dy > 0 ? H - 1 : H;
                int xe = dx < 0 ? 0 : W - 1; /* column with no source when dx != 0 */
                long p0 = (long)y0 * W + (dx < 0 ? 1 : 0), p1 = (long)y1 * W - (dx > 0 ? 1 : 0);
                if (dx != 0)
                    for (int y = y0; y < y1; y++) save[y] = yo[(size_t)y * W + xe];
                long off = (long)dy * W + dx;
                for (long p = p0; p < p1; p++) yo[p] += t[p + off];
                if (dx != 0)
                    for (int y = y0; y < y1; y++) yo[(size_t)y * W + xe] = save[y];
            }
        }
}

static void set_threads(int n) {
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

/* ---------------------------------------------------------------- shapes */

/* Model of the paper's MNIST shape: level 0 has 4 channels at 14x14 (coupling
 * conv in Cin=2, out Cout=4), level 1 has 8 channels at 7x7 (Cin=4, Cout=8). */
typedef struct {
    int F, H, W, B, Cin, Cout;
} shape;

static int make_shapes(shape *s) {
    int n = 0;
    const int Fs[] = {512, 128}, Bs[] = {1, 64};
    for (int fi = 0; fi < 2; fi++)
        for (int lv = 0; lv < 2; lv++)
            for (int bi = 0; bi < 2; bi++) {
                shape t = {Fs[fi], lv ? 7 : 14, lv ? 7 : 14, Bs[bi], lv ? 4 : 2, lv ? 8 : 4};
                s[n++] = t;
            }
    return n;
}

/* ------------------------------------------------------------------ peak */

typedef struct {
    int lib, M, N, K;
    const float *A, *B;
    float *C;
} gemm_ctx;

static void gemm_op(void *p) {
    gemm_ctx *g = p;
    sgemm_lib(g->lib, g->M, g->N, g->K, g->A, g->K, g->B, g->N, g->C, g->N);
}

static void run_peak(int lib) {
    int n = 2048;
    float *A = falloc((size_t)n * n), *B = falloc((size_t)n * n), *C = falloc((size_t)n * n);
    fill(A, (size_t)n * n, 1.0f);
    fill(B, (size_t)n * n, 1.0f);
    gemm_ctx g = {lib, n, n, n, A, B, C};
    double tmin, t = time_op(gemm_op, &g, &tmin);
    double fl = 2.0 * n * n * n;
    printf("PEAK lib=%s n=%d threads=%d ms=%.3f gflops=%.1f best_gflops=%.1f\n", lib_name[lib], n,
           NTHREADS, t * 1e3, fl / t * 1e-9, fl / tmin * 1e-9);
    set_threads(1);
    t = time_op(gemm_op, &g, &tmin);
    printf("PEAK lib=%s n=%d threads=1 ms=%.3f gflops=%.1f best_gflops=%.1f\n", lib_name[lib], n,
           t * 1e3, fl / t * 1e-9, fl / tmin * 1e-9);
    set_threads(NTHREADS);
    free(A);
    free(B);
    free(C);
}

/* ------------------------------------------------------------ GEMM forms */

typedef struct {
    int lib;
    shape s;
    const float *X, *Wt; /* X (Cin, B, H, W); Wt (Cout*9, F) or (F, Cin*9) */
    float *col, *Y;
} conv_ctx;

/* 3x3 in: Y(F, N) = W(F, Cin*9) im2col(X). */
static void conv3in_op(void *p) {
    conv_ctx *c = p;
    int N = c->s.B * c->s.H * c->s.W, K = c->s.Cin * 9;
    im2col3(c->col, c->X, c->s.Cin, c->s.B, c->s.H, c->s.W);
    sgemm_lib(c->lib, c->s.F, N, K, c->Wt, K, c->col, N, c->Y, N);
}

/* 3x3 out: T(Cout*9, N) = W'(Cout*9, F) X(F, N); Y = col2im(T). */
static void conv3out_op(void *p) {
    conv_ctx *c = p;
    int N = c->s.B * c->s.H * c->s.W, M = c->s.Cout * 9;
    sgemm_lib(c->lib, M, N, c->s.F, c->Wt, c->s.F, c->X, N, c->col, N);
    col2im3(c->Y, c->col, c->s.Cout, c->s.B, c->s.H, c->s.W);
}

static void report(const char *lib, const char *op, const shape *s, int M, int N, int K, double t,
                   double tmin, double flops) {
    printf("RES lib=%s op=%s F=%d HW=%d B=%d M=%d N=%d K=%d ms=%.4f gflops=%.2f best_gflops=%.2f\n",
           lib, op, s->F, s->H * s->W, s->B, M, N, K, t * 1e3, flops / t * 1e-9,
           flops / tmin * 1e-9);
    fflush(stdout);
}

static void run_gemm(int lib) {
    shape sh[16];
    int ns = make_shapes(sh);
    for (int i = 0; i < ns; i++) {
        shape s = sh[i];
        int F = s.F, N = s.B * s.H * s.W;
        double tmin, t;
        /* 1x1: (M=F, K=F, N) */
        float *A = falloc((size_t)F * F), *X = falloc((size_t)F * N), *Y = falloc((size_t)F * N);
        fill(A, (size_t)F * F, 0.05f);
        fill(X, (size_t)F * N, 1.0f);
        gemm_ctx g = {lib, F, N, F, A, X, Y};
        t = time_op(gemm_op, &g, &tmin);
        report(lib_name[lib], "1x1", &s, F, N, F, t, tmin, 2.0 * F * N * F);

        /* 3x3 in: GEMM alone, then im2col + GEMM */
        int K = s.Cin * 9;
        float *Wi = falloc((size_t)F * K), *Xi = falloc((size_t)s.Cin * N),
              *col = falloc((size_t)K * N);
        fill(Wi, (size_t)F * K, 0.2f);
        fill(Xi, (size_t)s.Cin * N, 1.0f);
        im2col3(col, Xi, s.Cin, s.B, s.H, s.W);
        gemm_ctx g2 = {lib, F, N, K, Wi, col, Y};
        t = time_op(gemm_op, &g2, &tmin);
        report(lib_name[lib], "3x3in_gemm", &s, F, N, K, t, tmin, 2.0 * F * N * K);
        conv_ctx c2 = {lib, s, Xi, Wi, col, Y};
        t = time_op(conv3in_op, &c2, &tmin);
        report(lib_name[lib], "3x3in_im2col+gemm", &s, F, N, K, t, tmin, 2.0 * F * N * K);

        /* 3x3 out: GEMM alone, then GEMM + col2im */
        int M = s.Cout * 9;
        float *Wo = falloc((size_t)M * F), *T = falloc((size_t)M * N),
              *Yo = falloc((size_t)s.Cout * N);
        fill(Wo, (size_t)M * F, 0.05f);
        gemm_ctx g3 = {lib, M, N, F, Wo, X, T};
        t = time_op(gemm_op, &g3, &tmin);
        report(lib_name[lib], "3x3out_gemm", &s, M, N, F, t, tmin, 2.0 * M * N * F);
        conv_ctx c3 = {lib, s, X, Wo, T, Yo};
        t = time_op(conv3out_op, &c3, &tmin);
        report(lib_name[lib], "3x3out_gemm+col2im", &s, M, N, F, t, tmin, 2.0 * M * N * F);

        free(A);
        free(X);
        free(Y);
        free(Wi);
        free(Xi);
        free(col);
        free(Wo);
        free(T);
        free(Yo);
    }
}

/* ------------------------------------------------------ oneDNN primitive */

#define DN(call)                                                                     \
    do {                                                                             \
        dnnl_status_t st_ = (call);                                                  \
        if (st_ != dnnl_success) {                                                   \
            fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #call, (int)st_); \
            exit(3);                                                                 \
        }                                                                            \
    } while (0)

static dnnl_engine_t g_eng;
static dnnl_stream_t g_strm;

typedef struct {
    dnnl_primitive_t conv, rsrc, rdst;
    dnnl_memory_t usrc, udst, csrc, cdst, cw;
    const char *impl;
    int timed_reorders; /* 1: the timed op includes the src/dst reorders */
} dconv;

static void reorder_now(dnnl_memory_t from, dnnl_memory_t to) {
    const dnnl_memory_desc_t *fmd, *tmd;
    DN(dnnl_memory_get_memory_desc(from, &fmd));
    DN(dnnl_memory_get_memory_desc(to, &tmd));
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, fmd, g_eng, tmd, g_eng, NULL));
    dnnl_primitive_t r;
    DN(dnnl_primitive_create(&r, pd));
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    DN(dnnl_primitive_execute(r, g_strm, 2, a));
    DN(dnnl_stream_wait(g_strm));
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(pd);
}

static dnnl_primitive_t make_reorder(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to) {
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, from, g_eng, to, g_eng, NULL));
    dnnl_primitive_t r;
    DN(dnnl_primitive_create(&r, pd));
    dnnl_primitive_desc_destroy(pd);
    return r;
}

/* Convolution (B, Ci, H, W) -> (B, Co, H, W), k x k, pad (k-1)/2, on user buffers
 * in finc's (C, B, H, W) layout (oneDNN tag bacd) and oihw weights. any=0 asks for
 * the conv directly on bacd; any=1 lets oneDNN choose and reorders src/dst. */
static int dconv_init(dconv *d, int any, int B, int Ci, int Co, int H, int W, int k, float *X,
                      float *Y, float *Woihw) {
    memset(d, 0, sizeof *d);
    dnnl_dims_t sd = {B, Ci, H, W}, dd = {B, Co, H, W}, wd = {Co, Ci, k, k};
    dnnl_memory_desc_t us, ud, uw, cs, cdd, cw;
    DN(dnnl_memory_desc_init_by_tag(&us, 4, sd, dnnl_f32, dnnl_bacd));
    DN(dnnl_memory_desc_init_by_tag(&ud, 4, dd, dnnl_f32, dnnl_bacd));
    DN(dnnl_memory_desc_init_by_tag(&uw, 4, wd, dnnl_f32, dnnl_abcd));
    if (any) {
        DN(dnnl_memory_desc_init_by_tag(&cs, 4, sd, dnnl_f32, dnnl_format_tag_any));
        DN(dnnl_memory_desc_init_by_tag(&cdd, 4, dd, dnnl_f32, dnnl_format_tag_any));
    } else {
        cs = us;
        cdd = ud;
    }
    DN(dnnl_memory_desc_init_by_tag(&cw, 4, wd, dnnl_f32, dnnl_format_tag_any));
    dnnl_dims_t strides = {1, 1}, pad = {(k - 1) / 2, (k - 1) / 2};
    dnnl_convolution_desc_t cd;
    DN(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                          &cs, &cw, NULL, &cdd, strides, pad, pad));
    dnnl_primitive_desc_t pd;
    if (dnnl_primitive_desc_create(&pd, &cd, NULL, g_eng, NULL) != dnnl_success) return -1;
    const char *impl = NULL;
    DN(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    d->impl = strdup(impl ? impl : "?");
    const dnnl_memory_desc_t *qs = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *qd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *qw = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    DN(dnnl_memory_create(&d->usrc, &us, g_eng, X));
    DN(dnnl_memory_create(&d->udst, &ud, g_eng, Y));
    dnnl_memory_t uwm;
    DN(dnnl_memory_create(&uwm, &uw, g_eng, Woihw));
    DN(dnnl_memory_create(&d->cw, qw, g_eng, DNNL_MEMORY_ALLOCATE));
    reorder_now(uwm, d->cw); /* weights: once, not timed */
    dnnl_memory_destroy(uwm);
    if (dnnl_memory_desc_equal(qs, &us)) {
        d->csrc = d->usrc;
    } else {
        DN(dnnl_memory_create(&d->csrc, qs, g_eng, DNNL_MEMORY_ALLOCATE));
        d->rsrc = make_reorder(&us, qs);
    }
    if (dnnl_memory_desc_equal(qd, &ud)) {
        d->cdst = d->udst;
    } else {
        DN(dnnl_memory_create(&d->cdst, qd, g_eng, DNNL_MEMORY_ALLOCATE));
        d->rdst = make_reorder(qd, &ud);
    }
    DN(dnnl_primitive_create(&d->conv, pd));
    dnnl_primitive_desc_destroy(pd);
    d->timed_reorders = 1;
    return 0;
}

static void dconv_op(void *p) {
    dconv *d = p;
    if (d->rsrc && d->timed_reorders) {
        dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, d->usrc}, {DNNL_ARG_TO, d->csrc}};
        DN(dnnl_primitive_execute(d->rsrc, g_strm, 2, a));
    }
    dnnl_exec_arg_t c[3] = {
        {DNNL_ARG_SRC, d->csrc}, {DNNL_ARG_WEIGHTS, d->cw}, {DNNL_ARG_DST, d->cdst}};
    DN(dnnl_primitive_execute(d->conv, g_strm, 3, c));
    if (d->rdst && d->timed_reorders) {
        dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, d->cdst}, {DNNL_ARG_TO, d->udst}};
        DN(dnnl_primitive_execute(d->rdst, g_strm, 2, a));
    }
    DN(dnnl_stream_wait(g_strm));
}

static void dconv_free(dconv *d) {
    if (d->conv) dnnl_primitive_destroy(d->conv);
    if (d->rsrc) {
        dnnl_primitive_destroy(d->rsrc);
        dnnl_memory_destroy(d->csrc);
    }
    if (d->rdst) {
        dnnl_primitive_destroy(d->rdst);
        dnnl_memory_destroy(d->cdst);
    }
    if (d->usrc) dnnl_memory_destroy(d->usrc);
    if (d->udst) dnnl_memory_destroy(d->udst);
    if (d->cw) dnnl_memory_destroy(d->cw);
    free((void *)d->impl);
}

static double max_rel_diff(const float *a, const float *b, size_t n) {
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > m) m = e;
        if (fabs(a[i]) > s) s = fabs(a[i]);
    }
    return s > 0 ? m / s : m;
}

/* One conv through the primitive (plain bacd, then any+reorders); checks the result
 * against the GEMM form computed with dnnl_sgemm. */
static void conv_case(const char *op, const shape *s, int Ci, int Co, int k, int M, int N, int K,
                      float *X, float *Woihw, const float *ref) {
    double flops = 2.0 * M * N * K, tmin, t;
    float *Y = falloc((size_t)Co * N);
    for (int any = 0; any < 2; any++) {
        dconv d;
        char name[64];
        snprintf(name, sizeof name, "dnnl_conv_%s", any ? "any" : "bacd");
        if (!any && s->B > 1) {
            printf("RES lib=dnnl_conv_bacd op=%s F=%d HW=%d B=%d skipped (ref:any, see B=1)\n",
                   op, s->F, s->H * s->W, s->B);
            continue;
        }
        if (dconv_init(&d, any, s->B, Ci, Co, s->H, s->W, k, X, Y, Woihw) != 0) {
            printf("RES lib=%s op=%s F=%d HW=%d B=%d unsupported\n", name, op, s->F,
                   s->H * s->W, s->B);
            continue;
        }
        if (strncmp(d.impl, "ref", 3) == 0) {
            /* oneDNN's reference loop nest: ~0.1-0.3 GFLOP/s; one call, untimed set */
            double t0 = now_s();
            dconv_op(&d);
            t = tmin = now_s() - t0;
            if (s->B == 1) report(name, op, s, M, N, K, t, tmin, flops);
        } else {
            t = time_op(dconv_op, &d, &tmin);
            report(name, op, s, M, N, K, t, tmin, flops);
        }
        printf("IMPL lib=%s op=%s F=%d HW=%d B=%d impl=%s reorders=%s%s err=%.2e\n", name, op,
               s->F, s->H * s->W, s->B, d.impl, d.rsrc ? "src" : "", d.rdst ? "+dst" : "",
               max_rel_diff(ref, Y, (size_t)Co * N));
        if (d.rsrc || d.rdst) {
            d.timed_reorders = 0;
            t = time_op(dconv_op, &d, &tmin);
            snprintf(name, sizeof name, "dnnl_conv_any_noreorder");
            report(name, op, s, M, N, K, t, tmin, flops);
        }
        dconv_free(&d);
    }
    free(Y);
}

static void run_conv(void) {
    shape sh[16];
    int ns = make_shapes(sh);
    for (int i = 0; i < ns; i++) {
        shape s = sh[i];
        int F = s.F, N = s.B * s.H * s.W;
        /* 1x1 F -> F */
        float *W1 = falloc((size_t)F * F), *X = falloc((size_t)F * N), *R = falloc((size_t)F * N);
        fill(W1, (size_t)F * F, 0.05f);
        fill(X, (size_t)F * N, 1.0f);
        sgemm_lib(LIB_DNNL, F, N, F, W1, F, X, N, R, N);
        conv_case("1x1", &s, F, F, 1, F, N, F, X, W1, R);

        /* 3x3 in: Cin -> F; oihw weights (F, Cin, 3, 3) are W(F, Cin*9) */
        int K = s.Cin * 9;
        float *Wi = falloc((size_t)F * K), *Xi = falloc((size_t)s.Cin * N),
              *col = falloc((size_t)K * N);
        fill(Wi, (size_t)F * K, 0.2f);
        fill(Xi, (size_t)s.Cin * N, 1.0f);
        im2col3(col, Xi, s.Cin, s.B, s.H, s.W);
        sgemm_lib(LIB_DNNL, F, N, K, Wi, K, col, N, R, N);
        conv_case("3x3in", &s, s.Cin, F, 3, F, N, K, Xi, Wi, R);

        /* 3x3 out: F -> Cout; W'(Cout*9, F)[(o*9+k), c] = W[o, c, k] */
        int M = s.Cout * 9;
        float *Wo = falloc((size_t)s.Cout * F * 9), *Wp = falloc((size_t)M * F),
              *T = falloc((size_t)M * N);
        fill(Wo, (size_t)s.Cout * F * 9, 0.05f);
        for (int o = 0; o < s.Cout; o++)
            for (int c = 0; c < F; c++)
                for (int kk = 0; kk < 9; kk++)
                    Wp[((size_t)o * 9 + kk) * F + c] = Wo[((size_t)o * F + c) * 9 + kk];
        sgemm_lib(LIB_DNNL, M, N, F, Wp, F, X, N, T, N);
        col2im3(R, T, s.Cout, s.B, s.H, s.W);
        conv_case("3x3out", &s, F, s.Cout, 3, M, N, F, X, Wo, R);

        free(W1);
        free(X);
        free(R);
        free(Wi);
        free(Xi);
        free(col);
        free(Wo);
        free(Wp);
        free(T);
    }
}

/* --------------------------------------------------------- determinism */

/* Y_big = A X (N = Bbig*HW); for every image j, Y_j = A X_j (N = HW) from a copy of
 * image j's columns. Counts images whose HW columns differ in any bit. */
static void det_case(int lib, int M, int K, int HW, int Bbig) {
    int N = Bbig * HW;
    float *A = falloc((size_t)M * K), *X = falloc((size_t)K * N), *Y = falloc((size_t)M * N),
          *Xj = falloc((size_t)K * HW), *Yj = falloc((size_t)M * HW), *Y2 = falloc((size_t)M * N);
    fill(A, (size_t)M * K, 0.05f);
    fill(X, (size_t)K * N, 1.0f);
    sgemm_lib(lib, M, N, K, A, K, X, N, Y, N);
    sgemm_lib(lib, M, N, K, A, K, X, N, Y2, N);
    int repeat_ok = memcmp(Y, Y2, (size_t)M * N * sizeof(float)) == 0;
    int bad = 0, first_bad = -1;
    double maxd = 0;
    for (int j = 0; j < Bbig; j++) {
        for (int r = 0; r < K; r++)
            memcpy(Xj + (size_t)r * HW, X + (size_t)r * N + (size_t)j * HW, HW * sizeof(float));
        sgemm_lib(lib, M, HW, K, A, K, Xj, HW, Yj, HW);
        int differs = 0;
        for (int r = 0; r < M; r++) {
            const float *a = Y + (size_t)r * N + (size_t)j * HW, *b = Yj + (size_t)r * HW;
            if (memcmp(a, b, HW * sizeof(float))) {
                differs = 1;
                for (int c = 0; c < HW; c++) {
                    double e = fabs((double)a[c] - b[c]);
                    if (e > maxd) maxd = e;
                }
            }
        }
        if (differs) {
            bad++;
            if (first_bad < 0) first_bad = j;
        }
    }
    printf("DET lib=%s threads=%d M=%d K=%d HW=%d Bbig=%d images_differing=%d/%d first=%d "
           "max_abs_diff=%.3g repeat_identical=%d\n",
           lib_name[lib], omp_get_max_threads(), M, K, HW, Bbig, bad, Bbig, first_bad, maxd,
           repeat_ok);
    fflush(stdout);
    free(A);
    free(X);
    free(Y);
    free(Xj);
    free(Yj);
    free(Y2);
}

/* Same GEMM with 2 threads and with 1 thread: bit-identical? */
static void det_threads(int lib, int M, int K, int N) {
    float *A = falloc((size_t)M * K), *X = falloc((size_t)K * N), *Y1 = falloc((size_t)M * N),
          *Y2 = falloc((size_t)M * N);
    fill(A, (size_t)M * K, 0.05f);
    fill(X, (size_t)K * N, 1.0f);
    set_threads(NTHREADS);
    sgemm_lib(lib, M, N, K, A, K, X, N, Y2, N);
    set_threads(1);
    sgemm_lib(lib, M, N, K, A, K, X, N, Y1, N);
    set_threads(NTHREADS);
    size_t bad = 0;
    for (size_t i = 0; i < (size_t)M * N; i++) bad += memcmp(&Y1[i], &Y2[i], sizeof(float)) != 0;
    printf("DETTHREADS lib=%s M=%d K=%d N=%d elements_differing_1vs%d_threads=%zu/%zu\n",
           lib_name[lib], M, K, N, NTHREADS, bad, (size_t)M * N);
    fflush(stdout);
    free(A);
    free(X);
    free(Y1);
    free(Y2);
}

static void run_det(int lib) {
    const int Fs[] = {512, 128};
    for (int th = NTHREADS; th >= 1; th--) {
        set_threads(th);
        for (int fi = 0; fi < 2; fi++)
            for (int lv = 0; lv < 2; lv++) {
                int F = Fs[fi], HW = lv ? 49 : 196, Cin = lv ? 4 : 2, Cout = lv ? 8 : 4;
                const int Bb[] = {7, 64};
                for (int bi = 0; bi < 2; bi++) {
                    det_case(lib, F, F, HW, Bb[bi]);
                    det_case(lib, F, Cin * 9, HW, Bb[bi]);
                    det_case(lib, Cout * 9, F, HW, Bb[bi]);
                }
            }
    }
    for (int fi = 0; fi < 2; fi++)
        for (int lv = 0; lv < 2; lv++) {
            int F = Fs[fi], HW = lv ? 49 : 196, Cin = lv ? 4 : 2, Cout = lv ? 8 : 4;
            for (int b = 1; b <= 64; b *= 64) {
                det_threads(lib, F, F, b * HW);
                det_threads(lib, F, Cin * 9, b * HW);
                det_threads(lib, Cout * 9, F, b * HW);
            }
        }
    set_threads(NTHREADS);
}

/* ------------------------------------------- GEMM next to OpenMP loops */

typedef struct {
    int lib, F, N, layers, what; /* what: 0 gemm only, 1 omp loop only, 2 both */
    const float *A;
    float *X, *Y;
} mixed_ctx;

static void mixed_op(void *p) {
    mixed_ctx *m = p;
    size_t n = (size_t)m->F * m->N;
    for (int l = 0; l < m->layers; l++) {
        if (m->what != 1) sgemm_lib(m->lib, m->F, m->N, m->F, m->A, m->F, m->X, m->N, m->Y, m->N);
        if (m->what != 0) {
            float *x = m->X;
            const float *y = m->Y;
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) x[i] = fminf(fmaxf(0.05f * y[i] + 0.5f * x[i], -1.f), 1.f);
        }
    }
}

static void run_mixed(int lib) {
    const int Fs[] = {512, 128}, Bs[] = {1, 64};
    for (int fi = 0; fi < 2; fi++)
        for (int bi = 0; bi < 2; bi++) {
            int F = Fs[fi], N = Bs[bi] * 196;
            float *A = falloc((size_t)F * F), *X = falloc((size_t)F * N), *Y = falloc((size_t)F * N);
            fill(A, (size_t)F * F, 0.05f);
            fill(X, (size_t)F * N, 1.0f);
            double t[3], tmin;
            for (int w = 0; w < 3; w++) {
                mixed_ctx m = {lib, F, N, 8, w, A, X, Y};
                t[w] = time_op(mixed_op, &m, &tmin) / 8;
            }
            printf("MIXED lib=%s F=%d N=%d per_layer_ms gemm=%.4f omp_loop=%.4f both=%.4f "
                   "overhead=%.4f (%.0f%%)\n",
                   lib_name[lib], F, N, t[0] * 1e3, t[1] * 1e3, t[2] * 1e3,
                   (t[2] - t[0] - t[1]) * 1e3, 100.0 * (t[2] - t[0] - t[1]) / (t[0] + t[1]));
            fflush(stdout);
            free(A);
            free(X);
            free(Y);
        }
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s info|peak|gemm|conv|det|mixed [openblas|dnnl]\n", argv[0]);
        return 1;
    }
    const char *what = argv[1];
    int lib = (argc > 2 && strcmp(argv[2], "openblas") == 0) ? LIB_OB : LIB_DNNL;
    set_threads(NTHREADS);
    DN(dnnl_engine_create(&g_eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&g_strm, g_eng, dnnl_stream_default_flags));
    if (!strcmp(what, "info")) {
        const dnnl_version_t *v = dnnl_version();
        printf("INFO openblas config=\"%s\" core=%s threads=%d\n", openblas_get_config(),
               openblas_get_corename(), openblas_get_num_threads());
        printf("INFO dnnl %d.%d.%d isa=0x%x omp_max_threads=%d\n", v->major, v->minor, v->patch,
               (unsigned)dnnl_get_effective_cpu_isa(), omp_get_max_threads());
        printf("INFO OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s OMP_NUM_THREADS=%s\n",
               getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)",
               getenv("OPENBLAS_L2_SIZE") ? getenv("OPENBLAS_L2_SIZE") : "(unset)",
               getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "(unset)");
    } else if (!strcmp(what, "peak")) {
        run_peak(lib);
    } else if (!strcmp(what, "gemm")) {
        run_gemm(lib);
    } else if (!strcmp(what, "conv")) {
        run_conv();
    } else if (!strcmp(what, "det")) {
        run_det(lib);
    } else if (!strcmp(what, "mixed")) {
        run_mixed(lib);
    } else {
        fprintf(stderr, "unknown mode %s\n", what);
        return 1;
    }
    dnnl_stream_destroy(g_strm);
    dnnl_engine_destroy(g_eng);
    return 0;
}
