/* The flow's invariants on the CPU engine: exact pixel round trips, log-det
 * against a brute-force Jacobian, batch independence, the wavefront inverse
 * against a raster solve, reproducible seeded sampling, and the Philox
 * known-answer vector. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cpu.h"
#include "engine/flow.h"
#include "engine/philox.h"
#include "tests/check_main.h"
#include "tests/testmodel.h"

static uint64_t rng_state;
static double rnd(void)   /* uniform [0, 1), splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static finc_engine *open_spec(const testmodel_spec *spec, uint64_t seed, int max_batch, char *path,
                              size_t pathlen)
{
    ck_assert_int_eq(testmodel_tmpfile(path, pathlen, ".safetensors"), 0);
    ck_assert_int_eq(testmodel_write(path, spec, seed), 0);
    char err[256];
    finc_engine_opts o = {.max_batch = max_batch};
    finc_engine *e = finc_engine_open(path, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "open: %s", err);
    return e;
}

static uint8_t *random_pixels(int n, int D)
{
    uint8_t *p = malloc((size_t)n * D);
    for (int i = 0; i < n * D; i++) p[i] = (uint8_t)(rnd() * 256);
    return p;
}

/* The shapes the engine must handle: non-square, k = 2 and 5, 3 levels, ActNorm off. */
static testmodel_spec spec_at(int i)
{
    testmodel_spec s = testmodel_tiny();
    switch (i) {
    case 0: break;
    case 1: s.c = 1, s.h = 8, s.w = 12, s.kernel = 2; break;
    case 2: s.c = 3, s.h = 8, s.w = 8, s.levels = 3, s.steps[0] = 1, s.steps[1] = 2, s.steps[2] = 1,
            s.actnorm = 0; break;
    case 3: s.c = 2, s.h = 4, s.w = 8, s.levels = 1, s.steps[0] = 3, s.kernel = 5, s.width = 12; break;
    }
    return s;
}
#define N_SPECS 4

/* decode(encode(v)) == v on every pixel. Latents are exact up to float
 * rounding and every midpoint-dequantized value sits half a level from a
 * rounding boundary, so equality is expected, not approximate. */
START_TEST(round_trip_exact)
{
    rng_state = 100 + _i;
    testmodel_spec s = spec_at(_i);
    char path[256];
    finc_engine *e = open_spec(&s, 7 + _i, 64, path, sizeof path);
    const int n = 9, D = s.c * s.h * s.w;
    uint8_t *v = random_pixels(n, D), *back = malloc((size_t)n * D);
    float *z = malloc((size_t)n * D * sizeof *z);
    double lp[9];
    char err[256];
    ck_assert_int_eq(finc_encode(e, n, v, NULL, z, lp, err, sizeof err), 0);
    ck_assert_int_eq(finc_decode(e, n, z, back, err, sizeof err), 0);
    for (int i = 0; i < n * D; i++) ck_assert_msg(v[i] == back[i], "pixel %d: %d != %d", i, v[i], back[i]);
    for (int i = 0; i < n; i++) ck_assert(isfinite(lp[i]) && lp[i] < 0);
    free(v), free(back), free(z);
    finc_engine_free(e);
    unlink(path);
}
END_TEST

/* ln|det dz/d(v+u)| by central differences equals log p - ln N(z). D = 16,
 * float32 engine, steps of 0.05 pixel levels: the finite-difference and
 * rounding error on the log-det stays under 0.02 (measured ~1e-3). */
