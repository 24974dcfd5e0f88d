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

static void fail_v(finc_cuda_ctx *c, const char *file, int line, const char *fmt, va_list ap)
{
    if (c->failed) return;
    c->failed = 1;
    int n = snprintf(c->err, sizeof c->err, "%s:%d: ", file, line);
    if (n < 0 || (size_t)n >= sizeof c->err) return;
    vsnprintf(c->err + n, sizeof c->err - n, fmt, ap);
}

void finc_cuda_fail(finc_cuda_ctx *c, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(c, file, line, fmt, ap);
    va_end(ap);
}

int finc_cuda_error_sticky(cudaError_t e)
{
    switch (e) {
    case cudaErrorECCUncorrectable:
    case cudaErrorContained:
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorMpsClientTerminated:
    case cudaErrorExternalDevice:
        return 1;
    default:
        return 0;
    }
}

void finc_cuda_fail_code(finc_cuda_ctx *c, cudaError_t e, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (finc_cuda_error_sticky(e) && !c->dead) {
        c->dead = 1;
        va_list ap2;
        va_copy(ap2, ap);
        /* The error's name first: health checks show the start of this. */
        int n = snprintf(c->dead_err, sizeof c->dead_err, "%s (%s) at %s:%d: ", cudaGetErrorName(e),
                         cudaGetErrorString(e), file, line);
        if (n >= 0 && (size_t)n < sizeof c->dead_err) vsnprintf(c->dead_err + n, sizeof c->dead_err - n, fmt, ap2);
        va_end(ap2);
    }
    fail_v(c, file, line, fmt, ap);
    va_end(ap);
}

const char *finc_cublas_status_name(cublasStatus_t s) { return cublasLtGetStatusName(s); }

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

/* The kernel module's version (e.g. "580.82.07"), which names the driver
 * branch, from /proc/driver/nvidia/version; "" when it cannot be read. */
static void driver_module_version(char *buf, size_t n)
{
    buf[0] = 0;
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f) return;
    char line[512];
    if (fgets(line, sizeof line, f)) {
        const char *k = strstr(line, "Kernel Module");
        if (k && sscanf(k, "Kernel Module %31s", buf) != 1) buf[0] = 0;
    }
    fclose(f);
}

/* The driver branch a runtime needs: finc_cuda_driver_needed, in the executable
 * (engine/cuda_module.c), which also says it when no driver is there at all. */
static const char *driver_needed(int runtime) { return finc_cuda_driver_needed(runtime); }

extern "C" int finc_cuda_describe(int device, char *buf, size_t n)
{
    cudaDeviceProp p;
    int drv = 0, rt = 0;
    char module[40];
    driver_module_version(module, sizeof module);
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e == cudaSuccess) e = cudaDriverGetVersion(&drv);
    if (e == cudaSuccess) e = cudaRuntimeGetVersion(&rt);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int d = 0, r = 0;
        (void)cudaDriverGetVersion(&d);
        (void)cudaRuntimeGetVersion(&r);
        if (e == cudaErrorInsufficientDriver && d == 0)
            snprintf(buf, n, "no CUDA driver (libcuda.so.1 is not installed or not visible); this build's CUDA %d.%d "
                     "runtime needs driver %s", r / 1000, r % 1000 / 10, driver_needed(r));
        else if (e == cudaErrorInsufficientDriver)
            snprintf(buf, n, "the NVIDIA driver%s%s supports CUDA %d.%d, older than this build's CUDA %d.%d runtime, "
                     "which needs driver %s", module[0] ? " " : "", module, d / 1000, d % 1000 / 10, r / 1000,
                     r % 1000 / 10, driver_needed(r));
        else
            snprintf(buf, n, "device %d: %s (%s)", device, cudaGetErrorString(e), cudaGetErrorName(e));
        return -1;
    }
    snprintf(buf, n, "%s, %d SMs, %.1f GiB, compute %d.%d, %zu KiB shared/block, driver %s%s(CUDA %d.%d), "
             "runtime %d.%d (needs driver %s)", p.name, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0,
             p.major, p.minor, (size_t)p.sharedMemPerBlockOptin / 1024, module, module[0] ? " " : "", drv / 1000,
             drv % 1000 / 10, rt / 1000, rt % 1000 / 10, driver_needed(rt));
    return 0;
}

