/* The daemon and the life of a request: read (with limits), route, check
 * auth, answer the small endpoints, hand inference to server/inference.c,
 * resume from the batcher, log one line and record metrics at the end. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/anomaly.h"
#include "engine/version.h"
#include "server/http_internal.h"
#include "server/httputil.h"

#define JSON_TYPE "application/json"
#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- model info ------------------------------------------------------------ */

const model_info *finc_server_model(finc_server *s)
{
    if (atomic_load(&s->info_ready)) return &s->info;
    const model_info *out = NULL;
    pthread_mutex_lock(&s->info_mu);
    if (atomic_load(&s->info_ready)) {
        out = &s->info;
    } else if (finc_batcher_state(s->batcher, NULL, 0) == FINC_READY) {
        const finc_config *cfg = &finc_batcher_model(s->batcher)->cfg;
        model_info *mi = &s->info;
        mi->c = cfg->c, mi->h = cfg->h, mi->w = cfg->w;
        mi->D = finc_config_dim(cfg);
        mi->test_bpd = cfg->test_bpd;
        mi->n_params = finc_batcher_model(s->batcher)->n_params;
        const char *base = strrchr(s->cfg.weights, '/');
        snprintf(mi->name, sizeof mi->name, "%.127s", base ? base + 1 : s->cfg.weights);
        char *dot = strrchr(mi->name, '.');
        if (dot && dot != mi->name) *dot = '\0';
        char shape[200];
        snprintf(shape, sizeof shape, "%s %dx%dx%d", mi->name, mi->c, mi->h, mi->w);
        finc_metrics_set_info(s->metrics, FINC_VERSION, finc_batcher_backend(s->batcher), shape);
        atomic_store(&s->info_ready, 1);
        out = mi;
    }
    pthread_mutex_unlock(&s->info_mu);
    return out;
}

/* ---- answers ---------------------------------------------------------------- */

enum MHD_Result finc_http_respond(finc_request *r, int status, const char *ctype, void *body,
                                  size_t len)
{
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (r->allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->www_authenticate) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (r->close) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (r->seed_header[0]) MHD_add_response_header(resp, "X-Finc-Seed", r->seed_header);
    if (r->retry_after) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", r->srv->cfg.retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (atomic_load(&r->srv->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->bytes_out = len;
    r->answered = 1;
    return rc;
}

enum MHD_Result finc_http_json(finc_request *r, int status, cJSON *obj)
{
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        r->reason = FINC_ERR_INTERNAL;
        snprintf(r->error, sizeof r->error, "out of memory");
        char *copy = strdup(oom);
        return finc_http_respond(r, 500, JSON_TYPE, copy, copy ? strlen(copy) : 0);
    }
    return finc_http_respond(r, status, JSON_TYPE, text, strlen(text));
}

enum MHD_Result finc_http_error(finc_request *r, int status, finc_error_reason why, cJSON *extra,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    finc_utf8_sanitize(r->error);
    r->reason = why;
    cJSON *obj = cJSON_CreateObject();
    if (obj) {
        cJSON_AddStringToObject(obj, "error", r->error);
        if (extra) {
            for (cJSON *it = extra->child, *next; it; it = next) {
                next = it->next;
                cJSON_AddItemToObject(obj, it->string, cJSON_DetachItemViaPointer(extra, it));
            }
        }
    }
    cJSON_Delete(extra);
    return finc_http_json(r, status, obj);
}

/* ---- the batcher's side of a request ------------------------------------------ */

/* Bodies past this size live in their own mappings (mremap grows them,
 * munmap gives them back at once): the allocator keeps what it frees (see
 * finc serve's mallopt), and a burst of large bodies would otherwise stay
 * resident long after it ended. */
#define BODY_MAP_BYTES (256u << 10)

static char *body_realloc(char *old, size_t oldcap, size_t cap)
{
    const int was_mapped = oldcap > BODY_MAP_BYTES, mapped = cap > BODY_MAP_BYTES;
    if (!was_mapped && !mapped) return realloc(old, cap);
    if (was_mapped && mapped) {
        void *p = mremap(old, oldcap, cap, MREMAP_MAYMOVE);
        return p == MAP_FAILED ? NULL : p;
    }
    char *nb = mapped ? mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : malloc(cap);
    if (nb == MAP_FAILED || !nb) return NULL;
    if (old) memcpy(nb, old, oldcap < cap ? oldcap : cap);
    if (was_mapped) munmap(old, oldcap);
    else free(old);
    return nb;
}

