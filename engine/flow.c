/* The chain of model.md sections 1-3, written once against the backend table. */
#include "flow.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anomaly.h"
#include "check.h"
#include "error.h"
#include "philox.h"

struct finc_engine {
    finc_model model;
    finc_backend *be;
    int max_batch, D;
    /* backend memory, sized once for max_batch */
    float *act[2];                /* (D, B) activations, ping-pong */
    float *u;                     /* (B, D) dequantization offsets */
    float *lat;                   /* (B, D) latents */
    float *lat2;                  /* (B, D) the other latent buffer of finc_sample's pipeline */
    uint8_t *pix;                 /* (B, D) pixels, in and out */
    int nstats;                   /* finc_config_stat_count */
    double *stats;                /* (nstats, B) */
    double *stat_const;           /* (nstats,) the image-independent part of each statistic */
    double logp_const;            /* ... of log p: their sum, plus the ActNorm and 1x1 log-dets */
    /* host staging */
    float *h_u;                   /* (B, D) */
    double *h_stats;              /* (nstats, B) */
    float *h_lat[2];              /* (B, D) finc_sample's latent draws, double-buffered, host_alloc'd */
    uint8_t *h_rows;              /* (B, D) importance-weighted scoring's image rows, made on first use */
    /* anomaly features, made on first use */
    int nscratch;
    finc_anomaly_scratch **scratch; /* one per OpenMP thread */
    double *h_img_stats;          /* (B, nstats) */
    double *h_feat;               /* (B, d) */
};

static void engine_release(finc_engine *e)
{
    if (e->be) {
        finc_backend *be = e->be;
        void *bufs[] = {e->act[0], e->act[1], e->u, e->lat, e->lat2, e->pix, e->stats};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) be->release(be, bufs[i]);
        for (int i = 0; i < 2; i++)
            if (e->h_lat[i]) be->host_release(be, e->h_lat[i]);
        be->destroy(be);
    }
    free(e->h_u);
    free(e->h_stats);
    free(e->stat_const);
    free(e->h_rows);
    for (int i = 0; i < e->nscratch; i++) finc_anomaly_scratch_free(e->scratch[i]);
    free(e->scratch);
    free(e->h_img_stats);
    free(e->h_feat);
    finc_model_free(&e->model);
    free(e);
}


/* The terms of log p that do not depend on the image: the pre-processing
 * constants (-D ln 256 + D ln(1 - 2a), statistic 0's), each latent's Gaussian
 * normaliser (its statistic's), and the ActNorm and 1x1 log-dets (no
 * statistic's). */
static void set_constants(finc_engine *e)
{
    const finc_model *m = &e->model;
    const int L = m->cfg.levels, S = e->nstats;
    const double D = e->D;
    e->stat_const[0] = -D * log(256.0) + D * log1p(-2.0 * m->cfg.alpha);
    for (int l = 0; l < L; l++) {
        const finc_level *lv = &m->levels[l];
        const double dim = (double)(lv->has_split ? lv->c / 2 : lv->c) * lv->h * lv->w;
        e->stat_const[S - L + l] = -0.5 * dim * log(2.0 * M_PI);
    }
    e->logp_const = m->logdet_const;
    for (int r = 0; r < S; r++) e->logp_const += e->stat_const[r];
}

/* "auto" takes CUDA when its module loads and a device answers, else the CPU,
 * and says why on stderr. */
static finc_backend *open_backend(const finc_model *m, const finc_engine_opts *o, char *err, size_t errlen)
{
    if (strcmp(o->backend, "cuda") == 0) return finc_cuda_open(m, o->max_batch, -1, o->precision, err, errlen);
    if (strcmp(o->backend, "auto") == 0) {
        char why[1024];
        if (finc_cuda_available(why, sizeof why))
            return finc_cuda_open(m, o->max_batch, -1, o->precision, err, errlen);
        fprintf(stderr, "finc: backend auto: the CPU (%s)\n", why);
    }
    return finc_backend_cpu_new(m, o->max_batch, o->threads, err, errlen);
}

int finc_precision_parse(const char *name, finc_precision *out)
{
    if (name && !strcmp(name, "fp32")) *out = FINC_PRECISION_FP32;
    else if (name && !strcmp(name, "tf32")) *out = FINC_PRECISION_TF32;
    else return -1;
    return 0;
}

const char *finc_precision_name(finc_precision p) { return p == FINC_PRECISION_TF32 ? "tf32" : "fp32"; }