/* ---- shared helpers ---------------------------------------------------- */

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
    switch (op->kind) {
    case FINC_OP_ZERO:
        FINC_CUDA_TRY(c, cudaMemsetAsync(op->a.zero.dst, 0, op->a.zero.bytes, c->stream));
        break;
    case FINC_OP_PREPROCESS: {
        const auto &a = op->a.preprocess;
        op_preprocess(c, a.x, a.logdet, a.pixels, a.u, a.B, a.C, a.H, a.W, a.alpha);
        break;
    }
    case FINC_OP_POSTPROCESS: {
        const auto &a = op->a.postprocess;
        LAUNCH(c, postprocess_kernel, (size_t)a.B * a.C * a.H * a.W, a.pixels, a.x, a.B, a.H * a.W, a.C * a.H * a.W,
               a.alpha);
        break;
    }
    case FINC_OP_SQUEEZE:
    case FINC_OP_UNSQUEEZE: {
        const auto &a = op->a.squeeze;
        if (op->kind == FINC_OP_SQUEEZE)
            LAUNCH(c, squeeze_kernel, (size_t)a.C * a.B * a.H * a.W, a.out, a.in, a.C, a.B, a.H, a.W);
        else
            LAUNCH(c, unsqueeze_kernel, (size_t)a.C * a.B * a.H * a.W, a.out, a.in, a.C, a.B, a.H, a.W);
        break;
    }
    case FINC_OP_FINC_FORWARD:
    case FINC_OP_FINC_INVERSE: {
        const auto &a = op->a.finc;
        if (op->kind == FINC_OP_FINC_FORWARD) finc_cuda_finc_forward(c, a.out, a.in, a.st, a.C, a.B, a.H, a.W, a.k);
        else finc_cuda_finc_inverse(c, a.out, a.in, a.st, a.C, a.B, a.H, a.W, a.k);
        break;
    }
    case FINC_OP_ACTNORM_FORWARD:
    case FINC_OP_ACTNORM_INVERSE: {
        const auto &a = op->a.actnorm;
        const float *t = finc_cuda_weight(c, a.st->an_t), *s = finc_cuda_weight(c, a.st->an_s);
        if (op->kind == FINC_OP_ACTNORM_FORWARD)
            LAUNCH(c, actnorm_forward_kernel, (size_t)a.C * a.B * a.HW, a.x, t, s, a.C, (size_t)a.B * a.HW);
        else
            LAUNCH(c, actnorm_inverse_kernel, (size_t)a.C * a.B * a.HW, a.x, t, s, a.C, (size_t)a.B * a.HW);
        break;
    }
    case FINC_OP_CONV1X1_FORWARD:
    case FINC_OP_CONV1X1_INVERSE: {
        const auto &a = op->a.conv1x1;
        const int N = a.B * a.HW;
        if (N == 0) break;
        const float *w = op->kind == FINC_OP_CONV1X1_FORWARD ? a.st->w1x1 : a.st->w1x1_inv;
        finc_cuda_gemm_run(c, finc_cuda_gemms_of(c, a.C)->conv1x1, N, a.x, finc_cuda_weight(c, w), a.y, NULL);
        break;
    }
    case FINC_OP_COUPLING_FORWARD: {
        const auto &a = op->a.coupling;
        finc_cuda_coupling_forward(c, a.x, a.logdet, a.cp, a.B, a.H, a.W);
        break;
    }
    case FINC_OP_COUPLING_INVERSE: {
        const auto &a = op->a.coupling;
        finc_cuda_coupling_inverse(c, a.x, a.cp, a.B, a.H, a.W);
        break;
    }
    case FINC_OP_GAUSSIAN_LOGP: {
        const auto &a = op->a.gaussian_logp;
        const gaussian_op f = {a.z, a.B, a.HW};
        finc_cuda_reduce(c, a.logp, a.B, a.C * a.HW, f);
        break;
    }
    case FINC_OP_LATENTS_WRITE:
    case FINC_OP_LATENTS_READ: {
        const auto &a = op->a.latents;
        if (op->kind == FINC_OP_LATENTS_WRITE)
            LAUNCH(c, latents_write_kernel, (size_t)a.C * a.B * a.HW, a.dst, a.D, a.offset, a.src, a.C, a.B, a.HW);
        else
            LAUNCH(c, latents_read_kernel, (size_t)a.C * a.B * a.HW, a.dst, a.src, a.D, a.offset, a.C, a.B, a.HW);
        break;
    }
    default:
        FINC_CHECK(!"unknown CUDA op");
    }
    if (c->debug_sync) {
        const cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess)
            finc_cuda_fail_code(c, e, __FILE__, __LINE__, "op %s: %s (%s)", finc_cuda_op_name(op->kind),
                                cudaGetErrorString(e), cudaGetErrorName(e));
    }
}

