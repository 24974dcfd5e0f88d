/* Test utility: writes valid random FInC Flow weights files (model.md section 4)
 * of any small shape from a seed, optionally corrupted by a hook first, and
 * makes temporary paths. Tensor names and shapes are generated here on their
 * own, not by finc_config_each_tensor, so loading them tests the loader. */
#ifndef FINC_TESTMODEL_H
#define FINC_TESTMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/safetensors.h"

typedef struct {
    int c, h, w;                  /* image channels and size */
    int levels;
    int steps[FINC_MAX_LEVELS];
    int kernel;                   /* FInC k */
    int width;                    /* coupling F */
    int actnorm;
    finc_st_dtype dtype;          /* of every tensor; zero is F32 (F16, BF16 also load) */
    double alpha;                 /* 0 writes the default 1e-6 */
} testmodel_spec;

/* 1 x 8 x 8 image, 2 levels of 2 steps, k 3, F 8, ActNorm. */
testmodel_spec testmodel_tiny(void);

/* One tensor of a file being written. Values are floats whatever the dtype:
 * F16/BF16 are rounded, integer dtypes take the value cast. */
typedef struct {
    char name[128];
    finc_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    size_t numel;
    float *data;                  /* numel values, row-major, owned */
} testmodel_tensor;

#define TESTMODEL_MAX_META 16

typedef struct {
    int n, cap;
    testmodel_tensor *t;          /* in file order */
    int nmeta;
    char *meta_key[TESTMODEL_MAX_META], *meta_val[TESTMODEL_MAX_META];
} testmodel_file;

/* Called after the random file is built and before it is written. */
typedef void (*testmodel_hook)(testmodel_file *f, void *user);

/* Write a valid model file for spec, values drawn from seed. Returns 0, or -1
 * after printing why to stderr. */
int testmodel_write(const char *path, const testmodel_spec *spec, uint64_t seed);
int testmodel_write_hook(const char *path, const testmodel_spec *spec, uint64_t seed,
                         testmodel_hook hook, void *user);

/* For hooks. find returns NULL when absent; add appends a zero tensor;
 * reshape keeps the values that still fit and zeroes the rest; set_meta
 * replaces, adds, or with value NULL removes a __metadata__ entry. */
testmodel_tensor *testmodel_find(testmodel_file *f, const char *name);
int testmodel_remove(testmodel_file *f, const char *name);
testmodel_tensor *testmodel_add(testmodel_file *f, const char *name, int ndim, const int64_t *shape);
int testmodel_reshape(testmodel_tensor *t, int ndim, const int64_t *shape);
void testmodel_set_meta(testmodel_file *f, const char *key, const char *value);
const char *testmodel_get_meta(const testmodel_file *f, const char *key);

/* The config JSON string for spec (malloc'd). */
char *testmodel_config_json(const testmodel_spec *spec);

/* A fresh empty file "$TMPDIR/finc-test-XXXXXX<suffix>" (created, so the
 * name is unique) or a fresh directory; the path goes in buf. 0 or -1. */
int testmodel_tmpfile(char *buf, size_t n, const char *suffix);
int testmodel_tmpdir(char *buf, size_t n);
/* Removes a directory made by testmodel_tmpdir and the files directly in it. */
void testmodel_rmdir(const char *path);

#endif
