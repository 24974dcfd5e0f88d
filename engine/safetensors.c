/* safetensors reader and writer. The header is checked in full (types, shapes,
 * offsets against the data section, no overlap, no gap, no trailing bytes)
 * before open returns, so a caller may trust every tensor it finds. */
#include "engine/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

/* Offsets and shapes arrive as JSON doubles: beyond 2^53 they are not exact. */
#define JSON_INT_MAX 9007199254740992.0

static const struct {
    const char *name;
    size_t size;
} dtypes[FINC_ST_NDTYPES] = {
    [FINC_ST_F32] = {"F32", 4},   [FINC_ST_F16] = {"F16", 2}, [FINC_ST_BF16] = {"BF16", 2},
    [FINC_ST_F64] = {"F64", 8},   [FINC_ST_I8] = {"I8", 1},   [FINC_ST_U8] = {"U8", 1},
    [FINC_ST_I16] = {"I16", 2},   [FINC_ST_U16] = {"U16", 2}, [FINC_ST_I32] = {"I32", 4},
    [FINC_ST_U32] = {"U32", 4},   [FINC_ST_I64] = {"I64", 8}, [FINC_ST_U64] = {"U64", 8},
    [FINC_ST_BOOL] = {"BOOL", 1},
};

const char *finc_st_dtype_name(finc_st_dtype d)
{
    return (unsigned)d < FINC_ST_NDTYPES ? dtypes[d].name : "?";
}

size_t finc_st_dtype_size(finc_st_dtype d)
{
    return (unsigned)d < FINC_ST_NDTYPES ? dtypes[d].size : 0;
}

int finc_st_dtype_parse(const char *name)
{
    for (int i = 0; i < FINC_ST_NDTYPES; i++)
        if (strcmp(name, dtypes[i].name) == 0)
            return i;
    return -1;
}

/* ---- half precision ---------------------------------------------------- */

static float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

float finc_st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (e == 0) {
        float v = (float)man * 0x1p-24f;      /* zero or subnormal, exact */
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (man << 13));
}

uint16_t finc_st_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u)                    /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {                   /* below 2^-14: subnormal half */
        /* Scaling by 2^24 is exact; lrintf rounds to nearest even. A result
         * of 0x400 is the smallest normal, which is the right encoding. */
        return (uint16_t)(sign | (uint32_t)lrintf(bits_f32(ax) * 0x1p24f));
    }
    uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float finc_st_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t finc_st_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* ---- conversion -------------------------------------------------------- */

static double elem_f64(const unsigned char *p, finc_st_dtype d)
{
    switch (d) {
    case FINC_ST_F32: { float v; memcpy(&v, p, 4); return v; }
    case FINC_ST_F16: { uint16_t v; memcpy(&v, p, 2); return finc_st_f16_to_f32(v); }
    case FINC_ST_BF16: { uint16_t v; memcpy(&v, p, 2); return finc_st_bf16_to_f32(v); }
    case FINC_ST_F64: { double v; memcpy(&v, p, 8); return v; }
    case FINC_ST_I8: { int8_t v; memcpy(&v, p, 1); return v; }
    case FINC_ST_U8: return *p;
    case FINC_ST_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case FINC_ST_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case FINC_ST_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case FINC_ST_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case FINC_ST_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case FINC_ST_U64: { uint64_t v; memcpy(&v, p, 8); return (double)v; }
    default: return 0;
    }
}

int finc_st_to_f32(const finc_st_tensor *t, float *dst)
{
    if (t->dtype == FINC_ST_BOOL || (unsigned)t->dtype >= FINC_ST_NDTYPES)
        return -1;
    if (t->dtype == FINC_ST_F32) {
        if (t->nbytes)
            memcpy(dst, t->data, t->nbytes);
        return 0;
    }
    const unsigned char *p = t->data;
    size_t es = dtypes[t->dtype].size;
    for (size_t i = 0; i < t->numel; i++)
        dst[i] = (float)elem_f64(p + i * es, t->dtype);
    return 0;
}

