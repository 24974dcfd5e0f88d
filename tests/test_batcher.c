/* The batcher (server/batcher.c) on its own, without sockets or a model: a
 * fake engine records each batch it is handed, takes as long as a test
 * says, and fails when told. Large jobs split across batches and small
 * ones merge, each image keyed by its own job's (seed, index); expired and
 * hung-up jobs never run; close ends what is queued; failed batches fail
 * their jobs and mark the engine failing; a dead device fails every later
 * batch at once; a failed load fails the jobs. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/batcher.h"
#include "tests/check_main.h"

#define H 4
#define W 4
#define D (H * W)

/* ---- the fake engine -------------------------------------------------------------- */

static struct {
    finc_model model;            /* 1 x 4 x 4, uncalibrated: all the batcher reads of it */
    pthread_mutex_t mu;
    int sizes[64];               /* each batch's rows, in order */
    int kinds[64];
    int nbatch;
    double delay;                /* seconds a batch takes */
    int fail;                    /* batches still to fail */
    int open_fails;
    int die;                     /* the next failed batch leaves the device dead (a sticky error) */
    int dead;
    int warm_ups;
} fake;

static void *fake_open(const char *w, const finc_engine_opts *o, char *err, size_t errlen)
{
    if (fake.open_fails) {
        snprintf(err, errlen, "fake: no such weights '%s'", w);
        return NULL;
    }
    return &fake;
}
static void fake_free(void *e) { ck_assert_ptr_eq(e, &fake); }
static const finc_model *fake_model(void *e) { return &fake.model; }
static const char *fake_backend(void *e) { return "fake"; }

/* Image (seed, index)'s latent row: every value seed + index. */
static void fake_draw(void *e, uint64_t seed, uint64_t index, float t, float *row)
{
    for (int j = 0; j < D; j++) row[j] = (float)(seed + index);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* One batch: recorded, slept through, failed when told. */
static int fake_batch(int kind, int n, char *err, size_t errlen)
{
    pthread_mutex_lock(&fake.mu);
    if (fake.nbatch < 64) fake.sizes[fake.nbatch] = n, fake.kinds[fake.nbatch] = kind;
    fake.nbatch++;
    const int fail = fake.fail > 0 ? fake.fail-- : 0;
    if (fail && fake.die) fake.dead = 1;
    const double delay = fake.delay;
    pthread_mutex_unlock(&fake.mu);
    sleep_s(delay);
    if (fail) snprintf(err, errlen, "fake: device lost");
    return fail ? -1 : 0;
}

/* A sampled image's pixels are its latent's value, so a test reads back
 * which (seed, index) each image was drawn with. */
static int fake_decode(void *e, int n, const float *lat, uint8_t *pix, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) pix[i * D + j] = (uint8_t)lat[i * D + j];
    return fake_batch(FINC_JOB_SAMPLE, n, err, errlen);
}

static int fake_anomaly(void *e, int n, const uint8_t *px, double *logp, finc_anomaly_result *an, char *err,
                        size_t errlen)
{
    ck_abort_msg("an uncalibrated model has no anomaly scores");
    return -1;
}

/* A score is the image's first pixel plus its draws and seed, so a test
 * reads back which image, draws and seed each result came from. */
static int fake_keyed(void *e, int n, const uint8_t *px, int samples, const uint64_t *seeds, const uint64_t *idx,
                      double *logp, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) logp[i] = px[i * D] + 1000.0 * samples + (samples > 1 ? 1e6 * (double)seeds[i] : 0);
    return fake_batch(FINC_JOB_SCORE, n, err, errlen);
}

static int fake_warm_up(void *e, char *err, size_t errlen)
{
    pthread_mutex_lock(&fake.mu);
    fake.warm_ups++;
    pthread_mutex_unlock(&fake.mu);
    return 0;
}

static void fake_status(void *e, finc_backend_status *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&fake.mu);
    st->dead = fake.dead;
    pthread_mutex_unlock(&fake.mu);
    if (st->dead) snprintf(st->why, sizeof st->why, "fake: illegal address");
}

