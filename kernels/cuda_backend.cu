/* The CUDA backend: device memory, the element-wise ops, and the table that
 * joins them with the FInC unit (finc.cu), the coupling (coupling.cu) and the
 * graph cache (cuda_graph.cu). Each op mirrors engine/cpu_backend.c; tensors
 * are (C, B, H, W), see engine/backend.h. The weights block is uploaded once;
 * weight pointers of the host model map to it by offset. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"

/* ---- errors ------------------------------------------------------------ */

void finc_cuda_fail(finc_cuda_ctx *c, const char *file, int line, const char *fmt, ...)
{
    if (c->failed) return;
    c->failed = 1;
    int n = snprintf(c->err, sizeof c->err, "%s:%d: ", file, line);
    if (n < 0 || (size_t)n >= sizeof c->err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, sizeof c->err - n, fmt, ap);
    va_end(ap);
}

const char *finc_cublas_status_name(cublasStatus_t s) { return cublasGetStatusName(s); }

/* Makes the backend's device current on the calling thread: the engine may be
 * driven from a thread other than the one that created it. */
static finc_cuda_ctx *enter(finc_backend *be)
{
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != c->device) FINC_CUDA_TRY(c, cudaSetDevice(c->device));
    return c;
}

/* ---- device queries ---------------------------------------------------- */

extern "C" int finc_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" size_t finc_cuda_used_bytes(void)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return total_b - free_b;
}

extern "C" int finc_cuda_describe(int device, char *buf, size_t n)
{
    cudaDeviceProp p;
    int drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e == cudaSuccess) e = cudaDriverGetVersion(&drv);
    if (e == cudaSuccess) e = cudaRuntimeGetVersion(&rt);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int d = 0, r = 0;
        (void)cudaDriverGetVersion(&d);
        (void)cudaRuntimeGetVersion(&r);
        if (e == cudaErrorInsufficientDriver && d == 0)
            snprintf(buf, n, "no CUDA driver (libcuda.so.1 is not installed or not visible; the runtime is %d.%d)",
                     r / 1000, r % 1000 / 10);
        else if (e == cudaErrorInsufficientDriver)
            snprintf(buf, n, "the CUDA driver %d.%d is older than the runtime %d.%d this build needs", d / 1000,
                     d % 1000 / 10, r / 1000, r % 1000 / 10);
        else
            snprintf(buf, n, "device %d: %s (%s)", device, cudaGetErrorString(e), cudaGetErrorName(e));
        return -1;
    }
    snprintf(buf, n, "%s, %d SMs, %.1f GiB, compute %d.%d, %zu KiB shared/block, driver %d.%d, runtime %d.%d",
             p.name, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.major, p.minor,
             p.sharedMemPerBlockOptin / 1024, drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    return 0;
}

/* ---- shared helpers ---------------------------------------------------- */

void finc_cuda_sgemm(finc_cuda_ctx *c, int M, int N, int K, const float *A, int lda,
                     const float *B, int ldb, float *C, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    FINC_CUBLAS_TRY(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B, ldb, A, lda,
                                   &zero, C, ldc));
}

__global__ void reduce_finish_kernel(double *out, const double *partial, int nchunk, int B)
{
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < B; b += gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int j = 0; j < nchunk; j++) s += partial[(size_t)b * nchunk + j];
        out[b] += s;
    }
}

