/* Shared between server/http.c (the daemon, requests, routing, small
 * endpoints) and server/inference.c (/sample and /log-likelihood). Not for
 * use outside server/. */
#ifndef FINC_HTTP_INTERNAL_H
#define FINC_HTTP_INTERNAL_H

#include <cJSON.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "server/batcher.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/server.h"

typedef enum { METHOD_GET, METHOD_HEAD, METHOD_POST, METHOD_OPTIONS, METHOD_OTHER } http_method;

/* What requests need to know of the model; filled once it is loaded. */
typedef struct {
    int c, h, w, D;
    double test_bpd;          /* NaN when the weights do not say */
    size_t n_params;
    char name[128];           /* the weights file's base name without extension */
} model_info;

typedef struct finc_gate finc_gate;

struct finc_server {
    finc_server_config cfg;
    struct MHD_Daemon *mhd;
    finc_gate *gate;
    finc_batcher *batcher;
    finc_metrics *metrics;
    int port;
    atomic_int draining;
    atomic_long inflight;
    atomic_long body_bytes;   /* request body buffers held, against cfg.max_body_memory */
    atomic_ulong next_id;
    pthread_mutex_t info_mu;
    atomic_int info_ready;
    model_info info;
};

typedef struct finc_request {
    finc_server *srv;
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
} finc_request;

/* Ids for requests: the client's X-Request-Id when it is short and plain, else a new one. */
void finc_request_id(finc_server *s, const char *given, char out[72]);
/* A client address as text ("-" when unknown). */
void finc_format_addr(const struct sockaddr *sa, char *out, size_t outlen);
http_method finc_parse_method(const char *m);
/* The request log's line for r, which ended with status. */
void finc_request_log(const finc_request *r, int status, double latency);
/* /healthz (FINC_EP_HEALTHZ) or /readyz: 200 or 503, the status word of the
 * answer, and for 503 why in err. */
int finc_health(finc_server *s, finc_endpoint ep, const char **word, char *err, size_t errlen);

/* A connection libmicrohttpd held closed: counts an answer it made itself
 * on it, if any (on the thread that closed it). */
void finc_http_connection_closed(finc_server *s);

/* server/gate.c: the front door. Start takes the listening socket. */
int finc_gate_start(finc_server *s, int listen_fd, char *err, size_t errlen);
/* Stops accepting and closes the connections still waiting for a head. */
void finc_gate_close(finc_server *s);
/* After libmicrohttpd stopped. */
void finc_gate_free(finc_server *s);
/* MHD_OPTION_NOTIFY_CONNECTION (cls is the server). */
void finc_gate_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode code);
/* A request's head came on conn (begun 1), or its answer ended (0). */
void finc_gate_request(finc_server *s, struct MHD_Connection *conn, int begun);

/* Frees the request's body buffer and returns its bytes to the server's budget. */
void finc_request_drop_body(finc_request *r);

/* NULL until the model is loaded. */
const model_info *finc_server_model(finc_server *s);

/* Queue an answer; body is malloc'd and taken (NULL with len 0 for none). */
enum MHD_Result finc_http_respond(finc_request *r, int status, const char *ctype, void *body,
                                  size_t len);
/* A JSON answer; obj is freed. */
enum MHD_Result finc_http_json(finc_request *r, int status, cJSON *obj);
/* {"error": message} plus the members of extra (taken; may be NULL). */
enum MHD_Result finc_http_error(finc_request *r, int status, finc_error_reason why, cJSON *extra,
                                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Claims queue room for r->job (503 when full or draining), suspends the
 * connection and submits; the answer comes from finc_answer_job. */
enum MHD_Result finc_http_enqueue(finc_request *r);

/* server/inference.c */
enum MHD_Result finc_handle_sample(finc_request *r);
enum MHD_Result finc_handle_score(finc_request *r);
/* After the batcher resumed the connection: the answer for r->job. */
enum MHD_Result finc_answer_job(finc_request *r);

#endif
