/* Internals of the CUDA backend shared by the kernels/ .cu files: the context, the CUDA
 * error checks, the op records that the graph cache replays, and the launchers,
 * which mirror engine/cpu.h (same names with cuda for cpu, same arguments).
 *
 * Errors: a failed CUDA or cuBLAS call is recorded in the context with the
 * expression, file and line (the first one wins) and reported by be->sync,
 * which fails the request; the process stays up so a server can say why. A
 * sticky error (an illegal address, a launch failure, an uncorrectable ECC
 * error: finc_cuda_error_sticky) poisons the CUDA context for good: the
 * backend is then dead, every later sync fails with that error, and
 * be->status says so, so the server turns unhealthy at once. */
#ifndef FINC_KERNELS_CUDA_H
#define FINC_KERNELS_CUDA_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

extern "C" {
#include "engine/backend.h"
#include "engine/check.h"
}
#include "kernels/cuda_bench.h"

/* One backend op as called, kept so a chain can be replayed as a CUDA graph. */
enum finc_cuda_op_kind {
    FINC_OP_ZERO,
    FINC_OP_PREPROCESS,
    FINC_OP_POSTPROCESS,
    FINC_OP_SQUEEZE,
    FINC_OP_UNSQUEEZE,
    FINC_OP_FINC_FORWARD,
    FINC_OP_FINC_INVERSE,
    FINC_OP_ACTNORM_FORWARD,
    FINC_OP_ACTNORM_INVERSE,
    FINC_OP_CONV1X1_FORWARD,
    FINC_OP_CONV1X1_INVERSE,
    FINC_OP_COUPLING_FORWARD,
    FINC_OP_COUPLING_INVERSE,
    FINC_OP_GAUSSIAN_LOGP,
    FINC_OP_LATENTS_WRITE,
    FINC_OP_LATENTS_READ,
    FINC_OP_COUNT
};

/* Each op's arguments by name, as the backend table passes them. Records are
 * zeroed whole before they are filled (op_new), since the graph cache
 * compares them bytewise. */
typedef struct {
    int kind;                     /* enum finc_cuda_op_kind: which member of a */
    union {
        struct { void *dst; size_t bytes; } zero;
        struct { float *x; double *logdet; const uint8_t *pixels; const float *u; int B, C, H, W; double alpha; } preprocess;
        struct { uint8_t *pixels; const float *x; int B, C, H, W; double alpha; } postprocess;
        /* squeeze: out (4C, B, H/2, W/2) from in (C, B, H, W); unsqueeze the other way */
        struct { float *out; const float *in; int C, B, H, W; } squeeze;
        /* forward: out = y from in = x; inverse: out = x from in = y */
        struct { float *out; const float *in; const finc_step *st; int C, B, H, W, k; } finc;
        struct { float *x; const finc_step *st; int C, B, HW; } actnorm;
        struct { float *y; const float *x; const finc_step *st; int C, B, HW; } conv1x1;
        struct { float *x; double *logdet; const finc_coupling *cp; int B, H, W; } coupling;  /* logdet: forward */
        struct { double *logp; const float *z; int C, B, HW; } gaussian_logp;
        /* write: dst = rows of lat from src = z; read: dst = z from src = rows of lat */
        struct { float *dst; const float *src; int D, offset, C, B, HW; } latents;
    } a;
} finc_cuda_op;

struct finc_cuda_graphs;

/* A GEMM shape class with its pinned cuBLASLt algorithm (kernels/gemm.cu). */
typedef struct finc_cuda_gemm_plan finc_cuda_gemm_plan;
typedef struct {
    finc_cuda_gemm_plan *conv1, *conv2, *conv3, *conv1x1;
} finc_cuda_level_gemms;
#define FINC_CUDA_MAX_PLANS (4 * FINC_MAX_LEVELS)