int finc_backend_name_ok(const char *name)
{
    return name && (!strcmp(name, "cpu") || !strcmp(name, "cuda") || !strcmp(name, "auto"));
}

finc_engine *finc_engine_open(const char *weights_path, const finc_engine_opts *opts,
                              char *err, size_t errlen)
{
    finc_engine_opts o = opts ? *opts : (finc_engine_opts){0};
    if (!o.backend) o.backend = "cpu";
    if (o.max_batch <= 0) o.max_batch = FINC_DEFAULT_BATCH;
    if (!finc_backend_name_ok(o.backend)) {
        finc_errorf(err, errlen, "unknown backend '%s' (cpu, cuda or auto)", o.backend);
        return NULL;
    }
    finc_engine *e = calloc(1, sizeof *e);
    if (!e) {
        finc_errorf(err, errlen, "out of memory");
        return NULL;
    }
    if ((o.uncalibrated ? finc_model_load_uncalibrated : finc_model_load)(&e->model, weights_path, err, errlen) != 0) {
        free(e);
        return NULL;
    }
    const int B = o.max_batch;
    e->max_batch = B;
    e->D = finc_config_dim(&e->model.cfg);
    e->be = open_backend(&e->model, &o, err, errlen);
    if (!e->be) {
        engine_release(e);
        return NULL;
    }
    finc_backend *be = e->be;
    const size_t BD = (size_t)B * e->D;
    e->act[0] = be->alloc(be, BD * sizeof(float));
    e->act[1] = be->alloc(be, BD * sizeof(float));
    e->u = be->alloc(be, BD * sizeof(float));
    e->lat = be->alloc(be, BD * sizeof(float));
    e->lat2 = be->alloc(be, BD * sizeof(float));
    e->pix = be->alloc(be, BD);
    e->nstats = finc_config_stat_count(&e->model.cfg);
    const size_t nstats = (size_t)e->nstats * B;
    e->stats = be->alloc(be, nstats * sizeof(double));
    e->h_u = malloc(BD * sizeof(float));
    e->h_lat[0] = be->host_alloc(be, BD * sizeof(float));
    e->h_lat[1] = be->host_alloc(be, BD * sizeof(float));
    e->h_stats = malloc(nstats * sizeof(double));
    e->stat_const = calloc((size_t)e->nstats, sizeof(double));
    if (!e->act[0] || !e->act[1] || !e->u || !e->lat || !e->lat2 || !e->pix || !e->stats || !e->h_u || !e->h_lat[0] ||
        !e->h_lat[1] ||
        !e->h_stats || !e->stat_const) {
        finc_errorf(err, errlen, "out of memory for a batch of %d", B);
        engine_release(e);
        return NULL;
    }
    /* A backend that pads chains to buckets (CUDA's graphs) reads rows past
     * the batch: they must hold numbers, whatever the device's memory held
     * before. One that does not (the CPU) leaves its buffers untouched, so
     * only the rows a job uses become resident. */
    int pads = 0;
    for (int b = 1; b <= B && !pads; b++) pads = be->batch_bucket(be, b) != b;
    if (pads) {
        be->zero(be, e->u, BD * sizeof(float));
        be->zero(be, e->lat, BD * sizeof(float));
        be->zero(be, e->lat2, BD * sizeof(float));
        be->zero(be, e->pix, BD);
        if (be->sync(be, err, errlen) != 0) {
            engine_release(e);
            return NULL;
        }
    }
    set_constants(e);
    return e;
}

void finc_engine_free(finc_engine *e)
{
    if (e) engine_release(e);
}

const finc_model *finc_engine_model(const finc_engine *e) { return &e->model; }
const char *finc_engine_backend_name(const finc_engine *e) { return e->be->name; }
finc_backend *finc_engine_backend(finc_engine *e) { return e->be; }
int finc_engine_max_batch(const finc_engine *e) { return e->max_batch; }

double finc_bits_per_dim(const finc_config *cfg, double logp)
{
    return -logp / (finc_config_dim(cfg) * log(2.0));
}

