/* The anomaly score (engine/anomaly.h): the encode statistics add up to log p,
 * the complexity is the coder's code length, p-values count calibration
 * scores, the fit whitens, every corrupt calibration block is refused with a
 * message naming its field (through the loader too), and on held-out
 * Fashion-MNIST images the p-values are valid: calibrated on one half of the
 * validation images, the other half is flagged at alpha within binomial bounds. */
#include <check.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/anomaly.h"
#include "engine/flow.h"
#include "io/dataset.h"
#include "tests/check_main.h"
#include "tests/testmodel.h"

#define WEIGHTS "weights/fashion-mnist.safetensors"

static uint64_t rng = 88172645463325252ull;
static double uniform(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static finc_engine *tiny_engine(char *path, size_t n)
{
    testmodel_spec spec = testmodel_tiny();
    ck_assert_int_eq(testmodel_tmpfile(path, n, ".safetensors"), 0);
    ck_assert_int_eq(testmodel_write(path, &spec, 7), 0);
    char err[512];
    finc_engine *e = finc_engine_open(path, NULL, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    return e;
}

START_TEST(statistics_add_up_to_logp)
{
    char path[256], err[512];
    finc_engine *e = tiny_engine(path, sizeof path);
    const finc_model *m = finc_engine_model(e);
    const int S = finc_config_stat_count(&finc_engine_model(e)->cfg), D = finc_config_dim(&m->cfg), n = 5;
    /* 1 + 4 couplings (2 levels of 2 steps) + 1 split + 2 latents */
    ck_assert_int_eq(S, 8);
    char name[96];
    finc_config_stat_name(&m->cfg, 0, name, sizeof name);
    ck_assert_str_eq(name, "preprocess.logdet");
    finc_config_stat_name(&m->cfg, 3, name, sizeof name);
    ck_assert_str_eq(name, "levels.0.split.coupling.logdet");
    finc_config_stat_name(&m->cfg, 7, name, sizeof name);
    ck_assert_str_eq(name, "levels.1.latent.logp");
    uint8_t px[5 * 64];
    for (int i = 0; i < n * D; i++) px[i] = (uint8_t)(uniform() * 256);
    double lp[5], lp2[5], st[5 * 8];
    ck_assert_int_eq(finc_encode_stats(e, n, px, NULL, NULL, lp, st, err, sizeof err), 0);
    ck_assert_int_eq(finc_encode(e, n, px, NULL, NULL, lp2, err, sizeof err), 0);
    for (int i = 0; i < n; i++) {
        double sum = m->logdet_const;
        for (int k = 0; k < S; k++) sum += st[i * S + k];
        /* the same doubles summed in another order */
        ck_assert_msg(fabs(sum - lp[i]) < 1e-9 * fabs(lp[i]), "image %d: sum %.12g, log p %.12g", i, sum, lp[i]);
        ck_assert(lp[i] == lp2[i]);
    }
    finc_engine_free(e);
    unlink(path);
}
END_TEST

/* Code lengths worked out by hand: a flat image predicts itself after its
 * first pixel, and a 1x2 image pays for two classes under a fresh model. */
START_TEST(complexity_is_the_coders_code_length)
{
    /* 1x1x2, pixels 0 and 5: residuals 0 (class 0) then 5 (class 3, after class 0 to its left)
     * first: -log2(1/9); second, context 0 again: -log2(1/11) + 2 low bits + sign */
    const uint8_t two[2] = {0, 5};
    const double want2 = (log2(9.0) + log2(11.0) + 3.0) / 2;
    ck_assert_double_eq_tol(finc_anomaly_complexity(two, 1, 1, 2), want2, 1e-12);
    /* 1x4x4 of 7s: the first residual is 7 (class 3), then all 0 (class 0) */
    uint8_t flat[16];
    memset(flat, 7, sizeof flat);
    double bits = log2(9.0) + 3.0;  /* class 3 in context 0, 2 low bits + sign */
    int c0 = 0, t0 = 1, c1 = 0, t1 = 0;  /* context 0: 1 seen (class 3); context 2: none */
    for (int i = 1; i < 16; i++) {
        /* left of pixel i: class 3 for i == 1 (context 2), class 0 after; a row start has no left (context 0) */
        const int ctx = (i == 1) ? 2 : 0;
        if (ctx == 2) bits -= log2((2.0 * c1 + 1) / (2.0 * t1 + 9)), c1++, t1++;
        else bits -= log2((2.0 * c0 + 1) / (2.0 * t0 + 9)), c0++, t0++;
    }
    ck_assert_double_eq_tol(finc_anomaly_complexity(flat, 1, 4, 4), bits / 16, 1e-12);
    /* noise costs more than a gradient, which costs more than a flat image */
    uint8_t noise[64], grad[64];
    for (int i = 0; i < 64; i++) noise[i] = (uint8_t)(uniform() * 256), grad[i] = (uint8_t)(i * 3);
    ck_assert(finc_anomaly_complexity(noise, 1, 8, 8) > 6.0);
    ck_assert(finc_anomaly_complexity(grad, 1, 8, 8) < finc_anomaly_complexity(noise, 1, 8, 8));
    /* channel planes are coded apart: two copies of a plane cost twice its bits */
    uint8_t twice[128];
    memcpy(twice, noise, 64), memcpy(twice + 64, noise, 64);
    ck_assert_double_eq_tol(finc_anomaly_complexity(twice, 2, 8, 8), finc_anomaly_complexity(noise, 1, 8, 8), 1e-12);
}
END_TEST

START_TEST(p_value_counts_calibration_scores)
{
    double cal[4] = {1, 2, 3, 4};
    struct finc_anomaly a = {.n_cal = 4, .cal = cal};
    ck_assert_double_eq(finc_anomaly_p_value(&a, 0.5), 1.0);
    ck_assert_double_eq(finc_anomaly_p_value(&a, 2.0), 4.0 / 5);  /* ties count as >= */
    ck_assert_double_eq(finc_anomaly_p_value(&a, 3.5), 2.0 / 5);
    ck_assert_double_eq(finc_anomaly_p_value(&a, 4.0), 2.0 / 5);
    ck_assert_double_eq(finc_anomaly_p_value(&a, 9.0), 1.0 / 5);
}
END_TEST

/* Scores 0..199: the 99th percentile is the 198th (197), so two are the
 * tail; 32 bins of width 197/32 hold the rest, 197 itself in the last. */
START_TEST(histogram_bins_the_bulk_and_counts_the_tail)
{
    double cal[200];
    for (int i = 0; i < 200; i++) cal[i] = i;
    struct finc_anomaly a = {.n_cal = 200, .cal = cal};
    double lo, hi;
    int counts[32], over;
    finc_anomaly_histogram(&a, 32, &lo, &hi, counts, &over);
    ck_assert_double_eq(lo, 0);
    ck_assert_double_eq(hi, 197);
    ck_assert_int_eq(over, 2);
    int total = 0;
    for (int b = 0; b < 32; b++) {
        int want = 0;  /* integers x with floor(x / (197 / 32)) == b, x <= 197 */
        for (int x = 0; x <= 197; x++) want += (x * 32 / 197 < 32 ? x * 32 / 197 : 31) == b;
        ck_assert_msg(counts[b] == want, "bin %d: %d, want %d", b, counts[b], want);
        total += counts[b];
    }
    ck_assert_int_eq(total, 198);
    /* one score: one bar, no tail */
    struct finc_anomaly one = {.n_cal = 1, .cal = cal + 5};
    finc_anomaly_histogram(&one, 32, &lo, &hi, counts, &over);
    ck_assert_double_eq(lo, 5);
    ck_assert_double_eq(hi, 5);
    ck_assert_int_eq(over, 0);
    ck_assert_int_eq(counts[0], 1);
}
END_TEST

/* A fitted block for the tiny model from random features and pixels. */
static char *fit_tiny_block(const finc_config *cfg, int n, int n_fit, struct finc_anomaly *a)
{
    const int d = finc_anomaly_feature_count(cfg), base = finc_anomaly_base_count(cfg);
    const int D = finc_config_dim(cfg);
    double *feat = calloc((size_t)n * d, sizeof *feat);
    uint8_t *px = malloc((size_t)n * D);
    for (int i = 0; i < n; i++) {
        const double shared = uniform();
        for (int j = 0; j < base; j++) feat[i * d + j] = 100.0 * j + shared * (j + 1) + uniform();
        for (int j = 0; j < D; j++) px[i * D + j] = (uint8_t)(uniform() * 256);
    }
    char err[256];
    ck_assert_msg(finc_anomaly_fit(a, cfg, feat, px, n, n_fit, "unit test", err, sizeof err) == 0, "%s", err);
    char *json = finc_anomaly_to_json(a, cfg);
    ck_assert_ptr_nonnull(json);
    free(feat);
    free(px);
    return json;
}

START_TEST(fit_whitens_the_fit_images)
{
    testmodel_spec spec = testmodel_tiny();
    char *cj = testmodel_config_json(&spec), err[256];
    finc_config cfg;
    ck_assert_int_eq(finc_config_parse(&cfg, cj, err, sizeof err), 0);
    struct finc_anomaly a;
    char *json = fit_tiny_block(&cfg, 600, 400, &a);
    const int d = a.d;
    ck_assert_int_eq(d, finc_anomaly_feature_count(&cfg));
    ck_assert_int_eq(a.n_fit, 400);
    ck_assert_int_eq(a.n_cal, 200);
    /* whitened fit points: mean 0, covariance I - 1e-6 (R + 1e-6 I)^-1 with the
     * ridge; these features share a component, so R's smallest eigenvalue is
     * near 1e-2 and the diagonal comes out ~1e-4 short of 1 */
    for (int j = 0; j < d; j++) {
        double mean = 0;
        for (int i = 0; i < a.n_fit; i++) mean += a.points[i * d + j] / a.n_fit;
        ck_assert_msg(fabs(mean) < 1e-9, "feature %d mean %g", j, mean);
        for (int k = 0; k <= j; k++) {
            double c = 0;
            for (int i = 0; i < a.n_fit; i++) c += a.points[i * d + j] * a.points[i * d + k] / (a.n_fit - 1);
            ck_assert_msg(fabs(c - (j == k)) < 1e-3, "cov[%d][%d] = %g", j, k, c);
        }
    }
    ck_assert_double_eq_tol(a.bandwidth, pow(400.0, -1.0 / (d + 4)), 1e-15);
    for (int i = 1; i < a.n_cal; i++) ck_assert(a.cal[i - 1] <= a.cal[i]);
    /* the block written and parsed back is the same scorer */
    struct finc_anomaly b;
    ck_assert_msg(finc_anomaly_parse(&b, json, &cfg, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(b.d, d);
    ck_assert_int_eq(b.n_cal, 200);
    for (int i = 0; i < b.n_cal; i++) ck_assert(b.cal[i] == a.cal[i]);
    ck_assert_double_eq(finc_anomaly_score(&b, a.points), finc_anomaly_score(&a, a.points));
    finc_anomaly_free(&b);
    /* its summary, read without the arrays, says the same of it */
    ck_assert_msg(finc_anomaly_parse_summary(&b, json, &cfg, err, sizeof err) == 0, "%s", err);
    ck_assert(b.d == d && b.n_fit == 400 && b.n_cal == 200 && b.bandwidth == a.bandwidth);
    ck_assert_str_eq(b.data, "unit test");
    ck_assert(!b.points && !b.cal && !b.mean);
    finc_anomaly_free(&b);
    finc_anomaly_free(&a);
    free(json);
    free(cj);
    finc_config_free(&cfg);
}
END_TEST

/* One corruption of a valid block: set key to a JSON value (NULL removes it). */
typedef struct {
    const char *key, *value, *expect;
    int in_summary;   /* a fault finc_anomaly_parse_summary finds too */
} corruption;

static const corruption corruptions[] = {
    {"method", "\"gaussian\"", "'method'", 1},
    {"method", NULL, "'method'", 1},
    {"version", "2", "'version'", 1},
    {"features", "[\"preprocess.logdet\"]", "'features'", 1},
    {"fit_images", "3", "'fit_images'", 1},
    {"fit_images", "\"400\"", "'fit_images'", 1},
    {"fit_images", "401", "'fit_points'", 0},
    {"fit_points", "[1, 2, 3]", "'fit_points'", 0},
    {"fit_points", NULL, "'fit_points'", 0},
    {"mean", "[1, \"x\"]", "'mean'", 0},
    {"mean", "{}", "'mean'", 0},
    {"whiten", NULL, "'whiten'", 0},
    {"bandwidth", "0", "'bandwidth'", 1},
    {"bandwidth", "-1", "'bandwidth'", 1},
    {"calibration_scores", "[]", "'calibration_scores'", 1},
    {"calibration_scores", "[3, 2, 1]", "ascending", 0},
    {"calibration_scores", "[1, null]", "'calibration_scores'", 0},
    {"layout_mean", "[0]", "'layout_mean'", 0},
    {"layout_basis", NULL, "'layout_basis'", 0},
    {"data", "7", "'data'", 1},
};

START_TEST(corrupt_blocks_are_refused)
{
    testmodel_spec spec = testmodel_tiny();
    char *cj = testmodel_config_json(&spec), err[512];
    finc_config cfg;
    ck_assert_int_eq(finc_config_parse(&cfg, cj, err, sizeof err), 0);
    struct finc_anomaly a, b;
    char *json = fit_tiny_block(&cfg, 300, 200, &a);
    for (size_t i = 0; i < sizeof corruptions / sizeof corruptions[0]; i++) {
        const corruption *c = &corruptions[i];
        cJSON *o = cJSON_Parse(json);
        cJSON_DeleteItemFromObjectCaseSensitive(o, c->key);
        if (c->value) cJSON_AddItemToObject(o, c->key, cJSON_Parse(c->value));
        char *bad = cJSON_PrintUnformatted(o);
        err[0] = '\0';
        ck_assert_msg(finc_anomaly_parse(&b, bad, &cfg, err, sizeof err) == -1, "%s=%s accepted", c->key,
                      c->value ? c->value : "(absent)");
        ck_assert_msg(strstr(err, c->expect) != NULL, "%s=%s: message '%s' lacks %s", c->key,
                      c->value ? c->value : "(absent)", err, c->expect);
        ck_assert_ptr_null(b.mean);  /* nothing kept */
        if (c->in_summary) {
            ck_assert_msg(finc_anomaly_parse_summary(&b, bad, &cfg, err, sizeof err) == -1, "summary: %s=%s accepted",
                          c->key, c->value ? c->value : "(absent)");
            ck_assert_msg(strstr(err, c->expect) != NULL, "summary: %s", err);
            ck_assert_ptr_null(b.data);
        }
        free(bad);
        cJSON_Delete(o);
    }
    /* a feature name of another model, a whitening that is not triangular, not JSON at all */
    cJSON *o = cJSON_Parse(json);
    cJSON *names = cJSON_GetObjectItemCaseSensitive(o, "features");
    cJSON_ReplaceItemInArray(names, 1, cJSON_CreateString("levels.0.steps.9.coupling.logdet"));
    char *bad = cJSON_PrintUnformatted(o);
    ck_assert_int_eq(finc_anomaly_parse(&b, bad, &cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "features[1]") && strstr(err, "levels.0.steps.0.coupling.logdet"), "%s", err);
    free(bad);
    cJSON_Delete(o);
    o = cJSON_Parse(json);
    cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "whiten");
    cJSON_ReplaceItemInArray(w, 1, cJSON_CreateNumber(0.5));
    bad = cJSON_PrintUnformatted(o);
    ck_assert_int_eq(finc_anomaly_parse(&b, bad, &cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "lower triangular"), "%s", err);
    free(bad);
    cJSON_Delete(o);
    /* a number that would overflow the score's distances */
    o = cJSON_Parse(json);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(o, "fit_points"), 7, cJSON_CreateNumber(1e200));
    bad = cJSON_PrintUnformatted(o);
    ck_assert_int_eq(finc_anomaly_parse(&b, bad, &cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "'fit_points'[7] is not a number within"), "%s", err);
    free(bad);
    cJSON_Delete(o);
    ck_assert_int_eq(finc_anomaly_parse(&b, "{\"method\": ", &cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "not valid JSON"), "%s", err);
    ck_assert_int_eq(finc_anomaly_parse(&b, "[1]", &cfg, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "not a JSON object"), "%s", err);
    /* the summary's own walk over the text: cut, unbalanced, not an object */
    static const char *const broken[] = {"{\"method\": ", "[1]", "", "{\"method\" \"x\"}", "{\"a\": [1, 2}",
                                         "{\"a\": \"unterminated}", "{\"a\": 1 \"b\": 2}", "{\"a\": }"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        ck_assert_msg(finc_anomaly_parse_summary(&b, broken[i], &cfg, err, sizeof err) == -1, "%s", broken[i]);
        ck_assert_msg(strstr(err, "not valid JSON") || strstr(err, "not a JSON object"), "%s: %s", broken[i], err);
    }
    /* any cut of a valid block is refused, never read past its end */
    for (size_t cut = 0; cut < strlen(json); cut += strlen(json) / 97 + 1) {
        char *part = strndup(json, cut);
        ck_assert_int_eq(finc_anomaly_parse_summary(&b, part, &cfg, err, sizeof err), -1);
        free(part);
    }
    finc_anomaly_free(&a);
    free(json);
    free(cj);
    finc_config_free(&cfg);
}
END_TEST

static void set_block(testmodel_file *f, void *user) { testmodel_set_meta(f, "anomaly", user); }

START_TEST(loader_reads_or_refuses_the_block)
{
    testmodel_spec spec = testmodel_tiny();
    char *cj = testmodel_config_json(&spec), err[512], path[256];
    finc_config cfg;
    ck_assert_int_eq(finc_config_parse(&cfg, cj, err, sizeof err), 0);
    struct finc_anomaly a;
    char *json = fit_tiny_block(&cfg, 300, 200, &a);
    ck_assert_int_eq(testmodel_tmpfile(path, sizeof path, ".safetensors"), 0);
    finc_model m;
    /* absent: loads, uncalibrated */
    ck_assert_int_eq(testmodel_write(path, &spec, 3), 0);
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_null(m.anomaly);
    finc_model_free(&m);
    /* present and valid */
    ck_assert_int_eq(testmodel_write_hook(path, &spec, 3, set_block, json), 0);
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_nonnull(m.anomaly);
    ck_assert_int_eq(m.anomaly->n_cal, 100);
    ck_assert_str_eq(m.anomaly->data, "unit test");
    const size_t n_params = m.n_params;
    finc_model_free(&m);
    /* the header alone: shapes, counts and the block's summary, no weights */
    ck_assert_msg(finc_model_load_header(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert(m.block == NULL && m.n_params == n_params && m.levels[0].c == 4 * spec.c);
    ck_assert(m.anomaly && m.anomaly->n_cal == 100 && m.anomaly->n_fit == 200 && !m.anomaly->points);
    ck_assert_ptr_null(strstr(m.cfg.metadata_json, "anomaly"));
    finc_model_free(&m);
    /* corrupt: the load fails and says where */
    json[strlen(json) / 2] = '\0';
    ck_assert_int_eq(testmodel_write_hook(path, &spec, 3, set_block, json), 0);
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "metadata 'anomaly'"), "%s", err);
    ck_assert_int_eq(finc_model_load_header(&m, path, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "metadata 'anomaly'"), "%s", err);
    unlink(path);
    finc_anomaly_free(&a);
    free(json);
    free(cj);
    finc_config_free(&cfg);
}
END_TEST

/* Bounds for k flagged of n at level alpha: a conformal p-value has
 * alpha - 1/(n_cal + 1) <= P(p <= alpha) <= alpha. The count varies with the
 * test images (binomial) and with the calibration images, which set the
 * threshold (about alpha (1 - alpha) / n_cal in the flagged share); 4 standard
 * deviations of both either side keep a valid scorer failing less than once in
 * 10^4 data sets (these data are fixed: it passes or fails every time). */
static void check_flagged(int k, int n, double alpha, int n_cal)
{
    const double v = alpha * (1 - alpha), sd = sqrt(n * v + (double)n * n * v / n_cal);
    const double lo = n * (alpha - 1.0 / (n_cal + 1)) - 4 * sd, hi = n * alpha + 4 * sd;
    ck_assert_msg(k >= lo && k <= hi, "alpha %g: %d of %d flagged, outside [%.1f, %.1f]", alpha, k, n, lo, hi);
}

START_TEST(p_values_are_valid_on_held_out_images)
{
    if (access(FINC_FMNIST_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0) {
        fprintf(stderr, "p_values_are_valid_on_held_out_images: no Fashion-MNIST (make deps); not run\n");
        ck_abort_msg("Fashion-MNIST is missing: make deps installs dataset-fashion-mnist");
    }
    char err[512];
    finc_engine *e = finc_engine_open(WEIGHTS, NULL, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const int d = finc_anomaly_feature_count(cfg), half = 2500, D = finc_config_dim(cfg);
    uint8_t *px;
    int n;
    ck_assert_msg(finc_dataset_load("val", 1, 28, 28, 0, 0, &px, &n, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(n, 2 * half);
    /* fit on 1250, calibrate on 1250, test on the other 2500 */
    struct finc_anomaly a;
    ck_assert_msg(finc_calibrate(e, half, px, half / 2, "val 0..2499", &a, err, sizeof err) == 0, "%s", err);
    finc_anomaly_scratch *s = finc_anomaly_scratch_new(cfg);
    double *f2 = malloc((size_t)half * d * sizeof *f2);
    ck_assert_int_eq(finc_features(e, half, px + (size_t)half * D, NULL, f2, d, err, sizeof err), 0);
    int k01 = 0, k05 = 0;
    for (int i = 0; i < half; i++) {
        finc_anomaly_complete(s, &a, cfg, px + (size_t)(half + i) * D, f2 + (size_t)i * d);
        const double p = finc_anomaly_p_value(&a, finc_anomaly_score(&a, f2 + (size_t)i * d));
        k01 += p <= 0.01;
        k05 += p <= 0.05;
    }
    check_flagged(k01, half, 0.01, a.n_cal);
    check_flagged(k05, half, 0.05, a.n_cal);
    finc_anomaly_scratch_free(s);
    finc_anomaly_free(&a);
    free(f2);
    free(px);
    finc_engine_free(e);
}
END_TEST

/* The shipped model is calibrated, and flags 0.5%..2% of the 10,000 test
 * images at alpha 0.01 (it flagged 1.19% when it was shipped). */
START_TEST(shipped_model_flags_about_alpha_of_the_test_set)
{
    if (access(FINC_FMNIST_DIR "/t10k-images-idx3-ubyte.gz", R_OK) != 0)
        ck_abort_msg("Fashion-MNIST is missing: make deps installs dataset-fashion-mnist");
    char err[512];
    finc_engine *e = finc_engine_open(WEIGHTS, NULL, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    ck_assert_msg(finc_engine_model(e)->anomaly != NULL, "the shipped model is not calibrated");
    uint8_t *px;
    int n;
    ck_assert_msg(finc_dataset_load("test", 1, 28, 28, 0, 0, &px, &n, err, sizeof err) == 0, "%s", err);
    finc_anomaly_result *an = malloc((size_t)n * sizeof *an);
    ck_assert_int_eq(finc_score_anomaly(e, n, px, NULL, an, err, sizeof err), 0);
    int k = 0;
    for (int i = 0; i < n; i++) k += an[i].p_value <= 0.01;
    ck_assert_msg(k >= 0.005 * n && k <= 0.02 * n, "%d of %d flagged at alpha 0.01", k, n);
    free(an);
    free(px);
    finc_engine_free(e);
}
END_TEST

static Suite *anomaly_suite(void)
{
    Suite *s = suite_create("anomaly");
    TCase *tc = tcase_create("units");
    tcase_add_test(tc, statistics_add_up_to_logp);
    tcase_add_test(tc, complexity_is_the_coders_code_length);
    tcase_add_test(tc, p_value_counts_calibration_scores);
    tcase_add_test(tc, histogram_bins_the_bulk_and_counts_the_tail);
    tcase_add_test(tc, fit_whitens_the_fit_images);
    tcase_add_test(tc, corrupt_blocks_are_refused);
    tcase_add_test(tc, loader_reads_or_refuses_the_block);
    suite_add_tcase(s, tc);
    TCase *data = tcase_create("fashion-mnist");
    tcase_set_timeout(data, 120);
    tcase_add_test(data, p_values_are_valid_on_held_out_images);
    tcase_add_test(data, shipped_model_flags_about_alpha_of_the_test_set);
    suite_add_tcase(s, data);
    return s;
}

FINC_CHECK_MAIN(anomaly_suite)
