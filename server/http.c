/* libmicrohttpd's side of the server: each request read (with limits),
 * routed, checked (framing, method, token, declared length, readiness) and
 * handed to its handler; the small endpoints (/healthz, /readyz,
 * /v1/models, /metrics) answered here; a resumed request answered by the
 * callback its handler set; one log line and the metrics at the end. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/anomaly.h"
#include "engine/version.h"
#include "server/inference.h"
#include "server/server_internal.h"
#include "server/httputil.h"
#include "server/ui.h"

#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- small endpoints ------------------------------------------------------------- */

/* The engine failed its last unhealthy-after batches (a device in a sticky
 * error state fails every batch until the process restarts): health and
 * readiness answer 503 with the last error until a batch succeeds again. */
int finc_health(finc_server *s, finc_endpoint ep, const char **word, char *err, size_t errlen)
{
    char why[300];
    const finc_load_state st = ep == FINC_EP_READYZ ? finc_batcher_state(s->batcher, why, sizeof why) : FINC_READY;
    if (ep == FINC_EP_READYZ && (st != FINC_READY || atomic_load(&s->env.draining))) {
        *word = atomic_load(&s->env.draining) ? "draining" : st == FINC_LOADING ? "loading" : "failed";
        if (st == FINC_LOAD_FAILED) snprintf(err, errlen, "model failed to load: %s", why);
        else snprintf(err, errlen, "not ready: %s", *word);
        return 503;
    }
    if (finc_batcher_dead(s->batcher, why, sizeof why)) {
        *word = "dead";
        snprintf(err, errlen, "sticky device error, restart the process: %s", why);
        return 503;
    }
    const int n = finc_batcher_failing(s->batcher, why, sizeof why);
    if (n) {
        *word = "failing";
        snprintf(err, errlen, "the engine failed its last %d batches: %s", n, why);
        return 503;
    }
    *word = ep == FINC_EP_READYZ ? "ready" : "ok";
    return 200;
}

/* /healthz and /readyz on a kept-alive connection (the gate answers them on new ones). */
static enum MHD_Result handle_health(finc_request *r)
{
    char err[400];
    const char *word;
    const int status = finc_health(r->srv, r->ep, &word, err, sizeof err);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", word);
    if (status == 200) return finc_respond_json(r, 200, o);
    return finc_respond_error(r, status, FINC_ERR_NOT_READY, o, "%s", err);
}

/* The calibration scores' distribution, for clients that show where an image's score falls. */
static cJSON *calibration_histogram(const struct finc_anomaly *a)
{
    double lo, hi;
    int counts[FINC_ANOMALY_HIST_BINS], over;
    finc_anomaly_histogram(a, FINC_ANOMALY_HIST_BINS, &lo, &hi, counts, &over);
    cJSON *h = cJSON_CreateObject();
    cJSON_AddNumberToObject(h, "lo", lo);
    cJSON_AddNumberToObject(h, "hi", hi);
    cJSON_AddItemToObject(h, "counts", cJSON_CreateIntArray(counts, FINC_ANOMALY_HIST_BINS));
    cJSON_AddNumberToObject(h, "over", over);
    return h;
}

