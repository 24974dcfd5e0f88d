/* See harness.h. */
#include "tests/cuda/harness.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda_bench.h"

int h_cpu_as_device;
char h_device_desc[512] = "CPU backend standing in for the device (--cpu-as-device)";
char h_date[32];
FILE *h_json;
int h_pass, h_fail;

double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double h_median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 0x1234;
double h_rnd(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

void *h_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "cuda harness: out of host memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

float *h_rand_floats(size_t n, double lo, double hi)
{
    float *p = h_xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * h_rnd());
    return p;
}

uint8_t *h_rand_pixels(size_t n)
{
    uint8_t *p = h_xmalloc(n);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(h_rnd() * 256);
    return p;
}

void h_check(int ok, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("  %s %s\n", ok ? "ok  " : "FAIL", msg);
    fflush(stdout);
    ok ? h_pass++ : h_fail++;
    if (h_json) {
        fputs("{\"check\": \"", h_json);
        for (const char *c = msg; *c; c++) {
            if (*c == '"' || *c == '\\') fputc('\\', h_json);
            if ((unsigned char)*c >= 0x20) fputc(*c, h_json);
        }
        fprintf(h_json, "\", \"pass\": %s}\n", ok ? "true" : "false");
    }
}

void h_json_line(const char *fmt, ...)
{
    if (!h_json) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(h_json, fmt, ap);
    va_end(ap);
    fputc('\n', h_json);
    fflush(h_json);
}

int h_cmp_floats(const char *what, const float *a, const float *b, size_t n, double atol, double rtol)
{
    double worst = 0, maxabs = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        double r = d == 0 ? 0 : d / (atol + rtol * fabs((double)b[i]));
        if (isnan(a[i]) != isnan(b[i]) || (!isfinite(d) && a[i] != b[i])) r = INFINITY;
        if (d > maxabs && isfinite(d)) maxabs = d;
        if (r > worst || isnan(r)) worst = r, at = i;
    }
    const int ok = worst <= 1.0;
    if (ok) h_check(1, "%s: max |diff| %.3g (%.2f of tolerance)", what, maxabs, worst);
    else h_check(0, "%s: element %zu: %.9g vs reference %.9g (%.3g x tolerance atol %.1g rtol %.1g)", what, at, a[at],
                 b[at], worst, atol, rtol);
    return ok;
}

int h_cmp_doubles(const char *what, const double *a, const double *b, int n, double atol, double rtol)
{
    double worst = 0, maxabs = 0;
    int at = 0;
    for (int i = 0; i < n; i++) {
        const double d = fabs(a[i] - b[i]);
        const double r = d == 0 ? 0 : isfinite(d) ? d / (atol + rtol * fabs(b[i])) : INFINITY;
        if (isfinite(d) && d > maxabs) maxabs = d;
        if (r > worst) worst = r, at = i;
    }
    const int ok = worst <= 1.0;
    if (ok) h_check(1, "%s: max |diff| %.3g (%.2f of tolerance)", what, maxabs, worst);
    else h_check(0, "%s: item %d: %.12g vs reference %.12g", what, at, a[at], b[at]);
    return ok;
}

int h_cmp_pixels(const char *what, const uint8_t *a, const uint8_t *b, size_t n, double frac)
{
    size_t diff = 0, first = n;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        const int d = abs((int)a[i] - (int)b[i]);
        if (d) {
            diff++;
            if (first == n) first = i;
        }
        if (d > maxd) maxd = d;
    }
    const int ok = maxd <= 1 && diff <= (size_t)(frac * n);
    if (diff == 0) h_check(ok, "%s: all %zu pixels equal", what, n);
    else h_check(ok, "%s: %zu of %zu pixels differ (allowed %.0f), by at most %d (first at %zu: %d vs %d)", what, diff,
                 n, frac * n, maxd, first, a[first], b[first]);
    return ok;
}

void *h_put(finc_backend *be, const void *host, size_t bytes)
{
    void *d = be->alloc(be, bytes);
    if (!d) {
        fprintf(stderr, "cuda harness: %s alloc of %zu bytes failed\n", be->name, bytes);
        exit(2);
    }
    if (host) be->upload(be, d, host, bytes);
    else be->zero(be, d, bytes);
    return d;
}

int h_get(finc_backend *be, void *host, const void *d, size_t bytes, const char *what)
{
    char err[600];
    if (be->sync(be, err, sizeof err)) {
        h_check(0, "%s on %s: %s", what, be->name, err);
        return -1;
    }
    be->download(be, host, d, bytes);
    return 0;
}

testmodel_spec h_spec(int c, int h, int w, int L, int K, int k, int F, int actnorm)
{
    testmodel_spec s;
    memset(&s, 0, sizeof s);
    s.c = c, s.h = h, s.w = w, s.levels = L, s.kernel = k, s.width = F, s.actnorm = actnorm;
    for (int l = 0; l < L; l++) s.steps[l] = K;
    return s;
}

#define SPEC(C, H, W, L, k, F, an, ...) \
    {.c = C, .h = H, .w = W, .levels = L, .steps = {__VA_ARGS__}, .kernel = k, .width = F, .actnorm = an, .dtype = 0, \
     .alpha = 0}
