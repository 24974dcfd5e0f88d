/* Anomaly scores: features, the whitened Gaussian KDE, conformal p-values, and
 * the "anomaly" metadata block (docs/anomaly.md). */
#include "engine/anomaly.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"

#define N_PIXEL_FEATURES 5
static const char *const pixel_features[N_PIXEL_FEATURES] = {
    "complexity_bpd", "pixel_mean", "pixel_std", "pixel_fraction_0", "pixel_fraction_255",
};

int finc_anomaly_base_count(const finc_config *cfg) { return finc_config_stat_count(cfg) + N_PIXEL_FEATURES; }

int finc_anomaly_feature_count(const finc_config *cfg) { return finc_anomaly_base_count(cfg) + FINC_ANOMALY_PCA + 1; }

void finc_anomaly_feature_name(const finc_config *cfg, int i, char *buf, size_t n)
{
    const int S = finc_config_stat_count(cfg), base = S + N_PIXEL_FEATURES;
    if (i < S) finc_config_stat_name(cfg, i, buf, n);
    else if (i < base) snprintf(buf, n, "%s", pixel_features[i - S]);
    else if (i < base + FINC_ANOMALY_PCA) snprintf(buf, n, "layout.pc%d", i - base);
    else snprintf(buf, n, "layout.residual");
}

/* The pooling factor: halve until the image fits FINC_ANOMALY_PCA_SIDE^2. */
static int pool_factor(const finc_config *cfg)
{
    int p = 1;
    while ((cfg->h / p) * (cfg->w / p) > FINC_ANOMALY_PCA_SIDE * FINC_ANOMALY_PCA_SIDE) p *= 2;
    return p;
}

int finc_anomaly_pooled_dim(const finc_config *cfg)
{
    const int p = pool_factor(cfg);
    return cfg->c * (cfg->h / p) * (cfg->w / p);
}

/* pixels (C, H, W) -> means of p x p blocks / 255 (C, H/p, W/p); a remainder
 * row or column past the last whole block is left out. */
static void pool(const finc_config *cfg, const uint8_t *pixels, double *out)
{
    const int p = pool_factor(cfg), hp = cfg->h / p, wp = cfg->w / p;
    const double scale = 1.0 / (255.0 * p * p);
    for (int c = 0; c < cfg->c; c++)
        for (int i = 0; i < hp; i++)
            for (int j = 0; j < wp; j++) {
                unsigned sum = 0;
                for (int y = 0; y < p; y++)
                    for (int x = 0; x < p; x++) sum += pixels[((size_t)c * cfg->h + i * p + y) * cfg->w + j * p + x];
                *out++ = sum * scale;
            }
}

/* ---- features ------------------------------------------------------------- */

struct finc_anomaly_scratch {
    double *pooled;            /* (pooled dim,) */
};

finc_anomaly_scratch *finc_anomaly_scratch_new(const finc_config *cfg)
{
    finc_anomaly_scratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->pooled = malloc((size_t)finc_anomaly_pooled_dim(cfg) * sizeof *s->pooled);
    if (!s->pooled) {
        free(s);
        return NULL;
    }
    return s;
}

void finc_anomaly_scratch_free(finc_anomaly_scratch *s)
{
    if (!s) return;
    free(s->pooled);
    free(s);
}

