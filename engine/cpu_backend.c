/* The CPU backend: memory, the element-wise ops, and the table that joins
 * them with the FInC unit (cpu_finc.c) and the coupling (cpu_coupling.c).
 * Tensors are (C, B, H, W); see backend.h. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu.h"
#include "error.h"
#include "gemm.h"

static void *cpu_alloc(finc_backend *be, size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}
static void cpu_release(finc_backend *be, void *p) { free(p); }
static void cpu_copy(finc_backend *be, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
}
static void cpu_zero(finc_backend *be, void *dst, size_t bytes) { memset(dst, 0, bytes); }
static int cpu_sync(finc_backend *be, char *err, size_t errlen) { return 0; }
/* The CPU runs each op as it is called: nothing is queued, no copy overlaps. */
static void cpu_submit(finc_backend *be) {}

static void cpu_preprocess(finc_backend *be, float *x, double *logdet, const uint8_t *pixels,
                           const float *u, int B, int C, int H, int W, double alpha)
{
    const size_t HW = (size_t)H * W, D = (size_t)C * HW;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        double ld = 0.0;
        for (int c = 0; c < C; c++)
            for (size_t p = 0; p < HW; p++) {
                const size_t i = b * D + c * HW + p;
                const double v = pixels[i] + (u ? (double)u[i] : 0.5);
                const double s = (v / 256.0 + alpha) * (1.0 - 2.0 * alpha);
                const double l1 = log(s), l2 = log1p(-s);
                x[((size_t)c * B + b) * HW + p] = (float)(l1 - l2);
                ld += -l1 - l2;
            }
        logdet[b] += ld;
    }
}

static void cpu_postprocess(finc_backend *be, uint8_t *pixels, const float *x,
                            int B, int C, int H, int W, double alpha)
{
    const size_t HW = (size_t)H * W, D = (size_t)C * HW;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (size_t p = 0; p < HW; p++) {
                const double y = x[((size_t)c * B + b) * HW + p];
                const double s = (1.0 / (1.0 + exp(-y))) / (1.0 - 2.0 * alpha) - alpha;
                const double v = floor(256.0 * s);
                pixels[b * D + c * HW + p] = (uint8_t)(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v);
            }
}

/* New channel 4c + 2dy + dx holds pixel (2i+dy, 2j+dx) of channel c. */
static void cpu_squeeze(finc_backend *be, float *y, const float *x, int C, int B, int H, int W)
{
    const int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++)
            for (int s = 0; s < 4; s++) {
                const int dy = s / 2, dx = s % 2;
                const float *src = x + ((size_t)c * B + b) * H * W;
                float *dst = y + ((size_t)(4 * c + s) * B + b) * H2 * W2;
                for (int i = 0; i < H2; i++)
                    for (int j = 0; j < W2; j++)
                        dst[i * W2 + j] = src[(2 * i + dy) * W + 2 * j + dx];
            }
}

static void cpu_unsqueeze(finc_backend *be, float *x, const float *y, int C, int B, int H, int W)
{
    const int H2 = H / 2, W2 = W / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++)
            for (int s = 0; s < 4; s++) {
                const int dy = s / 2, dx = s % 2;
                float *dst = x + ((size_t)c * B + b) * H * W;
                const float *src = y + ((size_t)(4 * c + s) * B + b) * H2 * W2;
                for (int i = 0; i < H2; i++)
                    for (int j = 0; j < W2; j++)
                        dst[(2 * i + dy) * W + 2 * j + dx] = src[i * W2 + j];
            }
}

static void cpu_actnorm_forward(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    const size_t N = (size_t)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float t = st->an_t[c], e = expf(-st->an_s[c]);
        float *r = x + c * N;
        for (size_t n = 0; n < N; n++) r[n] = (r[n] - t) * e;
    }
}

static void cpu_actnorm_inverse(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    const size_t N = (size_t)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float t = st->an_t[c], e = expf(st->an_s[c]);
        float *r = x + c * N;
        for (size_t n = 0; n < N; n++) r[n] = r[n] * e + t;
    }
}

static void cpu_conv1x1_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                                int C, int B, int HW)
{
    finc_sgemm(C, B * HW, C, st->w1x1, C, x, B * HW, y, B * HW, 0.0f);
}

static void cpu_conv1x1_inverse(finc_backend *be, float *y, const float *x, const finc_step *st,
                                int C, int B, int HW)
{
    finc_sgemm(C, B * HW, C, st->w1x1_inv, C, x, B * HW, y, B * HW, 0.0f);
}

