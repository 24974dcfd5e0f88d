/* NumPy .npy files of 2-D float arrays (N, D): the latent files of the model
 * format (docs/model.md), and of uint8 image sets (below),
 * one row per image. Writes format 1.0, '<f4', C order, byte for byte what
 * numpy 1.24's np.save writes; reads format 1.0/2.0/3.0 with '<f4' or '<f8'
 * (converted to float32), shape (N, D) or (D,) as (1, D), validating every
 * header field. */
#ifndef FINC_NPY_H
#define FINC_NPY_H

#include <stddef.h>
#include <stdint.h>

#define FINC_NPY_MAX_ELEMS  ((size_t)1 << 28)   /* N * D, checked before allocating */
#define FINC_NPY_MAX_HEADER 65536               /* header length field, any version */

/* Parses a whole .npy file held in memory / named by path. On success *data is
 * a malloc'd (N, D) float32 array (the caller frees it) and *n, *d its shape.
 * Return 0, or -1 with a message in err and *data NULL. '<f8' values outside
 * the float32 range become +-inf. */
int finc_npy_decode_f32(const void *buf, size_t len, float **data, size_t *n, size_t *d,
                        char *err, size_t errlen);
int finc_npy_read_f32(const char *path, float **data, size_t *n, size_t *d,
                      char *err, size_t errlen);

/* Encodes data (N, D) as a .npy file: into a malloc'd buffer *out of *out_len
 * bytes (the caller frees it), or into path. Return 0, or -1 with err set. */
int finc_npy_encode_f32(const float *data, size_t n, size_t d, uint8_t **out, size_t *out_len,
                        char *err, size_t errlen);
int finc_npy_write_f32(const char *path, const float *data, size_t n, size_t d,
                       char *err, size_t errlen);

/* Image sets: uint8 ('|u1') arrays shaped (N, C, H, W), or (N, H, W) read as
 * C = 1, as numpy's np.save writes them. *pixels is malloc'd (N, C, H, W).
 * Return 0, or -1 with err set (naming path for the file reader). */
int finc_npy_decode_images(const void *buf, size_t len, uint8_t **pixels, size_t *n, int *c, int *h, int *w,
                           char *err, size_t errlen);
int finc_npy_read_images(const char *path, uint8_t **pixels, size_t *n, int *c, int *h, int *w, char *err,
                         size_t errlen);

#endif
