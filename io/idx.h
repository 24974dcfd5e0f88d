/* IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain: a
 * big-endian header (0, 0, type 0x08 = unsigned byte, ndim; then ndim uint32
 * dims) and the bytes. Used to score and sample against the datasets. */
#ifndef FINC_IDX_H
#define FINC_IDX_H

#include <stddef.h>
#include <stdint.h>

#define FINC_IDX_MAX_NDIM  8
#define FINC_IDX_MAX_BYTES ((size_t)1 << 30)   /* product of the dims */

typedef struct finc_idx {
    int ndim;
    uint32_t dims[FINC_IDX_MAX_NDIM];
    size_t size;     /* the product of dims: bytes in data */
    uint8_t *data;   /* malloc'd, row-major */
} finc_idx;

/* Reads an IDX file (gzip or plain, detected from its bytes). The data must
 * have exactly size bytes; memory grows with the bytes actually read, so a
 * header that lies costs nothing. Return 0, or -1 with a message in err and
 * *out zeroed. Free with finc_idx_free. */
int finc_idx_read(const char *path, finc_idx *out, char *err, size_t errlen);
void finc_idx_free(finc_idx *a);

/* A 3-D IDX file (N, H, W) as images (N, 1, H, W): *pixels is malloc'd.
 * Return 0 or -1 with err set. */
int finc_idx_read_images(const char *path, uint8_t **pixels, int *n, int *h, int *w,
                         char *err, size_t errlen);

/* A 1-D IDX file (N) of labels: *labels is malloc'd. Return 0 or -1 with err set. */
int finc_idx_read_labels(const char *path, uint8_t **labels, int *n, char *err, size_t errlen);

#endif
