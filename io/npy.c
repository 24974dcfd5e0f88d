/* .npy reading and writing; see npy.h. The header is a Python dict literal
 * padded with spaces to a 64-byte boundary; it is parsed with a small lexer
 * that accepts what numpy writes (any key order, either quote, a trailing
 * comma, surrounding whitespace) and nothing that numpy would reject. */
#include "io/npy.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "engine/error.h"

#define MAGIC        "\x93NUMPY"
#define MAGIC_LEN    6
#define ALIGN        64   /* numpy pads the header so the data start here */
#define GROWTH_SPACE 21   /* numpy leaves room for the first axis to grow to 21 digits */
#define CHUNK        4096 /* values converted per step when streaming */

typedef struct npy_info {
    size_t n, d;        /* (N, D); a (D,) file reads as (1, D); images: (N, C*H*W) */
    int elsize;         /* 4: '<f4', 8: '<f8'; 1: '|u1' images */
    int c, h, w;        /* images only */
    size_t data_off;    /* bytes before the data */
} npy_info;

/* ---- values ---------------------------------------------------------------- */

static float f32_from_le(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16
               | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest as IEEE does; values at or past the midpoint between
 * FLT_MAX and 2^128 overflow to infinity (written out so no out-of-range
 * conversion is ever performed). */
static float f32_from_f64_le(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = u << 8 | p[i];
    double v;
    memcpy(&v, &u, sizeof v);
    if (v >= 0x1.ffffffp127)
        return INFINITY;
    if (v <= -0x1.ffffffp127)
        return -INFINITY;
    return (float)v;
}

static void f32_to_le(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    p[0] = (uint8_t)u;
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)(u >> 16);
    p[3] = (uint8_t)(u >> 24);
}

static void convert(float *dst, const uint8_t *src, size_t count, int elsize)
{
    if (elsize == 4)
        for (size_t i = 0; i < count; i++)
            dst[i] = f32_from_le(src + 4 * i);
    else
        for (size_t i = 0; i < count; i++)
            dst[i] = f32_from_f64_le(src + 8 * i);
}

/* ---- header ---------------------------------------------------------------- */

/* Magic, version and header length from the first avail bytes. Sets *hdr_off
 * (where the dict starts) and *hdr_len. */
static int parse_prelude(const uint8_t *p, size_t avail, size_t *hdr_off, size_t *hdr_len,
                         char *err, size_t errlen)
{
    if (avail < MAGIC_LEN || memcmp(p, MAGIC, MAGIC_LEN) != 0) {
        finc_errorf(err, errlen, "not a .npy file (bad magic)");
        return -1;
    }
    if (avail < MAGIC_LEN + 2) {
        finc_errorf(err, errlen, "truncated .npy file: %zu bytes, no version", avail);
        return -1;
    }
    int major = p[6], minor = p[7];
    if (major < 1 || major > 3 || minor != 0) {
        finc_errorf(err, errlen, "unsupported .npy format version %d.%d (1.0, 2.0 and 3.0 are read)",
                major, minor);
        return -1;
    }
    size_t off = major == 1 ? 10 : 12;
    if (avail < off) {
        finc_errorf(err, errlen, "truncated .npy file: %zu bytes, no header length", avail);
        return -1;
    }
    size_t len = (size_t)p[8] | (size_t)p[9] << 8;
    if (major > 1)
        len |= (size_t)p[10] << 16 | (size_t)p[11] << 24;
    if (len > FINC_NPY_MAX_HEADER) {
        finc_errorf(err, errlen, "header length %zu exceeds the limit of %d", len, FINC_NPY_MAX_HEADER);
        return -1;
    }
    *hdr_off = off;
    *hdr_len = len;
    return 0;
}

typedef struct lexer {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
} lexer;

static int lex_fail(lexer *lx, const char *what)
{
    finc_errorf(lx->err, lx->errlen, "malformed .npy header at byte %zu: %s", lx->pos, what);
    return -1;
}

static void skip_ws(lexer *lx)
{
    while (lx->pos < lx->len && (lx->s[lx->pos] == ' ' || lx->s[lx->pos] == '\t'
                                 || lx->s[lx->pos] == '\n' || lx->s[lx->pos] == '\r'))
        lx->pos++;
}

