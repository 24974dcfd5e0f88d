#include "server/batcher.h"

#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "engine/check.h"
#include "server/metrics.h"

/* A run of images [i0, i0 + k) of one job, at offset off in the batch. */
typedef struct {
    finc_job *job;
    int i0, k, off;
    int failed;
} batch_seg;

typedef struct {
    finc_job_kind kind;
    int nseg, B;
    batch_seg *seg;           /* (max_batch,) */
    uint8_t *pix;             /* (max_batch, D): score input, sample output */
    double *logp;             /* (max_batch,) */
    finc_anomaly_result *an;  /* (max_batch,) */
    float *lat;               /* (max_batch, D) sample latents */
    uint64_t *seed, *index;   /* (max_batch,) score: each image's dequantization key */
    long passes;              /* images through the flow: an importance-weighted score counts its draws */
    double seconds;           /* the engine's time for the batch */
    char err[256];
} batch;

typedef struct {
    finc_job *head, *tail;
    long images;              /* undispatched images of the jobs in it */
} job_queue;

struct finc_batcher {
    finc_batcher_opts o;
    char *weights;
    finc_metrics *metrics;
    int max_batch;

    /* shared between threads, under mu */
    pthread_mutex_t mu;
    pthread_cond_t engine_cv, ready_cv;
    finc_load_state state;
    char load_err[512];
    finc_job *in_head, *in_tail;  /* submitted, not yet seen by the loop */
    long reserved_cost[FINC_JOB_KINDS];  /* passes (finc_job_cost) claimed and not yet dispatched or
                                            dropped, against opts.queue_size */
    long reserved_heavy[FINC_JOB_KINDS]; /* the part of it from heavy jobs (over max_batch passes) */
    double pass_s[FINC_JOB_KINDS];  /* engine seconds per pass in full batches, a running mean; 0 unknown */
    int pending;              /* jobs claimed whose callback has not returned */
    int stop, closing, flush;
    int closed;               /* the loop's handles are closing: no more uv_async_send */
    int failed_in_row;        /* batches with a failed engine call since the last good one */
    char fail_err[256];
    finc_backend_status status; /* the backend's, as of its last batch */
    batch *to_engine;         /* handed to the engine thread */
    batch *returned;          /* handed back by it */

    /* engine thread */
    const finc_batcher_engine *calls;  /* opts.engine_calls, or the real engine's */
    void *engine;             /* owned and touched only by the engine thread */
    const finc_model *model;  /* set before state turns FINC_READY, read-only afterwards */
    const char *backend;
    int D;

    /* loop thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t timer, sweep;
    job_queue q[FINC_JOB_KINDS];
    batch batch;
    int busy;                 /* the batch is with the engine */
    struct pollfd *pfd;       /* (pfd_cap,) for hang-up sweeps */
    finc_job **pjob;
    int pfd_cap;

    uv_thread_t loop_thread, engine_thread;
};

/* Wakes the loop thread; mu held, so the handle cannot be closing under us. */
static void wake_locked(finc_batcher *b)
{
    if (!b->closed) uv_async_send(&b->wake);
}

/* Draws per image of a score job: 1 for the midpoint. */
static int draws(const finc_job *j) { return j->kind == FINC_JOB_SCORE && j->samples > 1 ? j->samples : 1; }

long finc_job_cost(const finc_job *j) { return (long)j->n * draws(j); }

/* Takes the passes of images of a job off the claimed counts. */
static void unclaim(finc_batcher *b, const finc_job *j, int images)
{
    pthread_mutex_lock(&b->mu);
    b->reserved_cost[j->kind] -= (long)images * draws(j);
    if (finc_job_cost(j) > b->max_batch) b->reserved_heavy[j->kind] -= (long)images * draws(j);
    pthread_mutex_unlock(&b->mu);
}

/* ---- queues (loop thread) ------------------------------------------------ */

static void q_push(job_queue *q, finc_job *j)
{
    j->link = NULL;
    j->prev = q->tail;
    if (q->tail) q->tail->link = j;
    else q->head = j;
    q->tail = j;
    q->images += j->n - j->next;
    j->queued = 1;
}

