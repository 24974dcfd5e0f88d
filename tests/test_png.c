/* io/png: round trips, the documented conversions, hostile input, the grid. */
#include <check.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "io/png.h"
#include "tests/testpng.h"

/* A 4x3 RGB PNG written by Pillow 9.4 (Image.new("RGB", (4, 3)).putdata(...)). */
static const uint8_t pil_rgb_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
    0x52, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x08, 0x02, 0x00, 0x00, 0x00, 0x3b,
    0x96, 0x39, 0x91, 0x00, 0x00, 0x00, 0x30, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8,
    0xcf, 0xc0, 0xc0, 0xf0, 0x9f, 0x81, 0x81, 0xe1, 0xff, 0xff, 0xff, 0xff, 0x19, 0x78, 0x4e,
    0xf8, 0x36, 0x34, 0x34, 0x30, 0x32, 0x31, 0xff, 0x12, 0x4c, 0x66, 0x48, 0x4e, 0x4e, 0x61,
    0x60, 0x60, 0x38, 0x91, 0x62, 0xa4, 0xe8, 0xf4, 0x1f, 0x00, 0x20, 0x65, 0x0d, 0xfa, 0x2c,
    0xfc, 0xca, 0xb1, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
};
static const uint8_t pil_rgb[12][3] = {
    {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}, {12, 200, 77}, {128, 128, 128},
    {1, 2, 3}, {250, 17, 99}, {99, 99, 100}, {0, 0, 0}, {200, 100, 50}, {33, 66, 255},
};
/* Pillow's Image.convert("L") of the same pixels. */
static const uint8_t pil_gray[12] = {76, 150, 29, 255, 130, 128, 2, 96, 99, 0, 124, 78};

/* ---- helpers --------------------------------------------------------------- */

