/* Config parsing and the weights loader (model.md section 4). The file is
 * checked against the config in full (names, dtypes, shapes, finite values,
 * FInC current-pixel taps, invertible 1x1) before a model is returned; the
 * weights and the tensors derived from them live in one 64-byte aligned block. */
#include "engine/model.h"

#include <cJSON.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/anomaly.h"
#include "engine/check.h"
#include "engine/safetensors.h"
#include "engine/error.h"

#define FORMAT_NAME "finc-flow"
#define FORMAT_VERSION "1"
#define MAX_CHANNELS 16
#define MAX_SIDE 4096
#define MAX_KERNEL 15
#define MAX_WIDTH 8192
#define HUGE_PAGE (2u << 20)
/* A 1x1 weight whose inverse amplifies float32 rounding by more than this
 * cannot be inverted usefully in float32. */
#define MAX_COND_1X1 1e10
/* exp(|s|) for ActNorm must stay finite in float. */
#define MAX_LOG_SCALE 80.0
#define ALIGN_FLOATS 16   /* 64 bytes */

static size_t align_up(size_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

/* ---- config ------------------------------------------------------------ */

/* An integer JSON value in [lo, hi]. */
static int get_int(const cJSON *v, const char *what, long lo, long hi, int *out, char *err, size_t errlen)
{
    if (!v)
        return finc_errorf(err, errlen, "config: '%s' missing", what);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return finc_errorf(err, errlen, "config: '%s' is not an integer", what);
    double d = v->valuedouble;
    if (d < (double)lo || d > (double)hi)
        return finc_errorf(err, errlen, "config: '%s' is %.0f, must be in %ld..%ld", what, d, lo, hi);
    *out = (int)d;
    return 0;
}

static int parse_fields(finc_config *cfg, const cJSON *o, char *err, size_t errlen)
{
    if (get_int(cJSON_GetObjectItemCaseSensitive(o, "levels"), "levels", 1, FINC_MAX_LEVELS,
                &cfg->levels, err, errlen))
        return -1;
    int L = cfg->levels;

    const cJSON *img = cJSON_GetObjectItemCaseSensitive(o, "image");
    if (!img)
        return finc_errorf(err, errlen, "config: 'image' missing");
    if (!cJSON_IsArray(img) || cJSON_GetArraySize(img) != 3)
        return finc_errorf(err, errlen, "config: 'image' must be an array [C, H, W]");
    if (get_int(img->child, "image C", 1, MAX_CHANNELS, &cfg->c, err, errlen) ||
        get_int(img->child->next, "image H", 1, MAX_SIDE, &cfg->h, err, errlen) ||
        get_int(img->child->next->next, "image W", 1, MAX_SIDE, &cfg->w, err, errlen))
        return -1;
    if (cfg->h % (1 << L) || cfg->w % (1 << L))
        return finc_errorf(err, errlen, "config: image H x W = %d x %d is not divisible by 2^levels = %d",
                    cfg->h, cfg->w, 1 << L);

    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(o, "steps");
    if (!steps)
        return finc_errorf(err, errlen, "config: 'steps' missing");
    if (!cJSON_IsArray(steps) || cJSON_GetArraySize(steps) != L)
        return finc_errorf(err, errlen, "config: 'steps' must be an array of %d step counts, one per level", L);
    int l = 0;
    for (const cJSON *s = steps->child; s; s = s->next, l++) {
        char what[32];
        snprintf(what, sizeof what, "steps[%d]", l);
        if (get_int(s, what, 1, FINC_MAX_STEPS, &cfg->steps[l], err, errlen))
            return -1;
    }

    if (get_int(cJSON_GetObjectItemCaseSensitive(o, "kernel"), "kernel", 2, MAX_KERNEL, &cfg->kernel,
                err, errlen) ||
        get_int(cJSON_GetObjectItemCaseSensitive(o, "coupling_width"), "coupling_width", 1, MAX_WIDTH,
                &cfg->width, err, errlen))
        return -1;

    const cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "actnorm");
    if (!an)
        return finc_errorf(err, errlen, "config: 'actnorm' missing");
    if (!cJSON_IsBool(an))
        return finc_errorf(err, errlen, "config: 'actnorm' is not a boolean");
    cfg->actnorm = cJSON_IsTrue(an);

    cfg->alpha = 1e-6;
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(o, "alpha");
    if (al) {
        if (!cJSON_IsNumber(al))
            return finc_errorf(err, errlen, "config: 'alpha' is not a number");
        /* alpha > 0 keeps the logit finite for every u in [0, 1); < 0.5 keeps 1 - 2a > 0. */
        if (!(al->valuedouble > 0 && al->valuedouble < 0.5))
            return finc_errorf(err, errlen, "config: 'alpha' is %g, must be in (0, 0.5)", al->valuedouble);
        cfg->alpha = al->valuedouble;
    }

    /* Sizes stay far inside int by the caps above; the parameter count is
     * the one total that could still be absurd. */
    double params = 0, C = 4.0 * cfg->c, F = cfg->width, k = cfg->kernel;
    for (l = 0; l < L; l++, C *= 2) {
        double coupling = F * (C / 2) * 9 + F + F * F + F + C * F * 9 + 2 * C;
        params += cfg->steps[l] * (C * C / 16 * 4 * k * k + (cfg->actnorm ? 2 * C : 0) + C * C + coupling);
        if (l < L - 1)
            params += coupling;
    }
    if (params > 4294967296.0)
        return finc_errorf(err, errlen, "config: the model would hold %.3g parameters, more than 2^32", params);
    return 0;
}

