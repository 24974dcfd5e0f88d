/* Engine benchmarks (make bench): encode throughput and sample latency of a
 * weights file at batch 1 and 64, achieved GFLOP/s against this machine's
 * measured sgemm rate, and the FInC wavefront inverse against a raster-order
 * solve, and scoring with the anomaly fields against scoring without them.
 * Prints JSON lines; tools/bench.sh joins them with the PyTorch
 * baseline measured in the same run. Medians of several runs after a warm-up. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/cpu.h"
#include "engine/flow.h"
#include "engine/gemm.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Runs fn reps times after one warm-up, or fewer when a run is long. */
#define TIME_MEDIAN(result, reps, body)                                     \
    do {                                                                    \
        double t_[64];                                                      \
        int n_ = 0;                                                         \
        double start_ = now();                                              \
        body;                                                               \
        double once_ = now() - start_;                                      \
        int r_ = once_ > 2.0 ? 3 : (reps);                                  \
        for (; n_ < r_ && n_ < 64; n_++) {                                  \
            double s_ = now();                                              \
            body;                                                           \
            t_[n_] = now() - s_;                                            \
        }                                                                   \
        result = median(t_, n_);                                            \
    } while (0)

static double sgemm_rate(void)
{
    const int M = 512, N = 512 * 49, K = 512;
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N),
          *C = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    double t;
    TIME_MEDIAN(t, 7, finc_sgemm(M, N, K, A, K, B, N, C, N, 0.0f));
    free(A), free(B), free(C);
    return 2.0 * M * N * K / t / 1e9;
}

/* A failed engine call (a device fault, say) ends the benchmark rather than
 * timing an error path. */
static void engine_ok(int rc, const char *err)
{
    if (rc) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
}

static void bench_model(const char *path, const char *backend, int threads)
{
    char err[512];
    finc_engine_opts o = {.backend = backend, .max_batch = 64, .threads = threads};
    finc_engine *e = finc_engine_open(path, &o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "bench: %s: %s\n", path, err);
        exit(1);
    }
    const finc_model *m = finc_engine_model(e);
    const int D = finc_config_dim(&m->cfg);
    const int batches[] = {1, 64};
    uint8_t *pix = malloc((size_t)64 * D);
    double *lp = malloc(64 * sizeof *lp);
    srand(1);
    for (int i = 0; i < 64 * D; i++) pix[i] = (uint8_t)(rand() % 256);
    const double flops = finc_model_flops(m);
    for (int bi = 0; bi < 2; bi++) {
        const int B = batches[bi];
        double te, ts;
        TIME_MEDIAN(te, 7, engine_ok(finc_encode(e, B, pix, NULL, NULL, lp, err, sizeof err), err));
        TIME_MEDIAN(ts, 7, engine_ok(finc_sample(e, B, 1.0f, 1, 0, pix, err, sizeof err), err));
        printf("{\"bench\": \"engine\", \"model\": \"%s\", \"backend\": \"%s\", \"params\": %zu, "
               "\"threads\": %d, \"batch\": %d, \"encode_ms\": %.3f, \"encode_img_s\": %.2f, "
               "\"encode_gflops\": %.2f, \"sample_ms\": %.3f, \"sample_img_s\": %.2f, \"sample_gflops\": %.2f, "
               "\"sample_over_encode\": %.3f}\n",
               path, finc_engine_backend_name(e), m->n_params, omp_get_max_threads(), B, te * 1e3, B / te,
               flops * B / te / 1e9, ts * 1e3, B / ts, flops * B / ts / 1e9, ts / te);
        fflush(stdout);
    }
    free(pix), free(lp);
    finc_engine_free(e);
}

/* Scoring a calibrated model with and without the anomaly fields
 * (finc_score_anomaly against the plain midpoint finc_encode), in
 * alternating runs so that drift on a noisy machine falls on both. */