static const finc_batcher_engine fake_calls = {
    .open = fake_open,
    .free = fake_free,
    .model = fake_model,
    .backend = fake_backend,
    .draw_latents = fake_draw,
    .decode = fake_decode,
    .score_anomaly = fake_anomaly,
    .score_keyed = fake_keyed,
    .warm_up = fake_warm_up,
    .status = fake_status,
};

static void fake_reset(void)
{
    memset(&fake, 0, sizeof fake);
    pthread_mutex_init(&fake.mu, NULL);
    fake.model.cfg.c = 1, fake.model.cfg.h = H, fake.model.cfg.w = W;
}

static int batches(void)
{
    pthread_mutex_lock(&fake.mu);
    const int n = fake.nbatch;
    pthread_mutex_unlock(&fake.mu);
    return n;
}

/* A batcher on the fake engine, its load ended as `want` says (the fake's
 * settings are made before: fake_reset runs before each test). */
static finc_batcher *start(int max_batch, double max_delay, int unhealthy_after, finc_load_state want)
{
    finc_batcher_opts o = {
        .engine_calls = &fake_calls,
        .weights = "fake.safetensors",
        .engine = {.max_batch = max_batch},
        .max_delay = max_delay,
        .queue_size = 1024,
        .hangup_poll = 0.01,
        .unhealthy_after = unhealthy_after,
    };
    char err[256];
    finc_batcher *b = finc_batcher_start(&o, NULL, err, sizeof err);
    ck_assert_msg(b != NULL, "%s", err);
    ck_assert_int_eq(finc_batcher_wait_ready(b, err, sizeof err), want);
    return b;
}

/* ---- jobs ------------------------------------------------------------------------- */

typedef struct {
    finc_job job;
    uint8_t pix[64 * D];
    double logp[64];
    atomic_int done;
} tjob;

static void on_done(finc_job *j, void *user)
{
    tjob *t = user;
    ck_assert_int_ne(j->status, FINC_JOB_PENDING);
    ck_assert_int_eq(atomic_fetch_add(&t->done, 1), 0);  /* exactly once */
}

static void job_init(tjob *t, finc_job_kind kind, int n, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    t->job.kind = kind;
    t->job.n = n;
    t->job.seed = seed;
    t->job.temperature = 1.0f;
    t->job.samples = 1;
    t->job.fd = -1;
    t->job.done = on_done;
    t->job.user = t;
    if (kind == FINC_JOB_SAMPLE) t->job.images = t->pix;
    else t->job.pixels = t->pix, t->job.logp = t->logp;
}

static void submit(finc_batcher *b, tjob *t)
{
    double need;
    ck_assert_int_eq(finc_batcher_reserve(b, &t->job, &need), 0);
    finc_batcher_submit(b, &t->job);
}

static void wait_done(tjob *t)
{
    for (int i = 0; i < 500 && !atomic_load(&t->done); i++) sleep_s(0.01);
    ck_assert_msg(atomic_load(&t->done), "the job did not end within 5 s");
}

static void wait_batches(int n)
{
    for (int i = 0; i < 500 && batches() < n; i++) sleep_s(0.01);
    ck_assert_int_ge(batches(), n);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(large_jobs_split_small_ones_merge)
{
    finc_batcher *b = start(8, 0.2, 0, FINC_READY);
    static tjob big, s[3];
    job_init(&big, FINC_JOB_SAMPLE, 20, 100);
    submit(b, &big);
    wait_done(&big);
    ck_assert_int_eq(big.job.status, FINC_JOB_OK);
    ck_assert_int_eq(batches(), 3);
    ck_assert(fake.sizes[0] == 8 && fake.sizes[1] == 8 && fake.sizes[2] == 4);
    ck_assert_int_eq(big.job.batch_size, 8);
    for (int i = 0; i < 20; i++) ck_assert_int_eq(big.pix[i * D + 5], 100 + i);  /* (seed, index) kept across batches */

    /* three small jobs within the delay: one batch, each image its own job's */
    for (int k = 0; k < 3; k++) job_init(&s[k], FINC_JOB_SAMPLE, 2, 10 * (k + 1));
    for (int k = 0; k < 3; k++) submit(b, &s[k]);
    for (int k = 0; k < 3; k++) wait_done(&s[k]);
    ck_assert_int_eq(batches(), 4);
    ck_assert_int_eq(fake.sizes[3], 6);
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(s[k].job.status, FINC_JOB_OK);
        ck_assert(s[k].pix[0] == 10 * (k + 1) && s[k].pix[D] == 10 * (k + 1) + 1);
    }

    /* scores with draws: a job of 3 images x 4 draws is 12 passes, more than
     * a batch: the images split, each with its own draws */
    static tjob sc;
    job_init(&sc, FINC_JOB_SCORE, 3, 7);
    sc.job.samples = 4;
    for (int i = 0; i < 3; i++) memset(sc.pix + i * D, 50 + i, D);
    submit(b, &sc);
    wait_done(&sc);
    ck_assert_int_eq(sc.job.status, FINC_JOB_OK);
    for (int i = 0; i < 3; i++) ck_assert(sc.logp[i] == 50 + i + 4000.0 + 7e6);
    finc_batcher_stop(b);
}
END_TEST

