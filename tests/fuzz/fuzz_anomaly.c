/* The "anomaly" calibration block, a JSON string in a weights file's metadata,
 * for a fixed small model (1 x 8 x 8, 2 levels of 1 step: 44 features, 64
 * pooled pixels). A block that parses must hold what the scorer relies on and
 * come back unchanged through finc_anomaly_to_json; a refusal must say why
 * and keep nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/anomaly.h"
#include "engine/model.h"

static const char config_json[] = "{\"image\":[1,8,8],\"levels\":2,\"steps\":[1,1],\"kernel\":3,"
                                  "\"coupling_width\":8,\"actnorm\":true}";

static const finc_config *config(void)
{
    static finc_config cfg;
    static int ready;
    if (!ready) {
        char err[256] = "";
        if (finc_config_parse(&cfg, config_json, err, sizeof err) != 0) {
            fprintf(stderr, "fuzz_anomaly: the fixed config: %s\n", err);
            abort();
        }
        ready = 1;
    }
    return &cfg;
}

static int all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

static int same(const double *x, const double *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return 0;  /* == : cJSON writes -0 as 0 */
    return 1;
}

/* (1 + #{calibration scores >= s}) / (n_cal + 1), counted. */
static double p_value_counted(const struct finc_anomaly *a, double s)
{
    int ge = 0;
    for (int i = 0; i < a->n_cal; i++) ge += a->cal[i] >= s;
    return (1.0 + ge) / (a->n_cal + 1.0);
}

static void check_p_value(const struct finc_anomaly *a, double s)
{
    const double p = finc_anomaly_p_value(a, s);
    if (!(p >= 1.0 / (a->n_cal + 1.0) && p <= 1.0) || p != p_value_counted(a, s)) abort();
}