static long reduce_launches(int B, int per_image)
{
    if (B <= 0 || per_image <= 0) return 0;
    return 1 + ((per_image + FINC_CUDA_CHUNK - 1) / FINC_CUDA_CHUNK > 1);
}

long finc_cuda_op_launches(const finc_cuda_op *op)
{
    switch (op->kind) {
    case FINC_OP_ZERO: return op->a.zero.bytes > 0;
    case FINC_OP_PREPROCESS: {
        const auto &a = op->a.preprocess;
        return reduce_launches(a.B, a.C * a.H * a.W);
    }
    case FINC_OP_POSTPROCESS: return (size_t)op->a.postprocess.B * op->a.postprocess.C * op->a.postprocess.H > 0;
    case FINC_OP_SQUEEZE:
    case FINC_OP_UNSQUEEZE: return (size_t)op->a.squeeze.C * op->a.squeeze.B * op->a.squeeze.H > 0;
    case FINC_OP_FINC_FORWARD:
    case FINC_OP_FINC_INVERSE: return op->a.finc.B > 0 && op->a.finc.C > 0;
    case FINC_OP_ACTNORM_FORWARD:
    case FINC_OP_ACTNORM_INVERSE: return (size_t)op->a.actnorm.C * op->a.actnorm.B * op->a.actnorm.HW > 0;
    case FINC_OP_CONV1X1_FORWARD:
    case FINC_OP_CONV1X1_INVERSE: return op->a.conv1x1.B * op->a.conv1x1.HW > 0;
    case FINC_OP_COUPLING_FORWARD:
    case FINC_OP_COUPLING_INVERSE: {
        const auto &a = op->a.coupling;
        if (a.B == 0) return 0;
        /* im2col, three GEMMs (bias and ReLU their epilogue), then the affine step */
        return 4 + (op->kind == FINC_OP_COUPLING_FORWARD ? reduce_launches(a.B, a.cp->cin * a.H * a.W) : 1);
    }
    case FINC_OP_GAUSSIAN_LOGP: return reduce_launches(op->a.gaussian_logp.B, op->a.gaussian_logp.C * op->a.gaussian_logp.HW);
    case FINC_OP_LATENTS_WRITE:
    case FINC_OP_LATENTS_READ: return (size_t)op->a.latents.C * op->a.latents.B * op->a.latents.HW > 0;
    }
    return 0;
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

static void cuda_submit(finc_backend *be)
{
    /* At a chain's end, as at a sync: the queue may replay as a graph. */
    finc_cuda_flush(enter(be), 1);
}

static void *cuda_host_alloc(finc_backend *be, size_t bytes)
{
    enter(be);
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();  /* out of pinned memory is not sticky */
        return NULL;
    }
    return p;
}

static void cuda_host_release(finc_backend *be, void *p)
{
    finc_cuda_ctx *c = enter(be);
    FINC_CUDA_TRY(c, cudaFreeHost(p));
}

/* On the copy stream, so it runs beside what the compute stream is running;
 * the compute stream's later work waits for it. */
static void cuda_upload_async(finc_backend *be, void *dst, const void *src, size_t bytes)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    if (FINC_CUDA_TRY(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy_stream)) == 0 &&
        FINC_CUDA_TRY(c, cudaEventRecord(c->copied, c->copy_stream)) == 0)
        FINC_CUDA_TRY(c, cudaStreamWaitEvent(c->stream, c->copied, 0));
}

static void cuda_zero(finc_backend *be, void *dst, size_t bytes)
{
    finc_cuda_op op = op_new(FINC_OP_ZERO);
    op.a.zero.dst = dst, op.a.zero.bytes = bytes;
    submit(be, &op);
}

