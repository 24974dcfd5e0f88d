/* Anomaly scores (docs/anomaly.md): a density over statistics of each image,
 * fitted on in-distribution images only, and a conformal p-value against
 * calibration images that the fit never saw. The statistics are the
 * log-density terms of the image's encode pass (finc_encode_stats), its
 * lossless code length (complexity), four figures of its pixel histogram,
 * and its place in and distance from the principal subspace of the fit
 * images' pixels (the layout, which the flow's likelihood barely weighs).
 * The fitted scorer lives in the weights file's "anomaly" metadata; this
 * module fits it, writes and validates that block, and scores with it. */
#ifndef FINC_ANOMALY_H
#define FINC_ANOMALY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

#define FINC_ANOMALY_METHOD "whitened-gaussian-kde"
#define FINC_ANOMALY_VERSION 1
#define FINC_ANOMALY_MAX_FIT 20000      /* fit images kept in a block */
#define FINC_ANOMALY_MAX_CAL 1000000    /* calibration scores kept in a block */
#define FINC_ANOMALY_PCA 32              /* principal components of the layout */
#define FINC_ANOMALY_PCA_SIDE 32        /* images are average-pooled by 2 until H x W <= 32 x 32 */

struct finc_anomaly {
    int d;                  /* features: finc_anomaly_feature_count */
    int n_fit, n_cal;
    double bandwidth;       /* kernel width in whitened units */
    double *mean;           /* (d,) fit mean */
    double *whiten;         /* (d, d) lower triangular, row-major: z = whiten (x - mean) */
    double *points;         /* (n_fit, d) whitened fit features */
    float *points_t;        /* (d, n_fit) the same in float, feature-major: what scoring reads */
    double *cal;            /* (n_cal,) calibration scores, ascending */
    int pca_dim;            /* values of a pooled image: finc_anomaly_pooled_dim */
    double *pca_mean;       /* (pca_dim,) of the fit images, pixels / 255 */
    double *pca_basis;      /* (FINC_ANOMALY_PCA, pca_dim) orthonormal rows */
    double *pca_basis_t;    /* (pca_dim, FINC_ANOMALY_PCA) the same, transposed: what scoring reads */
    char *data;             /* what it was calibrated on, as given */
};

typedef struct {
    double score;           /* higher is more anomalous */
    double p_value;         /* (1 + #{calibration scores >= score}) / (n_cal + 1) */
    double complexity_bpd;  /* lossless code length of the pixels, bits/dim */
} finc_anomaly_result;

/* Features of a model: its encode statistics and five pixel figures (the
 * base, which the engine computes: finc_features), then the principal
 * subspace's coordinates and the log of the residual (finc_anomaly_complete). */
int finc_anomaly_base_count(const finc_config *cfg);
int finc_anomaly_feature_count(const finc_config *cfg);
int finc_anomaly_pooled_dim(const finc_config *cfg);
void finc_anomaly_feature_name(const finc_config *cfg, int i, char *buf, size_t n);

/* Per-thread scratch for the layout features of images of cfg's size. NULL
 * when out of memory. */
typedef struct finc_anomaly_scratch finc_anomaly_scratch;
finc_anomaly_scratch *finc_anomaly_scratch_new(const finc_config *cfg);
void finc_anomaly_scratch_free(finc_anomaly_scratch *s);

/* The pixels' (C, H, W) lossless code length in bits/dim: Paeth prediction,
 * residual magnitude classes under an adaptive model, raw low bits and sign
 * (docs/anomaly.md). */
double finc_anomaly_complexity(const uint8_t *pixels, int C, int H, int W);

/* The base of one image's feature row from its statistics (S,) and pixels. */
void finc_anomaly_features(const finc_config *cfg, const double *stats, const uint8_t *pixels, double *feat);
/* The rest of the row (d,) whose base is filled, from the pixels. */
void finc_anomaly_complete(finc_anomaly_scratch *s, const struct finc_anomaly *a, const finc_config *cfg,
                           const uint8_t *pixels, double *feat);
double finc_anomaly_score(const struct finc_anomaly *a, const double *feat);
double finc_anomaly_p_value(const struct finc_anomaly *a, double score);

/* The calibration scores as a histogram for display (/v1/models): `bins`
 * equal bins over [lo, hi], lo the smallest score and hi the 99th percentile,
 * so that the long tail does not squeeze the bulk into one bar; *over counts
 * the scores above hi. counts (bins,). */
#define FINC_ANOMALY_HIST_BINS 32
void finc_anomaly_histogram(const struct finc_anomaly *a, int bins, double *lo, double *hi, int *counts, int *over);

/* Fits on the first n_fit of n images and scores the rest into the
 * calibration set: feat (n, d) with each row's base filled (the rest is
 * filled here), pixels (n, C, H, W). Returns 0, or -1 with a message. */
int finc_anomaly_fit(struct finc_anomaly *a, const finc_config *cfg, double *feat, const uint8_t *pixels, int n,
                     int n_fit, const char *data, char *err, size_t errlen);
/* The block as the JSON text stored in the metadata (malloc'd), or NULL. */
char *finc_anomaly_to_json(const struct finc_anomaly *a, const finc_config *cfg);
/* Parses and validates a block for a model of config cfg. Returns 0, or -1
 * with one message naming the field at fault; nothing is kept on failure. */
int finc_anomaly_parse(struct finc_anomaly *a, const char *json, const finc_config *cfg, char *err, size_t errlen);
/* The block's summary without its arrays of numbers: method, version and
 * feature names checked, d, n_fit, n_cal, bandwidth and data set, every
 * array left NULL. What finc info reads: it skips the 100k numbers a full
 * parse converts. Such a block describes a calibration; it cannot score. */
int finc_anomaly_parse_summary(struct finc_anomaly *a, const char *json, const finc_config *cfg, char *err,
                               size_t errlen);
void finc_anomaly_free(struct finc_anomaly *a);

#endif