int finc_config_parse(finc_config *cfg, const char *json, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->test_bpd = NAN;
    if (!json)
        return finc_errorf(err, errlen, "config: missing");
    cJSON *root = cJSON_Parse(json);
    int rc;
    if (!root)
        rc = finc_errorf(err, errlen, "config is not valid JSON");
    else if (!cJSON_IsObject(root))
        rc = finc_errorf(err, errlen, "config is not a JSON object");
    else
        rc = parse_fields(cfg, root, err, errlen);
    cJSON_Delete(root);
    if (rc == 0 && !(cfg->json = strdup(json)))
        rc = finc_errorf(err, errlen, "out of memory");
    if (rc) {
        memset(cfg, 0, sizeof *cfg);
        cfg->test_bpd = NAN;
    }
    return rc;
}

void finc_config_free(finc_config *cfg)
{
    free(cfg->json);
    free(cfg->metadata_json);
    cfg->json = cfg->metadata_json = NULL;
}

/* ---- expected tensors -------------------------------------------------- */

static void emit(finc_tensor_fn fn, void *user, const char *name, int ndim, int64_t a, int64_t b,
                 int64_t c, int64_t d)
{
    const int64_t shape[4] = {a, b, c, d};
    fn(user, name, ndim, shape);
}

static void each_coupling(const char *prefix, int64_t C, int64_t F, finc_tensor_fn fn, void *user)
{
    char name[128];
    snprintf(name, sizeof name, "%s.conv1.weight", prefix);
    emit(fn, user, name, 4, F, C / 2, 3, 3);
    snprintf(name, sizeof name, "%s.conv1.bias", prefix);
    emit(fn, user, name, 1, F, 0, 0, 0);
    snprintf(name, sizeof name, "%s.conv2.weight", prefix);
    emit(fn, user, name, 4, F, F, 1, 1);
    snprintf(name, sizeof name, "%s.conv2.bias", prefix);
    emit(fn, user, name, 1, F, 0, 0, 0);
    snprintf(name, sizeof name, "%s.conv3.weight", prefix);
    emit(fn, user, name, 4, C, F, 3, 3);
    snprintf(name, sizeof name, "%s.conv3.bias", prefix);
    emit(fn, user, name, 1, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s.conv3.logs", prefix);
    emit(fn, user, name, 1, C, 0, 0, 0);
}

static const char *const quarter_names[4] = {"tl", "tr", "bl", "br"};

void finc_config_each_tensor(const finc_config *cfg, finc_tensor_fn fn, void *user)
{
    char name[128], prefix[96];
    int64_t C = 4 * (int64_t)cfg->c, F = cfg->width, k = cfg->kernel;
    for (int l = 0; l < cfg->levels; l++, C *= 2) {
        for (int s = 0; s < cfg->steps[l]; s++) {
            for (int q = 0; q < 4; q++) {
                snprintf(name, sizeof name, "levels.%d.steps.%d.finc.%s", l, s, quarter_names[q]);
                emit(fn, user, name, 4, C / 4, C / 4, k, k);
            }
            if (cfg->actnorm) {
                snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm.translation", l, s);
                emit(fn, user, name, 1, C, 0, 0, 0);
                snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm.log_scale", l, s);
                emit(fn, user, name, 1, C, 0, 0, 0);
            }
            snprintf(name, sizeof name, "levels.%d.steps.%d.conv1x1.weight", l, s);
            emit(fn, user, name, 2, C, C, 0, 0);
            snprintf(prefix, sizeof prefix, "levels.%d.steps.%d.coupling", l, s);
            each_coupling(prefix, C, F, fn, user);
        }
        if (l < cfg->levels - 1) {
            snprintf(prefix, sizeof prefix, "levels.%d.split.coupling", l);
            each_coupling(prefix, C, F, fn, user);
        }
    }
}

/* ---- loader ------------------------------------------------------------ */

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
    size_t numel;
    const finc_st_tensor *src;
    float *dst;
} want;