static void q_remove(job_queue *q, finc_job *j)
{
    if (j->prev) j->prev->link = j->link;
    else q->head = j->link;
    if (j->link) j->link->prev = j->prev;
    else q->tail = j->prev;
    q->images -= j->n - j->next;
    j->prev = j->link = NULL;
    j->queued = 0;
}

/* ---- job endings (loop thread) ------------------------------------------- */

/* Runs the callback; the job is gone afterwards. */
static void job_complete(finc_batcher *b, finc_job *j)
{
    j->done(j, j->user);
    pthread_mutex_lock(&b->mu);
    b->pending--;
    pthread_mutex_unlock(&b->mu);
}

/* Ends a job that has not succeeded: takes its remaining images off the
 * queue and calls back once no chunk of it is with the engine. */
static void job_end(finc_batcher *b, finc_job *j, finc_job_status st, const char *msg)
{
    if (j->status != FINC_JOB_PENDING) return;
    j->status = st;
    snprintf(j->error, sizeof j->error, "%s", msg);
    const int undispatched = j->n - j->next;
    if (j->queued) q_remove(&b->q[j->kind], j);
    if (undispatched > 0) unclaim(b, j, undispatched);
    if (b->metrics) {
        finc_drop_reason why = st == FINC_JOB_EXPIRED     ? FINC_DROP_EXPIRED
                               : st == FINC_JOB_CANCELLED ? FINC_DROP_CANCELLED
                               : st == FINC_JOB_FAILED    ? FINC_DROP_FAILED
                                                          : FINC_DROP_SHUTDOWN;
        finc_metrics_dropped(b->metrics, j->kind, why, j->n - j->finished);
    }
    if (j->inflight == 0) job_complete(b, j);
}

/* Has the peer closed or reset the connection? A half-close counts: HTTP/1.1
 * clients do not half-close while they wait for an answer. */
