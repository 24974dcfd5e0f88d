/* PNG decode/encode with libpng's classic API; see png.h for the conversions.
 * Not the simplified png_image_* API: it converts RGB to gray in linear light
 * and treats 16-bit files as linear, while the model wants stored values.
 *
 * libpng reports errors by longjmp. Each setjmp lives in a small *_run function
 * whose locals are never read after a jump; everything that must survive one
 * (buffers to free, the error text) lives in a struct in the caller's frame. */
#include "io/png.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"

#define PNG_SIG_LEN 8
#define MSG_LEN 256   /* decoder/encoder msg, written by on_*_error */
/* From the first IDAT on, a PNG may hold its rows' filtered bytes, 1/64 more
 * (deflate's worst case for stored data is 5 bytes per 64 KiB, chunk headers
 * 12 bytes per IDAT chunk) and this much besides: the zlib framing, IEND and
 * small chunks after the image data. */
#define IDAT_SLACK (16 * 1024)

/* libpng error callbacks: keep the first message, unwind to the setjmp. */
static void on_read_error(png_structp png, png_const_charp msg)
{
    char *buf = png_get_error_ptr(png);
    if (buf != NULL && buf[0] == '\0')
        snprintf(buf, MSG_LEN, "invalid PNG: %s", msg);
    png_longjmp(png, 1);
}

