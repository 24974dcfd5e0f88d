/* make cuda-check: the CUDA engine against the CPU engine, then timed.
 *
 *   cuda_check [--quick] [--json PATH] [--cpu-as-device] [--no-cpu-time] [--no-time] [--ops-only]
 *              [--small] [--time-images N]
 *
 * 1. Every backend op on odd shapes, CUDA against CPU (as ggml's
 *    test-backend-ops), every FInC-inverse placement, batches 1 and 3.
 * 2. The engines on those shapes and on the paper's MNIST (1x28x28, L=2, K=16,
 *    F=512) and CIFAR-10 (3x32x32, L=3, K=32, F=512) shapes with random
 *    weights: encode latents and log p within the tolerances below, decode
 *    pixels equal but for rounding-boundary pixels, seeded samples equal,
 *    exact pixel round trip, batch independence.
 * 3. Timings (medians): encode and sample of 100 images, batch-1 latency,
 *    with and without CUDA graphs, TF32 as an aside, the CPU engine once for
 *    the ratio; the FInC inverse alone against the per-(diagonal, channel)
 *    launch scheme of the public code.
 * Prints a report to paste into docs/benchmarks.md and JSON lines (--json).
 * Exit status 0 only when every check passed. --cpu-as-device runs the CPU
 * backend in the device's place: it checks this harness where no GPU is. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/flow.h"
#include "kernels/cuda_bench.h"
#include "tests/testmodel.h"

#ifndef FINC_HAVE_CUDA
int main(void)
{
    fprintf(stderr, "cuda_check: built without CUDA (nvcc not found, or CUDA=0)\n");
    return 2;
}
#else

/* Tolerances, with their reasons.
 * Ops: float32 sums in another order (and FMA) differ by a few ulps of the
 * largest term; GEMMs over K = 512 by ~sqrt(K) ulps. */
#define TOL_OP_RTOL 2e-5
#define TOL_OP_ATOL 2e-5
/* FInC inverse: the wavefront recursion carries rounding through H + W steps. */
#define TOL_INV_RTOL 1e-4
#define TOL_INV_ATOL 1e-4
/* Per-image double sums of float terms in another order. */
#define TOL_SUM_RTOL 1e-6
#define TOL_SUM_ATOL 1e-4
/* Engine latents after up to 96 steps of float32 arithmetic, relative to
 * max(1, |z|). Measured on the CPU: one float ulp on the input logits moves
 * the random CIFAR-shape latents by <= 3e-5 and log p by <= 5e-3 nats, and
 * every layer adds a few ulps in another order; a bug moves them by O(1). */
#define TOL_Z 5e-3
/* log p: the sums of log-dets and z^2 over D dims and ~100 couplings
 * (0.6 nats on CIFAR's ~-3e4, 0.12 on MNIST's ~-5.7e3). */
#define TOL_LP_RTOL 2e-5
#define TOL_LP_ATOL 1e-2
/* Pixels from different float roundings differ only where 256*sigmoid lands
 * within rounding of an integer: by one level, on a tiny fraction. */
#define TOL_PIX_FRACTION 1e-3

static int quick, cpu_as_device, cpu_time = 1;
static int time_images = 100;     /* the "100 images" of the timings; smaller to test this program */
static FILE *json;
static int n_pass, n_fail;
static char device_desc[512] = "CPU backend standing in for the device (--cpu-as-device)";

/* ---- small helpers -------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 0x1234;
static double rnd(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "cuda_check: out of host memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static float *rand_floats(size_t n, double lo, double hi)
{
    float *p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * rnd());
    return p;
}

static uint8_t *rand_pixels(size_t n)
{
    uint8_t *p = xmalloc(n);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rnd() * 256);
    return p;
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("  %s %s\n", ok ? "ok  " : "FAIL", msg);
    fflush(stdout);
    ok ? n_pass++ : n_fail++;
    if (json) {
        fputs("{\"check\": \"", json);
        for (const char *c = msg; *c; c++) {
            if (*c == '"' || *c == '\\') fputc('\\', json);
            if ((unsigned char)*c >= 0x20) fputc(*c, json);
        }
        fprintf(json, "\", \"pass\": %s}\n", ok ? "true" : "false");
    }
}

/* Worst |a - b| / (atol + rtol |b|) over n floats; > 1 fails. */
static int cmp_floats(const char *what, const float *a, const float *b, size_t n, double atol, double rtol)
{
    double worst = 0, maxabs = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        double r = d == 0 ? 0 : d / (atol + rtol * fabs((double)b[i]));
        if (isnan(a[i]) != isnan(b[i]) || (!isfinite(d) && a[i] != b[i])) r = INFINITY;
        if (d > maxabs && isfinite(d)) maxabs = d;
        if (r > worst || isnan(r)) worst = r, at = i;
    }
    const int ok = worst <= 1.0;
    if (ok) check(1, "%s: max |diff| %.3g (%.2f of tolerance)", what, maxabs, worst);
    else check(0, "%s: element %zu: %.9g vs cpu %.9g (%.3g x tolerance atol %.1g rtol %.1g)", what, at,
               a[at], b[at], worst, atol, rtol);
    return ok;
}

static int cmp_doubles(const char *what, const double *a, const double *b, int n, double atol, double rtol)
{
    double worst = 0, maxabs = 0;
    int at = 0;
    for (int i = 0; i < n; i++) {
        const double d = fabs(a[i] - b[i]);
        const double r = d == 0 ? 0 : isfinite(d) ? d / (atol + rtol * fabs(b[i])) : INFINITY;
        if (isfinite(d) && d > maxabs) maxabs = d;
        if (r > worst) worst = r, at = i;
    }
    const int ok = worst <= 1.0;
    if (ok) check(1, "%s: max |diff| %.3g (%.2f of tolerance)", what, maxabs, worst);
    else check(0, "%s: item %d: %.12g vs cpu %.12g", what, at, a[at], b[at]);
    return ok;
}

