/* A generic safetensors reader and writer (huggingface/safetensors layout:
 * u64 LE header length, JSON header, raw little-endian tensors). The reader
 * maps the file read-only and validates the whole header before exposing a
 * byte; it knows nothing of flows (engine/model.c does). */
#ifndef FINC_SAFETENSORS_H
#define FINC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define FINC_ST_MAX_DIMS 8
#define FINC_ST_MAX_HEADER (100u * 1024u * 1024u)   /* bytes of JSON header we accept */

/* Zero is F32, so a zero-initialised spec or struct means float32. */
typedef enum {
    FINC_ST_F32 = 0,
    FINC_ST_F16,
    FINC_ST_BF16,
    FINC_ST_F64,
    FINC_ST_I8,
    FINC_ST_U8,
    FINC_ST_I16,
    FINC_ST_U16,
    FINC_ST_I32,
    FINC_ST_U32,
    FINC_ST_I64,
    FINC_ST_U64,
    FINC_ST_BOOL,
    FINC_ST_NDTYPES
} finc_st_dtype;

typedef struct {
    char *name;
    finc_st_dtype dtype;
    int ndim;
    int64_t shape[FINC_ST_MAX_DIMS];
    size_t numel;                 /* product of shape (1 for a scalar) */
    size_t nbytes;                /* numel * element size */
    uint64_t begin, end;          /* data_offsets, relative to the data section */
    const void *data;             /* into the read-only mapping; may be unaligned */
} finc_st_tensor;

/* An open file. Fields are read-only for callers. */
typedef struct {
    int n;                        /* tensors, in header order */
    finc_st_tensor *tensors;
    int has_metadata;             /* the header has a __metadata__ object */
    int nmeta;                    /* its entries, in header order */
    const char **meta_keys, **meta_vals;   /* into meta_tree */
    void *meta_tree;              /* the parsed __metadata__ (a cJSON object), kept: no copy of its values */
    int *by_name;                 /* tensor indices sorted by name */
    void *map;
    size_t map_len;
} finc_st;

/* Open, map and validate a file. Returns 0, or -1 with one message in err
 * (naming the tensor at fault); on failure f holds nothing to close. */
int finc_st_open(finc_st *f, const char *path, char *err, size_t errlen);
void finc_st_close(finc_st *f);

const finc_st_tensor *finc_st_find(const finc_st *f, const char *name);
static inline int finc_st_count(const finc_st *f) { return f->n; }
static inline const finc_st_tensor *finc_st_at(const finc_st *f, int i) { return &f->tensors[i]; }
/* A __metadata__ value, or NULL. */
const char *finc_st_meta(const finc_st *f, const char *key);
/* The __metadata__ object as JSON text (malloc'd) less the entry `except`
 * (NULL: none left out); NULL when the file has none or out of memory. */
char *finc_st_metadata_json(const finc_st *f, const char *except);

/* Copy a tensor out as float32 / float64, converting from any float dtype
 * (F32, F16, BF16, F64) or integer dtype. dst holds t->numel values.
 * Returns 0, or -1 for BOOL. */
int finc_st_to_f32(const finc_st_tensor *t, float *dst);
int finc_st_to_f64(const finc_st_tensor *t, double *dst);

const char *finc_st_dtype_name(finc_st_dtype d);
/* "(d0, d1, ...)", cut to fit n bytes: shapes in error messages. */
void finc_st_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);
size_t finc_st_dtype_size(finc_st_dtype d);
/* The dtype for a header name ("F32", ...), or -1. */
int finc_st_dtype_parse(const char *name);

float finc_st_f16_to_f32(uint16_t h);
uint16_t finc_st_f32_to_f16(float f);       /* round to nearest even */
float finc_st_bf16_to_f32(uint16_t h);
uint16_t finc_st_f32_to_bf16(float f);      /* round to nearest even */

typedef struct {
    const char *name;
    finc_st_dtype dtype;
    int ndim;
    const int64_t *shape;         /* ndim entries */
    const void *data;             /* numel * element size bytes, little-endian */
} finc_st_write_tensor;

/* Write a file: metadata_json_object is a JSON object of strings, or NULL;
 * tensors are laid out in the order given. Returns 0, or -1 with err. */
int finc_st_write(const char *path, const char *metadata_json_object, int n,
                  const finc_st_write_tensor *tensors, char *err, size_t errlen);

#endif