int finc_st_to_f64(const finc_st_tensor *t, double *dst)
{
    if (t->dtype == FINC_ST_BOOL || (unsigned)t->dtype >= FINC_ST_NDTYPES)
        return -1;
    const unsigned char *p = t->data;
    size_t es = dtypes[t->dtype].size;
    for (size_t i = 0; i < t->numel; i++)
        dst[i] = elem_f64(p + i * es, t->dtype);
    return 0;
}

/* ---- reader ------------------------------------------------------------ */

static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > JSON_INT_MAX || d != floor(d))
        return -1;
    *out = (uint64_t)d;
    return 0;
}

void finc_st_shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n)
        snprintf(buf + used, n - used, ")");
}

/* Parse one header entry into t (name already set). */
static int parse_entry(finc_st_tensor *t, const cJSON *e, size_t data_len, char *err, size_t errlen)
{
    const char *nm = t->name;
    if (!cJSON_IsObject(e))
        return finc_errorf(err, errlen, "tensor '%s': header entry is not an object", nm);
    for (const cJSON *k = e->child; k; k = k->next)
        if (strcmp(k->string, "dtype") && strcmp(k->string, "shape") && strcmp(k->string, "data_offsets"))
            return finc_errorf(err, errlen, "tensor '%s': unexpected key '%s' in header entry", nm, k->string);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return finc_errorf(err, errlen, "tensor '%s': dtype missing or not a string", nm);
    int d = finc_st_dtype_parse(dt->valuestring);
    if (d < 0)
        return finc_errorf(err, errlen, "tensor '%s': unknown dtype '%s'", nm, dt->valuestring);
    t->dtype = (finc_st_dtype)d;
    size_t es = dtypes[d].size;

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return finc_errorf(err, errlen, "tensor '%s': shape missing or not an array", nm);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > FINC_ST_MAX_DIMS)
        return finc_errorf(err, errlen, "tensor '%s': shape has %d dims, at most %d supported", nm, ndim,
                    FINC_ST_MAX_DIMS);
    t->ndim = ndim;
    int i = 0, zero = 0;
    for (const cJSON *v = sh->child; v; v = v->next, i++) {
        uint64_t u;
        if (json_uint(v, &u) < 0)
            return finc_errorf(err, errlen, "tensor '%s': shape[%d] is not a non-negative integer", nm, i);
        t->shape[i] = (int64_t)u;
        zero |= u == 0;
    }
    uint64_t numel = 1;
    if (zero) {
        numel = 0;
    } else {
        for (i = 0; i < ndim; i++) {
            uint64_t s = (uint64_t)t->shape[i];
            if (numel > (uint64_t)JSON_INT_MAX / es / s) {
                char sb[256];
                finc_st_shape_str(sb, sizeof sb, ndim, t->shape);
                return finc_errorf(err, errlen, "tensor '%s': shape %s has too many elements", nm, sb);
            }
            numel *= s;
        }
    }
    t->numel = (size_t)numel;
    t->nbytes = (size_t)(numel * es);

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &b) < 0 ||
        json_uint(off->child->next, &en) < 0)
        return finc_errorf(err, errlen, "tensor '%s': data_offsets must be [begin, end] of non-negative integers", nm);
    t->begin = b;
    t->end = en;
    if (en < b)
        return finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] end before they begin", nm,
                    (unsigned long long)b, (unsigned long long)en);
    if (en - b != t->nbytes) {
        char sb[256];
        finc_st_shape_str(sb, sizeof sb, ndim, t->shape);
        return finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] span %llu bytes, dtype %s shape %s needs %zu",
                    nm, (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b),
                    dtypes[d].name, sb, t->nbytes);
    }
    if (en > data_len)
        return finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] out of bounds of the %zu-byte data section",
                    nm, (unsigned long long)b, (unsigned long long)en, data_len);
    return 0;
}