const h_shape h_shapes[] = {
    {"tiny", SPEC(1, 8, 8, 2, 3, 8, 1, 2, 2), 0},
    {"k2-8x12", SPEC(1, 8, 12, 2, 2, 8, 1, 1, 1), 0},
    {"L3-noactnorm", SPEC(3, 8, 8, 3, 3, 8, 0, 1, 1, 1), 0},
    {"k5-4x8", SPEC(2, 4, 8, 1, 5, 12, 1, 3), 0},
    {"c3-48x40", SPEC(3, 48, 40, 2, 3, 16, 1, 1, 1), 0},   /* reductions over several chunks */
    {"c16-96x96", SPEC(16, 96, 96, 1, 3, 8, 1, 1), 0},     /* Cq 16: 144 KiB image, threads loop */
    {"mnist", SPEC(1, 28, 28, 2, 3, 512, 1, 16, 16), 1},
    {"cifar10", SPEC(3, 32, 32, 3, 3, 512, 1, 32, 32, 32), 1},
};
#undef SPEC
const int h_n_shapes = (int)(sizeof h_shapes / sizeof h_shapes[0]);

static char tmpdir[512];

int h_tmpdir_init(void) { return testmodel_tmpdir(tmpdir, sizeof tmpdir); }
void h_tmpdir_free(void) { testmodel_rmdir(tmpdir); }

int h_write_model(const h_shape *s, char *path, size_t n)
{
    snprintf(path, n, "%s/%s.safetensors", tmpdir, s->name);
    if (access(path, R_OK) == 0) return 0;
    const double t = h_now();
    if (testmodel_write(path, &s->spec, 20230121)) {
        h_check(0, "%s: writing the random model failed", s->name);
        return -1;
    }
    fprintf(stderr, "[%s] wrote %s in %.1f s\n", s->name, path, h_now() - t);
    return 0;
}

const char *h_dev_backend(void) { return h_cpu_as_device ? "cpu" : "cuda"; }

finc_backend *h_open_device_backend(const finc_model *m, int max_batch, finc_precision p, char *err, size_t errlen)
{
#ifdef FINC_HAVE_CUDA
    if (!h_cpu_as_device) return finc_backend_cuda_new(m, max_batch, -1, p, err, errlen);
#endif
    return finc_backend_cpu_new(m, max_batch, 0, err, errlen);
}

finc_engine *h_open_engine(const char *path, const char *backend, int max_batch, finc_precision p)
{
    char err[600];
    finc_engine_opts o = {.backend = backend, .max_batch = max_batch, .precision = p};
    finc_engine *e = finc_engine_open(path, &o, err, sizeof err);
    if (!e) h_check(0, "open %s engine: %s", backend, err);
    return e;
}

int h_ok_call(int rc, const char *err, const char *what)
{
    if (rc) h_check(0, "%s: %s", what, err);
    return rc == 0;
}

/* The engine-level checks open CUDA through the module, as finc does, and the
 * loader looks for it beside the executable (engine/cuda_module.c); these
 * programs sit deeper in a build (build/tests/cuda/, build/bench/, and so in
 * a bundle), so they point it at their own build's module, the nearest one
 * above them, unless FINC_CUDA_MODULE says otherwise. */
static void find_module(void)
{
    if (getenv("FINC_CUDA_MODULE")) return;
    char dir[PATH_MAX], cand[PATH_MAX + 32];
    const ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0) return;
    dir[n] = 0;
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir) return;
        *slash = 0;
        snprintf(cand, sizeof cand, "%s/libfinc-cuda.so", dir);
        if (access(cand, R_OK) == 0) {
            setenv("FINC_CUDA_MODULE", cand, 0);
            return;
        }
    }
}

int h_device_init(void)
{
    if (h_cpu_as_device) return 0;
    find_module();
#ifdef FINC_HAVE_CUDA
    const int count = finc_cuda_device_count();
    if (count <= 0) {
        char why[512] = "none found";
        finc_cuda_describe(0, why, sizeof why);
        fprintf(stderr, "no usable CUDA device: %s (--cpu-as-device checks this program without one)\n", why);
        return -1;
    }
    const char *env = getenv("FINC_CUDA_DEVICE");
    if (finc_cuda_describe(env && *env ? atoi(env) : 0, h_device_desc, sizeof h_device_desc)) {
        fprintf(stderr, "%s\n", h_device_desc);
        return -1;
    }
    return 0;
#else
    fprintf(stderr, "built without CUDA (nvcc not found, or CUDA=0)\n");
    return -1;
#endif
}

int h_start(const char *program, const char *kind, const char *json_path)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (json_path && !(h_json = fopen(json_path, "w"))) {
        perror(json_path);
        return 2;
    }
    if (h_device_init()) return 2;
    const time_t t = time(NULL);
    strftime(h_date, sizeof h_date, "%Y-%m-%d", gmtime(&t));
    printf("%s %s: %s\n", program, h_date, h_device_desc);
    h_json_line("{\"%s\": \"%s\", \"device\": \"%s\", \"date\": \"%s\", \"cpu_as_device\": %d}", kind, program,
                h_device_desc, h_date, h_cpu_as_device);
    if (h_tmpdir_init()) {
        perror("tmpdir");
        return 2;
    }
    return 0;
}
