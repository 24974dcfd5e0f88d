/* The HTTP service behind `finc serve` (started and stopped in
 * server/server.c): a gate thread (server/gate.c)
 * accepts connections and vets each one's first request head, then
 * libmicrohttpd owns them (a thread pool on epoll); inference requests become batcher jobs while
 * their connections are suspended, and answers are encoded on the HTTP
 * threads when the batcher resumes them. Those threads are the PNG work
 * pool: a request's PNG work runs on the thread that owns its connection,
 * so no hand-off sits between the batcher and the answer; it is a small
 * share of the engine's time for the same images (docs/benchmarks.md, the
 * server section).
 * Start, drain and stop are separate so the signal handling (server/serve.c)
 * and the tests drive the same code. */
#ifndef FINC_SERVER_H
#define FINC_SERVER_H

#include <stddef.h>

#include "server/batcher.h"
#include "server/config.h"

/* Request heads the gate lets through: bytes in all, bytes
 * of the target, header fields. libmicrohttpd's per-connection memory is
 * sized so that it never refuses one of these itself. */
#define FINC_MAX_HEAD 16384
#define FINC_MAX_TARGET 8192
#define FINC_MAX_HEADERS 100
/* Connections the gate may hold, waiting for their heads, beyond --max-connections. */
#define FINC_GATE_HEADROOM 64


typedef struct finc_server finc_server;

/* Binds host:port, starts the HTTP threads and the batcher, whose engine
 * thread loads the weights in the background (readiness 503 until then).
 * NULL with err set when the address cannot be bound or threads fail. */
finc_server *finc_server_start(const finc_server_config *cfg, char *err, size_t errlen);
/* Blocks until the model is loaded: 0, or -1 with the loader's message. */
int finc_server_wait_ready(finc_server *s, char *err, size_t errlen);
/* Without blocking: where loading stands (a failure's message in err). */
finc_load_state finc_server_state(finc_server *s, char *err, size_t errlen);
/* The bound port (the chosen one when cfg->port was 0). */
int finc_server_port(const finc_server *s);
/* The engine's backend once ready: "cpu" or "cuda" (what "auto" chose). */
const char *finc_server_backend(const finc_server *s);

/* Readiness turns 503 and new inference requests are refused (503); queued
 * work is dispatched without waiting for batch company. */
void finc_server_drain(finc_server *s);
/* Requests not yet fully answered, of any endpoint. */
long finc_server_inflight(finc_server *s);
/* Ends what is still queued (503), waits briefly for answers to go out,
 * stops the HTTP threads and the batcher, frees s. */
void finc_server_stop(finc_server *s);

#endif
