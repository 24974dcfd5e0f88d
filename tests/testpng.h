/* Test utility: PNGs written by libpng itself from raw rows of any colour
 * type, bit depth and interlacing, for the decoder's tests, the fuzz seeds and
 * the server's encoding checks. */
#ifndef FINC_TESTPNG_H
#define FINC_TESTPNG_H

#include <png.h>
#include <stddef.h>
#include <stdint.h>

/* raw holds h rows packed as the PNG stores them (big-endian 16-bit samples,
 * 1/2/4-bit samples packed); pal/npal a palette, trns/ntrns palette alpha,
 * trns_color a colour key (each NULL for none). Returns a malloc'd PNG of
 * *len bytes; aborts if libpng refuses (a bug in the caller). */
uint8_t *testpng_write(int w, int h, int ctype, int depth, int interlace, const uint8_t *raw,
                       const png_color *pal, int npal, const uint8_t *trns, int ntrns,
                       const png_color_16 *trns_color, size_t *len);

#endif
