/* make cuda-check's timings: the CUDA engine on the paper's shapes, and the
 * FInC inverse alone against the per-(diagonal, channel) launches of the
 * public code. The agreement checks are tests/cuda/test_backend_ops.c; this
 * program checks only that what it times computes the same as the baseline.
 *
 *   cuda_bench [--quick] [--json PATH] [--cpu-as-device] [--no-cpu-time] [--time-images N]
 *
 * Every timed path is warmed up first, the baseline included; the engine's
 * graphs are captured by its warm-up (timed apart) before any steady-state
 * timing; the baseline is timed synchronised after every launch, unsynced,
 * and as one captured graph (its capture timed apart). Medians. Prints a
 * report to paste into docs/benchmarks.md and JSON lines (--json).
 * --cpu-as-device times the CPU backend in the device's place. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/flow.h"
#include "kernels/cuda_bench.h"
#include "tests/cuda/harness.h"

#ifndef FINC_HAVE_CUDA
int main(void)
{
    fprintf(stderr, "cuda_bench: built without CUDA (nvcc not found, or CUDA=0)\n");
    return 2;
}
#else

/* The FInC inverse kernel against the baseline: the wavefront carries
 * rounding through H + W steps (as in test_backend_ops). */
#define TOL_INV 1e-4

static int quick, cpu_time = 1;
static int time_images = 100;     /* the "100 images" of the timings; smaller to test this program */

/* ---- the engine ------------------------------------------------------------------------ */

typedef enum { T_ENCODE, T_SAMPLE } t_kind;

/* Median seconds of one call of n images, after warm untimed calls. */
static double time_engine(finc_engine *e, t_kind kind, int n, int warm, int reps)
{
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *v = h_rand_pixels((size_t)n * D), *out = h_xmalloc((size_t)n * D);
    double *lp = h_xmalloc((size_t)n * sizeof(double)), t[64];
    char err[600];
    int k = 0;
    for (int r = -warm; r < reps && r < 64; r++) {
        const double t0 = h_now();
        const int rc = kind == T_ENCODE ? finc_encode(e, n, v, NULL, NULL, lp, err, sizeof err)
                                        : finc_sample(e, n, 1.0f, 42 + r, 0, out, err, sizeof err);
        const double dt = h_now() - t0;
        if (rc) {
            h_check(0, "timing %s: %s", kind == T_ENCODE ? "encode" : "sample", err);
            k = 0;
            break;
        }
        if (r >= 0) t[k++] = dt;
    }
    free(v), free(out), free(lp);
    return k ? h_median(t, k) : -1.0;
}

typedef struct {
    const char *model;
    double enc100, smp100, enc1, smp1, smp100_nograph, smp1_nograph, smp100_tf32;
    double smp400;                /* 4 x N images at max batch N: the chunk pipeline (draw and copy beside the decode) */
    double cpu_smp100, draw100, warm_s, warm_mib;
    int buckets;
    long nodes, intended;         /* graph nodes of the last chain warm-up captured, and what its ops intend */
    double flops;                 /* of one image's pass (finc_model_flops) */
} timing;

static void with_env(const char *name, const char *value)
{
    if (value) setenv(name, value, 1);
    else unsetenv(name);
}

/* An engine with its graphs captured, the capture's time and memory noted. */
static finc_engine *warm_engine(const char *path, const char *backend, int N, finc_precision p, timing *tm)
{
    finc_engine *e = h_open_engine(path, backend, N, p);
    char err[600];
    if (!e || !h_ok_call(finc_engine_warm_up(e, err, sizeof err), err, "warm-up")) {
        finc_engine_free(e);
        return NULL;
    }
    if (tm) {
        finc_backend_status st;
        finc_engine_status(e, &st);
        tm->warm_s = st.warm_seconds, tm->warm_mib = st.warm_device_mib, tm->buckets = st.buckets;
        if (!h_cpu_as_device) finc_cuda_graph_nodes(finc_engine_backend(e), &tm->nodes, &tm->intended);
    }
    return e;
}

