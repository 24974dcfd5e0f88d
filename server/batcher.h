/* The batcher: bounded queues of sample and score jobs, merged into batches
 * of up to max_batch images (waiting at most max_delay), run one batch at a
 * time by an engine thread that owns the finc_engine. A libuv loop thread
 * owns the queues: it forms batches, splits large jobs across them, drops
 * jobs whose deadline passed (never run) or whose client hung up, and hands
 * each job's results back through its callback, which runs exactly once. */
#ifndef FINC_BATCHER_H
#define FINC_BATCHER_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "engine/flow.h"

typedef struct finc_metrics finc_metrics;   /* server/metrics.h */

typedef enum { FINC_JOB_SAMPLE = 0, FINC_JOB_SCORE = 1 } finc_job_kind;
#define FINC_JOB_KINDS 2

typedef enum {
    FINC_JOB_PENDING,
    FINC_JOB_OK,
    FINC_JOB_REJECTED,   /* the batcher shut down before the job ran */
    FINC_JOB_EXPIRED,    /* the deadline passed before the job's last chunk started, or would
                            have before the job could finish (then none of it ran) */
    FINC_JOB_CANCELLED,  /* the client hung up */
    FINC_JOB_FAILED,     /* the engine returned an error for the job's batch */
} finc_job_status;

typedef struct finc_job finc_job;
/* Runs on the batcher's loop thread, once per job; the batcher never touches
 * the job afterwards. Keep it short: hand the job back to its owner. */
typedef void (*finc_job_done_fn)(finc_job *job, void *user);

struct finc_job {
    /* set by the submitter */
    finc_job_kind kind;
    int n;                    /* images */
    float temperature;        /* sample */
    int samples;              /* score: <= 1 midpoint, else importance-weighted draws */
    uint64_t seed;            /* sample latents; score dequantization draws */
    const uint8_t *pixels;    /* score input (n, C, H, W) */
    uint8_t *images;          /* sample output (n, C, H, W) */
    double *logp;             /* score output (n,) nats */
    finc_anomaly_result *anomaly;  /* score output (n,) for a calibrated model, else NULL */
    double deadline;          /* finc_mono_now() seconds; 0 for none */
    int fd;                   /* client socket polled for hang-up, or -1 */
    finc_job_done_fn done;
    void *user;
    /* results, valid in done */
    finc_job_status status;
    char error[256];
    double queue_wait;        /* seconds from submit to its first batch */
    int batch_size;           /* the largest batch it ran in */
    /* private to the batcher */
    double t_submit;
    int next, finished, inflight, queued;
    finc_job *prev, *link;
};

/* The engine calls the batcher makes, all on its engine thread: the real
 * engine's (engine/flow.h) unless finc_batcher_opts.engine gives others, as
 * the batcher suite does with an engine whose batches it times, fails and
 * records. e is what open returned. */
typedef struct {
    void *(*open)(const char *weights, const finc_engine_opts *o, char *err, size_t errlen);
    void (*free)(void *e);
    const finc_model *(*model)(void *e);
    const char *(*backend)(void *e);
    void (*draw_latents)(void *e, uint64_t seed, uint64_t index, float temperature, float *row);
    int (*decode)(void *e, int n, const float *latents, uint8_t *pixels, char *err, size_t errlen);
    int (*score_anomaly)(void *e, int n, const uint8_t *pixels, double *logp, finc_anomaly_result *an, char *err,
                         size_t errlen);
    int (*score_keyed)(void *e, int n, const uint8_t *pixels, int samples, const uint64_t *seeds,
                       const uint64_t *indices, double *logp, char *err, size_t errlen);
    int (*warm_up)(void *e, char *err, size_t errlen);    /* before ready: a CUDA backend's graphs */
    void (*status)(void *e, finc_backend_status *st);     /* after each batch: graphs, a dead device */
} finc_batcher_engine;

