#include "philox.h"

#include <math.h>

void finc_philox_normal(uint64_t seed, uint64_t index, uint32_t stream, float scale,
                        float *out, size_t n)
{
    for (size_t j = 0; j < n; j += 4) {
        uint32_t r[4];
        finc_philox_block(seed, index, stream, (uint32_t)(j / 4), r);
        for (int h = 0; h < 2; h++) {
            /* Box-Muller in double so CPU and GPU round alike. */
            double u1 = finc_u32_to_open01(r[2 * h]), u2 = finc_u32_to_open01(r[2 * h + 1]);
            double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
            if (j + 2 * h < n) out[j + 2 * h] = (float)(rad * cos(th)) * scale;
            if (j + 2 * h + 1 < n) out[j + 2 * h + 1] = (float)(rad * sin(th)) * scale;
        }
    }
}

void finc_philox_uniform(uint64_t seed, uint64_t index, uint32_t stream, float *out, size_t n)
{
    for (size_t j = 0; j < n; j += 4) {
        uint32_t r[4];
        finc_philox_block(seed, index, stream, (uint32_t)(j / 4), r);
        for (int l = 0; l < 4 && j + l < n; l++) out[j + l] = finc_u32_to_open01(r[l]);
    }
}