/* Pixels: all within one level, and differing on at most frac of them. */
static int cmp_pixels(const char *what, const uint8_t *a, const uint8_t *b, size_t n, double frac)
{
    size_t diff = 0, first = n;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        const int d = abs((int)a[i] - (int)b[i]);
        if (d) {
            diff++;
            if (first == n) first = i;
        }
        if (d > maxd) maxd = d;
    }
    const int ok = maxd <= 1 && diff <= (size_t)(frac * n);
    if (diff == 0) check(ok, "%s: all %zu pixels equal", what, n);
    else check(ok, "%s: %zu of %zu pixels differ (allowed %.0f), by at most %d (first at %zu: %d vs %d)", what,
               diff, n, frac * n, maxd, first, a[first], b[first]);
    return ok;
}

/* ---- backend memory ------------------------------------------------------- */

static void *put(finc_backend *be, const void *host, size_t bytes)
{
    void *d = be->alloc(be, bytes);
    if (!d) {
        fprintf(stderr, "cuda_check: %s alloc of %zu bytes failed\n", be->name, bytes);
        exit(2);
    }
    if (host) be->upload(be, d, host, bytes);
    else be->zero(be, d, bytes);
    return d;
}

static int get(finc_backend *be, void *host, const void *d, size_t bytes, const char *what)
{
    char err[600];
    if (be->sync(be, err, sizeof err)) {
        check(0, "%s on %s: %s", what, be->name, err);
        return -1;
    }
    be->download(be, host, d, bytes);
    return 0;
}

/* ---- 1. ops ------------------------------------------------------------------ */

/* A float op on both backends: inputs in0 (n0 floats) and optionally in1, the
 * result taken from output (nout floats); run() issues the op on one backend. */
typedef struct {
    const finc_model *m;
    const finc_step *st;
    const finc_coupling *cp;
    int C, B, H, W;
    void *a, *b, *c;              /* backend buffers */
} op_args;
typedef void (*op_fn)(finc_backend *be, op_args *a);

typedef struct {
    finc_backend *cpu, *dev;
} pair;

/* Runs fn on both with the same input x (n floats); compares buffer a
 * (nout floats), and when nld > 0 the double buffer c (logdet / logp). */
static void run_pair(pair *p, const char *what, op_fn fn, op_args args, const float *x, size_t nin,
                     size_t nout, int nld, double atol, double rtol)
{
    float *oc = xmalloc(nout * sizeof(float)), *od = xmalloc(nout * sizeof(float));
    double ldc[nld > 0 ? nld : 1], ldd[nld > 0 ? nld : 1];
    finc_backend *bes[2] = {p->cpu, p->dev};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        finc_backend *be = bes[i];
        op_args a = args;
        const size_t bytes = (nin > nout ? nin : nout) * sizeof(float);
        float *tmp = xmalloc(bytes);
        memset(tmp, 0, bytes);
        memcpy(tmp, x, nin * sizeof(float));
        a.a = put(be, tmp, bytes);
        a.b = put(be, NULL, bytes);
        a.c = put(be, NULL, (nld > 0 ? nld : 1) * sizeof(double));
        free(tmp);
        fn(be, &a);
        if (get(be, i ? od : oc, a.b, nout * sizeof(float), what)) ok = 0;
        else if (nld > 0) be->download(be, i ? ldd : ldc, a.c, nld * sizeof(double));
        be->release(be, a.a);
        be->release(be, a.b);
        be->release(be, a.c);
    }
    if (ok) {
        if (nout > 0) cmp_floats(what, od, oc, nout, atol, rtol);
        if (nld > 0) {
            char w[256];
            snprintf(w, sizeof w, "%s (per-image sum)", what);
            cmp_doubles(w, ldd, ldc, nld, TOL_SUM_ATOL, TOL_SUM_RTOL);
        }
    }
    free(oc);
    free(od);
}

/* Out-of-place ops read a and write b; in-place ones copy a to b first. */
static void copy_ab(finc_backend *be, op_args *a, size_t n)
{
    float *t = xmalloc(n * sizeof(float));
    be->download(be, t, a->a, n * sizeof(float));
    be->upload(be, a->b, t, n * sizeof(float));
    free(t);
}
static size_t nelem(const op_args *a) { return (size_t)a->C * a->B * a->H * a->W; }

static void f_squeeze(finc_backend *be, op_args *a) { be->squeeze(be, a->b, a->a, a->C, a->B, a->H, a->W); }
static void f_unsqueeze(finc_backend *be, op_args *a) { be->unsqueeze(be, a->b, a->a, a->C, a->B, a->H, a->W); }
static void f_finc_fwd(finc_backend *be, op_args *a)
{
    be->finc_forward(be, a->b, a->a, a->st, a->C, a->B, a->H, a->W, a->m->cfg.kernel);
}
static void f_finc_inv(finc_backend *be, op_args *a)
{
    be->finc_inverse(be, a->b, a->a, a->st, a->C, a->B, a->H, a->W, a->m->cfg.kernel);
}
static void f_an_fwd(finc_backend *be, op_args *a)
{
    copy_ab(be, a, nelem(a));
    be->actnorm_forward(be, a->b, a->st, a->C, a->B, a->H * a->W);
}
static void f_an_inv(finc_backend *be, op_args *a)
{
    copy_ab(be, a, nelem(a));
    be->actnorm_inverse(be, a->b, a->st, a->C, a->B, a->H * a->W);
}
static void f_1x1_fwd(finc_backend *be, op_args *a) { be->conv1x1_forward(be, a->b, a->a, a->st, a->C, a->B, a->H * a->W); }
static void f_1x1_inv(finc_backend *be, op_args *a) { be->conv1x1_inverse(be, a->b, a->a, a->st, a->C, a->B, a->H * a->W); }
static void f_cp_fwd(finc_backend *be, op_args *a)
{
    copy_ab(be, a, nelem(a));
    be->coupling_forward(be, a->b, a->c, a->cp, a->B, a->H, a->W);
}
static void f_cp_inv(finc_backend *be, op_args *a)
{
    copy_ab(be, a, nelem(a));
    be->coupling_inverse(be, a->b, a->cp, a->B, a->H, a->W);
}
static void f_logp(finc_backend *be, op_args *a) { be->gaussian_logp(be, a->c, a->a, a->C, a->B, a->H * a->W); }
/* Latents: z (C, B, HW) to rows (B, D) at offset, and back into b. */
static void f_latents(finc_backend *be, op_args *a)
{
    const int HW = a->H * a->W, D = 2 * a->C * HW + 5, off = a->C * HW + 3;
    float *lat = put(be, NULL, (size_t)a->B * D * sizeof(float));
    be->latents_write(be, lat, D, off, a->a, a->C, a->B, HW);
    be->latents_read(be, a->b, lat, D, off, a->C, a->B, HW);
    char err[600];
    if (be->sync(be, err, sizeof err)) fprintf(stderr, "latents: %s\n", err);
    be->release(be, lat);
}