static void fill_random(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Rewrites the IHDR width/height of an encoded PNG and fixes the chunk CRC. */
static void patch_ihdr_size(uint8_t *png, uint32_t w, uint32_t h)
{
    put_be32(png + 16, w);
    put_be32(png + 20, h);
    put_be32(png + 29, (uint32_t)crc32(0, png + 12, 17));
}

/* ---- round trips ----------------------------------------------------------- */

static void round_trip(int C, int H, int W, uint32_t seed)
{
    size_t n = (size_t)C * H * W;
    uint8_t *px = malloc(n);
    fill_random(px, n, seed);
    uint8_t *png;
    size_t len;
    char err[256] = "";
    ck_assert_int_eq(finc_png_encode(px, C, H, W, &png, &len, err, sizeof err), 0);
    ck_assert_uint_gt(len, 8);
    finc_png_image img;
    ck_assert_msg(finc_png_decode(png, len, C, &img, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(img.width, W);
    ck_assert_int_eq(img.height, H);
    ck_assert_int_eq(img.channels, C);
    ck_assert_mem_eq(img.pixels, px, n);
    finc_png_image_free(&img);
    ck_assert_ptr_null(img.pixels);

    uint8_t *dst = malloc(n);
    ck_assert_msg(finc_png_decode_into(png, len, C, H, W, dst, err, sizeof err) == 0, "%s", err);
    ck_assert_mem_eq(dst, px, n);
    free(dst);
    free(png);
    free(px);
}

START_TEST(test_round_trip_gray)
{
    round_trip(1, 28, 28, 1);
    round_trip(1, 23, 37, 2);
    round_trip(1, 1, 1, 3);
}
END_TEST

START_TEST(test_round_trip_rgb)
{
    round_trip(3, 32, 32, 4);
    round_trip(3, 5, 64, 5);
}
END_TEST

START_TEST(test_round_trip_file)
{
    char path[] = "/tmp/finc_test_png_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    uint8_t px[3 * 6 * 7];
    fill_random(px, sizeof px, 9);
    char err[256] = "";
    ck_assert_msg(finc_png_write_file(path, px, 3, 6, 7, err, sizeof err) == 0, "%s", err);
    finc_png_image img;
    ck_assert_msg(finc_png_read_file(path, 3, &img, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(img.width, 7);
    ck_assert_int_eq(img.height, 6);
    ck_assert_mem_eq(img.pixels, px, sizeof px);
    finc_png_image_free(&img);

    /* truncated file: every prefix fails cleanly */
    FILE *fp = fopen(path, "rb");
    uint8_t whole[4096];
    size_t len = fread(whole, 1, sizeof whole, fp);
    fclose(fp);
    for (size_t cut = 0; cut < len; cut += 7) {
        fp = fopen(path, "wb");
        fwrite(whole, 1, cut, fp);
        fclose(fp);
        ck_assert_int_eq(finc_png_read_file(path, 3, &img, err, sizeof err), -1);
        ck_assert_ptr_null(img.pixels);
        ck_assert_ptr_nonnull(strstr(err, path));
    }
    unlink(path);
    ck_assert_int_eq(finc_png_read_file(path, 1, &img, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    ck_assert_int_eq(finc_png_write_file("/nonexistent-dir/x.png", px, 3, 6, 7, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot create"));
}
END_TEST

/* ---- conversions ----------------------------------------------------------- */

START_TEST(test_pillow_rgb_to_gray)
{
    char err[256] = "";
    finc_png_image img;
    ck_assert_msg(finc_png_decode(pil_rgb_png, sizeof pil_rgb_png, 3, &img, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_int_eq(img.width, 4);
    ck_assert_int_eq(img.height, 3);
    for (int i = 0; i < 12; i++)
        for (int c = 0; c < 3; c++)
            ck_assert_uint_eq(img.pixels[c * 12 + i], pil_rgb[i][c]);
    finc_png_image_free(&img);

    ck_assert_msg(finc_png_decode(pil_rgb_png, sizeof pil_rgb_png, 1, &img, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_mem_eq(img.pixels, pil_gray, 12);
    finc_png_image_free(&img);
}
END_TEST

START_TEST(test_gray_to_rgb)
{
    uint8_t px[2 * 3] = {0, 1, 127, 128, 254, 255};
    uint8_t *png;
    size_t len;
    char err[256] = "";
    ck_assert_int_eq(finc_png_encode(px, 1, 2, 3, &png, &len, err, sizeof err), 0);
    finc_png_image img;
    ck_assert_msg(finc_png_decode(png, len, 3, &img, err, sizeof err) == 0, "%s", err);
    for (int c = 0; c < 3; c++)
        ck_assert_mem_eq(img.pixels + c * 6, px, 6);
    finc_png_image_free(&img);
    free(png);
}
END_TEST

START_TEST(test_palette)
{
    png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {10, 20, 30}, {255, 255, 255}};
    /* 4x1, 2-bit indices 0,1,2,3 packed MSB first */
    const uint8_t raw[1] = {0x1b};
    size_t len;
    uint8_t *png = testpng_write(4, 1, PNG_COLOR_TYPE_PALETTE, 2, 0, raw, pal, 4, NULL, 0, NULL, &len);
    char err[256] = "";
    finc_png_image img;
    ck_assert_msg(finc_png_decode(png, len, 3, &img, err, sizeof err) == 0, "%s", err);
    const uint8_t want_rgb[12] = {0, 255, 10, 255, 0, 0, 20, 255, 0, 0, 30, 255};
    ck_assert_mem_eq(img.pixels, want_rgb, 12);
    finc_png_image_free(&img);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    const uint8_t want_gray[4] = {0, 76, 18, 255};
    ck_assert_mem_eq(img.pixels, want_gray, 4);
    finc_png_image_free(&img);
    free(png);

    /* palette with tRNS: entry 1 half transparent, entry 3 fully transparent */
    const uint8_t trns[4] = {255, 128, 255, 0};
    png = testpng_write(4, 1, PNG_COLOR_TYPE_PALETTE, 2, 0, raw, pal, 4, trns, 4, NULL, &len);
    ck_assert_int_eq(finc_png_decode(png, len, 3, &img, err, sizeof err), 0);
    const uint8_t want_trns[12] = {0, 128, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0};
    ck_assert_mem_eq(img.pixels, want_trns, 12);
    finc_png_image_free(&img);
    free(png);
}
END_TEST

START_TEST(test_sixteen_bit)
{
    /* gray16: 0, 257 (exactly 1), 32767, 65535, 128 (0.498 -> 0), 129 (0.502 -> 1) */
    const uint16_t v[6] = {0, 257, 32767, 65535, 128, 129};
    uint8_t raw[12];
    for (int i = 0; i < 6; i++) {
        raw[2 * i] = (uint8_t)(v[i] >> 8);
        raw[2 * i + 1] = (uint8_t)v[i];
    }
    size_t len;
    uint8_t *png = testpng_write(6, 1, PNG_COLOR_TYPE_GRAY, 16, 0, raw, NULL, 0, NULL, 0, NULL, &len);
    char err[256] = "";
    finc_png_image img;
    ck_assert_msg(finc_png_decode(png, len, 1, &img, err, sizeof err) == 0, "%s", err);
    const uint8_t want[6] = {0, 1, 127, 255, 0, 1};
    ck_assert_mem_eq(img.pixels, want, 6);
    finc_png_image_free(&img);
    free(png);

    /* rgb16, one pixel (65535, 32896, 0) -> (255, 128, 0); gray = luma */
    const uint8_t raw3[6] = {0xff, 0xff, 0x80, 0x80, 0x00, 0x00};
    png = testpng_write(1, 1, PNG_COLOR_TYPE_RGB, 16, 0, raw3, NULL, 0, NULL, 0, NULL, &len);
    ck_assert_int_eq(finc_png_decode(png, len, 3, &img, err, sizeof err), 0);
    const uint8_t want3[3] = {255, 128, 0};
    ck_assert_mem_eq(img.pixels, want3, 3);
    finc_png_image_free(&img);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    ck_assert_uint_eq(img.pixels[0], (19595u * 255 + 38470u * 128 + 32768u) >> 16);
    finc_png_image_free(&img);
    free(png);
}
END_TEST

START_TEST(test_low_bit_gray)
{
    /* 1-bit: 8 pixels 10110001 -> 255 or 0 */
    const uint8_t raw1[1] = {0xb1};
    size_t len;
    uint8_t *png = testpng_write(8, 1, PNG_COLOR_TYPE_GRAY, 1, 0, raw1, NULL, 0, NULL, 0, NULL, &len);
    char err[256] = "";
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    const uint8_t want1[8] = {255, 0, 255, 255, 0, 0, 0, 255};
    ck_assert_mem_eq(img.pixels, want1, 8);
    finc_png_image_free(&img);
    free(png);

    /* 4-bit: 0, 1, 7, 15 -> v * 17 */
    const uint8_t raw4[2] = {0x01, 0x7f};
    png = testpng_write(4, 1, PNG_COLOR_TYPE_GRAY, 4, 0, raw4, NULL, 0, NULL, 0, NULL, &len);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    const uint8_t want4[4] = {0, 17, 119, 255};
    ck_assert_mem_eq(img.pixels, want4, 4);
    finc_png_image_free(&img);
    free(png);
}
END_TEST

START_TEST(test_alpha_over_black)
{
    /* gray+alpha: (200, 255), (200, 0), (200, 128), (255, 51) */
    const uint8_t raw_ga[8] = {200, 255, 200, 0, 200, 128, 255, 51};
    size_t len;
    uint8_t *png = testpng_write(4, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, raw_ga, NULL, 0, NULL, 0,
                            NULL, &len);
    char err[256] = "";
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    /* (c * a + 127) / 255: 200, 0, (25600 + 127) / 255 = 100, 51 */
    const uint8_t want_ga[4] = {200, 0, 100, 51};
    ck_assert_mem_eq(img.pixels, want_ga, 4);
    finc_png_image_free(&img);
    ck_assert_int_eq(finc_png_decode(png, len, 3, &img, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        ck_assert_mem_eq(img.pixels + 4 * c, want_ga, 4);
    finc_png_image_free(&img);
    free(png);

    /* RGBA: (255, 100, 0, 128), (10, 20, 30, 255) */
    const uint8_t raw_rgba[8] = {255, 100, 0, 128, 10, 20, 30, 255};
    png = testpng_write(2, 1, PNG_COLOR_TYPE_RGB_ALPHA, 8, 0, raw_rgba, NULL, 0, NULL, 0, NULL, &len);
    ck_assert_int_eq(finc_png_decode(png, len, 3, &img, err, sizeof err), 0);
    const uint8_t want_rgb[6] = {128, 10, 50, 20, 0, 30};
    ck_assert_mem_eq(img.pixels, want_rgb, 6);
    finc_png_image_free(&img);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    /* composite first, then luma */
    ck_assert_uint_eq(img.pixels[0], (19595u * 128 + 38470u * 50 + 32768u) >> 16);
    ck_assert_uint_eq(img.pixels[1], (19595u * 10 + 38470u * 20 + 7471u * 30 + 32768u) >> 16);
    finc_png_image_free(&img);
    free(png);

    /* gray with a tRNS colour key: value 7 becomes transparent (black) */
    const uint8_t raw_key[3] = {7, 8, 255};
    png_color_16 key = {.gray = 7};
    png = testpng_write(3, 1, PNG_COLOR_TYPE_GRAY, 8, 0, raw_key, NULL, 0, NULL, 0, &key, &len);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    const uint8_t want_key[3] = {0, 8, 255};
    ck_assert_mem_eq(img.pixels, want_key, 3);
    finc_png_image_free(&img);
    free(png);
}
END_TEST

START_TEST(test_interlaced)
{
    enum { W = 13, H = 11 };
    uint8_t raw[H * W * 3];
    fill_random(raw, sizeof raw, 77);
    size_t len;
    uint8_t *png = testpng_write(W, H, PNG_COLOR_TYPE_RGB, 8, 1, raw, NULL, 0, NULL, 0, NULL, &len);
    char err[256] = "";
    finc_png_image img;
    ck_assert_msg(finc_png_decode(png, len, 3, &img, err, sizeof err) == 0, "%s", err);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                ck_assert_uint_eq(img.pixels[(c * H + y) * W + x], raw[(y * W + x) * 3 + c]);
    finc_png_image_free(&img);
    /* truncated interlaced data fails too */
    for (size_t cut = 8; cut < len; cut += 5)
        ck_assert_int_eq(finc_png_decode(png, cut, 3, &img, err, sizeof err), -1);
    free(png);
}
END_TEST

/* ---- hostile input --------------------------------------------------------- */

START_TEST(test_truncated_every_length)
{
    uint8_t px[3 * 16 * 16];
    fill_random(px, sizeof px, 11);
    uint8_t *png;
    size_t len;
    char err[256];
    ck_assert_int_eq(finc_png_encode(px, 3, 16, 16, &png, &len, err, sizeof err), 0);
    for (size_t cut = 0; cut < len; cut++) {
        /* a private copy of exactly cut bytes so ASan sees any overread */
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, png, cut);
        finc_png_image img;
        err[0] = '\0';
        ck_assert_int_eq(finc_png_decode(part, cut, 3, &img, err, sizeof err), -1);
        ck_assert_ptr_null(img.pixels);
        ck_assert_msg(err[0] != '\0', "no message at cut %zu", cut);
        free(part);
    }
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(png, 3, 1, &img, err, sizeof err), -1);
    ck_assert_str_eq(err, "not a PNG: 3 bytes, too short for the signature");
    ck_assert_int_eq(finc_png_decode(png, 40, 1, &img, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "truncated"));
    free(png);
}
END_TEST

START_TEST(test_corrupt_bytes)
{
    uint8_t px[28 * 28];
    fill_random(px, sizeof px, 12);
    uint8_t *png;
    size_t len;
    char err[256];
    ck_assert_int_eq(finc_png_encode(px, 1, 28, 28, &png, &len, err, sizeof err), 0);
    uint8_t *bad = malloc(len);
    /* flip each byte in turn: the signature, a chunk CRC, the zlib stream or
     * the filter bytes must catch every one */
    int failures = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, png, len);
        bad[i] ^= 0x5a;
        finc_png_image img;
        if (finc_png_decode(bad, len, 1, &img, err, sizeof err) != 0) {
            failures++;
            ck_assert_ptr_null(img.pixels);
        }
        finc_png_image_free(&img);
    }
    ck_assert_int_eq(failures, (int)len);
    free(bad);
    free(png);

    /* garbage: random bytes, and random bytes behind a valid signature */
    uint8_t junk[512];
    for (uint32_t seed = 0; seed < 64; seed++) {
        fill_random(junk, sizeof junk, seed);
        finc_png_image img;
        ck_assert_int_eq(finc_png_decode(junk, sizeof junk, 3, &img, err, sizeof err), -1);
        memcpy(junk, "\x89PNG\r\n\x1a\n", 8);
        ck_assert_int_eq(finc_png_decode(junk, sizeof junk, 3, &img, err, sizeof err), -1);
        ck_assert_ptr_null(img.pixels);
    }
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode("GIF89a....", 10, 1, &img, err, sizeof err), -1);
    ck_assert_str_eq(err, "not a PNG (bad signature)");
    ck_assert_int_eq(finc_png_decode(NULL, 0, 1, &img, err, sizeof err), -1);
}
END_TEST

/* Appends one chunk (length, type, data, CRC) at *at. */
static void put_chunk(uint8_t *buf, size_t *at, const char *type, const uint8_t *data, uint32_t n)
{
    put_be32(buf + *at, n);
    memcpy(buf + *at + 4, type, 4);
    if (n) memcpy(buf + *at + 8, data, n);
    put_be32(buf + *at + 8 + n, (uint32_t)crc32(crc32(0, buf + *at + 4, 4), buf + *at + 8, n));
    *at += 12 + n;
}

/* A w x h gray PNG of zeros whose one zlib stream goes on with `extra` more
 * zero bytes after the rows (a decompression bomb when extra is large), then
 * a tEXt chunk of `text` (0, or at least 8) bytes after the image data. */
static uint8_t *zero_png(int w, int h, size_t extra, uint32_t text, size_t *len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    ck_assert_int_eq(deflateInit(&z, 9), Z_OK);
    const size_t cap = 1 << 20;
    uint8_t *idat = malloc(cap), *zeros = calloc(1, 1 << 16);
    z.next_out = idat;
    z.avail_out = (uInt)cap;
    size_t left = (size_t)h * (w + 1) + extra;
    while (left > 0) {
        const size_t k = left < (1 << 16) ? left : (1 << 16);
        z.next_in = zeros;
        z.avail_in = (uInt)k;
        ck_assert_int_eq(deflate(&z, Z_NO_FLUSH), Z_OK);
        left -= k;
    }
    ck_assert_int_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    const uint32_t nidat = (uint32_t)z.total_out;
    deflateEnd(&z);
    uint8_t *buf = malloc(8 + 25 + 12 + nidat + 12 + text + 12);
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(buf, sig, 8);
    size_t at = 8;
    uint8_t ihdr[13] = {0};
    put_be32(ihdr, (uint32_t)w);
    put_be32(ihdr + 4, (uint32_t)h);
    ihdr[8] = 8;  /* depth; colour type 0 (gray), no interlace */
    put_chunk(buf, &at, "IHDR", ihdr, 13);
    put_chunk(buf, &at, "IDAT", idat, nidat);
    if (text >= 8) {
        uint8_t *t = calloc(1, text);
        memcpy(t, "Comment", 7);  /* keyword, NUL, then the text */
        for (uint32_t i = 8; i < text; i++) t[i] = 'x';
        put_chunk(buf, &at, "tEXt", t, text);
        free(t);
    }
    put_chunk(buf, &at, "IEND", NULL, 0);
    free(idat);
    free(zeros);
    *len = at;
    return buf;
}

/* libpng inflates the image data to the end of its zlib stream, past the
 * rows: 64 MiB of zeros after a 28x28 image's rows (65 KB on the wire) once
 * cost a request 64 MiB of inflating; a 4 GiB one, seconds of CPU. The data
 * read is now capped by what the rows can need. */
START_TEST(test_decompression_bomb)
{
    char err[256];
    uint8_t px[28 * 28];
    size_t len;
    uint8_t *plain = zero_png(28, 28, 0, 1000, &len);
    ck_assert_msg(finc_png_decode_into(plain, len, 1, 28, 28, px, err, sizeof err) == 0, "%s", err);
    free(plain);
    uint8_t *bomb = zero_png(28, 28, (size_t)64 << 20, 0, &len);
    ck_assert(len > 20000);
    ck_assert_int_eq(finc_png_decode_into(bomb, len, 1, 28, 28, px, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "more compressed image data than 28x28 pixels can need") != NULL, "%s", err);
    /* the same from a file */
    char path[] = "/tmp/finc-bomb-XXXXXX";
    const int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, bomb, len), (ssize_t)len);
    close(fd);
    finc_png_image img;
    ck_assert_int_eq(finc_png_read_file(path, 1, &img, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "more compressed image data") != NULL, "%s", err);
    unlink(path);
    free(bomb);
}
END_TEST

START_TEST(test_size_caps)
{
    uint8_t px[4] = {1, 2, 3, 4};
    uint8_t *png;
    size_t len;
    char err[256];
    ck_assert_int_eq(finc_png_encode(px, 1, 2, 2, &png, &len, err, sizeof err), 0);
    finc_png_image img;
    /* claims 20000 x 2: over the per-side limit, refused in the header */
    patch_ihdr_size(png, 20000, 2);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "limit") != NULL, "%s", err);
    /* 8000 x 8000: each side allowed, the pixel count is not */
    patch_ihdr_size(png, 8000, 8000);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), -1);
    ck_assert_str_eq(err, "PNG too large: 8000x8000 (limit 16384 per side, 33554432 pixels)");
    /* 3000 x 3000 is allowed, but the data are for 2 x 2 */
    patch_ihdr_size(png, 3000, 3000);
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), -1);
    ck_assert_ptr_null(img.pixels);
    free(png);

    ck_assert_int_eq(finc_png_encode(px, 1, 0, 2, &png, &len, err, sizeof err), -1);
    ck_assert_ptr_null(png);
    ck_assert_int_eq(finc_png_encode(px, 1, 20000, 1, &png, &len, err, sizeof err), -1);
    ck_assert_int_eq(finc_png_encode(px, 2, 1, 1, &png, &len, err, sizeof err), -1);
    ck_assert_str_eq(err, "channel count 2 is not supported (1 or 3)");
    ck_assert_int_eq(finc_png_decode(pil_rgb_png, sizeof pil_rgb_png, 4, &img, err, sizeof err), -1);
    ck_assert_str_eq(err, "channel count 4 is not supported (1 or 3)");
}
END_TEST

START_TEST(test_size_message)
{
    uint8_t px[3 * 28 * 30] = {0};
    uint8_t *png;
    size_t len;
    char err[256];
    ck_assert_int_eq(finc_png_encode(px, 1, 28, 30, &png, &len, err, sizeof err), 0);
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(png, len, 1, &img, err, sizeof err), 0);
    ck_assert_int_eq(finc_png_check_size(&img, 28, 30, err, sizeof err), 0);
    ck_assert_int_eq(finc_png_check_size(&img, 28, 28, err, sizeof err), -1);
    ck_assert_str_eq(err, "image is 30x28, model expects 28x28 (1 channel)");
    finc_png_image_free(&img);

    uint8_t dst[3 * 28 * 28];
    ck_assert_int_eq(finc_png_decode_into(png, len, 1, 28, 28, dst, err, sizeof err), -1);
    ck_assert_str_eq(err, "image is 30x28, model expects 28x28 (1 channel)");
    ck_assert_int_eq(finc_png_decode_into(png, len, 3, 28, 28, dst, err, sizeof err), -1);
    ck_assert_str_eq(err, "image is 30x28, model expects 28x28 (3 channels)");
    /* a tiny err buffer truncates, never overflows */
    char small[8];
    ck_assert_int_eq(finc_png_decode_into(png, len, 1, 28, 28, dst, small, sizeof small), -1);
    ck_assert_str_eq(small, "image i");
    ck_assert_int_eq(finc_png_decode_into(png, len, 1, 28, 28, dst, NULL, 0), -1);
    free(png);
}
END_TEST