START_TEST(logdet_matches_brute_force_jacobian)
{
    rng_state = 200 + _i;
    testmodel_spec s = testmodel_tiny();
    s.c = 1, s.h = 4, s.w = 4, s.levels = 1 + _i, s.steps[0] = 2, s.steps[1] = 2;
    char path[256];
    finc_engine *e = open_spec(&s, 11 + _i, 64, path, sizeof path);
    enum { D = 16 };
    uint8_t v[D];
    float u[2 * D * D + D], z[2 * D * D + D];
    for (int i = 0; i < D; i++) v[i] = (uint8_t)(60 + rnd() * 130);
    uint8_t vv[(2 * D + 1) * D];
    /* rows 0..2D-1: u +- eps on one pixel; row 2D: u itself */
    const double eps = 0.05;
    for (int r = 0; r <= 2 * D; r++)
        for (int i = 0; i < D; i++) {
            vv[r * D + i] = v[i];
            u[r * D + i] = 0.5f;
            if (r < 2 * D && i == r / 2) u[r * D + i] += (float)(r % 2 ? -eps : eps);
        }
    double lp[2 * D + 1];
    char err[256];
    ck_assert_int_eq(finc_encode(e, 2 * D + 1, vv, u, z, lp, err, sizeof err), 0);
    double J[D][D];
    for (int j = 0; j < D; j++)
        for (int i = 0; i < D; i++)
            J[i][j] = ((double)z[(2 * j) * D + i] - z[(2 * j + 1) * D + i]) / (2 * eps);
    /* ln|det J| by LU with partial pivoting */
    double ld = 0;
    for (int c = 0; c < D; c++) {
        int p = c;
        for (int r = c + 1; r < D; r++)
            if (fabs(J[r][c]) > fabs(J[p][c])) p = r;
        for (int k = 0; k < D; k++) {
            double t = J[c][k];
            J[c][k] = J[p][k];
            J[p][k] = t;
        }
        ld += log(fabs(J[c][c]));
        for (int r = c + 1; r < D; r++) {
            double f = J[r][c] / J[c][c];
            for (int k = c; k < D; k++) J[r][k] -= f * J[c][k];
        }
    }
    const float *z0 = z + 2 * D * D;
    double lnN = 0;
    for (int i = 0; i < D; i++) lnN += -0.5 * z0[i] * z0[i] - 0.5 * log(2 * M_PI);
    const double engine_ld = lp[2 * D] - lnN;
    ck_assert_msg(fabs(engine_ld - ld) < 0.02, "engine log-det %.6f, brute force %.6f", engine_ld, ld);
    finc_engine_free(e);
    unlink(path);
}
END_TEST

/* Each image of a batch of 7 gets what it gets alone. The GEMMs see a
 * different N, which may reorder nothing per output column in the library,
 * but we allow float rounding: 1e-5 relative on log p, 1e-4 absolute on z. */
START_TEST(batch_of_seven_equals_alone)
{
    rng_state = 300 + _i;
    testmodel_spec s = spec_at(_i);
    char path[256];
    finc_engine *e = open_spec(&s, 21 + _i, 64, path, sizeof path);
    const int n = 7, D = s.c * s.h * s.w;
    uint8_t *v = random_pixels(n, D);
    float *z = malloc((size_t)n * D * sizeof *z), *z1 = malloc((size_t)D * sizeof *z1);
    double lp[7], lp1;
    char err[256];
    ck_assert_int_eq(finc_encode(e, n, v, NULL, z, lp, err, sizeof err), 0);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(finc_encode(e, 1, v + (size_t)i * D, NULL, z1, &lp1, err, sizeof err), 0);
        ck_assert_msg(fabs(lp1 - lp[i]) <= 1e-5 * fabs(lp1), "image %d: %.9g vs %.9g", i, lp1, lp[i]);
        for (int j = 0; j < D; j++) ck_assert(fabsf(z1[j] - z[(size_t)i * D + j]) < 1e-4f);
    }
    free(v), free(z), free(z1);
    finc_engine_free(e);
    unlink(path);
}
END_TEST

/* Seeded samples do not depend on the batch they run in, the engine's max
 * batch (chunking), or the thread count. Pixels may differ only where a value
 * lands within float rounding of a quantization boundary: none expected here. */