typedef struct {
    want *v;
    int n, cap, oom;
} want_list;

static void collect(void *user, const char *name, int ndim, const int64_t *shape)
{
    want_list *wl = user;
    if (wl->oom)
        return;
    if (wl->n == wl->cap) {
        int cap = wl->cap ? 2 * wl->cap : 256;
        want *v = realloc(wl->v, (size_t)cap * sizeof *v);
        if (!v) {
            wl->oom = 1;
            return;
        }
        wl->v = v;
        wl->cap = cap;
    }
    want *w = &wl->v[wl->n++];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", name);
    w->ndim = ndim;
    w->numel = 1;
    for (int i = 0; i < ndim; i++) {
        w->shape[i] = shape[i];
        w->numel *= (size_t)shape[i];
    }
}

static int load_metadata(finc_config *cfg, const finc_st *st, char *err, size_t errlen)
{
    if (!st->has_metadata)
        return finc_errorf(err, errlen, "file has no __metadata__ (expected format '" FORMAT_NAME "')");
    const char *fmt = finc_st_meta(st, "format");
    if (!fmt)
        return finc_errorf(err, errlen, "metadata 'format' missing (expected '" FORMAT_NAME "')");
    if (strcmp(fmt, FORMAT_NAME) != 0)
        return finc_errorf(err, errlen, "metadata format is '%s', expected '" FORMAT_NAME "'", fmt);
    const char *ver = finc_st_meta(st, "format_version");
    if (!ver)
        return finc_errorf(err, errlen, "metadata 'format_version' missing (expected '" FORMAT_VERSION "')");
    if (strcmp(ver, FORMAT_VERSION) != 0)
        return finc_errorf(err, errlen, "metadata format_version is '%s', this loader reads '" FORMAT_VERSION "'", ver);
    const char *conf = finc_st_meta(st, "config");
    if (!conf)
        return finc_errorf(err, errlen, "metadata 'config' missing");
    if (finc_config_parse(cfg, conf, err, errlen))
        return -1;
    if (!(cfg->metadata_json = finc_st_metadata_json(st, "anomaly")))
        return finc_errorf(err, errlen, "out of memory");
    const char *bpd = finc_st_meta(st, "test_bpd");
    if (bpd) {
        char *end;
        double v = strtod(bpd, &end);
        if (end != bpd && *end == 0 && isfinite(v))
            cfg->test_bpd = v;
    }
    return 0;
}

/* Every expected tensor present with a float dtype and the right shape; no
 * other tensor in the file. */