void finc_cuda_reduce_finish(finc_cuda_ctx *c, double *out, int nchunk, int B)
{
    reduce_finish_kernel<<<finc_cuda_blocks(B), FINC_CUDA_THREADS, 0, c->stream>>>(out, c->partial, nchunk, B);
    FINC_CUDA_LAUNCHED(c, "reduce_finish_kernel");
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

#define LAUNCH(c, kernel, n, ...)                                                            \
    do {                                                                                     \
        if ((n) == 0) break;                                                                 \
        kernel<<<finc_cuda_blocks(n), FINC_CUDA_THREADS, 0, (c)->stream>>>(__VA_ARGS__);     \
        FINC_CUDA_LAUNCHED(c, #kernel);                                                      \
    } while (0)

/* ---- pre- and post-processing ------------------------------------------- */

/* The _rn intrinsics keep nvcc from fusing into FMAs, so the logits round as
 * on the CPU: the preprocess is the one place where the last digits matter. */
struct preprocess_op {
    float *x;                     /* (C, B, H, W) */
    const uint8_t *pixels;        /* (B, C, H, W) */
    const float *u;               /* (B, C, H, W) or NULL */
    int B, HW, D;
    double alpha;
    __device__ double operator()(int b, int i) const
    {
        const size_t src = (size_t)b * D + i;
        const double v = pixels[src] + (u ? (double)u[src] : 0.5);
        const double s = __dmul_rn(__dadd_rn(__ddiv_rn(v, 256.0), alpha), __dsub_rn(1.0, 2.0 * alpha));
        const double l1 = log(s), l2 = log1p(-s);
        const int ch = i / HW, p = i % HW;
        x[((size_t)ch * B + b) * HW + p] = (float)(l1 - l2);
        return -l1 - l2;
    }
};

static void op_preprocess(finc_cuda_ctx *c, float *x, double *logdet, const uint8_t *pixels,
                          const float *u, int B, int C, int H, int W, double alpha)
{
    const preprocess_op f = {x, pixels, u, B, H * W, C * H * W, alpha};
    finc_cuda_reduce(c, logdet, B, C * H * W, f);
}

__global__ void postprocess_kernel(uint8_t *pixels, const float *x, int B, int HW, int D, double alpha)
{
    const size_t n = (size_t)B * D;
    GRID_STRIDE(i, n) {
        const int b = (int)(i / D), r = (int)(i % D), ch = r / HW, p = r % HW;
        const double y = x[((size_t)ch * B + b) * HW + p];
        const double s = __dsub_rn(__ddiv_rn(__ddiv_rn(1.0, __dadd_rn(1.0, exp(-y))), __dsub_rn(1.0, 2.0 * alpha)),
                                   alpha);
        const double v = floor(__dmul_rn(256.0, s));
        pixels[i] = (uint8_t)(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v);
    }
}

/* ---- squeeze ------------------------------------------------------------ */

/* New channel 4c + 2dy + dx holds pixel (2i+dy, 2j+dx) of channel c. One
 * thread per element of the squeezed tensor (4C, B, H/2, W/2). */
__global__ void squeeze_kernel(float *y, const float *x, int C, int B, int H, int W)
{
    const int H2 = H / 2, W2 = W / 2;
    const size_t plane = (size_t)H2 * W2, n = (size_t)4 * C * B * plane;
    GRID_STRIDE(i, n) {
        const size_t cb = i / plane;
        const int pp = (int)(i % plane), c4 = (int)(cb / B), b = (int)(cb % B);
        const int s = c4 & 3, ch = c4 >> 2, ii = pp / W2, jj = pp % W2;
        y[i] = x[((size_t)ch * B + b) * H * W + (size_t)(2 * ii + (s >> 1)) * W + 2 * jj + (s & 1)];
    }
}

/* One thread per element of the unsqueezed tensor (C, B, H, W). */
__global__ void unsqueeze_kernel(float *x, const float *y, int C, int B, int H, int W)
{
    const int H2 = H / 2, W2 = W / 2;
    const size_t plane = (size_t)H * W, n = (size_t)C * B * plane;
    GRID_STRIDE(i, n) {
        const size_t cb = i / plane;
        const int p = (int)(i % plane), ch = (int)(cb / B), b = (int)(cb % B);
        const int h = p / W, w = p % W, s = 2 * (h & 1) + (w & 1);
        x[i] = y[((size_t)(4 * ch + s) * B + b) * H2 * W2 + (size_t)(h >> 1) * W2 + (w >> 1)];
    }
}

/* ---- ActNorm ------------------------------------------------------------- */

__global__ void actnorm_forward_kernel(float *x, const float *t, const float *s, int C, size_t N)
{
    GRID_STRIDE(i, (size_t)C * N) {
        const int ch = (int)(i / N);
        x[i] = __fmul_rn(__fsub_rn(x[i], t[ch]), expf(-s[ch]));
    }
}

__global__ void actnorm_inverse_kernel(float *x, const float *t, const float *s, int C, size_t N)
{
    GRID_STRIDE(i, (size_t)C * N) {
        const int ch = (int)(i / N);
        x[i] = __fadd_rn(__fmul_rn(x[i], expf(s[ch])), t[ch]);
    }
}

/* ---- prior and latents ---------------------------------------------------- */

/* -z^2/2 per element: halving is exact, so the sum equals the CPU's -sum/2. */
struct gaussian_op {
    const float *z;               /* (C, B, HW) */
    int B, HW;
    __device__ double operator()(int b, int i) const
    {
        const double v = z[((size_t)(i / HW) * B + b) * HW + i % HW];
        return -0.5 * (v * v);
    }
};

__global__ void latents_write_kernel(float *lat, int D, int offset, const float *z, int C, int B, int HW)
{
    const size_t n = (size_t)C * B * HW;
    GRID_STRIDE(i, n) {
        const size_t cb = i / HW;
        const int p = (int)(i % HW), ch = (int)(cb / B), b = (int)(cb % B);
        lat[(size_t)b * D + offset + (size_t)ch * HW + p] = z[i];
    }
}

__global__ void latents_read_kernel(float *z, const float *lat, int D, int offset, int C, int B, int HW)
{
    const size_t n = (size_t)C * B * HW;
    GRID_STRIDE(i, n) {
        const size_t cb = i / HW;
        const int p = (int)(i % HW), ch = (int)(cb / B), b = (int)(cb % B);
        z[i] = lat[(size_t)b * D + offset + (size_t)ch * HW + p];
    }
}

/* ---- dispatch -------------------------------------------------------------- */

static const char *const op_names[FINC_OP_COUNT] = {
    "zero", "preprocess", "postprocess", "squeeze", "unsqueeze", "finc_forward", "finc_inverse",
    "actnorm_forward", "actnorm_inverse", "conv1x1_forward", "conv1x1_inverse", "coupling_forward",
    "coupling_inverse", "gaussian_logp", "latents_write", "latents_read"};

const char *finc_cuda_op_name(int kind)
{
    return kind >= 0 && kind < FINC_OP_COUNT ? op_names[kind] : "?";
}

void finc_cuda_run_op(finc_cuda_ctx *c, const finc_cuda_op *op)
{
    const int *a = op->i;
    void *p0 = (void *)op->p[0];
    const void *p1 = op->p[1];
    const finc_step *st = (const finc_step *)op->p[2];
    switch (op->kind) {
    case FINC_OP_ZERO:
        FINC_CUDA_TRY(c, cudaMemsetAsync(p0, 0, op->n, c->stream));
        break;
    case FINC_OP_PREPROCESS:
        op_preprocess(c, (float *)p0, (double *)p1, (const uint8_t *)op->p[2], (const float *)op->p[3],
                      a[0], a[1], a[2], a[3], op->d);
        break;
    case FINC_OP_POSTPROCESS:
        LAUNCH(c, postprocess_kernel, (size_t)a[0] * a[1] * a[2] * a[3], (uint8_t *)p0, (const float *)p1,
               a[0], a[2] * a[3], a[1] * a[2] * a[3], op->d);
        break;
    case FINC_OP_SQUEEZE:
        LAUNCH(c, squeeze_kernel, (size_t)a[0] * a[1] * a[2] * a[3], (float *)p0, (const float *)p1,
               a[0], a[1], a[2], a[3]);
        break;
    case FINC_OP_UNSQUEEZE:
        LAUNCH(c, unsqueeze_kernel, (size_t)a[0] * a[1] * a[2] * a[3], (float *)p0, (const float *)p1,
               a[0], a[1], a[2], a[3]);
        break;
    case FINC_OP_FINC_FORWARD:
        finc_cuda_finc_forward(c, (float *)p0, (const float *)p1, st, a[0], a[1], a[2], a[3], a[4]);
        break;
    case FINC_OP_FINC_INVERSE:
        finc_cuda_finc_inverse(c, (float *)p0, (const float *)p1, st, a[0], a[1], a[2], a[3], a[4]);
        break;
    case FINC_OP_ACTNORM_FORWARD:
        LAUNCH(c, actnorm_forward_kernel, (size_t)a[0] * a[1] * a[2], (float *)p0, finc_cuda_weight(c, st->an_t),
               finc_cuda_weight(c, st->an_s), a[0], (size_t)a[1] * a[2]);
        break;
    case FINC_OP_ACTNORM_INVERSE:
        LAUNCH(c, actnorm_inverse_kernel, (size_t)a[0] * a[1] * a[2], (float *)p0, finc_cuda_weight(c, st->an_t),
               finc_cuda_weight(c, st->an_s), a[0], (size_t)a[1] * a[2]);
        break;
    case FINC_OP_CONV1X1_FORWARD:
    case FINC_OP_CONV1X1_INVERSE: {
        const int C = a[0], N = a[1] * a[2];
        if (N == 0) break;
        const float *w = op->kind == FINC_OP_CONV1X1_FORWARD ? st->w1x1 : st->w1x1_inv;
        finc_cuda_sgemm(c, C, N, C, finc_cuda_weight(c, w), C, (const float *)p1, N, (float *)p0, N);
        break;
    }
    case FINC_OP_COUPLING_FORWARD:
        finc_cuda_coupling_forward(c, (float *)p0, (double *)p1, (const finc_coupling *)op->p[2], a[0], a[1], a[2]);
        break;
    case FINC_OP_COUPLING_INVERSE:
        finc_cuda_coupling_inverse(c, (float *)p0, (const finc_coupling *)op->p[2], a[0], a[1], a[2]);
        break;
    case FINC_OP_GAUSSIAN_LOGP: {
        const gaussian_op f = {(const float *)p1, a[1], a[2]};
        finc_cuda_reduce(c, (double *)p0, a[1], a[0] * a[2], f);
        break;
    }
    case FINC_OP_LATENTS_WRITE:
        LAUNCH(c, latents_write_kernel, (size_t)a[2] * a[3] * a[4], (float *)p0, a[0], a[1], (const float *)p1,
               a[2], a[3], a[4]);
        break;
    case FINC_OP_LATENTS_READ:
        LAUNCH(c, latents_read_kernel, (size_t)a[2] * a[3] * a[4], (float *)p0, (const float *)p1, a[0], a[1],
               a[2], a[3], a[4]);
        break;
    default:
        FINC_CHECK(!"unknown CUDA op");
    }
    if (c->debug_sync) {
        const cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess)
            finc_cuda_fail(c, __FILE__, __LINE__, "op %s (shape %d %d %d %d %d): %s (%s)", finc_cuda_op_name(op->kind),
                           a[0], a[1], a[2], a[3], a[4], cudaGetErrorString(e), cudaGetErrorName(e));
    }
}

/* ---- the table ----------------------------------------------------------- */

static finc_cuda_op op_new(int kind)
{
    finc_cuda_op op;
    memset(&op, 0, sizeof op);  /* the graph cache compares records bytewise */
    op.kind = kind;
    return op;
}

static void submit(finc_backend *be, const finc_cuda_op *op) { finc_cuda_submit(enter(be), op); }

static void *cuda_alloc(finc_backend *be, size_t bytes)
{
    enter(be);
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();  /* out of memory is not sticky; keep it out of the next check */
        return NULL;
    }
    return p;
}