typedef struct {
    const finc_model *m;
    int device, max_batch;
    cudaStream_t stream;
    cudaStream_t copy_stream;     /* upload_async: copies beside the compute stream */
    cudaEvent_t copied;           /* the last upload_async's copy, which the compute stream waits for */
    cublasLtHandle_t lt;
    void *blas_ws;                /* cuBLASLt workspace, so capture never allocates */
    size_t blas_ws_bytes;
    finc_cuda_gemm_plan *plans[FINC_CUDA_MAX_PLANS];
    int n_plans;
    finc_cuda_level_gemms level_gemms[FINC_MAX_LEVELS];
    float *block;                 /* device copy of m->block */
    /* coupling scratch, sized for the largest level at max_batch */
    float *col;                   /* (cin*9, B*HW) */
    float *h1, *h2;               /* (B*HW, F): pixel-major, so the bias is per row of cuBLASLt's D */
    float *taps;                  /* (cout*9, B*HW) */
    double *partial;              /* (B, chunks) per-image partial sums */
    size_t partial_n;
    size_t smem_limit;            /* dynamic shared memory one block may use */
    size_t smem_device;           /* ... as the device allows (finc_cuda_set_smem_limit lowers the other) */
    int finc_mode;                /* enum finc_cuda_finc_mode */
    int finc_general;             /* 1: the general-k FInC inverse kernel even for k = 3 (tests) */
    int tf32;                     /* FINC_PRECISION_TF32: the F x F GEMMs on TF32 tensor cores */
    int debug_sync;               /* $FINC_CUDA_SYNC=1: synchronise after every op */
    int failed;
    char err[512];
    int dead;                     /* a sticky error was seen: the context is unusable */
    char dead_err[384];
    struct finc_cuda_graphs *graphs;
} finc_cuda_ctx;

static inline finc_cuda_ctx *finc_cuda_ctx_of(finc_backend *be) { return (finc_cuda_ctx *)be->ctx; }

/* ---- error checks ------------------------------------------------------ */