/* ---- grid ------------------------------------------------------------------ */

START_TEST(test_grid_layout)
{
    enum { N = 5, H = 2, W = 3 };
    uint8_t imgs[N * H * W];
    for (int i = 0; i < N; i++)
        for (int p = 0; p < H * W; p++)
            imgs[i * H * W + p] = (uint8_t)(10 * (i + 1) + p);
    uint8_t *g;
    int gh, gw;
    char err[256];
    /* default columns: ceil(sqrt(5)) = 3, two rows; pad 1 */
    ck_assert_int_eq(finc_png_grid(imgs, N, 1, H, W, 0, 1, 255, &g, &gh, &gw, err, sizeof err), 0);
    ck_assert_int_eq(gh, 2 * (H + 1) + 1);
    ck_assert_int_eq(gw, 3 * (W + 1) + 1);
    for (int y = 0; y < gh; y++) {
        for (int x = 0; x < gw; x++) {
            int v = 255;
            int ty = y - 1, tx = x - 1;
            if (ty >= 0 && tx >= 0 && ty % (H + 1) < H && tx % (W + 1) < W) {
                int i = (ty / (H + 1)) * 3 + tx / (W + 1);
                if (i < N)
                    v = 10 * (i + 1) + (ty % (H + 1)) * W + tx % (W + 1);
            }
            ck_assert_msg(g[y * gw + x] == v, "grid (%d,%d) = %d, want %d", y, x,
                          g[y * gw + x], v);
        }
    }
    /* image 4 (the fifth) starts at row 1 + 1 * 3, column 1 + 1 * 4 */
    ck_assert_uint_eq(g[4 * gw + 5], 50);
    free(g);

    /* explicit columns, pad 2, RGB: each plane holds its channel */
    uint8_t rgb[2 * 3 * 1 * 1] = {1, 2, 3, 4, 5, 6};
    ck_assert_int_eq(finc_png_grid(rgb, 2, 3, 1, 1, 1, 2, 0, &g, &gh, &gw, err, sizeof err), 0);
    ck_assert_int_eq(gh, 2 * 3 + 2);
    ck_assert_int_eq(gw, 5);
    size_t plane = (size_t)gh * gw;
    for (int c = 0; c < 3; c++) {
        ck_assert_uint_eq(g[c * plane + 2 * gw + 2], 1 + c);
        ck_assert_uint_eq(g[c * plane + 5 * gw + 2], 4 + c);
        ck_assert_uint_eq(g[c * plane + 0], 0);
    }
    /* the grid encodes and decodes */
    uint8_t *png;
    size_t len;
    ck_assert_int_eq(finc_png_encode(g, 3, gh, gw, &png, &len, err, sizeof err), 0);
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(png, len, 3, &img, err, sizeof err), 0);
    ck_assert_mem_eq(img.pixels, g, 3 * plane);
    finc_png_image_free(&img);
    free(png);
    free(g);

    /* columns beyond n are clamped; one image, no padding, is the image */
    ck_assert_int_eq(finc_png_grid(imgs, 1, 1, H, W, 8, 0, 0, &g, &gh, &gw, err, sizeof err), 0);
    ck_assert_int_eq(gh, H);
    ck_assert_int_eq(gw, W);
    ck_assert_mem_eq(g, imgs, H * W);
    free(g);

    /* default columns for perfect squares and one past */
    ck_assert_int_eq(finc_png_grid(imgs, 4, 1, 1, 1, 0, 0, 0, &g, &gh, &gw, err, sizeof err), 0);
    ck_assert_int_eq(gw, 2);
    ck_assert_int_eq(gh, 2);
    free(g);
}
END_TEST