START_TEST(seeded_samples_reproducible)
{
    testmodel_spec s = spec_at(_i);
    char path[256];
    finc_engine *e = open_spec(&s, 31 + _i, 64, path, sizeof path);
    const int n = 6, D = s.c * s.h * s.w;
    uint8_t *a = malloc((size_t)n * D), *b = malloc((size_t)n * D);
    char err[256];
    ck_assert_int_eq(finc_sample(e, n, 0.8f, 1234, 0, a, err, sizeof err), 0);
    finc_engine_free(e);
    finc_engine_opts o = {.max_batch = 4, .threads = 1};
    e = finc_engine_open(path, &o, err, sizeof err);
    ck_assert_ptr_nonnull(e);
    /* images 2..5 alone, as if they were the 3rd.. of a request */
    ck_assert_int_eq(finc_sample(e, 4, 0.8f, 1234, 2, b + 2 * D, err, sizeof err), 0);
    ck_assert_int_eq(finc_sample(e, 2, 0.8f, 1234, 0, b, err, sizeof err), 0);
    int diff = 0;
    for (int i = 0; i < n * D; i++) diff += a[i] != b[i];
    ck_assert_msg(diff == 0, "%d pixels differ", diff);
    /* a different seed gives different images */
    ck_assert_int_eq(finc_sample(e, 2, 0.8f, 1235, 0, b, err, sizeof err), 0);
    ck_assert(memcmp(a, b, 2 * D) != 0);
    finc_engine_free(e);
    omp_set_num_threads(omp_get_num_procs());
    free(a), free(b);
    unlink(path);
}
END_TEST

/* A FInC step with random kernels obeying the current-pixel constraint. */
static finc_step random_step(int C, int k, float *store)
{
    finc_step st;
    memset(&st, 0, sizeof st);
    const int Cq = C / 4, kk = k * k;
    for (int q = 0; q < 4; q++) {
        float *w = store + (size_t)q * Cq * Cq * kk;
        for (int co = 0; co < Cq; co++)
            for (int ci = 0; ci < Cq; ci++)
                for (int t = 0; t < kk; t++) {
                    float val = (float)(rnd() - 0.5) * 0.3f;
                    if (t == kk - 1) val = ci == co ? 1.0f : ci > co ? 0.0f : val;
                    w[((size_t)co * Cq + ci) * kk + t] = val;
                }
        st.finc_tl[q] = w;
    }
    return st;
}

/* The wavefront and the per-(quarter, image) solve visit pixels in other
 * orders than a raster solve, but each pixel's arithmetic is the same, so the
 * results are bit-identical; so is whichever the engine picks. */
START_TEST(wavefront_equals_raster)
{
    static const int ks[] = {2, 3, 5, 7};
    const int k = ks[_i], C = 8, B = 3, H = 9, W = 13;
    rng_state = 400 + _i;
    const size_t n = (size_t)C * B * H * W;
    float *store = malloc((size_t)4 * (C / 4) * (C / 4) * k * k * sizeof(float));
    finc_step st = random_step(C, k, store);
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    float *xw = malloc(n * sizeof *x), *xr = malloc(n * sizeof *x), *xu = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(rnd() * 2 - 1);
    finc_cpu_finc_forward(NULL, y, x, &st, C, B, H, W, k);
    finc_cpu_finc_inverse_raster(xr, y, &st, C, B, H, W, k);
    finc_cpu_finc_inverse_units(xu, y, &st, C, B, H, W, k);
    ck_assert(memcmp(xu, xr, n * sizeof *x) == 0);
    finc_cpu_finc_inverse(NULL, xu, y, &st, C, B, H, W, k);
    ck_assert(memcmp(xu, xr, n * sizeof *x) == 0);
    /* the wavefront on more threads than this machine may have */
    const int threads = omp_get_max_threads();
    for (int t = 1; t <= 5; t += 2) {
        omp_set_num_threads(t);
        memset(xw, 0, n * sizeof *xw);
        finc_cpu_finc_inverse_wavefront(xw, y, &st, C, B, H, W, k);
        ck_assert_msg(memcmp(xw, xr, n * sizeof *x) == 0, "wavefront on %d threads", t);
    }
    omp_set_num_threads(threads);
    double maxerr = 0;
    for (size_t i = 0; i < n; i++) maxerr = fmax(maxerr, fabs(xw[i] - x[i]));
    ck_assert_msg(maxerr < 1e-4, "inverse error %g", maxerr);
    free(store), free(x), free(y), free(xw), free(xr), free(xu);
}
END_TEST