static void time_suite(const h_shape *s, const char *path, timing *tm)
{
    const int N = time_images, reps = quick ? 3 : 7, reps1 = quick ? 5 : 21;
    memset(tm, 0, sizeof *tm);
    tm->model = s->name;
    tm->smp100_nograph = tm->smp1_nograph = tm->smp100_tf32 = tm->cpu_smp100 = -1;
    fprintf(stderr, "[time] %s\n", s->name);
    finc_engine *e = warm_engine(path, h_dev_backend(), N, FINC_PRECISION_FP32, tm);
    if (!e) return;
    tm->flops = finc_model_flops(finc_engine_model(e));
    /* Warm-up captured every bucket; one untimed call each still runs first. */
    tm->enc100 = time_engine(e, T_ENCODE, N, 1, reps);
    tm->smp100 = time_engine(e, T_SAMPLE, N, 1, reps);
    tm->enc1 = time_engine(e, T_ENCODE, 1, 1, reps1);
    tm->smp1 = time_engine(e, T_SAMPLE, 1, 1, reps1);
    tm->smp400 = time_engine(e, T_SAMPLE, 4 * N, 1, reps);

    /* The host's share of sampling: finc_sample's own latent draw. */
    const size_t D = (size_t)s->spec.c * s->spec.h * s->spec.w;
    float *lat = h_xmalloc((size_t)N * D * sizeof(float));
    double td[5];
    for (int r = 0; r < 5; r++) {
        const double t0 = h_now();
        finc_draw_latents_rows(e, N, 1, 0, 1.0f, lat);
        td[r] = h_now() - t0;
    }
    tm->draw100 = h_median(td, 5);
    free(lat);
    finc_engine_free(e);

    if (!h_cpu_as_device) {
        with_env("FINC_CUDA_GRAPHS", "0");
        finc_engine *eg = warm_engine(path, "cuda", N, FINC_PRECISION_FP32, NULL);
        with_env("FINC_CUDA_GRAPHS", NULL);
        if (eg) {
            tm->smp100_nograph = time_engine(eg, T_SAMPLE, N, 2, reps);
            tm->smp1_nograph = time_engine(eg, T_SAMPLE, 1, 2, reps1);
            finc_engine_free(eg);
        }
        finc_engine *et = warm_engine(path, "cuda", N, FINC_PRECISION_TF32, NULL);
        if (et) tm->smp100_tf32 = time_engine(et, T_SAMPLE, N, 1, reps);
        finc_engine_free(et);
    }
    if (cpu_time) {
        finc_engine *ec = h_open_engine(path, "cpu", N, FINC_PRECISION_FP32);
        if (ec) {
            tm->cpu_smp100 = time_engine(ec, T_SAMPLE, N, 1, 1);
            finc_engine_free(ec);
        }
    }
    printf("  %s: sample %d in chunks of %d: %.4f s per %d\n", s->name, 4 * N, N, tm->smp400 / 4, N);
    printf("  %s: encode %d %.4f s, sample %d %.4f s, batch-1 encode %.2f ms, sample %.2f ms; warm-up %.2f s, "
           "%.1f MiB of graphs\n", s->name, N, tm->enc100, N, tm->smp100, 1e3 * tm->enc1, 1e3 * tm->smp1, tm->warm_s,
           tm->warm_mib);
    h_json_line("{\"bench\": \"cuda_engine\", \"model\": \"%s\", \"images\": %d, \"encode100_s\": %.6f, "
                "\"sample100_s\": %.6f, \"encode1_s\": %.6f, \"sample1_s\": %.6f, \"sample100_nograph_s\": %.6f, "
                "\"sample1_nograph_s\": %.6f, \"sample100_tf32_s\": %.6f, \"cpu_sample100_s\": %.4f, "
                "\"host_draw100_s\": %.6f, \"sample400_pipelined_s\": %.6f, \"warmup_s\": %.4f, \"warmup_graph_mib\": %.2f, \"buckets\": %d, "
                "\"graph_nodes\": %ld, \"graph_nodes_intended\": %ld, \"gflop_per_image\": %.4f}",
                s->name, N, tm->enc100, tm->smp100, tm->enc1, tm->smp1, tm->smp100_nograph, tm->smp1_nograph,
                tm->smp100_tf32, tm->cpu_smp100, tm->draw100, tm->smp400, tm->warm_s, tm->warm_mib, tm->buckets, tm->nodes,
                tm->intended, tm->flops / 1e9);
}

/* ---- FInC inverse alone -------------------------------------------------------------------- */

typedef struct {
    const char *model;
    int level, C, H, W, B, launches;
    double ours, base_sync, base_nosync, base_graph, base_capture;
    long graph_nodes;
} finc_timing;