static void cuda_release(finc_backend *be, void *p)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    FINC_CUDA_TRY(c, cudaFree(p));
}

static void cuda_upload(finc_backend *be, void *dst, const void *src, size_t bytes)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    /* From pageable memory this returns once src is staged, so the caller may reuse it. */
    FINC_CUDA_TRY(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
}

static void cuda_download(finc_backend *be, void *dst, const void *src, size_t bytes)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    FINC_CUDA_TRY(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream));
}

static void cuda_zero(finc_backend *be, void *dst, size_t bytes)
{
    finc_cuda_op op = op_new(FINC_OP_ZERO);
    op.p[0] = dst;
    op.n = bytes;
    submit(be, &op);
}

static int cuda_sync(finc_backend *be, char *err, size_t errlen)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 1);
    FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream));
    if (!c->failed) return 0;
    snprintf(err, errlen, "CUDA backend: %s", c->err);
    /* A sticky error (a kernel fault) comes back from the next call too. */
    c->failed = 0;
    c->err[0] = 0;
    return -1;
}

static void cuda_preprocess(finc_backend *be, float *x, double *logdet, const uint8_t *pixels,
                            const float *u, int B, int C, int H, int W, double alpha)
{
    finc_cuda_op op = op_new(FINC_OP_PREPROCESS);
    op.p[0] = x, op.p[1] = logdet, op.p[2] = pixels, op.p[3] = u;
    op.i[0] = B, op.i[1] = C, op.i[2] = H, op.i[3] = W;
    op.d = alpha;
    submit(be, &op);
}

