/* The chains as CUDA graphs, without changing the engine: ops are queued as
 * records until the next sync, which sees the whole chain (an encode or a
 * decode of one batch size). A chain seen before is replayed from its graph,
 * one launch instead of hundreds; the first time it runs op by op, the second
 * time it is captured. The engine reuses its buffers, so a chain's records
 * (pointers and shapes included) repeat exactly for each batch size in use,
 * and batches are padded to a few bucket sizes so that a few graphs serve
 * every batch; be->warm_up captures them all before the first request.
 *
 * A graph is keyed by its records and by every setting that changes the work
 * captured from them (the FInC placement mode and kernel, the shared-memory
 * limit, the GEMM precision): a chain run under other settings is captured anew.
 *
 * Anything other than an op (upload, download, release) first runs what is
 * queued, so the order of work is the order of calls. A capture that fails is
 * logged and counted; its chain runs op by op, and no capture is tried again
 * for a back-off of 16 chains, doubling with each failure in a row (at most
 * 4096). Graphs already captured keep replaying. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"

#define GRAPH_MIN_OPS 8          /* shorter queues gain nothing from a graph */
#define BACKOFF_FIRST 16         /* chains without capture after a first failure */
#define BACKOFF_MAX 4096
#define MAX_BUCKETS 32

/* Everything besides the records that changes what a capture holds. */
typedef struct {
    int finc_mode, finc_general;
    int tf32;
    size_t smem_limit;
} graph_settings;

typedef struct {
    finc_cuda_op *ops;            /* the chain's records; NULL when the slot is free */
    int n;
    graph_settings set;
    cudaGraphExec_t exec;         /* NULL until the chain is seen a second time */
    uint64_t last_used;
} graph_slot;

struct finc_cuda_graphs {
    int enabled;
    finc_cuda_op *queue;
    int n, cap;
    graph_slot *slot;
    int nslots;
    uint64_t clock;
    int bucket[MAX_BUCKETS], nbuckets;
    long captured, replayed, capture_failures;
    long last_nodes, last_intended;  /* of the last capture: graph nodes, and what its ops intend */
    long all_nodes, all_intended, mismatched;  /* the same summed over every capture, and the captures
                                                  whose two differ */
    int failures_in_row;
    long backoff;                 /* chains left before capture is tried again */
    double warm_seconds, warm_mib;
};

static graph_settings settings_of(const finc_cuda_ctx *c)
{
    graph_settings s;
    memset(&s, 0, sizeof s);  /* compared bytewise */
    s.finc_mode = c->finc_mode;
    s.finc_general = c->finc_general;
    s.tf32 = c->tf32;
    s.smem_limit = c->smem_limit;
    return s;
}

int finc_cuda_graphs_init(finc_cuda_ctx *c, int enabled)
{
    c->graphs = (finc_cuda_graphs *)calloc(1, sizeof *c->graphs);
    finc_cuda_graphs *g = c->graphs;
    if (g) {
        for (int b = 1; b < c->max_batch && g->nbuckets < MAX_BUCKETS - 1; b *= 2) g->bucket[g->nbuckets++] = b;
        g->bucket[g->nbuckets++] = c->max_batch;
        /* Three chains per bucket (encode at the midpoint, encode with offsets,
         * decode), and room for the ones that tests and benchmarks add. */
        g->nslots = 3 * g->nbuckets + 16;
        g->slot = (graph_slot *)calloc((size_t)g->nslots, sizeof(graph_slot));
    }
    if (!g || !g->slot) {
        free(g);
        c->graphs = NULL;
        finc_cuda_fail(c, __FILE__, __LINE__, "out of host memory for the graph cache");
        return -1;
    }
    g->enabled = enabled;
    return 0;
}

int finc_cuda_graph_bucket(const finc_cuda_ctx *c, int B)
{
    const finc_cuda_graphs *g = c->graphs;
    if (!g || B <= 0) return B;
    for (int i = 0; i < g->nbuckets; i++)
        if (g->bucket[i] >= B) return g->bucket[i];
    return B;  /* over max_batch: the engine never asks */
}

static void slot_clear(finc_cuda_ctx *c, graph_slot *s)
{
    if (s->exec) FINC_CUDA_TRY(c, cudaGraphExecDestroy(s->exec));
    free(s->ops);
    memset(s, 0, sizeof *s);
}

