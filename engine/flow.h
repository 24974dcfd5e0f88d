/* The engine: the whole FInC Flow chain of model.md (pre-processing, squeeze,
 * steps, splits, priors, and their inverses) on a batch, through a backend.
 * The CLI and the server call only this API. Not thread-safe: one caller
 * thread per engine. */
#ifndef FINC_FLOW_H
#define FINC_FLOW_H

#include <stddef.h>
#include <stdint.h>

#include "anomaly.h"
#include "backend.h"
#include "model.h"

#define FINC_DEFAULT_BATCH 64   /* the largest batch when finc_engine_opts.max_batch is <= 0 */

typedef struct finc_engine finc_engine;

typedef struct {
    const char *backend;   /* "cpu" (default), "cuda" or "auto" */
    int max_batch;         /* largest batch run at once (default 64); larger n is chunked */
    int threads;           /* CPU threads; <= 0 for all cores */
    int uncalibrated;      /* leave out the weights' anomaly block: finc calibrate replaces it, and
                              sample, encode and decode never read it */
    finc_precision precision; /* CUDA GEMMs: FINC_PRECISION_FP32 (default) or _TF32 */
} finc_engine_opts;

/* "fp32" or "tf32" to *out; -1 for anything else. */
int finc_precision_parse(const char *name, finc_precision *out);
const char *finc_precision_name(finc_precision p);

/* Whether name is a backend: "cpu", "cuda" or "auto". */
int finc_backend_name_ok(const char *name);

/* Load the weights and start a backend. Returns NULL with a message in err. */
finc_engine *finc_engine_open(const char *weights_path, const finc_engine_opts *opts,
                              char *err, size_t errlen);
void finc_engine_free(finc_engine *e);

const finc_model *finc_engine_model(const finc_engine *e);
const char *finc_engine_backend_name(const finc_engine *e);
/* The backend itself, for checks and benchmarks that look inside it. */
finc_backend *finc_engine_backend(finc_engine *e);
int finc_engine_max_batch(const finc_engine *e);
/* Runs every chain the engine issues (encode, encode with offsets, decode) at
 * each batch size its backend pads to, so that a CUDA backend captures all
 * its graphs now rather than during the first requests. Returns 0, or -1
 * with a message. */
int finc_engine_warm_up(finc_engine *e, char *err, size_t errlen);
/* The backend's state (engine/backend.h); dead: every later call fails. */
void finc_engine_status(finc_engine *e, finc_backend_status *s);

/* Encode n images (pixels (n, C, H, W)) with dequantization offsets u (n, C, H, W)
 * in [0, 1), or u == NULL for 0.5 everywhere. Writes the latents (n, D) when
 * latents != NULL and log p(v) in nats per image. Returns 0, or -1 with err. */
int finc_encode(finc_engine *e, int n, const uint8_t *pixels, const float *u,
                float *latents, double *logp, char *err, size_t errlen);

/* finc_encode that also writes each image's statistics, stats (n, S) with S =
 * finc_config_stat_count: the terms whose sum is log p, from the same pass.
 * Row i of an image holds statistic i, named by finc_config_stat_name:
 * "preprocess.logdet" (model.md section 1, constants included), then each
 * coupling's log-det in chain order ("levels.L.steps.S.coupling.logdet",
 * "levels.L.split.coupling.logdet"), then each latent's log N(z; 0, I)
 * ("levels.L.latent.logp"). log p is their sum plus the ActNorm and 1x1
 * log-dets, which do not depend on the image. */
int finc_encode_stats(finc_engine *e, int n, const uint8_t *pixels, const float *u, float *latents,
                      double *logp, double *stats, char *err, size_t errlen);

/* The base of n images' anomaly feature rows (engine/anomaly.h: their encode
 * statistics at midpoint dequantization, complexity and pixel figures) into
 * feat, rows `stride` apart, and their midpoint log p when logp != NULL, from
 * one pass. */
int finc_features(finc_engine *e, int n, const uint8_t *pixels, double *logp, double *feat, int stride, char *err,
                  size_t errlen);
/* Anomaly score, p-value and complexity per image of a calibrated model
 * (an error otherwise), from finc_features; the midpoint log p too when
 * logp != NULL. */
int finc_score_anomaly(finc_engine *e, int n, const uint8_t *pixels, double *logp, finc_anomaly_result *an,
                       char *err, size_t errlen);

/* Fits an anomaly scorer on the first n_fit of n in-distribution images and
 * calibrates it on the rest (engine/anomaly.h, finc_anomaly_fit), `data`
 * saying what they were. Returns 0, or -1 with a message. */
int finc_calibrate(finc_engine *e, int n, const uint8_t *pixels, int n_fit, const char *data, struct finc_anomaly *a,
                   char *err, size_t errlen);

/* Score: log p per image, midpoint dequantization when samples <= 1, else the
 * importance-weighted estimate ln mean_s exp(log p_s) over `samples` uniform
 * draws keyed by (seed, first_index + i). */
int finc_score(finc_engine *e, int n, const uint8_t *pixels, int samples, uint64_t seed,
               uint64_t first_index, double *logp, char *err, size_t errlen);
/* finc_score with image i's draws keyed by (seeds[i], indices[i]): the
 * importance-weighted scores of several requests in one batch, each equal to
 * its request scored alone. */
int finc_score_keyed(finc_engine *e, int n, const uint8_t *pixels, int samples, const uint64_t *seeds,
                     const uint64_t *indices, double *logp, char *err, size_t errlen);

/* Decode n latent rows (n, D) to pixels (n, C, H, W). */
int finc_decode(finc_engine *e, int n, const float *latents, uint8_t *pixels,
                char *err, size_t errlen);

/* Sample n images: latents for image i drawn from N(0, T^2 I) keyed by
 * (seed, first_index + i), so an image does not depend on its batch. */
int finc_sample(finc_engine *e, int n, float temperature, uint64_t seed, uint64_t first_index,
                uint8_t *pixels, char *err, size_t errlen);

/* The latent row (D,) of image `index` of a sample with this seed: N(0, T^2 I)
 * from Philox keyed by (seed, index). finc_sample decodes exactly these; a
 * caller that batches images of many requests into one finc_decode draws
 * each row with this. */
void finc_draw_latents(const finc_engine *e, uint64_t seed, uint64_t index, float temperature,
                       float *latents);
/* The rows (n, D) of images first_index .. first_index + n - 1, a row per
 * thread: the host's share of finc_sample. */
void finc_draw_latents_rows(const finc_engine *e, int n, uint64_t seed, uint64_t first_index, float temperature,
                            float *latents);

/* bits/dim from log p. */
double finc_bits_per_dim(const finc_config *cfg, double logp);

#endif
