/* The CPU engine against reference vectors written by the float64 PyTorch
 * reference (tools/make_vectors.py; `make vectors` regenerates them). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/flow.h"
#include "engine/safetensors.h"
#include "tests/check_main.h"

static const char *const names[] = {"l2_1x8x12", "l3_3x8x8_k2_noact", "l1_2x4x8_k5"};
#define N_NAMES (sizeof names / sizeof names[0])

typedef struct {
    finc_st st;
    finc_engine *e;
    int n, D;
} fixture;

static void *tensor(const fixture *f, const char *name, finc_st_dtype dtype, size_t numel)
{
    const finc_st_tensor *t = finc_st_find(&f->st, name);
    ck_assert_msg(t != NULL, "vectors lack %s", name);
    ck_assert_int_eq(t->dtype, dtype);
    ck_assert_uint_eq(t->numel, numel);
    void *p = malloc(t->nbytes);
    memcpy(p, t->data, t->nbytes);   /* the mapping may be unaligned */
    return p;
}

static void open_fixture(fixture *f, const char *name)
{
    char path[256], err[512];
    snprintf(path, sizeof path, "tests/vectors/%s.vectors.safetensors", name);
    ck_assert_msg(finc_st_open(&f->st, path, err, sizeof err) == 0, "%s: %s", path, err);
    snprintf(path, sizeof path, "tests/vectors/%s.safetensors", name);
    f->e = finc_engine_open(path, NULL, err, sizeof err);
    ck_assert_msg(f->e != NULL, "%s: %s", path, err);
    const finc_st_tensor *t = finc_st_find(&f->st, "pixels");
    ck_assert_ptr_nonnull(t);
    f->n = (int)t->shape[0];
    f->D = finc_config_dim(&finc_engine_model(f->e)->cfg);
}

static void close_fixture(fixture *f)
{
    finc_engine_free(f->e);
    finc_st_close(&f->st);
}

/* float32 engine against float64 reference through a few dozen layers:
 * latents agree to 1e-4 relative (measured ~1e-6), log p to 1e-5 relative
 * (float32 PyTorch itself is 1.5e-6 off the float64 reference on these random models, whose log p is in the thousands of nats). */
static void check_encode(const fixture *f, const char *u_name, const char *z_name, const char *lp_name)
{
    const size_t nD = (size_t)f->n * f->D;
    uint8_t *pix = tensor(f, "pixels", FINC_ST_U8, nD);
    float *u = u_name ? tensor(f, u_name, FINC_ST_F32, nD) : NULL;
    float *zref = tensor(f, z_name, FINC_ST_F32, nD);
    double *lpref = tensor(f, lp_name, FINC_ST_F64, (size_t)f->n);
    float *z = malloc(nD * sizeof *z);
    double *lp = malloc((size_t)f->n * sizeof *lp);
    char err[256];
    ck_assert_int_eq(finc_encode(f->e, f->n, pix, u, z, lp, err, sizeof err), 0);
    for (size_t i = 0; i < nD; i++)
        ck_assert_msg(fabsf(z[i] - zref[i]) <= 1e-4f * fmaxf(1.0f, fabsf(zref[i])),
                      "latent %zu: %.7g vs reference %.7g", i, z[i], zref[i]);
    for (int i = 0; i < f->n; i++)
        ck_assert_msg(fabs(lp[i] - lpref[i]) <= 1e-5 * fabs(lpref[i]),
                      "log p %d: %.9g vs reference %.9g", i, lp[i], lpref[i]);
    free(pix), free(u), free(zref), free(lpref), free(z), free(lp);
}

START_TEST(encode_matches_reference)
{
    fixture f;
    open_fixture(&f, names[_i]);
    check_encode(&f, NULL, "latents", "logp");
    check_encode(&f, "dequant_u", "latents_u", "logp_u");
    close_fixture(&f);
}
END_TEST

/* Decoded pixels equal the reference's, except where the reference's
 * 256*x lies within 1e-3 of an integer: there float32 rounding may fall
 * either side of the boundary, and one level off is allowed. */
START_TEST(decode_matches_reference)
{
    fixture f;
    open_fixture(&f, names[_i]);
    const size_t nD = (size_t)f.n * f.D;
    float *z = tensor(&f, "decode_latents", FINC_ST_F32, nD);
    uint8_t *ref = tensor(&f, "decoded_pixels", FINC_ST_U8, nD);
    double *scaled = tensor(&f, "decoded_scaled", FINC_ST_F64, nD);
    uint8_t *pix = malloc(nD);
    char err[256];
    ck_assert_int_eq(finc_decode(f.e, f.n, z, pix, err, sizeof err), 0);
    for (size_t i = 0; i < nD; i++) {
        if (pix[i] == ref[i]) continue;
        const double frac = scaled[i] - floor(scaled[i]);
        ck_assert_msg(abs(pix[i] - ref[i]) == 1 && (frac < 1e-3 || frac > 1 - 1e-3),
                      "pixel %zu: %d vs reference %d (256x = %.6f)", i, pix[i], ref[i], scaled[i]);
    }
    free(z), free(ref), free(scaled), free(pix);
    close_fixture(&f);
}
END_TEST

static Suite *vectors_suite(void)
{
    Suite *s = suite_create("vectors");
    TCase *tc = tcase_create("reference");
    tcase_add_loop_test(tc, encode_matches_reference, 0, N_NAMES);
    tcase_add_loop_test(tc, decode_matches_reference, 0, N_NAMES);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(vectors_suite)