static void swap(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

/* One chunk of B <= max_batch images whose pixels sit in e->pix and, when
 * has_u, offsets in e->u. Every log-det and Gaussian term goes to its own row
 * of e->stats, so the statistics cost no second pass. B is the backend's
 * bucket (finc_engine_bucket): the rows past the caller's images are padding. */
static int encode_chunk(finc_engine *e, int B, int has_u, char *err, size_t errlen)
{
    finc_backend *be = e->be;
    const finc_model *m = &e->model;
    const finc_config *cfg = &m->cfg;
    be->zero(be, e->stats, (size_t)e->nstats * B * sizeof(double));
    double *row = e->stats;
    float *cur = e->act[0], *tmp = e->act[1];
    be->preprocess(be, cur, row, e->pix, has_u ? e->u : NULL, B, cfg->c, cfg->h, cfg->w, cfg->alpha);
    row += B;
    double *latent_rows = e->stats + (size_t)(e->nstats - cfg->levels) * B;
    int C = cfg->c, H = cfg->h, W = cfg->w, offset = 0;
    for (int l = 0; l < cfg->levels; l++) {
        const finc_level *lv = &m->levels[l];
        be->squeeze(be, tmp, cur, C, B, H, W);
        swap(&cur, &tmp);
        C *= 4, H /= 2, W /= 2;
        const int HW = H * W;
        for (int s = 0; s < lv->nsteps; s++, row += B) {
            const finc_step *st = &lv->steps[s];
            be->finc_forward(be, tmp, cur, st, C, B, H, W, cfg->kernel);
            swap(&cur, &tmp);
            if (cfg->actnorm) be->actnorm_forward(be, cur, st, C, B, HW);
            be->conv1x1_forward(be, tmp, cur, st, C, B, HW);
            swap(&cur, &tmp);
            be->coupling_forward(be, cur, row, &st->coupling, B, H, W);
        }
        /* The split's latent is the upper half; the last level's is all of it. */
        const float *z = cur;
        int zc = C;
        if (lv->has_split) {
            be->coupling_forward(be, cur, row, &lv->split, B, H, W);
            row += B;
            zc = C / 2;
            z = cur + (size_t)zc * B * HW;
            C /= 2;
        }
        be->latents_write(be, e->lat, e->D, offset, z, zc, B, HW);
        be->gaussian_logp(be, latent_rows + (size_t)l * B, z, zc, B, HW);
        offset += zc * HW;
    }
    return be->sync(be, err, errlen);
}

static int check_n(const finc_engine *e, int n, char *err, size_t errlen)
{
    if (n < 0) {
        return finc_errorf(err, errlen, "negative batch size %d", n);
    }
    return 0;
}

int finc_encode_stats(finc_engine *e, int n, const uint8_t *pixels, const float *u, float *latents,
                      double *logp, double *stats, char *err, size_t errlen)
{
    if (check_n(e, n, err, errlen)) return -1;
    finc_backend *be = e->be;
    const int S = e->nstats;
    const size_t D = (size_t)e->D;
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch, Bp = be->batch_bucket(be, B);
        be->upload(be, e->pix, pixels + (size_t)i0 * D, (size_t)B * D);
        if (u) be->upload(be, e->u, u + (size_t)i0 * D, (size_t)B * D * sizeof(float));
        if (encode_chunk(e, Bp, u != NULL, err, errlen)) return -1;
        be->download(be, e->h_stats, e->stats, (size_t)S * Bp * sizeof(double));
        const double *hs = e->h_stats;
        for (int b = 0; b < B; b++) {
            double sum = 0;
            for (int r = 0; r < S; r++) sum += hs[(size_t)r * Bp + b];
            logp[i0 + b] = sum + e->logp_const;
            if (!stats) continue;
            /* each statistic a whole log-density term of its own */
            double *st = stats + (size_t)(i0 + b) * S;
            for (int r = 0; r < S; r++) st[r] = hs[(size_t)r * Bp + b] + e->stat_const[r];
        }
        if (latents)
            be->download(be, latents + (size_t)i0 * D, e->lat, (size_t)B * D * sizeof(float));
    }
    return 0;
}

int finc_encode(finc_engine *e, int n, const uint8_t *pixels, const float *u,
                float *latents, double *logp, char *err, size_t errlen)
{
    return finc_encode_stats(e, n, pixels, u, latents, logp, NULL, err, errlen);
}

static int features_init(finc_engine *e, char *err, size_t errlen)
{
    if (e->scratch) return 0;
    const int T = omp_get_max_threads();
    e->h_img_stats = malloc((size_t)e->max_batch * e->nstats * sizeof(double));
    e->h_feat = malloc((size_t)e->max_batch * finc_anomaly_feature_count(&e->model.cfg) * sizeof(double));
    e->scratch = calloc((size_t)T, sizeof *e->scratch);
    if (e->scratch)
        for (e->nscratch = 0; e->nscratch < T; e->nscratch++)
            if (!(e->scratch[e->nscratch] = finc_anomaly_scratch_new(&e->model.cfg))) break;
    if (!e->h_img_stats || !e->h_feat || !e->scratch || e->nscratch < T) {
        return finc_errorf(err, errlen, "out of memory for the anomaly features");
    }
    return 0;
}