static int paeth(int a, int b, int c)
{
    const int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Magnitude classes of a residual in -128..127: 0 for 0, else 1 + floor(log2 |r|). */
#define N_CLASSES 9
#define N_CONTEXTS 3

static int magnitude_class(int r)
{
    int m = abs(r), k = 0;
    while (m) k++, m >>= 1;
    return k;
}

/* The code length of a simple lossless image coder: each pixel predicted by
 * PNG's Paeth filter from its left, upper and upper-left neighbours in its
 * channel plane (0 outside), the residual (mod 256, as a signed byte) coded
 * as its magnitude class under an adaptive Krichevsky-Trofimov model (one of
 * three contexts, by the class of the residual to the left: 0, 1-2, 3+), then
 * the class's raw low bits and a sign bit. An arithmetic coder would write
 * this many bits, give or take two bytes. */
double finc_anomaly_complexity(const uint8_t *pixels, int C, int H, int W)
{
    double bits = 0;
    for (int c = 0; c < C; c++) {
        int count[N_CONTEXTS][N_CLASSES] = {{0}}, total[N_CONTEXTS] = {0};
        const uint8_t *plane = pixels + (size_t)c * H * W;
        for (int y = 0; y < H; y++) {
            const uint8_t *row = plane + (size_t)y * W, *up = y ? row - W : NULL;
            int left_class = 0;
            for (int x = 0; x < W; x++) {
                const int a = x ? row[x - 1] : 0, b = up ? up[x] : 0, cc = x && up ? up[x - 1] : 0;
                const int r = (int8_t)(uint8_t)(row[x] - paeth(a, b, cc));
                const int k = magnitude_class(r), ctx = left_class == 0 ? 0 : left_class <= 2 ? 1 : 2;
                bits -= log2((2.0 * count[ctx][k] + 1.0) / (2.0 * total[ctx] + N_CLASSES));
                bits += k == 0 ? 0 : k;  /* k - 1 low bits below the leading one, and the sign */
                count[ctx][k]++;
                total[ctx]++;
                left_class = k;
            }
        }
    }
    return bits / ((double)C * H * W);
}

void finc_anomaly_features(const finc_config *cfg, const double *stats, const uint8_t *pixels, double *feat)
{
    const int S = finc_config_stat_count(cfg);
    const size_t D = (size_t)finc_config_dim(cfg);
    memcpy(feat, stats, (size_t)S * sizeof *feat);
    double sum = 0, sum2 = 0;
    size_t zeros = 0, fulls = 0;
    for (size_t i = 0; i < D; i++) {
        const double v = pixels[i];
        sum += v;
        sum2 += v * v;
        zeros += pixels[i] == 0;
        fulls += pixels[i] == 255;
    }
    const double mean = sum / (double)D, var = sum2 / (double)D - mean * mean;
    feat[S] = finc_anomaly_complexity(pixels, cfg->c, cfg->h, cfg->w);
    feat[S + 1] = mean / 255.0;
    feat[S + 2] = sqrt(var > 0 ? var : 0) / 255.0;
    feat[S + 3] = (double)zeros / (double)D;
    feat[S + 4] = (double)fulls / (double)D;
}

/* Coordinates in the principal subspace and ln(mean squared residual). The
 * coordinates accumulate pixel by pixel over the transposed basis, so the
 * inner loop runs across components and vectorizes. */
static void layout_features(const struct finc_anomaly *a, double *x, double *feat)
{
    const int P = a->pca_dim, K = FINC_ANOMALY_PCA;
    double c[FINC_ANOMALY_PCA] = {0}, r2 = 0;
    for (int j = 0; j < P; j++) {
        const double xj = x[j] - a->pca_mean[j], *v = a->pca_basis_t + (size_t)j * K;
        r2 += xj * xj;
        for (int k = 0; k < K; k++) c[k] += v[k] * xj;
    }
    for (int k = 0; k < K; k++) {
        feat[k] = c[k];
        r2 -= c[k] * c[k];
    }
    feat[K] = log((r2 > 0 ? r2 : 0) / P + 1e-12);
}

void finc_anomaly_complete(finc_anomaly_scratch *s, const struct finc_anomaly *a, const finc_config *cfg,
                           const uint8_t *pixels, double *feat)
{
    pool(cfg, pixels, s->pooled);
    layout_features(a, s->pooled, feat + finc_anomaly_base_count(cfg));
}

/* ---- the density ------------------------------------------------------------ */

static void whiten(const struct finc_anomaly *a, const double *x, double *z)
{
    const int d = a->d;
    for (int i = 0; i < d; i++) {
        double acc = 0;
        for (int j = 0; j <= i; j++) acc += a->whiten[(size_t)i * d + j] * (x[j] - a->mean[j]);
        z[i] = acc;
    }
}

/* -ln mean_i exp(-|z - p_i|^2 / 2h^2), by chunks of points: squared
 * distances first, in float from a feature-major float copy of the points
 * (the loop over points vectorizes, and the copy is half the bytes to stream:
 * the distances are bound by memory; float rounding moves a score by about
 * 1e-5 per unit of distance, below the float32 engine's own noise), then the
 * exponentials of the terms that count. Terms more than 20 e-folds below
 * their chunk's largest are left out: together they are under n e^-20 of the
 * sum, which holds at least 1, so the score moves by less than 2.1e-9 n
 * (5e-6 for 2,500 fit images, far below the float32 engine's own noise), and
 * the exponentials drop to a tenth. */
#define KDE_CHUNK 256
#define KDE_CUTOFF 20.0
static double kde_score(const struct finc_anomaly *a, const double *z)
{
    const int d = a->d, n = a->n_fit;
    const double inv2h2 = 1.0 / (2.0 * a->bandwidth * a->bandwidth);
    float zf[d], e[KDE_CHUNK];
    for (int j = 0; j < d; j++) zf[j] = (float)z[j];
    double best = INFINITY, acc = 0;
    for (int i0 = 0; i0 < n; i0 += KDE_CHUNK) {
        const int m = n - i0 < KDE_CHUNK ? n - i0 : KDE_CHUNK;
        for (int i = 0; i < m; i++) e[i] = 0;
        for (int j = 0; j < d; j++) {
            const float *p = a->points_t + (size_t)j * n + i0, zj = zf[j];
            for (int i = 0; i < m; i++) e[i] += (zj - p[i]) * (zj - p[i]);
        }
        double lo = INFINITY;
        for (int i = 0; i < m; i++) lo = e[i] < lo ? e[i] : lo;
        lo *= inv2h2;
        double s = 0;
        for (int i = 0; i < m; i++) {
            const double ei = e[i] * inv2h2;
            if (ei - lo < KDE_CUTOFF) s += exp(lo - ei);
        }
        if (lo < best) {
            acc = acc * exp(lo - best) + s;
            best = lo;
        } else {
            acc += s * exp(best - lo);
        }
    }
    return best - log(acc / n);
}

/* The transposed copies scoring reads: points_t from points, pca_basis_t
 * from pca_basis. */
static void transpose_points(struct finc_anomaly *a)
{
    for (int i = 0; i < a->n_fit; i++)
        for (int j = 0; j < a->d; j++) a->points_t[(size_t)j * a->n_fit + i] = (float)a->points[(size_t)i * a->d + j];
}

static void transpose_basis(struct finc_anomaly *a)
{
    for (int k = 0; k < FINC_ANOMALY_PCA; k++)
        for (int j = 0; j < a->pca_dim; j++)
            a->pca_basis_t[(size_t)j * FINC_ANOMALY_PCA + k] = a->pca_basis[(size_t)k * a->pca_dim + j];
}

double finc_anomaly_score(const struct finc_anomaly *a, const double *feat)
{
    double z[a->d];
    whiten(a, feat, z);
    return kde_score(a, z);
}

double finc_anomaly_p_value(const struct finc_anomaly *a, double score)
{
    /* first calibration score >= score */
    int lo = 0, hi = a->n_cal;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (a->cal[mid] >= score) hi = mid;
        else lo = mid + 1;
    }
    return (1.0 + (a->n_cal - lo)) / (a->n_cal + 1.0);
}