static void on_write_error(png_structp png, png_const_charp msg)
{
    char *buf = png_get_error_ptr(png);
    if (buf != NULL && buf[0] == '\0')
        snprintf(buf, MSG_LEN, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* ---- decode ---------------------------------------------------------------- */

typedef struct decoder {
    char msg[MSG_LEN];    /* the first error; libpng's error ptr */
    png_structp png;
    png_infop info;
    const uint8_t *buf;   /* memory source ... */
    size_t len, pos;
    FILE *fp;             /* ... or file source */
    long served, limit;   /* bytes read from the source, and the most it may give (< 0: no limit yet) */
    int channels;         /* 1 or 3 */
    int want_h, want_w;   /* > 0: the size dst must have */
    uint8_t *dst;         /* caller's (C, H, W) buffer, or NULL to allocate */
    uint8_t *owned;       /* allocated output, handed to the caller on success */
    uint8_t *rows;        /* decoded rows, interleaved, 8-bit */
    int width, height;
} decoder;

static void read_source(png_structp png, png_bytep out, size_t n)
{
    decoder *d = (decoder *)png_get_io_ptr(png);
    if (d->limit >= 0 && n > (size_t)(d->limit - d->served)) {
        char msg[160];
        snprintf(msg, sizeof msg, "more compressed image data than %dx%d pixels can need (over %ld bytes)",
                 d->width, d->height, d->limit);
        png_error(png, msg);
    }
    d->served += (long)n;
    if (d->fp != NULL) {
        if (fread(out, 1, n, d->fp) != n)
            png_error(png, ferror(d->fp) ? "read error" : "unexpected end of file (truncated)");
        return;
    }
    if (n > d->len - d->pos)
        png_error(png, "unexpected end of data (truncated)");
    memcpy(out, d->buf + d->pos, n);
    d->pos += n;
}

static inline uint8_t over_black(unsigned c, unsigned a)
{
    return (uint8_t)((c * a + 127) / 255);
}

static inline uint8_t luma(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((19595u * r + 38470u * g + 7471u * b + 32768u) >> 16);
}

/* One decoded row (nch interleaved 8-bit samples: G, GA, RGB or RGBA) into
 * row y of the planar output (C, H, W). */
static void convert_row(const uint8_t *src, int nch, int w, int C, uint8_t *dst,
                        size_t plane, size_t y_off)
{
    uint8_t *p0 = dst + y_off;
    for (int x = 0; x < w; x++, src += nch) {
        unsigned r, g, b;
        if (nch <= 2) {
            r = g = b = nch == 2 ? over_black(src[0], src[1]) : src[0];
        } else if (nch == 4) {
            r = over_black(src[0], src[3]);
            g = over_black(src[1], src[3]);
            b = over_black(src[2], src[3]);
        } else {
            r = src[0];
            g = src[1];
            b = src[2];
        }
        if (C == 1) {
            p0[x] = nch <= 2 ? (uint8_t)r : luma(r, g, b);
        } else {
            p0[x] = (uint8_t)r;
            p0[plane + x] = (uint8_t)g;
            p0[2 * plane + x] = (uint8_t)b;
        }
    }
}

/* Everything after the signature. Returns 0, or -1 with d->msg set. */
static int decode_run(decoder *d)
{
    if (setjmp(png_jmpbuf(d->png)))
        return -1;
    png_structp png = d->png;
    png_infop info = d->info;

    png_set_read_fn(png, d, read_source);
    png_set_sig_bytes(png, PNG_SIG_LEN);
#ifdef FINC_FUZZING
    /* Mutated bytes would fail almost every chunk CRC before reaching the
     * decoder that the fuzz target is there to exercise. */
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
#endif
    png_set_chunk_malloc_max(png, 1u << 22);
    /* Colour management (gAMA, sRGB, iCCP, ...), text and every other
     * ancillary chunk but tRNS is skipped: the model wants stored values. */
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);

    /* Our size caps are checked right after the header, before libpng sizes
     * any row buffer; png_set_user_limits would say only "Invalid IHDR data". */
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (w == 0 || h == 0 || w > FINC_PNG_MAX_DIM || h > FINC_PNG_MAX_DIM
        || (uint64_t)w * h > FINC_PNG_MAX_PIXELS) {
        snprintf(d->msg, sizeof d->msg,
                 "PNG too large: %lux%lu (limit %d per side, %u pixels)",
                 (unsigned long)w, (unsigned long)h, FINC_PNG_MAX_DIM, FINC_PNG_MAX_PIXELS);
        return -1;
    }
    d->width = (int)w;
    d->height = (int)h;
    /* libpng inflates every IDAT byte there is, also past the last row (to
     * find the stream's end): the image data it may read is capped by what
     * the rows can need, so that a small file cannot make it inflate
     * gigabytes of zeros. png_read_info stopped at the first IDAT. */
    const double rows = (double)h * (1.0 + (double)png_get_rowbytes(png, info)) + (interlace ? 7.0 * h : 0.0);
    d->limit = d->served + (long)(rows + rows / 64 + IDAT_SLACK);
    if (d->want_h > 0 && (d->height != d->want_h || d->width != d->want_w)) {
        snprintf(d->msg, sizeof d->msg, "image is %dx%d, model expects %dx%d (%d channel%s)",
                 d->width, d->height, d->want_w, d->want_h, d->channels,
                 d->channels == 1 ? "" : "s");
        return -1;
    }

    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    if (depth == 16)
        png_set_scale_16(png);
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int nch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (png_get_bit_depth(png, info) != 8 || nch < 1 || nch > 4 || rowbytes != (size_t)nch * w) {
        snprintf(d->msg, sizeof d->msg, "unsupported PNG layout (%d channels, %d bits)",
                 nch, png_get_bit_depth(png, info));
        return -1;
    }

    size_t plane = (size_t)w * h;
    uint8_t *out = d->dst;
    if (out == NULL) {
        out = d->owned = malloc(plane * (size_t)d->channels);
        if (out == NULL) {
            snprintf(d->msg, sizeof d->msg, "out of memory for a %lux%lu image",
                     (unsigned long)w, (unsigned long)h);
            return -1;
        }
    }
    /* Interlaced images need every row present across the passes; otherwise
     * one row at a time suffices. */
    size_t nrows = passes > 1 ? h : 1;
    d->rows = malloc(rowbytes * nrows);
    if (d->rows == NULL) {
        snprintf(d->msg, sizeof d->msg, "out of memory for PNG rows");
        return -1;
    }
    if (passes > 1) {
        for (int p = 0; p < passes; p++)
            for (png_uint_32 y = 0; y < h; y++)
                png_read_row(png, d->rows + y * rowbytes, NULL);
        for (png_uint_32 y = 0; y < h; y++)
            convert_row(d->rows + y * rowbytes, nch, (int)w, d->channels, out, plane,
                        (size_t)y * w);
    } else {
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(png, d->rows, NULL);
            convert_row(d->rows, nch, (int)w, d->channels, out, plane, (size_t)y * w);
        }
    }
    png_read_end(png, NULL);
    return 0;
}

