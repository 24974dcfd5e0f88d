/* The CUDA backend against the CPU backend, op by op and engine by engine (as
 * ggml's test-backend-ops), and the CUDA backend's own machinery: the graph
 * cache and its key, capture failures, start-up warm-up, TF32 drift, batch
 * independence, device faults. make cuda-emu-check runs it on the emulator
 * (kernels/emu), tools/cuda_check.sh on a GPU. The timings are bench/cuda_bench.c.
 *
 *   test_backend_ops [--small] [--ops-only] [--quick] [--json PATH] [--cpu-as-device] [--emu-faults]
 *                    [--only NAME,NAME...]
 *
 * --small leaves out the paper's MNIST and CIFAR-10 shapes; --only keeps the
 * named shapes (the sanitizers' runs, which are slow); --emu-faults runs
 * the fault checks, which need the emulator's fault injection (EMU_FAULT_FILE)
 * and leave the device dead, so they run last. Exit status 0 only when every
 * check passed, 2 when no device could be used. */
#include <math.h>
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
    fprintf(stderr, "test_backend_ops: built without CUDA (nvcc not found, or CUDA=0)\n");
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

/* TF32 (--precision tf32) rounds the F x F GEMM's operands to 10 mantissa
 * bits (relative 2^-11 each): log p may move by that much of the coupling
 * terms' scale, a few 1e-4 relative on random weights; pixels where
 * 256*sigmoid lands near an integer move by one level. */
#define TOL_TF32_LP_RTOL 2e-3
#define TOL_TF32_PIX_FRACTION 0.05

static int quick, emu_faults;

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
    float *oc = h_xmalloc(nout * sizeof(float)), *od = h_xmalloc(nout * sizeof(float));
    double ldc[nld > 0 ? nld : 1], ldd[nld > 0 ? nld : 1];
    finc_backend *bes[2] = {p->cpu, p->dev};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        finc_backend *be = bes[i];
        op_args a = args;
        const size_t bytes = (nin > nout ? nin : nout) * sizeof(float);
        float *tmp = h_xmalloc(bytes);
        memset(tmp, 0, bytes);
        memcpy(tmp, x, nin * sizeof(float));
        a.a = h_put(be, tmp, bytes);
        a.b = h_put(be, NULL, bytes);
        a.c = h_put(be, NULL, (nld > 0 ? nld : 1) * sizeof(double));
        free(tmp);
        fn(be, &a);
        if (h_get(be, i ? od : oc, a.b, nout * sizeof(float), what)) ok = 0;
        else if (nld > 0) be->download(be, i ? ldd : ldc, a.c, nld * sizeof(double));
        be->release(be, a.a);
        be->release(be, a.b);
        be->release(be, a.c);
    }
    if (ok) {
        if (nout > 0) h_cmp_floats(what, od, oc, nout, atol, rtol);
        if (nld > 0) {
            char w[400];
            snprintf(w, sizeof w, "%s (per-image sum)", what);
            h_cmp_doubles(w, ldd, ldc, nld, TOL_SUM_ATOL, TOL_SUM_RTOL);
        }
    }
    free(oc);
    free(od);
}

