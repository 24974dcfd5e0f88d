/* The CPU stand-in for the CUDA runtime and cuBLAS (see include/cuda_runtime.h).
 * One device, "EMU"; blocks run one after another; a block's threads are
 * ucontext fibers on one OS thread, switched at __syncthreads. A kernel whose
 * thread 0 finishes without a barrier has none (a barrier must be reached by
 * every thread), so its other threads run as plain calls.
 * EMU_ORDER=reverse runs the blocks, and a block's threads between barriers,
 * last to first: a kernel whose threads read what others write between the
 * same two barriers (a race on a GPU) gives other results than in the
 * default order, so running the checks in both orders finds such races. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <map>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"

dim3 threadIdx, blockIdx, blockDim, gridDim;

static cudaError_t last_error = cudaSuccess;
static cudaError_t fail(cudaError_t e)
{
    if (last_error == cudaSuccess) last_error = e;
    return e;
}

static const size_t SMEM_DEFAULT = 48 * 1024, SMEM_OPTIN = 227 * 1024;

/* ---- errors and device ------------------------------------------------- */

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}
const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}
cudaError_t cudaGetLastError(void)
{
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaGetDeviceCount(int *n) { return *n = 1, cudaSuccess; }
cudaError_t cudaGetDevice(int *d) { return *d = 0, cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "EMU (kernels/emu: CUDA emulated on the CPU)");
    p->multiProcessorCount = 1, p->major = 9, p->minor = 0;
    p->totalGlobalMem = (size_t)16 << 30, p->sharedMemPerBlockOptin = SMEM_OPTIN;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) { return *v = 13000, cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int *v) { return *v = 13000, cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    if (a != cudaDevAttrMaxSharedMemoryPerBlockOptin) return fail(cudaErrorInvalidValue);
    return *v = (int)SMEM_OPTIN, cudaSuccess;
}

static std::map<const void *, int> smem_optin;  /* per kernel, cudaFuncSetAttribute */

cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute a, int v)
{
    if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || (size_t)v > SMEM_OPTIN)
        return fail(cudaErrorInvalidValue);
    smem_optin[f] = v;
    return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------ */

static std::map<void *, size_t> allocations;

cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!*p) return fail(cudaErrorMemoryAllocation);
    memset(*p, 0xA5, n);  /* device memory starts as garbage, not zeros */
    allocations[*p] = n;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    if (!allocations.erase(p)) {
        fprintf(stderr, "emu: cudaFree of %p, not a device allocation\n", p);
        return fail(cudaErrorInvalidValue);
    }
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    *total_b = (size_t)16 << 30;
    size_t used = 0;
    for (auto &a : allocations) used += a.second;
    *free_b = *total_b > used ? *total_b - used : 0;
    return cudaSuccess;
}

/* The device side of a copy must lie inside one allocation. */
static bool device_range(const void *p, size_t n, const char *what)
{
    auto it = allocations.upper_bound((void *)p);
    if (it != allocations.begin()) {
        --it;
        const char *b = (const char *)it->first;
        if ((const char *)p >= b && (const char *)p + n <= b + it->second) return true;
    }
    fprintf(stderr, "emu: %s of %zu bytes at %p is not inside a device allocation\n", what, n, p);
    return false;
}

/* ---- streams and graphs ------------------------------------------------ */

struct emu_stream {
    bool capturing;
    std::vector<std::function<void()>> *graph;
};
struct emu_graph {
    std::vector<std::function<void()>> work;
};

/* EMU_STATS=1: how much went through graphs, printed at exit. */
static unsigned long n_captures, n_graph_launches, n_graph_nodes;
static void print_stats(void)
{
    fprintf(stderr, "emu: %lu graphs captured, %lu graph launches replaying %lu nodes\n", n_captures,
            n_graph_launches, n_graph_nodes);
}
static struct stats_init {
    stats_init()
    {
        const char *v = getenv("EMU_STATS");
        if (v && *v == '1') atexit(print_stats);
    }
} stats_init_;

