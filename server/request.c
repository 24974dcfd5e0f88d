/* A request's answers, body, id and log line (server/request.h). */
#include "server/request.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "server/httputil.h"

#define JSON_TYPE "application/json"

/* ---- names ------------------------------------------------------------------- */

static const char *const ep_paths[FINC_EP_COUNT] = {
    [FINC_EP_SAMPLE] = "/sample",   [FINC_EP_SCORE] = "/log-likelihood", [FINC_EP_HEALTHZ] = "/healthz",
    [FINC_EP_READYZ] = "/readyz",   [FINC_EP_MODELS] = "/v1/models",     [FINC_EP_METRICS] = "/metrics",
    [FINC_EP_UI] = "/",             [FINC_EP_OTHER] = "other",
};

static const char *const reason_names[FINC_ERR_COUNT] = {
    [FINC_ERR_NONE] = "none",
    [FINC_ERR_BAD_REQUEST] = "bad_request",
    [FINC_ERR_UNAUTHORIZED] = "unauthorized",
    [FINC_ERR_NOT_FOUND] = "not_found",
    [FINC_ERR_METHOD] = "method_not_allowed",
    [FINC_ERR_NOT_ACCEPTABLE] = "not_acceptable",
    [FINC_ERR_UNSUPPORTED_MEDIA] = "unsupported_media_type",
    [FINC_ERR_TOO_LARGE] = "too_large",
    [FINC_ERR_OVERLOADED] = "overloaded",
    [FINC_ERR_NOT_READY] = "not_ready",
    [FINC_ERR_DEADLINE] = "deadline_exceeded",
    [FINC_ERR_CLIENT_CLOSED] = "client_closed",
    [FINC_ERR_ENGINE] = "engine",
    [FINC_ERR_INTERNAL] = "internal",
};

const char *finc_endpoint_path(finc_endpoint ep) { return ep_paths[ep < FINC_EP_COUNT ? ep : FINC_EP_OTHER]; }

finc_endpoint finc_endpoint_find(const char *path)
{
    for (int ep = 0; ep < FINC_EP_OTHER; ep++)
        if (!strcmp(path, ep_paths[ep])) return (finc_endpoint)ep;
    return FINC_EP_OTHER;
}

const char *finc_error_reason_name(finc_error_reason r) { return reason_names[r < FINC_ERR_COUNT ? r : FINC_ERR_INTERNAL]; }

static const char *method_name(http_method m)
{
    return m == METHOD_GET ? "GET" : m == METHOD_HEAD ? "HEAD" : m == METHOD_POST ? "POST"
           : m == METHOD_OPTIONS ? "OPTIONS" : "OTHER";
}

/* ---- answers ------------------------------------------------------------------- */

enum MHD_Result finc_respond(finc_request *r, int status, const char *ctype, void *body,
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
        snprintf(ra, sizeof ra, "%d", r->env->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (atomic_load(&r->env->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->bytes_out = len;
    r->answered = 1;
    return rc;
}

enum MHD_Result finc_respond_json(finc_request *r, int status, cJSON *obj)
{
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        r->reason = FINC_ERR_INTERNAL;
        snprintf(r->error, sizeof r->error, "out of memory");
        char *copy = strdup(oom);
        return finc_respond(r, 500, JSON_TYPE, copy, copy ? strlen(copy) : 0);
    }
    return finc_respond(r, status, JSON_TYPE, text, strlen(text));
}

enum MHD_Result finc_respond_error(finc_request *r, int status, finc_error_reason why, cJSON *extra,
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
    return finc_respond_json(r, status, obj);
}

/* ---- the body ------------------------------------------------------------------ */

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

int finc_request_body_reserve(finc_request *r, size_t cap)
{
    finc_request_env *env = r->env;
    const long delta = (long)cap - (long)r->cap;
    if (atomic_fetch_add(&env->body_bytes, delta) + delta > env->max_body_memory) {
        atomic_fetch_sub(&env->body_bytes, delta);
        return -1;
    }
    char *nb = body_realloc(r->body, r->cap, cap);
    if (!nb) {
        atomic_fetch_sub(&env->body_bytes, delta);
        return -1;
    }
    r->body = nb;
    r->cap = cap;
    return 0;
}

void finc_request_drop_body(finc_request *r)
{
    atomic_fetch_sub(&r->env->body_bytes, (long)r->cap);
    if (r->cap > BODY_MAP_BYTES) munmap(r->body, r->cap);
    else free(r->body);
    r->body = NULL;
    r->cap = 0;
}

void finc_request_free(finc_request *r)
{
    finc_request_drop_body(r);
    free(r->pixels);
    free(r->logp);
    free(r->anomaly);
    free(r->names);
    free(r);
}

void finc_request_body_append(finc_request *r, const char *data, size_t n, size_t limit)
{
    if (r->too_big || r->over_budget) return;
    if (r->len + n > limit) {
        r->too_big = 1;  /* the rest is read and dropped; the answer is 413 */
        return;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1) cap *= 2;
        if (cap > limit + 1) cap = limit + 1;
        if (finc_request_body_reserve(r, cap) != 0) {
            /* over the budget (or out of memory): what came is given back, the rest dropped */
            r->over_budget = 1;
            finc_request_drop_body(r);
            return;
        }
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
}

/* ---- id, address, log ------------------------------------------------------------ */

http_method finc_parse_method(const char *m)
{
    if (!strcmp(m, "GET")) return METHOD_GET;
    if (!strcmp(m, "HEAD")) return METHOD_HEAD;
    if (!strcmp(m, "POST")) return METHOD_POST;
    if (!strcmp(m, "OPTIONS")) return METHOD_OPTIONS;
    return METHOD_OTHER;
}

void finc_request_id(finc_request_env *env, const char *given, char out[72])
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
    snprintf(out, 72, "%016lx", (unsigned long)atomic_fetch_add(&env->next_id, 1));
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

void finc_request_log(const finc_request *r, int status, double latency)
{
    char line[1400], esc[512], path[400], ts[40];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *method = method_name(r->method);
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