/* Sizes r's body buffer to cap bytes, within the server-wide budget for
 * bodies: 0, or -1 when the budget or memory would not have it. */
static int body_resize(finc_request *r, size_t cap)
{
    finc_server *s = r->srv;
    const long delta = (long)cap - (long)r->cap;
    if (atomic_fetch_add(&s->body_bytes, delta) + delta > s->cfg.max_body_memory) {
        atomic_fetch_sub(&s->body_bytes, delta);
        return -1;
    }
    char *nb = body_realloc(r->body, r->cap, cap);
    if (!nb) {
        atomic_fetch_sub(&s->body_bytes, delta);
        return -1;
    }
    r->body = nb;
    r->cap = cap;
    return 0;
}

void finc_request_drop_body(finc_request *r)
{
    atomic_fetch_sub(&r->srv->body_bytes, (long)r->cap);
    if (r->cap > BODY_MAP_BYTES) munmap(r->body, r->cap);
    else free(r->body);
    r->body = NULL;
    r->cap = 0;
}

static void request_free(finc_request *r)
{
    finc_request_drop_body(r);
    free(r->pixels);
    free(r->logp);
    free(r->anomaly);
    free(r->names);
    free(r);
}

/* The batcher's loop thread: the job ended; wake its connection. */
static void on_job_done(finc_job *job, void *user)
{
    finc_request *r = user;
    (void)job;
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        request_free(r);  /* the connection went away first */
        return;
    }
    MHD_resume_connection(r->conn);
}

