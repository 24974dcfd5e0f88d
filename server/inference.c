/* POST /sample and POST /log-likelihood (server/inference.h): bodies in,
 * jobs out, answers back. Every field is checked before any engine work is
 * queued, and every error names what was expected. Decoding and encoding
 * PNGs runs here, on the HTTP threads, so the engine thread only runs the
 * model. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "io/png.h"
#include "server/base64.h"
#include "server/multipart.h"
#include "server/inference.h"
#include "server/httputil.h"

#define MAX_SAFE_INT 9007199254740991.0  /* 2^53 - 1: seeds survive any JSON parser */

/* A seed for requests that bring none, reported back so they can repeat. */
static uint64_t random_seed(void)
{
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
    }
    return x & ((1ull << 53) - 1);
}

static cJSON *raw_u64(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf);
}

static cJSON *expected_shape(const model_info *mi)
{
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "expected");
    cJSON_AddStringToObject(e, "format", "image/png");
    cJSON_AddNumberToObject(e, "channels", mi->c);
    cJSON_AddNumberToObject(e, "height", mi->h);
    cJSON_AddNumberToObject(e, "width", mi->w);
    return o;
}

static const char *header(finc_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* An integer JSON number in [lo, hi]. */
static int json_int(const cJSON *v, double lo, double hi, double *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    const double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x) || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

/* An integer in [lo, hi] written in decimal (query strings, form fields). */
static int text_int(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s || strlen(s) > 20) return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    const double x = strtod(s, NULL);
    if (x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

/* A refusal into e; returns -1. */
static int refuse(finc_parse_error *e, int status, finc_error_reason why, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(finc_parse_error *e, int status, finc_error_reason why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = status;
    e->reason = why;
    return -1;
}

static int bad_request(finc_parse_error *e, const char *msg) { return refuse(e, 400, FINC_ERR_BAD_REQUEST, "%s", msg); }

static const char bad_seed[] = "seed must be an integer in 0..9007199254740991";
static const char bad_alpha[] = "alpha must be a number in (0, 1): an image is anomalous when its p-value <= alpha";

/* The body as one JSON value with nothing but whitespace after it; NULL
 * with e filled (the byte where it went wrong) otherwise. */
static cJSON *parse_json(const char *body, size_t len, finc_parse_error *e)
{
    const char *end = NULL;
    cJSON *root = body ? cJSON_ParseWithLengthOpts(body, len, &end, 0) : NULL;
    if (root) {
        const char *p = end, *stop = body + len;
        while (p < stop && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
        if (p == stop) return root;
        cJSON_Delete(root);
        end = p;
    }
    if (end && body && end >= body && end <= body + len)
        refuse(e, 400, FINC_ERR_BAD_REQUEST, "malformed JSON at byte %ld", (long)(end - body));
    else
        bad_request(e, "malformed JSON");
    return NULL;
}

/* application/json, or curl -d's default form type when the body is JSON
 * (`curl -d '{"n": 4}'` without -H is how most people will call us). */
static int is_json_body(const finc_request *r, const char *ct)
{
    if (finc_media_is(ct, "application/json")) return 1;
    if (!finc_media_is(ct, "application/x-www-form-urlencoded")) return 0;
    size_t i = 0;
    while (i < r->len && (r->body[i] == ' ' || r->body[i] == '\t' || r->body[i] == '\r' || r->body[i] == '\n')) i++;
    return i == r->len || r->body[i] == '{' || r->body[i] == '[';
}

/* ---- jobs --------------------------------------------------------------------- */

static enum MHD_Result answer_job(finc_request *r);

/* The batcher's loop thread: the job ended; wake its connection. */
static void on_job_done(finc_job *job, void *user)
{
    finc_request *r = user;
    (void)job;
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        finc_request_free(r);  /* the connection went away first */
        return;
    }
    MHD_resume_connection(r->conn);
}

/* Claims queue room for r->job (503 when full or past its deadline),
 * suspends the connection and submits; answer_job answers when it ends. */
static enum MHD_Result enqueue(finc_request *r)
{
    finc_server *s = r->srv;
    const finc_server_config *cfg = finc_server_cfg(s);
    static const char *kind_name[] = {"sample", "score"};
    /* A request whose headers came before a drain began is served: the
     * early checks refused the later ones. */
    r->job.deadline = r->t_start + r->timeout_ms / 1000.0;
    double need;
    const int claim = finc_batcher_reserve(finc_server_batcher(s), &r->job, &need);
    if (claim == -2)
        return finc_respond_error(r, 503, FINC_ERR_DEADLINE, NULL,
                                  "this request needs about %.3g s of engine time, more than its deadline (%g ms) "
                                  "leaves: send fewer images or draws, or a longer X-Finc-Timeout-Ms",
                                  need, r->timeout_ms);
    if (claim != 0) {
        r->retry_after = 1;
        return finc_respond_error(r, 503, FINC_ERR_OVERLOADED, NULL, "the %s queue is full (%d passes%s); retry later",
                                  kind_name[r->job.kind], cfg->queue_size,
                                  finc_job_cost(&r->job) > cfg->max_batch ? ", three quarters for heavy requests" : "");
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->job.fd = ci ? ci->connect_fd : -1;
    r->job.done = on_job_done;
    r->job.user = r;
    r->answer = answer_job;
    atomic_fetch_add(&r->refs, 1);
    r->submitted = 1;
    /* Suspended before the job exists for the batcher, so its resume can
     * never come first. */
    MHD_suspend_connection(r->conn);
    finc_batcher_submit(finc_server_batcher(s), &r->job);
    return MHD_YES;
}

/* ---- /sample ------------------------------------------------------------------- */

int finc_parse_sample(const char *body, size_t len, const finc_server_config *cfg, finc_sample_ask *out,
                      finc_parse_error *e)
{
    *out = (finc_sample_ask){.n = 1, .temperature = 1.0};
    if (len == 0) return 0;
    cJSON *root = parse_json(body, len, e);
    if (!root) return -1;
    int rc = cJSON_IsObject(root) ? 0
             : bad_request(e, "the body must be a JSON object like {\"n\": 4, \"temperature\": 0.7, \"seed\": 42}");
    for (const cJSON *it = rc ? NULL : root->child; it && rc == 0; it = it->next) {
        const char *k = it->string;
        double v;
        if (!strcmp(k, "n")) {
            if (json_int(it, 1, cfg->max_n, &v) != 0)
                rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "n must be an integer in 1..%d", cfg->max_n);
            else out->n = (int)v;
        } else if (!strcmp(k, "temperature")) {
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0 || it->valuedouble > 100)
                rc = bad_request(e, "temperature must be a number in [0, 100]");
            else out->temperature = it->valuedouble;
        } else if (!strcmp(k, "seed")) {
            if (cJSON_IsNull(it)) continue;
            if (json_int(it, 0, MAX_SAFE_INT, &v) != 0) rc = bad_request(e, bad_seed);
            else out->seed = (uint64_t)v, out->have_seed = 1;
        } else {
            rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "unknown field '%.63s' (/sample takes n, temperature, seed)", k);
        }
    }
    cJSON_Delete(root);
    return rc;
}

enum MHD_Result finc_handle_sample(finc_request *r)
{
    const model_info *mi = finc_server_model(r->srv);
    const char *ct = header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (r->len > 0 && ct && !is_json_body(r, ct))
        return finc_respond_error(r, 415, FINC_ERR_UNSUPPORTED_MEDIA, NULL,
                                  "/sample takes application/json, got '%.60s'", ct);
    const int png = finc_accept_png(header(r, MHD_HTTP_HEADER_ACCEPT));
    if (png < 0)
        return finc_respond_error(r, 406, FINC_ERR_NOT_ACCEPTABLE, NULL,
                                  "/sample answers application/json or image/png; Accept allows neither");
    r->accept_png = png;
    finc_sample_ask ask;
    finc_parse_error e;
    if (finc_parse_sample(r->body, r->len, finc_server_cfg(r->srv), &ask, &e) != 0)
        return finc_respond_error(r, e.status, e.reason, NULL, "%s", e.message);
    r->pixels = malloc((size_t)ask.n * (size_t)mi->D);
    if (!r->pixels) return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
    r->job.kind = FINC_JOB_SAMPLE;
    r->job.n = ask.n;
    r->job.temperature = (float)ask.temperature;
    r->temperature = ask.temperature;
    r->job.seed = ask.have_seed ? ask.seed : random_seed();
    r->job.images = r->pixels;
    snprintf(r->seed_header, sizeof r->seed_header, "%llu", (unsigned long long)r->job.seed);
    return enqueue(r);
}

static enum MHD_Result answer_sample(finc_request *r)
{
    const model_info *mi = finc_server_model(r->srv);
    const finc_job *j = &r->job;
    char err[256];
    if (r->accept_png) {
        uint8_t *img = r->pixels, *grid = NULL, *png;
        int H = mi->h, W = mi->w;
        /* The grid `finc sample -o out.png` writes: ceil(sqrt(n)) columns, 2-pixel black padding. */
        if (j->n > 1 && finc_png_grid(r->pixels, j->n, mi->c, mi->h, mi->w, 0, 2, 0, &grid, &H, &W, err, sizeof err))
            return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        if (grid) img = grid;
        size_t len;
        int rc = finc_png_encode(img, mi->c, H, W, &png, &len, err, sizeof err);
        free(grid);
        if (rc) return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        return finc_respond(r, 200, "image/png", png, len);
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "n", j->n);
    cJSON_AddNumberToObject(root, "temperature", r->temperature);
    cJSON_AddItemToObject(root, "seed", raw_u64(j->seed));
    cJSON *shape = cJSON_AddObjectToObject(root, "image");
    cJSON_AddNumberToObject(shape, "channels", mi->c);
    cJSON_AddNumberToObject(shape, "height", mi->h);
    cJSON_AddNumberToObject(shape, "width", mi->w);
    cJSON *list = cJSON_AddArrayToObject(root, "images");
    char *b64 = NULL;
    for (int i = 0; i < j->n; i++) {
        uint8_t *png;
        size_t len;
        if (finc_png_encode(r->pixels + (size_t)i * mi->D, mi->c, mi->h, mi->w, &png, &len, err, sizeof err)) {
            free(b64);
            cJSON_Delete(root);
            return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        }
        char *nb = realloc(b64, finc_base64_encoded_len(len) + 1);
        if (!nb) {
            free(png);
            free(b64);
            cJSON_Delete(root);
            return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
        }
        b64 = nb;
        finc_base64_encode(png, len, b64);
        free(png);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", i);
        cJSON_AddItemToObject(o, "seed", raw_u64(j->seed));
        cJSON_AddStringToObject(o, "png", b64);
        cJSON_AddItemToArray(list, o);
    }
    free(b64);
    return finc_respond_json(r, 200, root);
}

/* ---- /log-likelihood ----------------------------------------------------------- */

/* Refuses a PNG whose colour type does not match the model's channels
 * before decoding converts it silently. */
static int check_color(const uint8_t *p, size_t len, int C, char *err, size_t errlen)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len < 26 || memcmp(p, sig, 8) != 0 || memcmp(p + 12, "IHDR", 4) != 0) return 0;  /* the decoder says why */
    const int ctype = p[25];
    const int color = ctype == 2 || ctype == 6, gray = ctype == 0 || ctype == 4;
    if (C == 1 && color) {
        snprintf(err, errlen, "image is color (RGB), model expects grayscale (1 channel)");
        return -1;
    }
    if (C == 3 && gray) {
        snprintf(err, errlen, "image is grayscale, model expects color (3 channels, RGB)");
        return -1;
    }
    return 0;
}

