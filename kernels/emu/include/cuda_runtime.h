/* CUDA on the CPU, for checking kernels/ where no GPU is (kernels/emu/check.sh).
 * Just the runtime API the backend uses: device memory is host memory, a
 * stream runs its work at once (or records it while a graph is captured), and
 * each thread of a block is a user-space fiber, so __syncthreads is exact.
 * Launches are checked as a GPU checks them (block size, grid size, dynamic
 * shared memory against the opt-in limit). Not a performance model. */
#ifndef FINC_EMU_CUDA_RUNTIME_H
#define FINC_EMU_CUDA_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef dim3 uint3;
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

void __syncthreads(void);
/* A barrier of the warp: emulated for blocks of one warp (32 threads), where
 * it is the block's barrier; anything else aborts. */
void __syncwarp(unsigned mask = 0xffffffffu);

static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDevice = 101,
    cudaErrorECCUncorrectable = 214,
    cudaErrorContained = 226,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchTimeout = 702,
    cudaErrorAssert = 710,
    cudaErrorHardwareStackError = 714,
    cudaErrorIllegalInstruction = 715,
    cudaErrorMisalignedAddress = 716,
    cudaErrorInvalidAddressSpace = 717,
    cudaErrorInvalidPc = 718,
    cudaErrorLaunchFailure = 719,
    cudaErrorTensorMemoryLeak = 721,
    cudaErrorMpsClientTerminated = 810,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorExternalDevice = 911,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal = 1 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 0x01

typedef struct emu_stream *cudaStream_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph *cudaGraphExec_t;
typedef struct emu_event *cudaEvent_t;
#define cudaHostAllocDefault 0x00
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
    char name[256];
    int multiProcessorCount, major, minor;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute a, int v);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
/* Pinned host memory is host memory; an event is recorded at once, since a
 * stream's work runs when it is issued (a recorded event may not be captured). */
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
/* nodes == NULL: *count is the number of nodes (each kernel, memset or GEMM one). */
cudaError_t cudaGraphGetNodes(cudaGraph_t g, void **nodes, size_t *count);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);

/* Stream work: run now, or append to the graph being captured on s. */
void emu_stream_work(cudaStream_t s, std::function<void()> work);

struct emu_config {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    emu_config(dim3 g, dim3 b, size_t m = 0, cudaStream_t s = 0) : grid(g), block(b), smem(m), stream(s) {}
};

/* Checks the configuration as the driver would (an error for cudaGetLastError),
 * then runs every block, each thread a fiber. kernel is the kernel's address
 * when known, for the dynamic shared memory opt-in. */
bool emu_launch_ok(const emu_config &c, const void *kernel);
void emu_run_grid(const emu_config &c, const std::function<void()> &thread_body);
void *emu_dynamic_smem(void);

template <class F, class... A>
void emu_launch(const emu_config &c, const void *kernel, F f, A... a)
{
    if (!emu_launch_ok(c, kernel)) return;
    emu_stream_work(c.stream, [=]() { emu_run_grid(c, [&]() { f(a...); }); });
}

/* kernels/emu/check.sh rewrites k<<<cfg>>>(args) to these. */
#define EMU_LAUNCH(cfg, k, ...) emu_launch(emu_config cfg, nullptr, [=](auto... emu_x) { k(emu_x...); }, __VA_ARGS__)
#define EMU_LAUNCH_PTR(cfg, k, ...) \
    emu_launch(emu_config cfg, (const void *)(k), [=](auto... emu_x) { k(emu_x...); }, __VA_ARGS__)

#endif