static int cuda_sync(finc_backend *be, char *err, size_t errlen)
{
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 1);
    FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream));
    if (c->dead) {
        /* Every later call returns the same error: say so, and what it was. */
        snprintf(err, errlen, "CUDA backend: the device is in an unrecoverable error state, restart the process: %s",
                 c->dead_err);
        c->failed = 0;
        c->err[0] = 0;
        return -1;
    }
    if (!c->failed) return 0;
    snprintf(err, errlen, "CUDA backend: %s", c->err);
    /* Not sticky: this batch failed, the next one starts clean. */
    c->failed = 0;
    c->err[0] = 0;
    return -1;
}

static void cuda_preprocess(finc_backend *be, float *x, double *logdet, const uint8_t *pixels,
                            const float *u, int B, int C, int H, int W, double alpha)
{
    finc_cuda_op op = op_new(FINC_OP_PREPROCESS);
    auto &a = op.a.preprocess;
    a.x = x, a.logdet = logdet, a.pixels = pixels, a.u = u, a.B = B, a.C = C, a.H = H, a.W = W, a.alpha = alpha;
    submit(be, &op);
}

static void cuda_postprocess(finc_backend *be, uint8_t *pixels, const float *x,
                             int B, int C, int H, int W, double alpha)
{
    finc_cuda_op op = op_new(FINC_OP_POSTPROCESS);
    auto &a = op.a.postprocess;
    a.pixels = pixels, a.x = x, a.B = B, a.C = C, a.H = H, a.W = W, a.alpha = alpha;
    submit(be, &op);
}

static void squeeze_op(finc_backend *be, int kind, float *out, const float *in, int C, int B, int H, int W)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.squeeze;
    a.out = out, a.in = in, a.C = C, a.B = B, a.H = H, a.W = W;
    submit(be, &op);
}
static void cuda_squeeze(finc_backend *be, float *y, const float *x, int C, int B, int H, int W)
{
    squeeze_op(be, FINC_OP_SQUEEZE, y, x, C, B, H, W);
}
static void cuda_unsqueeze(finc_backend *be, float *x, const float *y, int C, int B, int H, int W)
{
    squeeze_op(be, FINC_OP_UNSQUEEZE, x, y, C, B, H, W);
}

static void finc_op(finc_backend *be, int kind, float *out, const float *in, const finc_step *st, int C, int B,
                    int H, int W, int k)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.finc;
    a.out = out, a.in = in, a.st = st, a.C = C, a.B = B, a.H = H, a.W = W, a.k = k;
    submit(be, &op);
}
static void cuda_finc_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                              int C, int B, int H, int W, int k)
{
    finc_op(be, FINC_OP_FINC_FORWARD, y, x, st, C, B, H, W, k);
}
static void cuda_finc_inverse(finc_backend *be, float *x, const float *y, const finc_step *st,
                              int C, int B, int H, int W, int k)
{
    finc_op(be, FINC_OP_FINC_INVERSE, x, y, st, C, B, H, W, k);
}

static void actnorm_op(finc_backend *be, int kind, float *x, const finc_step *st, int C, int B, int HW)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.actnorm;
    a.x = x, a.st = st, a.C = C, a.B = B, a.HW = HW;
    submit(be, &op);
}
static void cuda_actnorm_forward(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    actnorm_op(be, FINC_OP_ACTNORM_FORWARD, x, st, C, B, HW);
}
static void cuda_actnorm_inverse(finc_backend *be, float *x, const finc_step *st, int C, int B, int HW)
{
    actnorm_op(be, FINC_OP_ACTNORM_INVERSE, x, st, C, B, HW);
}

static void conv1x1_op(finc_backend *be, int kind, float *y, const float *x, const finc_step *st, int C, int B,
                       int HW)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.conv1x1;
    a.y = y, a.x = x, a.st = st, a.C = C, a.B = B, a.HW = HW;
    submit(be, &op);
}
static void cuda_conv1x1_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                                 int C, int B, int HW)
{
    conv1x1_op(be, FINC_OP_CONV1X1_FORWARD, y, x, st, C, B, HW);
}
static void cuda_conv1x1_inverse(finc_backend *be, float *y, const float *x, const finc_step *st,
                                 int C, int B, int HW)
{
    conv1x1_op(be, FINC_OP_CONV1X1_INVERSE, y, x, st, C, B, HW);
}