/* A significance level written as a decimal number in (0, 1). */
static int text_alpha(const char *s, double *out)
{
    if (!s || !*s || strlen(s) > 32) return -1;
    char *end;
    const double a = strtod(s, &end);
    if (*end || !(a > 0 && a < 1)) return -1;
    *out = a;
    return 0;
}

/* The options as text (query string, form fields), each NULL when absent. */
static int text_options(const char *samples, const char *seed, const char *alpha, const finc_server_config *cfg,
                        finc_score_ask *a, finc_parse_error *e)
{
    double v;
    if (alpha && text_alpha(alpha, &a->alpha) != 0) return bad_request(e, bad_alpha);
    if (samples) {
        if (text_int(samples, 1, cfg->max_samples, &v) != 0)
            return refuse(e, 400, FINC_ERR_BAD_REQUEST, "samples must be an integer in 1..%d", cfg->max_samples);
        a->samples = (int)v;
    }
    if (seed) {
        if (text_int(seed, 0, MAX_SAFE_INT, &v) != 0) return bad_request(e, bad_seed);
        a->seed = (uint64_t)v, a->have_seed = 1;
    }
    return 0;
}

static void ask_init(finc_score_ask *a) { *a = (finc_score_ask){.samples = 1, .alpha = NAN}; }

