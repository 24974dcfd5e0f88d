/* One HTTP request as the server's handlers see it: what it asked (endpoint,
 * method, body), the job it became, and how it is answered. The functions
 * here answer a request (JSON, errors, bytes, with the server's headers),
 * hold its body within the server-wide budget, name it (X-Request-Id) and
 * log it. Of the server they know only the settings every request shares
 * (finc_request_env). The endpoints and the reasons a request fails are
 * named here once, for the router, the answers and the metrics alike. Not
 * for use outside server/. */
#ifndef FINC_REQUEST_H
#define FINC_REQUEST_H

#include <cJSON.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "engine/anomaly.h"
#include "server/batcher.h"

typedef enum {
    FINC_EP_SAMPLE,
    FINC_EP_SCORE,
    FINC_EP_HEALTHZ,
    FINC_EP_READYZ,
    FINC_EP_MODELS,
    FINC_EP_METRICS,
    FINC_EP_UI,          /* the page at / and its files under /ui/ */
    FINC_EP_OTHER,       /* unknown paths, one label value so cardinality stays bounded */
    FINC_EP_COUNT
} finc_endpoint;

/* Why a request failed; one label value each on finc_http_errors_total. */
typedef enum {
    FINC_ERR_NONE,
    FINC_ERR_BAD_REQUEST,
    FINC_ERR_UNAUTHORIZED,
    FINC_ERR_NOT_FOUND,
    FINC_ERR_METHOD,
    FINC_ERR_NOT_ACCEPTABLE,
    FINC_ERR_UNSUPPORTED_MEDIA,
    FINC_ERR_TOO_LARGE,
    FINC_ERR_OVERLOADED,
    FINC_ERR_NOT_READY,
    FINC_ERR_DEADLINE,
    FINC_ERR_CLIENT_CLOSED,
    FINC_ERR_ENGINE,
    FINC_ERR_INTERNAL,
    FINC_ERR_COUNT
} finc_error_reason;

typedef enum { METHOD_GET, METHOD_HEAD, METHOD_POST, METHOD_OPTIONS, METHOD_OTHER } http_method;

/* An endpoint's path ("/sample"), which is also its metrics label; "other"
 * for FINC_EP_OTHER. */
const char *finc_endpoint_path(finc_endpoint ep);
/* The endpoint a request path names; FINC_EP_OTHER for none. */
finc_endpoint finc_endpoint_find(const char *path);
/* A reason's metrics label ("bad_request"). */
const char *finc_error_reason_name(finc_error_reason r);
http_method finc_parse_method(const char *m);

/* What every request shares of its server, set when the server starts. */
typedef struct {
    int retry_after;          /* seconds, on answers that ask the client to retry */
    long max_body_memory;     /* bytes of request bodies held at once, all requests */
    int log_json;             /* one JSON line per request on stderr */
    atomic_long body_bytes;   /* bytes of bodies held now */
    atomic_int draining;      /* answers close their connections */
    atomic_ulong next_id;     /* for request ids the client did not give */
} finc_request_env;

/* What requests need to know of the model; filled once it is loaded. */
typedef struct {
    int c, h, w, D;
    double test_bpd;          /* NaN when the weights do not say */
    size_t n_params;
    char name[128];           /* the weights file's base name without extension */
} model_info;

typedef struct finc_server finc_server;
typedef struct finc_request finc_request;

struct finc_request {
    finc_server *srv;         /* opaque here: the handlers reach it through server/inference.h */
    finc_request_env *env;
    struct MHD_Connection *conn;
    finc_endpoint ep;
    http_method method;
    double t_start;
    char id[72];
    char remote[64];
    char path[160];           /* as requested, cut to fit (the log's path) */

    /* the body */
    char *body;               /* NUL-terminated once complete */
    size_t len, cap;
    int too_big;
    int over_budget;          /* the server held too many bodies: the rest is dropped, the answer 503 */

    /* the job, for /sample and /log-likelihood */
    finc_job job;
    atomic_int refs;          /* 1 for the HTTP side, +1 while the batcher holds the job */
    int submitted, answered;
    /* Set by the handler that submitted the job: the answer, once the
     * batcher has ended the job and resumed the connection. */
    enum MHD_Result (*answer)(finc_request *r);
    int accept_png;
    double temperature;       /* as asked (the job holds the float the engine uses) */
    uint8_t *pixels;          /* (n, C, H, W): score input or sample output */
    double *logp;             /* (n,) */
    finc_anomaly_result *anomaly;  /* (n,) for a calibrated model, else NULL */
    double alpha;             /* the verdicts' significance level */
    char (*names)[128];       /* (n,) multipart file names, or NULL */
    double timeout_ms;

    /* the answer */
    int status;
    finc_error_reason reason;
    char error[256];
    size_t bytes_out;
    const char *allow;        /* Allow header for 405 and OPTIONS */
    int retry_after;          /* add Retry-After */
    int www_authenticate;
    int close;                /* Connection: close (framing the server would not trust) */
    char seed_header[32];     /* X-Finc-Seed on PNG answers */
};

/* Frees r, its body and its buffers. */
void finc_request_free(finc_request *r);

/* Queue an answer; body is malloc'd and taken (NULL with len 0 for none). */
enum MHD_Result finc_respond(finc_request *r, int status, const char *ctype, void *body, size_t len);
/* A JSON answer; obj is freed. */
enum MHD_Result finc_respond_json(finc_request *r, int status, cJSON *obj);
/* {"error": message} plus the members of extra (taken; may be NULL). */
enum MHD_Result finc_respond_error(finc_request *r, int status, finc_error_reason why, cJSON *extra,
                                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sizes r's body buffer to cap bytes within the server-wide budget for
 * bodies: 0, or -1 when the budget or memory would not have it. */
int finc_request_body_reserve(finc_request *r, size_t cap);
/* Appends n bytes of body, up to limit bytes in all: past it r->too_big is
 * set and the rest dropped (413); past the budget r->over_budget (503). */
void finc_request_body_append(finc_request *r, const char *data, size_t n, size_t limit);
/* Frees the body buffer and returns its bytes to the budget. */
void finc_request_drop_body(finc_request *r);

/* Ids for requests: the client's X-Request-Id when it is short and plain, else a new one. */
void finc_request_id(finc_request_env *env, const char *given, char out[72]);
/* A client address as text ("-" when unknown). */
void finc_format_addr(const struct sockaddr *sa, char *out, size_t outlen);
/* The request log's line for r, which ended with status. */
void finc_request_log(const finc_request *r, int status, double latency);

#endif