int finc_features(finc_engine *e, int n, const uint8_t *pixels, double *logp, double *feat, int stride, char *err,
                  size_t errlen)
{
    if (check_n(e, n, err, errlen) || features_init(e, err, errlen)) return -1;
    const finc_config *cfg = &e->model.cfg;
    const int S = e->nstats;
    const size_t D = (size_t)e->D;
    double lp[e->max_batch];
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        const uint8_t *px = pixels + (size_t)i0 * D;
        if (finc_encode_stats(e, B, px, NULL, NULL, lp, e->h_img_stats, err, errlen)) return -1;
        if (logp) memcpy(logp + i0, lp, (size_t)B * sizeof *lp);
#pragma omp parallel for schedule(static) if (B > 1)
        for (int b = 0; b < B; b++)
            finc_anomaly_features(cfg, e->h_img_stats + (size_t)b * S, px + (size_t)b * D,
                                  feat + (size_t)(i0 + b) * stride);
    }
    return 0;
}

int finc_score_anomaly(finc_engine *e, int n, const uint8_t *pixels, double *logp, finc_anomaly_result *an,
                       char *err, size_t errlen)
{
    const struct finc_anomaly *a = e->model.anomaly;
    if (!a) {
        return finc_errorf(err, errlen, "the model is not calibrated for anomaly scores (finc calibrate)");
    }
    const int d = a->d, S = e->nstats;
    if (features_init(e, err, errlen)) return -1;
    double *feat = e->h_feat;
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        const uint8_t *px = pixels + (size_t)i0 * e->D;
        if (finc_features(e, B, px, logp ? logp + i0 : NULL, feat, d, err, errlen)) return -1;
#pragma omp parallel for schedule(static) if (B > 1)
        for (int b = 0; b < B; b++) {
            finc_anomaly_result *r = &an[i0 + b];
            finc_anomaly_complete(e->scratch[omp_get_thread_num()], a, &e->model.cfg, px + (size_t)b * e->D,
                                  feat + (size_t)b * d);
            r->score = finc_anomaly_score(a, feat + (size_t)b * d);
            r->p_value = finc_anomaly_p_value(a, r->score);
            r->complexity_bpd = feat[(size_t)b * d + S];
        }
    }
    return 0;
}

int finc_calibrate(finc_engine *e, int n, const uint8_t *pixels, int n_fit, const char *data, struct finc_anomaly *a,
                   char *err, size_t errlen)
{
    const finc_config *cfg = &e->model.cfg;
    const int d = finc_anomaly_feature_count(cfg);
    double *feat = n > 0 ? malloc((size_t)n * d * sizeof *feat) : NULL;
    if (n > 0 && !feat) {
        return finc_errorf(err, errlen, "out of memory for the features of %d images", n);
    }
    int rc = finc_features(e, n, pixels, NULL, feat, d, err, errlen);
    if (rc == 0) rc = finc_anomaly_fit(a, cfg, feat, pixels, n, n_fit, data, err, errlen);
    free(feat);
    return rc;
}

/* Importance-weighted log p of B <= max_batch images, image b's draws keyed
 * by (seeds[b], indices[b]): ln mean_s exp(lp_s), accumulated stably against
 * the first draw. */
/* Importance-weighted scores of B <= max_batch images with `samples` draws
 * each. The (image, draw) pairs are packed into engine batches of max_batch
 * rows, so one image with 64 draws is one batch of 64, not 64 batches of
 * one. Each image's draws are folded into its log-mean-exp in draw order,
 * so the result does not depend on how the rows were packed. */