/* Every format ends here: at least one image, at most the limit. */
static int check_count(const finc_score_ask *a, const finc_server_config *cfg, finc_parse_error *e)
{
    if (a->n == 0) return bad_request(e, "no images in the request");
    if (a->n > cfg->max_images)
        return refuse(e, 400, FINC_ERR_BAD_REQUEST, "%d images, at most %d per request", a->n, cfg->max_images);
    return 0;
}

void finc_score_ask_free(finc_score_ask *a)
{
    free(a->images);
    free(a->parts);
    free(a->decoded);
    ask_init(a);
}

int finc_parse_score_png(const uint8_t *body, size_t len, const char *samples, const char *seed, const char *alpha,
                         const finc_server_config *cfg, finc_score_ask *out, finc_parse_error *e)
{
    ask_init(out);
    if (!(out->images = calloc(1, sizeof *out->images))) return refuse(e, 500, FINC_ERR_INTERNAL, "out of memory");
    out->images[0] = (finc_image_ref){body, len, NULL};
    out->n = 1;
    return text_options(samples, seed, alpha, cfg, out, e);
}

int finc_parse_score_multipart(const uint8_t *body, size_t len, const char *content_type,
                               const finc_server_config *cfg, finc_score_ask *out, finc_parse_error *e)
{
    ask_init(out);
    char boundary[FINC_MULTIPART_BOUNDARY_MAX + 1], err[256];
    if (finc_multipart_boundary(content_type, boundary, err, sizeof err) != 0) return bad_request(e, err);
    const int max_parts = cfg->max_images + 2;
    out->parts = malloc((size_t)max_parts * sizeof *out->parts);
    out->images = malloc((size_t)max_parts * sizeof *out->images);
    if (!out->parts || !out->images) return refuse(e, 500, FINC_ERR_INTERNAL, "out of memory");
    const int np = finc_multipart_parse(body, len, boundary, out->parts, max_parts, err, sizeof err);
    if (np < 0) return bad_request(e, err);
    static const char *const field_names[3] = {"samples", "seed", "alpha"};
    const char *field_text[3] = {NULL, NULL, NULL};
    char field[3][40];
    for (int i = 0; i < np; i++) {
        const finc_part *p = &out->parts[i];
        int which = -1;
        for (int f = 0; f < 3 && !p->has_filename; f++)
            if (!strcmp(p->name, field_names[f])) which = f;
        if (which < 0) {
            out->images[out->n++] = (finc_image_ref){p->data, p->len, p->has_filename ? p->filename : p->name};
            continue;
        }
        if (p->len >= sizeof field[0])
            return refuse(e, 400, FINC_ERR_BAD_REQUEST, "form field '%s' is too long", p->name);
        memcpy(field[which], p->data, p->len);
        field[which][p->len] = '\0';
        field_text[which] = field[which];
    }
    if (text_options(field_text[0], field_text[1], field_text[2], cfg, out, e)) return -1;
    return check_count(out, cfg, e);
}