START_TEST(test_grid_errors)
{
    uint8_t px[4] = {0};
    uint8_t *g;
    int gh, gw;
    char err[256];
    ck_assert_int_eq(finc_png_grid(px, 0, 1, 1, 1, 0, 1, 0, &g, &gh, &gw, err, sizeof err), -1);
    ck_assert_ptr_null(g);
    ck_assert_int_eq(finc_png_grid(px, 1, 1, 1, 1, 0, 17, 0, &g, &gh, &gw, err, sizeof err), -1);
    ck_assert_int_eq(finc_png_grid(px, 1, 2, 1, 1, 0, 1, 0, &g, &gh, &gw, err, sizeof err), -1);
    ck_assert_int_eq(finc_png_grid(NULL, 1, 1, 1, 1, 0, 1, 0, &g, &gh, &gw, err, sizeof err), -1);
    /* 100000 images of 64x64 in one row would be far too wide */
    ck_assert_int_eq(finc_png_grid(px, 100000, 1, 64, 64, 100000, 1, 0, &g, &gh, &gw, err,
                                   sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "limit"));
}
END_TEST

static Suite *png_suite(void)
{
    Suite *s = suite_create("png");
    TCase *tc = tcase_create("png");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_round_trip_gray);
    tcase_add_test(tc, test_round_trip_rgb);
    tcase_add_test(tc, test_round_trip_file);
    tcase_add_test(tc, test_pillow_rgb_to_gray);
    tcase_add_test(tc, test_gray_to_rgb);
    tcase_add_test(tc, test_palette);
    tcase_add_test(tc, test_sixteen_bit);
    tcase_add_test(tc, test_low_bit_gray);
    tcase_add_test(tc, test_alpha_over_black);
    tcase_add_test(tc, test_interlaced);
    tcase_add_test(tc, test_truncated_every_length);
    tcase_add_test(tc, test_corrupt_bytes);
    tcase_add_test(tc, test_size_caps);
    tcase_add_test(tc, test_decompression_bomb);
    tcase_add_test(tc, test_size_message);
    tcase_add_test(tc, test_grid_layout);
    tcase_add_test(tc, test_grid_errors);
    suite_add_tcase(s, tc);
    return s;
}

#include "tests/check_main.h"
FINC_CHECK_MAIN(png_suite)