enum MHD_Result finc_http_enqueue(finc_request *r)
{
    finc_server *s = r->srv;
    static const char *kind_name[] = {"sample", "score"};
    /* A request whose headers came before a drain began is served: the
     * early checks refused the later ones. */
    r->job.deadline = r->t_start + r->timeout_ms / 1000.0;
    double need;
    const int claim = finc_batcher_reserve(s->batcher, &r->job, &need);
    if (claim == -2)
        return finc_http_error(r, 503, FINC_ERR_DEADLINE, NULL,
                               "this request needs about %.3g s of engine time, more than its deadline (%g ms) "
                               "leaves: send fewer images or draws, or a longer X-Finc-Timeout-Ms",
                               need, r->timeout_ms);
    if (claim != 0) {
        r->retry_after = 1;
        return finc_http_error(r, 503, FINC_ERR_OVERLOADED, NULL,
                               "the %s queue is full (%d passes%s); retry later", kind_name[r->job.kind],
                               s->cfg.queue_size,
                               finc_job_cost(&r->job) > s->cfg.max_batch ? ", three quarters for heavy requests" : "");
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->job.fd = ci ? ci->connect_fd : -1;
    r->job.done = on_job_done;
    r->job.user = r;
    atomic_fetch_add(&r->refs, 1);
    r->submitted = 1;
    /* Suspended before the job exists for the batcher, so its resume can
     * never come first. */
    MHD_suspend_connection(r->conn);
    finc_batcher_submit(s->batcher, &r->job);
    return MHD_YES;
}

/* ---- small endpoints ------------------------------------------------------------- */

/* The engine failed its last unhealthy-after batches (a device in a sticky
 * error state fails every batch until the process restarts): health and
 * readiness answer 503 with the last error until a batch succeeds again. */
int finc_health(finc_server *s, finc_endpoint ep, const char **word, char *err, size_t errlen)
{
    char why[300];
    const finc_load_state st = ep == FINC_EP_READYZ ? finc_batcher_state(s->batcher, why, sizeof why) : FINC_READY;
    if (ep == FINC_EP_READYZ && (st != FINC_READY || atomic_load(&s->draining))) {
        *word = atomic_load(&s->draining) ? "draining" : st == FINC_LOADING ? "loading" : "failed";
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
    if (status == 200) return finc_http_json(r, 200, o);
    return finc_http_error(r, status, FINC_ERR_NOT_READY, o, "%s", err);
}

static enum MHD_Result handle_models(finc_request *r)
{
    finc_server *s = r->srv;
    const model_info *mi = finc_server_model(s);
    if (!mi) {
        r->retry_after = 1;
        return finc_http_error(r, 503, FINC_ERR_NOT_READY, NULL, "the model is not loaded yet");
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
    return finc_http_json(r, 200, root);
}

static enum MHD_Result handle_metrics(finc_request *r)
{
    finc_server *s = r->srv;
    for (int k = 0; k < FINC_JOB_KINDS; k++)
        finc_metrics_queue_depth(s->metrics, k, finc_batcher_depth(s->batcher, (finc_job_kind)k));
    size_t len;
    char *text = finc_metrics_render(s->metrics, &len);
    if (!text) return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
    return finc_http_respond(r, 200, METRICS_TYPE, text, len);
}

/* ---- routing ---------------------------------------------------------------------- */

typedef struct {
    const char *path;
    finc_endpoint ep;
    int post;                 /* POST only; else GET and HEAD */
    int auth;                 /* needs the bearer token when one is set */
    enum MHD_Result (*handle)(finc_request *r);
} route;

static const route routes[] = {
    {"/sample", FINC_EP_SAMPLE, 1, 1, finc_handle_sample},
    {"/log-likelihood", FINC_EP_SCORE, 1, 1, finc_handle_score},
    {"/healthz", FINC_EP_HEALTHZ, 0, 0, handle_health},
    {"/readyz", FINC_EP_READYZ, 0, 0, handle_health},
    {"/v1/models", FINC_EP_MODELS, 0, 1, handle_models},
    {"/metrics", FINC_EP_METRICS, 0, 0, handle_metrics},
};

static const route *find_route(const char *url)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) return &routes[i];
    return NULL;
}

http_method finc_parse_method(const char *m)
{
    if (!strcmp(m, "GET")) return METHOD_GET;
    if (!strcmp(m, "HEAD")) return METHOD_HEAD;
    if (!strcmp(m, "POST")) return METHOD_POST;
    if (!strcmp(m, "OPTIONS")) return METHOD_OPTIONS;
    return METHOD_OTHER;
}

void finc_request_id(finc_server *s, const char *given, char out[72])
{
    size_t n = 0;
    if (given) {
        /* Echoed only when it is short and plain, so it cannot break a header or a log line. */
        for (; given[n] && n < 64; n++) {
            char c = given[n];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '_' || c == '.'))
                break;
        }
        if (given[n] == '\0' && n > 0) {
            memcpy(out, given, n + 1);
            return;
        }
    }
    snprintf(out, 72, "%016lx", (unsigned long)atomic_fetch_add(&s->next_id, 1));
}

void finc_format_addr(const struct sockaddr *sa, char *out, size_t outlen)
{
    snprintf(out, outlen, "-");
    if (!sa) return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)outlen);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)outlen);
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
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "malformed header name '%s'", f.bad_name);
    }
    if (f.content_length > 1)
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%d Content-Length headers: send one",
                               f.content_length);
    if (f.content_length)
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                               "Content-Length and Transfer-Encoding together: send one");
    if (f.transfer_encoding > 1)
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "several Transfer-Encoding headers: send one");
    for (char *p = f.te; *p; p++)
        if (*p < 0x20 || *p > 0x7e) *p = '?';
    return finc_http_error(r, 501, FINC_ERR_BAD_REQUEST, NULL, "Transfer-Encoding '%s' is not supported (chunked is)",
                           f.te);
}