int finc_parse_score_json(const char *body, size_t len, const finc_server_config *cfg, finc_score_ask *out,
                          finc_parse_error *e)
{
    ask_init(out);
    /* Unlike /sample's, an empty body here has no defaults to fall back on. */
    if (len == 0) return bad_request(e, "the body is empty: send {\"images\": [base64 PNG, ...]}");
    cJSON *root = parse_json(body, len, e);
    if (!root) return -1;
    const cJSON *list = NULL;
    int rc = 0;
    double v;
    for (const cJSON *it = cJSON_IsObject(root) ? root->child : NULL; it && rc == 0; it = it->next) {
        if (!strcmp(it->string, "images")) {
            list = it;
        } else if (!strcmp(it->string, "samples")) {
            if (json_int(it, 1, cfg->max_samples, &v) != 0)
                rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "samples must be an integer in 1..%d", cfg->max_samples);
            else out->samples = (int)v;
        } else if (!strcmp(it->string, "seed")) {
            if (cJSON_IsNull(it)) continue;
            if (json_int(it, 0, MAX_SAFE_INT, &v) != 0) rc = bad_request(e, bad_seed);
            else out->seed = (uint64_t)v, out->have_seed = 1;
        } else if (!strcmp(it->string, "alpha")) {
            if (!cJSON_IsNumber(it) || !(it->valuedouble > 0 && it->valuedouble < 1)) rc = bad_request(e, bad_alpha);
            else out->alpha = it->valuedouble;
        } else {
            rc = refuse(e, 400, FINC_ERR_BAD_REQUEST,
                        "unknown field '%.63s' (/log-likelihood takes images, samples, seed, alpha)", it->string);
        }
    }
    if (rc == 0 && !cJSON_IsArray(list))
        rc = bad_request(e, "the body must be a JSON object like {\"images\": [\"<base64 PNG>\", ...]}");
    const int count = rc == 0 ? cJSON_GetArraySize(list) : 0;
    if (rc == 0 && count > cfg->max_images)
        rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "%d images, at most %d per request", count, cfg->max_images);
    if (rc == 0) {
        size_t total = 1;
        for (const cJSON *it = list->child; it; it = it->next)
            if (cJSON_IsString(it)) total += finc_base64_decoded_max(strlen(it->valuestring));
        out->images = calloc((size_t)(count > 0 ? count : 1), sizeof *out->images);
        out->decoded = malloc(total);
        if (!out->images || !out->decoded) rc = refuse(e, 500, FINC_ERR_INTERNAL, "out of memory");
    }
    uint8_t *dst = out->decoded;
    for (const cJSON *it = rc == 0 ? list->child : NULL; it && rc == 0; it = it->next, out->n++) {
        if (!cJSON_IsString(it)) {
            rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "images[%d] must be a base64 string", out->n);
            break;
        }
        const char *b = it->valuestring;
        static const char data_url[] = "data:image/png;base64,";
        if (!strncmp(b, data_url, sizeof data_url - 1)) b += sizeof data_url - 1;
        char err[200];
        const long n = finc_base64_decode(b, strlen(b), dst, err, sizeof err);
        if (n < 0) {
            rc = refuse(e, 400, FINC_ERR_BAD_REQUEST, "images[%d]: %s", out->n, err);
            break;
        }
        out->images[out->n] = (finc_image_ref){dst, (size_t)n, NULL};
        dst += n;
    }
    cJSON_Delete(root);
    return rc ? rc : check_count(out, cfg, e);
}