START_TEST(expired_and_hung_up_jobs_never_run)
{
    fake.delay = 0.3;
    finc_batcher *b = start(4, 0.0, 0, FINC_READY);
    static tjob busy, late, gone;
    job_init(&busy, FINC_JOB_SAMPLE, 4, 1);
    submit(b, &busy);
    wait_batches(1);  /* the engine is busy for 0.3 s */
    job_init(&late, FINC_JOB_SAMPLE, 4, 2);
    late.job.deadline = finc_mono_now() + 0.1;
    submit(b, &late);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    job_init(&gone, FINC_JOB_SAMPLE, 4, 3);
    gone.job.fd = sv[0];
    submit(b, &gone);
    close(sv[1]);  /* the client hangs up while its job waits */
    wait_done(&late);
    wait_done(&gone);
    wait_done(&busy);
    ck_assert_int_eq(busy.job.status, FINC_JOB_OK);
    ck_assert_int_eq(late.job.status, FINC_JOB_EXPIRED);
    ck_assert_msg(strstr(late.job.error, "deadline") != NULL, "%s", late.job.error);
    ck_assert_int_eq(gone.job.status, FINC_JOB_CANCELLED);
    ck_assert_str_eq(gone.job.error, "the client closed the connection");
    sleep_s(0.1);
    ck_assert_int_eq(batches(), 1);  /* neither ever ran */
    ck_assert_int_eq(finc_batcher_pending(b), 0);
    ck_assert_int_eq(finc_batcher_depth(b, FINC_JOB_SAMPLE), 0);
    close(sv[0]);
    finc_batcher_stop(b);
}
END_TEST

START_TEST(close_ends_queued_work)
{
    fake.delay = 0.3;
    finc_batcher *b = start(4, 0.0, 0, FINC_READY);
    static tjob running, queued, after;
    job_init(&running, FINC_JOB_SAMPLE, 4, 1);
    submit(b, &running);
    wait_batches(1);
    job_init(&queued, FINC_JOB_SCORE, 2, 0);
    submit(b, &queued);
    const double t0 = finc_mono_now();
    finc_batcher_close(b);
    wait_done(&queued);
    ck_assert_msg(finc_mono_now() - t0 < 0.25, "queued work waited for the running batch");
    ck_assert_int_eq(queued.job.status, FINC_JOB_REJECTED);
    ck_assert_str_eq(queued.job.error, "the server is shutting down");
    wait_done(&running);
    ck_assert_int_eq(running.job.status, FINC_JOB_OK);  /* what had started finishes */
    job_init(&after, FINC_JOB_SAMPLE, 1, 1);
    double need;
    if (finc_batcher_reserve(b, &after.job, &need) == 0) {
        finc_batcher_submit(b, &after.job);
        wait_done(&after);
        ck_assert_int_eq(after.job.status, FINC_JOB_REJECTED);
    }
    for (int i = 0; i < 100 && finc_batcher_pending(b) > 0; i++) sleep_s(0.01);
    ck_assert_int_eq(finc_batcher_pending(b), 0);
    ck_assert_int_eq(batches(), 1);
    finc_batcher_stop(b);
}
END_TEST