void finc_anomaly_histogram(const struct finc_anomaly *a, int bins, double *lo, double *hi, int *counts, int *over)
{
    const int n = a->n_cal;
    int top = (int)ceil(0.99 * n) - 1;
    if (top < 0) top = 0;
    *lo = a->cal[0];
    *hi = a->cal[top];
    *over = 0;
    memset(counts, 0, (size_t)bins * sizeof *counts);
    const double width = (*hi - *lo) / bins;
    for (int i = 0; i < n; i++) {
        const double x = a->cal[i];
        if (x > *hi) {
            (*over)++;
            continue;
        }
        int b = width > 0 ? (int)((x - *lo) / width) : 0;
        if (b >= bins) b = bins - 1;  /* x == hi */
        counts[b]++;
    }
}

static int cmp_double(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

void finc_anomaly_free(struct finc_anomaly *a)
{
    if (!a) return;
    free(a->mean);
    free(a->whiten);
    free(a->points);
    free(a->points_t);
    free(a->cal);
    free(a->pca_mean);
    free(a->pca_basis);
    free(a->pca_basis_t);
    free(a->data);
    memset(a, 0, sizeof *a);
}

static int alloc_arrays(struct finc_anomaly *a, int d, int n_fit, int n_cal, int pca_dim, char *err, size_t errlen)
{
    a->d = d, a->n_fit = n_fit, a->n_cal = n_cal, a->pca_dim = pca_dim;
    a->mean = calloc((size_t)d, sizeof(double));
    a->whiten = calloc((size_t)d * d, sizeof(double));
    a->points = calloc((size_t)n_fit * d, sizeof(double));
    a->points_t = calloc((size_t)n_fit * d, sizeof(float));
    a->cal = calloc((size_t)n_cal, sizeof(double));
    a->pca_mean = calloc((size_t)pca_dim, sizeof(double));
    a->pca_basis = calloc((size_t)FINC_ANOMALY_PCA * pca_dim, sizeof(double));
    a->pca_basis_t = calloc((size_t)FINC_ANOMALY_PCA * pca_dim, sizeof(double));
    if (a->mean && a->whiten && a->points && a->points_t && a->cal && a->pca_mean && a->pca_basis && a->pca_basis_t)
        return 0;
    finc_anomaly_free(a);
    return finc_errorf(err, errlen, "out of memory");
}

/* The fit: centre, scale each feature by its standard deviation (1 for a
 * constant one), whiten by the Cholesky factor of the correlations plus a
 * small ridge, and use Scott's bandwidth n^(-1/(d+4)) in whitened units. */
static int fit_kde(struct finc_anomaly *a, const double *fit, const double *cal, char *err, size_t errlen)
{
    const int d = a->d, n_fit = a->n_fit, n_cal = a->n_cal;
    for (size_t i = 0; i < (size_t)n_fit * d; i++)
        if (!isfinite(fit[i])) return finc_errorf(err, errlen, "fit image %zu has a non-finite statistic", i / d);
    double *sd = calloc((size_t)d, sizeof *sd), *R = calloc((size_t)d * d, sizeof *R);
    if (!sd || !R) {
        free(sd);
        free(R);
        return finc_errorf(err, errlen, "out of memory");
    }
    for (int j = 0; j < d; j++) {
        double m = 0;
        for (int i = 0; i < n_fit; i++) m += fit[(size_t)i * d + j];
        a->mean[j] = m / n_fit;
    }
    for (int j = 0; j < d; j++) {
        for (int k = 0; k <= j; k++) {
            double c = 0;
            for (int i = 0; i < n_fit; i++)
                c += (fit[(size_t)i * d + j] - a->mean[j]) * (fit[(size_t)i * d + k] - a->mean[k]);
            R[(size_t)j * d + k] = c / (n_fit - 1);
        }
        const double v = R[(size_t)j * d + j];
        sd[j] = v > 1e-24 * (1.0 + a->mean[j] * a->mean[j]) ? sqrt(v) : 1.0;
    }
    /* correlations plus ridge, then Cholesky in place (lower triangle) */
    for (int j = 0; j < d; j++)
        for (int k = 0; k <= j; k++) R[(size_t)j * d + k] /= sd[j] * sd[k];
    for (int j = 0; j < d; j++) R[(size_t)j * d + j] += 1e-6;
    for (int j = 0; j < d; j++) {
        for (int k = 0; k <= j; k++) {
            double s = R[(size_t)j * d + k];
            for (int q = 0; q < k; q++) s -= R[(size_t)j * d + q] * R[(size_t)k * d + q];
            if (j == k) {
                /* a correlation matrix plus a ridge is positive definite, short of rounding */
                if (!(s > 0)) {
                    free(sd);
                    free(R);
                    return finc_errorf(err, errlen, "the statistics' correlation matrix is singular");
                }
                R[(size_t)j * d + j] = sqrt(s);
            } else {
                R[(size_t)j * d + k] = s / R[(size_t)k * d + k];
            }
        }
    }
    /* whiten = Lc^-1 diag(1/sd), by forward substitution column by column */
    for (int k = 0; k < d; k++) {
        for (int j = k; j < d; j++) {
            double s = j == k ? 1.0 : 0.0;
            for (int q = k; q < j; q++) s -= R[(size_t)j * d + q] * a->whiten[(size_t)q * d + k];
            a->whiten[(size_t)j * d + k] = s / R[(size_t)j * d + j];
        }
    }
    for (int j = 0; j < d; j++)
        for (int k = 0; k <= j; k++) a->whiten[(size_t)j * d + k] /= sd[k];
    free(sd);
    free(R);
    for (int i = 0; i < n_fit; i++) whiten(a, fit + (size_t)i * d, a->points + (size_t)i * d);
    transpose_points(a);
    a->bandwidth = pow((double)n_fit, -1.0 / (d + 4));
    for (int i = 0; i < n_cal; i++) {
        a->cal[i] = finc_anomaly_score(a, cal + (size_t)i * d);
        if (!isfinite(a->cal[i])) return finc_errorf(err, errlen, "calibration image %d has a non-finite score", i);
    }
    qsort(a->cal, (size_t)n_cal, sizeof *a->cal, cmp_double);
    return 0;
}

/* Modified Gram-Schmidt on the rows of V (k, P); a row that vanishes (the
 * images span fewer than k directions) is left zero. */
static void orthonormalize(double *V, int k, int P)
{
    for (int i = 0; i < k; i++) {
        double *v = V + (size_t)i * P;
        for (int j = 0; j < i; j++) {
            const double *u = V + (size_t)j * P;
            double dot = 0;
            for (int q = 0; q < P; q++) dot += u[q] * v[q];
            for (int q = 0; q < P; q++) v[q] -= dot * u[q];
        }
        double nrm = 0;
        for (int q = 0; q < P; q++) nrm += v[q] * v[q];
        nrm = sqrt(nrm);
        for (int q = 0; q < P; q++) v[q] = nrm > 1e-12 ? v[q] / nrm : 0.0;
    }
}

/* The principal subspace of the fit images' pooled pixels, by subspace
 * iteration: V <- orth(X^T X V). Any basis of it gives the same scores, since
 * the features are whitened and the kernel is isotropic. */
#define PCA_ITERATIONS 100
static int fit_pca(struct finc_anomaly *a, const finc_config *cfg, const uint8_t *pixels, char *err, size_t errlen)
{
    const int P = a->pca_dim, K = FINC_ANOMALY_PCA, n = a->n_fit;
    const size_t D = (size_t)finc_config_dim(cfg);
    double *X = malloc((size_t)n * P * sizeof *X), *Y = malloc((size_t)n * K * sizeof *Y);
    if (!X || !Y) {
        free(X);
        free(Y);
        return finc_errorf(err, errlen, "out of memory for the principal components");
    }
    for (int i = 0; i < n; i++) pool(cfg, pixels + i * D, X + (size_t)i * P);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < P; j++) a->pca_mean[j] += X[(size_t)i * P + j] / n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < P; j++) X[(size_t)i * P + j] -= a->pca_mean[j];
    double *V = a->pca_basis;
    uint32_t h = 2463534242u;  /* xorshift: a fixed start, so a fit is reproducible */
    for (size_t q = 0; q < (size_t)K * P; q++) {
        h ^= h << 13, h ^= h >> 17, h ^= h << 5;
        V[q] = h / 4294967296.0 - 0.5;
    }
    orthonormalize(V, K, P);
    for (int it = 0; it < PCA_ITERATIONS; it++) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < K; k++) {
                double acc = 0;
                for (int j = 0; j < P; j++) acc += X[(size_t)i * P + j] * V[(size_t)k * P + j];
                Y[(size_t)i * K + k] = acc;
            }