/* Decodes the asked images into r's pixels and submits the job. */
static enum MHD_Result submit_score(finc_request *r, const finc_score_ask *ask)
{
    const model_info *mi = finc_server_model(r->srv);
    const finc_server_config *cfg = finc_server_cfg(r->srv);
    const int n = ask->n, calibrated = finc_batcher_model(finc_server_batcher(r->srv))->anomaly != NULL;
    if (!calibrated && !isnan(ask->alpha))
        return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                  "alpha given, but the model is not calibrated for anomaly verdicts (finc calibrate)");
    r->alpha = isnan(ask->alpha) ? cfg->anomaly_alpha : ask->alpha;
    r->pixels = malloc((size_t)n * (size_t)mi->D);
    r->logp = malloc((size_t)n * sizeof *r->logp);
    if (calibrated) r->anomaly = malloc((size_t)n * sizeof *r->anomaly);
    if (ask->parts) r->names = calloc((size_t)n, sizeof *r->names);
    if (!r->pixels || !r->logp || (calibrated && !r->anomaly) || (ask->parts && !r->names))
        return finc_respond_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
    for (int i = 0; i < n; i++) {
        const finc_image_ref *im = &ask->images[i];
        char err[256], what[200];
        if (im->name) snprintf(what, sizeof what, "images[%d] '%.120s'", i, im->name);
        else snprintf(what, sizeof what, "images[%d]", i);
        if (check_color(im->data, im->len, mi->c, err, sizeof err) != 0 ||
            finc_png_decode_into(im->data, im->len, mi->c, mi->h, mi->w, r->pixels + (size_t)i * mi->D, err,
                                 sizeof err) != 0)
            return finc_respond_error(r, 400, FINC_ERR_BAD_REQUEST, expected_shape(mi),
                                      "%s: %s; send %dx%dx%d PNGs (channels x height x width)", what, err, mi->c,
                                      mi->h, mi->w);
        if (r->names) {
            snprintf(r->names[i], sizeof r->names[i], "%s", im->name);
            finc_utf8_sanitize(r->names[i]);
        }
    }
    r->job.kind = FINC_JOB_SCORE;
    r->job.n = n;
    r->job.samples = ask->samples;
    r->job.seed = ask->samples > 1 ? (ask->have_seed ? ask->seed : random_seed()) : 0;
    r->job.pixels = r->pixels;
    r->job.logp = r->logp;
    r->job.anomaly = r->anomaly;
    return enqueue(r);
}

