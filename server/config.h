/* finc serve's configuration: defaults, then FINC_* environment variables,
 * then command-line flags, each checked against its range; printed at start.
 * One table drives parsing, --help and the printout, so they cannot drift. */
#ifndef FINC_SERVER_CONFIG_H
#define FINC_SERVER_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define FINC_API_KEYS_MAX 64       /* keys accepted at once (rotation) */
#define FINC_API_KEY_LEN 256       /* bytes of one key */

typedef struct {
    char host[256];
    int port;                  /* 0: any free port */
    char weights[4096];
    char backend[16];          /* cpu, cuda, auto */
    char precision[8];         /* fp32, tf32: the CUDA GEMMs (engine/backend.h) */
    int threads;               /* engine CPU threads, 0 for all cores */
    int http_threads;          /* MHD worker threads: parsing, PNG decode and encode */
    int max_batch;             /* images per engine batch */
    double max_delay_ms;       /* longest a partial batch waits for company */
    int queue_size;            /* images waiting per kind before 503 */
    int max_n;                 /* /sample n limit */
    int max_images;            /* /log-likelihood images per request */
    int max_samples;           /* importance-weighted draws per image */
    long max_body;             /* bytes */
    long max_body_memory;      /* bytes of request bodies held at once, all connections together */
    double timeout_ms;         /* deadline of queued work; X-Finc-Timeout-Ms may shorten it */
    double idle_timeout;       /* seconds an idle connection stays open */
    double read_timeout;       /* seconds to receive a whole request */
    double head_timeout;       /* seconds a new connection has to send its first request head */
    int max_connections;
    int max_connections_per_ip; /* open connections from one client address; 0 for no limit */
    double drain_timeout;      /* seconds SIGTERM waits for queued and running work */
    int unhealthy_after;       /* failed engine batches in a row before health and readiness 503; 0 never */
    int retry_after;           /* seconds, in Retry-After on 503 */
    double anomaly_alpha;      /* default significance of the anomaly verdicts */
    char log[8];               /* json or off */
    char ui[8];                /* the page at /: on or off */
    char api_key[FINC_API_KEYS_MAX * (FINC_API_KEY_LEN + 1)];  /* accepted bearer tokens, one per
                                  line; "" for none: FINC_API_KEY, FINC_API_KEY_FILE or --api-key-file */
} finc_server_config;

void finc_server_config_defaults(finc_server_config *c);
/* Reads the FINC_* variables. 0, or -1 with err naming the variable. */
int finc_server_config_env(finc_server_config *c, char *err, size_t errlen);
/* Reads flags (argv[0] is the subcommand). 0, 1 when --help was asked for,
 * or -1 with err set. */
int finc_server_config_args(finc_server_config *c, int argc, char **argv, char *err, size_t errlen);
/* Cross-field checks. 0 or -1 with err. */
int finc_server_config_check(const finc_server_config *c, char *err, size_t errlen);
void finc_server_config_print(const finc_server_config *c, FILE *f);
void finc_server_usage(FILE *f);

#endif