static int client_gone(int fd)
{
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static void sweep_hangups(finc_batcher *b)
{
    int n = 0;
    for (int k = 0; k < FINC_JOB_KINDS; k++)
        for (finc_job *j = b->q[k].head; j && n < b->pfd_cap; j = j->link)
            if (j->fd >= 0) {
                b->pfd[n] = (struct pollfd){.fd = j->fd, .events = POLLRDHUP};
                b->pjob[n++] = j;
            }
    if (n == 0 || poll(b->pfd, (nfds_t)n, 0) <= 0) return;
    for (int i = 0; i < n; i++)
        if (b->pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
            job_end(b, b->pjob[i], FINC_JOB_CANCELLED, "the client closed the connection");
}

/* ---- batches ------------------------------------------------------------- */

/* Midpoint scores first, then importance-weighted ones grouped by their
 * number of draws; arrival order within each. */
static int seg_cmp_by_draws(const void *a, const void *c)
{
    const batch_seg *x = a, *y = c;
    if (draws(x->job) != draws(y->job)) return draws(x->job) - draws(y->job);
    return x->off - y->off;
}

/* Fills the batch from kind's queue, taking from its jobs in turn. A batch
 * holds at most max_batch passes (but always one image), so a batch costs
 * about the same whatever it holds, and a job's remaining images go to the
 * back of the queue after each turn: requests share the engine round-robin
 * and a light one never waits behind all of a heavy one's work. A job that
 * has not started and could not finish before its deadline even alone is
 * ended instead of begun. Returns images taken. */
static int batch_form(finc_batcher *b, finc_job_kind kind, double now)
{
    batch *bt = &b->batch;
    job_queue *q = &b->q[kind];
    bt->kind = kind;
    bt->nseg = bt->B = 0;
    bt->passes = 0;
    bt->err[0] = '\0';
    pthread_mutex_lock(&b->mu);
    const double pass_s = b->pass_s[kind];
    pthread_mutex_unlock(&b->mu);
    while (q->head && bt->B < b->max_batch) {
        finc_job *j = q->head;
        if (client_gone(j->fd)) {
            job_end(b, j, FINC_JOB_CANCELLED, "the client closed the connection");
            continue;
        }
        const double need = (double)(j->n - j->next) * draws(j) * pass_s;
        if (j->next == 0 && j->deadline > 0 && now + need > j->deadline) {
            char msg[160];
            snprintf(msg, sizeof msg, "its deadline would pass before it could finish (it needs about %.3g s of engine time)",
                     need);
            job_end(b, j, FINC_JOB_EXPIRED, msg);
            continue;
        }
        const long room = b->max_batch - bt->passes;
        if (bt->B > 0 && room < draws(j)) break;
        int k = j->n - j->next < b->max_batch - bt->B ? j->n - j->next : b->max_batch - bt->B;
        if ((long)k * draws(j) > room) k = room / draws(j) > 0 ? (int)(room / draws(j)) : 1;
        if (j->next == 0) {
            j->queue_wait = now - j->t_submit;
            if (b->metrics) finc_metrics_queue_wait(b->metrics, kind, j->queue_wait);
        }
        bt->seg[bt->nseg++] = (batch_seg){.job = j, .i0 = j->next, .k = k, .off = bt->B};
        bt->B += k;
        bt->passes += (long)k * draws(j);
        j->inflight++;
        q_remove(q, j);  /* takes the job's undispatched images off the count */
        j->next += k;
        unclaim(b, j, k);
        if (j->next < j->n) q_push(q, j);  /* the rest waits its next turn */
    }
    for (int s = 0; s < bt->nseg; s++)
        if (bt->seg[s].job->batch_size < bt->B) bt->seg[s].job->batch_size = bt->B;
    if (kind == FINC_JOB_SCORE && bt->nseg > 0) {
        /* One engine call per number of draws: the midpoint scores, then the
         * importance-weighted ones, each image's draws keyed by its request's
         * (seed, index). */
        qsort(bt->seg, (size_t)bt->nseg, sizeof bt->seg[0], seg_cmp_by_draws);
        const size_t D = (size_t)b->D;
        int off = 0;
        for (int s = 0; s < bt->nseg; s++) {
            batch_seg *sg = &bt->seg[s];
            sg->off = off;
            memcpy(bt->pix + (size_t)off * D, sg->job->pixels + (size_t)sg->i0 * D, (size_t)sg->k * D);
            for (int i = 0; i < sg->k; i++) {
                bt->seed[off + i] = sg->job->seed;
                bt->index[off + i] = (uint64_t)(sg->i0 + i);
            }
            off += sg->k;
        }
    }
    return bt->B;
}

/* The segment holding image i of the batch (segments sit in order of off). */
static const batch_seg *seg_of(const batch *bt, int i)
{
    int lo = 0, hi = bt->nseg - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (bt->seg[mid].off <= i) lo = mid;
        else hi = mid - 1;
    }
    return &bt->seg[lo];
}

/* Engine thread: runs every engine call of a batch. Returns 1 when one failed. */
static int batch_run(finc_batcher *b, batch *bt)
{
    int failed = 0;
    void *e = b->engine;
    const finc_batcher_engine *ec = b->calls;
    const size_t D = (size_t)b->D;
    const double t0 = finc_mono_now();
    if (b->status.dead) {  /* read on this thread only, which writes it */
        snprintf(bt->err, sizeof bt->err, "the engine is dead (restart the process): %.200s", b->status.why);
        for (int s = 0; s < bt->nseg; s++) bt->seg[s].failed = 1;
        return 1;
    }
    if (bt->kind == FINC_JOB_SAMPLE) {
        /* The latents finc_sample would draw for each image, keyed by its
         * request's (seed, index), so a batch of many requests is one decode;
         * one row per thread, as finc_sample draws them. */
#pragma omp parallel for schedule(static) if (bt->B > 1)
        for (int i = 0; i < bt->B; i++) {
            const batch_seg *sg = seg_of(bt, i);
            ec->draw_latents(e, sg->job->seed, (uint64_t)(sg->i0 + i - sg->off), sg->job->temperature,
                              bt->lat + (size_t)i * D);
        }
        if (ec->decode(e, bt->B, bt->lat, bt->pix, bt->err, sizeof bt->err) != 0) {
            failed = 1;
            for (int s = 0; s < bt->nseg; s++) bt->seg[s].failed = 1;
        }
    } else {
        for (int s0 = 0, s1; s0 < bt->nseg; s0 = s1) {
            const int samples = draws(bt->seg[s0].job);
            int k = 0;
            for (s1 = s0; s1 < bt->nseg && draws(bt->seg[s1].job) == samples; s1++) k += bt->seg[s1].k;
            const int off = bt->seg[s0].off;
            const uint8_t *px = bt->pix + (size_t)off * D;
            /* A calibrated model's anomaly results come from the midpoint pass, which
             * is also the score unless importance-weighted draws were asked for. */
            const int anomaly = b->model->anomaly != NULL, midpoint = samples <= 1;
            int rc = anomaly ? ec->score_anomaly(e, k, px, midpoint ? bt->logp + off : NULL, bt->an + off, bt->err,
                                                 sizeof bt->err)
                             : 0;
            if (rc == 0 && (!anomaly || !midpoint))
                rc = ec->score_keyed(e, k, px, samples, bt->seed + off, bt->index + off, bt->logp + off, bt->err,
                                     sizeof bt->err);
            if (rc != 0) {
                failed = 1;
                for (int s = s0; s < s1; s++) bt->seg[s].failed = 1;
            }
        }
    }
    bt->seconds = finc_mono_now() - t0;
    if (b->metrics) finc_metrics_batch(b->metrics, bt->kind, bt->B, bt->seconds);
    return failed;
}

/* Loop thread: results back to each job. */
static void batch_finish(finc_batcher *b, batch *bt)
{
    const size_t D = (size_t)b->D;
    if (bt->passes * 2 >= b->max_batch && bt->seconds > 0) {
        /* Full batches only: a lone image's batch costs more per pass. */
        const double per = bt->seconds / (double)bt->passes;
        pthread_mutex_lock(&b->mu);
        double *m = &b->pass_s[bt->kind];
        *m = *m > 0 ? 0.8 * *m + 0.2 * per : per;
        pthread_mutex_unlock(&b->mu);
    }
    for (int s = 0; s < bt->nseg; s++) {
        batch_seg *sg = &bt->seg[s];
        finc_job *j = sg->job;
        j->inflight--;
        if (j->status == FINC_JOB_PENDING) {
            if (sg->failed) {
                char msg[300];
                snprintf(msg, sizeof msg, "engine: %s", bt->err[0] ? bt->err : "failed");
                job_end(b, j, FINC_JOB_FAILED, msg);
                continue;
            }
            if (bt->kind == FINC_JOB_SAMPLE)
                memcpy(j->images + (size_t)sg->i0 * D, bt->pix + (size_t)sg->off * D, (size_t)sg->k * D);
            else
                memcpy(j->logp + sg->i0, bt->logp + sg->off, (size_t)sg->k * sizeof(double));
            if (bt->kind == FINC_JOB_SCORE && j->anomaly)
                memcpy(j->anomaly + sg->i0, bt->an + sg->off, (size_t)sg->k * sizeof *bt->an);
            j->finished += sg->k;
            if (j->finished == j->n) {
                j->status = FINC_JOB_OK;
                if (j->inflight == 0) job_complete(b, j);
            }
        } else if (j->inflight == 0) {
            job_complete(b, j);  /* ended while this chunk ran */
        }
        sg->failed = 0;
    }
    bt->nseg = bt->B = 0;
}

/* ---- the loop ------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void close_cb(uv_handle_t *h) { (void)h; }

static void process(finc_batcher *b)
{
    const double now = finc_mono_now();
    pthread_mutex_lock(&b->mu);
    finc_job *in = b->in_head;
    b->in_head = b->in_tail = NULL;
    batch *ret = b->returned;
    b->returned = NULL;
    const int flush = b->flush, closing = b->closing, stop = b->stop;
    const finc_load_state state = b->state;
    char load_err[600];
    if (state == FINC_LOAD_FAILED) snprintf(load_err, sizeof load_err, "model failed to load: %s", b->load_err);
    pthread_mutex_unlock(&b->mu);

    while (in) {
        finc_job *next = in->link;
        q_push(&b->q[in->kind], in);
        in = next;
    }
    if (ret) {
        batch_finish(b, ret);
        b->busy = 0;
    }
    for (int k = 0; k < FINC_JOB_KINDS; k++) {
        for (finc_job *j = b->q[k].head, *next; j; j = next) {
            next = j->link;
            if (closing) job_end(b, j, FINC_JOB_REJECTED, "the server is shutting down");
            else if (state == FINC_LOAD_FAILED) job_end(b, j, FINC_JOB_FAILED, load_err);
            else if (j->deadline > 0 && now >= j->deadline) {
                char msg[120] = "its deadline passed while it was queued";
                if (j->next > 0)
                    snprintf(msg, sizeof msg, "its deadline passed after %d of its %d images ran", j->next, j->n);
                job_end(b, j, FINC_JOB_EXPIRED, msg);
            }
        }
    }

    double wake_at = INFINITY;
    if (!b->busy && state == FINC_READY) {
        /* Oldest eligible head first: full, waited long enough, already
         * partly run, or draining. */
        int pick = -1;
        for (int k = 0; k < FINC_JOB_KINDS; k++) {
            const finc_job *h = b->q[k].head;
            if (!h) continue;
            const double due = h->t_submit + b->o.max_delay;
            const int eligible = flush || b->q[k].images >= b->max_batch || h->next > 0 || now >= due - 1e-4;
            if (!eligible) {
                if (due < wake_at) wake_at = due;
                continue;
            }
            if (pick < 0 || h->t_submit < b->q[pick].head->t_submit) pick = k;
        }
        if (pick >= 0 && batch_form(b, (finc_job_kind)pick, now) > 0) {
            b->busy = 1;
            pthread_mutex_lock(&b->mu);
            b->to_engine = &b->batch;
            pthread_cond_signal(&b->engine_cv);
            pthread_mutex_unlock(&b->mu);
        }
        if (b->busy) wake_at = INFINITY;  /* the engine's return wakes us */
    }
    for (int k = 0; k < FINC_JOB_KINDS; k++)
        for (const finc_job *j = b->q[k].head; j; j = j->link)
            if (j->deadline > 0 && j->deadline < wake_at) wake_at = j->deadline;
    if (isfinite(wake_at)) {
        double ms = ceil((wake_at - finc_mono_now()) * 1000.0);
        uv_update_time(&b->loop);
        uv_timer_start(&b->timer, on_timer, ms < 1 ? 1 : (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&b->timer);
    }

    if (stop && !b->busy && !b->q[0].head && !b->q[1].head) {
        pthread_mutex_lock(&b->mu);
        /* A job submitted since we looked keeps the loop open for one more pass. */
        const int close_now = !b->closed && !b->in_head;
        if (close_now) b->closed = 1;
        else if (b->in_head) wake_locked(b);
        pthread_mutex_unlock(&b->mu);
        if (!close_now) return;
        uv_close((uv_handle_t *)&b->wake, close_cb);
        uv_close((uv_handle_t *)&b->timer, close_cb);
        uv_close((uv_handle_t *)&b->sweep, close_cb);
    }
}