static int peek(lexer *lx)
{
    skip_ws(lx);
    return lx->pos < lx->len ? (unsigned char)lx->s[lx->pos] : -1;
}

static int expect(lexer *lx, char c, const char *what)
{
    if (peek(lx) != (unsigned char)c)
        return lex_fail(lx, what);
    lx->pos++;
    return 0;
}

/* A quoted string without escapes, at most cap - 1 characters. */
static int lex_string(lexer *lx, char *out, size_t cap)
{
    int q = peek(lx);
    if (q != '\'' && q != '"')
        return lex_fail(lx, "expected a quoted string");
    size_t start = ++lx->pos;
    const char *end = memchr(lx->s + start, q, lx->len - start);
    if (end == NULL)
        return lex_fail(lx, "unterminated string");
    size_t n = (size_t)(end - (lx->s + start));
    for (; lx->pos < start + n; lx->pos++) {
        unsigned char c = (unsigned char)lx->s[lx->pos];
        if (c == '\\' || c < 0x20 || c >= 0x7f)
            return lex_fail(lx, "unsupported character in a string");
    }
    if (n >= cap)
        return lex_fail(lx, "string too long");
    memcpy(out, lx->s + start, n);
    out[n] = '\0';
    lx->pos++;
    return 0;
}

static int lex_bool(lexer *lx, int *v)
{
    peek(lx);
    const char *p = lx->s + lx->pos;
    size_t left = lx->len - lx->pos;
    if (left >= 4 && memcmp(p, "True", 4) == 0) {
        *v = 1;
        lx->pos += 4;
    } else if (left >= 5 && memcmp(p, "False", 5) == 0) {
        *v = 0;
        lx->pos += 5;
    } else {
        return lex_fail(lx, "'fortran_order' must be True or False");
    }
    return 0;
}

/* A non-negative integer (Python 2's 'L' suffix allowed, as numpy allows);
 * anything past FINC_NPY_MAX_ELEMS is refused here so products cannot overflow. */
static int lex_dim(lexer *lx, uint64_t *v)
{
    peek(lx);
    size_t start = lx->pos;
    uint64_t x = 0;
    while (lx->pos < lx->len && lx->s[lx->pos] >= '0' && lx->s[lx->pos] <= '9') {
        x = x * 10 + (uint64_t)(lx->s[lx->pos] - '0');
        if (x > FINC_NPY_MAX_ELEMS) {
            finc_errorf(lx->err, lx->errlen, "shape has a dimension over the limit of %zu elements",
                    FINC_NPY_MAX_ELEMS);
            return -1;
        }
        lx->pos++;
    }
    if (lx->pos == start)
        return lex_fail(lx, "expected a non-negative integer in 'shape'");
    if (lx->pos < lx->len && lx->s[lx->pos] == 'L')
        lx->pos++;
    *v = x;
    return 0;
}

#define MAX_NDIM 32   /* numpy's own limit; we count past 2 only to report it */

static int lex_shape(lexer *lx, uint64_t *dims, int *ndim)
{
    if (expect(lx, '(', "'shape' must be a tuple") != 0)
        return -1;
    int n = 0, trailing_comma = 0;
    while (peek(lx) != ')') {
        if (n == MAX_NDIM)
            return lex_fail(lx, "too many dimensions in 'shape'");
        if (lex_dim(lx, &dims[n++]) != 0)
            return -1;
        trailing_comma = 0;
        if (peek(lx) == ',') {
            lx->pos++;
            trailing_comma = 1;
        } else if (peek(lx) != ')') {
            return lex_fail(lx, "expected ',' or ')' in 'shape'");
        }
    }
    lx->pos++;
    if (n == 1 && !trailing_comma)
        return lex_fail(lx, "'shape' (D) is not a tuple; numpy writes (D,)");
    *ndim = n;
    return 0;
}