/* Median per-call seconds of reps calls, after one untimed round. */
static double time_inverse(finc_backend *be, float *x, const float *y, const finc_step *st, int C, int B,
                           int H, int W, int k, int reps)
{
    char err[600];
    double t[8];
    int n = 0;
    for (int r = -1; r < 5; r++) {
        const double t0 = h_now();
        for (int i = 0; i < reps; i++) be->finc_inverse(be, x, y, st, C, B, H, W, k);
        if (be->sync(be, err, sizeof err)) {
            h_check(0, "finc_inverse timing: %s", err);
            return -1;
        }
        if (r >= 0) t[n++] = (h_now() - t0) / reps;
    }
    return h_median(t, n);
}

static double time_baseline(finc_backend *be, float *x, const float *y, const finc_step *st, int C, int B,
                            int H, int W, int k, int sync_each)
{
    char err[600];
    double t[3];
    for (int r = -1; r < 3; r++) {
        const double t0 = h_now();
        if (finc_cuda_finc_inverse_baseline(be, x, y, st, C, B, H, W, k, sync_each, err, sizeof err)) {
            h_check(0, "baseline: %s", err);
            return -1;
        }
        if (r >= 0) t[r] = h_now() - t0;
    }
    return h_median(t, 3);
}

static double time_baseline_graph(finc_backend *be, float *x, const float *y, const finc_step *st, int C, int B,
                                  int H, int W, int k, double *capture_s, long *nodes)
{
    char err[600];
    const double t0 = h_now();
    finc_cuda_baseline_graph *g = finc_cuda_baseline_graph_new(be, x, y, st, C, B, H, W, k, err, sizeof err);
    *capture_s = h_now() - t0;
    if (!g) {
        h_check(0, "baseline graph: %s", err);
        return -1;
    }
    *nodes = finc_cuda_baseline_graph_nodes(g);
    double t[5];
    int n = 0;
    for (int r = -1; r < 5; r++) {
        const double t1 = h_now();
        if (finc_cuda_baseline_graph_run(be, g, 5, err, sizeof err)) {
            h_check(0, "baseline graph: %s", err);
            break;
        }
        if (r >= 0) t[n++] = (h_now() - t1) / 5;
    }
    finc_cuda_baseline_graph_free(g);
    return n ? h_median(t, n) : -1;
}

static int finc_suite(const h_shape *s, const char *path, finc_timing *out, int max_out)
{
    finc_model m;
    char err[600];
    int n_out = 0;
    if (finc_model_load(&m, path, err, sizeof err)) {
        h_check(0, "%s: load: %s", s->name, err);
        return 0;
    }
    finc_backend *be = h_open_device_backend(&m, time_images, FINC_PRECISION_FP32, err, sizeof err);
    if (!be) {
        h_check(0, "%s: %s", s->name, err);
        finc_model_free(&m);
        return 0;
    }
    const int k = m.cfg.kernel;
    for (int l = 0; l < m.cfg.levels; l += m.cfg.levels - 1 > 0 ? m.cfg.levels - 1 : 1) {
        const finc_level *lv = &m.levels[l];
        const int C = lv->c, H = lv->h, W = lv->w;
        const int batches[2] = {time_images, 1};
        for (int bi = 0; bi < 2 && n_out < max_out; bi++) {
            const int B = batches[bi];
            const size_t n = (size_t)C * B * H * W;
            float *y = h_rand_floats(n, -2.0, 2.0), *xo = h_xmalloc(n * sizeof(float));
            float *xb = h_xmalloc(n * sizeof(float)), *xg = h_xmalloc(n * sizeof(float));
            float *dy = h_put(be, y, n * sizeof(float)), *dx = h_put(be, NULL, n * sizeof(float));
            finc_timing *ft = &out[n_out++];
            *ft = (finc_timing){s->name, l, C, H, W, B, (H + W - 1) * (C / 4), 0, 0, 0, 0, 0, 0};
            ft->ours = time_inverse(be, dx, dy, &lv->steps[0], C, B, H, W, k, 20);
            h_get(be, xo, dx, n * sizeof(float), "finc inverse");
            ft->base_sync = time_baseline(be, dx, dy, &lv->steps[0], C, B, H, W, k, 1);
            ft->base_nosync = time_baseline(be, dx, dy, &lv->steps[0], C, B, H, W, k, 0);
            h_get(be, xb, dx, n * sizeof(float), "finc baseline");
            be->zero(be, dx, n * sizeof(float));
            ft->base_graph = time_baseline_graph(be, dx, dy, &lv->steps[0], C, B, H, W, k, &ft->base_capture,
                                                 &ft->graph_nodes);
            h_get(be, xg, dx, n * sizeof(float), "finc baseline graph");
            char w[200];
            snprintf(w, sizeof w, "%s level %d B=%d: the FInC inverse kernel computes what the baseline does",
                     s->name, l, B);
            h_cmp_floats(w, xo, xb, n, TOL_INV, TOL_INV);
            snprintf(w, sizeof w, "%s level %d B=%d: the graphed baseline computes what the baseline does", s->name,
                     l, B);
            h_cmp_floats(w, xg, xb, n, 0, 0);
            h_check(ft->graph_nodes == ft->launches, "%s level %d B=%d: the baseline's graph holds its %d launches "
                    "(%ld nodes)", s->name, l, B, ft->launches, ft->graph_nodes);
            printf("  %s level %d (C=%d, %dx%d) B=%d: ours %.1f us; baseline %.1f us synced, %.1f us unsynced, "
                   "%.1f us as a graph (captured in %.1f ms): %.1fx and %.1fx\n", s->name, l, C, H, W, B,
                   1e6 * ft->ours, 1e6 * ft->base_sync, 1e6 * ft->base_nosync, 1e6 * ft->base_graph,
                   1e3 * ft->base_capture, ft->base_sync / ft->ours, ft->base_graph / ft->ours);
            h_json_line("{\"bench\": \"cuda_finc_inverse\", \"model\": \"%s\", \"level\": %d, \"C\": %d, \"H\": %d, "
                        "\"W\": %d, \"batch\": %d, \"ours_s\": %.8f, \"baseline_sync_s\": %.8f, "
                        "\"baseline_nosync_s\": %.8f, \"baseline_graph_s\": %.8f, \"baseline_capture_s\": %.6f, "
                        "\"baseline_launches\": %d}",
                        s->name, l, C, H, W, B, ft->ours, ft->base_sync, ft->base_nosync, ft->base_graph,
                        ft->base_capture, ft->launches);
            be->release(be, dy);
            be->release(be, dx);
            free(y), free(xo), free(xb), free(xg);
        }
        if (m.cfg.levels == 1) break;
    }
    be->destroy(be);
    finc_model_free(&m);
    return n_out;
}

