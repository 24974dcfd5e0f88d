/* IDX reading through zlib's gz* calls, which read plain files unchanged. */
#include "io/idx.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include "engine/error.h"

#define FIRST_ALLOC ((size_t)1 << 20)
#define READ_CHUNK  ((size_t)1 << 24)   /* gzread takes an unsigned, returns an int */

/* Reads up to n bytes, *got of them read. Returns 0 (a short count is the end
 * of the file), or -1 when zlib reports an error, its text in msg; zlib flags
 * a gzip stream that ends early, so the error state is checked at the end too. */
static int read_some(gzFile gz, uint8_t *p, size_t n, size_t *got, char *msg, size_t msglen)
{
    *got = 0;
    while (*got < n) {
        size_t k = n - *got < READ_CHUNK ? n - *got : READ_CHUNK;
        int r = gzread(gz, p + *got, (unsigned)k);
        if (r <= 0) {
            int errnum = Z_OK;
            const char *text = gzerror(gz, &errnum);
            if (r < 0 || errnum != Z_OK) {
                if (errnum == Z_BUF_ERROR) {
                    snprintf(msg, msglen, "gzip stream ends early");
                } else if (errnum == Z_ERRNO) {
                    snprintf(msg, msglen, "read error: %s", strerror(errno));
                } else {
                    /* zlib prefixes its text with the name it was opened by, "<fd:N>: " */
                    const char *sep = text[0] == '<' ? strstr(text, ": ") : NULL;
                    snprintf(msg, msglen, "gzip: %s", sep != NULL ? sep + 2 : text);
                }
                return -1;
            }
            break;
        }
        *got += (size_t)r;
    }
    return 0;
}

static const char *type_name(int t)
{
    switch (t) {
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return "unknown";
    }
}