#pragma omp parallel for schedule(static)
        for (int j = 0; j < P; j++)
            for (int k = 0; k < K; k++) {
                double acc = 0;
                for (int i = 0; i < n; i++) acc += X[(size_t)i * P + j] * Y[(size_t)i * K + k];
                V[(size_t)k * P + j] = acc;
            }
        orthonormalize(V, K, P);
    }
    free(X);
    free(Y);
    transpose_basis(a);  /* for the layout features of every image */
    return 0;
}

int finc_anomaly_fit(struct finc_anomaly *a, const finc_config *cfg, double *feat, const uint8_t *pixels, int n,
                     int n_fit, const char *data, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    const int d = finc_anomaly_feature_count(cfg), n_cal = n - n_fit;
    if (n_fit < 2 * d || n_fit > FINC_ANOMALY_MAX_FIT)
        return finc_errorf(err, errlen, "%d fit images for %d statistics: need %d..%d", n_fit, d, 2 * d,
                           FINC_ANOMALY_MAX_FIT);
    if (n_cal < 1 || n_cal > FINC_ANOMALY_MAX_CAL)
        return finc_errorf(err, errlen, "%d calibration images: need 1..%d", n_cal, FINC_ANOMALY_MAX_CAL);
    if (alloc_arrays(a, d, n_fit, n_cal, finc_anomaly_pooled_dim(cfg), err, errlen)) return -1;
    finc_anomaly_scratch *s = finc_anomaly_scratch_new(cfg);
    int rc = s ? fit_pca(a, cfg, pixels, err, errlen) : finc_errorf(err, errlen, "out of memory");
    const size_t D = (size_t)finc_config_dim(cfg);
    for (int i = 0; rc == 0 && i < n; i++) finc_anomaly_complete(s, a, cfg, pixels + i * D, feat + (size_t)i * d);
    finc_anomaly_scratch_free(s);
    if (rc == 0) rc = fit_kde(a, feat, feat + (size_t)n_fit * d, err, errlen);
    if (rc == 0 && !(a->data = strdup(data ? data : ""))) rc = finc_errorf(err, errlen, "out of memory");
    if (rc) finc_anomaly_free(a);
    return rc;
}