void finc_cuda_graphs_free(finc_cuda_ctx *c)
{
    finc_cuda_graphs *g = c->graphs;
    if (!g) return;
    for (int i = 0; i < g->nslots; i++) slot_clear(c, &g->slot[i]);
    free(g->slot);
    free(g->queue);
    free(g);
    c->graphs = NULL;
}

static void run_all(finc_cuda_ctx *c, const finc_cuda_op *ops, int n)
{
    for (int i = 0; i < n; i++) finc_cuda_run_op(c, &ops[i]);
}

void finc_cuda_submit(finc_cuda_ctx *c, const finc_cuda_op *op)
{
    finc_cuda_graphs *g = c->graphs;
    if (!g || !g->enabled) {
        finc_cuda_run_op(c, op);
        return;
    }
    if (g->n == g->cap) {
        const int cap = g->cap ? 2 * g->cap : 512;
        finc_cuda_op *q = (finc_cuda_op *)realloc(g->queue, (size_t)cap * sizeof *q);
        if (!q) {  /* no room to queue: run in order instead */
            finc_cuda_flush(c, 0);
            finc_cuda_run_op(c, op);
            return;
        }
        g->queue = q;
        g->cap = cap;
    }
    g->queue[g->n++] = *op;
}

/* Records the chain into s->exec; 0, or -1 (logged, counted, backed off). */
static int capture(finc_cuda_ctx *c, graph_slot *s)
{
    finc_cuda_graphs *g = c->graphs;
    const int failed_before = c->failed;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        run_all(c, s->ops, s->n);
        e = cudaStreamEndCapture(c->stream, &graph);
    }
    size_t nodes = 0;
    if (e == cudaSuccess && c->failed == failed_before) e = cudaGraphGetNodes(graph, NULL, &nodes);
    if (e == cudaSuccess && c->failed == failed_before) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) (void)cudaGraphDestroy(graph);
    if (e == cudaSuccess && c->failed == failed_before) {
        s->exec = exec;
        g->captured++;
        g->failures_in_row = 0;
        g->last_nodes = (long)nodes;
        g->last_intended = 0;
        for (int i = 0; i < s->n; i++) g->last_intended += finc_cuda_op_launches(&s->ops[i]);
        g->all_nodes += g->last_nodes;
        g->all_intended += g->last_intended;
        g->mismatched += g->last_nodes != g->last_intended;
        return 0;
    }
    /* Not an error of the request: the chain runs op by op. A sticky error is
     * the exception; it stays recorded, and the sync reports it. */
    const cudaError_t last = cudaGetLastError();
    const cudaError_t why = e != cudaSuccess ? e : last;
    if (exec) (void)cudaGraphExecDestroy(exec);
    if (finc_cuda_error_sticky(why)) {
        finc_cuda_fail_code(c, why, __FILE__, __LINE__, "graph capture: %s (%s)", cudaGetErrorString(why),
                            cudaGetErrorName(why));
        return -1;
    }
    char msg[600];
    snprintf(msg, sizeof msg, "%s", e != cudaSuccess ? cudaGetErrorName(e) : c->err);
    if (!failed_before) {
        c->failed = 0;
        c->err[0] = 0;
    }
    g->capture_failures++;
    g->failures_in_row++;
    g->backoff = (long)BACKOFF_FIRST << (g->failures_in_row - 1 < 8 ? g->failures_in_row - 1 : 8);
    if (g->backoff > BACKOFF_MAX) g->backoff = BACKOFF_MAX;
    fprintf(stderr,
            "finc: CUDA graph capture of a chain of %d ops failed (%s); it runs op by op, captured graphs still "
            "replay, and capture is tried again after %ld more chains (%ld failures in all)\n",
            s->n, msg, g->backoff, g->capture_failures);
    return -1;
}

static graph_slot *find(finc_cuda_graphs *g, const graph_settings *set, const finc_cuda_op *ops, int n)
{
    for (int i = 0; i < g->nslots; i++)
        if (g->slot[i].ops && g->slot[i].n == n && memcmp(&g->slot[i].set, set, sizeof *set) == 0 &&
            memcmp(g->slot[i].ops, ops, (size_t)n * sizeof *ops) == 0)
            return &g->slot[i];
    return NULL;
}

