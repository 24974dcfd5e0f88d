/* The shipped model: it loads, and its bits/dim on the first 256 Fashion-MNIST
 * test images equals the figure recorded in its metadata when it was shipped
 * (tools/ship.sh), within 0.01. The figure is a mean over 256 images printed
 * to 6 decimals; 0.01 allows a different CPU's float rounding and nothing
 * more: a broken layer moves it by far more. */
#include <cJSON.h>
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/flow.h"
#include "io/idx.h"
#include "tests/check_main.h"

#define WEIGHTS "weights/fashion-mnist.safetensors"
#define TEST_IMAGES "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"

static double meta_number(const finc_config *cfg, const char *key)
{
    cJSON *meta = cJSON_Parse(cfg->metadata_json);
    ck_assert_ptr_nonnull(meta);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    ck_assert_msg(cJSON_IsString(v), "metadata lacks %s", key);
    double x = strtod(v->valuestring, NULL);
    cJSON_Delete(meta);
    return x;
}

START_TEST(shipped_model_scores_as_recorded)
{
    char err[512];
    finc_engine *e = finc_engine_open(WEIGHTS, NULL, err, sizeof err);
    ck_assert_msg(e != NULL, "%s: %s", WEIGHTS, err);
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    ck_assert(cfg->c == 1 && cfg->h == 28 && cfg->w == 28);
    const double want = meta_number(cfg, "test_subset256_bpd");
    ck_assert(isfinite(cfg->test_bpd) && cfg->test_bpd > 1 && cfg->test_bpd < 8);

    uint8_t *px;
    int n, h, w;
    ck_assert_msg(finc_idx_read_images(TEST_IMAGES, &px, &n, &h, &w, err, sizeof err) == 0, "%s", err);
    ck_assert_int_ge(n, 256);
    double lp[256], mean = 0;
    ck_assert_int_eq(finc_score(e, 256, px, 1, 0, 0, lp, err, sizeof err), 0);
    for (int i = 0; i < 256; i++) mean += finc_bits_per_dim(cfg, lp[i]) / 256;
    ck_assert_msg(fabs(mean - want) < 0.01, "bits/dim %.6f, recorded %.6f", mean, want);
    free(px);
    finc_engine_free(e);
}
END_TEST

static Suite *weights_suite(void)
{
    Suite *s = suite_create("weights");
    TCase *tc = tcase_create("shipped");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, shipped_model_scores_as_recorded);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(weights_suite)