static int match_tensors(want_list *wl, const finc_st *st, size_t *n_params, char *err, size_t errlen)
{
    unsigned char *seen = calloc((size_t)st->n + 1, 1);
    if (!seen)
        return finc_errorf(err, errlen, "out of memory");
    int rc = 0;
    *n_params = 0;
    for (int i = 0; i < wl->n && rc == 0; i++) {
        want *w = &wl->v[i];
        const finc_st_tensor *t = finc_st_find(st, w->name);
        char want_s[96], have_s[160];
        finc_st_shape_str(want_s, sizeof want_s, w->ndim, w->shape);
        if (!t) {
            rc = finc_errorf(err, errlen, "tensor '%s' missing (expected shape %s)", w->name, want_s);
            break;
        }
        if (t->dtype != FINC_ST_F32 && t->dtype != FINC_ST_F16 && t->dtype != FINC_ST_BF16) {
            rc = finc_errorf(err, errlen, "tensor '%s': dtype %s, expected F32 (or F16, BF16)", w->name,
                      finc_st_dtype_name(t->dtype));
            break;
        }
        int same = t->ndim == w->ndim;
        for (int d = 0; same && d < w->ndim; d++)
            same = t->shape[d] == w->shape[d];
        if (!same) {
            finc_st_shape_str(have_s, sizeof have_s, t->ndim, t->shape);
            rc = finc_errorf(err, errlen, "tensor '%s': shape %s, expected %s", w->name, have_s, want_s);
            break;
        }
        w->src = t;
        seen[t - st->tensors] = 1;
        *n_params += w->numel;
    }
    for (int i = 0; i < st->n && rc == 0; i++)
        if (!seen[i])
            rc = finc_errorf(err, errlen, "unknown tensor '%s' (not part of the model the config describes)",
                      st->tensors[i].name);
    free(seen);
    return rc;
}

/* Hands out 64-byte aligned pieces of the block, in order. */
typedef struct {
    float *block;
    size_t used, size;
} bump;

/* n floats, which the caller fills. The alignment padding after them stays
 * zero, as the block's fresh mapping is (the block is copied whole to devices). */
static float *take(bump *b, size_t n)
{
    float *p = b->block + b->used;
    b->used += align_up(n);
    FINC_CHECK(b->used <= b->size);
    return p;
}

static size_t w3_taps_floats(const finc_config *cfg);

static size_t derived_floats(const finc_config *cfg)
{
    size_t total = 0, C = 4 * (size_t)cfg->c, k = (size_t)cfg->kernel;
    for (int l = 0; l < cfg->levels; l++, C *= 2) {
        size_t per_step = 4 * align_up(C / 4 * (C / 4) * k * k) + align_up(C * C) + align_up(C);
        total += (size_t)cfg->steps[l] * per_step;
        if (l < cfg->levels - 1)
            total += align_up(C);
    }
    return total + w3_taps_floats(cfg);
}

/* Hands the file's pages that hold only this tensor back to the kernel once
 * it is copied: the mapping is read-only and never read there again, so a
 * model's load peaks at about one copy of its weights, not two. */
static void drop_pages(const void *data, size_t nbytes)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)data + page - 1) / page * page, hi = ((uintptr_t)data + nbytes) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* How many of x[0..n) are NaN or Inf: all exponent bits set. A plain count
 * over the bits, which the compiler vectorises. */
static size_t count_non_finite(const float *x, size_t n)
{
    const uint32_t *u = (const uint32_t *)x;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += (u[i] & 0x7f800000u) == 0x7f800000u;
    return bad;
}

/* Converted and checked a piece at a time, each piece checked while it is
 * still in cache. */
#define COPY_PIECE 16384

static int copy_tensor(want *w, char *err, size_t errlen)
{
    const finc_st_tensor *t = w->src;
    const size_t es = finc_st_dtype_size(t->dtype);
    for (size_t at = 0; at < w->numel; at += COPY_PIECE) {
        finc_st_tensor piece = *t;
        piece.numel = w->numel - at < COPY_PIECE ? w->numel - at : COPY_PIECE;
        piece.nbytes = piece.numel * es;
        piece.data = (const unsigned char *)t->data + at * es;
        float *dst = w->dst + at;
        FINC_CHECK(finc_st_to_f32(&piece, dst) == 0);
        if (count_non_finite(dst, piece.numel))
            for (size_t i = 0; i < piece.numel; i++)
                if (!isfinite(dst[i]))
                    return finc_errorf(err, errlen, "tensor '%s': non-finite value (%s) at index %zu", w->name,
                                       isnan(dst[i]) ? "NaN" : "Inf", at + i);
    }
    drop_pages(t->data, t->nbytes);
    return 0;
}

/* The next stored tensor in finc_config_each_tensor order; the suffix check
 * guards that this walk and that one agree. */
