/* The chains as CUDA graphs, without changing the engine: ops are queued as
 * records until the next sync, which sees the whole chain (an encode or a
 * decode of one batch size). A chain seen before is replayed from its graph,
 * one launch instead of hundreds; the first time it runs op by op, the second
 * time it is captured. The engine reuses its buffers, so a chain's records
 * (pointers and shapes included) repeat exactly for each batch size in use.
 *
 * Anything other than an op (upload, download, release) first runs what is
 * queued, so the order of work is the order of calls. If capture fails for
 * any reason the cache turns itself off and ops run as they are called. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"

#define GRAPH_MIN_OPS 8      /* shorter queues gain nothing from a graph */
#define GRAPH_MAX_SLOTS 512  /* at most this many chains kept, least recently used out */

typedef struct {
    finc_cuda_op *ops;            /* the chain's records; NULL when the slot is free */
    int n;
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
    long captured, replayed;      /* for finc_cuda_graph_counts */
};

int finc_cuda_graphs_init(finc_cuda_ctx *c, int enabled)
{
    /* A server's batches come in every size up to max_batch, and each size has
     * three chains (encode at the midpoint, encode with offsets, decode): room
     * for all of them, so a steady load replays graphs only. */
    const int want = 3 * c->max_batch + 1;
    c->graphs = (finc_cuda_graphs *)calloc(1, sizeof *c->graphs);
    if (c->graphs) {
        c->graphs->nslots = want < 16 ? 16 : want > GRAPH_MAX_SLOTS ? GRAPH_MAX_SLOTS : want;
        c->graphs->slot = (graph_slot *)calloc((size_t)c->graphs->nslots, sizeof(graph_slot));
    }
    if (!c->graphs || !c->graphs->slot) {
        free(c->graphs);
        c->graphs = NULL;
        finc_cuda_fail(c, __FILE__, __LINE__, "out of host memory for the graph cache");
        return -1;
    }
    c->graphs->enabled = enabled;
    return 0;
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

/* Records the chain into s->exec; 0, or -1 with the cache switched off. */
static int capture(finc_cuda_ctx *c, graph_slot *s)
{
    const int failed_before = c->failed;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        run_all(c, s->ops, s->n);
        e = cudaStreamEndCapture(c->stream, &graph);
    }
    if (e == cudaSuccess && c->failed == failed_before) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) (void)cudaGraphDestroy(graph);
    if (e != cudaSuccess || c->failed != failed_before) {
        /* Not an error of the request: the ops run directly from now on. */
        (void)cudaGetLastError();
        if (exec) (void)cudaGraphExecDestroy(exec);
        if (!failed_before) {
            c->failed = 0;
            c->err[0] = 0;
        }
        c->graphs->enabled = 0;
        return -1;
    }
    s->exec = exec;
    c->graphs->captured++;
    return 0;
}

static graph_slot *find(finc_cuda_graphs *g, const finc_cuda_op *ops, int n)
{
    for (int i = 0; i < g->nslots; i++)
        if (g->slot[i].ops && g->slot[i].n == n && memcmp(g->slot[i].ops, ops, (size_t)n * sizeof *ops) == 0)
            return &g->slot[i];
    return NULL;
}

/* A free slot or the least recently used one, emptied, holding a copy of ops. */
static graph_slot *remember(finc_cuda_ctx *c, const finc_cuda_op *ops, int n)
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
    return s;
}

void finc_cuda_flush(finc_cuda_ctx *c, int at_sync)
{
    finc_cuda_graphs *g = c->graphs;
    if (!g || g->n == 0) return;
    const int n = g->n;
    g->n = 0;
    if (!at_sync || !g->enabled || n < GRAPH_MIN_OPS) {
        run_all(c, g->queue, n);
        return;
    }
    graph_slot *s = find(g, g->queue, n);
    if (!s) {
        s = remember(c, g->queue, n);
        if (s) s->last_used = ++g->clock;
        run_all(c, g->queue, n);
        return;
    }
    s->last_used = ++g->clock;
    if (!s->exec && capture(c, s) != 0) {
        run_all(c, g->queue, n);
        return;
    }
    if (FINC_CUDA_TRY(c, cudaGraphLaunch(s->exec, c->stream)) == 0) g->replayed++;
}

extern "C" void finc_cuda_graph_counts(finc_backend *be, long *captured, long *replayed)
{
    FINC_CHECK(be && be->name && strcmp(be->name, "cuda") == 0);
    const finc_cuda_graphs *g = ((finc_cuda_ctx *)be->ctx)->graphs;
    *captured = g ? g->captured : 0;
    *replayed = g ? g->replayed : 0;
}
