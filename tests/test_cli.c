/* The finc command line, run as a user runs it: exit codes (0 ok, 1 bad
 * file, 2 bad arguments), real PNG and .npy files, and answers equal to the
 * engine API's. Needs ./finc built (make test builds it first). */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "engine/anomaly.h"
#include "engine/flow.h"
#include "io/npy.h"
#include "io/png.h"
#include "tests/check_main.h"
#include "tests/testmodel.h"

static char dir[256], weights[300];
static char out[1 << 16];

/* The finc under test: ./finc, or $FINC_EXE (make test-cpu-only runs this
 * suite on a CUDA=0 build). */
static const char *finc_exe(void)
{
    const char *e = getenv("FINC_EXE");
    return e && *e ? e : "./finc";
}

/* Runs a shell command line, stdout and stderr into out; returns the exit
 * code. "./finc" in it stands for the finc under test. */
static int run(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8400];
    size_t n = 0;
    for (const char *p = cmd; *p && n < sizeof full - 300;) {
        if (!strncmp(p, "./finc", 6)) {
            n += (size_t)snprintf(full + n, sizeof full - n, "%s", finc_exe());
            p += 6;
        } else {
            full[n++] = *p++;
        }
    }
    snprintf(full + n, sizeof full - n, " 2>&1");
    FILE *f = popen(full, "r");
    ck_assert_ptr_nonnull(f);
    n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void setup(void)
{
    ck_assert_int_eq(testmodel_tmpdir(dir, sizeof dir), 0);
    snprintf(weights, sizeof weights, "%s/m.safetensors", dir);
    testmodel_spec s = testmodel_tiny();   /* 1 x 8 x 8 */
    ck_assert_int_eq(testmodel_write(weights, &s, 5), 0);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(usage_errors_exit_2)
{
    const char *bad[] = {
        "", "bogus", "sample", "sample %s", "sample %s -n 0 -o x.png", "sample %s -t abc -o x.png",
        "sample %s -n 3 --frobnicate -o x.png", "score %s", "sample %s --backend tpu -o x.png",
        "decode %s", "encode %s a.png", "info", "eval %s --limit -3", "sample %s --seed -1 -o x.png",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[512];
        snprintf(args, sizeof args, bad[i], weights);
        ck_assert_msg(run("./finc %s", args) == 2, "'finc %s' exit != 2: %s", args, out);
        ck_assert_msg(strstr(out, "usage: finc") != NULL, "'finc %s' no usage line", args);
    }
    ck_assert_int_eq(run("./finc --help"), 0);
    ck_assert_ptr_nonnull(strstr(out, "eval WEIGHTS"));
    ck_assert_int_eq(run("./finc --version"), 0);
    ck_assert_msg(strncmp(out, "finc 0.", 7) == 0 && strstr(out, "backends: cpu"), "--version: %s", out);
}
END_TEST

/* finc sets libgomp's spin count in-process (cli/omp_env.c), without running
 * itself twice: libgomp sees 10000 when the environment says nothing, and the
 * user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY when it does. */
START_TEST(openmp_spin_count_set_in_process)
{
    ck_assert_int_eq(run("env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY OMP_DISPLAY_ENV=verbose ./finc --version"), 0);
    ck_assert_msg(strstr(out, "GOMP_SPINCOUNT = '10000'") != NULL, "%s", out);
    ck_assert_int_eq(run("env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=7 OMP_DISPLAY_ENV=verbose ./finc --version"), 0);
    ck_assert_msg(strstr(out, "GOMP_SPINCOUNT = '7'") != NULL, "%s", out);
    ck_assert_int_eq(run("env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=passive OMP_DISPLAY_ENV=verbose ./finc --version"), 0);
    ck_assert_msg(strstr(out, "GOMP_SPINCOUNT = '0'") != NULL, "%s", out);
}
END_TEST

/* ./finc links no CUDA library; CUDA comes from its module, loaded only when
 * asked for. Without a usable module and device: --backend cuda says why and
 * exits 1, auto runs on the CPU and says why, --version says why. */
START_TEST(cuda_only_when_asked)
{
    ck_assert_int_eq(run("ldd ./finc"), 0);
    ck_assert_msg(!strstr(out, "libcuda") && !strstr(out, "libcublas"), "./finc links CUDA: %s", out);
    ck_assert_int_eq(run("FINC_CUDA_MODULE=%s/none.so ./finc sample %s --backend cuda -o %s/x.png", dir, weights, dir), 1);
    ck_assert_msg(strstr(out, "backend 'cuda' is not available: no CUDA module (looked for ") != NULL, "%s", out);
    ck_assert_int_eq(run("FINC_CUDA_MODULE=%s/none.so ./finc sample %s --backend auto -o %s/x.png", dir, weights, dir), 0);
    ck_assert_msg(strstr(out, "backend auto: the CPU (no CUDA module") != NULL, "%s", out);
    ck_assert_int_eq(run("FINC_CUDA_MODULE=%s/none.so ./finc --version", dir), 0);
    ck_assert_msg(strstr(out, "backends: cpu)") && strstr(out, "cuda: not available: no CUDA module"), "%s", out);
    /* The module this build made, where it made one, on a machine with no NVIDIA
     * driver: said without loading the module (cuBLAS and the runtime), in a few
     * milliseconds and MB, naming the module and the driver its runtime needs; a
     * file that is no module gets the same answer (kernels/emu/serve_check.sh
     * checks what the loader says of it where a driver is). */
    char module[600];
    snprintf(module, sizeof module, "%s", finc_exe());
    char *slash = strrchr(module, '/');
    snprintf(slash ? slash + 1 : module, sizeof module - (size_t)(slash ? slash + 1 - module : 0), "build/libfinc-cuda.so");
    if (access(module, F_OK) == 0 && run("ldconfig -p | grep -q 'libcuda\\.so\\.1 '") != 0) {
        ck_assert_int_eq(run("./finc sample %s --backend cuda -o %s/x.png", weights, dir), 1);
        ck_assert_msg(strstr(out, "backend 'cuda' is not available: no CUDA driver (libcuda.so.1 is not installed") &&
                          strstr(out, "build/libfinc-cuda.so has the CUDA") && strstr(out, "needs driver R"),
                      "%s", out);
        ck_assert_int_eq(run("./finc sample %s --backend auto -o %s/x.png", weights, dir), 0);
        ck_assert_msg(strstr(out, "backend auto: the CPU (no CUDA driver") != NULL, "%s", out);
        ck_assert_int_eq(run("/usr/bin/time -f 'rss %%M' ./finc --version"), 0);
        ck_assert_msg(strstr(out, "cuda: not available: no CUDA driver") != NULL, "%s", out);
        const char *rss = strstr(out, "rss ");
        ck_assert_msg(rss && atol(rss + 4) < 40000, "finc --version took %s KB: the module was loaded", rss ? rss + 4 : "?");
        ck_assert_int_eq(run("echo junk > %s/junk.so && FINC_CUDA_MODULE=%s/junk.so ./finc --version", dir, dir), 0);
        ck_assert_msg(strstr(out, "no CUDA driver") != NULL, "%s", out);
    }
}
END_TEST

START_TEST(bad_files_exit_1)
{
    ck_assert_int_eq(run("./finc info %s/none.safetensors", dir), 1);
    ck_assert_int_eq(run("head -c 100 %s > %s/cut.safetensors && ./finc info %s/cut.safetensors", weights, dir, dir), 1);
    ck_assert_ptr_nonnull(strstr(out, "cut.safetensors"));
    ck_assert_int_eq(run("./finc score %s %s/none.png", weights, dir), 1);
    /* a PNG of the wrong size names both sizes */
    uint8_t px[3 * 5 * 7] = {0};
    char err[256], path[300];
    snprintf(path, sizeof path, "%s/small.png", dir);
    ck_assert_int_eq(finc_png_write_file(path, px, 1, 5, 7, err, sizeof err), 0);
    ck_assert_int_eq(run("./finc score %s %s", weights, path), 1);
    ck_assert_msg(strstr(out, "image is 7x5, model expects 8x8") != NULL, "%s", out);
    snprintf(path, sizeof path, "%s/junk.png", dir);
    FILE *f = fopen(path, "w");
    fputs("not a png", f);
    fclose(f);
    ck_assert_int_eq(run("./finc score %s %s", weights, path), 1);
    /* latents of the wrong width */
    float z[10] = {0};
    snprintf(path, sizeof path, "%s/z.npy", dir);
    ck_assert_int_eq(finc_npy_write_f32(path, z, 1, 10, err, sizeof err), 0);
    ck_assert_int_eq(run("./finc decode %s %s -o %s/o.png", weights, path, dir), 1);
    ck_assert_msg(strstr(out, "10 values per row, model expects 64") != NULL, "%s", out);
}
END_TEST

static uint8_t *read_png(const char *path, int *h, int *w)
{
    finc_png_image img;
    char err[256];
    ck_assert_msg(finc_png_read_file(path, 1, &img, err, sizeof err) == 0, "%s", err);
    *h = img.height, *w = img.width;
    return img.pixels;
}

START_TEST(info_sample_score_encode_decode)
{
    ck_assert_int_eq(run("./finc info %s --tensors", weights), 0);
    ck_assert_ptr_nonnull(strstr(out, "1 x 8 x 8"));
    ck_assert_ptr_nonnull(strstr(out, "levels.1.steps.1.coupling.conv3.logs"));

    /* a grid of 4 (2 x 2 tiles with 2-pixel padding), and one file per image */
    ck_assert_int_eq(run("./finc sample %s -n 4 -t 0.7 --seed 9 -o %s/grid.png", weights, dir), 0);
    char path[300];
    int h, w;
    snprintf(path, sizeof path, "%s/grid.png", dir);
    free(read_png(path, &h, &w));
    ck_assert_int_eq(h, 2 * (8 + 2) + 2);
    ck_assert_int_eq(w, 2 * (8 + 2) + 2);
    ck_assert_int_eq(run("./finc sample %s -n 4 -t 0.7 --seed 9 -o %s/imgs/", weights, dir), 0);

    /* the files are what the engine samples for that seed */
    char err[256];
    finc_engine *e = finc_engine_open(weights, NULL, err, sizeof err);
    ck_assert_ptr_nonnull(e);
    uint8_t want[4 * 64];
    ck_assert_int_eq(finc_sample(e, 4, 0.7f, 9, 0, want, err, sizeof err), 0);
    char files[2048] = "";
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/imgs/%05d.png", dir, i);
        uint8_t *px = read_png(path, &h, &w);
        ck_assert(h == 8 && w == 8 && memcmp(px, want + i * 64, 64) == 0);
        free(px);
        strcat(files, " "), strcat(files, path);
    }

    /* score: text and JSON lines equal to the engine's numbers */
    double lp[4];
    ck_assert_int_eq(finc_score(e, 4, want, 1, 0, 0, lp, err, sizeof err), 0);
    ck_assert_int_eq(run("./finc score %s%s --json", weights, files), 0);
    char *line = out;
    for (int i = 0; i < 4; i++) {
        double got, bpd;
        char *p = strstr(line, "\"log_likelihood\": ");
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(sscanf(p, "\"log_likelihood\": %lf, \"bits_per_dim\": %lf", &got, &bpd), 2);
        ck_assert_msg(fabs(got - lp[i]) < 1e-6 * fabs(lp[i]), "%g vs %g", got, lp[i]);
        ck_assert(fabs(bpd - finc_bits_per_dim(&finc_engine_model(e)->cfg, lp[i])) < 1e-6);
        ck_assert_ptr_nonnull(strstr(line, "\"file\": \""));
        line = strchr(p, '\n') + 1;
    }
    ck_assert_int_eq(run("./finc score %s%s", weights, files), 0);
    ck_assert_ptr_nonnull(strstr(out, "bits/dim"));

    /* encode -> decode gives the same pixels back */
    ck_assert_int_eq(run("./finc encode %s%s -o %s/z.npy", weights, files, dir), 0);
    ck_assert_int_eq(run("./finc decode %s %s/z.npy -o %s/back/", weights, dir, dir), 0);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/back/%05d.png", dir, i);
        uint8_t *px = read_png(path, &h, &w);
        ck_assert(memcmp(px, want + i * 64, 64) == 0);
        free(px);
    }
    finc_engine_free(e);
}
END_TEST