static float *next(want_list *wl, int *ci, const char *suffix, const char **name)
{
    FINC_CHECK(*ci < wl->n);
    want *w = &wl->v[(*ci)++];
    size_t n = strlen(w->name), s = strlen(suffix);
    FINC_CHECK(n >= s && strcmp(w->name + n - s, suffix) == 0);
    if (name)
        *name = w->name;
    return w->dst;
}

/* TL form of quarter q (0 TL, 1 TR, 2 BL, 3 BR): TR flips width, BL height,
 * BR both; then the current-pixel tap must be unit lower-triangular. */
static int derive_finc(float *tl, const float *w, int q, int cq, int k, const char *name, char *err,
                       size_t errlen)
{
    for (int o = 0; o < cq; o++)
        for (int i = 0; i < cq; i++)
            for (int a = 0; a < k; a++)
                for (int b = 0; b < k; b++) {
                    int sa = (q & 2) ? k - 1 - a : a, sb = (q & 1) ? k - 1 - b : b;
                    tl[(((size_t)o * cq + i) * k + a) * k + b] = w[(((size_t)o * cq + i) * k + sa) * k + sb];
                }
    int ra = (q & 2) ? 0 : k - 1, rb = (q & 1) ? 0 : k - 1;   /* the tap in stored form */
    for (int o = 0; o < cq; o++)
        for (int i = o; i < cq; i++) {
            float v = tl[(((size_t)o * cq + i) * k + k - 1) * k + k - 1];
            if (i == o && v != 1.0f)
                return finc_errorf(err, errlen,
                            "tensor '%s': current-pixel tap [%d][%d][%d][%d] is %.9g, must be 1 "
                            "(the tap is unit lower-triangular over channels)",
                            name, o, i, ra, rb, (double)v);
            if (i > o && v != 0.0f)
                return finc_errorf(err, errlen,
                            "tensor '%s': current-pixel tap [%d][%d][%d][%d] is %.9g, must be 0 "
                            "(the tap is unit lower-triangular over channels)",
                            name, o, i, ra, rb, (double)v);
        }
    return 0;
}

/* Gauss-Jordan with partial pivoting, in double. */
static int invert_1x1(const float *w, float *inv, int C, double *logdet, const char *name, char *err,
                      size_t errlen)
{
    size_t n = (size_t)C;
    double *a = malloc(2 * n * n * sizeof *a);
    if (!a)
        return finc_errorf(err, errlen, "out of memory inverting '%s'", name);
    double *b = a + n * n;
    double norm_w = 0;
    for (size_t c = 0; c < n; c++) {
        double col = 0;
        for (size_t r = 0; r < n; r++) {
            a[r * n + c] = w[r * n + c];
            b[r * n + c] = r == c;
            col += fabs(a[r * n + c]);
        }
        norm_w = col > norm_w ? col : norm_w;
    }
    double ld = 0;
    int rc = 0;
    for (size_t c = 0; c < n && rc == 0; c++) {
        size_t p = c;
        for (size_t r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c]))
                p = r;
        if (a[p * n + c] == 0) {
            rc = finc_errorf(err, errlen, "tensor '%s' is singular (det = 0); the 1x1 convolution must be invertible", name);
            break;
        }
        if (p != c)
            for (size_t j = 0; j < n; j++) {
                double t = a[p * n + j];
                a[p * n + j] = a[c * n + j];
                a[c * n + j] = t;
                t = b[p * n + j];
                b[p * n + j] = b[c * n + j];
                b[c * n + j] = t;
            }
        double piv = a[c * n + c];
        ld += log(fabs(piv));
        for (size_t j = 0; j < n; j++) {
            a[c * n + j] /= piv;
            b[c * n + j] /= piv;
        }
        for (size_t r = 0; r < n; r++) {
            double f = a[r * n + c];
            if (r == c || f == 0)
                continue;
            for (size_t j = 0; j < n; j++) {
                a[r * n + j] -= f * a[c * n + j];
                b[r * n + j] -= f * b[c * n + j];
            }
        }
    }
    if (rc == 0) {
        double norm_inv = 0;
        int finite = isfinite(ld);
        for (size_t c = 0; c < n; c++) {
            double col = 0;
            for (size_t r = 0; r < n; r++) {
                double v = b[r * n + c];
                finite &= isfinite(v) && fabs(v) <= FLT_MAX;
                col += fabs(v);
                inv[r * n + c] = (float)v;
            }
            norm_inv = col > norm_inv ? col : norm_inv;
        }
        double cond = norm_w * norm_inv;
        if (!finite || !(cond <= MAX_COND_1X1))
            rc = finc_errorf(err, errlen, "tensor '%s' is singular or badly conditioned (condition number %.3g)", name,
                      cond);
    }
    *logdet = ld;
    free(a);
    return rc;
}