static int cmp_offsets(const void *a, const void *b)
{
    const finc_st_tensor *x = *(const finc_st_tensor *const *)a, *y = *(const finc_st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int cmp_names(const void *a, const void *b)
{
    const finc_st_tensor *x = *(const finc_st_tensor *const *)a, *y = *(const finc_st_tensor *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x < y ? -1 : x > y);
}

/* Sorted views: duplicates by name, then the data section tiled exactly. */
static int check_layout(finc_st *f, size_t data_len, char *err, size_t errlen)
{
    int n = f->n;
    finc_st_tensor **v = malloc(((size_t)n + 1) * sizeof *v);
    f->by_name = malloc(((size_t)n + 1) * sizeof *f->by_name);
    if (!v || !f->by_name) {
        free(v);
        return finc_errorf(err, errlen, "out of memory indexing %d tensors", n);
    }
    for (int i = 0; i < n; i++)
        v[i] = &f->tensors[i];
    qsort(v, (size_t)n, sizeof *v, cmp_names);
    for (int i = 0; i < n; i++) {
        if (i > 0 && strcmp(v[i]->name, v[i - 1]->name) == 0) {
            finc_errorf(err, errlen, "tensor '%s' appears twice in the header", v[i]->name);
            free(v);
            return -1;
        }
        f->by_name[i] = (int)(v[i] - f->tensors);
    }

    qsort(v, (size_t)n, sizeof *v, cmp_offsets);
    uint64_t pos = 0;
    const finc_st_tensor *prev = NULL;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const finc_st_tensor *t = v[i];
        if (t->begin < pos)
            rc = finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' [%llu, %llu]",
                      t->name, (unsigned long long)t->begin, (unsigned long long)t->end, prev->name,
                      (unsigned long long)prev->begin, (unsigned long long)prev->end);
        else if (t->begin > pos && prev)
            rc = finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes after tensor '%s'",
                      t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)(t->begin - pos), prev->name);
        else if (t->begin > pos)
            rc = finc_errorf(err, errlen, "tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes at the start of the data section",
                      t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)t->begin);
        if (t->end > pos) {
            pos = t->end;
            prev = t;
        } else if (!prev) {
            prev = t;
        }
    }
    if (rc == 0 && pos < data_len)
        rc = finc_errorf(err, errlen, "%llu trailing bytes after the last tensor (data section is %zu bytes, tensors end at %llu)",
                  (unsigned long long)(data_len - pos), data_len, (unsigned long long)pos);
    free(v);
    return rc;
}