/* ---- the metadata block ------------------------------------------------------- */

/* 17 significant digits: cJSON's own printing drops the last bits of some
 * doubles, and a calibration read back must score exactly as the one fitted. */
static cJSON *exact_number(double v)
{
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

static cJSON *number_array(const double *v, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n; i++) {
        cJSON *x = exact_number(v[i]);
        if (!x) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, x);
    }
    return arr;
}

char *finc_anomaly_to_json(const struct finc_anomaly *a, const finc_config *cfg)
{
    cJSON *o = cJSON_CreateObject(), *names = cJSON_AddArrayToObject(o, "features");
    cJSON_AddStringToObject(o, "method", FINC_ANOMALY_METHOD);
    cJSON_AddNumberToObject(o, "version", FINC_ANOMALY_VERSION);
    cJSON_AddStringToObject(o, "data", a->data ? a->data : "");
    for (int i = 0; i < a->d; i++) {
        char name[96];
        finc_anomaly_feature_name(cfg, i, name, sizeof name);
        cJSON_AddItemToArray(names, cJSON_CreateString(name));
    }
    cJSON_AddItemToObject(o, "bandwidth", exact_number(a->bandwidth));
    cJSON_AddItemToObject(o, "mean", number_array(a->mean, (size_t)a->d));
    cJSON_AddItemToObject(o, "whiten", number_array(a->whiten, (size_t)a->d * a->d));
    cJSON_AddNumberToObject(o, "fit_images", a->n_fit);
    cJSON_AddItemToObject(o, "fit_points", number_array(a->points, (size_t)a->n_fit * a->d));
    cJSON_AddItemToObject(o, "calibration_scores", number_array(a->cal, (size_t)a->n_cal));
    cJSON_AddItemToObject(o, "layout_mean", number_array(a->pca_mean, (size_t)a->pca_dim));
    cJSON_AddItemToObject(o, "layout_basis", number_array(a->pca_basis, (size_t)FINC_ANOMALY_PCA * a->pca_dim));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Any larger magnitude could overflow the squared distances of the score
 * (a fit's values are within a few thousand). */
#define MAX_MAGNITUDE 1e30

/* An array of exactly n finite numbers of magnitude <= MAX_MAGNITUDE, into
 * dst; dst NULL only checks (before anything is allocated for it). */
static int get_numbers(const cJSON *o, const char *key, double *dst, size_t n, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return finc_errorf(err, errlen, "metadata 'anomaly': '%s' missing", key);
    if (!cJSON_IsArray(v)) return finc_errorf(err, errlen, "metadata 'anomaly': '%s' is not an array", key);
    size_t i = 0;
    for (const cJSON *x = v->child; x; x = x->next, i++) {
        if (i >= n)
            return finc_errorf(err, errlen, "metadata 'anomaly': '%s' has more than %zu numbers", key, n);
        if (!cJSON_IsNumber(x) || !(fabs(x->valuedouble) <= MAX_MAGNITUDE))
            return finc_errorf(err, errlen, "metadata 'anomaly': '%s'[%zu] is not a number within +-%g", key, i,
                               MAX_MAGNITUDE);
        if (dst) dst[i] = x->valuedouble;
    }
    if (i != n) return finc_errorf(err, errlen, "metadata 'anomaly': '%s' has %zu numbers, expected %zu", key, i, n);
    return 0;
}

static int count_of(const cJSON *o, const char *key, int lo, int hi, int *out, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return finc_errorf(err, errlen, "metadata 'anomaly': '%s' missing", key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return finc_errorf(err, errlen, "metadata 'anomaly': '%s' must be an integer in %d..%d", key, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

/* The block's small members: method, version, the feature names, the fit's
 * size, the bandwidth and the data, into a (d, n_fit, bandwidth, data). */
static int parse_head(struct finc_anomaly *a, const cJSON *o, const finc_config *cfg, char *err, size_t errlen)
{
    if (!cJSON_IsObject(o)) return finc_errorf(err, errlen, "metadata 'anomaly' is not a JSON object");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(o, "method");
    if (!cJSON_IsString(method) || strcmp(method->valuestring, FINC_ANOMALY_METHOD) != 0)
        return finc_errorf(err, errlen, "metadata 'anomaly': 'method' must be \"" FINC_ANOMALY_METHOD "\"");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(o, "version");
    if (!cJSON_IsNumber(version) || version->valuedouble != FINC_ANOMALY_VERSION)
        return finc_errorf(err, errlen, "metadata 'anomaly': 'version' must be %d", FINC_ANOMALY_VERSION);
    const int d = finc_anomaly_feature_count(cfg);
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(o, "features");
    if (!cJSON_IsArray(names) || cJSON_GetArraySize(names) != d)
        return finc_errorf(err, errlen, "metadata 'anomaly': 'features' must list this model's %d statistics", d);
    int i = 0;
    for (const cJSON *x = names->child; x; x = x->next, i++) {
        char want[96];
        finc_anomaly_feature_name(cfg, i, want, sizeof want);
        if (!cJSON_IsString(x) || strcmp(x->valuestring, want) != 0)
            return finc_errorf(err, errlen, "metadata 'anomaly': features[%d] must be \"%s\" for this model", i, want);
    }
    if (count_of(o, "fit_images", 2 * d, FINC_ANOMALY_MAX_FIT, &a->n_fit, err, errlen)) return -1;
    const cJSON *bw = cJSON_GetObjectItemCaseSensitive(o, "bandwidth");
    if (!cJSON_IsNumber(bw) || !isfinite(bw->valuedouble) || !(bw->valuedouble > 1e-6) || bw->valuedouble > 1e6)
        return finc_errorf(err, errlen, "metadata 'anomaly': 'bandwidth' must be a number in (1e-6, 1e6]");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
    if (data && !cJSON_IsString(data)) return finc_errorf(err, errlen, "metadata 'anomaly': 'data' is not a string");
    a->d = d;
    a->bandwidth = bw->valuedouble;
    if (!(a->data = strdup(data ? data->valuestring : ""))) return finc_errorf(err, errlen, "out of memory");
    return 0;
}

static int check_cal_count(long n_cal, char *err, size_t errlen)
{
    if (n_cal < 1 || n_cal > FINC_ANOMALY_MAX_CAL)
        return finc_errorf(err, errlen, "metadata 'anomaly': 'calibration_scores' must be an array of 1..%d numbers",
                           FINC_ANOMALY_MAX_CAL);
    return 0;
}

static int parse_block(struct finc_anomaly *a, const cJSON *o, const finc_config *cfg, char *err, size_t errlen)
{
    if (parse_head(a, o, cfg, err, errlen)) return -1;
    const int d = a->d, n_fit = a->n_fit;
    const cJSON *cal = cJSON_GetObjectItemCaseSensitive(o, "calibration_scores");
    const int n_cal = cJSON_IsArray(cal) ? cJSON_GetArraySize(cal) : 0;
    if (check_cal_count(n_cal, err, errlen)) return -1;
    const int P = finc_anomaly_pooled_dim(cfg);
    /* Checked first, so that memory follows the numbers present, not the counts claimed. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && alloc_arrays(a, d, n_fit, n_cal, P, err, errlen)) return -1;
        if (get_numbers(o, "layout_mean", a->pca_mean, (size_t)P, err, errlen) ||
            get_numbers(o, "layout_basis", a->pca_basis, (size_t)FINC_ANOMALY_PCA * P, err, errlen) ||
            get_numbers(o, "mean", a->mean, (size_t)d, err, errlen) ||
            get_numbers(o, "whiten", a->whiten, (size_t)d * d, err, errlen) ||
            get_numbers(o, "fit_points", a->points, (size_t)n_fit * d, err, errlen) ||
            get_numbers(o, "calibration_scores", a->cal, (size_t)n_cal, err, errlen))
            return -1;
    }
    for (int j = 0; j < d; j++) {
        if (!(a->whiten[(size_t)j * d + j] > 0))
            return finc_errorf(err, errlen, "metadata 'anomaly': 'whiten' diagonal entry %d is not positive", j);
        for (int k = j + 1; k < d; k++)
            if (a->whiten[(size_t)j * d + k] != 0)
                return finc_errorf(err, errlen, "metadata 'anomaly': 'whiten' is not lower triangular (row %d)", j);
    }
    transpose_points(a);
    transpose_basis(a);
    for (int c = 1; c < n_cal; c++)
        if (a->cal[c] < a->cal[c - 1])
            return finc_errorf(err, errlen, "metadata 'anomaly': 'calibration_scores' are not in ascending order");
    return 0;
}

int finc_anomaly_parse(struct finc_anomaly *a, const char *json, const finc_config *cfg, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    cJSON *o = cJSON_Parse(json);
    if (!o) return finc_errorf(err, errlen, "metadata 'anomaly' is not valid JSON");
    const int rc = parse_block(a, o, cfg, err, errlen);
    cJSON_Delete(o);
    if (rc) finc_anomaly_free(a);
    return rc;
}

/* The end of the JSON value that starts at p (no white space before it), or
 * NULL when it is cut short or unbalanced; *elements gets an array's count.
 * Only the structure is read, a run of plain bytes at a time: numbers and
 * literals are the full parse's to check. */
static const char *skim_value(const char *p, const char *end, long *elements)
{
    static const unsigned char stop[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1, ['"'] = 1, [','] = 1,
                                            ['['] = 1, [']'] = 1, ['{'] = 1, ['}'] = 1};
    int depth = 0, empty = 1;
    long commas = 0;
    const int array = p < end && *p == '[';
    *elements = 0;
    do {
        const char *run = p;
        while (p < end && !stop[(unsigned char)*p]) p++;
        if (p > run && depth == 0) return p;   /* a scalar, up to its delimiter */
        if (p > run && depth == 1) empty = 0;
        if (p >= end) return NULL;
        const char c = *p++;
        if (depth == 1 && (c == '"' || c == '[' || c == '{')) empty = 0;
        if (c == '"') {
            while (p < end && *p != '"') p += *p == '\\' ? 2 : 1;
            if (p >= end) return NULL;
            p++;
        } else if (c == '[' || c == '{') {
            if (++depth > 64) return NULL;
        } else if (c == ']' || c == '}') {
            if (--depth < 0) return NULL;
        } else if (c == ',' && depth == 1) {
            commas++;
        }
    } while (depth > 0);
    if (array) *elements = empty ? 0 : commas + 1;
    return p;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

int finc_anomaly_parse_summary(struct finc_anomaly *a, const char *json, const finc_config *cfg, char *err,
                               size_t errlen)
{
    static const char *const small[] = {"method", "version", "data", "features", "fit_images", "bandwidth"};
    memset(a, 0, sizeof *a);
    const char *p = json, *end = json + strlen(json);
    cJSON *o = cJSON_CreateObject();
    long n_cal = 0;
    int rc = o ? 0 : finc_errorf(err, errlen, "out of memory");
    p = skip_ws(p, end);
    if (rc == 0 && (p >= end || *p++ != '{')) rc = finc_errorf(err, errlen, "metadata 'anomaly' is not a JSON object");
    for (int first = 1; rc == 0; first = 0) {
        p = skip_ws(p, end);
        if (p < end && *p == '}' && first) break;
        long ignored;
        const char *key = p, *key_end = p < end && *p == '"' ? skim_value(p, end, &ignored) : NULL;
        const char *v = key_end ? skip_ws(key_end, end) : NULL;
        if (!v || v >= end || *v != ':') {
            rc = finc_errorf(err, errlen, "metadata 'anomaly' is not valid JSON");
            break;
        }
        v = skip_ws(v + 1, end);
        long count;
        const char *v_end = skim_value(v, end, &count);
        if (!v_end) {
            rc = finc_errorf(err, errlen, "metadata 'anomaly' is not valid JSON");
            break;
        }
        const size_t key_len = (size_t)(key_end - key) - 2;
        char name[32] = "";
        if (key_len < sizeof name) memcpy(name, key + 1, key_len), name[key_len] = 0;
        if (!strcmp(name, "calibration_scores") && !cJSON_HasObjectItem(o, name)) {
            n_cal = *v == '[' ? count : 0;
            cJSON_AddItemToObject(o, name, cJSON_CreateTrue());   /* seen: the first one counts */
        }
        for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
            if (strcmp(name, small[i]) || cJSON_HasObjectItem(o, name)) continue;
            cJSON *item = cJSON_ParseWithLength(v, (size_t)(v_end - v));
            if (!item) rc = finc_errorf(err, errlen, "metadata 'anomaly': '%s' is not valid JSON", name);
            else cJSON_AddItemToObject(o, name, item);
        }
        p = skip_ws(v_end, end);
        if (p < end && *p == ',') p++;
        else if (p < end && *p == '}') break;
        else rc = finc_errorf(err, errlen, "metadata 'anomaly' is not valid JSON");
    }
    if (rc == 0) rc = parse_head(a, o, cfg, err, errlen);
    if (rc == 0) rc = check_cal_count(n_cal, err, errlen);
    if (rc == 0) a->n_cal = (int)n_cal;
    cJSON_Delete(o);
    if (rc) finc_anomaly_free(a);
    return rc;
}