/* Each coupling's conv3 weight with its taps outermost, one piece per coupling. */
static size_t w3_taps_floats(const finc_config *cfg)
{
    size_t total = 0, C = 4 * (size_t)cfg->c, F = (size_t)cfg->width;
    for (int l = 0; l < cfg->levels; l++, C *= 2)
        total += (size_t)(cfg->steps[l] + (l < cfg->levels - 1)) * align_up(C * 9 * F);
    return total;
}

/* taps[(co*9 + t)*F + f] = w3[(co*F + f)*9 + t] */
static const float *derive_w3_taps(bump *b, const finc_coupling *cp)
{
    const int F = cp->width;
    float *taps = take(b, (size_t)cp->cout * 9 * F);
    for (int co = 0; co < cp->cout; co++)
        for (int t = 0; t < 9; t++)
            for (int f = 0; f < F; f++)
                taps[((size_t)co * 9 + t) * F + f] = cp->w3[((size_t)co * F + f) * 9 + t];
    return taps;
}

static int assign_coupling(finc_coupling *cp, want_list *wl, int *ci, bump *b, int C, int F, char *err,
                           size_t errlen)
{
    const char *logs_name;
    cp->cin = C / 2;
    cp->cout = C;
    cp->width = F;
    cp->w1 = next(wl, ci, ".conv1.weight", NULL);
    cp->b1 = next(wl, ci, ".conv1.bias", NULL);
    cp->w2 = next(wl, ci, ".conv2.weight", NULL);
    cp->b2 = next(wl, ci, ".conv2.bias", NULL);
    cp->w3 = next(wl, ci, ".conv3.weight", NULL);
    cp->b3 = next(wl, ci, ".conv3.bias", NULL);
    const float *logs = next(wl, ci, ".conv3.logs", &logs_name);
    float *scale3 = take(b, (size_t)C);
    for (int i = 0; i < C; i++) {
        double v = exp(3.0 * logs[i]);
        if (!(v <= FLT_MAX))
            return finc_errorf(err, errlen, "tensor '%s': exp(3*logs) overflows float at index %d (logs = %g)",
                        logs_name, i, (double)logs[i]);
        scale3[i] = (float)v;
    }
    cp->scale3 = scale3;
    cp->w3_taps = derive_w3_taps(b, cp);
    return 0;
}

/* Each level's shape after its squeeze, its steps and whether it splits. */
static void set_level_shapes(finc_model *m)
{
    const finc_config *cfg = &m->cfg;
    for (int l = 0, C = 4 * cfg->c; l < cfg->levels; l++, C *= 2) {
        finc_level *lv = &m->levels[l];
        lv->c = C;
        lv->h = cfg->h >> (l + 1);
        lv->w = cfg->w >> (l + 1);
        lv->nsteps = cfg->steps[l];
        lv->has_split = l < cfg->levels - 1;
    }
}