static int score_iw_chunk(finc_engine *e, int B, const uint8_t *pixels, int samples, const uint64_t *seeds,
                          const uint64_t *indices, double *logp, char *err, size_t errlen)
{
    const size_t D = (size_t)e->D;
    if (!e->h_rows && !(e->h_rows = malloc((size_t)e->max_batch * D))) {
        return finc_errorf(err, errlen, "out of memory");
    }
    double lp[e->max_batch], best[B], acc[B];
    const long rows = (long)B * samples;
    for (long r0 = 0; r0 < rows; r0 += e->max_batch) {
        const int R = rows - r0 < e->max_batch ? (int)(rows - r0) : e->max_batch;
#pragma omp parallel for schedule(static) if (R > 1)
        for (int i = 0; i < R; i++) {
            const int b = (int)((r0 + i) / samples), s = (int)((r0 + i) % samples);
            memcpy(e->h_rows + (size_t)i * D, pixels + (size_t)b * D, D);
            finc_philox_uniform(seeds[b], indices[b], FINC_STREAM_DEQUANT | ((uint32_t)s << 8), e->h_u + (size_t)i * D,
                                D);
        }
        if (finc_encode(e, R, e->h_rows, e->h_u, NULL, lp, err, errlen)) return -1;
        for (int i = 0; i < R; i++) {
            const int b = (int)((r0 + i) / samples), s = (int)((r0 + i) % samples);
            if (s == 0) {
                best[b] = lp[i];
                acc[b] = 1.0;
            } else if (lp[i] > best[b]) {
                acc[b] = acc[b] * exp(best[b] - lp[i]) + 1.0;
                best[b] = lp[i];
            } else {
                acc[b] += exp(lp[i] - best[b]);
            }
        }
    }
    for (int b = 0; b < B; b++) logp[b] = best[b] + log(acc[b] / samples);
    return 0;
}

int finc_score(finc_engine *e, int n, const uint8_t *pixels, int samples, uint64_t seed,
               uint64_t first_index, double *logp, char *err, size_t errlen)
{
    if (samples <= 1) return finc_encode(e, n, pixels, NULL, NULL, logp, err, errlen);
    if (check_n(e, n, err, errlen)) return -1;
    uint64_t seeds[e->max_batch], indices[e->max_batch];
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        for (int b = 0; b < B; b++) seeds[b] = seed, indices[b] = first_index + (uint64_t)(i0 + b);
        if (score_iw_chunk(e, B, pixels + (size_t)i0 * e->D, samples, seeds, indices, logp + i0, err, errlen))
            return -1;
    }
    return 0;
}

int finc_score_keyed(finc_engine *e, int n, const uint8_t *pixels, int samples, const uint64_t *seeds,
                     const uint64_t *indices, double *logp, char *err, size_t errlen)
{
    if (samples <= 1) return finc_encode(e, n, pixels, NULL, NULL, logp, err, errlen);
    if (check_n(e, n, err, errlen)) return -1;
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        if (score_iw_chunk(e, B, pixels + (size_t)i0 * e->D, samples, seeds + i0, indices + i0, logp + i0, err,
                           errlen))
            return -1;
    }
    return 0;
}

/* Issues the decode of B (a bucket) latent rows in lat to pixels in e->pix,
 * without waiting for it. */
static void decode_issue(finc_engine *e, int B, const float *lat)
{
    finc_backend *be = e->be;
    const finc_model *m = &e->model;
    const finc_config *cfg = &m->cfg;
    const int L = cfg->levels;
    int offsets[FINC_MAX_LEVELS + 1], off = 0;
    for (int l = 0; l < L; l++) {
        offsets[l] = off;
        if (m->levels[l].has_split) off += m->levels[l].c / 2 * m->levels[l].h * m->levels[l].w;
    }
    offsets[L] = off;
    float *cur = e->act[0], *tmp = e->act[1];
    const finc_level *last = &m->levels[L - 1];
    be->latents_read(be, cur, lat, e->D, offsets[L], last->c, B, last->h * last->w);
    for (int l = L - 1; l >= 0; l--) {
        const finc_level *lv = &m->levels[l];
        const int C = lv->c, H = lv->h, W = lv->w, HW = H * W;
        if (lv->has_split) {
            be->latents_read(be, cur + (size_t)(C / 2) * B * HW, lat, e->D, offsets[l], C / 2, B, HW);
            be->coupling_inverse(be, cur, &lv->split, B, H, W);
        }
        for (int s = lv->nsteps - 1; s >= 0; s--) {
            const finc_step *st = &lv->steps[s];
            be->coupling_inverse(be, cur, &st->coupling, B, H, W);
            be->conv1x1_inverse(be, tmp, cur, st, C, B, HW);
            swap(&cur, &tmp);
            if (cfg->actnorm) be->actnorm_inverse(be, cur, st, C, B, HW);
            be->finc_inverse(be, tmp, cur, st, C, B, H, W, cfg->kernel);
            swap(&cur, &tmp);
        }
        be->unsqueeze(be, tmp, cur, C / 4, B, 2 * H, 2 * W);
        swap(&cur, &tmp);
    }
    be->postprocess(be, e->pix, cur, B, cfg->c, cfg->h, cfg->w, cfg->alpha);
    be->submit(be);
}

