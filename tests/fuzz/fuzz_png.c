/* A PNG upload (POST /log-likelihood, finc score): decoded as gray and as
 * color, whole and into a fixed 28x28 buffer. */
#include <stdlib.h>

#include "io/png.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    for (int channels = 1; channels <= 3; channels += 2) {
        finc_png_image img;
        if (finc_png_decode(data, size, channels, &img, err, sizeof err) == 0) finc_png_image_free(&img);
        else if (!err[0]) abort();
        uint8_t dst[3 * 28 * 28];
        err[0] = 0;
        if (finc_png_decode_into(data, size, channels, 28, 28, dst, err, sizeof err) != 0 && !err[0]) abort();
    }
    return 0;
}