static enum MHD_Result handle_models(finc_request *r)
{
    finc_server *s = r->srv;
    const model_info *mi = finc_server_model(s);
    if (!mi) {
        r->retry_after = 1;
        return finc_respond_error(r, 503, FINC_ERR_NOT_READY, NULL, "the model is not loaded yet");
    }
    const finc_model *m = finc_batcher_model(s->batcher);
    const finc_server_config *c = &s->cfg;
    cJSON *root = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(root, "models");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToArray(list, o);
    cJSON_AddStringToObject(o, "id", mi->name);
    cJSON *img = cJSON_AddObjectToObject(o, "image");
    cJSON_AddNumberToObject(img, "channels", mi->c);
    cJSON_AddNumberToObject(img, "height", mi->h);
    cJSON_AddNumberToObject(img, "width", mi->w);
    cJSON_AddNumberToObject(o, "dimensions", mi->D);
    cJSON_AddNumberToObject(o, "parameters", (double)mi->n_params);
    cJSON *cfg = m->cfg.json ? cJSON_Parse(m->cfg.json) : NULL;
    cJSON_AddItemToObject(o, "config", cfg ? cfg : cJSON_CreateNull());
    if (isnan(mi->test_bpd)) cJSON_AddNullToObject(o, "test_bits_per_dim");
    else cJSON_AddNumberToObject(o, "test_bits_per_dim", mi->test_bpd);
    cJSON_AddStringToObject(o, "backend", finc_batcher_backend(s->batcher));
    finc_backend_status bs;
    finc_batcher_backend_status(s->batcher, &bs);
    cJSON_AddStringToObject(o, "precision", c->precision);
    cJSON_AddBoolToObject(o, "cuda_graphs", bs.graphs);
    cJSON *an = cJSON_AddObjectToObject(o, "anomaly");
    cJSON_AddBoolToObject(an, "calibrated", m->anomaly != NULL);
    if (m->anomaly) {
        cJSON_AddStringToObject(an, "method", FINC_ANOMALY_METHOD);
        cJSON_AddStringToObject(an, "data", m->anomaly->data);
        cJSON_AddNumberToObject(an, "fit_images", m->anomaly->n_fit);
        cJSON_AddNumberToObject(an, "calibration_images", m->anomaly->n_cal);
        cJSON_AddNumberToObject(an, "statistics", m->anomaly->d);
        cJSON_AddNumberToObject(an, "default_alpha", c->anomaly_alpha);
        cJSON_AddItemToObject(an, "calibration_histogram", calibration_histogram(m->anomaly));
    }
    cJSON *lim = cJSON_AddObjectToObject(root, "limits");
    cJSON_AddNumberToObject(lim, "max_batch", c->max_batch);
    cJSON_AddNumberToObject(lim, "max_delay_ms", c->max_delay_ms);
    cJSON_AddNumberToObject(lim, "queue_size", c->queue_size);
    cJSON_AddNumberToObject(lim, "max_n", c->max_n);
    cJSON_AddNumberToObject(lim, "max_images", c->max_images);
    cJSON_AddNumberToObject(lim, "max_samples", c->max_samples);
    cJSON_AddNumberToObject(lim, "max_body_bytes", (double)c->max_body);
    cJSON_AddNumberToObject(lim, "timeout_ms", c->timeout_ms);
    cJSON_AddStringToObject(root, "version", FINC_VERSION);
    return finc_respond_json(r, 200, root);
}

static enum MHD_Result handle_metrics(finc_request *r)
{
    finc_server *s = r->srv;
    for (int k = 0; k < FINC_JOB_KINDS; k++)
        finc_metrics_queue_depth(s->metrics, k, finc_batcher_depth(s->batcher, (finc_job_kind)k));
    size_t len;
    char *text = finc_metrics_render(s->metrics, &len);
    if (!text) return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
    return finc_respond(r, 200, METRICS_TYPE, text, len);
}

/* ---- routing ---------------------------------------------------------------------- */

/* The endpoints' paths are finc_endpoint_path's (server/request.c); the page's
 * files are server/ui.c's. */
typedef struct {
    finc_endpoint ep;
    int post;                 /* POST only; else GET and HEAD */
    int auth;                 /* needs the bearer token when one is set */
    enum MHD_Result (*handle)(finc_request *r);
} route;

static const route routes[] = {
    {FINC_EP_SAMPLE, 1, 1, finc_handle_sample},
    {FINC_EP_SCORE, 1, 1, finc_handle_score},
    {FINC_EP_HEALTHZ, 0, 0, handle_health},
    {FINC_EP_READYZ, 0, 0, handle_health},
    {FINC_EP_MODELS, 0, 1, handle_models},
    {FINC_EP_METRICS, 0, 0, handle_metrics},
    {FINC_EP_UI, 0, 0, finc_ui_handle},
};

/* The endpoint a path names: the API's by their paths, the page's files by
 * the page's table; none for the page when it is off (--ui off: 404). */
static finc_endpoint endpoint_of(const finc_server *s, const char *url)
{
    finc_endpoint ep = finc_endpoint_find(url);
    if (ep == FINC_EP_OTHER && finc_ui_find(url)) ep = FINC_EP_UI;
    if (ep == FINC_EP_UI && !strcmp(s->cfg.ui, "off")) ep = FINC_EP_OTHER;
    return ep;
}

static const route *find_route(finc_endpoint ep)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (routes[i].ep == ep) return &routes[i];
    return NULL;
}

/* Checks that can answer before the body is read: path, method, token,
 * declared length, readiness. MHD_YES with r->answered when one did. */
/* What the request head says about where its body ends. */
typedef struct {
    int content_length, transfer_encoding;
    char te[64];
    char bad_name[48];        /* the first header name that is not an RFC 9110 token */
} framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    framing *f = cls;
    (void)kind;
    if (!f->bad_name[0])
        for (const unsigned char *p = (const unsigned char *)key; *p; p++)
            if (!finc_http_tchar(*p)) {
                snprintf(f->bad_name, sizeof f->bad_name, "%s", key);
                break;
            }
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) f->content_length++;
    if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) && f->transfer_encoding++ == 0)
        snprintf(f->te, sizeof f->te, "%s", value ? value : "");
    return MHD_YES;
}

/* Framing that a proxy in front and this server could read two ways, which
 * would let one client's bytes become another's request (request smuggling):
 * refused, and the connection closed, before any body is read. */
