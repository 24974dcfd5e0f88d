/* What the CUDA checks (tests/cuda/test_backend_ops.c) and timings
 * (bench/cuda_bench.c) use beyond the backend table: graph and node counts,
 * device memory in use, switches that force the FInC inverse's placement,
 * kernel and shared-memory limit (so each is tested), and the
 * per-(diagonal, channel) FInC inverse of the paper's public code (the
 * baseline), synced or as one graph. C-callable. */
#ifndef FINC_CUDA_BENCH_H
#define FINC_CUDA_BENCH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "engine/backend.h"

/* Where the FInC inverse kernel keeps the quarter image and its kernel. */
enum finc_cuda_finc_mode {
    FINC_CUDA_FINC_AUTO = 0,      /* the most that fits in shared memory */
    FINC_CUDA_FINC_SMEM_BOTH,     /* image and weights in shared memory */
    FINC_CUDA_FINC_SMEM_IMAGE,    /* image in shared memory, weights from global */
    FINC_CUDA_FINC_SMEM_WEIGHTS,  /* image solved in place in global memory */
    FINC_CUDA_FINC_GLOBAL,        /* nothing in shared memory */
    FINC_CUDA_FINC_NMODES
};

/* Chains captured as CUDA graphs, and graph launches, since the backend
 * started. For checks of the graph cache. */
void finc_cuda_graph_counts(finc_backend *be, long *captured, long *replayed);

/* Device memory in use on the current device (total less free), in bytes;
 * 0 when it cannot be read. */
size_t finc_cuda_used_bytes(void);

/* Forces a placement on a CUDA backend (a placement that does not fit falls
 * back to the next smaller one). For tests and benchmarks. */
void finc_cuda_set_finc_mode(finc_backend *be, int mode);

/* general: the FInC inverse uses its general-k kernel even for k = 3 (the
 * k = 3 one is the default), so tests check both. */
void finc_cuda_set_finc_general(finc_backend *be, int general);

/* Lowers the dynamic shared memory the FInC inverse may use per block to
 * bytes (0: back to the device's limit), so the placement falls back as on
 * a smaller device. For tests. */
void finc_cuda_set_smem_limit(finc_backend *be, size_t bytes);

/* The FInC inverse as the public code schedules it: one launch per
 * (anti-diagonal, channel), all images and quarters in each launch, and, when
 * sync_each, a device-wide synchronise after every launch. x and y are device
 * tensors (C, B, H, W) of be. Returns 0, or -1 with a message. */
int finc_cuda_finc_inverse_baseline(finc_backend *be, float *x, const float *y, const finc_step *st,
                                    int C, int B, int H, int W, int k, int sync_each,
                                    char *err, size_t errlen);

/* The same launches captured once into a CUDA graph (the capture and
 * instantiation are timed by the caller, apart), replayed reps times per
 * run; its node count says how many launches it holds. */
typedef struct finc_cuda_baseline_graph finc_cuda_baseline_graph;
finc_cuda_baseline_graph *finc_cuda_baseline_graph_new(finc_backend *be, float *x, const float *y, const finc_step *st,
                                                       int C, int B, int H, int W, int k, char *err, size_t errlen);
long finc_cuda_baseline_graph_nodes(const finc_cuda_baseline_graph *g);
int finc_cuda_baseline_graph_run(finc_backend *be, finc_cuda_baseline_graph *g, int reps, char *err, size_t errlen);
void finc_cuda_baseline_graph_free(finc_cuda_baseline_graph *g);

/* Kernel launches (graph nodes) of the last chain captured, and how many
 * its ops intend: one per kernel, memset and GEMM. More nodes than intended
 * means a library added kernels (cuBLAS's split-K reduction, say). */
void finc_cuda_graph_nodes(finc_backend *be, long *nodes, long *intended);
/* The same summed over every chain captured so far (encode, encode with offsets and
 * decode, at every batch size), and how many chains' two counts differ. */
void finc_cuda_graph_node_totals(finc_backend *be, long *nodes, long *intended, long *mismatched);

#ifdef __cplusplus
}
#endif

#endif