/* Out-of-place ops read a and write b; in-place ones copy a to b first. */
static void copy_ab(finc_backend *be, op_args *a, size_t n)
{
    float *t = h_xmalloc(n * sizeof(float));
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
    float *lat = h_put(be, NULL, (size_t)a->B * D * sizeof(float));
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
    uint8_t *pix = h_rand_pixels(n);
    float *u = h_rand_floats(n, 0.0, 1.0);
    for (int with_u = 0; with_u < 2; with_u++) {
        float *xs[2] = {h_xmalloc(n * sizeof(float)), h_xmalloc(n * sizeof(float))};
        double lds[2][B];
        finc_backend *bes[2] = {p->cpu, p->dev};
        int ok = 1;
        for (int i = 0; i < 2; i++) {
            finc_backend *be = bes[i];
            uint8_t *dp = h_put(be, pix, n);
            float *du = with_u ? h_put(be, u, n * sizeof(float)) : NULL;
            float *dx = h_put(be, NULL, n * sizeof(float));
            double *dl = h_put(be, NULL, B * sizeof(double));
            be->preprocess(be, dx, dl, dp, du, B, C, H, W, cfg->alpha);
            if (h_get(be, xs[i], dx, n * sizeof(float), "preprocess")) ok = 0;
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
            h_cmp_floats(w, xs[1], xs[0], n, 1e-6, 1e-6);
            snprintf(w, sizeof w, "%s preprocess%s log-det", tag, with_u ? " (offsets u)" : "");
            h_cmp_doubles(w, lds[1], lds[0], B, 1e-8, 1e-12);
        }
        free(xs[0]);
        free(xs[1]);
    }
    /* Post-processing of logits spread over the whole pixel range. */
    float *x = h_rand_floats(n, -9.0, 9.0);
    uint8_t *px[2] = {h_xmalloc(n), h_xmalloc(n)};
    finc_backend *bes[2] = {p->cpu, p->dev};
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        finc_backend *be = bes[i];
        float *dx = h_put(be, x, n * sizeof(float));
        uint8_t *dp = h_put(be, NULL, n);
        be->postprocess(be, dp, dx, B, C, H, W, cfg->alpha);
        if (h_get(be, px[i], dp, n, "postprocess")) ok = 0;
        be->release(be, dx);
        be->release(be, dp);
    }
    char w[128];
    snprintf(w, sizeof w, "%s postprocess pixels", tag);
    if (ok) h_cmp_pixels(w, px[1], px[0], n, TOL_PIX_FRACTION);
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
    float *x = h_rand_floats(n, -2.0, 2.0);
    op_args a = {.m = m, .C = C / 4, .B = B, .H = 2 * H, .W = 2 * W};
