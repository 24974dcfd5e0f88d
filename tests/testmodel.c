/* Random valid weights files for tests. Values are small so a flow stays near
 * identity: FInC off-taps sum to well under 1 in magnitude (the inverse
 * recursion stays stable), the 1x1 is orthogonal with rows scaled by up to
 * e^0.1, and conv3 and logs start near zero as at the start of training. */
#include "tests/testmodel.h"

#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

testmodel_spec testmodel_tiny(void)
{
    testmodel_spec s;
    memset(&s, 0, sizeof s);
    s.c = 1;
    s.h = s.w = 8;
    s.levels = 2;
    s.steps[0] = s.steps[1] = 2;
    s.kernel = 3;
    s.width = 8;
    s.actnorm = 1;
    return s;
}

/* ---- rng --------------------------------------------------------------- */

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (-a, a). */
static float unif(uint64_t *s, double a)
{
    double u = (double)(next_u64(s) >> 11) * 0x1p-53;
    return (float)((2 * u - 1) * a);
}

/* ---- file editing ------------------------------------------------------ */

testmodel_tensor *testmodel_find(testmodel_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

int testmodel_remove(testmodel_file *f, const char *name)
{
    testmodel_tensor *t = testmodel_find(f, name);
    if (!t)
        return -1;
    free(t->data);
    int i = (int)(t - f->t);
    memmove(&f->t[i], &f->t[i + 1], (size_t)(f->n - i - 1) * sizeof *f->t);
    f->n--;
    return 0;
}

static size_t numel_of(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

testmodel_tensor *testmodel_add(testmodel_file *f, const char *name, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > 4)
        return NULL;
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 64;
        testmodel_tensor *t = realloc(f->t, (size_t)cap * sizeof *t);
        if (!t)
            return NULL;
        f->t = t;
        f->cap = cap;
    }
    testmodel_tensor *t = &f->t[f->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = FINC_ST_F32;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->numel = numel_of(ndim, shape);
    t->data = calloc(t->numel + 1, sizeof *t->data);
    if (!t->data)
        return NULL;
    f->n++;
    return t;
}

int testmodel_reshape(testmodel_tensor *t, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > 4)
        return -1;
    size_t n = numel_of(ndim, shape);
    float *d = calloc(n + 1, sizeof *d);
    if (!d)
        return -1;
    memcpy(d, t->data, (n < t->numel ? n : t->numel) * sizeof *d);
    free(t->data);
    t->data = d;
    t->numel = n;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    return 0;
}

const char *testmodel_get_meta(const testmodel_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_key[i], key) == 0)
            return f->meta_val[i];
    return NULL;
}

void testmodel_set_meta(testmodel_file *f, const char *key, const char *value)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_key[i], key) == 0) {
            free(f->meta_val[i]);
            if (value) {
                f->meta_val[i] = strdup(value);
            } else {
                free(f->meta_key[i]);
                f->nmeta--;
                f->meta_key[i] = f->meta_key[f->nmeta];
                f->meta_val[i] = f->meta_val[f->nmeta];
            }
            return;
        }
    if (value && f->nmeta < TESTMODEL_MAX_META) {
        f->meta_key[f->nmeta] = strdup(key);
        f->meta_val[f->nmeta] = strdup(value);
        f->nmeta++;
    }
}

static void file_free(testmodel_file *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->t[i].data);
    free(f->t);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    memset(f, 0, sizeof *f);
}

/* ---- random model ------------------------------------------------------ */

char *testmodel_config_json(const testmodel_spec *sp)
{
    char steps[FINC_MAX_LEVELS * 12 + 4] = "";
    size_t used = 0;
    for (int l = 0; l < sp->levels && l < FINC_MAX_LEVELS; l++)
        used += (size_t)snprintf(steps + used, sizeof steps - used, l ? ",%d" : "%d", sp->steps[l]);
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"image\":[%d,%d,%d],\"levels\":%d,\"steps\":[%s],\"kernel\":%d,"
             "\"coupling_width\":%d,\"actnorm\":%s,\"alpha\":%.17g}",
             sp->c, sp->h, sp->w, sp->levels, steps, sp->kernel, sp->width, sp->actnorm ? "true" : "false",
             sp->alpha > 0 ? sp->alpha : 1e-6);
    return strdup(buf);
}

static testmodel_tensor *add4(testmodel_file *f, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
                              int64_t d)
{
    const int64_t shape[4] = {a, b, c, d};
    return testmodel_add(f, name, ndim, shape);
}

static void fill(testmodel_tensor *t, uint64_t *r, double a)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = unif(r, a);
}

/* A TL-form kernel with a unit lower-triangular current tap, stored in the
 * forward form of quarter q (TR flips width, BL height, BR both). */