/* eval over a small IDX file equals the mean of the engine's bits/dim. */
START_TEST(eval_on_idx_file)
{
    enum { N = 10 };
    uint8_t px[N * 64];
    for (int i = 0; i < N * 64; i++) px[i] = (uint8_t)(i * 37 % 256);
    char path[300];
    snprintf(path, sizeof path, "%s/data-idx3-ubyte.gz", dir);
    gzFile g = gzopen(path, "wb");
    const uint8_t hdr[16] = {0, 0, 8, 3, 0, 0, 0, N, 0, 0, 0, 8, 0, 0, 0, 8};
    gzwrite(g, hdr, sizeof hdr);
    gzwrite(g, px, sizeof px);
    gzclose(g);
    char err[256];
    finc_engine *e = finc_engine_open(weights, NULL, err, sizeof err);
    double lp[N], mean = 0;
    ck_assert_int_eq(finc_score(e, N, px, 1, 0, 0, lp, err, sizeof err), 0);
    for (int i = 0; i < N; i++) mean += finc_bits_per_dim(&finc_engine_model(e)->cfg, lp[i]) / N;
    finc_engine_free(e);
    ck_assert_int_eq(run("./finc eval %s --data %s --json --batch 3", weights, path), 0);
    double got, se;
    int n;
    char *p = strstr(out, "\"images\": ");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sscanf(p, "\"images\": %d, \"samples\": %*d, \"bits_per_dim\": %lf, \"stderr\": %lf", &n, &got, &se), 3);
    ck_assert_int_eq(n, N);
    ck_assert_msg(fabs(got - mean) < 1e-5, "%g vs %g", got, mean);
    ck_assert(se > 0);
    ck_assert_int_eq(run("./finc eval %s --data %s --limit 4 --samples 3 --seed 1", weights, path), 0);
    ck_assert_ptr_nonnull(strstr(out, "4 images, importance-weighted"));
}
END_TEST