void emu_stream_work(cudaStream_t s, std::function<void()> work)
{
    if (s && s->capturing) s->graph->push_back(std::move(work));
    else work();
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k)
{
    if (!device_range(k == cudaMemcpyHostToDevice ? dst : src, n, "cudaMemcpy")) return fail(cudaErrorInvalidValue);
    memcpy(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s)
{
    if (s && s->capturing) return fail(cudaErrorStreamCaptureInvalidated);  /* host memory in a graph */
    return cudaMemcpy(dst, src, n, k);
}
cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s)
{
    if (!device_range(dst, n, "cudaMemsetAsync")) return fail(cudaErrorInvalidValue);
    emu_stream_work(s, [=]() { memset(dst, v, n); });
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    *s = new emu_stream{false, nullptr};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}
/* Faults on demand, for tests of the callers' error paths: while the file
 * named by EMU_FAULT_FILE holds a count above zero, each stream
 * synchronization takes one off and reports what a kernel fault would. Unlike
 * a real launch failure it is not sticky: the next call succeeds. */
static bool fault_due(void)
{
    const char *path = getenv("EMU_FAULT_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return false;
    long n = 0;
    const bool due = fscanf(f, "%ld", &n) == 1 && n > 0;
    fclose(f);
    if (due && (f = fopen(path, "w"))) {
        fprintf(f, "%ld\n", n - 1);
        fclose(f);
    }
    return due;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (s && s->capturing) return fail(cudaErrorStreamCaptureInvalidated);
    if (fault_due()) return cudaErrorLaunchFailure;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m)
{
    if (!s || s->capturing) return fail(cudaErrorInvalidValue);
    s->capturing = true;
    s->graph = new std::vector<std::function<void()>>();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!s || !s->capturing) return fail(cudaErrorInvalidValue);
    *g = new emu_graph{std::move(*s->graph)};
    n_captures++;
    delete s->graph;
    s->graph = nullptr;
    s->capturing = false;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags)
{
    *e = new emu_graph(*g);
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    delete e;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    if (s && s->capturing) return fail(cudaErrorInvalidValue);
    n_graph_launches++;
    n_graph_nodes += e->work.size();
    for (auto &w : e->work) w();
    return cudaSuccess;
}

/* ---- kernels ----------------------------------------------------------- */

bool emu_launch_ok(const emu_config &c, const void *kernel)
{
    const unsigned long long threads = (unsigned long long)c.block.x * c.block.y * c.block.z;
    bool ok = threads >= 1 && threads <= 1024 && c.block.z <= 64 && c.grid.x >= 1 && c.grid.y >= 1 &&
              c.grid.z >= 1 && c.grid.x <= 2147483647u && c.grid.y <= 65535 && c.grid.z <= 65535;
    if (!ok) {
        fprintf(stderr, "emu: bad launch grid (%u,%u,%u) block (%u,%u,%u)\n", c.grid.x, c.grid.y, c.grid.z,
                c.block.x, c.block.y, c.block.z);
        fail(cudaErrorInvalidConfiguration);
        return false;
    }
    size_t limit = SMEM_DEFAULT;
    auto it = kernel ? smem_optin.find(kernel) : smem_optin.end();
    if (it != smem_optin.end()) limit = (size_t)it->second;
    if (c.smem > limit) {
        fprintf(stderr, "emu: %zu bytes of dynamic shared memory, the kernel may use %zu\n", c.smem, limit);
        fail(cudaErrorInvalidValue);
        return false;
    }
    return true;
}

enum { F_READY, F_BARRIER, F_DONE };
struct fiber {
    ucontext_t ctx;
    char *stack;
    int state;
};
static const size_t FIBER_STACK = 256 * 1024;
static std::vector<fiber> fibers;
static ucontext_t scheduler;
static const std::function<void()> *body;
static unsigned current;
static bool in_fiber;
static std::vector<char> dyn_smem;

void *emu_dynamic_smem(void) { return dyn_smem.data(); }

void __syncthreads(void)
{
    if (!in_fiber) {
        fprintf(stderr, "emu: __syncthreads outside a kernel\n");
        abort();
    }
    fibers[current].state = F_BARRIER;
    swapcontext(&fibers[current].ctx, &scheduler);
}