/* Signature already consumed from d's source. */
static int decode_common(decoder *d, char *err, size_t errlen)
{
    d->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, d->msg, on_read_error, on_png_warning);
    if (d->png != NULL)
        d->info = png_create_info_struct(d->png);
    int rc = -1;
    if (d->png == NULL || d->info == NULL)
        snprintf(d->msg, sizeof d->msg, "out of memory creating the PNG decoder");
    else
        rc = decode_run(d);
    png_destroy_read_struct(&d->png, &d->info, NULL);
    free(d->rows);
    d->rows = NULL;
    if (rc != 0) {
        free(d->owned);
        d->owned = NULL;
        finc_errorf(err, errlen, "%s", d->msg[0] ? d->msg : "invalid PNG");
    }
    return rc;
}

static int check_channels(int channels, char *err, size_t errlen)
{
    if (channels == 1 || channels == 3)
        return 0;
    finc_errorf(err, errlen, "channel count %d is not supported (1 or 3)", channels);
    return -1;
}

static int check_signature(const uint8_t *sig, size_t n, char *err, size_t errlen)
{
    if (n < PNG_SIG_LEN) {
        finc_errorf(err, errlen, "not a PNG: %zu bytes, too short for the signature", n);
        return -1;
    }
    if (png_sig_cmp(sig, 0, PNG_SIG_LEN) != 0) {
        finc_errorf(err, errlen, "not a PNG (bad signature)");
        return -1;
    }
    return 0;
}

static int decode_mem(const void *buf, size_t len, int channels, int want_h, int want_w,
                      uint8_t *dst, finc_png_image *out, char *err, size_t errlen)
{
    if (check_channels(channels, err, errlen) != 0)
        return -1;
    if (buf == NULL && len > 0) {
        finc_errorf(err, errlen, "no PNG data");
        return -1;
    }
    if (check_signature(buf, len, err, errlen) != 0)
        return -1;
    decoder d = {.buf = buf, .len = len, .pos = PNG_SIG_LEN, .limit = -1, .channels = channels,
                 .want_h = want_h, .want_w = want_w, .dst = dst};
    if (decode_common(&d, err, errlen) != 0)
        return -1;
    if (out != NULL)
        *out = (finc_png_image){d.width, d.height, channels, d.owned};
    return 0;
}

int finc_png_decode(const void *buf, size_t len, int channels, finc_png_image *out,
                    char *err, size_t errlen)
{
    if (out == NULL) {
        finc_errorf(err, errlen, "no output image");
        return -1;
    }
    *out = (finc_png_image){0};
    return decode_mem(buf, len, channels, 0, 0, NULL, out, err, errlen);
}

int finc_png_decode_into(const void *buf, size_t len, int channels, int height, int width,
                         uint8_t *dst, char *err, size_t errlen)
{
    if (dst == NULL || height <= 0 || width <= 0) {
        finc_errorf(err, errlen, "invalid destination %dx%d", width, height);
        return -1;
    }
    return decode_mem(buf, len, channels, height, width, dst, NULL, err, errlen);
}

int finc_png_read_file(const char *path, int channels, finc_png_image *out,
                       char *err, size_t errlen)
{
    if (out == NULL) {
        finc_errorf(err, errlen, "no output image");
        return -1;
    }
    *out = (finc_png_image){0};
    if (check_channels(channels, err, errlen) != 0)
        return -1;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        finc_errorf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    uint8_t sig[PNG_SIG_LEN];
    size_t got = fread(sig, 1, sizeof sig, fp);
    char msg[256];
    int rc = check_signature(sig, got, msg, sizeof msg);
    if (rc == 0) {
        decoder d = {.fp = fp, .limit = -1, .channels = channels};
        rc = decode_common(&d, msg, sizeof msg);
        if (rc == 0)
            *out = (finc_png_image){d.width, d.height, channels, d.owned};
    }
    fclose(fp);
    if (rc != 0)
        finc_errorf(err, errlen, "%s: %s", path, msg);
    return rc;
}