static void coupling_op(finc_backend *be, int kind, float *x, double *logdet, const finc_coupling *cp, int B, int H,
                        int W)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.coupling;
    a.x = x, a.logdet = logdet, a.cp = cp, a.B = B, a.H = H, a.W = W;
    submit(be, &op);
}
static void cuda_coupling_forward(finc_backend *be, float *x, double *logdet, const finc_coupling *cp,
                                  int B, int H, int W)
{
    coupling_op(be, FINC_OP_COUPLING_FORWARD, x, logdet, cp, B, H, W);
}
static void cuda_coupling_inverse(finc_backend *be, float *x, const finc_coupling *cp, int B, int H, int W)
{
    coupling_op(be, FINC_OP_COUPLING_INVERSE, x, NULL, cp, B, H, W);
}

static void cuda_gaussian_logp(finc_backend *be, double *logp, const float *z, int C, int B, int HW)
{
    finc_cuda_op op = op_new(FINC_OP_GAUSSIAN_LOGP);
    auto &a = op.a.gaussian_logp;
    a.logp = logp, a.z = z, a.C = C, a.B = B, a.HW = HW;
    submit(be, &op);
}

static void latents_op(finc_backend *be, int kind, float *dst, const float *src, int D, int offset, int C, int B,
                       int HW)
{
    finc_cuda_op op = op_new(kind);
    auto &a = op.a.latents;
    a.dst = dst, a.src = src, a.D = D, a.offset = offset, a.C = C, a.B = B, a.HW = HW;
    submit(be, &op);
}
static void cuda_latents_write(finc_backend *be, float *lat, int D, int offset, const float *z,
                               int C, int B, int HW)
{
    latents_op(be, FINC_OP_LATENTS_WRITE, lat, z, D, offset, C, B, HW);
}
static void cuda_latents_read(finc_backend *be, float *z, const float *lat, int D, int offset,
                              int C, int B, int HW)
{
    latents_op(be, FINC_OP_LATENTS_READ, z, lat, D, offset, C, B, HW);
}

static int cuda_batch_bucket(finc_backend *be, int B) { return finc_cuda_graph_bucket(finc_cuda_ctx_of(be), B); }

static int cuda_warm_up(finc_backend *be, int (*warm)(void *, int, char *, size_t), void *user, char *err,
                        size_t errlen)
{
    return finc_cuda_graphs_warm_up(enter(be), warm, user, err, errlen);
}