static enum MHD_Result early_checks(finc_request *r, const route *rt)
{
    finc_server *s = r->srv;
    const enum MHD_Result framed = framing_checks(r);
    if (r->answered || framed != MHD_YES) return framed;
    if (!rt) return finc_http_error(r, 404, FINC_ERR_NOT_FOUND, NULL, "no such endpoint");
    r->allow = rt->post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
    if (r->method == METHOD_OPTIONS) return finc_http_respond(r, 204, NULL, NULL, 0);
    const int ok = rt->post ? r->method == METHOD_POST : (r->method == METHOD_GET || r->method == METHOD_HEAD);
    if (!ok) return finc_http_error(r, 405, FINC_ERR_METHOD, NULL, "%s wants %s", rt->path, rt->post ? "POST" : "GET");
    r->allow = NULL;
    if (rt->auth && s->cfg.api_key[0]) {
        const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!finc_bearer_ok(auth, s->cfg.api_key)) {
            r->www_authenticate = 1;
            return finc_http_error(r, 401, FINC_ERR_UNAUTHORIZED, NULL,
                                   auth ? "invalid bearer token" : "this endpoint needs 'Authorization: Bearer <token>'");
        }
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || (unsigned long long)s->cfg.max_body < n)
            return finc_http_error(r, 413, FINC_ERR_TOO_LARGE, NULL, "request body over the limit of %ld bytes",
                                   s->cfg.max_body);
        /* Room for the declared body, up to a point: a client that declares
         * megabytes and sends nothing must not cost megabytes. */
        if (n > 0 && body_resize(r, n < (256u << 10) ? (size_t)n + 1 : (256u << 10)) != 0) {
            r->retry_after = 1;
            r->close = 1;
            return finc_http_error(r, 503, FINC_ERR_OVERLOADED, NULL,
                                   "the server holds as many request bodies as it may (--max-body-memory)");
        }
    }
    if (rt->post) {
        char err[512];
        const finc_load_state st = finc_batcher_state(s->batcher, err, sizeof err);
        if (atomic_load(&s->draining) || st != FINC_READY) {
            r->retry_after = 1;
            if (st == FINC_LOAD_FAILED)
                return finc_http_error(r, 503, FINC_ERR_NOT_READY, NULL, "model failed to load: %s", err);
            return finc_http_error(r, 503, FINC_ERR_NOT_READY, NULL, "%s",
                                   atomic_load(&s->draining) ? "the server is draining" : "the model is loading");
        }
        r->timeout_ms = s->cfg.timeout_ms;
        const char *t = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Finc-Timeout-Ms");
        if (t) {
            double ms;
            if (finc_parse_positive(t, 86400000.0, &ms) != 0)
                return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                       "X-Finc-Timeout-Ms wants a positive number of milliseconds, got '%.40s'", t);
            if (ms < r->timeout_ms) r->timeout_ms = ms;
        }
    }
    return MHD_YES;
}

static int append_body(finc_request *r, const char *data, size_t n)
{
    const size_t limit = (size_t)r->srv->cfg.max_body;
    if (r->too_big || r->over_budget) return 0;
    if (r->len + n > limit) {
        r->too_big = 1;  /* the rest is read and dropped; the answer is 413 */
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1) cap *= 2;
        if (cap > limit + 1) cap = limit + 1;
        if (body_resize(r, cap) != 0) {
            /* over the budget (or out of memory): what came is given back, the rest dropped */
            r->over_budget = 1;
            finc_request_drop_body(r);
            return 0;
        }
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    return 0;
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
        r->conn = conn;
        r->t_start = finc_mono_now();
        atomic_init(&r->refs, 1);
        r->method = finc_parse_method(method);
        snprintf(r->path, sizeof r->path, "%s", url);
        const route *rt = find_route(url);
        r->ep = rt ? rt->ep : FINC_EP_OTHER;
        finc_request_id(s, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"), r->id);
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
        return append_body(r, upload_data, n) == 0 ? MHD_YES : MHD_NO;
    }
    if (r->answered) return MHD_YES;
    if (r->submitted) {
        if (r->job.status == FINC_JOB_PENDING) return MHD_YES;  /* not ours to answer yet */
        return finc_answer_job(r);
    }
    if (r->too_big)
        return finc_http_error(r, 413, FINC_ERR_TOO_LARGE, NULL, "request body over the limit of %ld bytes",
                               s->cfg.max_body);
    if (r->over_budget) {
        r->retry_after = 1;
        return finc_http_error(r, 503, FINC_ERR_OVERLOADED, NULL,
                               "the server holds as many request bodies as it may (--max-body-memory)");
    }
    if (r->body) r->body[r->len] = '\0';
    const route *rt = find_route(url);
    return rt->handle(r);
}

