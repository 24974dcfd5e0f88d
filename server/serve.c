#include "server/serve.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "server/batcher.h"
#include "server/server.h"

/* The main thread's loop: signals, and two polls (readiness while loading,
 * in-flight requests while draining). The server's own threads do the work. */
typedef struct {
    finc_server *srv;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t poll;
    double t_start, drain_timeout, drain_deadline;
    int signals, draining, rc;
} serve_ctx;

static void stop_loop(serve_ctx *c)
{
    uv_signal_stop(&c->sigterm);
    uv_signal_stop(&c->sigint);
    uv_timer_stop(&c->poll);
    uv_stop(c->poll.loop);
}

/* Every 10 ms while draining: done when nothing is in flight, or out of time. */
static void on_drain_poll(uv_timer_t *t)
{
    serve_ctx *c = t->data;
    const long busy = finc_server_inflight(c->srv);
    if (busy == 0) {
        fprintf(stderr, "finc serve: drained, exiting\n");
        stop_loop(c);
    } else if (finc_mono_now() >= c->drain_deadline) {
        fprintf(stderr, "finc serve: drain timeout with %ld requests in flight; ending them\n", busy);
        stop_loop(c);
    }
}

/* Every 10 ms while the engine thread loads the weights. */
static void on_load_poll(uv_timer_t *t)
{
    serve_ctx *c = t->data;
    char err[1024];
    const finc_load_state st = finc_server_state(c->srv, err, sizeof err);
    if (st == FINC_LOADING) return;
    uv_timer_stop(&c->poll);
    if (st == FINC_LOAD_FAILED) {
        fprintf(stderr, "finc serve: %s\n", err);
        c->rc = 1;
        stop_loop(c);
        return;
    }
    fprintf(stderr, "finc serve: ready on port %d, %s backend (model loaded in %.2f s)\n",
            finc_server_port(c->srv), finc_server_backend(c->srv), finc_mono_now() - c->t_start);
}

static void on_signal(uv_signal_t *h, int signum)
{
    serve_ctx *c = h->data;
    if (++c->signals > 1) {
        fprintf(stderr, "finc serve: second signal, stopping now\n");
        stop_loop(c);
        return;
    }
    fprintf(stderr, "finc serve: %s, draining (readiness 503; up to %g s for accepted work)\n",
            signum == SIGTERM ? "SIGTERM" : signum == SIGHUP ? "SIGHUP" : "SIGINT", c->drain_timeout);
    finc_server_drain(c->srv);
    c->drain_deadline = finc_mono_now() + c->drain_timeout;
    uv_timer_stop(&c->poll);
    uv_timer_start(&c->poll, on_drain_poll, 0, 10);
}

/* Every connection is a file descriptor: the soft open-file limit is raised
 * toward the hard one when max-connections (and the gate's headroom for
 * connections still sending their heads) needs it; where the hard limit is
 * lower, max-connections comes down to fit, with a warning. */
static void fit_connection_limits(finc_server_config *cfg)
{
    const rlim_t spare = 64 + FINC_GATE_HEADROOM;  /* listen socket, epoll, pipes, the weights, logs; heads */
    const rlim_t need = (rlim_t)cfg->max_connections + spare;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
        if (rl.rlim_cur < need) {
            const int fit = rl.rlim_cur > 2 * spare ? (int)(rl.rlim_cur - spare) : 1;
            fprintf(stderr,
                    "finc serve: warning: max-connections %d needs %llu open files and the limit is %llu "
                    "(ulimit -n); serving at most %d connections\n",
                    cfg->max_connections, (unsigned long long)need, (unsigned long long)rl.rlim_cur, fit);
            cfg->max_connections = fit;
        }
    }
}

int finc_serve_main(int argc, char **argv)
{
    finc_server_config cfg;
    char err[1024];
    finc_server_config_defaults(&cfg);
    if (finc_server_config_env(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "finc serve: %s\n", err);
        return 2;
    }
    int rc = finc_server_config_args(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) {
        finc_server_usage(stdout);
        return 0;
    }
    if (rc != 0 || finc_server_config_check(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "finc serve: %s\n", err);
        return 2;
    }
    fit_connection_limits(&cfg);
    /* Freed memory stays with the process. Otherwise glibc hands back the
     * top of a thread's heap after each PNG encode (zlib's state is larger
     * than its default trim threshold) with madvise, and each such call makes
     * every core running the engine stop to flush its TLB: 2,800 times a
     * second while sampling at 1,300 requests/s on two cores. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    finc_server_config_print(&cfg, stderr);
    signal(SIGPIPE, SIG_IGN);

    /* The handlers exist before the server's threads, so a signal during
     * start-up or loading is not lost: it drains what little there is. */
    uv_loop_t loop;
    serve_ctx c = {.drain_timeout = cfg.drain_timeout, .t_start = finc_mono_now()};
    uv_loop_init(&loop);
    uv_signal_init(&loop, &c.sigterm);
    uv_signal_init(&loop, &c.sigint);
    uv_signal_init(&loop, &c.sighup);
    uv_timer_init(&loop, &c.poll);
    c.sigterm.data = c.sigint.data = c.sighup.data = c.poll.data = &c;
    uv_signal_start(&c.sigterm, on_signal, SIGTERM);
    uv_signal_start(&c.sigint, on_signal, SIGINT);
    /* SIGHUP too (a closed terminal, a supervisor's reload): the log is
     * stderr, with nothing to reopen, so a hang-up drains like SIGTERM. */
    uv_signal_start(&c.sighup, on_signal, SIGHUP);

    c.srv = finc_server_start(&cfg, err, sizeof err);
    if (!c.srv) {
        fprintf(stderr, "finc serve: %s\n", err);
        c.rc = 1;
    } else {
        fprintf(stderr, "finc serve: listening on http://%s:%d, loading %s\n", cfg.host, finc_server_port(c.srv),
                cfg.weights);
        uv_timer_start(&c.poll, on_load_poll, 0, 10);
        uv_run(&loop, UV_RUN_DEFAULT);
        finc_server_stop(c.srv);
        if (c.rc == 0) fprintf(stderr, "finc serve: stopped\n");
    }
    uv_close((uv_handle_t *)&c.sigterm, NULL);
    uv_close((uv_handle_t *)&c.sigint, NULL);
    uv_close((uv_handle_t *)&c.sighup, NULL);
    uv_close((uv_handle_t *)&c.poll, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return c.rc;
}