static void cpu_gaussian_logp(finc_backend *be, double *logp, const float *z, int C, int B, int HW)
{
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        double s = 0.0;
        for (int c = 0; c < C; c++) {
            const float *r = z + ((size_t)c * B + b) * HW;
            for (int p = 0; p < HW; p++) s += (double)r[p] * r[p];
        }
        logp[b] += -0.5 * s;
    }
}

static void cpu_latents_write(finc_backend *be, float *lat, int D, int offset, const float *z,
                              int C, int B, int HW)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++)
            memcpy(lat + (size_t)b * D + offset + (size_t)c * HW, z + ((size_t)c * B + b) * HW,
                   (size_t)HW * sizeof(float));
}

static void cpu_latents_read(finc_backend *be, float *z, const float *lat, int D, int offset,
                             int C, int B, int HW)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++)
            memcpy(z + ((size_t)c * B + b) * HW, lat + (size_t)b * D + offset + (size_t)c * HW,
                   (size_t)HW * sizeof(float));
}

/* No graphs and no padding: a chain runs at the batch it is given. */
static int cpu_batch_bucket(finc_backend *be, int B) { return B; }
static int cpu_warm_up(finc_backend *be, int (*warm)(void *, int, char *, size_t), void *user, char *err,
                       size_t errlen)
{
    return 0;
}
static void cpu_status(finc_backend *be, finc_backend_status *s) { memset(s, 0, sizeof *s); }

static void cpu_destroy(finc_backend *be)
{
    if (!be) return;
    finc_cpu_ctx *c = be->ctx;
    if (c) {
        free(c->col);
        free(c->h1);
        free(c->h2);
        free(c->taps);
        free(c);
    }
    free(be);
}

finc_backend *finc_backend_cpu_new(const finc_model *m, int max_batch, int threads,
                                   char *err, size_t errlen)
{
    finc_backend *be = calloc(1, sizeof *be);
    finc_cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        finc_errorf(err, errlen, "out of memory");
        return NULL;
    }
    be->ctx = c;
    be->destroy = cpu_destroy;
    if (threads > 0) omp_set_num_threads(threads);
    c->threads = omp_get_max_threads();
    finc_gemm_set_threads(c->threads);
    c->max_batch = max_batch;

    const finc_scratch_sizes sz = finc_model_scratch_sizes(m, max_batch);
    c->col = malloc(sz.col * sizeof(float));
    c->h1 = malloc(sz.hidden * sizeof(float));
    c->h2 = malloc(sz.hidden * sizeof(float));
    c->taps = malloc(sz.taps * sizeof(float));
    if (!c->col || !c->h1 || !c->h2 || !c->taps) {
        finc_errorf(err, errlen, "out of memory for activations (max batch %d)", max_batch);
        cpu_destroy(be);
        return NULL;
    }
    *be = (finc_backend){
        .name = "cpu",
        .ctx = c,
        .alloc = cpu_alloc,
        .release = cpu_release,
        .upload = cpu_copy,
        .download = cpu_copy,
        .zero = cpu_zero,
        .sync = cpu_sync,
        .submit = cpu_submit,
        .host_alloc = cpu_alloc,
        .host_release = cpu_release,
        .upload_async = cpu_copy,
        .preprocess = cpu_preprocess,
        .postprocess = cpu_postprocess,
        .squeeze = cpu_squeeze,
        .unsqueeze = cpu_unsqueeze,
        .finc_forward = finc_cpu_finc_forward,
        .finc_inverse = finc_cpu_finc_inverse,
        .actnorm_forward = cpu_actnorm_forward,
        .actnorm_inverse = cpu_actnorm_inverse,
        .conv1x1_forward = cpu_conv1x1_forward,
        .conv1x1_inverse = cpu_conv1x1_inverse,
        .coupling_forward = finc_cpu_coupling_forward,
        .coupling_inverse = finc_cpu_coupling_inverse,
        .gaussian_logp = cpu_gaussian_logp,
        .latents_write = cpu_latents_write,
        .latents_read = cpu_latents_read,
        .batch_bucket = cpu_batch_bucket,
        .warm_up = cpu_warm_up,
        .status = cpu_status,
        .destroy = cpu_destroy,
    };
    if (finc_backend_check_table(be, err, errlen) != 0) {
        cpu_destroy(be);
        return NULL;
    }
    return be;
}