static void on_wake(uv_async_t *a) { process(a->data); }
static void on_timer(uv_timer_t *t) { process(t->data); }

static void on_sweep(uv_timer_t *t)
{
    finc_batcher *b = t->data;
    sweep_hangups(b);
    process(b);
}

static void loop_main(void *arg)
{
    finc_batcher *b = arg;
    uv_run(&b->loop, UV_RUN_DEFAULT);
}

/* ---- the engine thread ---------------------------------------------------- */

static void *real_open(const char *w, const finc_engine_opts *o, char *err, size_t errlen)
{
    return finc_engine_open(w, o, err, errlen);
}
static void real_free(void *e) { finc_engine_free(e); }
static const finc_model *real_model(void *e) { return finc_engine_model(e); }
static const char *real_backend(void *e) { return finc_engine_backend_name(e); }
static void real_draw(void *e, uint64_t seed, uint64_t index, float t, float *row)
{
    finc_draw_latents(e, seed, index, t, row);
}
static int real_decode(void *e, int n, const float *lat, uint8_t *pix, char *err, size_t errlen)
{
    return finc_decode(e, n, lat, pix, err, errlen);
}
static int real_anomaly(void *e, int n, const uint8_t *px, double *logp, finc_anomaly_result *an, char *err,
                        size_t errlen)
{
    return finc_score_anomaly(e, n, px, logp, an, err, errlen);
}
static int real_keyed(void *e, int n, const uint8_t *px, int samples, const uint64_t *seeds, const uint64_t *idx,
                      double *logp, char *err, size_t errlen)
{
    return finc_score_keyed(e, n, px, samples, seeds, idx, logp, err, errlen);
}