static void cuda_postprocess(finc_backend *be, uint8_t *pixels, const float *x,
                             int B, int C, int H, int W, double alpha)
{
    finc_cuda_op op = op_new(FINC_OP_POSTPROCESS);
    op.p[0] = pixels, op.p[1] = x;
    op.i[0] = B, op.i[1] = C, op.i[2] = H, op.i[3] = W;
    op.d = alpha;
    submit(be, &op);
}

static void op4(finc_backend *be, int kind, void *out, const void *in, const void *w,
                int a0, int a1, int a2, int a3, int a4)
{
    finc_cuda_op op = op_new(kind);
    op.p[0] = out, op.p[1] = in, op.p[2] = w;
    op.i[0] = a0, op.i[1] = a1, op.i[2] = a2, op.i[3] = a3, op.i[4] = a4;
    submit(be, &op);
}

static void cuda_squeeze(finc_backend *be, float *y, const float *x, int C, int B, int H, int W)
{
    op4(be, FINC_OP_SQUEEZE, y, x, NULL, C, B, H, W, 0);
}
static void cuda_unsqueeze(finc_backend *be, float *x, const float *y, int C, int B, int H, int W)
{
    op4(be, FINC_OP_UNSQUEEZE, x, y, NULL, C, B, H, W, 0);
}
static void cuda_finc_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                              int C, int B, int H, int W, int k)
{
    op4(be, FINC_OP_FINC_FORWARD, y, x, st, C, B, H, W, k);
}
static void cuda_finc_inverse(finc_backend *be, float *x, const float *y, const finc_step *st,
                              int C, int B, int H, int W, int k)
{
    op4(be, FINC_OP_FINC_INVERSE, x, y, st, C, B, H, W, k);
}
static void cuda_actnorm_forward(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    op4(be, FINC_OP_ACTNORM_FORWARD, x, NULL, st, C, B, HW, 0, 0);
}
static void cuda_actnorm_inverse(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    op4(be, FINC_OP_ACTNORM_INVERSE, x, NULL, st, C, B, HW, 0, 0);
}
static void cuda_conv1x1_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                                 int C, int B, int HW)
{
    op4(be, FINC_OP_CONV1X1_FORWARD, y, x, st, C, B, HW, 0, 0);
}
static void cuda_conv1x1_inverse(finc_backend *be, float *y, const float *x, const finc_step *st,
                                 int C, int B, int HW)
{
    op4(be, FINC_OP_CONV1X1_INVERSE, y, x, st, C, B, HW, 0, 0);
}
static void cuda_coupling_forward(finc_backend *be, float *x, double *logdet, const finc_coupling *cp,
                                  int B, int H, int W)
{
    op4(be, FINC_OP_COUPLING_FORWARD, x, logdet, cp, B, H, W, 0, 0);
}
static void cuda_coupling_inverse(finc_backend *be, float *x, const finc_coupling *cp, int B, int H, int W)
{
    op4(be, FINC_OP_COUPLING_INVERSE, x, NULL, cp, B, H, W, 0, 0);
}
static void cuda_gaussian_logp(finc_backend *be, double *logp, const float *z, int C, int B, int HW)
{
    op4(be, FINC_OP_GAUSSIAN_LOGP, logp, z, NULL, C, B, HW, 0, 0);
}
static void cuda_latents_write(finc_backend *be, float *lat, int D, int offset, const float *z,
                               int C, int B, int HW)
{
    op4(be, FINC_OP_LATENTS_WRITE, lat, z, NULL, D, offset, C, B, HW);
}
static void cuda_latents_read(finc_backend *be, float *z, const float *lat, int D, int offset,
                              int C, int B, int HW)
{
    op4(be, FINC_OP_LATENTS_READ, z, lat, NULL, D, offset, C, B, HW);
}

