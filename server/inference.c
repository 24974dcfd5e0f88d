/* POST /sample and POST /log-likelihood: bodies in, jobs out, answers back.
 * Every field is checked before any engine work is queued, and every error
 * names what was expected. Decoding and encoding PNGs runs here, on the HTTP
 * threads, so the engine thread only runs the model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "io/png.h"
#include "server/base64.h"
#include "server/http_internal.h"
#include "server/httputil.h"
#include "server/multipart.h"

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

/* The body as one JSON value with nothing but whitespace after it (else NULL,
 * with *end at the first byte that is wrong). */
static cJSON *parse_body(finc_request *r, const char **end)
{
    cJSON *root = cJSON_ParseWithLengthOpts(r->body, r->len, end, 0);
    if (!root) return NULL;
    const char *p = *end, *stop = r->body + r->len;
    while (p < stop && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    if (p == stop) return root;
    cJSON_Delete(root);
    *end = p;
    return NULL;
}

static enum MHD_Result bad_json(finc_request *r, const char *end)
{
    if (end && end >= r->body && end <= r->body + r->len)
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "malformed JSON at byte %ld",
                               (long)(end - r->body));
    return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "malformed JSON");
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

/* ---- /sample ------------------------------------------------------------------- */

enum MHD_Result finc_handle_sample(finc_request *r)
{
    finc_server *s = r->srv;
    const model_info *mi = finc_server_model(s);
    const char *ct = header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (r->len > 0 && ct && !is_json_body(r, ct))
        return finc_http_error(r, 415, FINC_ERR_UNSUPPORTED_MEDIA, NULL,
                               "/sample takes application/json, got '%.60s'", ct);
    const int png = finc_accept_png(header(r, MHD_HTTP_HEADER_ACCEPT));
    if (png < 0)
        return finc_http_error(r, 406, FINC_ERR_NOT_ACCEPTABLE, NULL,
                               "/sample answers application/json or image/png; Accept allows neither");
    r->accept_png = png;

    double n = 1, temperature = 1.0, seed = 0;
    int have_seed = 0;
    if (r->len > 0) {
        const char *end = NULL;
        cJSON *root = parse_body(r, &end);
        if (!root) return bad_json(r, end);
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                   "the body must be a JSON object like {\"n\": 4, \"temperature\": 0.7, \"seed\": 42}");
        }
        for (const cJSON *it = root->child; it; it = it->next) {
            const char *k = it->string;
            if (!strcmp(k, "n")) {
                if (json_int(it, 1, s->cfg.max_n, &n) != 0) {
                    cJSON_Delete(root);
                    return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "n must be an integer in 1..%d",
                                           s->cfg.max_n);
                }
            } else if (!strcmp(k, "temperature")) {
                if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0 ||
                    it->valuedouble > 100) {
                    cJSON_Delete(root);
                    return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                           "temperature must be a number in [0, 100]");
                }
                temperature = it->valuedouble;
            } else if (!strcmp(k, "seed")) {
                if (!cJSON_IsNull(it)) {
                    if (json_int(it, 0, MAX_SAFE_INT, &seed) != 0) {
                        cJSON_Delete(root);
                        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                               "seed must be an integer in 0..9007199254740991");
                    }
                    have_seed = 1;
                }
            } else {
                char name[64];
                snprintf(name, sizeof name, "%s", k);
                cJSON_Delete(root);
                return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                       "unknown field '%s' (/sample takes n, temperature, seed)", name);
            }
        }
        cJSON_Delete(root);
    }
    const int count = (int)n;
    r->pixels = malloc((size_t)count * (size_t)mi->D);
    if (!r->pixels) return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
    r->job.kind = FINC_JOB_SAMPLE;
    r->job.n = count;
    r->job.temperature = (float)temperature;
    r->temperature = temperature;
    r->job.seed = have_seed ? (uint64_t)seed : random_seed();
    r->job.images = r->pixels;
    snprintf(r->seed_header, sizeof r->seed_header, "%llu", (unsigned long long)r->job.seed);
    return finc_http_enqueue(r);
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
            return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        if (grid) img = grid;
        size_t len;
        int rc = finc_png_encode(img, mi->c, H, W, &png, &len, err, sizeof err);
        free(grid);
        if (rc) return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        return finc_http_respond(r, 200, "image/png", png, len);
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
            return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "%s", err);
        }
        char *nb = realloc(b64, finc_base64_encoded_len(len) + 1);
        if (!nb) {
            free(png);
            free(b64);
            cJSON_Delete(root);
            return finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory");
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
    return finc_http_json(r, 200, root);
}