static int real_warm_up(void *e, char *err, size_t errlen) { return finc_engine_warm_up(e, err, errlen); }
static void real_status(void *e, finc_backend_status *st) { finc_engine_status(e, st); }

static const finc_batcher_engine real_engine = {
    .open = real_open,
    .free = real_free,
    .model = real_model,
    .backend = real_backend,
    .draw_latents = real_draw,
    .decode = real_decode,
    .score_anomaly = real_anomaly,
    .score_keyed = real_keyed,
    .warm_up = real_warm_up,
    .status = real_status,
};

/* Engine thread, before ready: every chain at every batch size the backend
 * pads to, so a CUDA backend captures its graphs now and not during the first
 * requests. A capture that fails is no error (the backend logs it and runs op
 * by op); a failed engine call is. */
static int warm_up(finc_batcher *b, void *e, char *err, size_t errlen)
{
    if (b->calls->warm_up(e, err, errlen) != 0) return -1;
    finc_backend_status st;
    b->calls->status(e, &st);
    if (st.buckets > 0)
        fprintf(stderr, "finc: %s graphs warmed up: %d batch sizes up to %d, %ld chains captured in %.2f s, "
                        "%.1f MiB of device memory%s\n", b->calls->backend(e), st.buckets, b->max_batch,
                st.graph_captures, st.warm_seconds, st.warm_device_mib,
                st.graph_capture_failures ? "; some captures failed (above), those chains run op by op" : "");
    if (b->metrics) finc_metrics_backend(b->metrics, st.graphs, st.graph_capture_failures, st.dead);
    pthread_mutex_lock(&b->mu);
    b->status = st;
    pthread_mutex_unlock(&b->mu);
    return 0;
}