void finc_png_image_free(finc_png_image *img)
{
    if (img == NULL)
        return;
    free(img->pixels);
    *img = (finc_png_image){0};
}

int finc_png_check_size(const finc_png_image *img, int want_h, int want_w,
                        char *err, size_t errlen)
{
    if (img->height == want_h && img->width == want_w)
        return 0;
    finc_errorf(err, errlen, "image is %dx%d, model expects %dx%d (%d channel%s)", img->width,
            img->height, want_w, want_h, img->channels, img->channels == 1 ? "" : "s");
    return -1;
}

/* ---- encode ---------------------------------------------------------------- */

typedef struct encoder {
    char msg[MSG_LEN];      /* the first error; libpng's error ptr */
    png_structp png;
    png_infop info;
    const uint8_t *pixels;  /* (C, H, W) */
    int C, H, W;
    uint8_t *row;           /* one interleaved row */
    uint8_t *buf;           /* the PNG so far */
    size_t len, cap;
} encoder;

static void write_sink(png_structp png, png_bytep data, size_t n)
{
    encoder *e = (encoder *)png_get_io_ptr(png);
    if (n > e->cap - e->len) {
        size_t cap = e->cap ? e->cap : 4096;
        while (cap - e->len < n) {
            if (cap > SIZE_MAX / 2)
                png_error(png, "PNG output too large");
            cap *= 2;
        }
        uint8_t *p = realloc(e->buf, cap);
        if (p == NULL)
            png_error(png, "out of memory for PNG output");
        e->buf = p;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, data, n);
    e->len += n;
}

static void flush_sink(png_structp png)
{
    (void)png;
}

static int encode_run(encoder *e)
{
    if (setjmp(png_jmpbuf(e->png)))
        return -1;
    png_structp png = e->png;
    png_set_write_fn(png, e, write_sink, flush_sink);
    png_set_IHDR(png, e->info, (png_uint_32)e->W, (png_uint_32)e->H, 8,
                 e->C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, e->info);
    size_t plane = (size_t)e->H * e->W;
    for (int y = 0; y < e->H; y++) {
        const uint8_t *src = e->pixels + (size_t)y * e->W;
        if (e->C == 1) {
            memcpy(e->row, src, (size_t)e->W);
        } else {
            for (int x = 0; x < e->W; x++) {
                e->row[3 * x] = src[x];
                e->row[3 * x + 1] = src[plane + x];
                e->row[3 * x + 2] = src[2 * plane + x];
            }
        }
        png_write_row(png, e->row);
    }
    png_write_end(png, e->info);
    return 0;
}

static int check_shape(const void *p, int C, int H, int W, char *err, size_t errlen)
{
    if (p == NULL) {
        finc_errorf(err, errlen, "no pixels");
        return -1;
    }
    if (check_channels(C, err, errlen) != 0)
        return -1;
    if (H <= 0 || W <= 0 || H > FINC_PNG_MAX_DIM || W > FINC_PNG_MAX_DIM
        || (uint64_t)H * (uint64_t)W > FINC_PNG_MAX_PIXELS) {
        finc_errorf(err, errlen, "image size %dx%d out of range (limit %d per side, %u pixels)",
                W, H, FINC_PNG_MAX_DIM, FINC_PNG_MAX_PIXELS);
        return -1;
    }
    return 0;
}