/* The public code's launches for one sample pass: (H + W - 1) x C/4 per FInC unit. */
static long paper_launches(const testmodel_spec *s)
{
    long n = 0;
    int C = 4 * s->c, H = s->h / 2, W = s->w / 2;
    for (int l = 0; l < s->levels; l++, C *= 2, H /= 2, W /= 2) n += (long)s->steps[l] * (H + W - 1) * (C / 4);
    return n;
}

/* ---- report ------------------------------------------------------------------------------------- */

static const char *ms(double s, char *buf)
{
    if (s < 0) snprintf(buf, 32, "n/a");
    else snprintf(buf, 32, "%.2f ms", 1e3 * s);
    return buf;
}

static void report(const h_shape *shapes, const timing *tm, int nt, const finc_timing *ft, int nf, const char *date)
{
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32];
    const int N = time_images;
    printf("\n---- paste into docs/benchmarks.md ----\n\n");
    printf("### CUDA engine (make cuda-check, %s)\n\n", date);
    printf("Device: %s. Random weights of the paper's shapes (tests/testmodel.c), FP32 GEMMs (cuBLAS) unless\n"
           "marked TF32, medians after warm-up (graph capture excluded, reported apart); sample includes drawing\n"
           "the latents on the host (Philox) and the pixel download.\n\n", h_device_desc);
    printf("| model | encode %d | sample %d | batch-1 encode | batch-1 sample | sample %d, no graphs | "
           "batch-1 sample, no graphs | sample %d, TF32 | CPU engine, sample %d |\n", N, N, N, N, N);
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nt; i++) {
        char cpu[48];
        if (tm[i].cpu_smp100 > 0)
            snprintf(cpu, sizeof cpu, "%.3f s (%.0fx)", tm[i].cpu_smp100, tm[i].cpu_smp100 / tm[i].smp100);
        else snprintf(cpu, sizeof cpu, "n/a");
        printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", tm[i].model, ms(tm[i].enc100, a),
               ms(tm[i].smp100, b), ms(tm[i].enc1, c), ms(tm[i].smp1, d), ms(tm[i].smp100_nograph, e),
               ms(tm[i].smp1_nograph, f), ms(tm[i].smp100_tf32, g), cpu);
    }
    printf("\n| model | paper's public code: launches per sample pass | start-up warm-up (buckets) | device "
           "memory of the graphs | graph nodes of one chain (intended) |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nt; i++) {
        const long launches = paper_launches(&shapes[i].spec);  /* shapes[i] is what tm[i] timed */
        printf("| %s | %ld | %.2f s (%d) | %.1f MiB | %ld (%ld) |\n", tm[i].model, launches, tm[i].warm_s,
               tm[i].buckets, tm[i].warm_mib, tm[i].nodes, tm[i].intended);
    }
    for (int i = 0; i < nt; i++)
        printf("\n%s: %.1f GFLOP per %d images, so encode runs at %.1f TFLOP/s and sample at %.1f; drawing the "
               "latents on the host (Philox, %d threads) takes %.2f ms; sampling %d in chunks of %d, the next chunk's "
               "draw and copy beside the decode, takes %.2f ms per %d.", tm[i].model, tm[i].flops * N / 1e9, N,
               tm[i].flops * N / tm[i].enc100 / 1e12, tm[i].flops * N / tm[i].smp100 / 1e12, omp_get_max_threads(),
               1e3 * tm[i].draw100, 4 * N, N, 1e3 * tm[i].smp400 / 4, N);
    printf("\n\n#### FInC inverse alone: one launch per unit vs one launch per (diagonal, channel)\n\n");
    printf("| model | level | C, H x W | batch | this kernel | baseline, synced (launches) | baseline, unsynced | "
           "baseline, one graph (capture) | vs synced | vs graph |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nf; i++)
        printf("| %s | %d | %d, %dx%d | %d | %.1f us | %.1f us (%d) | %.1f us | %.1f us (%.1f ms) | %.1fx | %.1fx |\n",
               ft[i].model, ft[i].level, ft[i].C, ft[i].H, ft[i].W, ft[i].B, 1e6 * ft[i].ours, 1e6 * ft[i].base_sync,
               ft[i].launches, 1e6 * ft[i].base_nosync, 1e6 * ft[i].base_graph, 1e3 * ft[i].base_capture,
               ft[i].base_sync / ft[i].ours, ft[i].base_graph / ft[i].ours);
    printf("\n---- end ----\n");
}