/* A TL output pixel depends only on inputs above and left of it (itself
 * included): perturbing one input changes no output before it in TL order. */
START_TEST(finc_forward_is_causal)
{
    const int k = 3, C = 4, B = 1, H = 5, W = 6;
    rng_state = 500;
    float store[4 * 9];
    finc_step st = random_step(C, k, store);
    const size_t n = (size_t)C * B * H * W, HW = (size_t)H * W;
    float x[C * H * W], y0[C * H * W], y1[C * H * W];
    for (size_t i = 0; i < n; i++) x[i] = (float)rnd();
    finc_cpu_finc_forward(NULL, y0, x, &st, C, B, H, W, k);
    const int ph = 2, pw = 3;
    for (int q = 0; q < 4; q++) {
        float xp[C * H * W];
        memcpy(xp, x, sizeof xp);
        xp[q * HW + ph * W + pw] += 1.0f;
        finc_cpu_finc_forward(NULL, y1, xp, &st, C, B, H, W, k);
        const int fy = q >= 2, fx = q % 2;
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
                /* in the quarter's own orientation, outputs before (ph, pw) cannot move */
                const int before_h = fy ? h > ph : h < ph, before_w = fx ? w > pw : w < pw;
                if (before_h || before_w)
                    ck_assert_msg(y1[q * HW + h * W + w] == y0[q * HW + h * W + w],
                                  "quarter %d pixel (%d,%d) moved", q, h, w);
            }
        ck_assert(y1[q * HW + ph * W + pw] != y0[q * HW + ph * W + pw]);
    }
}
END_TEST

/* Random123's known-answer vector for Philox4x32-10, counter 0 and key 0. */
START_TEST(philox_known_answer)
{
    uint32_t ctr[4] = {0, 0, 0, 0}, key[2] = {0, 0}, out[4];
    finc_philox4x32(ctr, key, out);
    ck_assert_uint_eq(out[0], 0x6627e8d5u);
    ck_assert_uint_eq(out[1], 0xe169c58du);
    ck_assert_uint_eq(out[2], 0xbc57ac4cu);
    ck_assert_uint_eq(out[3], 0x9b00dbd8u);
    float z[10000];
    finc_philox_normal(5, 3, FINC_STREAM_LATENT, 1.0f, z, 10000);
    double m = 0, v = 0;
    for (int i = 0; i < 10000; i++) m += z[i], v += (double)z[i] * z[i];
    m /= 10000, v = v / 10000 - m * m;
    ck_assert_msg(fabs(m) < 0.04 && fabs(v - 1) < 0.05, "mean %g var %g", m, v);
}
END_TEST

/* The importance-weighted score is close to, and on average above, the
 * midpoint one for a smooth model, and depends only on (seed, index), also
 * when each image of a batch has its own key. */