/* images: uint8 (N, C, H, W) or (N, H, W) image sets instead of float (N, D) arrays. */
static int parse_dict(const char *s, size_t len, npy_info *info, int images, char *err, size_t errlen)
{
    lexer lx = {s, len, 0, err, errlen};
    char descr[16] = "";
    int fortran = 0, ndim = 0;
    uint64_t dims[MAX_NDIM];
    int have_descr = 0, have_fortran = 0, have_shape = 0;

    if (expect(&lx, '{', "expected '{'") != 0)
        return -1;
    while (peek(&lx) != '}') {
        char key[32];
        if (lex_string(&lx, key, sizeof key) != 0)
            return -1;
        if (expect(&lx, ':', "expected ':' after a key") != 0)
            return -1;
        int *seen;
        int rc;
        if (strcmp(key, "descr") == 0) {
            seen = &have_descr;
            rc = lex_string(&lx, descr, sizeof descr);
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &have_fortran;
            rc = lex_bool(&lx, &fortran);
        } else if (strcmp(key, "shape") == 0) {
            seen = &have_shape;
            rc = lex_shape(&lx, dims, &ndim);
        } else {
            finc_errorf(err, errlen, "unexpected key '%s' in the .npy header", key);
            return -1;
        }
        if (rc != 0)
            return -1;
        if (*seen) {
            finc_errorf(err, errlen, "duplicate key '%s' in the .npy header", key);
            return -1;
        }
        *seen = 1;
        int c = peek(&lx);
        if (c == ',')
            lx.pos++;
        else if (c != '}')
            return lex_fail(&lx, "expected ',' or '}'");
    }
    lx.pos++;
    if (peek(&lx) != -1)
        return lex_fail(&lx, "unexpected characters after the header dict");
    if (!have_descr || !have_fortran || !have_shape) {
        finc_errorf(err, errlen, "the .npy header lacks '%s'",
                !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
        return -1;
    }

    if (images) {
        if (strcmp(descr, "|u1") != 0 && strcmp(descr, "<u1") != 0 && strcmp(descr, ">u1") != 0) {
            finc_errorf(err, errlen, "dtype '%s': image sets are uint8 ('|u1'); convert with .astype(np.uint8)",
                        descr);
            return -1;
        }
        if (fortran) {
            finc_errorf(err, errlen, "Fortran-order arrays are not supported (save a C-order array)");
            return -1;
        }
        if (ndim != 3 && ndim != 4) {
            finc_errorf(err, errlen, "shape has %d dimensions; image sets are (N, C, H, W) or (N, H, W)", ndim);
            return -1;
        }
        const uint64_t c = ndim == 4 ? dims[1] : 1, h = dims[ndim - 2], w = dims[ndim - 1];
        if (dims[0] == 0 || c == 0 || h == 0 || w == 0 || (uint64_t)dims[0] * c * h * w > FINC_NPY_MAX_ELEMS) {
            finc_errorf(err, errlen, "shape (%llu, %llu, %llu, %llu) is empty or over the limit of %zu elements",
                        (unsigned long long)dims[0], (unsigned long long)c, (unsigned long long)h,
                        (unsigned long long)w, FINC_NPY_MAX_ELEMS);
            return -1;
        }
        info->elsize = 1;
        info->n = (size_t)dims[0];
        info->c = (int)c, info->h = (int)h, info->w = (int)w;
        info->d = (size_t)(c * h * w);
        return 0;
    }
    if (strcmp(descr, "<f4") == 0) {
        info->elsize = 4;
    } else if (strcmp(descr, "<f8") == 0) {
        info->elsize = 8;
    } else {
        finc_errorf(err, errlen, "dtype '%s' is not supported (expected '<f4' or '<f8'%s)", descr,
                descr[0] == '>' ? "; this one is big-endian" : "");
        return -1;
    }
    if (fortran) {
        finc_errorf(err, errlen, "Fortran-order arrays are not supported (save a C-order array)");
        return -1;
    }
    if (ndim == 1) {
        info->n = 1;
        info->d = (size_t)dims[0];
    } else if (ndim == 2) {
        info->n = (size_t)dims[0];
        info->d = (size_t)dims[1];
    } else {
        finc_errorf(err, errlen, "shape has %d dimensions; expected (N, D) or (D,)", ndim);
        return -1;
    }
    if (info->n == 0 || info->d == 0) {
        finc_errorf(err, errlen, "shape (%zu, %zu) has no elements", info->n, info->d);
        return -1;
    }
    if ((uint64_t)info->n * info->d > FINC_NPY_MAX_ELEMS) {
        finc_errorf(err, errlen, "shape (%zu, %zu) exceeds the limit of %zu elements", info->n,
                info->d, FINC_NPY_MAX_ELEMS);
        return -1;
    }
    return 0;
}

static int data_size_err(const npy_info *info, size_t have, char *err, size_t errlen)
{
    size_t want = info->n * info->d * (size_t)info->elsize;
    if (have == want)
        return 0;
    finc_errorf(err, errlen, "%s: %zu data bytes, shape (%zu, %zu) of '%s' needs %zu",
            have < want ? "truncated .npy file" : "trailing bytes in .npy file", have, info->n,
            info->d, info->elsize == 1 ? "|u1" : info->elsize == 4 ? "<f4" : "<f8", want);
    return -1;
}

/* ---- read ------------------------------------------------------------------ */

/* A whole file in memory: its header, and data of exactly the size it declares. */
static int parse_buffer(const uint8_t *p, size_t len, int images, npy_info *info, char *err, size_t errlen)
{
    if (p == NULL)
        len = 0;
    size_t off, hlen;
    if (parse_prelude(p, len, &off, &hlen, err, errlen) != 0)
        return -1;
    if (hlen > len - off) {
        finc_errorf(err, errlen, "truncated .npy file: header of %zu bytes, %zu present", hlen, len - off);
        return -1;
    }
    if (parse_dict((const char *)p + off, hlen, info, images, err, errlen) != 0)
        return -1;
    info->data_off = off + hlen;
    return data_size_err(info, len - info->data_off, err, errlen);
}

int finc_npy_decode_f32(const void *buf, size_t len, float **data, size_t *n, size_t *d,
                        char *err, size_t errlen)
{
    if (data == NULL || n == NULL || d == NULL) {
        finc_errorf(err, errlen, "no output array");
        return -1;
    }
    *data = NULL;
    *n = *d = 0;
    const uint8_t *p = buf;
    npy_info info;
    if (parse_buffer(p, len, 0, &info, err, errlen) != 0)
        return -1;
    float *out = malloc(info.n * info.d * sizeof *out);
    if (out == NULL) {
        finc_errorf(err, errlen, "out of memory for a (%zu, %zu) array", info.n, info.d);
        return -1;
    }
    convert(out, p + info.data_off, info.n * info.d, info.elsize);
    *data = out;
    *n = info.n;
    *d = info.d;
    return 0;
}

static int read_file(FILE *fp, float **data, npy_info *info, char *err, size_t errlen)
{
    uint8_t pre[12];
    size_t got = fread(pre, 1, sizeof pre, fp);
    size_t off, hlen;
    if (parse_prelude(pre, got, &off, &hlen, err, errlen) != 0)
        return -1;
    char *hdr = malloc(hlen ? hlen : 1);
    if (hdr == NULL) {
        finc_errorf(err, errlen, "out of memory for the header");
        return -1;
    }
    /* pre holds the first got - off header bytes already */
    size_t have = got - off < hlen ? got - off : hlen;
    memcpy(hdr, pre + off, have);
    size_t more = hlen - have;
    if (more > 0 && fread(hdr + have, 1, more, fp) != more) {
        finc_errorf(err, errlen, "truncated .npy file: header of %zu bytes cut short", hlen);
        free(hdr);
        return -1;
    }
    int rc = parse_dict(hdr, hlen, info, 0, err, errlen);
    free(hdr);
    if (rc != 0)
        return -1;
    info->data_off = off + hlen;
    size_t count = info->n * info->d;
    size_t want = count * (size_t)info->elsize;

    /* A regular file's size is checked before the allocation. */
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && S_ISREG(st.st_mode)) {
        size_t size = (size_t)st.st_size;
        if (data_size_err(info, size < info->data_off ? 0 : size - info->data_off, err,
                          errlen) != 0)
            return -1;
    }
    /* got may have read past the header into the data */
    size_t early = got > info->data_off ? got - info->data_off : 0;
    float *out = malloc(count * sizeof *out);
    uint8_t *tmp = malloc(CHUNK * (size_t)info->elsize);
    if (out == NULL || tmp == NULL) {
        free(out);
        free(tmp);
        finc_errorf(err, errlen, "out of memory for a (%zu, %zu) array", info->n, info->d);
        return -1;
    }
    size_t done = 0;   /* values */
    while (done < count) {
        size_t k = count - done < CHUNK ? count - done : CHUNK;
        size_t bytes = k * (size_t)info->elsize, pre_bytes = 0;
        if (early > 0) {
            pre_bytes = early < bytes ? early : bytes;
            memcpy(tmp, pre + (got - early), pre_bytes);
            early -= pre_bytes;
        }
        size_t r = fread(tmp + pre_bytes, 1, bytes - pre_bytes, fp);
        if (r != bytes - pre_bytes) {
            if (ferror(fp))
                finc_errorf(err, errlen, "read error: %s", strerror(errno));
            else
                data_size_err(info, done * (size_t)info->elsize + pre_bytes + r, err, errlen);
            free(out);
            free(tmp);
            return -1;
        }
        convert(out + done, tmp, k, info->elsize);
        done += k;
    }
    free(tmp);
    if (fgetc(fp) != EOF || early > 0) {
        finc_errorf(err, errlen, "trailing bytes in .npy file after %zu data bytes", want);
        free(out);
        return -1;
    }
    *data = out;
    return 0;
}

