/* The CPU stand-in for the CUDA runtime and cuBLAS (see include/cuda_runtime.h).
 * One device, "EMU"; blocks run one after another; a block's threads are
 * ucontext fibers on one OS thread, switched at __syncthreads. A kernel whose
 * thread 0 finishes without a barrier has none (a barrier must be reached by
 * every thread), so its other threads run as plain calls.
 * EMU_ORDER=reverse runs the blocks, and a block's threads between barriers,
 * last to first: a kernel whose threads read what others write between the
 * same two barriers (a race on a GPU) gives other results than in the
 * default order, so running the checks in both orders finds such races. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <map>
#include <vector>

#include "cublasLt.h"
#include "cuda_runtime.h"

dim3 threadIdx, blockIdx, blockDim, gridDim;

static cudaError_t last_error = cudaSuccess;
/* A sticky error, once injected (EMU_FAULT_FILE), as the runtime has them:
 * every later call that can fail returns it, and cudaGetLastError does not
 * clear it. */
static cudaError_t sticky_error = cudaSuccess;
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
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    default: break;
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
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    default: break;
    }
    return "cudaErrorUnknown";
}
cudaError_t cudaGetLastError(void)
{
    if (sticky_error != cudaSuccess) return sticky_error;
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
/* EMU_DRIVER_VERSION (e.g. 12080): a driver older than the runtime, which
 * the runtime then refuses as it would on such a host. */
static int driver_version(void)
{
    const char *v = getenv("EMU_DRIVER_VERSION");
    return v && *v ? atoi(v) : 13000;
}
static bool driver_too_old(void) { return driver_version() < 13000; }

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 0;
    if (driver_too_old()) return fail(cudaErrorInsufficientDriver);
    return *n = 1, cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) { return *d = 0, cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (driver_too_old()) return fail(cudaErrorInsufficientDriver);
    if (d != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "EMU (kernels/emu: CUDA emulated on the CPU)");
    p->multiProcessorCount = 1, p->major = 9, p->minor = 0;
    p->totalGlobalMem = (size_t)16 << 30, p->sharedMemPerBlockOptin = SMEM_OPTIN;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) { return *v = driver_version(), cudaSuccess; }
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
    if (sticky_error != cudaSuccess) return sticky_error;
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
    if (sticky_error != cudaSuccess) return sticky_error;
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
    if (sticky_error != cudaSuccess) return sticky_error;
    if (!device_range(dst, n, "cudaMemsetAsync")) return fail(cudaErrorInvalidValue);
    emu_stream_work(s, [=]() { memset(dst, v, n); });
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    *s = new emu_stream{false, nullptr};
    return cudaSuccess;
}
struct emu_event {
    bool recorded;
};
static std::map<void *, size_t> pinned;

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags)
{
    if (sticky_error != cudaSuccess) return sticky_error;
    *p = malloc(n ? n : 1);
    if (!*p) return fail(cudaErrorMemoryAllocation);
    pinned[*p] = n;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p)
{
    if (!p) return cudaSuccess;
    if (!pinned.erase(p)) {
        fprintf(stderr, "emu: cudaFreeHost of %p, not from cudaHostAlloc\n", p);
        return fail(cudaErrorInvalidValue);
    }
    free(p);
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) { return *e = new emu_event{false}, cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { return delete e, cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    if (sticky_error != cudaSuccess) return sticky_error;
    if (s && s->capturing) return fail(cudaErrorStreamCaptureInvalidated);  /* not emulated in graphs */
    e->recorded = true;
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags)
{
    if (sticky_error != cudaSuccess) return sticky_error;
    if (!e->recorded) return fail(cudaErrorInvalidValue);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}
/* Faults on demand, for tests of the callers' error paths. The file named by
 * EMU_FAULT_FILE holds "COUNT [KIND]"; while COUNT is above zero, each event
 * of the kind takes one off and fails:
 *   transient (the default): a stream synchronization reports
 *     cudaErrorLaunchOutOfResources, an error the runtime does not document
 *     as sticky: the next call succeeds;
 *   sticky: a stream synchronization reports cudaErrorIllegalAddress, which
 *     from then on every call that can fail returns, as on a GPU whose
 *     context a kernel fault has poisoned;
 *   capture: cudaStreamEndCapture fails (cudaErrorStreamCaptureInvalidated). */
static bool fault_due(const char *kind)
{
    const char *path = getenv("EMU_FAULT_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return false;
    long n = 0;
    char k[32] = "transient";
    const int got = fscanf(f, "%ld %31s", &n, k);
    fclose(f);
    if (got < 1 || n <= 0) return false;
    if (strcmp(k, "transient") && strcmp(k, "sticky") && strcmp(k, "capture")) {
        fprintf(stderr, "emu: %s: kind '%s' is not transient, sticky or capture\n", path, k);
        exit(2);
    }
    if (strcmp(k, kind)) return false;
    if ((f = fopen(path, "w"))) {
        fprintf(f, "%ld %s\n", n - 1, k);
        fclose(f);
    }
    return true;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (sticky_error != cudaSuccess) return sticky_error;
    if (s && s->capturing) return fail(cudaErrorStreamCaptureInvalidated);
    if (fault_due("sticky")) return sticky_error = cudaErrorIllegalAddress;
    if (fault_due("transient")) return cudaErrorLaunchOutOfResources;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return sticky_error; }
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
    if (fault_due("capture")) {
        delete s->graph;
        s->graph = nullptr;
        s->capturing = false;
        *g = nullptr;
        return cudaErrorStreamCaptureInvalidated;
    }
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
cudaError_t cudaGraphGetNodes(cudaGraph_t g, void **nodes, size_t *count)
{
    if (!g || !count || nodes) return fail(cudaErrorInvalidValue);  /* only the count is emulated */
    *count = g->work.size();
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
    if (sticky_error != cudaSuccess) return sticky_error;
    if (s && s->capturing) return fail(cudaErrorInvalidValue);
    n_graph_launches++;
    n_graph_nodes += e->work.size();
    for (auto &w : e->work) w();
    return cudaSuccess;
}

/* ---- kernels ----------------------------------------------------------- */

bool emu_launch_ok(const emu_config &c, const void *kernel)
{
    if (sticky_error != cudaSuccess) return false;  /* cudaGetLastError returns it */
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

void __syncwarp(unsigned mask)
{
    if (blockDim.x * blockDim.y * blockDim.z != 32 || mask != 0xffffffffu) {
        fprintf(stderr, "emu: __syncwarp(0x%x) in a block of %u threads: emulated only for whole one-warp blocks\n", mask,
                blockDim.x * blockDim.y * blockDim.z);
        abort();
    }
    __syncthreads();
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

/* ---- cuBLASLt --------------------------------------------------------- */

struct emu_lt {
    int unused;
};
struct emu_lt_desc {
    cublasComputeType_t compute;
    cublasOperation_t ta, tb;
    cublasLtEpilogue_t epilogue;
    const float *bias;
};
struct emu_lt_layout {
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    uint64_t workspace;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) { return *h = new emu_lt{0}, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { return delete h, CUBLAS_STATUS_SUCCESS; }
const char *cublasLtGetStatusName(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t ct, cudaDataType_t scale)
{
    if ((ct != CUBLAS_COMPUTE_32F && ct != CUBLAS_COMPUTE_32F_FAST_TF32) || scale != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new emu_lt_desc{ct, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { return delete d, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t n)
{
    int32_t i32;
    uint32_t u32;
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (n != sizeof i32) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&i32, v, n);
        if (i32 != CUBLAS_OP_N && i32 != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
        (a == CUBLASLT_MATMUL_DESC_TRANSA ? d->ta : d->tb) = (cublasOperation_t)i32;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        if (n != sizeof u32) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&u32, v, n);
        if (u32 != CUBLASLT_EPILOGUE_DEFAULT && u32 != CUBLASLT_EPILOGUE_RELU_BIAS) return CUBLAS_STATUS_NOT_SUPPORTED;
        d->epilogue = (cublasLtEpilogue_t)u32;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (n != sizeof d->bias) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->bias, v, n);
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t t, uint64_t rows, uint64_t cols,
                                          int64_t ld)
{
    if (t != CUDA_R_32F || ld < (int64_t)(rows > 1 ? rows : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *l = new emu_lt_layout{rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return delete l, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    return *p = new emu_lt_pref{0}, CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { return delete p, CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a, const void *v, size_t n)
{
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (n != sizeof p->workspace) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->workspace, v, n);
        return CUBLAS_STATUS_SUCCESS;
    }
    return n == sizeof(uint32_t) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;  /* alignments */
}

/* op(A) m x k, op(B) k x n, C and D m x n: the shapes must agree. */
static bool lt_shapes(const emu_lt_desc *d, const emu_lt_layout *A, const emu_lt_layout *B, const emu_lt_layout *C,
                      const emu_lt_layout *D, uint64_t *m, uint64_t *n, uint64_t *k)
{
    const uint64_t am = d->ta == CUBLAS_OP_N ? A->rows : A->cols, ak = d->ta == CUBLAS_OP_N ? A->cols : A->rows;
    const uint64_t bk = d->tb == CUBLAS_OP_N ? B->rows : B->cols, bn = d->tb == CUBLAS_OP_N ? B->cols : B->rows;
    *m = am, *n = bn, *k = ak;
    return ak == bk && C->rows == am && C->cols == bn && D->rows == am && D->cols == bn;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A,
                                              cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C,
                                              cublasLtMatrixLayout_t D, cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned)
{
    uint64_t m, n, k;
    if (requested <= 0 || !lt_shapes(d, A, B, C, D, &m, &n, &k)) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&results[0], 0, sizeof results[0]);
    results[0].algo.data[0] = 1;
    /* As cuBLAS does for a small output with a long k: split k in parts. */
    results[0].algo.data[1] = k >= 32 && m * n <= 16384 ? 4 : 1;
    results[0].algo.data[2] = results[0].algo.data[1] > 1 ? CUBLASLT_REDUCTION_SCHEME_INPLACE : CUBLASLT_REDUCTION_SCHEME_NONE;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoConfigSetAttribute(cublasLtMatmulAlgo_t *algo, cublasLtMatmulAlgoConfigAttributes_t a,
                                                    const void *v, size_t n)
{
    if (a == CUBLASLT_ALGO_CONFIG_SPLITK_NUM && n == sizeof(int32_t)) {
        int32_t x;
        memcpy(&x, v, n);
        if (x < 1) return CUBLAS_STATUS_INVALID_VALUE;
        algo->data[1] = (uint64_t)x;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (a == CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME && n == sizeof(uint32_t)) {
        uint32_t x;
        memcpy(&x, v, n);
        algo->data[2] = x;
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A,
                                       cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D,
                                       const cublasLtMatmulAlgo_t *algo, cublasLtMatmulHeuristicResult_t *result)
{
    uint64_t m, n, k;
    if (!lt_shapes(d, A, B, C, D, &m, &n, &k) || algo->data[0] != 1 || algo->data[1] < 1 ||
        (algo->data[1] > 1) != (algo->data[2] != CUBLASLT_REDUCTION_SCHEME_NONE))
        return CUBLAS_STATUS_INVALID_VALUE;
    memset(result, 0, sizeof *result);
    result->algo = *algo;
    result->state = CUBLAS_STATUS_SUCCESS;
    return CUBLAS_STATUS_SUCCESS;
}

/* An FP32 value as a TF32 tensor core takes it: 10 mantissa bits, rounded
 * to nearest with ties away from zero (cvt.rna.tf32.f32). */
static float to_tf32(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&v, &u, 4);
    return v;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSize, cudaStream_t stream)
{
    uint64_t m, n, k;
    if (!lt_shapes(d, Adesc, Bdesc, Cdesc, Ddesc, &m, &n, &k) || !algo || algo->data[0] != 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const emu_lt_layout a = *Adesc, b = *Bdesc, dl = *Ddesc;
    auto span = [](const emu_lt_layout &l) { return ((size_t)l.ld * (l.cols - 1) + l.rows) * sizeof(float); };
    if (!device_range(A, span(a), "cublasLtMatmul A") || !device_range(B, span(b), "cublasLtMatmul B") ||
        !device_range(D, span(dl), "cublasLtMatmul D") || (C != D && C))
        return CUBLAS_STATUS_INVALID_VALUE;
    const bool relu_bias = d->epilogue == CUBLASLT_EPILOGUE_RELU_BIAS, tf32 = d->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    if (relu_bias && !device_range(d->bias, m * sizeof(float), "cublasLtMatmul bias")) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta, *bias = d->bias;
    const bool ta = d->ta == CUBLAS_OP_T, tb = d->tb == CUBLAS_OP_T;
    const uint64_t parts = algo->data[1];
    const float *pa = (const float *)A, *pb = (const float *)B;
    float *pd = (float *)D;
    emu_stream_work(stream, [=]() {
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t i = 0; i < m; i++) {
                float total = 0.0f;
                for (uint64_t part = 0; part < parts; part++) {
                    const uint64_t k0 = k * part / parts, k1 = k * (part + 1) / parts;
                    float acc = 0.0f;
                    for (uint64_t x = k0; x < k1; x++) {
                        float av = ta ? pa[i * a.ld + x] : pa[x * a.ld + i];
                        float bv = tb ? pb[x * b.ld + j] : pb[j * b.ld + x];
                        if (tf32) av = to_tf32(av), bv = to_tf32(bv);
                        acc += av * bv;
                    }
                    total += acc;
                }
                float v = al * total + (be != 0.0f ? be * pd[j * dl.ld + i] : 0.0f);
                if (relu_bias) v = v + bias[i] > 0.0f ? v + bias[i] : 0.0f;
                pd[j * dl.ld + i] = v;
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}