static void usage(void)
{
    fprintf(stderr, "usage: cuda_bench [--quick] [--json PATH] [--cpu-as-device] [--no-cpu-time] [--time-images N] "
                    "[--only NAME]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL, *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--cpu-as-device")) h_cpu_as_device = 1;
        else if (!strcmp(argv[i], "--no-cpu-time")) cpu_time = 0;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--time-images") && i + 1 < argc && atoi(argv[i + 1]) > 0)
            time_images = atoi(argv[++i]);
        else usage();
    }
    if (h_start("cuda_bench", "bench", json_path)) return 2;
    /* The timed shapes: the paper's MNIST and CIFAR-10, and CIFAR-10 with K = 8
     * steps per level beside its K = 32, the two launch counts. */
    h_shape shapes[8];
    int ns = 0;
    for (int i = 0; i < h_n_shapes; i++)
        if (h_shapes[i].big) shapes[ns++] = h_shapes[i];
    shapes[ns++] = (h_shape){"cifar10-k8", h_spec(3, 32, 32, 3, 8, 3, 512, 1), 1};
    if (getenv("FINC_BENCH_SMALL"))  /* checks this program on the emulator: the small shapes */
        for (int i = ns = 0; i < h_n_shapes; i++)
            if (!h_shapes[i].big && i < 2) shapes[ns++] = h_shapes[i];
    const double t0 = h_now();
    timing tm[8];
    finc_timing ft[16];
    int nt = 0, nf = 0;
    h_shape timed[8];
    for (int i = 0; i < ns; i++) {
        char path[700];
        if (only && strcmp(only, shapes[i].name)) continue;
        if (h_write_model(&shapes[i], path, sizeof path)) continue;
        timed[nt] = shapes[i];
        time_suite(&shapes[i], path, &tm[nt++]);
        if (!h_cpu_as_device) nf += finc_suite(&shapes[i], path, ft + nf, 16 - nf);
        unlink(path);
    }
    report(timed, tm, nt, ft, nf, h_date);
    h_tmpdir_free();
    printf("\ncuda_bench: %d checks passed, %d failed (%.0f s)\n", h_pass, h_fail, h_now() - t0);
    h_json_line("{\"bench\": \"cuda_bench_summary\", \"passed\": %d, \"failed\": %d}", h_pass, h_fail);
    if (h_json) fclose(h_json);
    return h_fail ? 1 : 0;
}

#endif