static void pre_post_tests(pair *p, const finc_model *m, int B, const char *tag)
{
    const finc_config *cfg = &m->cfg;
    const int C = cfg->c, H = cfg->h, W = cfg->w;
    const size_t D = (size_t)C * H * W, n = (size_t)B * D;
    uint8_t *pix = rand_pixels(n);
    float *u = rand_floats(n, 0.0, 1.0);
    for (int with_u = 0; with_u < 2; with_u++) {
        float *xs[2] = {xmalloc(n * sizeof(float)), xmalloc(n * sizeof(float))};
        double lds[2][B];
        finc_backend *bes[2] = {p->cpu, p->dev};
        int ok = 1;
        for (int i = 0; i < 2; i++) {
            finc_backend *be = bes[i];
            uint8_t *dp = put(be, pix, n);
            float *du = with_u ? put(be, u, n * sizeof(float)) : NULL;
            float *dx = put(be, NULL, n * sizeof(float));
            double *dl = put(be, NULL, B * sizeof(double));
            be->preprocess(be, dx, dl, dp, du, B, C, H, W, cfg->alpha);
            if (get(be, xs[i], dx, n * sizeof(float), "preprocess")) ok = 0;
            else be->download(be, lds[i], dl, B * sizeof(double));
            be->release(be, dp);
            if (du) be->release(be, du);
            be->release(be, dx);
            be->release(be, dl);
        }
        if (ok) {
            char w[128];
            snprintf(w, sizeof w, "%s preprocess%s logits", tag, with_u ? " (offsets u)" : "");
            /* Double until the last rounding: equal but for an ulp of the log. */
            cmp_floats(w, xs[1], xs[0], n, 1e-6, 1e-6);
            snprintf(w, sizeof w, "%s preprocess%s log-det", tag, with_u ? " (offsets u)" : "");
            cmp_doubles(w, lds[1], lds[0], B, 1e-8, 1e-12);
        }
        free(xs[0]);
        free(xs[1]);
    }
    /* Post-processing of logits spread over the whole pixel range. */
    float *x = rand_floats(n, -9.0, 9.0);
    uint8_t *px[2] = {xmalloc(n), xmalloc(n)};
    finc_backend *bes[2] = {p->cpu, p->dev};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        finc_backend *be = bes[i];
        float *dx = put(be, x, n * sizeof(float));
        uint8_t *dp = put(be, NULL, n);
        be->postprocess(be, dp, dx, B, C, H, W, cfg->alpha);
        if (get(be, px[i], dp, n, "postprocess")) ok = 0;
        be->release(be, dx);
        be->release(be, dp);
    }
    char w[128];
    snprintf(w, sizeof w, "%s postprocess pixels", tag);
    if (ok) cmp_pixels(w, px[1], px[0], n, TOL_PIX_FRACTION);
    free(px[0]);
    free(px[1]);
    free(x);
    free(pix);
    free(u);
}