START_TEST(failed_batches_fail_their_jobs_and_mark_the_engine)
{
    fake.fail = 2;
    finc_batcher *b = start(4, 0.0, 2, FINC_READY);
    char err[256];
    static tjob j[3];
    for (int k = 0; k < 2; k++) {
        job_init(&j[k], FINC_JOB_SAMPLE, 3, (uint64_t)k);
        submit(b, &j[k]);
        wait_done(&j[k]);
        ck_assert_int_eq(j[k].job.status, FINC_JOB_FAILED);
        ck_assert_msg(strstr(j[k].job.error, "fake: device lost") != NULL, "%s", j[k].job.error);
    }
    ck_assert_int_eq(finc_batcher_failing(b, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "fake: device lost") != NULL, "%s", err);
    job_init(&j[2], FINC_JOB_SAMPLE, 3, 9);
    submit(b, &j[2]);
    wait_done(&j[2]);
    ck_assert_int_eq(j[2].job.status, FINC_JOB_OK);
    ck_assert_int_eq(finc_batcher_failing(b, err, sizeof err), 0);  /* one success starts the count again */
    finc_batcher_stop(b);
}
END_TEST

/* A sticky device error: the batch that hit it fails, and every later one
 * fails at once without reaching the engine; the batcher says the engine is
 * dead (the server's /healthz then answers 503). */
START_TEST(a_dead_engine_fails_every_batch_at_once)
{
    fake.fail = 1;
    fake.die = 1;
    finc_batcher *b = start(4, 0.0, 3, FINC_READY);
    char err[400];
    ck_assert_int_eq(fake.warm_ups, 1);  /* warmed before ready */
    ck_assert_int_eq(finc_batcher_dead(b, err, sizeof err), 0);
    static tjob j[2];
    job_init(&j[0], FINC_JOB_SAMPLE, 2, 1);
    submit(b, &j[0]);
    wait_done(&j[0]);
    ck_assert_int_eq(j[0].job.status, FINC_JOB_FAILED);
    ck_assert_int_eq(finc_batcher_dead(b, err, sizeof err), 1);
    ck_assert_msg(strstr(err, "fake: illegal address") != NULL, "%s", err);
    job_init(&j[1], FINC_JOB_SAMPLE, 2, 2);
    submit(b, &j[1]);
    wait_done(&j[1]);
    ck_assert_int_eq(j[1].job.status, FINC_JOB_FAILED);
    ck_assert_msg(strstr(j[1].job.error, "dead") != NULL, "%s", j[1].job.error);
    ck_assert_int_eq(batches(), 1);  /* the second never reached the device */
    finc_batcher_stop(b);
}
END_TEST

START_TEST(a_failed_load_fails_the_jobs)
{
    fake.open_fails = 1;
    finc_batcher *b = start(4, 0.0, 0, FINC_LOAD_FAILED);
    char err[256];
    ck_assert_int_eq(finc_batcher_wait_ready(b, err, sizeof err), FINC_LOAD_FAILED);
    ck_assert_str_eq(err, "fake: no such weights 'fake.safetensors'");
    ck_assert_int_eq(finc_batcher_state(b, NULL, 0), FINC_LOAD_FAILED);
    static tjob t;
    job_init(&t, FINC_JOB_SAMPLE, 1, 1);
    double need;
    if (finc_batcher_reserve(b, &t.job, &need) == 0) {
        finc_batcher_submit(b, &t.job);
        wait_done(&t);
        ck_assert_int_eq(t.job.status, FINC_JOB_FAILED);
        ck_assert_msg(strstr(t.job.error, "model failed to load") != NULL, "%s", t.job.error);
    }
    ck_assert_int_eq(batches(), 0);
    finc_batcher_stop(b);
}
END_TEST

static Suite *batcher_suite(void)
{
    Suite *s = suite_create("batcher");
    TCase *tc = tcase_create("batcher");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, fake_reset, NULL);
    tcase_add_test(tc, large_jobs_split_small_ones_merge);
    tcase_add_test(tc, expired_and_hung_up_jobs_never_run);
    tcase_add_test(tc, close_ends_queued_work);
    tcase_add_test(tc, failed_batches_fail_their_jobs_and_mark_the_engine);
    tcase_add_test(tc, a_dead_engine_fails_every_batch_at_once);
    tcase_add_test(tc, a_failed_load_fails_the_jobs);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(batcher_suite)