static void bench_anomaly(const char *path, int threads)
{
    char err[512];
    finc_engine_opts o = {.backend = "cpu", .max_batch = 64, .threads = threads};
    finc_engine *e = finc_engine_open(path, &o, err, sizeof err);
    if (!e || !finc_engine_model(e)->anomaly) {
        fprintf(stderr, "bench: %s: %s\n", path, e ? "not calibrated (finc calibrate)" : err);
        exit(1);
    }
    const int D = finc_config_dim(&finc_engine_model(e)->cfg), batches[] = {1, 64};
    uint8_t *pix = malloc((size_t)64 * D);
    double lp[64];
    finc_anomaly_result an[64];
    srand(3);
    /* dark background, brighter object: the shipped model's kind of image */
    for (int i = 0; i < 64 * D; i++) pix[i] = (uint8_t)(i % D / 28 % 27 > 6 && i % 28 > 6 ? rand() % 200 + 40 : 0);
    for (int bi = 0; bi < 2; bi++) {
        const int B = batches[bi], reps = 21;
        double tp[21], ta[21];
        engine_ok(finc_score_anomaly(e, B, pix, lp, an, err, sizeof err), err);
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            engine_ok(finc_encode(e, B, pix, NULL, NULL, lp, err, sizeof err), err);
            tp[r] = now() - t0;
            t0 = now();
            engine_ok(finc_score_anomaly(e, B, pix, lp, an, err, sizeof err), err);
            ta[r] = now() - t0;
        }
        const double mp = median(tp, reps), ma = median(ta, reps);
        printf("{\"bench\": \"anomaly\", \"model\": \"%s\", \"threads\": %d, \"batch\": %d, "
               "\"score_ms\": %.3f, \"score_anomaly_ms\": %.3f, \"throughput_ratio\": %.3f}\n",
               path, omp_get_max_threads(), B, mp * 1e3, ma * 1e3, mp / ma);
        fflush(stdout);
    }
    free(pix);
    finc_engine_free(e);
}

/* One FInC unit of C channels on an n x n image, batch 1. */
static void bench_finc(int n, int k, int C)
{
    const size_t N = (size_t)C * n * n;
    const int Cq = C / 4;
    float *w = malloc(sizeof(float) * 4 * Cq * Cq * k * k);
    finc_step st;
    memset(&st, 0, sizeof st);
    srand(2);
    for (int q = 0; q < 4; q++) {
        float *wq = w + (size_t)q * Cq * Cq * k * k;
        for (int co = 0; co < Cq; co++)
            for (int ci = 0; ci < Cq; ci++)
                for (int t = 0; t < k * k; t++) {
                    float v = ((float)rand() / RAND_MAX - 0.5f) * 0.1f;
                    if (t == k * k - 1) v = ci == co ? 1.0f : ci > co ? 0.0f : v;
                    wq[((size_t)co * Cq + ci) * k * k + t] = v;
                }
        st.finc_tl[q] = wq;
    }
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    for (size_t i = 0; i < N; i++) x[i] = (float)rand() / RAND_MAX;
    finc_cpu_finc_forward(NULL, y, x, &st, C, 1, n, n, k);
    double tw, tu, tr, tf;
    TIME_MEDIAN(tf, 7, finc_cpu_finc_forward(NULL, y, x, &st, C, 1, n, n, k));
    TIME_MEDIAN(tw, 7, finc_cpu_finc_inverse_wavefront(x, y, &st, C, 1, n, n, k));
    TIME_MEDIAN(tu, 7, finc_cpu_finc_inverse_units(x, y, &st, C, 1, n, n, k));
    TIME_MEDIAN(tr, 7, finc_cpu_finc_inverse_raster(x, y, &st, C, 1, n, n, k));
    printf("{\"bench\": \"finc_inverse\", \"size\": %d, \"k\": %d, \"channels\": %d, \"threads\": %d, "
           "\"forward_ms\": %.4f, \"wavefront_ms\": %.4f, \"units_ms\": %.4f, \"raster_ms\": %.4f, "
           "\"raster_over_wavefront\": %.2f, \"raster_over_units\": %.2f}\n",
           n, k, C, omp_get_max_threads(), tf * 1e3, tw * 1e3, tu * 1e3, tr * 1e3, tr / tw, tr / tu);
    fflush(stdout);
    free(w), free(x), free(y);
}

int main(int argc, char **argv)
{
    int threads = 0, finc = 0;
    const char *backend = "cpu", *anomaly = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--finc")) finc = 1;
        else if (!strcmp(argv[i], "--anomaly") && i + 1 < argc) anomaly = argv[++i];
        else {
            fprintf(stderr, "usage: bench_engine [--backend cpu|cuda|auto] [--threads N] [--finc] "
                            "[--anomaly CALIBRATED_WEIGHTS] [WEIGHTS...]\n");
            return 2;
        }
    }
    if (threads > 0) omp_set_num_threads(threads);
    finc_gemm_set_threads(omp_get_max_threads());
    printf("{\"bench\": \"sgemm\", \"threads\": %d, \"shape\": \"512x25088x512\", \"gflops\": %.2f}\n",
           omp_get_max_threads(), sgemm_rate());
    for (; i < argc; i++) bench_model(argv[i], backend, threads);
    if (anomaly) bench_anomaly(anomaly, threads);
    if (finc) {
        const int sizes[] = {16, 32, 64, 128, 256}, ks[] = {3, 5, 7};
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 3; b++) bench_finc(sizes[a], ks[b], 12);
    }
    return 0;
}