static int assign(finc_model *m, want_list *wl, bump *b, char *err, size_t errlen)
{
    const finc_config *cfg = &m->cfg;
    int C = 4 * cfg->c, F = cfg->width, k = cfg->kernel, ci = 0;
    static const char *const qsuffix[4] = {".finc.tl", ".finc.tr", ".finc.bl", ".finc.br"};
    m->logdet_const = 0;
    for (int l = 0; l < cfg->levels; l++, C *= 2) {
        finc_level *lv = &m->levels[l];
        lv->steps = calloc((size_t)lv->nsteps, sizeof *lv->steps);
        if (!lv->steps)
            return finc_errorf(err, errlen, "out of memory");
        int cq = C / 4;
        for (int s = 0; s < lv->nsteps; s++) {
            finc_step *st = &lv->steps[s];
            const char *name;
            for (int q = 0; q < 4; q++) {
                st->finc[q] = next(wl, &ci, qsuffix[q], &name);
                float *tl = take(b, (size_t)cq * cq * k * k);
                if (derive_finc(tl, st->finc[q], q, cq, k, name, err, errlen))
                    return -1;
                st->finc_tl[q] = tl;
            }
            st->an_logscale_sum = 0;
            if (cfg->actnorm) {
                st->an_t = next(wl, &ci, ".actnorm.translation", NULL);
                st->an_s = next(wl, &ci, ".actnorm.log_scale", &name);
                for (int c = 0; c < C; c++) {
                    if (fabs(st->an_s[c]) > MAX_LOG_SCALE)
                        return finc_errorf(err, errlen, "tensor '%s': value %g at index %d is out of range (|log_scale| <= %g)",
                                    name, (double)st->an_s[c], c, MAX_LOG_SCALE);
                    st->an_logscale_sum += st->an_s[c];
                }
            }
            st->w1x1 = next(wl, &ci, ".conv1x1.weight", &name);
            float *inv = take(b, (size_t)C * C);
            if (invert_1x1(st->w1x1, inv, C, &st->w1x1_logdet, name, err, errlen))
                return -1;
            st->w1x1_inv = inv;
            if (assign_coupling(&st->coupling, wl, &ci, b, C, F, err, errlen))
                return -1;
            m->logdet_const += (double)lv->h * lv->w * (st->w1x1_logdet - st->an_logscale_sum);
        }
        if (lv->has_split && assign_coupling(&lv->split, wl, &ci, b, C, F, err, errlen))
            return -1;
    }
    FINC_CHECK(ci == wl->n);
    return 0;
}

/* The weights are copied out of the file's mapping rather than used in
 * place: a file replaced by truncating and rewriting it (cp over it) while
 * a server runs would make every access to a mapped page past the new end
 * a SIGBUS, and the copy of 40 MB costs a few milliseconds. Derived tensors
 * sit in the same block, which the CUDA backend uploads whole.
 *
 * The block: a mapping of its own, in huge pages where the kernel gives
 * them (madvise mode), so that filling 40 MB of weights takes some 20 page
 * faults instead of 10,000. Page-aligned, so 64-byte aligned. */
static float *alloc_block(size_t nbytes)
{
    void *p = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (nbytes >= HUGE_PAGE)
        madvise(p, nbytes, MADV_HUGEPAGE);
    return p;
}

static int build(finc_model *m, want_list *wl, char *err, size_t errlen)
{
    size_t stored = 0;
    for (int i = 0; i < wl->n; i++)
        stored += align_up(wl->v[i].numel);
    size_t total = stored + derived_floats(&m->cfg);
    void *p = alloc_block(total * sizeof(float));
    if (!p)
        return finc_errorf(err, errlen, "out of memory allocating %zu bytes of weights", total * sizeof(float));
    m->block = p;
    m->block_floats = total;
    bump b = {m->block, 0, total};
    for (int i = 0; i < wl->n; i++) {
        wl->v[i].dst = take(&b, wl->v[i].numel);
        if (copy_tensor(&wl->v[i], err, errlen))
            return -1;
    }
    return assign(m, wl, &b, err, errlen);
}

/* The optional calibration of the anomaly score (engine/anomaly.h). */
static int load_anomaly(finc_model *m, const finc_st *st, int summary, char *err, size_t errlen)
{
    const char *json = finc_st_meta(st, "anomaly");
    if (!json)
        return 0;
    if (!(m->anomaly = calloc(1, sizeof *m->anomaly)))
        return finc_errorf(err, errlen, "out of memory");
    return (summary ? finc_anomaly_parse_summary : finc_anomaly_parse)(m->anomaly, json, &m->cfg, err, errlen);
}

enum load_mode { LOAD_ALL, LOAD_UNCALIBRATED, LOAD_HEADER };