#define NAME(s) (snprintf(w, sizeof w, "%s level %d %s", tag, l, s), w)
    run_pair(p, NAME("squeeze"), f_squeeze, a, x, n, n, 0, 0, 0);
    a = (op_args){.m = m, .C = C / 4, .B = B, .H = 2 * H, .W = 2 * W};
    run_pair(p, NAME("unsqueeze"), f_unsqueeze, a, x, n, n, 0, 0, 0);
    if (lv->nsteps > 0) {
        const finc_step *st = &lv->steps[0];
        a = (op_args){.m = m, .st = st, .cp = &st->coupling, .C = C, .B = B, .H = H, .W = W};
        run_pair(p, NAME("finc_forward"), f_finc_fwd, a, x, n, n, 0, TOL_OP_ATOL, TOL_OP_RTOL);
        const int modes = h_cpu_as_device ? 1 : FINC_CUDA_FINC_NMODES;
        /* k = 3 has its own kernel; the general one must agree too */
        const int kernels = !h_cpu_as_device && m->cfg.kernel == 3 ? 2 : 1;
        for (int general = 0; general < kernels; general++)
            for (int mode = 0; mode < modes; mode++) {
                static const char *const mode_names[] = {"auto", "smem image+weights", "smem image",
                                                         "smem weights", "global"};
                if (!h_cpu_as_device) {
                    finc_cuda_set_finc_mode(p->dev, mode);
                    finc_cuda_set_finc_general(p->dev, general);
                }
                char s[120];
                snprintf(s, sizeof s, "finc_inverse [%s%s]", mode_names[mode],
                         m->cfg.kernel != 3 ? "" : general ? ", general-k kernel" : ", k = 3 kernel");
                run_pair(p, NAME(s), f_finc_inv, a, x, n, n, 0, TOL_INV_ATOL, TOL_INV_RTOL);
            }
        if (!h_cpu_as_device) {
            finc_cuda_set_finc_mode(p->dev, FINC_CUDA_FINC_AUTO);
            finc_cuda_set_finc_general(p->dev, 0);
        }
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

static void op_suite(const h_shape *s, const char *path)
{
    finc_model m;
    char err[600];
    if (finc_model_load(&m, path, err, sizeof err)) {
        h_check(0, "%s: load: %s", s->name, err);
        return;
    }
    pair p = {finc_backend_cpu_new(&m, 3, 0, err, sizeof err), NULL};
    if (p.cpu) p.dev = h_open_device_backend(&m, 3, FINC_PRECISION_FP32, err, sizeof err);
    if (!p.cpu || !p.dev) {
        h_check(0, "%s: backend: %s", s->name, err);
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
        h_check(huge == NULL && ok, "%s: a 1 PiB alloc returns NULL and the backend still syncs%s%s", s->name,
              ok ? "" : ": ", ok ? "" : err);
        if (huge) p.dev->release(p.dev, huge);
    }
    if (p.dev) p.dev->destroy(p.dev);
    if (p.cpu) p.cpu->destroy(p.cpu);
    finc_model_free(&m);
}

/* The model contract: an image's result does not depend on its batch. Image
 * 3 encoded alone, inside a batch of 7 and inside a full batch (three bucket
 * sizes on CUDA, so three GEMM shapes), and sampled alone and inside a batch
 * of 7. The GEMMs' N is all that changes; on CUDA their algorithm is pinned
 * (kernels/gemm.cu), so the results must agree exactly. The CPU backend
 * standing in (--cpu-as-device) promises less: its GEMMs (oneDNN) may sum in
 * another order at another N, so there the engine tolerances hold. */
static void batch_independence(finc_engine *e, const char *name, const uint8_t *v0, size_t D, int max_batch)
{
    const int nb[3] = {1, 7, max_batch};
    uint8_t *v = h_rand_pixels((size_t)(max_batch > 7 ? max_batch : 7) * D);
    float *z[3];
    double lp[3][max_batch];
    char err[600], w[256];
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        z[i] = h_xmalloc((size_t)nb[i] * D * sizeof(float));
        /* image 3 of the batch is v0's image 3; alone, it is the only one */
        uint8_t *px = nb[i] == 1 ? (uint8_t *)v0 + 3 * D : v;
        if (nb[i] > 3) memcpy(v + 3 * D, v0 + 3 * D, D);
        ok = ok && h_ok_call(finc_encode(e, nb[i], px, NULL, z[i], lp[i], err, sizeof err), err, "device encode");
    }
    for (int i = 1; i < 3 && ok; i++) {
        const float *a = z[0], *b = z[i] + 3 * D;
        double dz = 0;
        for (size_t j = 0; j < D; j++) dz = fmax(dz, fabs((double)a[j] - b[j]));
        const double dl = fabs(lp[0][0] - lp[i][3]);
        const int ok_i = h_cpu_as_device ? dz <= TOL_Z && dl <= TOL_LP_ATOL + TOL_LP_RTOL * fabs(lp[0][0])
                                         : dz == 0 && dl == 0;
        h_check(ok_i, "%s encode of an image alone == inside a batch of %d%s: max |dz| %.3g, |d log p| %.3g", name,
                nb[i], h_cpu_as_device ? " (within the engine tolerances)" : " (bit for bit)", dz, dl);
    }
    uint8_t *p1 = h_xmalloc(D), *p7 = h_xmalloc(7 * D);
    if (h_ok_call(finc_sample(e, 7, 1.0f, 77, 0, p7, err, sizeof err), err, "device sample 7") &&
        h_ok_call(finc_sample(e, 1, 1.0f, 77, 3, p1, err, sizeof err), err, "device sample 1")) {
        snprintf(w, sizeof w, "%s sample alone == inside a batch of 7", name);
        h_cmp_pixels(w, p1, p7 + 3 * D, D, h_cpu_as_device ? TOL_PIX_FRACTION : 0.0);
    }
    for (int i = 0; i < 3; i++) free(z[i]);
    free(v), free(p1), free(p7);
}