typedef struct {
    const finc_batcher_engine *engine_calls;  /* NULL: the real engine */
    const char *weights;
    finc_engine_opts engine;  /* engine.max_batch is the batch limit */
    double max_delay;         /* seconds a partial batch waits for company */
    int queue_size;           /* passes (finc_job_cost) waiting per kind */
    double hangup_poll;       /* seconds between sweeps for hung-up clients; 0: 0.1 */
    int unhealthy_after;      /* failed batches in a row that make the engine failing; 0: never */
    /* Called once on the engine thread when the model has loaded, before
     * the batcher says ready (NULL: none). */
    void (*on_ready)(void *user, const finc_model *m, const char *backend);
    void *ready_user;
} finc_batcher_opts;

typedef struct finc_batcher finc_batcher;

static inline double finc_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Starts the loop and engine threads; the engine thread loads the weights.
 * metrics may be NULL. Returns NULL with err set when threads cannot start. */
finc_batcher *finc_batcher_start(const finc_batcher_opts *opts, finc_metrics *metrics,
                                 char *err, size_t errlen);
/* Cancels what is queued, waits for the running batch, joins, frees. */
void finc_batcher_stop(finc_batcher *b);

/* Where loading the weights stands. */
typedef enum { FINC_LOAD_FAILED = -1, FINC_LOADING = 0, FINC_READY = 1 } finc_load_state;
/* The message of a failure in err when non-NULL. */
finc_load_state finc_batcher_state(finc_batcher *b, char *err, size_t errlen);
/* Failed batches in a row once they reach opts.unhealthy_after, else 0; the
 * last batch's error in err. A batch that succeeds starts the count again. */
int finc_batcher_failing(finc_batcher *b, char *err, size_t errlen);
/* 1 once the engine's device is in an unrecoverable error state (a sticky
 * CUDA error): every batch fails until the process restarts; why in err. */
int finc_batcher_dead(finc_batcher *b, char *err, size_t errlen);
/* The backend's state as of its last batch (engine/backend.h). */
void finc_batcher_backend_status(finc_batcher *b, finc_backend_status *s);
/* Blocks until loaded (FINC_READY) or failed (FINC_LOAD_FAILED, message in err). */
finc_load_state finc_batcher_wait_ready(finc_batcher *b, char *err, size_t errlen);
/* Valid once ready; never changes afterwards. */
const finc_model *finc_batcher_model(finc_batcher *b);
const char *finc_batcher_backend(finc_batcher *b);

/* A job's cost in passes of an image through the flow: n, times the draws
 * of an importance-weighted score. */
long finc_job_cost(const finc_job *job);
/* Heavy jobs (over max_batch passes) may hold this much of a queue of
 * queue_size passes: the last quarter is kept for light ones. */
static inline long finc_heavy_limit(long queue_size) { return queue_size - queue_size / 4; }
/* Claims queue room for a job whose kind, n, samples and deadline are set
 * (the submit that follows queues it):
 * 0; -1 when its kind's queue holds too many passes (opts.queue_size; for a
 * heavy job, finc_heavy_limit of its heavy passes); -2 when the job alone
 * needs more engine time (*need_s, from the running cost of a pass in full
 * batches) than its deadline leaves.*/
int finc_batcher_reserve(finc_batcher *b, const finc_job *job, double *need_s);
/* Queues a job (its n images reserved). Its done callback runs later, on
 * the loop thread, never inside this call. */
void finc_batcher_submit(finc_batcher *b, finc_job *job);

/* Dispatch partial batches at once from now on (draining). */
void finc_batcher_flush(finc_batcher *b);
/* From now on every queued or newly submitted job ends REJECTED. */
void finc_batcher_close(finc_batcher *b);
/* Jobs reserved or submitted whose callback has not returned. */
int finc_batcher_pending(finc_batcher *b);
/* Passes waiting (reserved or queued, not yet in a batch) of a kind. */
long finc_batcher_depth(finc_batcher *b, finc_job_kind kind);

#endif