int finc_npy_read_f32(const char *path, float **data, size_t *n, size_t *d,
                      char *err, size_t errlen)
{
    if (data == NULL || n == NULL || d == NULL) {
        finc_errorf(err, errlen, "no output array");
        return -1;
    }
    *data = NULL;
    *n = *d = 0;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        finc_errorf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    char msg[256];
    npy_info info;
    int rc = read_file(fp, data, &info, msg, sizeof msg);
    fclose(fp);
    if (rc != 0) {
        finc_errorf(err, errlen, "%s: %s", path, msg);
        return -1;
    }
    *n = info.n;
    *d = info.d;
    return 0;
}

int finc_npy_decode_images(const void *buf, size_t len, uint8_t **pixels, size_t *n, int *c, int *h, int *w,
                           char *err, size_t errlen)
{
    *pixels = NULL;
    *n = 0;
    *c = *h = *w = 0;
    const uint8_t *p = buf;
    npy_info info;
    if (parse_buffer(p, len, 1, &info, err, errlen) != 0)
        return -1;
    uint8_t *out = malloc(info.n * info.d);
    if (out == NULL) {
        finc_errorf(err, errlen, "out of memory for %zu images", info.n);
        return -1;
    }
    memcpy(out, p + info.data_off, info.n * info.d);
    *pixels = out;
    *n = info.n;
    *c = info.c, *h = info.h, *w = info.w;
    return 0;
}