static void check(const struct finc_anomaly *a, const finc_config *cfg)
{
    const int d = finc_anomaly_feature_count(cfg), P = finc_anomaly_pooled_dim(cfg);
    if (a->d != d || a->pca_dim != P) abort();
    if (a->n_fit < 2 * d || a->n_fit > FINC_ANOMALY_MAX_FIT || a->n_cal < 1 || a->n_cal > FINC_ANOMALY_MAX_CAL) abort();
    if (!(a->bandwidth > 1e-6 && a->bandwidth <= 1e6)) abort();
    if (!a->mean || !a->whiten || !a->points || !a->points_t || !a->cal || !a->pca_mean || !a->pca_basis ||
        !a->pca_basis_t || !a->data)
        abort();
    if (!all_finite(a->mean, (size_t)d) || !all_finite(a->whiten, (size_t)d * d) ||
        !all_finite(a->points, (size_t)a->n_fit * d) || !all_finite(a->cal, (size_t)a->n_cal) ||
        !all_finite(a->pca_mean, (size_t)P) || !all_finite(a->pca_basis, (size_t)FINC_ANOMALY_PCA * P))
        abort();
    for (int j = 0; j < d; j++) {
        if (!(a->whiten[(size_t)j * d + j] > 0)) abort();
        for (int k = j + 1; k < d; k++)
            if (a->whiten[(size_t)j * d + k] != 0) abort();
    }
    for (int i = 1; i < a->n_cal; i++)
        if (a->cal[i] < a->cal[i - 1]) abort();
    for (int i = 0; i < a->n_fit; i++)  /* what scoring reads: the points, feature-major */
        for (int j = 0; j < d; j++)
            if (a->points_t[(size_t)j * a->n_fit + i] != (float)a->points[(size_t)i * d + j]) abort();
    for (int k = 0; k < FINC_ANOMALY_PCA; k++)
        for (int j = 0; j < a->pca_dim; j++)
            if (a->pca_basis_t[(size_t)j * FINC_ANOMALY_PCA + k] != a->pca_basis[(size_t)k * a->pca_dim + j]) abort();

    /* The p-value at the edges and at every calibration score. */
    check_p_value(a, -INFINITY);
    check_p_value(a, INFINITY);
    check_p_value(a, NAN);
    if (finc_anomaly_p_value(a, -INFINITY) != 1.0) abort();
    for (int i = 0; i < a->n_cal && i < 64; i++) check_p_value(a, a->cal[i]);

    /* A row of zeros: the parser caps every number at 1e30, so no distance
     * overflows and the score is a number (blocks of 1e200s once made it NaN). */
    double *row = calloc((size_t)d, sizeof *row);
    if (!row) abort();
    const double s0 = finc_anomaly_score(a, row);
    if (isnan(s0)) abort();
    check_p_value(a, s0);

    /* The fit mean whitens to exactly 0, so its score is the log-sum-exp of
     * -|p_i|^2 / 2h^2: between the nearest point's term and that plus ln n_fit. */
    memcpy(row, a->mean, (size_t)d * sizeof *row);
    const double s = finc_anomaly_score(a, row);
    {
        const double inv2h2 = 1.0 / (2.0 * a->bandwidth * a->bandwidth);
        double best = INFINITY;
        for (int i = 0; i < a->n_fit; i++) {
            double r2 = 0;
            for (int j = 0; j < d; j++) r2 += a->points[(size_t)i * d + j] * a->points[(size_t)i * d + j];
            best = fmin(best, r2 * inv2h2);
        }
        const double tol = 1e-9 * (1.0 + fabs(best));
        if (!isfinite(s) || s < best - tol || s > best + log((double)a->n_fit) + tol) abort();
    }
    check_p_value(a, s);
    free(row);

    /* Written out and read back: the same block, the same text. */
    char *json = finc_anomaly_to_json(a, cfg);
    if (!json) abort();
    struct finc_anomaly b;
    char err[512] = "";
    if (finc_anomaly_parse(&b, json, cfg, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_anomaly: its own output refused: %s\n", err);
        abort();
    }
    if (b.d != a->d || b.n_fit != a->n_fit || b.n_cal != a->n_cal || b.pca_dim != a->pca_dim ||
        b.bandwidth != a->bandwidth || strcmp(b.data, a->data) != 0 || !same(b.mean, a->mean, (size_t)d) ||
        !same(b.whiten, a->whiten, (size_t)d * d) || !same(b.points, a->points, (size_t)a->n_fit * d) ||
        !same(b.cal, a->cal, (size_t)a->n_cal) || !same(b.pca_mean, a->pca_mean, (size_t)P) ||
        !same(b.pca_basis, a->pca_basis, (size_t)FINC_ANOMALY_PCA * P))
        abort();
    char *again = finc_anomaly_to_json(&b, cfg);
    if (!again || strcmp(again, json) != 0) abort();
    free(again);
    free(json);
    finc_anomaly_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const finc_config *cfg = config();
    char *json = malloc(size + 1);
    if (!json) return 0;
    memcpy(json, data, size);
    json[size] = 0;
    struct finc_anomaly a;
    memset(&a, 0xa5, sizeof a);  /* the parse must not rely on a cleared struct */
    char err[512] = "";
    /* The summary (what finc info reads) walks the text itself: whatever it
     * says, it stays inside the input, and a block the full parse accepts it
     * accepts with the same sizes. */
    struct finc_anomaly sum;
    const int sum_rc = finc_anomaly_parse_summary(&sum, json, cfg, err, sizeof err);
    if (sum_rc != 0 && !err[0]) abort();
    err[0] = 0;
    if (finc_anomaly_parse(&a, json, cfg, err, sizeof err) == 0) {
        if (sum_rc != 0 || sum.d != a.d || sum.n_fit != a.n_fit || sum.n_cal != a.n_cal || strcmp(sum.data, a.data))
            abort();
        check(&a, cfg);
        finc_anomaly_free(&a);
        if (a.mean || a.points_t || a.pca_basis_t || a.data || a.d) abort();
    } else {
        if (!err[0]) abort();  /* a refusal always says why */
        /* and keeps nothing */
        if (a.d || a.n_fit || a.n_cal || a.pca_dim || a.mean || a.whiten || a.points || a.points_t || a.cal ||
            a.pca_mean || a.pca_basis || a.pca_basis_t || a.data)
            abort();
    }
    if (sum_rc == 0) finc_anomaly_free(&sum);
    free(json);
    return 0;
}