static int parse_metadata(finc_st *f, cJSON *m, char *err, size_t errlen)
{
    f->meta_tree = m;
    f->has_metadata = 1;
    if (!cJSON_IsObject(m))
        return finc_errorf(err, errlen, "__metadata__ is not an object");
    int n = cJSON_GetArraySize(m);
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_vals = calloc((size_t)n + 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return finc_errorf(err, errlen, "out of memory reading __metadata__");
    for (const cJSON *e = m->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            return finc_errorf(err, errlen, "__metadata__ value '%s' is not a string", e->string);
        for (int i = 0; i < f->nmeta; i++)
            if (strcmp(f->meta_keys[i], e->string) == 0)
                return finc_errorf(err, errlen, "__metadata__ key '%s' appears twice", e->string);
        f->meta_keys[f->nmeta] = e->string;
        f->meta_vals[f->nmeta] = e->valuestring;
        f->nmeta++;
    }
    return 0;
}

static int parse_header(finc_st *f, const char *hdr, size_t hlen, size_t data_len, char *err, size_t errlen)
{
    if (hlen == 0)
        return finc_errorf(err, errlen, "header is empty (length 0)");
    if (memchr(hdr, 0, hlen))
        return finc_errorf(err, errlen, "header is not valid JSON (contains a NUL byte)");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        return finc_errorf(err, errlen, "header is not valid JSON (error near byte %zu of %zu)", at, hlen);
    }
    int rc = 0;
    for (const char *p = end; p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = finc_errorf(err, errlen, "header has non-space bytes after its JSON value (at byte %zu of %zu)",
                      (size_t)(p - hdr), hlen);
            break;
        }
    if (rc == 0 && !cJSON_IsObject(root))
        rc = finc_errorf(err, errlen, "header is not a JSON object");
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }

    int nent = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)nent + 1, sizeof *f->tensors);
    if (!f->tensors) {
        cJSON_Delete(root);
        return finc_errorf(err, errlen, "out of memory reading a header of %d entries", nent);
    }
    const unsigned char *data = (const unsigned char *)hdr + hlen;
    cJSON *meta = NULL;
    for (cJSON *e = root->child; e && rc == 0; e = e->next)
        if (strcmp(e->string, "__metadata__") == 0) {
            if (meta)
                rc = finc_errorf(err, errlen, "__metadata__ appears twice in the header");
            meta = e;
        }
    if (rc == 0 && meta)   /* kept past the header's tree: the values are read in place */
        rc = parse_metadata(f, cJSON_DetachItemViaPointer(root, meta), err, errlen);
    for (const cJSON *e = root->child; e && rc == 0; e = e->next) {
        if (e->string[0] == 0) {
            rc = finc_errorf(err, errlen, "header has a tensor with an empty name");
            break;
        }
        finc_st_tensor *t = &f->tensors[f->n];
        t->name = strdup(e->string);
        if (!t->name) {
            rc = finc_errorf(err, errlen, "out of memory reading the header");
            break;
        }
        f->n++;
        rc = parse_entry(t, e, data_len, err, errlen);
        if (rc == 0)
            t->data = data + t->begin;
    }
    cJSON_Delete(root);
    if (rc == 0)
        rc = check_layout(f, data_len, err, errlen);
    return rc;
}

