/* The FInC unit on the CPU: the masked, padded k x k convolution and its
 * inverse along anti-diagonal wavefronts (model.md section 2).
 *
 * Every quarter is handled in "TL space": the quarter's image flipped so that
 * its kernel (finc_tl, derived at load) looks up and to the left. A pixel
 * (hp, wp) of TL space then depends only on pixels (sh, sw) with sh <= hp,
 * sw <= wp, so all pixels with the same hp + wp can be solved at once. */
#include <omp.h>

#include "cpu.h"

typedef struct {
    int Cq, B, H, W, k;
    size_t cs;                    /* channel stride: B*H*W */
} finc_dims;

static const int quarter_flip_y[4] = {0, 0, 1, 1};
static const int quarter_flip_x[4] = {0, 1, 0, 1};

/* Sum over the kernel taps of output channel co at TL-space pixel (hp, wp),
 * optionally leaving out the current-pixel tap. x is the quarter's image b. */
static inline float tap_sum(const float *x, const float *w, const finc_dims *d, int fy, int fx,
                            int co, int hp, int wp, int skip_current)
{
    const int k = d->k, H = d->H, W = d->W;
    float acc = 0.0f;
    for (int ci = 0; ci < d->Cq; ci++) {
        const float *wk = w + (size_t)(co * d->Cq + ci) * k * k;
        const float *xc = x + ci * d->cs;
        for (int i = 0; i < k; i++) {
            int sh = hp - (k - 1) + i;
            if (sh < 0) continue;
            const float *row = xc + (size_t)(fy ? H - 1 - sh : sh) * W;
            for (int j = 0; j < k; j++) {
                int sw = wp - (k - 1) + j;
                if (sw < 0 || (skip_current && i == k - 1 && j == k - 1)) continue;
                acc += wk[i * k + j] * row[fx ? W - 1 - sw : sw];
            }
        }
    }
    return acc;
}

/* Solve one pixel of one quarter: forward substitution over its channels. */
static inline void solve_pixel(float *x, const float *y, const float *w, const finc_dims *d,
                               int fy, int fx, int hp, int wp)
{
    const int k = d->k, cur = (k - 1) * k + (k - 1);
    const size_t p = (size_t)(fy ? d->H - 1 - hp : hp) * d->W + (size_t)(fx ? d->W - 1 - wp : wp);
    for (int co = 0; co < d->Cq; co++) {
        float acc = y[co * d->cs + p] - tap_sum(x, w, d, fy, fx, co, hp, wp, 1);
        for (int ci = 0; ci < co; ci++)
            acc -= w[(size_t)(co * d->Cq + ci) * k * k + cur] * x[ci * d->cs + p];
        x[co * d->cs + p] = acc;
    }
}

static finc_dims dims_of(int C, int B, int H, int W, int k)
{
    finc_dims d = {C / 4, B, H, W, k, (size_t)B * H * W};
    return d;
}

/* Offset of quarter q, image b in a (C, B, H, W) tensor. */
static inline size_t quarter_base(const finc_dims *d, int q, int b)
{
    return ((size_t)q * d->Cq * d->B + b) * (size_t)d->H * d->W;
}

void finc_cpu_finc_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                           int C, int B, int H, int W, int k)
{
    const finc_dims d = dims_of(C, B, H, W, k);
    const int rows = 4 * B * H;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < rows; t++) {
        int q = t / (B * H), b = (t / H) % B, hp = t % H;
        int fy = quarter_flip_y[q], fx = quarter_flip_x[q];
        const size_t base = quarter_base(&d, q, b);
        const float *w = st->finc_tl[q];
        const size_t rowoff = (size_t)(fy ? H - 1 - hp : hp) * W;
        for (int wp = 0; wp < W; wp++) {
            size_t p = rowoff + (size_t)(fx ? W - 1 - wp : wp);
            for (int co = 0; co < d.Cq; co++)
                y[base + co * d.cs + p] = tap_sum(x + base, w, &d, fy, fx, co, hp, wp, 0);
        }
    }
}

void finc_cpu_finc_inverse_wavefront(float *x, const float *y, const finc_step *st, int C, int B, int H, int W,
                                     int k)
{
    const finc_dims d = dims_of(C, B, H, W, k);
#pragma omp parallel
    for (int diag = 0; diag <= H + W - 2; diag++) {
        const int h0 = diag - (W - 1) > 0 ? diag - (W - 1) : 0;
        const int h1 = diag < H - 1 ? diag : H - 1;
        const int n = h1 - h0 + 1, items = 4 * B * n;
        /* The implicit barrier at the end of this loop is the wavefront step. */
#pragma omp for schedule(static)
        for (int t = 0; t < items; t++) {
            int q = t / (B * n), b = (t / n) % B, hp = h0 + t % n;
            const size_t base = quarter_base(&d, q, b);
            solve_pixel(x + base, y + base, st->finc_tl[q], &d, quarter_flip_y[q],
                        quarter_flip_x[q], hp, diag - hp);
        }
    }
}

/* One (quarter, image) pair solved whole, in raster order. */
static void solve_unit(float *x, const float *y, const finc_step *st, const finc_dims *d, int q, int b)
{
    const size_t base = quarter_base(d, q, b);
    for (int hp = 0; hp < d->H; hp++)
        for (int wp = 0; wp < d->W; wp++)
            solve_pixel(x + base, y + base, st->finc_tl[q], d, quarter_flip_y[q], quarter_flip_x[q], hp, wp);
}

void finc_cpu_finc_inverse_units(float *x, const float *y, const finc_step *st, int C, int B, int H, int W, int k)
{
    const finc_dims d = dims_of(C, B, H, W, k);
#pragma omp parallel for schedule(static)
    for (int u = 0; u < 4 * B; u++) solve_unit(x, y, st, &d, u / B, u % B);
}

void finc_cpu_finc_inverse(finc_backend *be, float *x, const float *y, const finc_step *st,
                           int C, int B, int H, int W, int k)
{
    /* The four quarters of every image are independent systems. When they
     * share out evenly over the threads (one in eight idle at most), each
     * thread solves whole ones with no barrier until the end; otherwise (one
     * image on many cores) the threads go down the anti-diagonals together. */
    const int units = 4 * B, T = omp_get_max_threads(), per = (units + T - 1) / T;
    if ((double)per * T <= 1.125 * units) finc_cpu_finc_inverse_units(x, y, st, C, B, H, W, k);
    else finc_cpu_finc_inverse_wavefront(x, y, st, C, B, H, W, k);
}

void finc_cpu_finc_inverse_raster(float *x, const float *y, const finc_step *st,
                                  int C, int B, int H, int W, int k)
{
    const finc_dims d = dims_of(C, B, H, W, k);
    for (int u = 0; u < 4 * B; u++) solve_unit(x, y, st, &d, u / B, u % B);
}