/* ---- /log-likelihood ----------------------------------------------------------- */

typedef struct {
    const uint8_t *data;
    size_t len;
    const char *name;         /* NULL unless multipart */
} image_ref;

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

static enum MHD_Result bad_alpha(finc_request *r)
{
    return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                           "alpha must be a number in (0, 1): an image is anomalous when its p-value <= alpha");
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

static enum MHD_Result score_options(finc_request *r, const char *samples, const char *seed, const char *alpha,
                                     double *S, double *X, int *have_seed)
{
    if (alpha && text_alpha(alpha, &r->alpha) != 0) return bad_alpha(r);
    if (samples && text_int(samples, 1, r->srv->cfg.max_samples, S) != 0)
        return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "samples must be an integer in 1..%d",
                               r->srv->cfg.max_samples);
    if (seed) {
        if (text_int(seed, 0, MAX_SAFE_INT, X) != 0)
            return finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                   "seed must be an integer in 0..9007199254740991");
        *have_seed = 1;
    }
    return MHD_YES;
}

enum MHD_Result finc_handle_score(finc_request *r)
{
    finc_server *s = r->srv;
    const model_info *mi = finc_server_model(s);
    const int max_images = s->cfg.max_images;
    const char *ct = header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    double samples = 1, seed = 0;
    int have_seed = 0, nimg = 0;
    image_ref *imgs = NULL;
    finc_part *parts = NULL;
    cJSON *root = NULL;
    uint8_t *scratch = NULL;
    enum MHD_Result rc;
    r->alpha = NAN;  /* until a request field sets it */

#define FAIL(...)                     \
    do {                              \
        rc = __VA_ARGS__;             \
        goto out;                     \
    } while (0)