static int read_gz(gzFile gz, finc_idx *a, char *err, size_t errlen)
{
    char zmsg[160] = "";
    uint8_t head[4];
    size_t got;
    if (read_some(gz, head, 4, &got, zmsg, sizeof zmsg) != 0) {
        finc_errorf(err, errlen, "truncated or corrupt IDX file (%s)", zmsg);
        return -1;
    }
    if (got < 4) {
        finc_errorf(err, errlen, "not an IDX file: %zu bytes, too short for the magic", got);
        return -1;
    }
    if (head[0] != 0 || head[1] != 0) {
        finc_errorf(err, errlen, "not an IDX file (bad magic %02x %02x %02x %02x)", head[0], head[1],
                head[2], head[3]);
        return -1;
    }
    if (head[2] != 0x08) {
        finc_errorf(err, errlen,
                "IDX element type 0x%02X (%s) is not supported; only 0x08 (unsigned byte)",
                head[2], type_name(head[2]));
        return -1;
    }
    int ndim = head[3];
    if (ndim < 1 || ndim > FINC_IDX_MAX_NDIM) {
        finc_errorf(err, errlen, "IDX file has %d dimensions (1 to %d are read)", ndim,
                FINC_IDX_MAX_NDIM);
        return -1;
    }
    uint8_t raw[4 * FINC_IDX_MAX_NDIM];
    if (read_some(gz, raw, 4 * (size_t)ndim, &got, zmsg, sizeof zmsg) != 0) {
        finc_errorf(err, errlen, "truncated or corrupt IDX file (%s)", zmsg);
        return -1;
    }
    if (got < 4 * (size_t)ndim) {
        finc_errorf(err, errlen, "truncated IDX file: header cut short in its %d dimensions", ndim);
        return -1;
    }
    uint64_t size = 1;
    for (int i = 0; i < ndim; i++) {
        const uint8_t *p = raw + 4 * i;
        a->dims[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (a->dims[i] == 0) {
            finc_errorf(err, errlen, "IDX dimension %d is 0 (an empty array)", i);
            return -1;
        }
        size *= a->dims[i];   /* each factor < 2^32 and size <= 2^30 before it: no overflow */
        if (size > FINC_IDX_MAX_BYTES) {
            finc_errorf(err, errlen, "IDX array exceeds the limit of %zu bytes", FINC_IDX_MAX_BYTES);
            return -1;
        }
    }
    a->ndim = ndim;
    a->size = (size_t)size;

    size_t cap = a->size < FIRST_ALLOC ? a->size : FIRST_ALLOC, have = 0;
    uint8_t *buf = NULL;
    for (;;) {
        uint8_t *p = realloc(buf, cap);
        if (p == NULL) {
            free(buf);
            finc_errorf(err, errlen, "out of memory for an IDX array of %zu bytes", a->size);
            return -1;
        }
        buf = p;
        int rc = read_some(gz, buf + have, cap - have, &got, zmsg, sizeof zmsg);
        have += got;
        if (rc != 0 || have < cap) {
            if (rc != 0)
                finc_errorf(err, errlen,
                        "truncated or corrupt IDX file after %zu of %zu data bytes (%s)", have,
                        a->size, zmsg);
            else
                finc_errorf(err, errlen, "truncated IDX file: %zu of %zu data bytes", have, a->size);
            free(buf);
            return -1;
        }
        if (have == a->size)
            break;
        cap = cap > a->size / 2 ? a->size : 2 * cap;
    }
    /* One byte more must be the end; for gzip this also checks the CRC. */
    uint8_t extra;
    int rc = read_some(gz, &extra, 1, &got, zmsg, sizeof zmsg);
    if (rc != 0 || got != 0) {
        if (rc != 0)
            finc_errorf(err, errlen, "truncated or corrupt IDX file (%s)", zmsg);
        else
            finc_errorf(err, errlen, "trailing bytes in IDX file after %zu data bytes", a->size);
        free(buf);
        return -1;
    }
    a->data = buf;
    return 0;
}

int finc_idx_read(const char *path, finc_idx *out, char *err, size_t errlen)
{
    if (out == NULL) {
        finc_errorf(err, errlen, "no output array");
        return -1;
    }
    *out = (finc_idx){0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        finc_errorf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    gzFile gz = gzdopen(fd, "rb");
    if (gz == NULL) {
        close(fd);
        finc_errorf(err, errlen, "%s: out of memory opening the file", path);
        return -1;
    }
    gzbuffer(gz, 1u << 17);
    char msg[256];
    int rc = read_gz(gz, out, msg, sizeof msg);
    gzclose(gz);
    if (rc != 0) {
        *out = (finc_idx){0};
        finc_errorf(err, errlen, "%s: %s", path, msg);
    }
    return rc;
}

void finc_idx_free(finc_idx *a)
{
    if (a == NULL)
        return;
    free(a->data);
    *a = (finc_idx){0};
}

static int read_ndim(const char *path, int ndim, const char *what, finc_idx *a,
                     char *err, size_t errlen)
{
    if (finc_idx_read(path, a, err, errlen) != 0)
        return -1;
    if (a->ndim != ndim) {
        finc_errorf(err, errlen, "%s: IDX file has %d dimensions; %s need %d", path, a->ndim, what,
                ndim);
        finc_idx_free(a);
        return -1;
    }
    for (int i = 0; i < ndim; i++) {
        if (a->dims[i] > INT_MAX) {
            finc_errorf(err, errlen, "%s: IDX dimension %d is too large", path, i);
            finc_idx_free(a);
            return -1;
        }
    }
    return 0;
}

int finc_idx_read_images(const char *path, uint8_t **pixels, int *n, int *h, int *w,
                         char *err, size_t errlen)
{
    *pixels = NULL;
    *n = *h = *w = 0;
    finc_idx a;
    if (read_ndim(path, 3, "images (N, H, W)", &a, err, errlen) != 0)
        return -1;
    /* (N, H, W) bytes are already (N, 1, H, W) */
    *pixels = a.data;
    *n = (int)a.dims[0];
    *h = (int)a.dims[1];
    *w = (int)a.dims[2];
    return 0;
}

int finc_idx_read_labels(const char *path, uint8_t **labels, int *n, char *err, size_t errlen)
{
    *labels = NULL;
    *n = 0;
    finc_idx a;
    if (read_ndim(path, 1, "labels (N)", &a, err, errlen) != 0)
        return -1;
    *labels = a.data;
    *n = (int)a.dims[0];
    return 0;
}