static void engine_main(void *arg)
{
    finc_batcher *b = arg;
    char err[512] = "";
    const finc_batcher_engine *ec = b->calls;
    void *e = ec->open(b->weights, &b->o.engine, err, sizeof err);
    batch *bt = &b->batch;
    if (e) {
        const size_t D = (size_t)finc_config_dim(&ec->model(e)->cfg);
        const size_t B = (size_t)b->max_batch;
        bt->seg = calloc(B, sizeof *bt->seg);
        bt->pix = malloc(B * D);
        bt->logp = malloc(B * sizeof *bt->logp);
        bt->an = malloc(B * sizeof *bt->an);
        bt->lat = malloc(B * D * sizeof *bt->lat);
        bt->seed = malloc(B * sizeof *bt->seed);
        bt->index = malloc(B * sizeof *bt->index);
        if (!bt->seg || !bt->pix || !bt->logp || !bt->an || !bt->lat || !bt->seed || !bt->index) {
            snprintf(err, sizeof err, "out of memory for batch buffers");
            ec->free(e);
            e = NULL;
        } else {
            b->D = (int)D;
        }
    }
    if (e && warm_up(b, e, err, sizeof err) != 0) {
        ec->free(e);
        e = NULL;
    }
    if (e && b->o.on_ready) b->o.on_ready(b->o.ready_user, ec->model(e), ec->backend(e));
    pthread_mutex_lock(&b->mu);
    if (e) {
        b->engine = e;
        b->model = ec->model(e);
        b->backend = ec->backend(e);
        b->state = FINC_READY;
    } else {
        snprintf(b->load_err, sizeof b->load_err, "%s", err);
        b->state = FINC_LOAD_FAILED;
    }
    pthread_cond_broadcast(&b->ready_cv);
    wake_locked(b);
    pthread_mutex_unlock(&b->mu);
    if (!e) return;

    for (;;) {
        pthread_mutex_lock(&b->mu);
        while (!b->to_engine && !b->stop) pthread_cond_wait(&b->engine_cv, &b->mu);
        batch *run = b->to_engine;
        b->to_engine = NULL;
        pthread_mutex_unlock(&b->mu);
        if (!run) break;
        const int failed = batch_run(b, run);
        finc_backend_status st;
        ec->status(e, &st);
        if (st.dead && !b->status.dead)
            fprintf(stderr, "finc: the engine's device is in an unrecoverable error state: %s; every batch fails "
                            "from now on, and /healthz and /readyz answer 503 until the process restarts\n", st.why);
        if (b->metrics) finc_metrics_backend(b->metrics, st.graphs, st.graph_capture_failures, st.dead);
        pthread_mutex_lock(&b->mu);
        b->status = st;
        if (failed) {
            b->failed_in_row++;
            snprintf(b->fail_err, sizeof b->fail_err, "%s", run->err);
        } else {
            b->failed_in_row = 0;
        }
        b->returned = run;
        wake_locked(b);
        pthread_mutex_unlock(&b->mu);
    }
}