/* ---- life cycle ------------------------------------------------------------ */

static void dev_free(finc_cuda_ctx *c, void *p)
{
    if (p) FINC_CUDA_TRY(c, cudaFree(p));
}

static void cuda_destroy(finc_backend *be)
{
    if (!be) return;
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    if (c) {
        if (c->stream) {
            enter(be);
            (void)cudaStreamSynchronize(c->stream);
        }
        finc_cuda_graphs_free(c);
        finc_cuda_coupling_free(c);
        dev_free(c, c->col);
        dev_free(c, c->h1);
        dev_free(c, c->h2);
        dev_free(c, c->taps);
        dev_free(c, c->partial);
        dev_free(c, c->block);
        if (c->blas) FINC_CUBLAS_TRY(c, cublasDestroy(c->blas));
        dev_free(c, c->blas_ws);
        if (c->stream) FINC_CUDA_TRY(c, cudaStreamDestroy(c->stream));
        free(c);
    }
    free(be);
}

/* cudaMalloc with a message that says what did not fit. */
static int dev_alloc(finc_cuda_ctx *c, void **p, size_t bytes, const char *what)
{
    const cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e == cudaSuccess) return 0;
    (void)cudaGetLastError();
    *p = NULL;
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    finc_cuda_fail(c, __FILE__, __LINE__, "cudaMalloc of %.1f MiB for %s: %s (%.1f of %.1f MiB free)",
                   bytes / 1048576.0, what, cudaGetErrorString(e), free_b / 1048576.0, total_b / 1048576.0);
    return -1;
}