void finc_cuda_fail(finc_cuda_ctx *c, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* finc_cuda_fail for a runtime error code: a sticky one also marks the backend dead. */
void finc_cuda_fail_code(finc_cuda_ctx *c, cudaError_t e, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* 1 for the errors after which, as the runtime documents them, "any further
 * CUDA work will return the same error" until the process restarts. */
int finc_cuda_error_sticky(cudaError_t e);

static inline int finc_cuda_try_rt(finc_cuda_ctx *c, cudaError_t e, const char *expr,
                                   const char *file, int line)
{
    if (e == cudaSuccess) return 0;
    finc_cuda_fail_code(c, e, file, line, "%s: %s (%s)", expr, cudaGetErrorString(e), cudaGetErrorName(e));
    return -1;
}

const char *finc_cublas_status_name(cublasStatus_t s);

static inline int finc_cuda_try_blas(finc_cuda_ctx *c, cublasStatus_t s, const char *expr,
                                     const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    finc_cuda_fail(c, file, line, "%s: %s", expr, finc_cublas_status_name(s));
    return -1;
}

/* Every CUDA runtime and cuBLAS call goes through one of these. */
#define FINC_CUDA_TRY(c, call) finc_cuda_try_rt((c), (call), #call, __FILE__, __LINE__)
#define FINC_CUBLAS_TRY(c, call) finc_cuda_try_blas((c), (call), #call, __FILE__, __LINE__)
/* After a kernel launch: a bad configuration shows here, a fault at the next sync. */
#define FINC_CUDA_LAUNCHED(c, kernel) \
    finc_cuda_try_rt((c), cudaGetLastError(), "launch of " kernel, __FILE__, __LINE__)

/* ---- shared helpers ---------------------------------------------------- */

static inline double finc_cuda_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define FINC_CUDA_THREADS 256

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned finc_cuda_blocks(size_t n)
{
    size_t b = (n + FINC_CUDA_THREADS - 1) / FINC_CUDA_THREADS;
    return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

/* The device copy of a weight: host pointers into m->block map by offset. */
static inline const float *finc_cuda_weight(const finc_cuda_ctx *c, const float *host)
{
    FINC_CHECK(host >= c->m->block && host < c->m->block + c->m->block_floats);
    return c->block + (host - c->m->block);
}

/* The GEMMs (kernels/gemm.cu): plans for every level's shapes at every batch
 * size in batches (0, or -1 with the context failed); one run of a plan with
 * its growing dimension g (the pixels B*H*W); bias for the plans that add it
 * and apply ReLU. */
int finc_cuda_gemm_init(finc_cuda_ctx *c, const int *batches, int nbatches);
void finc_cuda_gemm_free(finc_cuda_ctx *c);
void finc_cuda_gemm_run(finc_cuda_ctx *c, finc_cuda_gemm_plan *p, int g, const float *A, const float *B, float *D,
                        const float *bias);
/* The plans of the level with C channels. */
const finc_cuda_level_gemms *finc_cuda_gemms_of(const finc_cuda_ctx *c, int C);

/* Per-image sums in double, deterministic and independent of the batch:
 * block (chunk, b) sums f(b, i) over its chunk of i in [0, per_image) in a
 * fixed tree, and out[b] += the chunks in order. f may also write outputs. */
#define FINC_CUDA_CHUNK 4096

/* A shared-memory tree over the block (blockDim.x a power of two, at most
 * FINC_CUDA_THREADS): a fixed order, so sums repeat bit for bit. The result
 * is valid in thread 0. */
__device__ __forceinline__ double finc_block_sum(double v)
{
    __shared__ double buf[FINC_CUDA_THREADS];
    const unsigned t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) buf[t] += buf[t + h];
        __syncthreads();
    }
    return buf[0];
}

/* When there is one chunk per image the block adds to out[b] itself. */
template <class F>
__global__ void __launch_bounds__(FINC_CUDA_THREADS)
finc_reduce_kernel(double *out, double *partial, int per_image, int nchunk, F f)
{
    const int b = blockIdx.y, chunk = blockIdx.x;
    const int i0 = chunk * FINC_CUDA_CHUNK;
    const int i1 = per_image - i0 < FINC_CUDA_CHUNK ? per_image : i0 + FINC_CUDA_CHUNK;
    double s = 0.0;
    for (int i = i0 + (int)threadIdx.x; i < i1; i += blockDim.x) s += f(b, i);
    s = finc_block_sum(s);
    if (threadIdx.x == 0) {
        if (nchunk == 1) out[b] += s;
        else partial[(size_t)b * nchunk + chunk] = s;
    }
}

/* out[b] += partial[b][0..nchunk) in order (kernels/cuda_backend.cu). */
void finc_cuda_reduce_finish(finc_cuda_ctx *c, double *out, int nchunk, int B);

template <class F>
void finc_cuda_reduce(finc_cuda_ctx *c, double *out, int B, int per_image, F f)
{
    if (B <= 0 || per_image <= 0) return;
    const int nchunk = (per_image + FINC_CUDA_CHUNK - 1) / FINC_CUDA_CHUNK;
    FINC_CHECK(B <= 65535 && (size_t)B * nchunk <= c->partial_n);
    finc_reduce_kernel<<<dim3(nchunk, B), FINC_CUDA_THREADS, 0, c->stream>>>(out, c->partial, per_image,
                                                                              nchunk, f);
    if (FINC_CUDA_LAUNCHED(c, "finc_reduce_kernel") == 0 && nchunk > 1)
        finc_cuda_reduce_finish(c, out, nchunk, B);
}

/* ---- ops (kernels/finc.cu, kernels/coupling.cu) -------------------------- */

int finc_cuda_finc_init(finc_cuda_ctx *c);
void finc_cuda_finc_forward(finc_cuda_ctx *c, float *y, const float *x, const finc_step *st,
                            int C, int B, int H, int W, int k);
void finc_cuda_finc_inverse(finc_cuda_ctx *c, float *x, const float *y, const finc_step *st,
                            int C, int B, int H, int W, int k);

void finc_cuda_coupling_forward(finc_cuda_ctx *c, float *x, double *logdet, const finc_coupling *cp,
                                int B, int H, int W);
void finc_cuda_coupling_inverse(finc_cuda_ctx *c, float *x, const finc_coupling *cp,
                                int B, int H, int W);

/* ---- op queue and graph cache (kernels/cuda_graph.cu) -------------------- */

/* Runs one recorded op now (kernels/cuda_backend.cu). */
void finc_cuda_run_op(finc_cuda_ctx *c, const finc_cuda_op *op);
const char *finc_cuda_op_name(int kind);
/* The kernels, memsets and GEMMs that running op issues: the graph nodes it
 * should become, one per GEMM (kernels/cuda_backend.cu). */
long finc_cuda_op_launches(const finc_cuda_op *op);

/* enabled: chains between two syncs are queued and, from their second run,
 * replayed as CUDA graphs, at a few padded batch sizes (buckets: powers of
 * two up to max_batch, and max_batch); otherwise every op runs as it is
 * called, at the batch it is given. */
int finc_cuda_graphs_init(finc_cuda_ctx *c, int enabled);
/* The bucket a batch of B runs at, graphs or not: the GEMMs' algorithms are
 * pinned for these sizes. */
int finc_cuda_graph_bucket(const finc_cuda_ctx *c, int B);
/* The bucket sizes, for the GEMM plans. */
int finc_cuda_graph_buckets(const finc_cuda_ctx *c, int *out, int max);
/* be->warm_up: each bucket's chains run until captured (engine/backend.h). */
int finc_cuda_graphs_warm_up(finc_cuda_ctx *c, int (*warm)(void *, int, char *, size_t), void *user, char *err,
                             size_t errlen);
void finc_cuda_graphs_status(const finc_cuda_ctx *c, finc_backend_status *s);
void finc_cuda_graphs_free(finc_cuda_ctx *c);
void finc_cuda_submit(finc_cuda_ctx *c, const finc_cuda_op *op);
/* Runs what is queued; at_sync: the queue is a whole chain and may use a graph. */
void finc_cuda_flush(finc_cuda_ctx *c, int at_sync);

#endif