int finc_npy_read_images(const char *path, uint8_t **pixels, size_t *n, int *c, int *h, int *w, char *err,
                         size_t errlen)
{
    *pixels = NULL;
    FILE *fp = fopen(path, "rb");
    struct stat st;
    if (fp == NULL || fstat(fileno(fp), &st) != 0) {
        finc_errorf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        if (fp) fclose(fp);
        return -1;
    }
    /* the largest image set plus the largest header */
    const size_t cap = FINC_NPY_MAX_ELEMS + FINC_NPY_MAX_HEADER + 12;
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > cap) {
        finc_errorf(err, errlen, "%s: %s", path, S_ISREG(st.st_mode) ? "over the size limit" : "not a regular file");
        fclose(fp);
        return -1;
    }
    uint8_t *buf = malloc((size_t)st.st_size ? (size_t)st.st_size : 1);
    const size_t got = buf ? fread(buf, 1, (size_t)st.st_size, fp) : 0;
    fclose(fp);
    char msg[256];
    int rc = buf && got == (size_t)st.st_size
                 ? finc_npy_decode_images(buf, got, pixels, n, c, h, w, msg, sizeof msg)
                 : (snprintf(msg, sizeof msg, "read error"), -1);
    free(buf);
    if (rc != 0)
        finc_errorf(err, errlen, "%s: %s", path, msg);
    return rc;
}