static void engine_suite(const h_shape *s, const char *path)
{
    const int max_batch = s->big ? 100 : 4;
    const int n = s->big ? (quick ? 4 : 16) : 9;
    fprintf(stderr, "[engine] %s: %d images, max batch %d\n", s->name, n, max_batch);
    finc_engine *ec = h_open_engine(path, "cpu", max_batch, FINC_PRECISION_FP32);
    finc_engine *ed = ec ? h_open_engine(path, h_dev_backend(), max_batch, FINC_PRECISION_FP32) : NULL;
    if (!ec || !ed) {
        finc_engine_free(ec);
        return;
    }
    const finc_config *cfg = &finc_engine_model(ec)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w, nD = (size_t)n * D;
    uint8_t *v = h_rand_pixels(nD), *pc = h_xmalloc(nD), *pd = h_xmalloc(nD);
    float *zc = h_xmalloc(nD * sizeof(float)), *zd = h_xmalloc(nD * sizeof(float));
    float *u = h_rand_floats(nD, 0.0, 1.0);
    double lpc[n], lpd[n];
    char err[600], w[256];

    /* encode */
    if (h_ok_call(finc_encode(ec, n, v, NULL, zc, lpc, err, sizeof err), err, "cpu encode") &&
        h_ok_call(finc_encode(ed, n, v, NULL, zd, lpd, err, sizeof err), err, "device encode")) {
        double zmax = 0;
        for (size_t i = 0; i < nD; i++) zmax = fmax(zmax, fabs(zc[i]));
        snprintf(w, sizeof w, "%s encode latents (max |z| %.3g)", s->name, zmax);
        /* |dz| <= TOL_Z max(1, |z|): atol = rtol = TOL_Z. */
        h_cmp_floats(w, zd, zc, nD, TOL_Z, TOL_Z);
        snprintf(w, sizeof w, "%s encode log p (cpu image 0: %.6g nats)", s->name, lpc[0]);
        h_cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    /* the terms of log p one by one: what the anomaly score is built from */
    const int S = finc_config_stat_count(&finc_engine_model(ec)->cfg);
    double *stc = h_xmalloc((size_t)n * S * sizeof(double)), *std_ = h_xmalloc((size_t)n * S * sizeof(double));
    if (h_ok_call(finc_encode_stats(ec, n, v, NULL, NULL, lpc, stc, err, sizeof err), err, "cpu encode stats") &&
        h_ok_call(finc_encode_stats(ed, n, v, NULL, NULL, lpd, std_, err, sizeof err), err, "device encode stats")) {
        /* a term may be as far off as the log p it is part of, but no further */
        double lpmax = 0;
        for (int i = 0; i < n; i++) lpmax = fmax(lpmax, fabs(lpc[i]));
        snprintf(w, sizeof w, "%s encode statistics, %d terms per image", s->name, S);
        h_cmp_doubles(w, std_, stc, n * S, TOL_LP_ATOL + TOL_LP_RTOL * lpmax, 0);
    }
    free(stc);
    free(std_);
    if (h_ok_call(finc_encode(ec, n, v, u, NULL, lpc, err, sizeof err), err, "cpu encode u") &&
        h_ok_call(finc_encode(ed, n, v, u, NULL, lpd, err, sizeof err), err, "device encode u")) {
        snprintf(w, sizeof w, "%s encode log p with offsets u", s->name);
        h_cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    if (h_ok_call(finc_score(ec, n, v, 4, 99, 0, lpc, err, sizeof err), err, "cpu score") &&
        h_ok_call(finc_score(ed, n, v, 4, 99, 0, lpd, err, sizeof err), err, "device score")) {
        snprintf(w, sizeof w, "%s score, 4 importance samples", s->name);
        h_cmp_doubles(w, lpd, lpc, n, TOL_LP_ATOL, TOL_LP_RTOL);
    }
    /* decode the CPU's latents on both */
    if (h_ok_call(finc_decode(ec, n, zc, pc, err, sizeof err), err, "cpu decode") &&
        h_ok_call(finc_decode(ed, n, zc, pd, err, sizeof err), err, "device decode")) {
        snprintf(w, sizeof w, "%s decode of the cpu latents", s->name);
        h_cmp_pixels(w, pd, pc, nD, TOL_PIX_FRACTION);
    }
    /* exact round trip on the device */
    if (h_ok_call(finc_encode(ed, n, v, NULL, zd, lpd, err, sizeof err), err, "device encode") &&
        h_ok_call(finc_decode(ed, n, zd, pd, err, sizeof err), err, "device decode")) {
        snprintf(w, sizeof w, "%s round trip decode(encode(v)) == v", s->name);
        h_cmp_pixels(w, pd, v, nD, 0.0);
    }
    /* seeded samples */
    const float temps[2] = {1.0f, 0.7f};
    for (int t = 0; t < 2; t++)
        if (h_ok_call(finc_sample(ec, n, temps[t], 1234, 0, pc, err, sizeof err), err, "cpu sample") &&
            h_ok_call(finc_sample(ed, n, temps[t], 1234, 0, pd, err, sizeof err), err, "device sample")) {
            snprintf(w, sizeof w, "%s seeded samples, T=%.1f", s->name, temps[t]);
            h_cmp_pixels(w, pd, pc, nD, TOL_PIX_FRACTION);
        }
    if (n >= 7) batch_independence(ed, s->name, v, D, max_batch);
    free(v), free(pc), free(pd), free(zc), free(zd), free(u);
    finc_engine_free(ed);
    finc_engine_free(ec);
}

/* ---- the CUDA backend's machinery ------------------------------------------------- */

static void status_of(finc_engine *e, finc_backend_status *st) { finc_engine_status(e, st); }

/* Warm-up captures the three chains of every bucket; then batches of every
 * size from 1 to the max run from graphs only. */
static void graph_cache_check(const h_shape *s, const char *path)
{
    enum { M = 24 };
    finc_engine *e = h_open_engine(path, "cuda", M, FINC_PRECISION_FP32);
    if (!e) return;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    uint8_t *px = h_xmalloc((size_t)M * cfg->c * cfg->h * cfg->w);
    char err[600];
    finc_backend_status st0, st1;
    if (h_ok_call(finc_engine_warm_up(e, err, sizeof err), err, "warm-up")) {
        status_of(e, &st0);
        h_check(st0.graphs && st0.buckets == 6 && st0.graph_captures == 4 * st0.buckets &&
                    st0.graph_capture_failures == 0,
                "%s max batch %d: warm-up captures 4 chains (encode, with offsets, decode from either latent buffer) "
                "x %d buckets (1 2 4 8 16 24): %ld graphs in %.3f s, "
                "holding %.1f MiB of device memory",
                s->name, M, st0.buckets, st0.graph_captures, st0.warm_seconds, st0.warm_device_mib);
        long nodes = 0, intended = 0, mismatched = 0;
        finc_cuda_graph_node_totals(finc_engine_backend(e), &nodes, &intended, &mismatched);
        h_check(nodes > 0 && nodes == intended && mismatched == 0,
                "%s: the %ld chains captured (each kind, each bucket) have %ld graph nodes in all, the launches their "
                "ops intend %ld (one per kernel, memset and GEMM: no library kernels besides); %ld chains differ",
                s->name, st0.graph_captures, nodes, intended, mismatched);
        int ok = 1;
        for (int B = 1; B <= M && ok; B++)
            ok = h_ok_call(finc_sample(e, B, 1.0f, 5, 0, px, err, sizeof err), err, "device sample");
        status_of(e, &st1);
        if (ok)
            h_check(st1.graph_captures == st0.graph_captures && st1.graph_replays - st0.graph_replays == M,
                    "%s: then batches of 1..%d each replay a graph (%ld replays, %ld new captures)", s->name, M,
                    st1.graph_replays - st0.graph_replays, st1.graph_captures - st0.graph_captures);
    }
    free(px);
    finc_engine_free(e);
}

/* A graph is replayed only under the settings it was captured with: the FInC
 * placement mode and kernel, and the shared-memory limit, change the captured work. */
static void graph_key_check(const h_shape *s, const char *path)
{
    enum { M = 4, B = 3 };
    finc_engine *e = h_open_engine(path, "cuda", M, FINC_PRECISION_FP32);
    finc_engine *ec = e ? h_open_engine(path, "cpu", M, FINC_PRECISION_FP32) : NULL;
    if (!e || !ec) {
        finc_engine_free(e);
        return;
    }
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *ref = h_xmalloc(B * D), *px = h_xmalloc(B * D);
    char err[600], w[300];
    finc_backend *be = finc_engine_backend(e);
    if (!h_ok_call(finc_engine_warm_up(e, err, sizeof err), err, "warm-up") ||
        !h_ok_call(finc_sample(ec, B, 1.0f, 9, 0, ref, err, sizeof err), err, "cpu sample"))
        goto out;
    static const struct {
        const char *what;
        int mode;
        size_t smem;              /* 0: the device's */
        int replays_old;          /* the auto-mode graph may serve it */
    } steps[] = {
        {"auto mode (captured at warm-up)", FINC_CUDA_FINC_AUTO, 0, 1},
        {"global mode", FINC_CUDA_FINC_GLOBAL, 0, 0},
        {"smem-weights mode", FINC_CUDA_FINC_SMEM_WEIGHTS, 0, 0},
        {"auto mode under a 1 KiB shared-memory limit", FINC_CUDA_FINC_AUTO, 1024, 0},
        {"the general-k inverse kernel", FINC_CUDA_FINC_AUTO, 0, 0},
        {"auto mode again", FINC_CUDA_FINC_AUTO, 0, 1},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        finc_cuda_set_finc_mode(be, steps[i].mode);
        finc_cuda_set_smem_limit(be, steps[i].smem);
        finc_cuda_set_finc_general(be, strstr(steps[i].what, "general") != NULL);
        finc_backend_status a, b, c;
        status_of(e, &a);
        int ok = h_ok_call(finc_sample(e, B, 1.0f, 9, 0, px, err, sizeof err), err, "device sample");
        status_of(e, &b);
        if (!ok) break;
        snprintf(w, sizeof w, "%s %s, first run: pixels as the cpu's", s->name, steps[i].what);
        h_cmp_pixels(w, px, ref, B * D, TOL_PIX_FRACTION);
        if (steps[i].replays_old) {
            h_check(b.graph_replays == a.graph_replays + 1 && b.graph_captures == a.graph_captures,
                    "%s %s: replays the graph captured under these settings", s->name, steps[i].what);
            continue;
        }
        h_check(b.graph_replays == a.graph_replays && b.graph_captures == a.graph_captures,
                "%s %s: no graph of other settings replayed (replays %ld -> %ld)", s->name, steps[i].what,
                a.graph_replays, b.graph_replays);
        ok = h_ok_call(finc_sample(e, B, 1.0f, 9, 0, px, err, sizeof err), err, "device sample") &&
             h_ok_call(finc_sample(e, B, 1.0f, 9, 0, px, err, sizeof err), err, "device sample");
        status_of(e, &c);
        if (!ok) break;
        /* the second run captures the chain and launches its graph, the third replays it */
        h_check(c.graph_captures == b.graph_captures + 1 && c.graph_replays == b.graph_replays + 2,
                "%s %s: its own graph captured on the second run and replayed on the third", s->name, steps[i].what);
        snprintf(w, sizeof w, "%s %s, replayed: pixels as the cpu's", s->name, steps[i].what);
        h_cmp_pixels(w, px, ref, B * D, TOL_PIX_FRACTION);
    }
out:
    free(ref), free(px);
    finc_engine_free(ec);
    finc_engine_free(e);
}

/* TF32 on the F x F GEMMs against FP32, on the same device: the drift that
 * --precision tf32 costs, measured and held to its stated tolerance. */
static void precision_check(const h_shape *s, const char *path)
{
    const int n = s->big ? (quick ? 4 : 8) : 6;
    finc_engine *ef = h_open_engine(path, "cuda", n, FINC_PRECISION_FP32);
    finc_engine *et = ef ? h_open_engine(path, "cuda", n, FINC_PRECISION_TF32) : NULL;
    if (!ef || !et) {
        finc_engine_free(ef);
        return;
    }
    const finc_config *cfg = &finc_engine_model(ef)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *v = h_rand_pixels(n * D), *pf = h_xmalloc(n * D), *pt = h_xmalloc(n * D);
    double lf[n], lt[n];
    char err[600], w[300];
    if (h_ok_call(finc_encode(ef, n, v, NULL, NULL, lf, err, sizeof err), err, "fp32 encode") &&
        h_ok_call(finc_encode(et, n, v, NULL, NULL, lt, err, sizeof err), err, "tf32 encode")) {
        double worst = 0;
        for (int i = 0; i < n; i++) worst = fmax(worst, fabs(lt[i] - lf[i]) / fabs(lf[i]));
        snprintf(w, sizeof w, "%s TF32 log p against FP32 (relative drift %.3g, tolerance %.0e)", s->name, worst,
                 TOL_TF32_LP_RTOL);
        h_cmp_doubles(w, lt, lf, n, 0, TOL_TF32_LP_RTOL);
        h_json_line("{\"check\": \"tf32_drift\", \"model\": \"%s\", \"logp_rel\": %.4g}", s->name, worst);
    }
    if (h_ok_call(finc_sample(ef, n, 1.0f, 3, 0, pf, err, sizeof err), err, "fp32 sample") &&
        h_ok_call(finc_sample(et, n, 1.0f, 3, 0, pt, err, sizeof err), err, "tf32 sample")) {
        snprintf(w, sizeof w, "%s TF32 samples against FP32", s->name);
        h_cmp_pixels(w, pt, pf, n * D, TOL_TF32_PIX_FRACTION);
    }
    free(v), free(pf), free(pt);
    finc_engine_free(et);
    finc_engine_free(ef);
}

static void write_fault(const char *path, const char *spec)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fprintf(f, "%s\n", spec);
    fclose(f);
}

/* A failed capture is counted, its chain runs op by op with correct results,
 * and capture is tried again after the back-off (emulator injection). */
static void capture_failure_check(const h_shape *s, const char *path, const char *fault)
{
    enum { M = 2 };
    finc_engine *e = h_open_engine(path, "cuda", M, FINC_PRECISION_FP32);
    if (!e) return;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *ref = h_xmalloc(D), *px = h_xmalloc(D);
    char err[600];
    finc_backend_status a, b;
    write_fault(fault, "1 capture");
    int ok = h_ok_call(finc_engine_warm_up(e, err, sizeof err), err, "warm-up") &&
             h_ok_call(finc_sample(e, 1, 1.0f, 4, 0, ref, err, sizeof err), err, "device sample");
    status_of(e, &a);
    if (ok)
        h_check(a.graph_capture_failures == 1 && !a.graphs,
                "%s: a capture that fails in the warm-up is counted (%ld) and capture backs off (graphs in use: %d)",
                s->name, a.graph_capture_failures, a.graphs);
    int runs = 0, same = 1;
    for (; ok && runs < 40; runs++) {
        ok = h_ok_call(finc_sample(e, 1, 1.0f, 4, 0, px, err, sizeof err), err, "device sample");
        same &= memcmp(px, ref, D) == 0;
        status_of(e, &b);
        if (b.graphs && b.graph_captures > a.graph_captures) break;
    }
    if (ok)
        /* the back-off is 16 chains from the failure, some of them the warm-up's own */
        h_check(b.graphs && b.graph_captures > a.graph_captures && runs >= 1 && runs <= 16 && same,
                "%s: capture tried again after the back-off (%d chains after the warm-up, not at once), the graphs "
                "back in use, every result the same", s->name, runs + 1);
    write_fault(fault, "0");
    free(ref), free(px);
    finc_engine_free(e);
}

/* A non-sticky device error fails its batch only; a sticky one kills the
 * backend at once, says why, and every later call fails (emulator injection;
 * leaves the emulated device dead, so it runs last). */
static void fault_check(const h_shape *s, const char *path, const char *fault)
{
    enum { M = 2 };
    finc_engine *e = h_open_engine(path, "cuda", M, FINC_PRECISION_FP32);
    if (!e) return;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)cfg->c * cfg->h * cfg->w;
    uint8_t *ref = h_xmalloc(D), *px = h_xmalloc(D);
    char err[600];
    finc_backend_status st;
    if (!h_ok_call(finc_sample(e, 1, 1.0f, 4, 0, ref, err, sizeof err), err, "device sample")) goto out;
    write_fault(fault, "1 transient");
    int rc = finc_sample(e, 1, 1.0f, 4, 0, px, err, sizeof err);
    status_of(e, &st);
    h_check(rc != 0 && strstr(err, "cudaErrorLaunchOutOfResources") && !st.dead,
            "%s: a non-sticky error fails its batch (%.90s) and the backend lives on", s->name, rc ? err : "no error");
    rc = finc_sample(e, 1, 1.0f, 4, 0, px, err, sizeof err);
    h_check(rc == 0 && memcmp(px, ref, D) == 0, "%s: the next batch succeeds with the same pixels", s->name);
    write_fault(fault, "1 sticky");
    rc = finc_sample(e, 1, 1.0f, 4, 0, px, err, sizeof err);
    status_of(e, &st);
    h_check(rc != 0 && st.dead && strstr(st.why, "cudaErrorIllegalAddress"),
            "%s: a sticky error kills the backend at once (status: dead %d, %.90s)", s->name, st.dead, st.why);
    rc = finc_sample(e, 1, 1.0f, 4, 0, px, err, sizeof err);
    h_check(rc != 0 && strstr(err, "unrecoverable") && strstr(err, "cudaErrorIllegalAddress"),
            "%s: every later batch fails, saying why (%.120s)", s->name, rc ? err : "no error");
out:
    free(ref), free(px);
    finc_engine_free(e);
}

