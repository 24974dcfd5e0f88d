/* A .npy file of latents (finc decode). */
#include <stdlib.h>

#include "io/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    float *x;
    size_t n, d;
    if (finc_npy_decode_f32(data, size, &x, &n, &d, err, sizeof err) == 0) free(x);
    else if (!err[0]) abort();
    return 0;
}