static void fill_finc(testmodel_tensor *t, int q, int cq, int k, uint64_t *r)
{
    double a = 0.5 / ((double)cq * k * k);
    if (a > 0.1)
        a = 0.1;
    for (int o = 0; o < cq; o++)
        for (int i = 0; i < cq; i++)
            for (int y = 0; y < k; y++)
                for (int x = 0; x < k; x++) {
                    float v = unif(r, a);
                    if (y == k - 1 && x == k - 1)
                        v = i == o ? 1.0f : i < o ? v : 0.0f;
                    int sy = (q & 2) ? k - 1 - y : y, sx = (q & 1) ? k - 1 - x : x;
                    t->data[(((size_t)o * cq + i) * k + sy) * k + sx] = v;
                }
}

/* Orthogonal (Gram-Schmidt of a random matrix) with rows scaled by e^(+-0.1). */
static void fill_1x1(testmodel_tensor *t, int C, uint64_t *r)
{
    double *m = malloc((size_t)C * C * sizeof *m);
    if (!m)
        return;
    for (int i = 0; i < C; i++) {
        double *row = m + (size_t)i * C;
        for (int tries = 0; tries < 8; tries++) {
            for (int j = 0; j < C; j++)
                row[j] = unif(r, 1.0);
            for (int p = 0; p < i; p++) {
                const double *prev = m + (size_t)p * C;
                double dot = 0;
                for (int j = 0; j < C; j++)
                    dot += row[j] * prev[j];
                for (int j = 0; j < C; j++)
                    row[j] -= dot * prev[j];
            }
            double nrm = 0;
            for (int j = 0; j < C; j++)
                nrm += row[j] * row[j];
            nrm = sqrt(nrm);
            if (nrm > 1e-3) {
                for (int j = 0; j < C; j++)
                    row[j] /= nrm;
                break;
            }
        }
        double sc = exp(unif(r, 0.1));
        for (int j = 0; j < C; j++)
            t->data[(size_t)i * C + j] = (float)(row[j] * sc);
    }
    free(m);
}

static int add_coupling(testmodel_file *f, const char *prefix, int C, int F, uint64_t *r)
{
    char name[128];
    testmodel_tensor *t;
    double a1 = 0.5 / sqrt(C / 2 * 9.0), a2 = 0.5 / sqrt((double)F), a3 = 0.05 / sqrt(F * 9.0);
#define ADD(suffix, ndim, a, b, c, d, amp)                                 \
    snprintf(name, sizeof name, "%s.%s", prefix, suffix);                  \
    if (!(t = add4(f, name, ndim, a, b, c, d)))                            \
        return -1;                                                         \
    fill(t, r, amp);
    ADD("conv1.weight", 4, F, C / 2, 3, 3, a1);
    ADD("conv1.bias", 1, F, 0, 0, 0, 0.05);
    ADD("conv2.weight", 4, F, F, 1, 1, a2);
    ADD("conv2.bias", 1, F, 0, 0, 0, 0.05);
    ADD("conv3.weight", 4, C, F, 3, 3, a3);
    ADD("conv3.bias", 1, C, 0, 0, 0, 0.05);
    ADD("conv3.logs", 1, C, 0, 0, 0, 0.05);
#undef ADD
    return 0;
}

static int build(testmodel_file *f, const testmodel_spec *sp, uint64_t seed)
{
    static const char *const qn[4] = {"tl", "tr", "bl", "br"};
    uint64_t r = seed * 0x2545f4914f6cdd1dull + 0x1234567;
    int C = 4 * sp->c, F = sp->width, k = sp->kernel;
    char name[128];
    testmodel_tensor *t;
    for (int l = 0; l < sp->levels && l < FINC_MAX_LEVELS; l++, C *= 2) {
        for (int s = 0; s < sp->steps[l]; s++) {
            for (int q = 0; q < 4; q++) {
                snprintf(name, sizeof name, "levels.%d.steps.%d.finc.%s", l, s, qn[q]);
                if (!(t = add4(f, name, 4, C / 4, C / 4, k, k)))
                    return -1;
                fill_finc(t, q, C / 4, k, &r);
            }
            if (sp->actnorm) {
                snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm.translation", l, s);
                if (!(t = add4(f, name, 1, C, 0, 0, 0)))
                    return -1;
                fill(t, &r, 0.1);
                snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm.log_scale", l, s);
                if (!(t = add4(f, name, 1, C, 0, 0, 0)))
                    return -1;
                fill(t, &r, 0.1);
            }
            snprintf(name, sizeof name, "levels.%d.steps.%d.conv1x1.weight", l, s);
            if (!(t = add4(f, name, 2, C, C, 0, 0)))
                return -1;
            fill_1x1(t, C, &r);
            snprintf(name, sizeof name, "levels.%d.steps.%d.coupling", l, s);
            if (add_coupling(f, name, C, F, &r))
                return -1;
        }
        if (l < sp->levels - 1) {
            snprintf(name, sizeof name, "levels.%d.split.coupling", l);
            if (add_coupling(f, name, C, F, &r))
                return -1;
        }
    }
    for (int i = 0; i < f->n; i++)
        f->t[i].dtype = sp->dtype;
    char *conf = testmodel_config_json(sp);
    if (!conf)
        return -1;
    testmodel_set_meta(f, "format", "finc-flow");
    testmodel_set_meta(f, "format_version", "1");
    testmodel_set_meta(f, "config", conf);
    testmodel_set_meta(f, "dataset", "random test weights");
    free(conf);
    return 0;
}

