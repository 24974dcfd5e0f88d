/* The server's own state, shared by server/server.c (start, stop, the
 * model's figures), server/http.c (libmicrohttpd's callbacks, routing, the
 * small endpoints) and server/gate.c (the front door). The inference
 * handlers do not see it: they have server/inference.h. Not for use outside
 * server/. */
#ifndef FINC_SERVER_INTERNAL_H
#define FINC_SERVER_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "server/batcher.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/server.h"

typedef struct finc_gate finc_gate;

struct finc_server {
    finc_server_config cfg;
    struct MHD_Daemon *mhd;
    finc_gate *gate;
    finc_batcher *batcher;
    finc_metrics *metrics;
    int port;
    finc_request_env env;     /* what every request shares: draining, the body budget, ids */
    atomic_long inflight;
    atomic_int info_ready;    /* info is filled, once, when the model has loaded */
    model_info info;
};

/* /healthz (FINC_EP_HEALTHZ) or /readyz: 200 or 503, the status word of the
 * answer, and for 503 why in err. */
int finc_health(finc_server *s, finc_endpoint ep, const char **word, char *err, size_t errlen);

/* A connection libmicrohttpd held closed: counts an answer it made itself
 * on it, if any (on the thread that closed it). */
void finc_http_connection_closed(finc_server *s);

/* server/http.c: libmicrohttpd started with the server's callbacks, taking
 * connections from the gate; NULL when it does not start. */
struct MHD_Daemon *finc_http_start(finc_server *s);

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

#endif