    if (finc_media_is(ct, "image/png")) {
        imgs = calloc(1, sizeof *imgs);
        if (!imgs) FAIL(finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory"));
        imgs[0] = (image_ref){(const uint8_t *)r->body, r->len, NULL};
        nimg = 1;
        rc = score_options(r, MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "samples"),
                           MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "seed"),
                           MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "alpha"), &samples, &seed,
                           &have_seed);
        if (r->answered) goto out;
    } else if (finc_media_is(ct, "multipart/form-data")) {
        char boundary[FINC_MULTIPART_BOUNDARY_MAX + 1], err[256];
        if (finc_multipart_boundary(ct, boundary, err, sizeof err) != 0)
            FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%s", err));
        const int max_parts = max_images + 2;
        parts = malloc((size_t)max_parts * sizeof *parts);
        imgs = malloc((size_t)max_parts * sizeof *imgs);
        if (!parts || !imgs) FAIL(finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory"));
        int np = finc_multipart_parse((const uint8_t *)r->body, r->len, boundary, parts, max_parts, err, sizeof err);
        if (np < 0) FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%s", err));
        static const char *const field_names[3] = {"samples", "seed", "alpha"};
        const char *field_text[3] = {NULL, NULL, NULL};
        char field[3][40];
        for (int i = 0; i < np; i++) {
            finc_part *p = &parts[i];
            int which = -1;
            for (int f = 0; f < 3 && !p->has_filename; f++)
                if (!strcmp(p->name, field_names[f])) which = f;
            if (which < 0) {
                imgs[nimg++] = (image_ref){p->data, p->len, p->has_filename ? p->filename : p->name};
                continue;
            }
            if (p->len >= sizeof field[0])
                FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "form field '%s' is too long", p->name));
            memcpy(field[which], p->data, p->len);
            field[which][p->len] = '\0';
            field_text[which] = field[which];
        }
        rc = score_options(r, field_text[0], field_text[1], field_text[2], &samples, &seed, &have_seed);
        if (r->answered) goto out;
    } else if (is_json_body(r, ct)) {
        /* Unlike /sample's, an empty body here has no defaults to fall back on
         * (and no body at all leaves r->body NULL). */
        if (r->len == 0)
            FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                 "the body is empty: send {\"images\": [base64 PNG, ...]}"));
        const char *end = NULL;
        root = parse_body(r, &end);
        if (!root) FAIL(bad_json(r, end));
        const cJSON *list = NULL;
        for (const cJSON *it = cJSON_IsObject(root) ? root->child : NULL; it; it = it->next) {
            if (!strcmp(it->string, "images")) {
                list = it;
            } else if (!strcmp(it->string, "samples")) {
                if (json_int(it, 1, s->cfg.max_samples, &samples) != 0)
                    FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "samples must be an integer in 1..%d",
                                         s->cfg.max_samples));
            } else if (!strcmp(it->string, "seed")) {
                if (cJSON_IsNull(it)) continue;
                if (json_int(it, 0, MAX_SAFE_INT, &seed) != 0)
                    FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                         "seed must be an integer in 0..9007199254740991"));
                have_seed = 1;
            } else if (!strcmp(it->string, "alpha")) {
                if (!cJSON_IsNumber(it) || !(it->valuedouble > 0 && it->valuedouble < 1)) FAIL(bad_alpha(r));
                r->alpha = it->valuedouble;
            } else {
                char name[64];
                snprintf(name, sizeof name, "%s", it->string);
                FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                     "unknown field '%s' (/log-likelihood takes images, samples, seed, alpha)", name));
            }
        }
        if (!cJSON_IsArray(list))
            FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                                 "the body must be a JSON object like {\"images\": [\"<base64 PNG>\", ...]}"));
        const int count = cJSON_GetArraySize(list);
        if (count > max_images)
            FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%d images, at most %d per request", count,
                                 max_images));
        imgs = calloc((size_t)(count > 0 ? count : 1), sizeof *imgs);
        size_t total = 1;
        for (const cJSON *it = list->child; it; it = it->next)
            if (cJSON_IsString(it)) total += finc_base64_decoded_max(strlen(it->valuestring));
        scratch = malloc(total);
        if (!imgs || !scratch) FAIL(finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory"));
        uint8_t *dst = scratch;
        for (const cJSON *it = list->child; it; it = it->next, nimg++) {
            if (!cJSON_IsString(it))
                FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "images[%d] must be a base64 string", nimg));
            const char *b = it->valuestring;
            static const char data_url[] = "data:image/png;base64,";
            if (!strncmp(b, data_url, sizeof data_url - 1)) b += sizeof data_url - 1;
            char err[200];
            long n = finc_base64_decode(b, strlen(b), dst, err, sizeof err);
            if (n < 0) FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "images[%d]: %s", nimg, err));
            imgs[nimg] = (image_ref){dst, (size_t)n, NULL};
            dst += n;
        }
    } else {
        FAIL(finc_http_error(r, 415, FINC_ERR_UNSUPPORTED_MEDIA, NULL,
                             "/log-likelihood takes image/png, multipart/form-data or application/json%s%.60s%s",
                             ct ? ", got '" : "", ct ? ct : "", ct ? "'" : ""));
    }

    if (nimg == 0) FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "no images in the request"));
    if (nimg > max_images)
        FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL, "%d images, at most %d per request", nimg,
                             max_images));
    const int calibrated = finc_batcher_model(s->batcher)->anomaly != NULL;
    if (!calibrated && !isnan(r->alpha))
        FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, NULL,
                             "alpha given, but the model is not calibrated for anomaly verdicts (finc calibrate)"));
    if (isnan(r->alpha)) r->alpha = s->cfg.anomaly_alpha;
    r->pixels = malloc((size_t)nimg * (size_t)mi->D);
    r->logp = malloc((size_t)nimg * sizeof *r->logp);
    if (calibrated) r->anomaly = malloc((size_t)nimg * sizeof *r->anomaly);
    if (parts) r->names = calloc((size_t)nimg, sizeof *r->names);
    if (!r->pixels || !r->logp || (calibrated && !r->anomaly) || (parts && !r->names))
        FAIL(finc_http_error(r, 500, FINC_ERR_INTERNAL, NULL, "out of memory"));
    for (int i = 0; i < nimg; i++) {
        char err[256], what[200];
        if (imgs[i].name) snprintf(what, sizeof what, "images[%d] '%.120s'", i, imgs[i].name);
        else snprintf(what, sizeof what, "images[%d]", i);
        if (check_color(imgs[i].data, imgs[i].len, mi->c, err, sizeof err) != 0 ||
            finc_png_decode_into(imgs[i].data, imgs[i].len, mi->c, mi->h, mi->w, r->pixels + (size_t)i * mi->D, err,
                                 sizeof err) != 0)
            FAIL(finc_http_error(r, 400, FINC_ERR_BAD_REQUEST, expected_shape(mi),
                                 "%s: %s; send %dx%dx%d PNGs (channels x height x width)", what, err, mi->c, mi->h,
                                 mi->w));
        if (r->names) {
            snprintf(r->names[i], sizeof r->names[i], "%s", imgs[i].name);
            finc_utf8_sanitize(r->names[i]);
        }
    }
    r->job.kind = FINC_JOB_SCORE;
    r->job.n = nimg;
    r->job.samples = (int)samples;
    r->job.seed = samples > 1 ? (have_seed ? (uint64_t)seed : random_seed()) : 0;
    r->job.pixels = r->pixels;
    r->job.logp = r->logp;
    r->job.anomaly = r->anomaly;
    rc = finc_http_enqueue(r);