int finc_png_encode(const uint8_t *pixels, int C, int H, int W, uint8_t **out,
                    size_t *out_len, char *err, size_t errlen)
{
    if (out == NULL || out_len == NULL) {
        finc_errorf(err, errlen, "no output buffer");
        return -1;
    }
    *out = NULL;
    *out_len = 0;
    if (check_shape(pixels, C, H, W, err, errlen) != 0)
        return -1;
    encoder e = {.pixels = pixels, .C = C, .H = H, .W = W};
    e.row = malloc((size_t)W * (size_t)C);
    e.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, e.msg, on_write_error, on_png_warning);
    if (e.png != NULL)
        e.info = png_create_info_struct(e.png);
    int rc = -1;
    if (e.row == NULL || e.png == NULL || e.info == NULL)
        snprintf(e.msg, sizeof e.msg, "out of memory creating the PNG encoder");
    else
        rc = encode_run(&e);
    png_destroy_write_struct(&e.png, &e.info);
    free(e.row);
    if (rc != 0) {
        free(e.buf);
        finc_errorf(err, errlen, "PNG encode failed: %s", e.msg[0] ? e.msg : "unknown error");
        return -1;
    }
    *out = e.buf;
    *out_len = e.len;
    return 0;
}

int finc_png_write_file(const char *path, const uint8_t *pixels, int C, int H, int W,
                        char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    if (finc_png_encode(pixels, C, H, W, &buf, &len, err, errlen) != 0)
        return -1;
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) {
        finc_errorf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        free(buf);
        return -1;
    }
    int ok = fwrite(buf, 1, len, fp) == len;
    int saved = errno;
    ok = (fclose(fp) == 0) && ok;
    if (!ok && saved == 0)
        saved = errno;
    free(buf);
    if (!ok) {
        finc_errorf(err, errlen, "cannot write %s: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

/* ---- grid ------------------------------------------------------------------ */

int finc_png_grid(const uint8_t *images, int n, int C, int H, int W, int cols, int pad,
                  uint8_t pad_value, uint8_t **out, int *out_h, int *out_w,
                  char *err, size_t errlen)
{
    if (out == NULL || out_h == NULL || out_w == NULL) {
        finc_errorf(err, errlen, "no output buffer");
        return -1;
    }
    *out = NULL;
    *out_h = *out_w = 0;
    if (n <= 0) {
        finc_errorf(err, errlen, "grid needs at least one image (got %d)", n);
        return -1;
    }
    if (pad < 0 || pad > 16) {
        finc_errorf(err, errlen, "grid padding %d out of range (0..16)", pad);
        return -1;
    }
    if (check_shape(images, C, H, W, err, errlen) != 0)
        return -1;
    if (cols <= 0) {
        cols = 1;
        while ((int64_t)cols * cols < n)
            cols++;
    }
    if (cols > n)
        cols = n;
    int rows = (n + cols - 1) / cols;
    int64_t hg = (int64_t)rows * (H + pad) + pad;
    int64_t wg = (int64_t)cols * (W + pad) + pad;
    if (hg > FINC_PNG_MAX_DIM || wg > FINC_PNG_MAX_DIM || hg * wg > FINC_PNG_MAX_PIXELS) {
        finc_errorf(err, errlen, "grid of %d images would be %lldx%lld (limit %d per side, %u pixels)",
                n, (long long)wg, (long long)hg, FINC_PNG_MAX_DIM, FINC_PNG_MAX_PIXELS);
        return -1;
    }
    size_t gplane = (size_t)hg * (size_t)wg;
    uint8_t *g = malloc(gplane * (size_t)C);
    if (g == NULL) {
        finc_errorf(err, errlen, "out of memory for a %lldx%lld grid", (long long)wg, (long long)hg);
        return -1;
    }
    memset(g, pad_value, gplane * (size_t)C);
    size_t plane = (size_t)H * W;
    for (int i = 0; i < n; i++) {
        size_t top = (size_t)pad + (size_t)(i / cols) * (size_t)(H + pad);
        size_t left = (size_t)pad + (size_t)(i % cols) * (size_t)(W + pad);
        for (int c = 0; c < C; c++) {
            const uint8_t *src = images + ((size_t)i * C + c) * plane;
            uint8_t *dst = g + (size_t)c * gplane + top * (size_t)wg + left;
            for (int y = 0; y < H; y++)
                memcpy(dst + (size_t)y * (size_t)wg, src + (size_t)y * W, (size_t)W);
        }
    }
    *out = g;
    *out_h = (int)hg;
    *out_w = (int)wg;
    return 0;
}
