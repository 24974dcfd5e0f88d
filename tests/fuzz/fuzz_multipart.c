/* A request body: the first line is the Content-Type header's value, the
 * rest the body. As multipart/form-data, then every part's data as base64,
 * as a JSON body would carry an image. Then the request parsers
 * (server/inference.h) on the same body, each format: an ask they accept
 * holds 1..max_images images, each inside the body or the ask's own
 * decoded buffer; a refusal is a 400 (or 500) with a message. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/base64.h"
#include "server/inference.h"
#include "server/multipart.h"

static void check_ask(int rc, const finc_score_ask *a, const finc_parse_error *e, const uint8_t *body, size_t len,
                      const finc_server_config *cfg)
{
    if (rc != 0) {
        if ((e->status != 400 && e->status != 500) || !e->message[0]) abort();
        return;
    }
    if (a->n < 1 || a->n > cfg->max_images || a->samples < 1 || a->samples > cfg->max_samples) abort();
    if (!isnan(a->alpha) && !(a->alpha > 0 && a->alpha < 1)) abort();
    for (int i = 0; i < a->n; i++) {
        const uint8_t *p = a->images[i].data;
        const int in_body = p >= body && p + a->images[i].len <= body + len;
        if (!in_body && !a->decoded) abort();
    }
}

static void parsers(const char *ctype, const uint8_t *body, size_t len)
{
    static finc_server_config cfg;
    if (!cfg.max_images) {
        finc_server_config_defaults(&cfg);
        cfg.max_images = 8;
    }
    finc_score_ask a;
    finc_parse_error e;
    int rc = finc_parse_score_multipart(body, len, ctype, &cfg, &a, &e);
    check_ask(rc, &a, &e, body, len, &cfg);
    finc_score_ask_free(&a);
    char *text = malloc(len + 1);   /* the server's bodies are NUL-terminated */
    memcpy(text, body, len);
    text[len] = 0;
    rc = finc_parse_score_json(text, len, &cfg, &a, &e);
    check_ask(rc, &a, &e, (const uint8_t *)text, len, &cfg);
    finc_score_ask_free(&a);
    finc_sample_ask s;
    rc = finc_parse_sample(text, len, &cfg, &s, &e);
    if (rc == 0 ? s.n < 1 || s.n > cfg.max_n || !(s.temperature >= 0 && s.temperature <= 100) : !e.message[0]) abort();
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl) return 0;
    const size_t hlen = (size_t)(nl - data);
    char *ctype = malloc(hlen + 1);
    memcpy(ctype, data, hlen);
    ctype[hlen] = 0;
    char boundary[FINC_MULTIPART_BOUNDARY_MAX + 1], err[512] = "";
    if (finc_multipart_boundary(ctype, boundary, err, sizeof err) == 0) {
        finc_part parts[8];
        const uint8_t *body = nl + 1;
        const int n = finc_multipart_parse(body, size - hlen - 1, boundary, parts, 8, err, sizeof err);
        if (n < 0 && !err[0]) abort();
        for (int i = 0; i < n; i++) {
            uint8_t *out = malloc(finc_base64_decoded_max(parts[i].len) + 1);
            err[0] = 0;
            if (finc_base64_decode((const char *)parts[i].data, parts[i].len, out, err, sizeof err) < 0 && !err[0])
                abort();
            free(out);
            (void)finc_media_is(parts[i].content_type, "image/png");
        }
    } else if (!err[0]) {
        abort();
    }
    parsers(ctype, nl + 1, size - hlen - 1);
    free(ctype);
    return 0;
}