static enum MHD_Result framing_checks(finc_request *r)
{
    framing f = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_framing, &f);
    if (!f.bad_name[0] && f.content_length <= 1 && !(f.content_length && f.transfer_encoding) &&
        f.transfer_encoding <= 1 && (!f.transfer_encoding || !strcasecmp(f.te, "chunked")))
        return MHD_YES;
    r->close = 1;
    if (f.bad_name[0]) {
        for (char *p = f.bad_name; *p; p++)
            if (*p < 0x20 || *p > 0x7e) *p = '?';  /* the answer and the log stay printable */
        return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "malformed header name '%s'", f.bad_name);
    }
    if (f.content_length > 1)
        return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%d Content-Length headers: send one",
                               f.content_length);
    if (f.content_length)
        return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                               "Content-Length and Transfer-Encoding together: send one");
    if (f.transfer_encoding > 1)
        return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "several Transfer-Encoding headers: send one");
    for (char *p = f.te; *p; p++)
        if (*p < 0x20 || *p > 0x7e) *p = '?';
    return finc_respond_error(r, 501, FINC_ERR_BAD_REQUEST, NULL, "Transfer-Encoding '%s' is not supported (chunked is)",
                           f.te);
}

static enum MHD_Result early_checks(finc_request *r, const route *rt)
{
    finc_server *s = r->srv;
    const enum MHD_Result framed = framing_checks(r);
    if (r->answered || framed != MHD_YES) return framed;
    if (!rt) return finc_respond_error(r, 404, FINC_ERR_NOT_FOUND, NULL, "no such endpoint");
    r->allow = rt->post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
    if (r->method == METHOD_OPTIONS) return finc_respond(r, 204, NULL, NULL, 0);
    const int ok = rt->post ? r->method == METHOD_POST : (r->method == METHOD_GET || r->method == METHOD_HEAD);
    if (!ok) return finc_respond_error(r, 405, FINC_ERR_METHOD, NULL, "%s wants %s", finc_endpoint_path(rt->ep),
                                  rt->post ? "POST" : "GET");
    r->allow = NULL;
    if (rt->auth && s->cfg.api_key[0]) {
        const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!finc_bearer_ok(auth, s->cfg.api_key)) {
            r->www_authenticate = 1;
            return finc_respond_error(r, 401, FINC_ERR_UNAUTHORIZED, NULL,
                                   auth ? "invalid bearer token" : "this endpoint needs 'Authorization: Bearer <token>'");
        }
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || (unsigned long long)s->cfg.max_body < n)
            return finc_respond_error(r, 413, FINC_ERR_TOO_LARGE, NULL, "request body over the limit of %ld bytes",
                                   s->cfg.max_body);
        /* Room for the declared body, up to a point: a client that declares
         * megabytes and sends nothing must not cost megabytes. */
        if (n > 0 && finc_request_body_reserve(r, n < (256u << 10) ? (size_t)n + 1 : (256u << 10)) != 0) {
            r->retry_after = 1;
            r->close = 1;
            return finc_respond_error(r, 503, FINC_ERR_OVERLOADED, NULL,
                                   "the server holds as many request bodies as it may (--max-body-memory)");
        }
    }
    if (rt->post) {
        char err[512];
        const finc_load_state st = finc_batcher_state(s->batcher, err, sizeof err);
        if (atomic_load(&s->env.draining) || st != FINC_READY) {
            r->retry_after = 1;
            if (st == FINC_LOAD_FAILED)
                return finc_respond_error(r, 503, FINC_ERR_NOT_READY, NULL, "model failed to load: %s", err);
            return finc_respond_error(r, 503, FINC_ERR_NOT_READY, NULL, "%s",
                                   atomic_load(&s->env.draining) ? "the server is draining" : "the model is loading");
        }
        r->timeout_ms = s->cfg.timeout_ms;
        const char *t = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Finc-Timeout-Ms");
        if (t) {
            double ms;
            if (finc_parse_positive(t, 86400000.0, &ms) != 0)
                return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                       "X-Finc-Timeout-Ms wants a positive number of milliseconds, got '%.40s'", t);
            if (ms < r->timeout_ms) r->timeout_ms = ms;
        }
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    finc_server *s = cls;
    finc_request *r = *con_cls;
    (void)version;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->srv = s;
        r->env = &s->env;
        r->conn = conn;
        r->t_start = finc_mono_now();
        atomic_init(&r->refs, 1);
        r->method = finc_parse_method(method);
        snprintf(r->path, sizeof r->path, "%s", url);
        r->ep = endpoint_of(s, url);
        const route *rt = find_route(r->ep);
        finc_request_id(&s->env, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"), r->id);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        finc_format_addr(ci ? ci->client_addr : NULL, r->remote, sizeof r->remote);
        finc_gate_request(s, conn, 1);
        *con_cls = r;
        atomic_fetch_add(&s->inflight, 1);
        finc_metrics_inflight_add(s->metrics, 1);
        return early_checks(r, rt);
    }
    if (*upload_data_size > 0) {
        const size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->answered) return MHD_YES;
        if (finc_mono_now() - r->t_start > s->cfg.read_timeout) {
            r->status = 408;
            r->reason = FINC_ERR_BAD_REQUEST;
            snprintf(r->error, sizeof r->error, "the body took over %g s to arrive", s->cfg.read_timeout);
            return MHD_NO;  /* a response cannot start mid-body: close */
        }
        finc_request_body_append(r, upload_data, n, (size_t)s->cfg.max_body);
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->submitted) {
        if (r->job.status == FINC_JOB_PENDING) return MHD_YES;  /* not ours to answer yet */
        return r->answer(r);
    }
    if (r->too_big)
        return finc_respond_error(r, 413, FINC_ERR_TOO_LARGE, NULL, "request body over the limit of %ld bytes",
                               s->cfg.max_body);
    if (r->over_budget) {
        r->retry_after = 1;
        return finc_respond_error(r, 503, FINC_ERR_OVERLOADED, NULL,
                               "the server holds as many request bodies as it may (--max-body-memory)");
    }
    if (r->body) r->body[r->len] = '\0';
    return find_route(r->ep)->handle(r);
}

