/* The baseline the FInC inverse kernel is benchmarked against: the schedule of
 * the paper's public code (written here from its description, not its source),
 * one launch per (anti-diagonal, channel), each solving that channel at every
 * pixel of the diagonal for all images and quarters, with a device-wide
 * synchronise after every launch (or captured whole into one CUDA graph, its
 * fairest form). Not used by the engine. */
#include <stdlib.h>

#include "kernels/cuda.h"

__device__ __forceinline__ int bflip(int v, int n, int f) { return f ? n - 1 - v : v; }

/* x(co) at the pixels of diagonal d: y minus every tap except the current
 * pixel's on channels >= co, which are not solved yet. */
__global__ void finc_baseline_kernel(float *x, const float *y, const float *w0, const float *w1,
                                     const float *w2, const float *w3, int Cq, int B, int H, int W, int k,
                                     int d, int co, int h0, int n)
{
    const int total = 4 * B * n;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int q = t / (B * n), b = t / n % B, hp = h0 + t % n, wp = d - hp, fy = q >> 1, fx = q & 1;
        const float *w = q == 0 ? w0 : q == 1 ? w1 : q == 2 ? w2 : w3;
        const size_t HW = (size_t)H * W, cs = (size_t)B * HW, base = ((size_t)q * Cq * B + b) * HW;
        const size_t p = (size_t)bflip(hp, H, fy) * W + bflip(wp, W, fx);
        float acc = 0.0f;
        for (int ci = 0; ci < Cq; ci++)
            for (int a = 0; a < k; a++) {
                const int sh = hp - (k - 1) + a;
                if (sh < 0) continue;
                for (int j = 0; j < k; j++) {
                    const int sw = wp - (k - 1) + j;
                    if (sw < 0 || (a == k - 1 && j == k - 1 && ci >= co)) continue;
                    acc += w[(((size_t)co * Cq + ci) * k + a) * k + j] *
                           x[base + ci * cs + (size_t)bflip(sh, H, fy) * W + bflip(sw, W, fx)];
                }
            }
        x[base + co * cs + p] = y[base + co * cs + p] - acc;
    }
}

/* Queues the (H + W - 1) x C/4 launches on the backend's stream; with
 * sync_each, a device-wide synchronise after each. */
static void baseline_launches(finc_cuda_ctx *c, float *x, const float *y, const finc_step *st, int C, int B, int H,
                              int W, int k, int sync_each)
{
    const int Cq = C / 4;
    const float *w[4];
    for (int i = 0; i < 4; i++) w[i] = finc_cuda_weight(c, st->finc_tl[i]);
    for (int d = 0; d <= H + W - 2 && !c->failed; d++) {
        const int h0 = d - (W - 1) > 0 ? d - (W - 1) : 0, h1 = d < H - 1 ? d : H - 1, n = h1 - h0 + 1;
        for (int co = 0; co < Cq && !c->failed; co++) {
            finc_baseline_kernel<<<finc_cuda_blocks((size_t)4 * B * n), FINC_CUDA_THREADS, 0, c->stream>>>(
                x, y, w[0], w[1], w[2], w[3], Cq, B, H, W, k, d, co, h0, n);
            FINC_CUDA_LAUNCHED(c, "finc_baseline_kernel");
            if (sync_each) FINC_CUDA_TRY(c, cudaDeviceSynchronize());
        }
    }
}

static int baseline_result(finc_cuda_ctx *c, const char *what, char *err, size_t errlen)
{
    FINC_CUDA_TRY(c, cudaStreamSynchronize(c->stream));
    if (!c->failed) return 0;
    snprintf(err, errlen, "CUDA baseline (%s): %s", what, c->err);
    c->failed = 0;
    c->err[0] = 0;
    return -1;
}

extern "C" int finc_cuda_finc_inverse_baseline(finc_backend *be, float *x, const float *y, const finc_step *st,
                                               int C, int B, int H, int W, int k, int sync_each,
                                               char *err, size_t errlen)
{
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    finc_cuda_flush(c, 0);
    baseline_launches(c, x, y, st, C, B, H, W, k, sync_each);
    return baseline_result(c, sync_each ? "synced" : "unsynced", err, errlen);
}

struct finc_cuda_baseline_graph {
    cudaGraphExec_t exec;
    long nodes;
};

extern "C" finc_cuda_baseline_graph *finc_cuda_baseline_graph_new(finc_backend *be, float *x, const float *y,
                                                                  const finc_step *st, int C, int B, int H, int W,
                                                                  int k, char *err, size_t errlen)
{
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    finc_cuda_flush(c, 0);
    finc_cuda_baseline_graph *g = (finc_cuda_baseline_graph *)calloc(1, sizeof *g);
    cudaGraph_t graph = NULL;
    size_t nodes = 0;
    if (!g) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    if (FINC_CUDA_TRY(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal)) == 0) {
        baseline_launches(c, x, y, st, C, B, H, W, k, 0);
        if (FINC_CUDA_TRY(c, cudaStreamEndCapture(c->stream, &graph)) == 0 &&
            FINC_CUDA_TRY(c, cudaGraphGetNodes(graph, NULL, &nodes)) == 0)
            FINC_CUDA_TRY(c, cudaGraphInstantiate(&g->exec, graph, 0));
    }
    if (graph) (void)cudaGraphDestroy(graph);
    g->nodes = (long)nodes;
    if (baseline_result(c, "capture", err, errlen) != 0) {
        if (g->exec) (void)cudaGraphExecDestroy(g->exec);
        free(g);
        return NULL;
    }
    return g;
}

extern "C" long finc_cuda_baseline_graph_nodes(const finc_cuda_baseline_graph *g) { return g->nodes; }

extern "C" int finc_cuda_baseline_graph_run(finc_backend *be, finc_cuda_baseline_graph *g, int reps, char *err,
                                            size_t errlen)
{
    finc_cuda_ctx *c = finc_cuda_ctx_of(be);
    finc_cuda_flush(c, 0);
    for (int i = 0; i < reps && !c->failed; i++) FINC_CUDA_TRY(c, cudaGraphLaunch(g->exec, c->stream));
    return baseline_result(c, "graph", err, errlen);
}

extern "C" void finc_cuda_baseline_graph_free(finc_cuda_baseline_graph *g)
{
    if (!g) return;
    (void)cudaGraphExecDestroy(g->exec);
    free(g);
}