static void usage(void)
{
    fprintf(stderr, "usage: test_backend_ops [--small] [--ops-only] [--quick] [--json PATH] [--cpu-as-device] "
                    "[--emu-faults] [--only NAME,NAME...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL;
    int ops_only = 0, small = 0;
    static char only[256] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--cpu-as-device")) h_cpu_as_device = 1;
        else if (!strcmp(argv[i], "--ops-only")) ops_only = 1;
        else if (!strcmp(argv[i], "--small")) small = 1;
        else if (!strcmp(argv[i], "--emu-faults")) emu_faults = 1;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) snprintf(only, sizeof only, ",%.250s,", argv[++i]);
        else usage();
    }
    /* A shape is run unless --only names others. */
    int run[16] = {0};
    for (int i = 0; i < h_n_shapes; i++) {
        char key[64];
        snprintf(key, sizeof key, ",%s,", h_shapes[i].name);
        run[i] = !only[0] || strstr(only, key) != NULL;
    }
    if (h_start("test_backend_ops", "test", json_path)) return 2;
    char paths[16][700] = {{0}};
    const double t0 = h_now();

    printf("\n== 1. ops, %s against cpu ==\n", h_dev_backend());
    for (int i = 0; i < h_n_shapes; i++)
        if (run[i] && !h_shapes[i].big && h_write_model(&h_shapes[i], paths[i], sizeof paths[i]) == 0)
            op_suite(&h_shapes[i], paths[i]);

    if (!ops_only) {
        printf("\n== 2. engines, %s against cpu ==\n", h_dev_backend());
        for (int i = 0; i < h_n_shapes; i++)
            if (run[i] && (!small || !h_shapes[i].big) && h_write_model(&h_shapes[i], paths[i], sizeof paths[i]) == 0)
                engine_suite(&h_shapes[i], paths[i]);
    }
    if (!ops_only && !h_cpu_as_device && run[0]) {
        printf("\n== 3. the CUDA backend: graphs, precision ==\n");
        graph_cache_check(&h_shapes[0], paths[0]);
        graph_key_check(&h_shapes[0], paths[0]);
        for (int i = 0; i < h_n_shapes; i++)
            if ((!small || h_shapes[i].big || i == 0 || i == 4) && paths[i][0]) precision_check(&h_shapes[i], paths[i]);
        if (emu_faults) {
            char fault[720];
            snprintf(fault, sizeof fault, "%s.fault", paths[0]);
            setenv("EMU_FAULT_FILE", fault, 1);
            printf("\n== 4. faults (the emulator's injection) ==\n");
            capture_failure_check(&h_shapes[0], paths[0], fault);
            fault_check(&h_shapes[0], paths[0], fault);
            unlink(fault);
        }
    }
    for (int i = 0; i < h_n_shapes; i++)
        if (paths[i][0]) unlink(paths[i]);
    h_tmpdir_free();
    printf("\ntest_backend_ops: %d checks passed, %d failed (%.0f s)\n", h_pass, h_fail, h_now() - t0);
    h_json_line("{\"test\": \"test_backend_ops_summary\", \"passed\": %d, \"failed\": %d}", h_pass, h_fail);
    if (h_json) fclose(h_json);
    return h_fail ? 1 : 0;
}

#endif
