/* The backend interface: one function per op and direction, plus a context.
 * engine/flow.c runs the chain of model.md through this table only, so the CPU
 * backend (engine/cpu_*.c) and the CUDA backend (kernels/) plug in side by side.
 *
 * Activations are "channel-major with the batch inside": a tensor of C channels,
 * B images and H x W pixels is stored (C, B, H, W). A 1x1 or 3x3 convolution is then
 * one GEMM over all B*H*W pixels, and x[:, :C/2] / x[:, C/2:] are a prefix and a
 * suffix of the buffer. Every tensor, pixel, latent and log-det pointer passed
 * to an op is backend memory (device memory for CUDA); weight pointers are the
 * host model's, which a backend maps to its own copy of the one weights block.
 * Per-image log-det and log p are double. */
#ifndef FINC_BACKEND_H
#define FINC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct finc_backend finc_backend;

struct finc_backend {
    const char *name;
    void *ctx;

    /* Memory. alloc returns NULL on failure. */
    void *(*alloc)(finc_backend *be, size_t bytes);
    void (*release)(finc_backend *be, void *p);
    void (*upload)(finc_backend *be, void *dst, const void *src, size_t bytes);
    void (*download)(finc_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(finc_backend *be, void *dst, size_t bytes);
    /* Waits for queued work; returns 0, or -1 with a message in err. */
    int (*sync)(finc_backend *be, char *err, size_t errlen);

    /* Pixels v (B, C, H, W) and dequantization offsets u (same layout; NULL
     * for 0.5 everywhere) to logits x (C, B, H, W), in double until the
     * logit: v + u near 256 in float would lose the digits that 1 - x needs.
     * logdet[b] += sum of the logit's log-derivative terms; the constant
     * terms (-D ln 256, D ln(1-2a)) are the caller's. */
    void (*preprocess)(finc_backend *be, float *x, double *logdet, const uint8_t *pixels,
                       const float *u, int B, int C, int H, int W, double alpha);
    /* Logits x (C, B, H, W) to pixels (B, C, H, W). */
    void (*postprocess)(finc_backend *be, uint8_t *pixels, const float *x,
                        int B, int C, int H, int W, double alpha);

    /* (C, B, H, W) <-> (4C, B, H/2, W/2); out of place. */
    void (*squeeze)(finc_backend *be, float *y, const float *x, int C, int B, int H, int W);
    void (*unsqueeze)(finc_backend *be, float *x, const float *y, int C, int B, int H, int W);

    /* FInC unit, C channels: y = conv(pad(x)) per quarter; out of place. The
     * inverse solves x from y along anti-diagonal wavefronts. */
    void (*finc_forward)(finc_backend *be, float *y, const float *x, const finc_step *st,
                         int C, int B, int H, int W, int k);
    void (*finc_inverse)(finc_backend *be, float *x, const float *y, const finc_step *st,
                         int C, int B, int H, int W, int k);

    /* ActNorm in place. */
    void (*actnorm_forward)(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW);
    void (*actnorm_inverse)(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW);

    /* y = Wm x over channels (inverse: Wm^-1); out of place. */
    void (*conv1x1_forward)(finc_backend *be, float *y, const float *x, const finc_step *st,
                            int C, int B, int HW);
    void (*conv1x1_inverse)(finc_backend *be, float *y, const float *x, const finc_step *st,
                            int C, int B, int HW);

    /* Affine coupling in place on x (cp->cout, B, H, W); forward adds
     * sum log_s per image to logdet. */
    void (*coupling_forward)(finc_backend *be, float *x, double *logdet, const finc_coupling *cp,
                             int B, int H, int W);
    void (*coupling_inverse)(finc_backend *be, float *x, const finc_coupling *cp,
                             int B, int H, int W);

    /* logp[b] += sum over the tensor z (C, B, HW) of -z^2/2 (constant term is the caller's). */
    void (*gaussian_logp)(finc_backend *be, double *logp, const float *z, int C, int B, int HW);

    /* Between (C, B, HW) and rows of a latent matrix lat (B, D):
     * lat[b*D + offset + c*HW + p] <-> z[(c*B + b)*HW + p]. */
    void (*latents_write)(finc_backend *be, float *lat, int D, int offset, const float *z,
                          int C, int B, int HW);
    void (*latents_read)(finc_backend *be, float *z, const float *lat, int D, int offset,
                         int C, int B, int HW);

    void (*destroy)(finc_backend *be);
};

/* The CPU backend. threads <= 0 uses all cores. Returns NULL with a message on failure. */
finc_backend *finc_backend_cpu_new(const finc_model *m, int max_batch, int threads,
                                   char *err, size_t errlen);

#ifdef FINC_HAVE_CUDA
/* The CUDA backend (kernels/), built when the Makefile finds nvcc. device < 0
 * takes $FINC_CUDA_DEVICE or 0. Weights are uploaded once and activations
 * sized for max_batch. Returns NULL with a message on failure (no driver or
 * device, out of device memory). */
finc_backend *finc_backend_cuda_new(const finc_model *m, int max_batch, int device,
                                    char *err, size_t errlen);
/* Usable CUDA devices; 0 when there is no driver or device. */
int finc_cuda_device_count(void);
/* One line: name, SMs, memory, compute capability, driver and runtime versions.
 * Returns 0, or -1 with the CUDA error in buf. */
int finc_cuda_describe(int device, char *buf, size_t n);
#endif

#endif
