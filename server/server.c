/* finc_server_start and the rest of server/server.h: the listening socket,
 * the batcher, libmicrohttpd (server/http.c) and the gate (server/gate.c)
 * started in order and stopped in reverse; the model's figures published
 * once when it has loaded. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/version.h"
#include "server/inference.h"
#include "server/server_internal.h"

/* ---- the model's figures ------------------------------------------------------ */

/* The batcher's engine thread, once the model has loaded and before the
 * batcher says ready: what requests show of the model, and the build info
 * metric. */
static void publish_model(void *user, const finc_model *m, const char *backend)
{
    finc_server *s = user;
    const finc_config *cfg = &m->cfg;
    model_info *mi = &s->info;
    mi->c = cfg->c, mi->h = cfg->h, mi->w = cfg->w;
    mi->D = finc_config_dim(cfg);
    mi->test_bpd = cfg->test_bpd;
    mi->n_params = m->n_params;
    const char *base = strrchr(s->cfg.weights, '/');
    snprintf(mi->name, sizeof mi->name, "%.127s", base ? base + 1 : s->cfg.weights);
    char *dot = strrchr(mi->name, '.');
    if (dot && dot != mi->name) *dot = '\0';
    char shape[200];
    snprintf(shape, sizeof shape, "%s %dx%dx%d", mi->name, mi->c, mi->h, mi->w);
    finc_metrics_set_info(s->metrics, FINC_VERSION, backend, shape);
    atomic_store(&s->info_ready, 1);
}

const model_info *finc_server_model(const finc_server *s) { return atomic_load(&s->info_ready) ? &s->info : NULL; }
const finc_server_config *finc_server_cfg(const finc_server *s) { return &s->cfg; }
finc_batcher *finc_server_batcher(finc_server *s) { return s->batcher; }
finc_metrics *finc_server_metrics(finc_server *s) { return s->metrics; }

/* ---- start and stop -------------------------------------------------------------- */

static int listen_on(const char *host, int port, int *bound_port, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve host '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(saved));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

finc_server *finc_server_start(const finc_server_config *cfg, char *err, size_t errlen)
{
    if (finc_server_config_check(cfg, err, errlen) != 0) return NULL;
    finc_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->env.retry_after = cfg->retry_after;
    s->env.max_body_memory = cfg->max_body_memory;
    s->env.log_json = !strcmp(cfg->log, "json");
    s->metrics = finc_metrics_new(cfg->max_batch);
    int fd = s->metrics ? listen_on(cfg->host, cfg->port, &s->port, err, errlen) : -1;
    if (!s->metrics) snprintf(err, errlen, "out of memory");
    if (fd < 0) {
        finc_metrics_free(s->metrics);
        free(s);
        return NULL;
    }
    finc_batcher_opts bo = {
        .weights = cfg->weights,
        .engine = {.backend = cfg->backend, .max_batch = cfg->max_batch, .threads = cfg->threads,
                   .precision = strcmp(cfg->precision, "tf32") == 0 ? FINC_PRECISION_TF32 : FINC_PRECISION_FP32},
        .max_delay = cfg->max_delay_ms / 1000.0,
        .queue_size = cfg->queue_size,
        .unhealthy_after = cfg->unhealthy_after,
        .on_ready = publish_model,
        .ready_user = s,
    };
    s->batcher = finc_batcher_start(&bo, s->metrics, err, errlen);
    if (!s->batcher) {
        close(fd);
        finc_metrics_free(s->metrics);
        free(s);
        return NULL;
    }
    /* The gate accepts; libmicrohttpd gets each connection once its first head is whole. */
    s->mhd = finc_http_start(s);
    if (!s->mhd || finc_gate_start(s, fd, err, errlen) != 0) {
        if (!s->mhd) snprintf(err, errlen, "cannot start the HTTP daemon on port %d", s->port);
        if (!s->gate) close(fd);
        finc_gate_close(s);
        if (s->mhd) MHD_stop_daemon(s->mhd);
        finc_gate_free(s);
        finc_batcher_stop(s->batcher);
        finc_metrics_free(s->metrics);
        free(s);
        return NULL;
    }
    return s;
}

int finc_server_wait_ready(finc_server *s, char *err, size_t errlen)
{
    return finc_batcher_wait_ready(s->batcher, err, errlen) == FINC_READY ? 0 : -1;
}

finc_load_state finc_server_state(finc_server *s, char *err, size_t errlen)
{
    return finc_batcher_state(s->batcher, err, errlen);
}

int finc_server_port(const finc_server *s) { return s->port; }

const char *finc_server_backend(const finc_server *s) { return finc_batcher_backend(s->batcher); }

void finc_server_drain(finc_server *s)
{
    atomic_store(&s->env.draining, 1);
    finc_batcher_flush(s->batcher);
}

long finc_server_inflight(finc_server *s) { return atomic_load(&s->inflight); }

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void finc_server_stop(finc_server *s)
{
    if (!s) return;
    atomic_store(&s->env.draining, 1);
    /* Every job still queued ends (503) and resumes its connection; MHD
     * must not stop while any connection is suspended. */
    finc_batcher_close(s->batcher);
    while (finc_batcher_pending(s->batcher) > 0) sleep_ms(2);
    /* Give the answers a moment to go out before the sockets close. */
    for (int i = 0; i < 1000 && atomic_load(&s->inflight) > 0; i++) sleep_ms(2);
    finc_gate_close(s);
    MHD_stop_daemon(s->mhd);
    finc_gate_free(s);
    finc_batcher_stop(s->batcher);
    finc_metrics_free(s->metrics);
    free(s);
}