static int model_load(finc_model *m, const char *path, enum load_mode mode, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    m->cfg.test_bpd = NAN;
    finc_st st;
    if (finc_st_open(&st, path, err, errlen))
        return -1;
    want_list wl = {0};
    int rc = load_metadata(&m->cfg, &st, err, errlen);
    if (rc == 0) {
        finc_config_each_tensor(&m->cfg, collect, &wl);
        if (wl.oom)
            rc = finc_errorf(err, errlen, "out of memory");
    }
    if (rc == 0)
        rc = match_tensors(&wl, &st, &m->n_params, err, errlen);
    if (rc == 0)
        set_level_shapes(m);
    if (rc == 0 && mode != LOAD_HEADER)
        rc = build(m, &wl, err, errlen);
    if (rc == 0 && mode != LOAD_UNCALIBRATED)
        rc = load_anomaly(m, &st, mode == LOAD_HEADER, err, errlen);
    free(wl.v);
    finc_st_close(&st);
    if (rc)
        finc_model_free(m);
    return rc;
}

int finc_model_load(finc_model *m, const char *path, char *err, size_t errlen)
{
    return model_load(m, path, LOAD_ALL, err, errlen);
}

int finc_model_load_uncalibrated(finc_model *m, const char *path, char *err, size_t errlen)
{
    return model_load(m, path, LOAD_UNCALIBRATED, err, errlen);
}

int finc_model_load_header(finc_model *m, const char *path, char *err, size_t errlen)
{
    return model_load(m, path, LOAD_HEADER, err, errlen);
}

void finc_model_free(finc_model *m)
{
    if (!m)
        return;
    for (int l = 0; l < FINC_MAX_LEVELS; l++)
        free(m->levels[l].steps);
    if (m->block)
        munmap(m->block, m->block_floats * sizeof(float));
    finc_anomaly_free(m->anomaly);
    free(m->anomaly);
    finc_config_free(&m->cfg);
    memset(m, 0, sizeof *m);
    m->cfg.test_bpd = NAN;
}

int finc_config_stat_count(const finc_config *cfg)
{
    int n = 1 + cfg->levels + (cfg->levels - 1);
    for (int l = 0; l < cfg->levels; l++) n += cfg->steps[l];
    return n;
}

void finc_config_stat_name(const finc_config *cfg, int i, char *buf, size_t n)
{
    const int L = cfg->levels, S = finc_config_stat_count(cfg);
    FINC_CHECK(i >= 0 && i < S);
    if (i == 0) {
        snprintf(buf, n, "preprocess.logdet");
        return;
    }
    if (i >= S - L) {
        snprintf(buf, n, "levels.%d.latent.logp", i - (S - L));
        return;
    }
    int c = i - 1;
    for (int l = 0; l < L; l++) {
        if (c < cfg->steps[l]) {
            snprintf(buf, n, "levels.%d.steps.%d.coupling.logdet", l, c);
            return;
        }
        c -= cfg->steps[l];
        if (l < L - 1 && c-- == 0) {
            snprintf(buf, n, "levels.%d.split.coupling.logdet", l);
            return;
        }
    }
}

const finc_coupling *finc_model_coupling(const finc_model *m, int i)
{
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        if (i < lv->nsteps) return &lv->steps[i].coupling;
        i -= lv->nsteps;
        if (lv->has_split && i-- == 0) return &lv->split;
    }
    return NULL;
}

finc_scratch_sizes finc_model_scratch_sizes(const finc_model *m, int max_batch)
{
    finc_scratch_sizes s = {0, 0, 0};
    const size_t F = (size_t)m->cfg.width;
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        const size_t N = (size_t)max_batch * lv->h * lv->w, cin = (size_t)lv->c / 2, cout = (size_t)lv->c;
        if (cin * 9 * N > s.col) s.col = cin * 9 * N;
        if (F * N > s.hidden) s.hidden = F * N;
        if (cout * 9 * N > s.taps) s.taps = cout * 9 * N;
    }
    return s;
}

double finc_model_flops(const finc_model *m)
{
    double f = 0;
    const int k = m->cfg.kernel, F = m->cfg.width;
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        const double HW = (double)lv->h * lv->w, C = lv->c;
        const double coupling = 2 * HW * ((double)F * (C / 2) * 9 + (double)F * F + C * 9 * F);
        const double finc = 2 * HW * 4 * (C / 4) * (C / 4) * k * k;
        const double conv1x1 = 2 * HW * C * C;
        f += lv->nsteps * (coupling + finc + conv1x1);
        if (lv->has_split) f += coupling;
    }
    return f;
}