static int decode_chunk(finc_engine *e, int B, const float *lat, char *err, size_t errlen)
{
    decode_issue(e, B, lat);
    return e->be->sync(e->be, err, errlen);
}

int finc_decode(finc_engine *e, int n, const float *latents, uint8_t *pixels,
                char *err, size_t errlen)
{
    if (check_n(e, n, err, errlen)) return -1;
    finc_backend *be = e->be;
    const size_t D = (size_t)e->D;
    for (int i0 = 0; i0 < n; i0 += e->max_batch) {
        const int B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        be->upload(be, e->lat, latents + (size_t)i0 * D, (size_t)B * D * sizeof(float));
        if (decode_chunk(e, be->batch_bucket(be, B), e->lat, err, errlen)) return -1;
        be->download(be, pixels + (size_t)i0 * D, e->pix, (size_t)B * D);
    }
    return 0;
}

/* The chains of a batch size (encode, encode with offsets, decode from
 * either latent buffer), on whatever the buffers hold. */
static int warm_chains(void *user, int B, char *err, size_t errlen)
{
    finc_engine *e = user;
    return encode_chunk(e, B, 0, err, errlen) || encode_chunk(e, B, 1, err, errlen) ||
                   decode_chunk(e, B, e->lat, err, errlen) || decode_chunk(e, B, e->lat2, err, errlen)
               ? -1
               : 0;
}

int finc_engine_warm_up(finc_engine *e, char *err, size_t errlen)
{
    return e->be->warm_up(e->be, warm_chains, e, err, errlen);
}

void finc_engine_status(finc_engine *e, finc_backend_status *s) { e->be->status(e->be, s); }

void finc_draw_latents(const finc_engine *e, uint64_t seed, uint64_t index, float temperature,
                       float *latents)
{
    finc_philox_normal(seed, index, FINC_STREAM_LATENT, temperature, latents, (size_t)e->D);
}

void finc_draw_latents_rows(const finc_engine *e, int n, uint64_t seed, uint64_t first_index, float temperature,
                            float *latents)
{
    /* Rows are independent (keyed by index). Serially, 100 CIFAR-10 rows take
     * a sixth of the GPU's whole 100-image sampling aim. */
#pragma omp parallel for schedule(static) if (n > 1)
    for (int b = 0; b < n; b++)
        finc_draw_latents(e, seed, first_index + (uint64_t)b, temperature, latents + (size_t)b * e->D);
}

int finc_sample(finc_engine *e, int n, float temperature, uint64_t seed, uint64_t first_index,
                uint8_t *pixels, char *err, size_t errlen)
{
    if (check_n(e, n, err, errlen)) return -1;
    if (!(temperature >= 0.0f) || !isfinite(temperature)) {
        return finc_errorf(err, errlen, "temperature must be a finite number >= 0");
    }
    /* A pipeline over chunks of max_batch: while the device decodes chunk i,
     * the host draws chunk i + 1 into the other staging buffer and its copy
     * to the other latent buffer runs beside the decode. */
    finc_backend *be = e->be;
    const size_t D = (size_t)e->D;
    float *lat[2] = {e->lat, e->lat2};
    const int chunks = n == 0 ? 0 : (n + e->max_batch - 1) / e->max_batch;
    for (int c = 0; c < chunks; c++) {
        const int i0 = c * e->max_batch, B = n - i0 < e->max_batch ? n - i0 : e->max_batch;
        if (c == 0) {
            finc_draw_latents_rows(e, B, seed, first_index, temperature, e->h_lat[0]);
            be->upload_async(be, lat[0], e->h_lat[0], (size_t)B * D * sizeof(float));
        }
        decode_issue(e, be->batch_bucket(be, B), lat[c % 2]);
        if (c + 1 < chunks) {
            const int j0 = i0 + e->max_batch, Bn = n - j0 < e->max_batch ? n - j0 : e->max_batch;
            finc_draw_latents_rows(e, Bn, seed, first_index + (uint64_t)j0, temperature, e->h_lat[(c + 1) % 2]);
            be->upload_async(be, lat[(c + 1) % 2], e->h_lat[(c + 1) % 2], (size_t)Bn * D * sizeof(float));
        }
        if (be->sync(be, err, errlen)) return -1;
        be->download(be, pixels + (size_t)i0 * D, e->pix, (size_t)B * D);
    }
    return 0;
}
