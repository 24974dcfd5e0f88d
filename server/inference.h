/* POST /sample and POST /log-likelihood. A body goes through one parser per
 * format into a plain record of what it asks (images still PNG bytes,
 * options checked against the limits); then one function decodes the
 * images and submits the job. The parsers know no libmicrohttpd: a refusal
 * is a status, a reason and a message, which the handler sends. Not for use
 * outside server/. */
#ifndef FINC_INFERENCE_H
#define FINC_INFERENCE_H

#include <stddef.h>
#include <stdint.h>

#include "server/config.h"
#include "server/metrics.h"
#include "server/multipart.h"
#include "server/request.h"

/* A parser's refusal: what the client is answered. */
typedef struct {
    int status;
    finc_error_reason reason;
    char message[256];
} finc_parse_error;

/* What a /sample body asks: {"n": 4, "temperature": 0.7, "seed": 42}, each optional. */
typedef struct {
    int n;                    /* 1 when absent */
    double temperature;       /* 1 when absent */
    uint64_t seed;
    int have_seed;            /* 0: the server draws one */
} finc_sample_ask;

/* body may be empty (all defaults). 0, or -1 with e filled. */
int finc_parse_sample(const char *body, size_t len, const finc_server_config *cfg, finc_sample_ask *out,
                      finc_parse_error *e);

/* One image of a /log-likelihood request, still PNG bytes. */
typedef struct {
    const uint8_t *data;
    size_t len;
    const char *name;         /* the multipart file (or field) name; NULL otherwise */
} finc_image_ref;

/* What a /log-likelihood body asks, whichever of its three formats it came in. */
typedef struct {
    int n;                    /* images, 1..cfg->max_images */
    finc_image_ref *images;   /* (n,) into the body or into this record's own buffers */
    int samples;              /* importance-weighted draws; 1 for the midpoint score */
    uint64_t seed;
    int have_seed;
    double alpha;             /* NaN unless the request set it */
    /* owned */
    finc_part *parts;
    uint8_t *decoded;
} finc_score_ask;

/* A raw PNG body (image/png); the options come from the query string (each NULL when absent). */
int finc_parse_score_png(const uint8_t *body, size_t len, const char *samples, const char *seed, const char *alpha,
                         const finc_server_config *cfg, finc_score_ask *out, finc_parse_error *e);
/* multipart/form-data: files (or fields) are images; fields samples, seed, alpha are options. */
int finc_parse_score_multipart(const uint8_t *body, size_t len, const char *content_type,
                               const finc_server_config *cfg, finc_score_ask *out, finc_parse_error *e);
/* {"images": [base64 PNG or data: URL, ...], "samples": K, "seed": S, "alpha": A}. */
int finc_parse_score_json(const char *body, size_t len, const finc_server_config *cfg, finc_score_ask *out,
                          finc_parse_error *e);
/* Frees what a parser kept (also after a refusal). */
void finc_score_ask_free(finc_score_ask *a);

/* The handlers, for the routing table. They answer at once (an error) or
 * submit a job and set r->answer, which answers when the job has ended. */
enum MHD_Result finc_handle_sample(finc_request *r);
enum MHD_Result finc_handle_score(finc_request *r);

/* What the handlers need of their server (server/server.c). */
const finc_server_config *finc_server_cfg(const finc_server *s);
/* The model's figures; NULL until it is loaded. */
const model_info *finc_server_model(const finc_server *s);
finc_batcher *finc_server_batcher(finc_server *s);
finc_metrics *finc_server_metrics(finc_server *s);

#endif