/* ---- public --------------------------------------------------------------- */

/* The batcher's own allocations, once its threads and handles are gone. */
static void free_memory(finc_batcher *b)
{
    free(b->batch.seg);
    free(b->batch.pix);
    free(b->batch.logp);
    free(b->batch.an);
    free(b->batch.lat);
    free(b->batch.seed);
    free(b->batch.index);
    free(b->weights);
    free(b->pfd);
    free(b->pjob);
    free(b);
}

finc_batcher *finc_batcher_start(const finc_batcher_opts *opts, finc_metrics *metrics,
                                 char *err, size_t errlen)
{
    finc_batcher *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->o = *opts;
    b->calls = opts->engine_calls ? opts->engine_calls : &real_engine;
    if (b->o.engine.max_batch <= 0) b->o.engine.max_batch = FINC_DEFAULT_BATCH;
    if (b->o.hangup_poll <= 0) b->o.hangup_poll = 0.1;
    if (b->o.queue_size <= 0) b->o.queue_size = 1024;
    b->max_batch = b->o.engine.max_batch;
    b->metrics = metrics;
    b->weights = strdup(opts->weights ? opts->weights : "");
    b->pfd_cap = 2 * b->o.queue_size + 16;
    b->pfd = calloc((size_t)b->pfd_cap, sizeof *b->pfd);
    b->pjob = calloc((size_t)b->pfd_cap, sizeof *b->pjob);
    if (!b->weights || !b->pfd || !b->pjob) {
        snprintf(err, errlen, "out of memory");
        free_memory(b);
        return NULL;
    }
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->engine_cv, NULL);
    pthread_cond_init(&b->ready_cv, NULL);
    FINC_CHECK(uv_loop_init(&b->loop) == 0);
    FINC_CHECK(uv_async_init(&b->loop, &b->wake, on_wake) == 0);
    FINC_CHECK(uv_timer_init(&b->loop, &b->timer) == 0);
    FINC_CHECK(uv_timer_init(&b->loop, &b->sweep) == 0);
    b->wake.data = b->timer.data = b->sweep.data = b;
    const uint64_t sweep_ms = (uint64_t)ceil(b->o.hangup_poll * 1000.0);
    uv_timer_start(&b->sweep, on_sweep, sweep_ms, sweep_ms);
    int rc = uv_thread_create(&b->engine_thread, engine_main, b);
    if (rc == 0) {
        rc = uv_thread_create(&b->loop_thread, loop_main, b);
        if (rc != 0) {
            pthread_mutex_lock(&b->mu);
            b->stop = 1;
            pthread_cond_signal(&b->engine_cv);
            pthread_mutex_unlock(&b->mu);
            uv_thread_join(&b->engine_thread);
        }
    }
    if (rc != 0) {
        snprintf(err, errlen, "cannot start batcher threads: %s", uv_strerror(rc));
        uv_close((uv_handle_t *)&b->wake, NULL);
        uv_close((uv_handle_t *)&b->timer, NULL);
        uv_close((uv_handle_t *)&b->sweep, NULL);
        uv_run(&b->loop, UV_RUN_DEFAULT);
        uv_loop_close(&b->loop);
        if (b->engine) b->calls->free(b->engine);
        free_memory(b);
        return NULL;
    }
    return b;
}