static const char *query(finc_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

enum MHD_Result finc_handle_score(finc_request *r)
{
    const finc_server_config *cfg = finc_server_cfg(r->srv);
    const char *ct = header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    finc_score_ask ask;
    finc_parse_error e;
    int rc;
    if (finc_media_is(ct, "image/png"))
        rc = finc_parse_score_png((const uint8_t *)r->body, r->len, query(r, "samples"), query(r, "seed"),
                                  query(r, "alpha"), cfg, &ask, &e);
    else if (finc_media_is(ct, "multipart/form-data"))
        rc = finc_parse_score_multipart((const uint8_t *)r->body, r->len, ct, cfg, &ask, &e);
    else if (is_json_body(r, ct))
        rc = finc_parse_score_json(r->body, r->len, cfg, &ask, &e);
    else
        return finc_respond_error(r, 415, FINC_ERR_UNSUPPORTED_MEDIA, NULL,
                                  "/log-likelihood takes image/png, multipart/form-data or application/json%s%.60s%s",
                                  ct ? ", got '" : "", ct ? ct : "", ct ? "'" : "");
    const enum MHD_Result out = rc ? finc_respond_error(r, e.status, e.reason, NULL, "%s", e.message)
                                   : submit_score(r, &ask);
    finc_score_ask_free(&ask);
    /* The body is no longer needed once its images are pixels. */
    if (r->submitted) finc_request_drop_body(r);
    return out;
}

static enum MHD_Result answer_score(finc_request *r)
{
    const model_info *mi = finc_server_model(r->srv);
    const finc_config *cfg = &finc_batcher_model(finc_server_batcher(r->srv))->cfg;
    const finc_job *j = &r->job;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", mi->name);
    cJSON_AddNumberToObject(root, "samples", j->samples);
    if (j->samples > 1) cJSON_AddItemToObject(root, "seed", raw_u64(j->seed));
    if (isnan(mi->test_bpd)) cJSON_AddNullToObject(root, "test_bits_per_dim");
    else cJSON_AddNumberToObject(root, "test_bits_per_dim", mi->test_bpd);
    cJSON *list = cJSON_AddArrayToObject(root, "results");
    for (int i = 0; i < j->n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", i);
        if (r->names) cJSON_AddStringToObject(o, "name", r->names[i]);
        cJSON_AddNumberToObject(o, "log_likelihood", r->logp[i]);
        cJSON_AddNumberToObject(o, "bits_per_dim", finc_bits_per_dim(cfg, r->logp[i]));
        if (r->anomaly) {
            const finc_anomaly_result *a = &r->anomaly[i];
            const int anomalous = a->p_value <= r->alpha;
            cJSON *an = cJSON_AddObjectToObject(o, "anomaly");
            cJSON_AddNumberToObject(an, "score", a->score);
            cJSON_AddNumberToObject(an, "p_value", a->p_value);
            cJSON_AddNumberToObject(an, "complexity_bits_per_dim", a->complexity_bpd);
            cJSON_AddBoolToObject(an, "anomalous", anomalous);
            finc_metrics_anomaly(finc_server_metrics(r->srv), a->p_value, anomalous);
        }
        cJSON_AddItemToArray(list, o);
    }
    if (r->anomaly) cJSON_AddNumberToObject(root, "alpha", r->alpha);
    return finc_respond_json(r, 200, root);
}

static enum MHD_Result answer_job(finc_request *r)
{
    const finc_job *j = &r->job;
    switch (j->status) {
    case FINC_JOB_OK:
        return j->kind == FINC_JOB_SAMPLE ? answer_sample(r) : answer_score(r);
    case FINC_JOB_EXPIRED:
        return finc_respond_error(r, 504, FINC_ERR_DEADLINE, NULL, "the request's deadline (%g ms): %s", r->timeout_ms,
                               j->error);
    case FINC_JOB_REJECTED:
        r->retry_after = 1;
        return finc_respond_error(r, 503, FINC_ERR_NOT_READY, NULL, "%s", j->error);
    case FINC_JOB_CANCELLED:
        r->reason = FINC_ERR_CLIENT_CLOSED;
        snprintf(r->error, sizeof r->error, "%s", j->error);
        return MHD_NO;  /* nobody to answer: close */
    case FINC_JOB_FAILED:
    case FINC_JOB_PENDING:
        break;
    }
    return finc_respond_error(r, 500, FINC_ERR_ENGINE, NULL, "%s", j->error[0] ? j->error : "the engine failed");
}