/* ---- write ----------------------------------------------------------------- */

/* The header numpy 1.24 writes for a C-order '<f4' (n, d) array. Returns its
 * length (a multiple of ALIGN, at most sizeof hdr). */
static size_t make_header(char *hdr, size_t cap, size_t n, size_t d)
{
    int len = snprintf(hdr + 10, cap - 10,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", n, d);
    size_t pos = 10 + (size_t)len;
    char digits[32];
    int nd = snprintf(digits, sizeof digits, "%zu", n);
    for (int i = nd; i < GROWTH_SPACE; i++)
        hdr[pos++] = ' ';
    /* numpy pads a full ALIGN bytes when the newline alone would align it */
    size_t pad = ALIGN - (pos + 1) % ALIGN;
    memset(hdr + pos, ' ', pad);
    pos += pad;
    hdr[pos++] = '\n';
    size_t hlen = pos - 10;
    memcpy(hdr, MAGIC, MAGIC_LEN);
    hdr[6] = 1;
    hdr[7] = 0;
    hdr[8] = (char)(hlen & 0xff);
    hdr[9] = (char)(hlen >> 8);
    return pos;
}

#define HEADER_CAP 256   /* 10 + dict (< 110) + growth (21) + pad (<= 64) + '\n' */

static int check_write(const float *data, size_t n, size_t d, char *err, size_t errlen)
{
    if (data == NULL) {
        finc_errorf(err, errlen, "no data to write");
        return -1;
    }
    if (n == 0 || d == 0 || n > FINC_NPY_MAX_ELEMS || d > FINC_NPY_MAX_ELEMS
        || (uint64_t)n * d > FINC_NPY_MAX_ELEMS) {
        finc_errorf(err, errlen, "cannot write shape (%zu, %zu): 1 to %zu elements", n, d,
                FINC_NPY_MAX_ELEMS);
        return -1;
    }
    return 0;
}

int finc_npy_encode_f32(const float *data, size_t n, size_t d, uint8_t **out, size_t *out_len,
                        char *err, size_t errlen)
{
    if (out == NULL || out_len == NULL) {
        finc_errorf(err, errlen, "no output buffer");
        return -1;
    }
    *out = NULL;
    *out_len = 0;
    if (check_write(data, n, d, err, errlen) != 0)
        return -1;
    char hdr[HEADER_CAP];
    size_t hlen = make_header(hdr, sizeof hdr, n, d);
    size_t count = n * d, total = hlen + 4 * count;
    uint8_t *buf = malloc(total);
    if (buf == NULL) {
        finc_errorf(err, errlen, "out of memory for a %zu-byte .npy file", total);
        return -1;
    }
    memcpy(buf, hdr, hlen);
    for (size_t i = 0; i < count; i++)
        f32_to_le(buf + hlen + 4 * i, data[i]);
    *out = buf;
    *out_len = total;
    return 0;
}

int finc_npy_write_f32(const char *path, const float *data, size_t n, size_t d,
                       char *err, size_t errlen)
{
    if (check_write(data, n, d, err, errlen) != 0)
        return -1;
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) {
        finc_errorf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    char hdr[HEADER_CAP];
    size_t hlen = make_header(hdr, sizeof hdr, n, d);
    int ok = fwrite(hdr, 1, hlen, fp) == hlen;
    uint8_t tmp[4 * CHUNK];
    size_t count = n * d;
    for (size_t done = 0; ok && done < count;) {
        size_t k = count - done < CHUNK ? count - done : CHUNK;
        for (size_t i = 0; i < k; i++)
            f32_to_le(tmp + 4 * i, data[done + i]);
        ok = fwrite(tmp, 4, k, fp) == k;
        done += k;
    }
    int saved = ok ? 0 : errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (!ok) {
        finc_errorf(err, errlen, "cannot write %s: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}