/* A folder of n PNGs (nested one level, to check the recursive search) of
 * images from one family: smooth gradients with a little noise. */
static void write_png_folder(const char *folder, int n, int constant)
{
    char path[1024], err[256];
    snprintf(path, sizeof path, "mkdir -p '%s/a' '%s/b'", folder, folder);
    ck_assert_int_eq(system(path), 0);
    uint64_t x = 1234;
    for (int i = 0; i < n; i++) {
        uint8_t px[64];
        for (int p = 0; p < 64; p++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            px[p] = constant ? (uint8_t)(i * 2) : (uint8_t)((p / 8 * (i % 4 + 1) * 9 + p % 8 * 7 + (int)(x >> 60)) % 256);
        }
        snprintf(path, sizeof path, "%s/%s/%03d.png", folder, i % 2 ? "a" : "b", i);
        ck_assert_int_eq(finc_png_write_file(path, px, 1, 8, 8, err, sizeof err), 0);
    }
}

START_TEST(calibrate_score_eval_ood)
{
    char data[300], flat[300], cal[300], one[400];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(flat, sizeof flat, "%s/flat", dir);
    snprintf(cal, sizeof cal, "%s/cal.safetensors", dir);
    write_png_folder(data, 240, 0);
    write_png_folder(flat, 30, 1);
    /* arguments and too little data */
    ck_assert_int_eq(run("./finc calibrate %s -o %s", weights, cal), 2);
    ck_assert_int_eq(run("./finc calibrate %s --data %s", weights, data), 2);
    ck_assert_int_eq(run("./finc ood %s --in %s", weights, data), 2);
    ck_assert_int_eq(run("./finc score %s x.png --alpha 1", weights), 2);
    ck_assert_int_eq(run("./finc calibrate %s --data %s --limit 20 -o %s", weights, data, cal), 1);
    ck_assert_msg(strstr(out, "fit images") != NULL, "%s", out);
    ck_assert_int_eq(run("./finc calibrate %s --data %s/none -o %s", weights, dir, cal), 1);

    /* uncalibrated: no anomaly fields */
    snprintf(one, sizeof one, "%s/a/001.png", data);
    ck_assert_int_eq(run("./finc score %s %s --json", weights, one), 0);
    ck_assert_msg(strstr(out, "anomaly") == NULL, "%s", out);

    ck_assert_int_eq(run("./finc calibrate %s --data %s -o %s", weights, data, cal), 0);
    ck_assert_msg(strstr(out, "fitted on 120 images, 120 calibration scores") != NULL, "%s", out);
    /* again, in place: calibrate reads past the block it replaces */
    ck_assert_int_eq(run("./finc calibrate %s --data %s -o %s", cal, data, cal), 0);
    ck_assert_int_eq(run("./finc info %s", cal), 0);
    ck_assert_msg(strstr(out, "anomaly      calibrated") != NULL, "%s", out);

    /* finc score --json equals the engine on the same pixels */
    char err[512];
    finc_engine *e = finc_engine_open(cal, NULL, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    int h, w;
    uint8_t *px = read_png(one, &h, &w);
    finc_anomaly_result want;
    double lp;
    ck_assert_int_eq(finc_score_anomaly(e, 1, px, &lp, &want, err, sizeof err), 0);
    free(px);
    finc_engine_free(e);
    ck_assert_int_eq(run("./finc score %s %s --json --alpha 0.5", cal, one), 0);
    double score, p, cbpd, alpha;
    char *a = strstr(out, "\"anomaly\": ");
    ck_assert_msg(a != NULL, "%s", out);
    ck_assert_int_eq(sscanf(a, "\"anomaly\": {\"score\": %lf, \"p_value\": %lf, \"complexity_bits_per_dim\": %lf, "
                               "\"alpha\": %lf",
                            &score, &p, &cbpd, &alpha),
                     4);
    /* printed to 10 significant digits */
    ck_assert_double_eq_tol(score, want.score, 1e-9 * fabs(want.score));
    ck_assert_double_eq_tol(p, want.p_value, 1e-9);
    ck_assert_double_eq_tol(cbpd, want.complexity_bpd, 1e-9 * want.complexity_bpd);
    ck_assert_double_eq(alpha, 0.5);
    ck_assert_ptr_nonnull(strstr(out, want.p_value <= 0.5 ? "\"anomalous\": true" : "\"anomalous\": false"));
    ck_assert_int_eq(run("./finc score %s %s", cal, one), 0);
    ck_assert_msg(strstr(out, "anomaly ") && strstr(out, "p = "), "%s", out);

    /* eval reports the flagged fractions; a set against itself ranks as a coin */
    ck_assert_int_eq(run("./finc eval %s --data %s --json", cal, data), 0);
    ck_assert_msg(strstr(out, "\"images\": 240") && strstr(out, "\"flagged\": {\"0.01\": "), "%s", out);
    ck_assert_int_eq(run("./finc ood %s --in %s --out %s --out %s --json", cal, data, data, flat), 0);
    ck_assert_msg(strstr(out, "\"anomaly\": {\"auroc\": 0.500000, \"aupr\": ") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "\"images_in\": 240, \"images_out\": 30") != NULL, "%s", out);
    ck_assert_int_eq(run("./finc ood %s --in %s --out %s", cal, data, flat), 0);
    ck_assert_msg(strstr(out, "mean AUROC") != NULL, "%s", out);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("finc");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, bad_files_exit_1);
    tcase_add_test(tc, cuda_only_when_asked);
    tcase_add_test(tc, openmp_spin_count_set_in_process);
    tcase_add_test(tc, info_sample_score_encode_decode);
    tcase_add_test(tc, eval_on_idx_file);
    tcase_add_test(tc, calibrate_score_eval_ood);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(cli_suite)