void finc_batcher_stop(finc_batcher *b)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->closing = 1;
    b->stop = 1;
    pthread_cond_signal(&b->engine_cv);
    wake_locked(b);
    pthread_mutex_unlock(&b->mu);
    uv_thread_join(&b->loop_thread);
    uv_thread_join(&b->engine_thread);
    FINC_CHECK(uv_loop_close(&b->loop) == 0);
    if (b->engine) b->calls->free(b->engine);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->engine_cv);
    pthread_cond_destroy(&b->ready_cv);
    free_memory(b);
}

finc_load_state finc_batcher_state(finc_batcher *b, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->mu);
    const finc_load_state st = b->state;
    if (st == FINC_LOAD_FAILED && err) snprintf(err, errlen, "%s", b->load_err);
    pthread_mutex_unlock(&b->mu);
    return st;
}

int finc_batcher_failing(finc_batcher *b, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->mu);
    const int n = b->o.unhealthy_after > 0 && b->failed_in_row >= b->o.unhealthy_after ? b->failed_in_row : 0;
    if (n && err) snprintf(err, errlen, "%s", b->fail_err);
    pthread_mutex_unlock(&b->mu);
    return n;
}

int finc_batcher_dead(finc_batcher *b, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->mu);
    const int dead = b->status.dead;
    if (dead && err) snprintf(err, errlen, "%s", b->status.why);
    pthread_mutex_unlock(&b->mu);
    return dead;
}

void finc_batcher_backend_status(finc_batcher *b, finc_backend_status *s)
{
    pthread_mutex_lock(&b->mu);
    *s = b->status;
    pthread_mutex_unlock(&b->mu);
}

finc_load_state finc_batcher_wait_ready(finc_batcher *b, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->mu);
    while (b->state == FINC_LOADING) pthread_cond_wait(&b->ready_cv, &b->mu);
    const finc_load_state st = b->state;
    if (st == FINC_LOAD_FAILED && err) snprintf(err, errlen, "%s", b->load_err);
    pthread_mutex_unlock(&b->mu);
    return st;
}

const finc_model *finc_batcher_model(finc_batcher *b) { return b->model; }
const char *finc_batcher_backend(finc_batcher *b) { return b->backend; }

int finc_batcher_reserve(finc_batcher *b, const finc_job *j, double *need_s)
{
    const long cost = finc_job_cost(j);
    const int heavy = cost > b->max_batch;
    int rc = -1;
    pthread_mutex_lock(&b->mu);
    *need_s = (double)cost * b->pass_s[j->kind];
    if (j->deadline > 0 && finc_mono_now() + *need_s > j->deadline) {
        rc = -2;
    } else if (b->reserved_cost[j->kind] + cost <= b->o.queue_size &&
               (!heavy || b->reserved_heavy[j->kind] + cost <= finc_heavy_limit(b->o.queue_size))) {
        b->reserved_cost[j->kind] += cost;
        if (heavy) b->reserved_heavy[j->kind] += cost;
        b->pending++;
        rc = 0;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void finc_batcher_submit(finc_batcher *b, finc_job *j)
{
    FINC_CHECK(j->n > 0 && j->done != NULL);
    j->status = FINC_JOB_PENDING;
    j->error[0] = '\0';
    j->queue_wait = 0;
    j->batch_size = 0;
    j->next = j->finished = j->inflight = j->queued = 0;
    j->prev = j->link = NULL;
    j->t_submit = finc_mono_now();
    pthread_mutex_lock(&b->mu);
    FINC_CHECK(!b->closed);
    if (b->in_tail) b->in_tail->link = j;
    else b->in_head = j;
    b->in_tail = j;
    wake_locked(b);
    pthread_mutex_unlock(&b->mu);
}

void finc_batcher_flush(finc_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    b->flush = 1;
    wake_locked(b);
    pthread_mutex_unlock(&b->mu);
}

void finc_batcher_close(finc_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    b->closing = 1;
    wake_locked(b);
    pthread_mutex_unlock(&b->mu);
}

int finc_batcher_pending(finc_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->pending;
    pthread_mutex_unlock(&b->mu);
    return n;
}

long finc_batcher_depth(finc_batcher *b, finc_job_kind kind)
{
    pthread_mutex_lock(&b->mu);
    long n = b->reserved_cost[kind];
    pthread_mutex_unlock(&b->mu);
    return n;
}