void finc_request_log(const finc_request *r, int status, double latency)
{
    char line[1400], esc[512], path[400], ts[40];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *method = r->method == METHOD_GET ? "GET" : r->method == METHOD_HEAD ? "HEAD"
                         : r->method == METHOD_POST ? "POST" : r->method == METHOD_OPTIONS ? "OPTIONS" : "OTHER";
    int n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s.%03ldZ\",\"id\":\"%s\",\"remote\":\"%s\",\"method\":\"%s\",\"path\":\"%s\","
                     "\"status\":%d,\"latency_ms\":%.3f,\"bytes_in\":%zu,\"bytes_out\":%zu",
                     ts, now.tv_nsec / 1000000, r->id, r->remote, method, finc_json_escape(r->path, path, sizeof path), status,
                     latency * 1e3, r->len, r->bytes_out);
    if (r->submitted && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, ",\"images\":%d,\"batch\":%d,\"queue_ms\":%.3f",
                      r->job.n, r->job.batch_size, r->job.queue_wait * 1e3);
    if (r->error[0] && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, ",\"error\":\"%s\"",
                      finc_json_escape(r->error, esc, sizeof esc));
    if (n < 0) return;
    if ((size_t)n > sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '}';
    line[n++] = '\n';
    /* One write per line, so lines from many threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
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
    if (!strcmp(s->cfg.log, "json")) finc_request_log(r, status, latency);
    atomic_fetch_sub(&s->inflight, 1);
    if (atomic_fetch_sub(&r->refs, 1) == 1) request_free(r);
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
    if (strcmp(s->cfg.log, "json") != 0) return;
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
    pthread_mutex_init(&s->info_mu, NULL);
    s->metrics = finc_metrics_new(cfg->max_batch);
    int fd = s->metrics ? listen_on(cfg->host, cfg->port, &s->port, err, errlen) : -1;
    if (!s->metrics) snprintf(err, errlen, "out of memory");
    if (fd < 0) {
        finc_metrics_free(s->metrics);
        pthread_mutex_destroy(&s->info_mu);
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
    };
    s->batcher = finc_batcher_start(&bo, s->metrics, err, errlen);
    if (!s->batcher) {
        close(fd);
        finc_metrics_free(s->metrics);
        pthread_mutex_destroy(&s->info_mu);
        free(s);
        return NULL;
    }
    /* The gate accepts; libmicrohttpd gets each connection once its first head is whole. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                              MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections + FINC_GATE_HEADROOM,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)4 * FINC_MAX_HEAD,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ceil(cfg->idle_timeout),
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_NOTIFY_CONNECTION, finc_gate_notify, s,
                              MHD_OPTION_END);
    if (!s->mhd || finc_gate_start(s, fd, err, errlen) != 0) {
        if (!s->mhd) snprintf(err, errlen, "cannot start the HTTP daemon on port %d", s->port);
        if (!s->gate) close(fd);
        finc_gate_close(s);
        if (s->mhd) MHD_stop_daemon(s->mhd);
        finc_gate_free(s);
        finc_batcher_stop(s->batcher);
        finc_metrics_free(s->metrics);
        pthread_mutex_destroy(&s->info_mu);
        free(s);
        return NULL;
    }
    return s;
}

int finc_server_wait_ready(finc_server *s, char *err, size_t errlen)
{
    if (finc_batcher_wait_ready(s->batcher, err, errlen) != FINC_READY) return -1;
    finc_server_model(s);
    return 0;
}

finc_load_state finc_server_state(finc_server *s, char *err, size_t errlen)
{
    const finc_load_state st = finc_batcher_state(s->batcher, err, errlen);
    if (st == FINC_READY) finc_server_model(s);
    return st;
}

int finc_server_port(const finc_server *s) { return s->port; }

const char *finc_server_backend(const finc_server *s) { return finc_batcher_backend(s->batcher); }

void finc_server_drain(finc_server *s)
{
    atomic_store(&s->draining, 1);
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
    atomic_store(&s->draining, 1);
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
    pthread_mutex_destroy(&s->info_mu);
    free(s);
}