int finc_st_open(finc_st *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return finc_errorf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return finc_errorf(err, errlen, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return finc_errorf(err, errlen, "'%s' is not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return finc_errorf(err, errlen, "file is %lld bytes, too short for the 8-byte header length",
                    (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return finc_errorf(err, errlen, "file is too large to map (%lld bytes)", (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return finc_errorf(err, errlen, "cannot map '%s': %s", path, strerror(e));
    f->map = map;
    f->map_len = size;

    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    int rc;
    if (hlen > size - 8)
        rc = finc_errorf(err, errlen, "header length %llu runs past the end of the file (%zu bytes follow the length field)",
                  (unsigned long long)hlen, size - 8);
    else if (hlen > FINC_ST_MAX_HEADER)
        rc = finc_errorf(err, errlen, "header length %llu exceeds the %u-byte limit", (unsigned long long)hlen,
                  FINC_ST_MAX_HEADER);
    else
        rc = parse_header(f, (const char *)p + 8, (size_t)hlen, size - 8 - (size_t)hlen, err, errlen);
    if (rc)
        finc_st_close(f);
    return rc;
}

void finc_st_close(finc_st *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    cJSON_Delete(f->meta_tree);
    free(f->by_name);
    if (f->map)
        munmap(f->map, f->map_len);
    memset(f, 0, sizeof *f);
}

const finc_st_tensor *finc_st_find(const finc_st *f, const char *name)
{
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const finc_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *finc_st_meta(const finc_st *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_vals[i];
    return NULL;
}

char *finc_st_metadata_json(const finc_st *f, const char *except)
{
    if (!f->has_metadata)
        return NULL;
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < f->nmeta; i++)
        if ((!except || strcmp(f->meta_keys[i], except) != 0) &&
            !cJSON_AddStringToObject(o, f->meta_keys[i], f->meta_vals[i])) {
            cJSON_Delete(o);
            o = NULL;
        }
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* ---- writer ------------------------------------------------------------ */

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *build_header(const char *meta_json, int n, const finc_st_write_tensor *ts, char *err, size_t errlen)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        finc_errorf(err, errlen, "out of memory building the header");
        return NULL;
    }
    if (meta_json) {
        cJSON *m = cJSON_Parse(meta_json);
        if (!cJSON_IsObject(m)) {
            cJSON_Delete(m);
            cJSON_Delete(root);
            finc_errorf(err, errlen, "metadata is not a JSON object");
            return NULL;
        }
        for (const cJSON *e = m->child; e; e = e->next)
            if (!cJSON_IsString(e)) {
                finc_errorf(err, errlen, "metadata value '%s' is not a string", e->string);
                cJSON_Delete(m);
                cJSON_Delete(root);
                return NULL;
            }
        cJSON_AddItemToObject(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const finc_st_write_tensor *t = &ts[i];
        cJSON *e = cJSON_CreateObject();
        cJSON *sh = cJSON_CreateArray();
        cJSON *of = cJSON_CreateArray();
        if (!e || !sh || !of) {
            cJSON_Delete(e);
            cJSON_Delete(sh);
            cJSON_Delete(of);
            cJSON_Delete(root);
            finc_errorf(err, errlen, "out of memory building the header");
            return NULL;
        }
        cJSON_AddItemToObject(root, t->name, e);
        cJSON_AddItemToObject(e, "dtype", cJSON_CreateString(dtypes[t->dtype].name));
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            numel *= (uint64_t)t->shape[d];
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        }
        cJSON_AddItemToObject(e, "shape", sh);
        uint64_t nb = numel * dtypes[t->dtype].size;
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        cJSON_AddItemToObject(e, "data_offsets", of);
        off += nb;
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s)
        finc_errorf(err, errlen, "out of memory building the header");
    return s;
}

int finc_st_write(const char *path, const char *metadata_json_object, int n,
                  const finc_st_write_tensor *tensors, char *err, size_t errlen)
{
    if (n < 0)
        return finc_errorf(err, errlen, "negative tensor count");
    for (int i = 0; i < n; i++) {
        const finc_st_write_tensor *t = &tensors[i];
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
            return finc_errorf(err, errlen, "tensor %d: missing or reserved name", i);
        if ((unsigned)t->dtype >= FINC_ST_NDTYPES)
            return finc_errorf(err, errlen, "tensor '%s': invalid dtype %d", t->name, (int)t->dtype);
        if (t->ndim < 0 || t->ndim > FINC_ST_MAX_DIMS || (t->ndim && !t->shape))
            return finc_errorf(err, errlen, "tensor '%s': invalid ndim %d", t->name, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0 || (double)t->shape[d] > JSON_INT_MAX)
                return finc_errorf(err, errlen, "tensor '%s': invalid shape[%d] = %lld", t->name, d,
                            (long long)t->shape[d]);
    }
    const char **names = malloc(((size_t)n + 1) * sizeof *names);
    if (!names)
        return finc_errorf(err, errlen, "out of memory");
    for (int i = 0; i < n; i++)
        names[i] = tensors[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_cstr);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i], names[i - 1]) == 0) {
            finc_errorf(err, errlen, "tensor '%s' given twice", names[i]);
            free(names);
            return -1;
        }
    free(names);

    char *hdr = build_header(metadata_json_object, n, tensors, err, errlen);
    if (!hdr)
        return -1;
    /* Pad with spaces so the data section starts 8-byte aligned, as the
     * reference writer does. */
    size_t hlen = strlen(hdr);
    size_t padded = (hlen + 7) & ~(size_t)7;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(hdr);
        return finc_errorf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(hdr, 1, hlen, fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', fp) != EOF;
    free(hdr);
    for (int i = 0; ok && i < n; i++) {
        const finc_st_write_tensor *t = &tensors[i];
        size_t nb = dtypes[t->dtype].size;
        for (int d = 0; d < t->ndim; d++)
            nb *= (size_t)t->shape[d];
        if (nb && !t->data) {
            fclose(fp);
            unlink(path);
            return finc_errorf(err, errlen, "tensor '%s': no data", t->name);
        }
        ok = nb == 0 || fwrite(t->data, 1, nb, fp) == nb;
    }
    if (fclose(fp) != 0)
        ok = 0;
    if (!ok) {
        unlink(path);
        return finc_errorf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
    }
    return 0;
}
