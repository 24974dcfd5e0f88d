/* PNG in and out for the CLI and the HTTP server: decode any PNG (untrusted bytes)
 * to planar (C, H, W) 8-bit pixels with C in {1, 3}, encode such pixels back to
 * PNG, and tile many images into one grid image. Built on libpng's classic API.
 *
 * Conversions on decode, applied to the raw sample values (gAMA, cHRM, sRGB and
 * iCCP chunks are ignored, so pixels reach the model exactly as stored):
 *   palette        expanded to RGB (and tRNS to alpha)
 *   1/2/4-bit gray scaled to 8 bits (v * 255 / (2^bits - 1))
 *   16-bit         scaled to 8 bits with rounding: v8 = round(v16 * 255 / 65535)
 *   alpha          composited onto black: c' = (c * a + 127) / 255 (integer)
 *   RGB -> gray    ITU-R BT.601 luma, Pillow's convert("L") integer formula:
 *                  Y = (19595 R + 38470 G + 7471 B + 32768) >> 16
 *   gray -> RGB    the gray value replicated into all three channels
 * Compositing comes first, then the gray/RGB conversion. */
#ifndef FINC_PNG_H
#define FINC_PNG_H

#include <stddef.h>
#include <stdint.h>

/* Caps checked from the PNG header before any pixel memory is allocated. */
#define FINC_PNG_MAX_DIM    16384              /* width and height */
#define FINC_PNG_MAX_PIXELS (1u << 25)         /* width * height */

typedef struct finc_png_image {
    int width, height;   /* the image's own size, as stored in the file */
    int channels;        /* the channel count asked for: 1 or 3 */
    uint8_t *pixels;     /* (channels, height, width), malloc'd */
} finc_png_image;

/* Decodes a PNG held in memory / in a file into out (channels = 1 or 3).
 * Return 0, or -1 with a message in err and *out zeroed. Free with
 * finc_png_image_free. */
int finc_png_decode(const void *buf, size_t len, int channels, finc_png_image *out,
                    char *err, size_t errlen);
int finc_png_read_file(const char *path, int channels, finc_png_image *out,
                       char *err, size_t errlen);
void finc_png_image_free(finc_png_image *img);

/* Decodes straight into the caller's dst (channels, height, width) when the
 * PNG's size is exactly width x height; otherwise fails with the size message
 * below. Nothing is allocated for the output. Return 0 or -1 with err set. */
int finc_png_decode_into(const void *buf, size_t len, int channels, int height, int width,
                         uint8_t *dst, char *err, size_t errlen);

/* Return 0 when img is want_h x want_w; otherwise -1 and err reads
 * "image is 30x28, model expects 28x28 (1 channel)" (sizes are width x height). */
int finc_png_check_size(const finc_png_image *img, int want_h, int want_w,
                        char *err, size_t errlen);

/* Encodes pixels (C, H, W), C in {1, 3}, as an 8-bit gray or RGB PNG.
 * finc_png_encode sets *out to a malloc'd buffer of *out_len bytes (the caller
 * frees it). Return 0, or -1 with err set. */
int finc_png_encode(const uint8_t *pixels, int C, int H, int W, uint8_t **out,
                    size_t *out_len, char *err, size_t errlen);
int finc_png_write_file(const char *path, const uint8_t *pixels, int C, int H, int W,
                        char *err, size_t errlen);

/* Tiles n images (n, C, H, W) into one planar grid (C, Hg, Wg), in row-major
 * order, cols per row (cols <= 0: ceil(sqrt(n)); more than n is clamped to n).
 * pad pixels of pad_value surround every tile and lie between tiles:
 *   rows = ceil(n / cols), Hg = rows * (H + pad) + pad, Wg = cols * (W + pad) + pad,
 *   image i has its top-left at (pad + (i / cols) * (H + pad), pad + (i % cols) * (W + pad)).
 * Cells past the n-th are pad_value. pad in 0..16. *out is malloc'd.
 * Return 0, or -1 with err set. */
int finc_png_grid(const uint8_t *images, int n, int C, int H, int W, int cols, int pad,
                  uint8_t pad_value, uint8_t **out, int *out_h, int *out_w,
                  char *err, size_t errlen);

#endif
