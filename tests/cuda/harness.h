/* What the CUDA agreement checks (tests/cuda/test_backend_ops.c) and the CUDA
 * timings (bench/cuda_bench.c) share: verdicts with JSON lines, comparisons
 * with stated tolerances, backend buffers, the random models of the tested
 * shapes, and the device they run on. */
#ifndef FINC_TESTS_CUDA_HARNESS_H
#define FINC_TESTS_CUDA_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/backend.h"
#include "engine/flow.h"
#include "tests/testmodel.h"

/* The device: the CUDA backend, or with --cpu-as-device the CPU backend in
 * its place (checks the harness where no GPU is). */
extern int h_cpu_as_device;
extern char h_device_desc[512];
/* The run's date (YYYY-MM-DD, UTC), set by h_start. */
extern char h_date[32];
/* JSON lines (--json), or NULL. */
extern FILE *h_json;
extern int h_pass, h_fail;

double h_now(void);
double h_median(double *v, int n);
double h_rnd(void);
void *h_xmalloc(size_t n);
float *h_rand_floats(size_t n, double lo, double hi);
uint8_t *h_rand_pixels(size_t n);

/* One verdict: printed, counted, and a JSON line. */
void h_check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void h_json_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Worst |a - b| / (atol + rtol |b|) over n values must be <= 1. */
int h_cmp_floats(const char *what, const float *a, const float *b, size_t n, double atol, double rtol);
int h_cmp_doubles(const char *what, const double *a, const double *b, int n, double atol, double rtol);
/* Pixels all within one level, and differing on at most frac of them. */
int h_cmp_pixels(const char *what, const uint8_t *a, const uint8_t *b, size_t n, double frac);

/* A backend buffer holding host (or zeros when host is NULL); exits on failure. */
void *h_put(finc_backend *be, const void *host, size_t bytes);
/* Syncs (a failure is a failed check, -1) and downloads. */
int h_get(finc_backend *be, void *host, const void *d, size_t bytes, const char *what);

typedef struct {
    const char *name;
    testmodel_spec spec;
    int big;                      /* a paper shape: timed, compared on fewer images */
} h_shape;
testmodel_spec h_spec(int c, int h, int w, int L, int K, int k, int F, int actnorm);
/* The shapes checked and timed, small first; the paper's MNIST and CIFAR-10 last. */
extern const h_shape h_shapes[];
extern const int h_n_shapes;
/* Writes the random model of a shape (once) under the harness's temporary directory. */
int h_write_model(const h_shape *s, char *path, size_t n);
int h_tmpdir_init(void);
void h_tmpdir_free(void);

const char *h_dev_backend(void);
finc_backend *h_open_device_backend(const finc_model *m, int max_batch, finc_precision p, char *err, size_t errlen);
finc_engine *h_open_engine(const char *path, const char *backend, int max_batch, finc_precision p);
/* An engine call's status as a check: failed calls are failed checks. */
int h_ok_call(int rc, const char *err, const char *what);

/* Describes the device into h_device_desc, or says why none can be used (no
 * driver, one older than the runtime needs, no device) and returns -1. */
int h_device_init(void);

/* What each program does first: opens json_path for JSON lines (when not NULL),
 * finds the device, prints "<program> <date>: <device>" and writes it as the
 * first JSON line under `kind` ("test" or "bench"), and makes the temporary
 * directory. 0, or 2 (the exit status) with the reason on stderr. */
int h_start(const char *program, const char *kind, const char *json_path);

#endif