static void cuda_status(finc_backend *be, finc_backend_status *s)
{
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    memset(s, 0, sizeof *s);
    s->dead = c->dead;
    if (c->dead) snprintf(s->why, sizeof s->why, "%s", c->dead_err);
    finc_cuda_graphs_status(c, s);
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
        dev_free(c, c->col);
        dev_free(c, c->h1);
        dev_free(c, c->h2);
        dev_free(c, c->taps);
        dev_free(c, c->partial);
        dev_free(c, c->block);
        finc_cuda_gemm_free(c);
        if (c->lt) FINC_CUBLAS_TRY(c, cublasLtDestroy(c->lt));
        dev_free(c, c->blas_ws);
        if (c->copied) FINC_CUDA_TRY(c, cudaEventDestroy(c->copied));
        if (c->copy_stream) FINC_CUDA_TRY(c, cudaStreamDestroy(c->copy_stream));
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
                                               finc_precision precision, char *err, size_t errlen)
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
    c->tf32 = precision == FINC_PRECISION_TF32;

    const finc_scratch_sizes sz = finc_model_scratch_sizes(m, max_batch);
    const int D = finc_config_dim(&m->cfg);
    /* Per-image chunks of the reductions; none is longer than D per image. */
    c->partial_n = (size_t)max_batch * ((D + FINC_CUDA_CHUNK - 1) / FINC_CUDA_CHUNK);
    const size_t ws_bytes = (size_t)32 << 20;

    if (FINC_CUDA_TRY(c, cudaSetDevice(device))) goto fail;
    if (FINC_CUDA_TRY(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking))) goto fail;
    if (FINC_CUDA_TRY(c, cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking))) goto fail;
    if (FINC_CUDA_TRY(c, cudaEventCreateWithFlags(&c->copied, cudaEventDisableTiming))) goto fail;
    if (FINC_CUBLAS_TRY(c, cublasLtCreate(&c->lt))) goto fail;
    /* A fixed workspace lets a graph capture run cuBLASLt without allocating. */
    c->blas_ws_bytes = ws_bytes;
    if (dev_alloc(c, &c->blas_ws, ws_bytes, "the cuBLASLt workspace")) goto fail;
    if (dev_alloc(c, (void **)&c->block, m->block_floats * sizeof(float), "the weights")) goto fail;
    /* On the backend's stream: it does not wait for the legacy default stream,
     * and the kernels that derive from the weights must come after them. */
    if (FINC_CUDA_TRY(c, cudaMemcpyAsync(c->block, m->block, m->block_floats * sizeof(float),
                                         cudaMemcpyHostToDevice, c->stream)))
        goto fail;
    if (dev_alloc(c, (void **)&c->col, sz.col * sizeof(float), "coupling im2col scratch") ||
        dev_alloc(c, (void **)&c->h1, sz.hidden * sizeof(float), "coupling hidden activations") ||
        dev_alloc(c, (void **)&c->h2, sz.hidden * sizeof(float), "coupling hidden activations") ||
        dev_alloc(c, (void **)&c->taps, sz.taps * sizeof(float), "coupling conv3 taps") ||
        dev_alloc(c, (void **)&c->partial, c->partial_n * sizeof(double), "per-image sums"))
        goto fail;
    if (finc_cuda_finc_init(c)) goto fail;
    if (finc_cuda_graphs_init(c, !c->debug_sync && env_flag("FINC_CUDA_GRAPHS", 1))) goto fail;
    {
        int buckets[64];
        const int nb = finc_cuda_graph_buckets(c, buckets, 64);
        if (finc_cuda_gemm_init(c, buckets, nb)) goto fail;
    }
    if (FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream))) goto fail;

    *be = (finc_backend){
        .name = "cuda",
        .ctx = c,
        .alloc = cuda_alloc,
        .release = cuda_release,
        .upload = cuda_upload,
        .download = cuda_download,
        .zero = cuda_zero,
        .sync = cuda_sync,
        .submit = cuda_submit,
        .host_alloc = cuda_host_alloc,
        .host_release = cuda_host_release,
        .upload_async = cuda_upload_async,
        .preprocess = cuda_preprocess,
        .postprocess = cuda_postprocess,
        .squeeze = cuda_squeeze,
        .unsqueeze = cuda_unsqueeze,
        .finc_forward = cuda_finc_forward,
        .finc_inverse = cuda_finc_inverse,
        .actnorm_forward = cuda_actnorm_forward,
        .actnorm_inverse = cuda_actnorm_inverse,
        .conv1x1_forward = cuda_conv1x1_forward,
        .conv1x1_inverse = cuda_conv1x1_inverse,
        .coupling_forward = cuda_coupling_forward,
        .coupling_inverse = cuda_coupling_inverse,
        .gaussian_logp = cuda_gaussian_logp,
        .latents_write = cuda_latents_write,
        .latents_read = cuda_latents_read,
        .batch_bucket = cuda_batch_bucket,
        .warm_up = cuda_warm_up,
        .status = cuda_status,
        .destroy = cuda_destroy,
    };
    if (finc_backend_check_table(be, err, errlen) != 0) {
        cuda_destroy(be);
        return NULL;
    }
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

extern "C" void finc_cuda_set_finc_general(finc_backend *be, int general)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    c->finc_general = general != 0;
}

extern "C" void finc_cuda_set_smem_limit(finc_backend *be, size_t bytes)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    finc_cuda_ctx *c = enter(be);
    finc_cuda_flush(c, 0);
    c->smem_limit = bytes == 0 || bytes > c->smem_device ? c->smem_device : bytes;
}

/* ---- the module's entry point (engine/backend.h) ------------------------ */

extern "C" const finc_cuda_module_api *finc_cuda_module(void)
{
    static const finc_cuda_module_api api = {FINC_CUDA_MODULE_ABI, finc_backend_cuda_new, finc_cuda_device_count,
                                             finc_cuda_describe};
    return &api;
}