static void fiber_main(void)
{
    (*body)();
    fibers[current].state = F_DONE;
}  /* returns to uc_link, the scheduler */

static void thread_index(unsigned t)
{
    threadIdx = dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y));
}

static void start_fiber(unsigned t)
{
    fiber &f = fibers[t];
    if (!f.stack) f.stack = (char *)malloc(FIBER_STACK);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = FIBER_STACK;
    f.ctx.uc_link = &scheduler;
    f.state = F_READY;
    makecontext(&f.ctx, fiber_main, 0);
}

static void resume(unsigned t)
{
    current = t;
    thread_index(t);
    in_fiber = true;
    swapcontext(&scheduler, &fibers[t].ctx);
    in_fiber = false;
}

static bool reverse_order(void)
{
    static const int r = [] {
        const char *v = getenv("EMU_ORDER");
        if (v && strcmp(v, "reverse") && strcmp(v, "forward")) {
            fprintf(stderr, "emu: EMU_ORDER must be forward or reverse, got '%s'\n", v);
            exit(2);
        }
        return v && !strcmp(v, "reverse");
    }();
    return r;
}

/* The i-th of n to run. */
static unsigned nth(unsigned i, unsigned n) { return reverse_order() ? n - 1 - i : i; }

static void run_block(unsigned nt)
{
    if (fibers.size() < nt) fibers.resize(nt, fiber{});
    const unsigned first = nth(0, nt);
    start_fiber(first);
    resume(first);
    if (fibers[first].state == F_DONE) {
        for (unsigned i = 1; i < nt; i++) {
            thread_index(nth(i, nt));
            (*body)();
        }
        return;
    }
    for (unsigned t = 0; t < nt; t++)
        if (t != first) start_fiber(t);
    for (;;) {
        for (unsigned i = 0; i < nt; i++)
            if (fibers[nth(i, nt)].state == F_READY) resume(nth(i, nt));
        unsigned done = 0;
        for (unsigned t = 0; t < nt; t++) done += fibers[t].state == F_DONE;
        if (done == nt) return;
        if (done) {
            fprintf(stderr, "emu: %u of %u threads left the kernel while the others wait at __syncthreads\n", done, nt);
            abort();
        }
        for (unsigned t = 0; t < nt; t++) fibers[t].state = F_READY;
    }
}

void emu_run_grid(const emu_config &c, const std::function<void()> &thread_body)
{
    const std::function<void()> *saved = body;
    body = &thread_body;
    gridDim = c.grid;
    blockDim = c.block;
    dyn_smem.assign(c.smem ? c.smem : 1, (char)0xA5);
    const unsigned nt = c.block.x * c.block.y * c.block.z;
    const unsigned nb = c.grid.x * c.grid.y * c.grid.z;
    for (unsigned i = 0; i < nb; i++) {
        const unsigned b = nth(i, nb);
        blockIdx = dim3(b % c.grid.x, b / c.grid.x % c.grid.y, b / (c.grid.x * c.grid.y));
        run_block(nt);
    }
    body = saved;
}

/* ---- cuBLAS ------------------------------------------------------------ */

struct emu_blas {
    cudaStream_t stream;
};
cublasStatus_t cublasCreate(cublasHandle_t *h) { return *h = new emu_blas{nullptr}, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { return delete h, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { return h->stream = s, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusName(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc)
{
    /* cuBLAS's argument checks (column-major leading dimensions). */
    const int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) || ldb < (rows_b > 1 ? rows_b : 1) ||
        ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!device_range(A, (size_t)lda * ((ta == CUBLAS_OP_N ? k : m) - 1) * 4 + (size_t)rows_a * 4, "sgemm A") ||
        !device_range(B, (size_t)ldb * ((tb == CUBLAS_OP_N ? n : k) - 1) * 4 + (size_t)rows_b * 4, "sgemm B") ||
        !device_range(C, (size_t)ldc * (n - 1) * 4 + (size_t)m * 4, "sgemm C"))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float a = *alpha, b = *beta;
    emu_stream_work(h->stream, [=]() {
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, a, A, lda, B, ldb, b, C, ldc);
    });
    return CUBLAS_STATUS_SUCCESS;
}