/* An answer libmicrohttpd made itself on this thread (mhd_log saw it), not
 * yet counted: its request's, when one had begun, else the connection's. */
static _Thread_local unsigned mhd_status;

void finc_http_connection_closed(finc_server *s)
{
    if (!mhd_status) return;
    finc_metrics_request(s->metrics, FINC_EP_OTHER, (int)mhd_status, 0, FINC_ERR_BAD_REQUEST);
    mhd_status = 0;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    finc_server *s = cls;
    finc_request *r = *con_cls;
    finc_gate_request(s, conn, 0);
    if (!r) return;
    *con_cls = NULL;
    const double latency = finc_mono_now() - r->t_start;
    int status = r->status;
    if (mhd_status && !r->answered) {
        /* libmicrohttpd refused the body's framing (a malformed chunk) and answered itself */
        status = (int)mhd_status;
        mhd_status = 0;
        r->reason = FINC_ERR_BAD_REQUEST;
        snprintf(r->error, sizeof r->error, "libmicrohttpd refused the request body's framing");
    } else if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (status == 0 || r->job.status == FINC_JOB_CANCELLED)) {
        /* Never answered, or the answer did not get out: nginx's 499, or 408 for a timeout. */
        status = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? 408 : 499;
        if (r->reason == FINC_ERR_NONE) r->reason = FINC_ERR_CLIENT_CLOSED;
    } else if (status == 0) {
        status = 500;
    }
    finc_metrics_request(s->metrics, r->ep, status, latency, r->reason);
    finc_metrics_inflight_add(s->metrics, -1);
    if (s->env.log_json) finc_request_log(r, status, latency);
    atomic_fetch_sub(&s->inflight, 1);
    if (atomic_fetch_sub(&r->refs, 1) == 1) finc_request_free(r);
}

/* libmicrohttpd's own messages (malformed requests, closed connections) as
 * log lines of the same shape as the request log. The answers it still
 * makes itself (HTML: a malformed head later on a kept-alive connection, as
 * the gate checks only the first; a malformed chunk in a body) are counted
 * like the server's own: on the request when one had begun, else on the
 * connection as it closes. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    finc_server *s = cls;
    unsigned status = 0;
    if (strstr(fmt, "HTTP response code is %u")) {
        va_list cp;
        va_copy(cp, ap);
        status = va_arg(cp, unsigned);
        va_end(cp);
        finc_http_connection_closed(s);  /* one not counted yet, if any */
        mhd_status = status;
    }
    if (!s->env.log_json) return;
    char msg[512], esc[700], line[900];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = '\0';
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    char ts[40], st[24] = "";
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    if (status) snprintf(st, sizeof st, ",\"status\":%u", status);
    int k = snprintf(line, sizeof line, "{\"ts\":\"%s.%03ldZ\",\"source\":\"libmicrohttpd\"%s,\"msg\":\"%s\"}\n", ts,
                     now.tv_nsec / 1000000, st, finc_json_escape(msg, esc, sizeof esc));
    if (k > 0) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)k < sizeof line ? (size_t)k : sizeof line);
        (void)w;
    }
}

struct MHD_Daemon *finc_http_start(finc_server *s)
{
    const finc_server_config *cfg = &s->cfg;
    const unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                           MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections + FINC_GATE_HEADROOM,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)4 * FINC_MAX_HEAD,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ceil(cfg->idle_timeout),
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, finc_gate_notify, s,
                            MHD_OPTION_END);
}
