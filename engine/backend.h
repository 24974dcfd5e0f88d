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

/* GEMM precision: FP32 everywhere, or the coupling nets' F x F products (the
 * largest) on TF32 tensor cores; a CPU backend is always FP32. */
typedef enum { FINC_PRECISION_FP32 = 0, FINC_PRECISION_TF32 = 1 } finc_precision;

/* What a backend says about its own state (all zeros on the CPU). */
typedef struct {
    int dead;                     /* the device is in an unrecoverable (sticky) error state: every
                                     later call fails until the process restarts */
    char why[384];                /* when dead: the error that killed it */
    int graphs;                   /* 1 while chains are replayed as CUDA graphs */
    long graph_captures, graph_replays;
    long graph_capture_failures;  /* captures that failed (each retried later, with back-off) */
    int buckets;                  /* batch sizes chains are padded to (batch_bucket), 0 for none */
    double warm_seconds;          /* what warm_up took */
    double warm_device_mib;       /* device memory that warm_up's graphs took */
} finc_backend_status;

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
    /* Starts the queued work without waiting for it (sync waits). */
    void (*submit)(finc_backend *be);
    /* Host staging memory the device copies from without a bounce (pinned on
     * CUDA); NULL on failure. */
    void *(*host_alloc)(finc_backend *be, size_t bytes);
    void (*host_release)(finc_backend *be, void *p);
    /* A copy from host_alloc memory that may run while work already submitted
     * runs: the caller guarantees that no such work touches dst, and leaves src
     * untouched until the next sync. Work issued after it sees the data. */
    void (*upload_async)(finc_backend *be, void *dst, const void *src, size_t bytes);

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

    /* The batch size a chain of B images runs at: B on the CPU; on CUDA B
     * padded up to one of a few bucket sizes, so a few captured graphs serve
     * every batch. The engine's buffers hold max_batch images, and every
     * bucket is at most max_batch. */
    int (*batch_bucket)(finc_backend *be, int B);
    /* Runs every chain (encode, encode with offsets, decode) at every
     * bucket size until it replays from a graph, before the first request;
     * warm(B) issues the chains of one batch size. 0, or -1 with a message. */
    int (*warm_up)(finc_backend *be, int (*warm)(void *user, int B, char *err, size_t errlen), void *user,
                   char *err, size_t errlen);
    void (*status)(finc_backend *be, finc_backend_status *s);

    void (*destroy)(finc_backend *be);
};

/* 0 when every slot of the table is filled, else -1 naming the first empty
 * one: each backend's constructor checks its own table. */
int finc_backend_check_table(const finc_backend *be, char *err, size_t errlen);

/* The CPU backend. threads <= 0 uses all cores. Returns NULL with a message on failure. */
finc_backend *finc_backend_cpu_new(const finc_model *m, int max_batch, int threads,
                                   char *err, size_t errlen);

/* The CUDA backend (kernels/) is a shared module, libfinc-cuda.so, that the
 * Makefile builds where nvcc is. Nothing else links CUDA: the engine loads the
 * module with dlopen the first time CUDA is asked for (engine/cuda_module.c),
 * so a process that never asks maps no CUDA library. The module's one entry
 * point returns this table; the ABI number changes with the table or with
 * finc_backend or finc_model. */
#define FINC_CUDA_MODULE_ABI 2
#define FINC_CUDA_MODULE_SYMBOL "finc_cuda_module"
typedef struct {
    int abi;
    finc_backend *(*backend_new)(const finc_model *m, int max_batch, int device, finc_precision precision, char *err,
                                 size_t errlen);
    int (*device_count)(void);
    int (*describe)(int device, char *buf, size_t n);
} finc_cuda_module_api;

/* engine/cuda_module.c. The module is looked for at $FINC_CUDA_MODULE, then
 * beside the executable, in build/ beside it, and in ../lib/finc/. */
/* 1 when the module is loaded and a device answers; else 0, with why in why:
 * no module, a module that would not load (the loader's message: a missing
 * CUDA library, say), no driver, a driver too old for the runtime (both
 * versions), or no device. */
int finc_cuda_available(char *why, size_t n);
/* The NVIDIA driver branch a CUDA runtime version (CUDART_VERSION) needs. */
const char *finc_cuda_driver_needed(int runtime);
/* The module's path once loaded, else NULL. */
const char *finc_cuda_module_path(void);
/* Usable devices (0 without a module, driver or device), and one line each. */
int finc_cuda_devices(void);
int finc_cuda_device_text(int device, char *buf, size_t n);
/* The CUDA backend, through the module. device < 0 takes $FINC_CUDA_DEVICE or
 * 0. Weights are uploaded once and activations sized for max_batch. NULL with
 * a message when CUDA cannot be used (the reasons above, out of memory). */
finc_backend *finc_cuda_open(const finc_model *m, int max_batch, int device, finc_precision precision, char *err,
                             size_t errlen);

/* kernels/cuda_backend.cu: what the module's table points at
 * (tests/cuda/test_backend_ops and bench/cuda_bench also link the kernels
 * directly for their per-op work). */
finc_backend *finc_backend_cuda_new(const finc_model *m, int max_batch, int device, finc_precision precision,
                                    char *err, size_t errlen);
int finc_cuda_device_count(void);
int finc_cuda_describe(int device, char *buf, size_t n);

#endif