out:
    free(imgs);
    free(parts);
    free(scratch);
    cJSON_Delete(root);
    /* The body is no longer needed once its images are pixels. */
    if (r->submitted) finc_request_drop_body(r);
    return rc;
#undef FAIL
}

static enum MHD_Result answer_score(finc_request *r)
{
    const model_info *mi = finc_server_model(r->srv);
    const finc_config *cfg = &finc_batcher_model(r->srv->batcher)->cfg;
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
            finc_metrics_anomaly(r->srv->metrics, a->p_value, anomalous);
        }
        cJSON_AddItemToArray(list, o);
    }
    if (r->anomaly) cJSON_AddNumberToObject(root, "alpha", r->alpha);
    return finc_http_json(r, 200, root);
}

enum MHD_Result finc_answer_job(finc_request *r)
{
    const finc_job *j = &r->job;
    switch (j->status) {
    case FINC_JOB_OK:
        return j->kind == FINC_JOB_SAMPLE ? answer_sample(r) : answer_score(r);
    case FINC_JOB_EXPIRED:
        return finc_http_error(r, 504, FINC_ERR_DEADLINE, NULL, "the request's deadline (%g ms): %s", r->timeout_ms,
                               j->error);
    case FINC_JOB_REJECTED:
        r->retry_after = 1;
        return finc_http_error(r, 503, FINC_ERR_NOT_READY, NULL, "%s", j->error);
    case FINC_JOB_CANCELLED:
        r->reason = FINC_ERR_CLIENT_CLOSED;
        snprintf(r->error, sizeof r->error, "%s", j->error);
        return MHD_NO;  /* nobody to answer: close */
    case FINC_JOB_FAILED:
    case FINC_JOB_PENDING:
        break;
    }
    return finc_http_error(r, 500, FINC_ERR_ENGINE, NULL, "%s", j->error[0] ? j->error : "the engine failed");
}
