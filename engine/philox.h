/* Philox4x32-10, the counter-based generator behind every random number finc
 * draws (sample latents, dequantization noise). A draw is keyed by (seed,
 * image index, stream), so it does not depend on the batch or the backend.
 * The CUDA engine computes the same function. */
#ifndef FINC_PHILOX_H
#define FINC_PHILOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define FINC_HD __host__ __device__
#else
#define FINC_HD
#endif

enum finc_stream {
    FINC_STREAM_LATENT = 1,   /* sample latents */
    FINC_STREAM_DEQUANT = 2,  /* dequantization noise; the draw number goes in the high bits */
};

/* One Philox4x32-10 block: counter ctr[4], key k[2] -> out[4]. */
static inline FINC_HD void finc_philox4x32(const uint32_t ctr[4], const uint32_t k[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = k[0], k1 = k[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* Uniform in (0, 1) from 32 bits: never 0, so its log is finite. */
static inline FINC_HD float finc_u32_to_open01(uint32_t x)
{
    return ((float)(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

/* Element j of the stream (seed, index, stream): block j/4, lane j%4. */
static inline FINC_HD void finc_philox_block(uint64_t seed, uint64_t index, uint32_t stream,
                                             uint32_t block, uint32_t out[4])
{
    uint32_t ctr[4] = {block, (uint32_t)index, (uint32_t)(index >> 32), stream};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    finc_philox4x32(ctr, key, out);
}

/* n standard normals times scale, for one (seed, index, stream): Box-Muller on
 * lane pairs, so element j depends only on j. */
void finc_philox_normal(uint64_t seed, uint64_t index, uint32_t stream, float scale,
                        float *out, size_t n);
/* n uniforms in (0, 1). */
void finc_philox_uniform(uint64_t seed, uint64_t index, uint32_t stream, float *out, size_t n);

#endif