/* Floats to the bytes of t's dtype. */
static void *encode(const testmodel_tensor *t)
{
    size_t es = finc_st_dtype_size(t->dtype);
    unsigned char *out = malloc(t->numel * es + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < t->numel; i++) {
        float v = t->data[i];
        unsigned char *p = out + i * es;
        switch (t->dtype) {
        case FINC_ST_F32: memcpy(p, &v, 4); break;
        case FINC_ST_F16: { uint16_t h = finc_st_f32_to_f16(v); memcpy(p, &h, 2); break; }
        case FINC_ST_BF16: { uint16_t h = finc_st_f32_to_bf16(v); memcpy(p, &h, 2); break; }
        case FINC_ST_F64: { double d = v; memcpy(p, &d, 8); break; }
        case FINC_ST_I8: case FINC_ST_U8: case FINC_ST_BOOL: *p = (unsigned char)(int)v; break;
        case FINC_ST_I16: case FINC_ST_U16: { int16_t h = (int16_t)v; memcpy(p, &h, 2); break; }
        case FINC_ST_I32: case FINC_ST_U32: { int32_t h = (int32_t)v; memcpy(p, &h, 4); break; }
        default: { int64_t h = (int64_t)v; memcpy(p, &h, 8); break; }
        }
    }
    return out;
}

static int write_file(const char *path, const testmodel_file *f)
{
    cJSON *meta = cJSON_CreateObject();
    for (int i = 0; i < f->nmeta; i++)
        cJSON_AddItemToObject(meta, f->meta_key[i], cJSON_CreateString(f->meta_val[i]));
    char *meta_json = f->nmeta ? cJSON_PrintUnformatted(meta) : NULL;
    cJSON_Delete(meta);
    finc_st_write_tensor *wt = calloc((size_t)f->n + 1, sizeof *wt);
    void **bytes = calloc((size_t)f->n + 1, sizeof *bytes);
    int rc = wt && bytes ? 0 : -1;
    for (int i = 0; i < f->n && rc == 0; i++) {
        bytes[i] = encode(&f->t[i]);
        wt[i] = (finc_st_write_tensor){f->t[i].name, f->t[i].dtype, f->t[i].ndim, f->t[i].shape, bytes[i]};
        if (!bytes[i])
            rc = -1;
    }
    char err[512] = "out of memory";
    if (rc == 0)
        rc = finc_st_write(path, meta_json, f->n, wt, err, sizeof err);
    if (rc)
        fprintf(stderr, "testmodel: writing %s: %s\n", path, err);
    for (int i = 0; bytes && i < f->n; i++)
        free(bytes[i]);
    free(bytes);
    free(wt);
    free(meta_json);
    return rc;
}

int testmodel_write_hook(const char *path, const testmodel_spec *spec, uint64_t seed, testmodel_hook hook,
                         void *user)
{
    testmodel_file f;
    memset(&f, 0, sizeof f);
    int rc = build(&f, spec, seed);
    if (rc)
        fprintf(stderr, "testmodel: out of memory building %s\n", path);
    if (rc == 0 && hook)
        hook(&f, user);
    if (rc == 0)
        rc = write_file(path, &f);
    file_free(&f);
    return rc;
}

int testmodel_write(const char *path, const testmodel_spec *spec, uint64_t seed)
{
    return testmodel_write_hook(path, spec, seed, NULL, NULL);
}

/* ---- temporary paths --------------------------------------------------- */

static const char *tmp_root(void)
{
    const char *d = getenv("TMPDIR");
    return d && *d ? d : "/tmp";
}

int testmodel_tmpfile(char *buf, size_t n, const char *suffix)
{
    if (!suffix)
        suffix = "";
    if ((size_t)snprintf(buf, n, "%s/finc-test-XXXXXX%s", tmp_root(), suffix) >= n)
        return -1;
    int fd = mkstemps(buf, (int)strlen(suffix));
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

int testmodel_tmpdir(char *buf, size_t n)
{
    if ((size_t)snprintf(buf, n, "%s/finc-test-XXXXXX", tmp_root()) >= n)
        return -1;
    return mkdtemp(buf) ? 0 : -1;
}

void testmodel_rmdir(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char p[4096];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(path);
}