START_TEST(importance_weighted_score)
{
    rng_state = 600;
    testmodel_spec s = testmodel_tiny();
    char path[256];
    finc_engine *e = open_spec(&s, 41, 64, path, sizeof path);
    const int n = 3, D = s.c * s.h * s.w;
    uint8_t *v = random_pixels(n, D);
    double mid[3], iw[3], iw1;
    char err[256];
    ck_assert_int_eq(finc_score(e, n, v, 1, 0, 0, mid, err, sizeof err), 0);
    ck_assert_int_eq(finc_score(e, n, v, 8, 99, 0, iw, err, sizeof err), 0);
    ck_assert_int_eq(finc_score(e, 1, v + 2 * D, 8, 99, 2, &iw1, err, sizeof err), 0);
    ck_assert(fabs(iw1 - iw[2]) < 1e-6 * fabs(iw1));
    for (int i = 0; i < n; i++) ck_assert_msg(fabs(iw[i] - mid[i]) < 0.05 * D, "%g vs %g", iw[i], mid[i]);
    /* keyed one by one (several requests in one batch): each as scored alone */
    const uint64_t seeds[3] = {7, 99, 7}, indices[3] = {4, 1, 0};
    double keyed[3], alone;
    ck_assert_int_eq(finc_score_keyed(e, n, v, 8, seeds, indices, keyed, err, sizeof err), 0);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(finc_score(e, 1, v + i * D, 8, seeds[i], indices[i], &alone, err, sizeof err), 0);
        ck_assert_msg(fabs(keyed[i] - alone) < 1e-6 * fabs(alone), "image %d: %.9g vs %.9g", i, keyed[i], alone);
    }
    ck_assert(fabs(keyed[1] - iw[1]) < 1e-6 * fabs(iw[1]));  /* (99, 1) is iw's image 1 */
    ck_assert(fabs(keyed[0] - iw[0]) > 1e-9 * fabs(iw[0]));  /* another key, other draws */
    free(v);
    finc_engine_free(e);
    unlink(path);
}
END_TEST

START_TEST(bad_engine_inputs)
{
    char err[256];
    finc_engine_opts o = {.backend = "tpu"};
    ck_assert_ptr_null(finc_engine_open("/nonexistent.safetensors", NULL, err, sizeof err));
    ck_assert_ptr_null(finc_engine_open("/nonexistent.safetensors", &o, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "tpu"));
    testmodel_spec s = testmodel_tiny();
    char path[256];
    finc_engine *e = open_spec(&s, 1, 8, path, sizeof path);
    uint8_t px[64];
    ck_assert_int_eq(finc_sample(e, 1, NAN, 1, 0, px, err, sizeof err), -1);
    ck_assert_int_eq(finc_sample(e, -1, 1.0f, 1, 0, px, err, sizeof err), -1);
    finc_engine_free(e);
    unlink(path);
}
END_TEST

/* Every backend checks its own table when it is made: a full one passes, and
 * one with any slot empty fails naming that slot. */
START_TEST(backend_table_complete)
{
    testmodel_spec s = testmodel_tiny();
    char path[256], err[256];
    finc_engine *e = open_spec(&s, 1, 2, path, sizeof path);
    finc_backend *be = finc_engine_backend(e);
    ck_assert_int_eq(finc_backend_check_table(be, err, sizeof err), 0);
    finc_backend t = *be;
    t.warm_up = NULL;
    ck_assert_int_eq(finc_backend_check_table(&t, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "slot warm_up is empty"));
    t = *be;
    t.alloc = NULL;
    ck_assert_int_eq(finc_backend_check_table(&t, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "slot alloc is empty"));
    t = *be;
    t.destroy = NULL;
    ck_assert_int_eq(finc_backend_check_table(&t, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "slot destroy is empty"));
    finc_engine_free(e);
    unlink(path);
}
END_TEST

static Suite *flow_suite(void)
{
    Suite *s = suite_create("flow");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, round_trip_exact, 0, N_SPECS);
    tcase_add_loop_test(tc, logdet_matches_brute_force_jacobian, 0, 2);
    tcase_add_loop_test(tc, batch_of_seven_equals_alone, 0, N_SPECS);
    tcase_add_loop_test(tc, seeded_samples_reproducible, 0, N_SPECS);
    tcase_add_loop_test(tc, wavefront_equals_raster, 0, 4);
    tcase_add_test(tc, finc_forward_is_causal);
    tcase_add_test(tc, philox_known_answer);
    tcase_add_test(tc, importance_weighted_score);
    tcase_add_test(tc, bad_engine_inputs);
    tcase_add_test(tc, backend_table_complete);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(flow_suite)
