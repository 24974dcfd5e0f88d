/* A .npy file: of latents (finc decode), and of images (a data set). */
#include <stdlib.h>

#include "io/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    float *x;
    size_t n, d;
    if (finc_npy_decode_f32(data, size, &x, &n, &d, err, sizeof err) == 0) free(x);
    else if (!err[0]) abort();
    uint8_t *px;
    int c, h, w;
    err[0] = '\0';
    if (finc_npy_decode_images(data, size, &px, &n, &c, &h, &w, err, sizeof err) == 0) {
        if ((size_t)c * h * w * n > size) abort();  /* the pixels came from the file */
        free(px);
    } else if (!err[0]) {
        abort();
    }
    return 0;
}