static void level_tests(pair *p, const finc_model *m, int l, int B, const char *tag)
{
    const finc_level *lv = &m->levels[l];
    const int C = lv->c, H = lv->h, W = lv->w;
    const size_t n = (size_t)C * B * H * W;
    char w[256];
    float *x = rand_floats(n, -2.0, 2.0);
    op_args a = {.m = m, .C = C / 4, .B = B, .H = 2 * H, .W = 2 * W};
#define NAME(s) (snprintf(w, sizeof w, "%s level %d %s", tag, l, s), w)
    run_pair(p, NAME("squeeze"), f_squeeze, a, x, n, n, 0, 0, 0);
    a = (op_args){.m = m, .C = C / 4, .B = B, .H = 2 * H, .W = 2 * W};
    run_pair(p, NAME("unsqueeze"), f_unsqueeze, a, x, n, n, 0, 0, 0);
    if (lv->nsteps > 0) {
        const finc_step *st = &lv->steps[0];
        a = (op_args){.m = m, .st = st, .cp = &st->coupling, .C = C, .B = B, .H = H, .W = W};
        run_pair(p, NAME("finc_forward"), f_finc_fwd, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
        const int modes = cpu_as_device ? 1 : FINC_CUDA_FINC_NMODES;
        for (int mode = 0; mode < modes; mode++) {
            static const char *const mode_names[] = {"auto", "smem image+weights", "smem image",
                                                     "smem weights", "global"};
            if (!cpu_as_device) finc_cuda_set_finc_mode(p->dev, mode);
            char s[96];
            snprintf(s, sizeof s, "finc_inverse [%s]", mode_names[mode]);
            run_pair(p, NAME(s), f_finc_inv, a, x, n, n, 0, TOL_INV_ATOL, TOL_INV_RTOL);
        }
        if (!cpu_as_device) finc_cuda_set_finc_mode(p->dev, FINC_CUDA_FINC_AUTO);
        if (m->cfg.actnorm) {
            run_pair(p, NAME("actnorm_forward"), f_an_fwd, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
            run_pair(p, NAME("actnorm_inverse"), f_an_inv, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
        }
        run_pair(p, NAME("conv1x1_forward"), f_1x1_fwd, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
        run_pair(p, NAME("conv1x1_inverse"), f_1x1_inv, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
        run_pair(p, NAME("coupling_forward"), f_cp_fwd, a, x, n, n, B, TOL_OP_ATOL, TOL_OP_RTOL);
        run_pair(p, NAME("coupling_inverse"), f_cp_inv, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
    }
    if (lv->has_split) {
        a = (op_args){.m = m, .cp = &lv->split, .C = C, .B = B, .H = H, .W = W};
        run_pair(p, NAME("split coupling_forward"), f_cp_fwd, a, x, n, n, B, TOL_OP_ATOL, TOL_OP_RTOL);
        run_pair(p, NAME("split coupling_inverse"), f_cp_inv, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
    }
    a = (op_args){.m = m, .C = C, .B = B, .H = H, .W = W};
    run_pair(p, NAME("gaussian_logp"), f_logp, a, x, n, 0, B, 0, 0);
    run_pair(p, NAME("latents write+read"), f_latents, a, x, n, n, 0, 0, 0);
#undef NAME
    free(x);
}

/* ---- model files ----------------------------------------------------------------- */

typedef struct {
    const char *name;
    testmodel_spec spec;
    int big;                      /* a paper shape: timed, compared on fewer images */
} shape;

static testmodel_spec spec(int c, int h, int w, int L, int K, int k, int F, int actnorm)
{
    testmodel_spec s;
    memset(&s, 0, sizeof s);
    s.c = c, s.h = h, s.w = w, s.levels = L, s.kernel = k, s.width = F, s.actnorm = actnorm;
    for (int l = 0; l < L; l++) s.steps[l] = K;
    return s;
}

static char tmpdir[512];

static int write_model(const shape *s, char *path, size_t n)
{
    snprintf(path, n, "%s/%s.safetensors", tmpdir, s->name);
    if (access(path, R_OK) == 0) return 0;
    const double t = now();
    if (testmodel_write(path, &s->spec, 20230121)) {
        check(0, "%s: writing the random model failed", s->name);
        return -1;
    }
    fprintf(stderr, "[%s] wrote %s in %.1f s\n", s->name, path, now() - t);
    return 0;
}

static finc_backend *open_device_backend(const finc_model *m, int max_batch, char *err, size_t errlen)
{
    return cpu_as_device ? finc_backend_cpu_new(m, max_batch, 0, err, errlen)
                         : finc_backend_cuda_new(m, max_batch, -1, err, errlen);
}

static void op_suite(const shape *s, const char *path)
{
    finc_model m;
    char err[600];
    if (finc_model_load(&m, path, err, sizeof err)) {
        check(0, "%s: load: %s", s->name, err);
        return;
    }
    pair p = {finc_backend_cpu_new(&m, 3, 0, err, sizeof err), NULL};
    if (p.cpu) p.dev = open_device_backend(&m, 3, err, sizeof err);
    if (!p.cpu || !p.dev) {
        check(0, "%s: backend: %s", s->name, err);
    } else {
        const int batches[2] = {1, 3};
        for (int i = 0; i < 2; i++) {
            char tag[96];
            snprintf(tag, sizeof tag, "%s B=%d", s->name, batches[i]);
            fprintf(stderr, "[ops] %s\n", tag);
            pre_post_tests(&p, &m, batches[i], tag);
            for (int l = 0; l < m.cfg.levels; l++) level_tests(&p, &m, l, batches[i], tag);
        }
        /* An allocation that cannot succeed fails alone: NULL, and the backend goes on. */
        void *huge = p.dev->alloc(p.dev, (size_t)1 << 50);
        const int ok = p.dev->sync(p.dev, err, sizeof err) == 0;
        check(huge == NULL && ok, "%s: a 1 PiB alloc returns NULL and the backend still syncs%s%s", s->name,
              ok ? "" : ": ", ok ? "" : err);
        if (huge) p.dev->release(p.dev, huge);
    }
    if (p.dev) p.dev->destroy(p.dev);
    if (p.cpu) p.cpu->destroy(p.cpu);
    finc_model_free(&m);
}

/* ---- 2. engines --------------------------------------------------------------------- */

static finc_engine *open_engine(const char *path, const char *backend, int max_batch)
{
    char err[600];
    finc_engine_opts o = {.backend = backend, .max_batch = max_batch};
    finc_engine *e = finc_engine_open(path, &o, err, sizeof err);
    if (!e) check(0, "open %s engine: %s", backend, err);
    return e;
}

static const char *dev_backend(void) { return cpu_as_device ? "cpu" : "cuda"; }

/* Runs an engine call; on failure records it with the engine's message. */
static int ok_call(int rc, const char *err, const char *what)
{
    if (rc) check(0, "%s: %s", what, err);
    return rc == 0;
}

/* A server's batches come in every size up to its max batch. The first round
 * over the sizes runs op by op, the second captures each chain, and the third
 * must replay every one from a graph. */
static void graph_cache_check(const shape *s, const char *path)
{
    enum { M = 24 };
    finc_engine *e = open_engine(path, "cuda", M);
    if (!e) return;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    uint8_t *px = xmalloc((size_t)M * cfg->c * cfg->h * cfg->w);
    char err[600];
    long cap0 = 0, rep0 = 0, cap1 = 0, rep1 = 0;
    size_t used0 = 0;
    int ok = 1;
    for (int r = 0; r < 3 && ok; r++) {
        if (r == 1) used0 = finc_cuda_used_bytes();
        if (r == 2) finc_cuda_graph_counts(finc_engine_backend(e), &cap0, &rep0);
        for (int B = 1; B <= M && ok; B++)
            ok = ok_call(finc_sample(e, B, 1.0f, 5, 0, px, err, sizeof err), err, "device sample");
    }
    finc_cuda_graph_counts(finc_engine_backend(e), &cap1, &rep1);
    /* What the captured graphs hold on the device sizes the cache (at most 512 chains). */
    const double graph_mib = ((double)finc_cuda_used_bytes() - (double)used0) / 1048576.0;
    if (ok)
        check(cap1 == cap0 && rep1 - rep0 == M && cap0 == M,
              "%s: batch sizes 1..%d in turn, three rounds: the third replays every one from a graph "
              "(%ld captured in all, %ld replays in the third round; the graphs hold %.1f MiB of device memory)",
              s->name, M, cap1, rep1 - rep0, graph_mib);
    free(px);
    finc_engine_free(e);
}

static void engine_suite(const shape *s, const char *path)
{
    const int max_batch = s->big ? 100 : 4;
    const int n = s->big ? (quick ? 4 : 16) : 9;
    fprintf(stderr, "[engine] %s: %d images, max batch %d\n", s->name, n, max_batch);
    finc_engine *ec = open_engine(path, "cpu", max_batch);
    finc_engine *ed = ec ? open_engine(path, dev_backend(), max_batch) : NULL;
    if (!ec || !ed) {
        finc_engine_free(ec);
        return;
    }
    const finc_config *cfg = &finc_engine_model(ec)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w, nD = (size_t)n * D;
    uint8_t *v = rand_pixels(nD), *pc = xmalloc(nD), *pd = xmalloc(nD);
    float *zc = xmalloc(nD * sizeof(float)), *zd = xmalloc(nD * sizeof(float));
    float *u = rand_floats(nD, 0.0, 1.0);
    double lpc[n], lpd[n];
    char err[600], w[256];

    /* encode */
    if (ok_call(finc_encode(ec, n, v, NULL, zc, lpc, err, sizeof err), err, "cpu encode") &&
        ok_call(finc_encode(ed, n, v, NULL, zd, lpd, err, sizeof err), err, "device encode")) {
        double zmax = 0;
        for (size_t i = 0; i < nD; i++) zmax = fmax(zmax, fabs(zc[i]));
        snprintf(w, sizeof w, "%s encode latents (max |z| %.3g)", s->name, zmax);
        /* |dz| <= TOL_Z max(1, |z|): atol = rtol = TOL_Z. */
        cmp_floats(w, zd, zc, nD, TOL_Z, TOL_Z);
        snprintf(w, sizeof w, "%s encode log p (cpu image 0: %.6g nats)", s->name, lpc[0]);
        cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    /* the terms of log p one by one: what the anomaly score is built from */
    const int S = finc_config_stat_count(&finc_engine_model(ec)->cfg);
    double *stc = xmalloc((size_t)n * S * sizeof(double)), *std_ = xmalloc((size_t)n * S * sizeof(double));
    if (ok_call(finc_encode_stats(ec, n, v, NULL, NULL, lpc, stc, err, sizeof err), err, "cpu encode stats") &&
        ok_call(finc_encode_stats(ed, n, v, NULL, NULL, lpd, std_, err, sizeof err), err, "device encode stats")) {
        /* a term may be as far off as the log p it is part of, but no further */
        double lpmax = 0;
        for (int i = 0; i < n; i++) lpmax = fmax(lpmax, fabs(lpc[i]));
        snprintf(w, sizeof w, "%s encode statistics, %d terms per image", s->name, S);
        cmp_doubles(w, std_, stc, n * S, TOL_LP_ATOL + TOL_LP_RTOL * lpmax, 0);
    }
    free(stc);
    free(std_);
    if (ok_call(finc_encode(ec, n, v, u, NULL, lpc, err, sizeof err), err, "cpu encode u") &&
        ok_call(finc_encode(ed, n, v, u, NULL, lpd, err, sizeof err), err, "device encode u")) {
        snprintf(w, sizeof w, "%s encode log p with offsets u", s->name);
        cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    if (ok_call(finc_score(ec, n, v, 4, 99, 0, lpc, err, sizeof err), err, "cpu score") &&
        ok_call(finc_score(ed, n, v, 4, 99, 0, lpd, err, sizeof err), err, "device score")) {
        snprintf(w, sizeof w, "%s score, 4 importance samples", s->name);
        cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    /* decode the CPU's latents on both */
    if (ok_call(finc_decode(ec, n, zc, pc, err, sizeof err), err, "cpu decode") &&
        ok_call(finc_decode(ed, n, zc, pd, err, sizeof err), err, "device decode")) {
        snprintf(w, sizeof w, "%s decode of the cpu latents", s->name);
        cmp_pixels(w, pd, pc, nD, TOL_PIX_FRACTION);
    }
    /* exact round trip on the device */
    if (ok_call(finc_encode(ed, n, v, NULL, zd, lpd, err, sizeof err), err, "device encode") &&
        ok_call(finc_decode(ed, n, zd, pd, err, sizeof err), err, "device decode")) {
        snprintf(w, sizeof w, "%s round trip decode(encode(v)) == v", s->name);
        cmp_pixels(w, pd, v, nD, 0.0);
    }
    /* seeded samples */
    const float temps[2] = {1.0f, 0.7f};
    for (int t = 0; t < 2; t++)
        if (ok_call(finc_sample(ec, n, temps[t], 1234, 0, pc, err, sizeof err), err, "cpu sample") &&
            ok_call(finc_sample(ed, n, temps[t], 1234, 0, pd, err, sizeof err), err, "device sample")) {
            snprintf(w, sizeof w, "%s seeded samples, T=%.1f", s->name, temps[t]);
            cmp_pixels(w, pd, pc, nD, TOL_PIX_FRACTION);
        }
    /* batch independence on the device: image 3 alone and inside a batch of 7 */
    if (n >= 7 && ok_call(finc_sample(ed, 7, 1.0f, 77, 0, pc, err, sizeof err), err, "device sample 7") &&
        ok_call(finc_sample(ed, 1, 1.0f, 77, 3, pd, err, sizeof err), err, "device sample 1")) {
        snprintf(w, sizeof w, "%s sample alone == inside a batch of 7", s->name);
        cmp_pixels(w, pd, pc + 3 * D, D, TOL_PIX_FRACTION);
    }
    free(v), free(pc), free(pd), free(zc), free(zd), free(u);
    finc_engine_free(ed);
    finc_engine_free(ec);
    if (!cpu_as_device && !strcmp(s->name, "tiny")) graph_cache_check(s, path);
}

/* ---- 3. timings ---------------------------------------------------------------------------- */

typedef enum { T_ENCODE, T_SAMPLE } t_kind;

/* Median seconds of one call of n images after warm warm-ups (on CUDA the
 * second run records the graph). Negative on failure. */
static double time_engine(finc_engine *e, t_kind kind, int n, int warm, int reps)
{
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *v = rand_pixels((size_t)n * D), *out = xmalloc((size_t)n * D);
    double *lp = xmalloc((size_t)n * sizeof(double)), t[64];
    char err[600];
    int k = 0;
    for (int r = -warm; r < reps && r < 64; r++) {
        const double t0 = now();
        const int rc = kind == T_ENCODE ? finc_encode(e, n, v, NULL, NULL, lp, err, sizeof err)
                                        : finc_sample(e, n, 1.0f, 42 + r, 0, out, err, sizeof err);
        const double dt = now() - t0;
        if (rc) {
            check(0, "timing %s: %s", kind == T_ENCODE ? "encode" : "sample", err);
            k = 0;
            break;
        }
        if (r >= 0) t[k++] = dt;
    }
    free(v), free(out), free(lp);
    return k ? median(t, k) : -1.0;
}

typedef struct {
    const char *model;
    double enc100, smp100, enc1, smp1, smp100_nograph, smp1_nograph, smp100_tf32, tf32_lp_rel;
    double cpu_smp100, cpu_enc100, draw100;
    double flops;                 /* of one image's pass (finc_model_flops) */
} timing;

static void json_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void json_line(const char *fmt, ...)
{
    if (!json) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(json, fmt, ap);
    va_end(ap);
    fputc('\n', json);
    fflush(json);
}

static void with_env(const char *name, const char *value)
{
    if (value) setenv(name, value, 1);
    else unsetenv(name);
}

static void time_suite(const shape *s, const char *path, timing *tm)
{
    const int N = time_images, reps = quick ? 3 : 7, reps1 = quick ? 5 : 21;
    memset(tm, 0, sizeof *tm);
    tm->model = s->name;
    tm->smp100_nograph = tm->smp1_nograph = tm->smp100_tf32 = tm->tf32_lp_rel = -1;
    tm->cpu_smp100 = tm->cpu_enc100 = -1;
    fprintf(stderr, "[time] %s\n", s->name);
    finc_engine *e = open_engine(path, dev_backend(), N);
    if (!e) return;
    tm->flops = finc_model_flops(finc_engine_model(e));
    tm->enc100 = time_engine(e, T_ENCODE, N, 2, reps);
    tm->smp100 = time_engine(e, T_SAMPLE, N, 2, reps);
    tm->enc1 = time_engine(e, T_ENCODE, 1, 2, reps1);
    tm->smp1 = time_engine(e, T_SAMPLE, 1, 2, reps1);

    /* The host's share of sampling: finc_sample's own latent draw. */
    const size_t D = (size_t)s->spec.c * s->spec.h * s->spec.w;
    float *lat = xmalloc((size_t)N * D * sizeof(float));
    double td[5];
    for (int r = 0; r < 5; r++) {
        const double t0 = now();
        finc_draw_latents_rows(e, N, 1, 0, 1.0f, lat);
        td[r] = now() - t0;
    }
    tm->draw100 = median(td, 5);
    free(lat);
    finc_engine_free(e);

    if (!cpu_as_device) {
        with_env("FINC_CUDA_GRAPHS", "0");
        finc_engine *eg = open_engine(path, "cuda", N);
        with_env("FINC_CUDA_GRAPHS", NULL);
        if (eg) {
            tm->smp100_nograph = time_engine(eg, T_SAMPLE, N, 2, reps);
            tm->smp1_nograph = time_engine(eg, T_SAMPLE, 1, 2, reps1);
            finc_engine_free(eg);
        }
        /* TF32 GEMMs: speed, and how far log p moves from the FP32 engine. */
        with_env("FINC_CUDA_TF32", "1");
        finc_engine *et = open_engine(path, "cuda", N);
        with_env("FINC_CUDA_TF32", NULL);
        finc_engine *ef = et ? open_engine(path, "cuda", N) : NULL;
        if (et && ef) {
            tm->smp100_tf32 = time_engine(et, T_SAMPLE, N, 2, reps);
            enum { n = 8 };
            uint8_t *v = rand_pixels(n * D);
            double a[n], b[n];
            char err[600];
            if (finc_encode(et, n, v, NULL, NULL, a, err, sizeof err) == 0 &&
                finc_encode(ef, n, v, NULL, NULL, b, err, sizeof err) == 0) {
                tm->tf32_lp_rel = 0;
                for (int i = 0; i < n; i++) tm->tf32_lp_rel = fmax(tm->tf32_lp_rel, fabs(a[i] - b[i]) / fabs(b[i]));
            }
            free(v);
        }
        finc_engine_free(et);
        finc_engine_free(ef);
    }
    if (cpu_time) {
        finc_engine *ec = open_engine(path, "cpu", N);
        if (ec) {
            tm->cpu_smp100 = time_engine(ec, T_SAMPLE, N, 0, 1);
            tm->cpu_enc100 = time_engine(ec, T_ENCODE, N, 0, 1);
            finc_engine_free(ec);
        }
    }
    printf("  %s: encode %d %.4f s, sample %d %.4f s, batch-1 encode %.2f ms, sample %.2f ms\n", s->name, N,
           tm->enc100, N, tm->smp100, 1e3 * tm->enc1, 1e3 * tm->smp1);
    json_line("{\"bench\": \"cuda_engine\", \"model\": \"%s\", \"images\": %d, \"encode100_s\": %.6f, \"sample100_s\": %.6f, "
              "\"encode1_s\": %.6f, \"sample1_s\": %.6f, \"sample100_nograph_s\": %.6f, \"sample1_nograph_s\": %.6f, "
              "\"sample100_tf32_s\": %.6f, \"tf32_logp_rel\": %.3g, \"cpu_sample100_s\": %.4f, "
              "\"cpu_encode100_s\": %.4f, \"host_draw100_s\": %.6f, \"gflop_per_image\": %.4f}",
              s->name, N, tm->enc100, tm->smp100, tm->enc1, tm->smp1, tm->smp100_nograph, tm->smp1_nograph,
              tm->smp100_tf32, tm->tf32_lp_rel, tm->cpu_smp100, tm->cpu_enc100, tm->draw100, tm->flops / 1e9);
}

/* ---- FInC inverse alone -------------------------------------------------------------------- */

typedef struct {
    const char *model;
    int level, C, H, W, B, launches_baseline;
    double ours, base_sync, base_nosync;
} finc_timing;

static double time_inverse(finc_backend *be, float *x, const float *y, const finc_step *st, int C, int B,
                           int H, int W, int k, int reps)
{
    char err[600];
    double t[16];
    int n = 0;
    for (int r = -1; r < 5 && n < 16; r++) {
        const double t0 = now();
        for (int i = 0; i < reps; i++) be->finc_inverse(be, x, y, st, C, B, H, W, k);
        if (be->sync(be, err, sizeof err)) {
            check(0, "finc_inverse timing: %s", err);
            return -1;
        }
        if (r >= 0) t[n++] = (now() - t0) / reps;
    }
    return median(t, n);
}

static double time_baseline(finc_backend *be, float *x, const float *y, const finc_step *st, int C, int B,
                            int H, int W, int k, int sync_each)
{
    char err[600];
    double t[3];
    for (int r = 0; r < 3; r++) {
        const double t0 = now();
        if (finc_cuda_finc_inverse_baseline(be, x, y, st, C, B, H, W, k, sync_each, err, sizeof err)) {
            check(0, "baseline: %s", err);
            return -1;
        }
        t[r] = now() - t0;
    }
    return median(t, 3);
}

static int finc_suite(const shape *s, const char *path, finc_timing *out, int max_out)
{
    finc_model m;
    char err[600];
    int n_out = 0;
    if (finc_model_load(&m, path, err, sizeof err)) {
        check(0, "%s: load: %s", s->name, err);
        return 0;
    }
    finc_backend *be = finc_backend_cuda_new(&m, time_images, -1, err, sizeof err);
    if (!be) {
        check(0, "%s: %s", s->name, err);
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
            float *y = rand_floats(n, -2.0, 2.0), *xo = xmalloc(n * sizeof(float)), *xb = xmalloc(n * sizeof(float));
            float *dy = put(be, y, n * sizeof(float)), *dx = put(be, NULL, n * sizeof(float));
            finc_timing *ft = &out[n_out++];
            *ft = (finc_timing){s->name, l, C, H, W, B, (H + W - 1) * (C / 4), 0, 0, 0};
            ft->ours = time_inverse(be, dx, dy, &lv->steps[0], C, B, H, W, k, 20);
            get(be, xo, dx, n * sizeof(float), "finc inverse");
            ft->base_sync = time_baseline(be, dx, dy, &lv->steps[0], C, B, H, W, k, 1);
            ft->base_nosync = time_baseline(be, dx, dy, &lv->steps[0], C, B, H, W, k, 0);
            get(be, xb, dx, n * sizeof(float), "finc baseline");
            char w[200];
            snprintf(w, sizeof w, "%s level %d FInC inverse kernel == per-(diagonal, channel) baseline, B=%d",
                     s->name, l, B);
            cmp_floats(w, xo, xb, n, TOL_INV_ATOL, TOL_INV_RTOL);
            printf("  %s level %d (C=%d, %dx%d) B=%d: ours %.1f us, baseline %.1f us (%d launches, synced), "
                   "%.1f us unsynced: %.1fx\n", s->name, l, C, H, W, B, 1e6 * ft->ours, 1e6 * ft->base_sync,
                   ft->launches_baseline, 1e6 * ft->base_nosync, ft->base_sync / ft->ours);
            json_line("{\"bench\": \"cuda_finc_inverse\", \"model\": \"%s\", \"level\": %d, \"C\": %d, \"H\": %d, "
                      "\"W\": %d, \"batch\": %d, \"ours_s\": %.8f, \"baseline_sync_s\": %.8f, "
                      "\"baseline_nosync_s\": %.8f, \"baseline_launches\": %d}",
                      s->name, l, C, H, W, B, ft->ours, ft->base_sync, ft->base_nosync, ft->launches_baseline);
            be->release(be, dy);
            be->release(be, dx);
            free(y), free(xo), free(xb);
        }
        if (m.cfg.levels == 1) break;
    }
    be->destroy(be);
    finc_model_free(&m);
    return n_out;
}

/* ---- report ------------------------------------------------------------------------------------- */

static const char *ms(double s, char *buf)
{
    if (s < 0) snprintf(buf, 32, "n/a");
    else snprintf(buf, 32, "%.2f ms", 1e3 * s);
    return buf;
}

static void report(const timing *tm, int nt, const finc_timing *ft, int nf, const char *date)
{
    char a[32], b[32], c[32], d[32], e[32], f[32];
    printf("\n---- paste into docs/benchmarks.md ----\n\n");
    printf("### CUDA engine (make cuda-check, %s)\n\n", date);
    printf("Device: %s. Random weights of the paper's shapes (tests/testmodel.c), FP32 GEMMs (cuBLAS),\n"
           "medians; sample includes drawing the latents on the host (Philox) and the pixel download.\n\n",
           device_desc);
    const int N = time_images;
    printf("| model | encode %d | sample %d | paper, sample 100 | batch-1 encode | batch-1 sample | "
           "sample %d, no graphs | batch-1 sample, no graphs | sample %d, TF32 | CPU engine, sample %d |\n",
           N, N, N, N, N);
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nt; i++) {
        double paper = strcmp(tm[i].model, "mnist") == 0 ? 0.09 : strcmp(tm[i].model, "cifar10") == 0 ? 0.41 : -1;
        if (N != 100) paper = -1;
        char p[32], g[32], cpu[48];
        if (tm[i].cpu_smp100 > 0)
            snprintf(cpu, sizeof cpu, "%.3f s (%.0fx)", tm[i].cpu_smp100, tm[i].cpu_smp100 / tm[i].smp100);
        else snprintf(cpu, sizeof cpu, "n/a");
        if (paper > 0) snprintf(p, sizeof p, "%.2f s (%.1fx faster)", paper, paper / tm[i].smp100);
        else snprintf(p, sizeof p, "n/a");
        printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", tm[i].model, ms(tm[i].enc100, a),
               ms(tm[i].smp100, b), p, ms(tm[i].enc1, c), ms(tm[i].smp1, d), ms(tm[i].smp100_nograph, e),
               ms(tm[i].smp1_nograph, f), ms(tm[i].smp100_tf32, g), cpu);
    }
    for (int i = 0; i < nt; i++) {
        printf("\n%s: %.1f GFLOP per %d images, so encode runs at %.1f TFLOP/s and sample at %.1f", tm[i].model,
               tm[i].flops * N / 1e9, N, tm[i].flops * N / tm[i].enc100 / 1e12, tm[i].flops * N / tm[i].smp100 / 1e12);
        printf("; drawing the latents on the host (Philox, %d threads) takes %.2f ms", omp_get_max_threads(),
               1e3 * tm[i].draw100);
        if (tm[i].tf32_lp_rel >= 0) printf("; TF32 GEMMs move log p by %.2g relative", tm[i].tf32_lp_rel);
        printf(".");
    }
    printf("\n\n#### FInC inverse alone: one launch per unit vs one launch per (diagonal, channel)\n\n");
    printf("| model | level | C, H x W | batch | this kernel | baseline, synced (launches) | baseline, unsynced | "
           "speed-up |\n|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nf; i++)
        printf("| %s | %d | %d, %dx%d | %d | %.1f us | %.1f us (%d) | %.1f us | %.1fx |\n", ft[i].model, ft[i].level,
               ft[i].C, ft[i].H, ft[i].W, ft[i].B, 1e6 * ft[i].ours, 1e6 * ft[i].base_sync, ft[i].launches_baseline,
               1e6 * ft[i].base_nosync, ft[i].base_sync / ft[i].ours);
    printf("\n---- end ----\n");
}

static void usage(void)
{
    fprintf(stderr, "usage: cuda_check [--quick] [--json PATH] [--cpu-as-device] [--no-cpu-time] [--no-time] "
                    "[--ops-only] [--small] [--time-images N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL;
    int do_time = 1, ops_only = 0, small = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--cpu-as-device")) cpu_as_device = 1;
        else if (!strcmp(argv[i], "--no-cpu-time")) cpu_time = 0;
        else if (!strcmp(argv[i], "--no-time")) do_time = 0;
        else if (!strcmp(argv[i], "--ops-only")) ops_only = 1, do_time = 0;
        else if (!strcmp(argv[i], "--small")) small = 1, do_time = 0;  /* no paper shapes */
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--time-images") && i + 1 < argc && atoi(argv[i + 1]) > 0)
            time_images = atoi(argv[++i]);
        else usage();
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (json_path && !(json = fopen(json_path, "w"))) {
        perror(json_path);
        return 2;
    }
    char date[32];
    const time_t t = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    if (!cpu_as_device) {
        const int count = finc_cuda_device_count();
        if (count <= 0) {
            char why[512] = "";
            finc_cuda_describe(0, why, sizeof why);
            fprintf(stderr, "cuda_check: no usable CUDA device (%s); --cpu-as-device checks this harness "
                            "without one\n", why);
            return 2;
        }
        const char *env = getenv("FINC_CUDA_DEVICE");
        if (finc_cuda_describe(env && *env ? atoi(env) : 0, device_desc, sizeof device_desc)) {
            fprintf(stderr, "cuda_check: %s\n", device_desc);
            return 2;
        }
    }
    printf("cuda_check %s: %s\n", date, device_desc);
    json_line("{\"bench\": \"cuda_check\", \"device\": \"%s\", \"date\": \"%s\", \"cpu_as_device\": %d}", device_desc,
              date, cpu_as_device);
    if (testmodel_tmpdir(tmpdir, sizeof tmpdir)) {
        perror("tmpdir");
        return 2;
    }

    const shape shapes[] = {
        {"tiny", spec(1, 8, 8, 2, 2, 3, 8, 1), 0},
        {"k2-8x12", spec(1, 8, 12, 2, 1, 2, 8, 1), 0},
        {"L3-noactnorm", spec(3, 8, 8, 3, 1, 3, 8, 0), 0},
        {"k5-4x8", spec(2, 4, 8, 1, 3, 5, 12, 1), 0},
        {"c3-48x40", spec(3, 48, 40, 2, 1, 3, 16, 1), 0},      /* reductions over several chunks */
        {"c16-96x96", spec(16, 96, 96, 1, 1, 3, 8, 1), 0},     /* Cq 16: 144 KiB image, threads loop */
        {"mnist", spec(1, 28, 28, 2, 16, 3, 512, 1), 1},
        {"cifar10", spec(3, 32, 32, 3, 32, 3, 512, 1), 1},
    };
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    char paths[8][700] = {{0}};
    const double t0 = now();

    printf("\n== 1. ops, %s against cpu ==\n", dev_backend());
    for (int i = 0; i < n_shapes; i++)
        if (!shapes[i].big && write_model(&shapes[i], paths[i], sizeof paths[i]) == 0) op_suite(&shapes[i], paths[i]);

    if (!ops_only) {
        printf("\n== 2. engines, %s against cpu ==\n", dev_backend());
        for (int i = 0; i < n_shapes; i++)
            if ((!small || !shapes[i].big) && write_model(&shapes[i], paths[i], sizeof paths[i]) == 0)
                engine_suite(&shapes[i], paths[i]);
    }

    timing tm[2];
    finc_timing ft[8];
    int nt = 0, nf = 0;
    if (do_time) {
        printf("\n== 3. timings ==\n");
        for (int i = 0; i < n_shapes; i++)
            if (shapes[i].big) {
                time_suite(&shapes[i], paths[i], &tm[nt++]);
                if (!cpu_as_device) nf += finc_suite(&shapes[i], paths[i], ft + nf, 8 - nf);
            }
        report(tm, nt, ft, nf, date);
    }
    for (int i = 0; i < n_shapes; i++)
        if (paths[i][0]) unlink(paths[i]);
    testmodel_rmdir(tmpdir);
    printf("\ncuda_check: %d checks passed, %d failed (%.0f s)\n", n_pass, n_fail, now() - t0);
    json_line("{\"bench\": \"cuda_check_summary\", \"passed\": %d, \"failed\": %d}", n_pass, n_fail);
    if (json) fclose(json);
    return n_fail ? 1 : 0;
}

#endif