/* A free slot or the least recently used one, emptied, holding a copy of ops. */
static graph_slot *remember(finc_cuda_ctx *c, const graph_settings *set, const finc_cuda_op *ops, int n)
{
    finc_cuda_graphs *g = c->graphs;
    graph_slot *s = &g->slot[0];
    for (int i = 0; i < g->nslots; i++) {
        if (!g->slot[i].ops) {
            s = &g->slot[i];
            break;
        }
        if (g->slot[i].last_used < s->last_used) s = &g->slot[i];
    }
    slot_clear(c, s);
    s->ops = (finc_cuda_op *)malloc((size_t)n * sizeof *ops);
    if (!s->ops) return NULL;
    memcpy(s->ops, ops, (size_t)n * sizeof *ops);
    s->n = n;
    s->set = *set;
    return s;
}

void finc_cuda_flush(finc_cuda_ctx *c, int at_sync)
{
    finc_cuda_graphs *g = c->graphs;
    if (!g || g->n == 0) return;
    const int n = g->n;
    g->n = 0;
    if (!at_sync || !g->enabled || n < GRAPH_MIN_OPS || c->dead) {
        run_all(c, g->queue, n);
        return;
    }
    const graph_settings set = settings_of(c);
    graph_slot *s = find(g, &set, g->queue, n);
    if (g->backoff > 0) g->backoff--;
    if (!s) {
        s = remember(c, &set, g->queue, n);
        if (s) s->last_used = ++g->clock;
        run_all(c, g->queue, n);
        return;
    }
    s->last_used = ++g->clock;
    if (!s->exec && (g->backoff > 0 || capture(c, s) != 0)) {
        run_all(c, g->queue, n);
        return;
    }
    if (FINC_CUDA_TRY(c, cudaGraphLaunch(s->exec, c->stream)) == 0) g->replayed++;
}

int finc_cuda_graph_buckets(const finc_cuda_ctx *c, int *out, int max)
{
    const finc_cuda_graphs *g = c->graphs;
    int n = 0;
    for (int i = 0; g && i < g->nbuckets && n < max; i++) out[n++] = g->bucket[i];
    return n;
}

extern "C" size_t finc_cuda_used_bytes(void);

int finc_cuda_graphs_warm_up(finc_cuda_ctx *c, int (*warm)(void *, int, char *, size_t), void *user, char *err,
                             size_t errlen)
{
    finc_cuda_graphs *g = c->graphs;
    if (!g || !g->enabled) return 0;
    const double t0 = finc_cuda_now();
    const size_t used0 = finc_cuda_used_bytes();
    /* The first round records each chain, the second captures it. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < g->nbuckets; i++)
            if (warm(user, g->bucket[i], err, errlen) != 0) return -1;
    g->warm_seconds = finc_cuda_now() - t0;
    g->warm_mib = ((double)finc_cuda_used_bytes() - (double)used0) / 1048576.0;
    return 0;
}

void finc_cuda_graphs_status(const finc_cuda_ctx *c, finc_backend_status *s)
{
    const finc_cuda_graphs *g = c->graphs;
    if (!g) return;
    s->graphs = g->enabled && g->backoff == 0 && !c->dead;
    s->graph_captures = g->captured;
    s->graph_replays = g->replayed;
    s->graph_capture_failures = g->capture_failures;
    s->buckets = g->nbuckets;
    s->warm_seconds = g->warm_seconds;
    s->warm_device_mib = g->warm_mib;
}

extern "C" void finc_cuda_graph_nodes(finc_backend *be, long *nodes, long *intended)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    const finc_cuda_graphs *g = ((finc_cuda_ctx *)be->ctx)->graphs;
    *nodes = g ? g->last_nodes : 0;
    *intended = g ? g->last_intended : 0;
}

extern "C" void finc_cuda_graph_node_totals(finc_backend *be, long *nodes, long *intended, long *mismatched)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    const finc_cuda_graphs *g = ((finc_cuda_ctx *)be->ctx)->graphs;
    *nodes = g ? g->all_nodes : 0;
    *intended = g ? g->all_intended : 0;
    *mismatched = g ? g->mismatched : 0;
}

extern "C" void finc_cuda_graph_counts(finc_backend *be, long *captured, long *replayed)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    const finc_cuda_graphs *g = ((finc_cuda_ctx *)be->ctx)->graphs;
    *captured = g ? g->captured : 0;
    *replayed = g ? g->replayed : 0;
}
