/* The affine coupling on the CPU (model.md section 2). The net's three
 * convolutions are GEMMs over all B*H*W pixels of the batch:
 *   conv1 3x3:  im2col of x1 (cin*9, N), then W1 (F, cin*9) . col
 *   conv2 1x1:  W2 (F, F) . h1
 *   conv3 3x3:  W3 with taps outermost (cout*9, F, derived at load) . h2, then a shift-add over
 *               the nine taps; F is large and cout small, so this avoids an
 *               im2col of F*9 rows.
 * The shift-add is fused with the affine transform and the log-det. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu.h"
#include "gemm.h"

/* col (cin*9, B*H*W) from x (cin, B, H, W), zero padding 1. */
static void im2col3x3(float *col, const float *x, int cin, int B, int H, int W)
{
    const size_t HW = (size_t)H * W, N = (size_t)B * HW;
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < cin * 9; r++)
        for (int b = 0; b < B; b++) {
            const int ci = r / 9, dy = (r % 9) / 3 - 1, dx = r % 3 - 1;
            const float *src = x + ((size_t)ci * B + b) * HW;
            float *dst = col + (size_t)r * N + (size_t)b * HW;
            for (int h = 0; h < H; h++) {
                const int sh = h + dy;
                float *d = dst + (size_t)h * W;
                if (sh < 0 || sh >= H) {
                    memset(d, 0, (size_t)W * sizeof(float));
                    continue;
                }
                const float *s = src + (size_t)sh * W;
                for (int w = 0; w < W; w++) {
                    const int sw = w + dx;
                    d[w] = (sw >= 0 && sw < W) ? s[sw] : 0.0f;
                }
            }
        }
}

static void bias_relu(float *h, const float *bias, int F, size_t N)
{
#pragma omp parallel for schedule(static)
    for (int f = 0; f < F; f++) {
        float *r = h + (size_t)f * N;
        const float bf = bias[f];
        for (size_t n = 0; n < N; n++) {
            const float v = r[n] + bf;
            r[n] = v > 0.0f ? v : 0.0f;
        }
    }
}

/* The net: fills c->taps (cout*9, N) for the shift-add. */
static void coupling_net(finc_cpu_ctx *c, const float *x1, const finc_coupling *cp,
                         int B, int H, int W)
{
    const int N = B * H * W, F = cp->width, K1 = cp->cin * 9;
    im2col3x3(c->col, x1, cp->cin, B, H, W);
    finc_sgemm(F, N, K1, cp->w1, K1, c->col, N, c->h1, N, 0.0f);
    bias_relu(c->h1, cp->b1, F, (size_t)N);
    finc_sgemm(F, N, F, cp->w2, F, c->h1, N, c->h2, N, 0.0f);
    bias_relu(c->h2, cp->b2, F, (size_t)N);
    finc_sgemm(cp->cout * 9, N, F, cp->w3_taps, F, c->h2, N, c->taps, N, 0.0f);
}

/* Net output channel co at pixel (h, w) of image b: shift-add of the taps,
 * bias and the exp(3 logs) scale. */
static inline float net_out(const float *taps, const finc_coupling *cp, int co, int b, int h, int w,
                            int B, int H, int W)
{
    const size_t HW = (size_t)H * W, N = (size_t)B * HW;
    float acc = 0.0f;
    for (int dy = -1; dy <= 1; dy++) {
        const int sh = h + dy;
        if (sh < 0 || sh >= H) continue;
        for (int dx = -1; dx <= 1; dx++) {
            const int sw = w + dx;
            if (sw < 0 || sw >= W) continue;
            const int t = (dy + 1) * 3 + (dx + 1);
            acc += taps[((size_t)co * 9 + t) * N + (size_t)b * HW + (size_t)sh * W + sw];
        }
    }
    return (acc + cp->b3[co]) * cp->scale3[co];
}

static inline float log_scale_of(float hs) { return 2.0f * tanhf(0.5f * hs); }

void finc_cpu_coupling_forward(finc_backend *be, float *x, double *logdet, const finc_coupling *cp,
                               int B, int H, int W)
{
    finc_cpu_ctx *c = be->ctx;
    const size_t HW = (size_t)H * W, N = (size_t)B * HW;
    const int half = cp->cin;
    coupling_net(c, x, cp, B, H, W);
    float *x2 = x + (size_t)half * N;
    const float *taps = c->taps;
    /* Per image, so each image's log-det sums in the same order at any batch. */
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        double ld = 0.0;
        for (int j = 0; j < half; j++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < W; w++) {
                    const float ls = log_scale_of(net_out(taps, cp, 2 * j, b, h, w, B, H, W));
                    const float t = net_out(taps, cp, 2 * j + 1, b, h, w, B, H, W);
                    float *v = x2 + (size_t)j * N + (size_t)b * HW + (size_t)h * W + w;
                    *v = *v * expf(ls) + t;
                    ld += ls;
                }
        logdet[b] += ld;
    }
}

void finc_cpu_coupling_inverse(finc_backend *be, float *x, const finc_coupling *cp,
                               int B, int H, int W)
{
    finc_cpu_ctx *c = be->ctx;
    const size_t HW = (size_t)H * W, N = (size_t)B * HW;
    const int half = cp->cin;
    coupling_net(c, x, cp, B, H, W);
    float *x2 = x + (size_t)half * N;
    const float *taps = c->taps;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int j = 0; j < half; j++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < W; w++) {
                    const float ls = log_scale_of(net_out(taps, cp, 2 * j, b, h, w, B, H, W));
                    const float t = net_out(taps, cp, 2 * j + 1, b, h, w, B, H, W);
                    float *v = x2 + (size_t)j * N + (size_t)b * HW + (size_t)h * W + w;
                    *v = (*v - t) * expf(-ls);
                }
}