static int env_flag(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) != 0 : dflt;
}

extern "C" finc_backend *finc_backend_cuda_new(const finc_model *m, int max_batch, int device,
                                               char *err, size_t errlen)
{
    if (max_batch < 1 || max_batch > 65535) {
        snprintf(err, errlen, "CUDA backend: max batch %d is outside 1..65535", max_batch);
        return NULL;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        char why[400] = "none found";
        if (e != cudaSuccess) finc_cuda_describe(0, why, sizeof why);  /* no driver, or one too old: which */
        snprintf(err, errlen, "CUDA backend: no usable CUDA device: %s", why);
        return NULL;
    }
    if (device < 0) {
        const char *v = getenv("FINC_CUDA_DEVICE");
        device = v && *v ? atoi(v) : 0;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "CUDA backend: device %d does not exist (%d found)", device, count);
        return NULL;
    }
    finc_backend *be = (finc_backend *)calloc(1, sizeof *be);
    finc_cuda_ctx *c = (finc_cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    be->ctx = c;
    be->destroy = cuda_destroy;
    c->m = m;
    c->device = device;
    c->max_batch = max_batch;
    c->debug_sync = env_flag("FINC_CUDA_SYNC", 0);
    c->finc_mode = FINC_CUDA_FINC_AUTO;

    /* Scratch for the largest level at max_batch, as the CPU backend sizes it. */
    size_t col = 0, h = 0, taps = 0;
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        const size_t N = (size_t)max_batch * lv->h * lv->w;
        const size_t cin = (size_t)lv->c / 2, cout = (size_t)lv->c, F = (size_t)m->cfg.width;
        if (cin * 9 * N > col) col = cin * 9 * N;
        if (F * N > h) h = F * N;
        if (cout * 9 * N > taps) taps = cout * 9 * N;
    }
    const int D = finc_config_dim(&m->cfg);
    /* Per-image chunks of the reductions; none is longer than D per image. */
    c->partial_n = (size_t)max_batch * ((D + FINC_CUDA_CHUNK - 1) / FINC_CUDA_CHUNK);
    const size_t ws_bytes = (size_t)32 << 20;

    if (FINC_CUDA_TRY(c, cudaSetDevice(device))) goto fail;
    if (FINC_CUDA_TRY(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking))) goto fail;
    if (FINC_CUBLAS_TRY(c, cublasCreate(&c->blas))) goto fail;
    if (FINC_CUBLAS_TRY(c, cublasSetStream(c->blas, c->stream))) goto fail;
    /* After cublasSetStream, which resets the workspace: a fixed workspace lets
     * a graph capture run cuBLAS without allocating. */
    if (dev_alloc(c, &c->blas_ws, ws_bytes, "the cuBLAS workspace")) goto fail;
    if (FINC_CUBLAS_TRY(c, cublasSetWorkspace(c->blas, c->blas_ws, ws_bytes))) goto fail;
    /* FP32 by default; $FINC_CUDA_TF32=1 trades ~3 digits for tensor-core GEMMs. */
    if (FINC_CUBLAS_TRY(c, cublasSetMathMode(c->blas, env_flag("FINC_CUDA_TF32", 0)
                                                          ? CUBLAS_TF32_TENSOR_OP_MATH
                                                          : CUBLAS_DEFAULT_MATH)))
        goto fail;
    if (dev_alloc(c, (void **)&c->block, m->block_floats * sizeof(float), "the weights")) goto fail;
    /* On the backend's stream: it does not wait for the legacy default stream,
     * and the kernels that derive from the weights must come after them. */
    if (FINC_CUDA_TRY(c, cudaMemcpyAsync(c->block, m->block, m->block_floats * sizeof(float),
                                         cudaMemcpyHostToDevice, c->stream)))
        goto fail;
    if (dev_alloc(c, (void **)&c->col, col * sizeof(float), "coupling im2col scratch") ||
        dev_alloc(c, (void **)&c->h1, h * sizeof(float), "coupling hidden activations") ||
        dev_alloc(c, (void **)&c->h2, h * sizeof(float), "coupling hidden activations") ||
        dev_alloc(c, (void **)&c->taps, taps * sizeof(float), "coupling conv3 taps") ||
        dev_alloc(c, (void **)&c->partial, c->partial_n * sizeof(double), "per-image sums"))
        goto fail;
    if (finc_cuda_coupling_init(c) || finc_cuda_finc_init(c)) goto fail;
    if (finc_cuda_graphs_init(c, !c->debug_sync && env_flag("FINC_CUDA_GRAPHS", 1))) goto fail;
    if (FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream))) goto fail;

    be->name = "cuda";
    be->alloc = cuda_alloc;
    be->release = cuda_release;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->zero = cuda_zero;
    be->sync = cuda_sync;
    be->preprocess = cuda_preprocess;
    be->postprocess = cuda_postprocess;
    be->squeeze = cuda_squeeze;
    be->unsqueeze = cuda_unsqueeze;
    be->finc_forward = cuda_finc_forward;
    be->finc_inverse = cuda_finc_inverse;
    be->actnorm_forward = cuda_actnorm_forward;
    be->actnorm_inverse = cuda_actnorm_inverse;
    be->conv1x1_forward = cuda_conv1x1_forward;
    be->conv1x1_inverse = cuda_conv1x1_inverse;
    be->coupling_forward = cuda_coupling_forward;
    be->coupling_inverse = cuda_coupling_inverse;
    be->gaussian_logp = cuda_gaussian_logp;
    be->latents_write = cuda_latents_write;
    be->latents_read = cuda_latents_read;
    return be;

fail:
    snprintf(err, errlen, "CUDA backend: %s", c->failed ? c->err : "initialisation failed");
    cuda_destroy(be);
    return NULL;
}

extern "C" void finc_cuda_set_finc_mode(finc_backend *be, int mode)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    FINC_CHECK(mode >= 0 && mode < FINC_CUDA_FINC_NMODES);
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    c->finc_mode = mode;
}

/* ---- the module's entry point (engine/backend.h) ------------------------ */

extern "C" const finc_cuda_module_api *finc_cuda_module(void)
{
    static const finc_cuda_module_api api = {FINC_CUDA_MODULE_ABI, finc_backend_cuda_new, finc_cuda_device_count,
                                             finc_cuda_describe};
    return &api;
}
