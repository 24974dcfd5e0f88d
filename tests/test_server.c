/* finc serve, end to end: the real server on a free loopback port (in this
 * process, or forked for the SIGTERM test), talked to with libcurl. Answers
 * are compared with the engine API and the CLI on the same inputs; every
 * error answer is checked for its status and its JSON. Nothing here depends
 * on timing beyond generous bounds: batches are forced by queue delays of
 * seconds, not by racing clients. */
#include <arpa/inet.h>
#include <check.h>
#include <cJSON.h>
#include <curl/curl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/anomaly.h"
#include "engine/flow.h"
#include "io/png.h"
#include "server/base64.h"
#include "server/batcher.h"
#include "server/serve.h"
#include "server/server.h"
#include "server/ui.h"
#include "tests/check_main.h"
#include "tests/testmodel.h"
#include "tests/testpng.h"

#define H 28
#define W 28
#define D (H * W)
#define NIMG 6

static char dir[256], weights[300];
static char img_path[NIMG][320];
static uint8_t img_pix[NIMG][D];
static uint8_t *img_png[NIMG];
static size_t img_len[NIMG];

static finc_server *srv;
static int port;

/* ---- fixture ---------------------------------------------------------------- */

/* The Fashion-MNIST shape with a small random model: 1x28x28, L=2, K={2,2}, F=16. */
static testmodel_spec fmnist_spec(void)
{
    testmodel_spec s = testmodel_tiny();
    s.h = H;
    s.w = W;
    s.width = 16;
    return s;
}

static void setup(void)
{
    ck_assert_int_eq(testmodel_tmpdir(dir, sizeof dir), 0);
    snprintf(weights, sizeof weights, "%s/fmnist-tiny.safetensors", dir);
    testmodel_spec spec = fmnist_spec();
    ck_assert_int_eq(testmodel_write(weights, &spec, 11), 0);
    uint64_t x = 12345;
    for (int i = 0; i < NIMG; i++) {
        for (int p = 0; p < D; p++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            /* smooth shapes plus noise, different per image */
            const int r = p / W, c = p % W;
            const int v = (r * (i + 1) * 7 + c * 5 * (i + 2)) % 256;
            img_pix[i][p] = (uint8_t)((v + (int)(x >> 59)) % 256);
        }
        char err[256];
        ck_assert_int_eq(finc_png_encode(img_pix[i], 1, H, W, &img_png[i], &img_len[i], err, sizeof err), 0);
        snprintf(img_path[i], sizeof img_path[i], "%s/img%d.png", dir, i);
        ck_assert_int_eq(finc_png_write_file(img_path[i], img_pix[i], 1, H, W, err, sizeof err), 0);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    srv = NULL;
}

static void teardown(void)
{
    if (srv) finc_server_stop(srv);
    srv = NULL;
    for (int i = 0; i < NIMG; i++) free(img_png[i]);
    curl_global_cleanup();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void test_config(finc_server_config *c)
{
    finc_server_config_defaults(c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 0;
    snprintf(c->weights, sizeof c->weights, "%s", weights);
    c->threads = 1;
    c->http_threads = 2;
    c->max_delay_ms = 2;
    c->max_n = 32;
    c->max_images = 16;
    c->queue_size = 2048;  /* max-images 16 x max-samples 64 within three quarters */
    c->max_body = 1 << 20;
    snprintf(c->log, sizeof c->log, "%s", getenv("FINC_TEST_LOG") ? "json" : "off");
}

static void start(const finc_server_config *c)
{
    char err[512];
    srv = finc_server_start(c, err, sizeof err);
    ck_assert_msg(srv != NULL, "server start: %s", err);
    ck_assert_msg(finc_server_wait_ready(srv, err, sizeof err) == 0, "ready: %s", err);
    port = finc_server_port(srv);
}

static void start_default(void)
{
    finc_server_config c;
    test_config(&c);
    start(&c);
}

static finc_engine *engine(void)
{
    char err[512];
    finc_engine_opts o = {.backend = "cpu", .max_batch = 64, .threads = 1};
    finc_engine *e = finc_engine_open(weights, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    return e;
}

/* ---- an HTTP client ------------------------------------------------------------- */

typedef struct {
    long status;
    char *body;
    size_t len;
    char headers[8192];
    size_t hlen;
    cJSON *json;
    CURLcode rc;
} resp;

typedef struct {
    const char *method;       /* NULL: GET, or POST when there is a body */
    const char *path;         /* with any query string */
    const char *ctype, *accept, *auth;
    const char *header;       /* one more "Name: value" */
    const void *body;
    long len;                 /* -1: strlen(body) */
    curl_mime *(*mime)(CURL *c, void *user);
    void *mime_user;
    long timeout_ms;          /* 0: 30 s */
    int port;                 /* 0: the test server's */
} req;

static size_t on_body(char *p, size_t sz, size_t n, void *u)
{
    resp *r = u;
    char *nb = realloc(r->body, r->len + sz * n + 1);
    if (!nb) return 0;
    r->body = nb;
    memcpy(r->body + r->len, p, sz * n);
    r->len += sz * n;
    r->body[r->len] = '\0';
    return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *u)
{
    resp *r = u;
    size_t k = sz * n;
    if (r->hlen + k < sizeof r->headers) {
        memcpy(r->headers + r->hlen, p, k);
        r->hlen += k;
        r->headers[r->hlen] = '\0';
    }
    return k;
}

static void resp_free(resp *r)
{
    free(r->body);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

/* Value of a response header (the last one of that name), or NULL. */
static const char *resp_header(const resp *r, const char *name, char *out, size_t n)
{
    const char *found = NULL;
    size_t nl = strlen(name);
    for (const char *p = r->headers; *p;) {
        const char *eol = strstr(p, "\r\n");
        if (!eol) break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ') v++;
            snprintf(out, n, "%.*s", (int)(eol - v), v);
            found = out;
        }
        p = eol + 2;
    }
    return found;
}

static void http(const req *q, resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    ck_assert_ptr_nonnull(c);
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", q->port ? q->port : port, q->path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, q->timeout_ms ? q->timeout_ms : 30000L);
    struct curl_slist *hs = NULL;
    char line[512];
    /* "" sends no Content-Type at all (curl would add a form type to a POST) */
    if (q->ctype) snprintf(line, sizeof line, "Content-Type:%s%s", q->ctype[0] ? " " : "", q->ctype),
                  hs = curl_slist_append(hs, line);
    if (q->accept) snprintf(line, sizeof line, "Accept: %s", q->accept), hs = curl_slist_append(hs, line);
    if (q->auth) snprintf(line, sizeof line, "Authorization: %s", q->auth), hs = curl_slist_append(hs, line);
    if (q->header) hs = curl_slist_append(hs, q->header);
    curl_mime *mime = NULL;
    if (q->mime) {
        mime = q->mime(c, q->mime_user);
        curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    } else if (q->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, q->len >= 0 ? q->len : (long)strlen(q->body));
    }
    if (q->method) {
        if (!strcmp(q->method, "HEAD")) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        else curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
    r->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hs);
    curl_mime_free(mime);
    if (r->body) r->json = cJSON_ParseWithLength(r->body, r->len);
}

static void get(const char *path, resp *r)
{
    req q = {.path = path};
    http(&q, r);
}

/* A JSON POST, with one more header (or NULL) and a client timeout (0: 30 s). */
static void post_json_with(const char *path, const char *body, const char *header, long timeout_ms, resp *r)
{
    req q = {.path = path, .ctype = "application/json", .body = body, .len = -1, .header = header,
             .timeout_ms = timeout_ms};
    http(&q, r);
}

static void post_json(const char *path, const char *body, resp *r) { post_json_with(path, body, NULL, 0, r); }

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "no number '%s'", k);
    return v->valuedouble;
}

/* Decodes a base64 PNG string to D pixels. */
static void b64_png_pixels(const char *b64, uint8_t *pix, int h, int w)
{
    size_t n = strlen(b64);
    uint8_t *buf = malloc(finc_base64_decoded_max(n));
    char err[256];
    long len = finc_base64_decode(b64, n, buf, err, sizeof err);
    ck_assert_msg(len > 0, "%s", err);
    ck_assert_int_eq(finc_png_decode_into(buf, (size_t)len, 1, h, w, pix, err, sizeof err), 0);
    free(buf);
}

static char *b64(const uint8_t *p, size_t n)
{
    char *s = malloc(finc_base64_encoded_len(n) + 1);
    finc_base64_encode(p, n, s);
    return s;
}

/* ---- metrics ------------------------------------------------------------------- */

static char *scrape(void)
{
    resp r;
    get("/metrics", &r);
    ck_assert_int_eq(r.status, 200);
    char *text = r.body;
    r.body = NULL;
    resp_free(&r);
    return text;
}

/* The value of one series, written exactly as `name{labels}`; NAN when absent. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

static double metric_now(const char *series)
{
    char *t = scrape();
    double v = metric(t, series);
    free(t);
    return v;
}

/* Polls until a series reaches want, for up to 20 s. */
static int wait_metric(const char *series, double want)
{
    for (int i = 0; i < 2000; i++) {
        if (metric_now(series) >= want) return 1;
        usleep(10000);
    }
    return 0;
}

/* ---- other programs ------------------------------------------------------------- */

/* Runs a shell command, its stdout and stderr into out (cut to fit cap);
 * returns its exit status (128 when it did not exit). */
static int run_capture(const char *cmd, char *out, size_t cap)
{
    char full[1400];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    const size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    const int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* ---- raw sockets, for what a well-behaved client never does --------------------- */

static int raw_connect(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    ck_assert_int_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads until the peer closes (or 20 s pass); returns bytes read. */
static size_t raw_read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
        if (k <= 0) break;
        n += (size_t)k;
        if (n + 1 >= cap) break;
    }
    buf[n] = '\0';
    return n;
}

/* ---- endpoints --------------------------------------------------------------------- */

START_TEST(health_ready_models)
{
    start_default();
    resp r;
    get("/healthz", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(cJSON_GetObjectItem(r.json, "status")->valuestring, "ok");
    char h[256];
    ck_assert_ptr_nonnull(resp_header(&r, "X-Request-Id", h, sizeof h));
    resp_free(&r);

    get("/readyz", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(cJSON_GetObjectItem(r.json, "status")->valuestring, "ready");
    resp_free(&r);

    finc_engine *e = engine();
    get("/v1/models", &r);
    ck_assert_int_eq(r.status, 200);
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "models"), 0);
    ck_assert_ptr_nonnull(m);
    const cJSON *img = cJSON_GetObjectItem(m, "image");
    ck_assert_int_eq((int)jnum(img, "channels"), 1);
    ck_assert_int_eq((int)jnum(img, "height"), H);
    ck_assert_int_eq((int)jnum(img, "width"), W);
    ck_assert_int_eq((long)jnum(m, "parameters"), (long)finc_engine_model(e)->n_params);
    ck_assert_str_eq(cJSON_GetObjectItem(m, "backend")->valuestring, "cpu");
    ck_assert_str_eq(cJSON_GetObjectItem(m, "id")->valuestring, "fmnist-tiny");
    ck_assert_int_eq((int)jnum(cJSON_GetObjectItem(r.json, "limits"), "max_n"), 32);
    resp_free(&r);
    finc_engine_free(e);

    req q = {.method = "HEAD", .path = "/healthz"};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq((int)r.len, 0);
    resp_free(&r);

    q = (req){.method = "OPTIONS", .path = "/sample"};
    http(&q, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_ptr_nonnull(resp_header(&r, "Allow", h, sizeof h));
    ck_assert_str_eq(h, "POST, OPTIONS");
    resp_free(&r);

    /* request ids are echoed when plain, replaced when not */
    q = (req){.path = "/healthz", .header = "X-Request-Id: abc-123"};
    http(&q, &r);
    ck_assert_str_eq(resp_header(&r, "X-Request-Id", h, sizeof h), "abc-123");
    resp_free(&r);
    q = (req){.path = "/healthz", .header = "X-Request-Id: a\"b"};
    http(&q, &r);
    ck_assert_str_ne(resp_header(&r, "X-Request-Id", h, sizeof h), "a\"b");
    resp_free(&r);
}
END_TEST

/* ---- the page at / --------------------------------------------------------------------- */

/* Every embedded file at its path, with the page's security and caching
 * headers; 304 for a known ETag; HEAD and GET only. */
START_TEST(page_and_its_files)
{
    finc_server_config c;
    test_config(&c);
    snprintf(c.api_key, sizeof c.api_key, "page-key");  /* the page is open; it asks for the key itself */
    start(&c);
    resp r;
    char h[512];
    ck_assert_uint_ge(finc_ui_asset_count, 4);
    for (size_t i = 0; i < finc_ui_asset_count; i++) {
        const finc_ui_asset *a = &finc_ui_assets[i];
        get(a->path, &r);
        ck_assert_msg(r.status == 200, "%s: %ld", a->path, r.status);
        ck_assert_str_eq(resp_header(&r, "Content-Type", h, sizeof h), a->type);
        ck_assert_uint_eq(r.len, a->len);
        ck_assert_int_eq(memcmp(r.body, a->data, a->len), 0);
        ck_assert_str_eq(resp_header(&r, "X-Content-Type-Options", h, sizeof h), "nosniff");
        ck_assert_str_eq(resp_header(&r, "Cache-Control", h, sizeof h), "no-cache");
        ck_assert_ptr_nonnull(resp_header(&r, "X-Request-Id", h, sizeof h));
        ck_assert_str_eq(resp_header(&r, "ETag", h, sizeof h), a->etag);
        ck_assert_ptr_nonnull(resp_header(&r, "Content-Security-Policy", h, sizeof h));
        /* the page's own origin only: nothing inline, nothing from elsewhere */
        ck_assert_ptr_nonnull(strstr(h, "default-src 'none'"));
        ck_assert_ptr_nonnull(strstr(h, "script-src 'self'"));
        ck_assert_ptr_nonnull(strstr(h, "style-src 'self'"));
        ck_assert_ptr_nonnull(strstr(h, "connect-src 'self'"));
        ck_assert_ptr_null(strstr(h, "unsafe"));
        ck_assert_ptr_null(strstr(h, "http"));
        ck_assert_ptr_null(strstr(h, "data:"));
        resp_free(&r);

        /* revalidation: 304 without a body for its ETag (also weak, also in a list) */
        char inm[160];
        const char *fmt[] = {"If-None-Match: %s", "If-None-Match: W/%s", "If-None-Match: \"zz\", %s", "If-None-Match: *"};
        for (int k = 0; k < 4; k++) {
            snprintf(inm, sizeof inm, fmt[k], a->etag);
            req q = {.path = a->path, .header = inm};
            http(&q, &r);
            ck_assert_msg(r.status == 304, "%s %s: %ld", a->path, inm, r.status);
            ck_assert_uint_eq(r.len, 0);
            ck_assert_str_eq(resp_header(&r, "ETag", h, sizeof h), a->etag);
            resp_free(&r);
        }
        req q = {.path = a->path, .header = "If-None-Match: \"0123456789\""};
        http(&q, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(r.len, a->len);
        resp_free(&r);

        q = (req){.method = "HEAD", .path = a->path};
        http(&q, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(r.len, 0);
        snprintf(inm, sizeof inm, "%zu", a->len);
        ck_assert_str_eq(resp_header(&r, "Content-Length", h, sizeof h), inm);
        resp_free(&r);

        /* other methods: 405 JSON, like every other route */
        const char *methods[] = {"POST", "PUT", "DELETE"};
        for (int k = 0; k < 3; k++) {
            q = (req){.method = methods[k], .path = a->path, .ctype = "text/plain", .body = "x", .len = 1};
            http(&q, &r);
            ck_assert_msg(r.status == 405, "%s %s: %ld", methods[k], a->path, r.status);
            ck_assert_str_eq(resp_header(&r, "Allow", h, sizeof h), "GET, HEAD, OPTIONS");
            ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(r.json, "error")->valuestring, "wants GET"));
            resp_free(&r);
        }
    }

    /* the page: HTML that loads its files by path, with no inline script or style */
    const finc_ui_asset *page = finc_ui_find("/");
    ck_assert_ptr_nonnull(page);
    ck_assert_str_eq(page->type, "text/html; charset=utf-8");
    char *html = strndup((const char *)page->data, page->len);
    ck_assert_ptr_nonnull(strstr(html, "<script src=\"/ui/app.js\""));
    ck_assert_ptr_nonnull(strstr(html, "<link rel=\"stylesheet\" href=\"/ui/style.css\">"));
    for (const char *p = html; (p = strstr(p, "<script")) != NULL; p++) {
        const char *end = strchr(p, '>');
        ck_assert_msg(end && memmem(p, (size_t)(end - p), "src=", 4), "an inline script: %.60s", p);
        ck_assert_msg(!strncmp(end + 1, "</script>", 9), "a script with a body: %.60s", p);
    }
    ck_assert_ptr_null(strstr(html, "<style"));
    ck_assert_ptr_null(strstr(html, "style=\""));
    for (const char *p = html; (p = strstr(p, " on")) != NULL; p++) {  /* no onclick= and the like */
        const char *q = p + 3;
        while (*q >= 'a' && *q <= 'z') q++;
        ck_assert_msg(*q != '=' || q == p + 3, "an inline handler: %.40s", p);
    }
    for (size_t i = 0; i < finc_ui_asset_count; i++)
        if (strcmp(finc_ui_assets[i].path, "/"))
            ck_assert_msg(strstr(html, finc_ui_assets[i].path), "the page never loads %s", finc_ui_assets[i].path);
    free(html);
    ck_assert_ptr_null(finc_ui_find("/ui/"));

    /* a query string is the same page; unknown files under /ui/ are 404 JSON */
    get("/?from=docs", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.len, page->len);
    resp_free(&r);
    const char *missing[] = {"/ui/", "/ui/app.js.map", "/ui", "/index.html", "/UI/app.js", "/ui/app.js/"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        get(missing[i], &r);
        ck_assert_msg(r.status == 404, "%s: %ld", missing[i], r.status);
        ck_assert_str_eq(cJSON_GetObjectItem(r.json, "error")->valuestring, "no such endpoint");
        resp_free(&r);
    }
    /* counted as the page's endpoint; the API behind it still wants the key */
    ck_assert_double_eq(metric_now("finc_http_requests_total{endpoint=\"/\",code=\"304\"}"), 4.0 * finc_ui_asset_count);
    get("/v1/models", &r);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
}
END_TEST

/* --ui off: the page's paths are unknown routes, whatever the method. */
START_TEST(page_off)
{
    finc_server_config c;
    test_config(&c);
    snprintf(c.ui, sizeof c.ui, "off");
    start(&c);
    resp r;
    for (size_t i = 0; i < finc_ui_asset_count; i++) {
        const char *methods[] = {"GET", "HEAD", "POST"};
        for (int k = 0; k < 3; k++) {
            req q = {.method = methods[k], .path = finc_ui_assets[i].path};
            if (k == 2) q.ctype = "text/plain", q.body = "x", q.len = 1;
            http(&q, &r);
            ck_assert_msg(r.status == 404, "%s %s: %ld", methods[k], finc_ui_assets[i].path, r.status);
            if (k != 1) ck_assert_str_eq(cJSON_GetObjectItem(r.json, "error")->valuestring, "no such endpoint");
            resp_free(&r);
        }
    }
    ck_assert_double_eq(metric_now("finc_http_requests_total{endpoint=\"other\",code=\"404\"}"),
                        3.0 * finc_ui_asset_count);
    get("/v1/models", &r);  /* the API is unchanged */
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(sample_json_and_png_match_engine)
{
    start_default();
    finc_engine *e = engine();
    uint8_t want[5 * D], got[D];
    char err[256];
    ck_assert_int_eq(finc_sample(e, 5, 0.8f, 42, 0, want, err, sizeof err), 0);

    resp r;
    post_json("/sample", "{\"n\": 5, \"temperature\": 0.8, \"seed\": 42}", &r);
    ck_assert_msg(r.status == 200, "status %ld: %s", r.status, r.body);
    ck_assert_int_eq((int)jnum(r.json, "n"), 5);
    ck_assert_int_eq((long)jnum(r.json, "seed"), 42);
    const cJSON *list = cJSON_GetObjectItem(r.json, "images");
    ck_assert_int_eq(cJSON_GetArraySize(list), 5);
    for (int i = 0; i < 5; i++) {
        const cJSON *o = cJSON_GetArrayItem(list, i);
        ck_assert_int_eq((int)jnum(o, "index"), i);
        ck_assert_int_eq((long)jnum(o, "seed"), 42);
        b64_png_pixels(cJSON_GetObjectItem(o, "png")->valuestring, got, H, W);
        ck_assert_msg(memcmp(got, want + i * D, D) == 0, "image %d differs from finc_sample", i);
    }
    resp_free(&r);

    /* PNG: the same grid finc sample writes */
    req q = {.path = "/sample", .ctype = "application/json", .accept = "image/png",
             .body = "{\"n\": 5, \"temperature\": 0.8, \"seed\": 42}", .len = -1};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    char h[128];
    ck_assert_str_eq(resp_header(&r, "Content-Type", h, sizeof h), "image/png");
    ck_assert_str_eq(resp_header(&r, "X-Finc-Seed", h, sizeof h), "42");
    uint8_t *grid;
    int gh, gw;
    ck_assert_int_eq(finc_png_grid(want, 5, 1, H, W, 0, 2, 0, &grid, &gh, &gw, err, sizeof err), 0);
    finc_png_image img;
    ck_assert_int_eq(finc_png_decode(r.body, r.len, 1, &img, err, sizeof err), 0);
    ck_assert_int_eq(img.height, gh);
    ck_assert_int_eq(img.width, gw);
    ck_assert(memcmp(img.pixels, grid, (size_t)gh * gw) == 0);
    finc_png_image_free(&img);
    free(grid);
    resp_free(&r);

    /* n = 1 as PNG is the image itself; defaults: T = 1 */
    ck_assert_int_eq(finc_sample(e, 1, 1.0f, 7, 0, want, err, sizeof err), 0);
    q = (req){.path = "/sample", .ctype = "application/json", .accept = "image/png", .body = "{\"seed\": 7}", .len = -1};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq(finc_png_decode_into(r.body, r.len, 1, H, W, got, err, sizeof err), 0);
    ck_assert(memcmp(got, want, D) == 0);
    resp_free(&r);

    /* No seed: the server picks one, says which, and it reproduces. */
    post_json("/sample", "{\"n\": 2}", &r);
    ck_assert_int_eq(r.status, 200);
    const double seed = jnum(r.json, "seed");
    ck_assert(seed >= 0 && seed <= 9007199254740991.0);
    ck_assert_int_eq(finc_sample(e, 2, 1.0f, (uint64_t)seed, 0, want, err, sizeof err), 0);
    for (int i = 0; i < 2; i++) {
        b64_png_pixels(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "images"), i), "png")->valuestring,
                       got, H, W);
        ck_assert(memcmp(got, want + i * D, D) == 0);
    }
    resp_free(&r);

    /* An empty body is all defaults; curl -d's form type is read as JSON. */
    q = (req){.path = "/sample", .body = "", .len = 0};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq((int)jnum(r.json, "n"), 1);
    resp_free(&r);
    q = (req){.path = "/sample", .ctype = "application/x-www-form-urlencoded", .body = "{\"n\":1}", .len = -1};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    finc_engine_free(e);
}
END_TEST

typedef struct {
    const int *which;
    int n;
    const char *samples, *seed;
} mime_spec;

static curl_mime *make_mime(CURL *c, void *user)
{
    const mime_spec *m = user;
    curl_mime *mime = curl_mime_init(c);
    for (int i = 0; i < m->n; i++) {
        curl_mimepart *p = curl_mime_addpart(mime);
        char name[32];
        snprintf(name, sizeof name, "file%d", i);
        curl_mime_name(p, name);
        curl_mime_filedata(p, img_path[m->which[i]]);
        curl_mime_type(p, "image/png");
    }
    if (m->samples) {
        curl_mimepart *p = curl_mime_addpart(mime);
        curl_mime_name(p, "samples");
        curl_mime_data(p, m->samples, CURL_ZERO_TERMINATED);
    }
    if (m->seed) {
        curl_mimepart *p = curl_mime_addpart(mime);
        curl_mime_name(p, "seed");
        curl_mime_data(p, m->seed, CURL_ZERO_TERMINATED);
    }
    return mime;
}

/* Exact when the request ran as the reference engine call did (cJSON writes
 * doubles with enough digits to read back the same); else within the
 * engine's batch-composition tolerance (tests/test_flow.c: 1e-5 relative on
 * log p), since the GEMMs see a different batch. */
static void check_results_tol(const resp *r, const double *want, int n, double rel)
{
    ck_assert_msg(r->status == 200, "status %ld: %s", r->status, r->body);
    const cJSON *list = cJSON_GetObjectItem(r->json, "results");
    ck_assert_int_eq(cJSON_GetArraySize(list), n);
    for (int i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(list, i);
        ck_assert_int_eq((int)jnum(o, "index"), i);
        const double v = jnum(o, "log_likelihood");
        ck_assert_msg(rel == 0 ? v == want[i] : fabs(v - want[i]) <= rel * fabs(want[i]), "image %d: %.17g != %.17g",
                      i, v, want[i]);
        const double bpd = -want[i] / (D * log(2.0));
        ck_assert(fabs(jnum(o, "bits_per_dim") - bpd) <= (rel + 1e-12) * fabs(bpd));
    }
}

static void check_results(const resp *r, const double *want, int n) { check_results_tol(r, want, n, 0); }

START_TEST(score_every_content_type_matches_engine)
{
    start_default();
    finc_engine *e = engine();
    char err[256];
    uint8_t pix[NIMG * D];
    for (int i = 0; i < NIMG; i++) memcpy(pix + i * D, img_pix[i], D);
    double mid[NIMG], iw[NIMG];
    ck_assert_int_eq(finc_score(e, NIMG, pix, 1, 0, 0, mid, err, sizeof err), 0);
    ck_assert_int_eq(finc_score(e, 3, pix, 4, 99, 0, iw, err, sizeof err), 0);

    resp r;
    /* one PNG */
    req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
    http(&q, &r);
    check_results(&r, mid, 1);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(r.json, "test_bits_per_dim")));
    ck_assert_int_eq((int)jnum(r.json, "samples"), 1);
    resp_free(&r);

    /* one PNG, importance-weighted through the query string */
    q.path = "/log-likelihood?samples=4&seed=99";
    http(&q, &r);
    check_results(&r, iw, 1);
    ck_assert_int_eq((long)jnum(r.json, "seed"), 99);
    resp_free(&r);

    /* multipart, several files, names come back */
    const int all[NIMG] = {0, 1, 2, 3, 4, 5};
    mime_spec ms = {all, NIMG, NULL, NULL};
    q = (req){.path = "/log-likelihood", .mime = make_mime, .mime_user = &ms};
    http(&q, &r);
    check_results(&r, mid, NIMG);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "results"), 2), "name")->valuestring,
                     "img2.png");
    resp_free(&r);
    ms = (mime_spec){all, 3, "4", "99"};
    http(&q, &r);
    check_results(&r, iw, 3);
    resp_free(&r);

    /* JSON with base64 images, a data: URL among them */
    char *body = malloc(1 << 16);
    int n = sprintf(body, "{\"images\": [");
    for (int i = 0; i < NIMG; i++) {
        char *s = b64(img_png[i], img_len[i]);
        n += sprintf(body + n, "%s\"%s%s\"", i ? ", " : "", i == 1 ? "data:image/png;base64," : "", s);
        free(s);
    }
    sprintf(body + n, "]}");
    post_json("/log-likelihood", body, &r);
    check_results(&r, mid, NIMG);
    resp_free(&r);
    /* the same three with samples and seed */
    n = sprintf(body, "{\"samples\": 4, \"seed\": 99, \"images\": [");
    for (int i = 0; i < 3; i++) {
        char *s = b64(img_png[i], img_len[i]);
        n += sprintf(body + n, "%s\"%s\"", i ? ", " : "", s);
        free(s);
    }
    sprintf(body + n, "]}");
    post_json("/log-likelihood", body, &r);
    check_results(&r, iw, 3);
    resp_free(&r);
    free(body);
    finc_engine_free(e);
}
END_TEST

/* The CLI and the service give the same numbers on the same files. */
START_TEST(score_equals_cli)
{
    struct stat st;
    if (stat("./finc", &st) != 0 || !(st.st_mode & S_IXUSR)) {
        fprintf(stderr, "score_equals_cli: ./finc not built, compared with the engine API only\n");
        return;
    }
    start_default();
    char cmd[4096];
    int n = snprintf(cmd, sizeof cmd, "./finc score %s --json --samples 3 --seed 5", weights);
    for (int i = 0; i < 4; i++) n += snprintf(cmd + n, sizeof cmd - (size_t)n, " %s", img_path[i]);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    double cli[4];
    char line[1024];
    int k = 0;
    while (k < 4 && fgets(line, sizeof line, p)) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_ptr_nonnull(o);
        cli[k++] = jnum(o, "log_likelihood");
        cJSON_Delete(o);
    }
    ck_assert_int_eq(pclose(p), 0);
    ck_assert_int_eq(k, 4);
    const int which[4] = {0, 1, 2, 3};
    mime_spec ms = {which, 4, "3", "5"};
    req q = {.path = "/log-likelihood", .mime = make_mime, .mime_user = &ms};
    resp r;
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    for (int i = 0; i < 4; i++) {
        const double v = jnum(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "results"), i), "log_likelihood");
        /* the CLI prints 10 significant digits */
        ck_assert_msg(fabs(v - cli[i]) <= 1e-9 * fabs(cli[i]), "image %d: server %.12g, cli %.12g", i, v, cli[i]);
    }
    resp_free(&r);

    /* and the seeded sample grid is byte for byte `finc sample`'s file */
    char out[400];
    snprintf(out, sizeof out, "%s/cli.png", dir);
    snprintf(cmd, sizeof cmd, "./finc sample %s -n 4 -t 0.5 --seed 8 -o %s", weights, out);
    ck_assert_int_eq(system(cmd), 0);
    q = (req){.path = "/sample", .ctype = "application/json", .accept = "image/png",
              .body = "{\"n\": 4, \"temperature\": 0.5, \"seed\": 8}", .len = -1};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    FILE *f = fopen(out, "rb");
    ck_assert_ptr_nonnull(f);
    char *file = malloc(r.len + 16);
    size_t flen = fread(file, 1, r.len + 16, f);
    fclose(f);
    ck_assert_int_eq(flen, r.len);
    ck_assert(memcmp(file, r.body, r.len) == 0);
    free(file);
    resp_free(&r);
}
END_TEST

/* ---- batching -------------------------------------------------------------------- */

#define CLIENTS 12

typedef struct {
    int id;
    long status[2];
    uint8_t pix[2][2 * D];    /* sample answers */
    double lp[2][2];          /* score answers */
    int bad;
} client;

static double client_temp(int id) { return 0.5 + 0.125 * (id % 4); }

/* Importance-weighted clients (id % 4 == 3): 2 draws, 3 for every other one. */
static int client_draws(int id) { return id % 8 == 7 ? 3 : 2; }

static void *client_main(void *arg)
{
    client *c = arg;
    for (int it = 0; it < 2; it++) {
        resp r;
        char body[1 << 14];
        if (c->id % 2 == 0) {
            /* temperatures differ between batch mates */
            snprintf(body, sizeof body, "{\"n\": 2, \"temperature\": %g, \"seed\": %d}", client_temp(c->id),
                     1000 + c->id * 10 + it);
            req q = {.path = "/sample", .ctype = "application/json", .body = body, .len = -1};
            http(&q, &r);
            c->status[it] = r.status;
            const cJSON *list = r.json ? cJSON_GetObjectItem(r.json, "images") : NULL;
            if (r.status != 200 || cJSON_GetArraySize(list) != 2) {
                c->bad = 1;
            } else {
                for (int i = 0; i < 2; i++) {
                    const char *s = cJSON_GetObjectItem(cJSON_GetArrayItem(list, i), "png")->valuestring;
                    uint8_t buf[8192];
                    char err[128];
                    long len = strlen(s) < 10000 ? finc_base64_decode(s, strlen(s), buf, err, sizeof err) : -1;
                    if (len <= 0 || finc_png_decode_into(buf, (size_t)len, 1, H, W, c->pix[it] + i * D, err, sizeof err))
                        c->bad = 1;
                }
            }
        } else {
            const int a = (c->id + it) % NIMG, b = (c->id + it + 1) % NIMG;
            char *sa = b64(img_png[a], img_len[a]), *sb = b64(img_png[b], img_len[b]);
            /* some importance-weighted (2 or 3 draws), some midpoint, in the same batches */
            if (c->id % 4 == 3)
                snprintf(body, sizeof body, "{\"samples\": %d, \"seed\": %d, \"images\": [\"%s\", \"%s\"]}",
                         client_draws(c->id), c->id, sa, sb);
            else
                snprintf(body, sizeof body, "{\"images\": [\"%s\", \"%s\"]}", sa, sb);
            free(sa);
            free(sb);
            req q = {.path = "/log-likelihood", .ctype = "application/json", .body = body, .len = -1};
            http(&q, &r);
            c->status[it] = r.status;
            const cJSON *list = r.json ? cJSON_GetObjectItem(r.json, "results") : NULL;
            if (r.status != 200 || cJSON_GetArraySize(list) != 2) c->bad = 1;
            else
                for (int i = 0; i < 2; i++)
                    c->lp[it][i] = cJSON_GetObjectItem(cJSON_GetArrayItem(list, i), "log_likelihood")->valuedouble;
        }
        resp_free(&r);
    }
    return NULL;
}

START_TEST(concurrent_clients_batch_and_agree)
{
    finc_server_config c;
    test_config(&c);
    /* Batches of 4 images dispatch the moment they are full; a partial one
     * waits 2 s, so batches larger than one form however slow the machine. */
    c.max_batch = 4;
    c.max_delay_ms = 2000;
    start(&c);
    client cl[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, client_main, &cl[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++) pthread_join(th[i], NULL);

    finc_engine *e = engine();
    char err[256];
    uint8_t want[2 * D];
    double lp[NIMG];
    uint8_t pix[NIMG * D];
    for (int i = 0; i < NIMG; i++) memcpy(pix + i * D, img_pix[i], D);
    ck_assert_int_eq(finc_score(e, NIMG, pix, 1, 0, 0, lp, err, sizeof err), 0);
    for (int i = 0; i < CLIENTS; i++) {
        ck_assert_msg(!cl[i].bad, "client %d: status %ld %ld", i, cl[i].status[0], cl[i].status[1]);
        for (int it = 0; it < 2; it++) {
            if (i % 2 == 0) {
                ck_assert_int_eq(finc_sample(e, 2, (float)client_temp(i), (uint64_t)(1000 + i * 10 + it), 0, want, err,
                                             sizeof err), 0);
                ck_assert_msg(memcmp(cl[i].pix[it], want, sizeof want) == 0, "client %d sample %d differs", i, it);
                /* distinct seeds, distinct images */
                if (i >= 2) ck_assert(memcmp(cl[i].pix[it], cl[i - 2].pix[it], D) != 0);
            } else {
                const int a = (i + it) % NIMG, b = (i + it + 1) % NIMG;
                double ref[2] = {lp[a], lp[b]};
                if (i % 4 == 3) {
                    uint8_t two[2 * D];
                    memcpy(two, img_pix[a], D);
                    memcpy(two + D, img_pix[b], D);
                    ck_assert_int_eq(finc_score(e, 2, two, client_draws(i), (uint64_t)i, 0, ref, err, sizeof err), 0);
                }
                /* batch mates differ from the reference call: the engine's tolerance */
                ck_assert(fabs(cl[i].lp[it][0] - ref[0]) <= 1e-5 * fabs(ref[0]));
                ck_assert(fabs(cl[i].lp[it][1] - ref[1]) <= 1e-5 * fabs(ref[1]));
            }
        }
    }
    finc_engine_free(e);

    char *m = scrape();
    for (int k = 0; k < 2; k++) {
        char s1[128], sc[128];
        const char *kind = k ? "score" : "sample";
        snprintf(s1, sizeof s1, "finc_batch_size_bucket{kind=\"%s\",le=\"1\"}", kind);
        snprintf(sc, sizeof sc, "finc_batch_size_count{kind=\"%s\"}", kind);
        /* every request has 2 images, so every batch holds more than one image,
         * or more than one pass: a batch holds at most 4 passes, so an
         * importance-weighted image (2 or 3 draws; 12 of them) may go alone */
        const double ones = k ? 12 : 0;
        ck_assert_msg(metric(m, s1) <= ones, "%s batches of one: %g", kind, metric(m, s1));
        ck_assert(metric(m, sc) >= 1);
        snprintf(s1, sizeof s1, "finc_batch_size_bucket{kind=\"%s\",le=\"4\"}", kind);
        ck_assert(metric(m, s1) == metric(m, sc));  /* none above max_batch */
    }
    ck_assert(metric(m, "finc_images_total{kind=\"sample\"}") == CLIENTS / 2 * 2 * 2);
    ck_assert(metric(m, "finc_images_total{kind=\"score\"}") == CLIENTS / 2 * 2 * 2);
    free(m);
}
END_TEST

START_TEST(large_n_is_split_across_batches)
{
    finc_server_config c;
    test_config(&c);
    c.max_batch = 4;
    start(&c);
    finc_engine *e = engine();
    char err[256];
    uint8_t want[11 * D], got[D];
    ck_assert_int_eq(finc_sample(e, 11, 1.0f, 5, 0, want, err, sizeof err), 0);
    resp r;
    post_json("/sample", "{\"n\": 11, \"seed\": 5}", &r);
    ck_assert_int_eq(r.status, 200);
    for (int i = 0; i < 11; i++) {
        b64_png_pixels(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "images"), i), "png")->valuestring,
                       got, H, W);
        ck_assert_msg(memcmp(got, want + i * D, D) == 0, "image %d", i);
    }
    resp_free(&r);
    /* 11 images in batches of at most 4: 4 + 4 + 3 */
    char *m = scrape();
    ck_assert(metric(m, "finc_batch_size_count{kind=\"sample\"}") == 3);
    ck_assert(metric(m, "finc_batch_size_sum{kind=\"sample\"}") == 11);
    free(m);

    /* a score request larger than a batch, importance-weighted, still equals one engine call */
    uint8_t pix[12 * D];
    for (int i = 0; i < 12; i++) memcpy(pix + i * D, img_pix[i % NIMG], D);
    double lp[12];
    ck_assert_int_eq(finc_score(e, 12, pix, 2, 3, 0, lp, err, sizeof err), 0);
    int which[12];
    for (int i = 0; i < 12; i++) which[i] = i % NIMG;
    mime_spec ms = {which, 12, "2", "3"};
    req q = {.path = "/log-likelihood", .mime = make_mime, .mime_user = &ms};
    http(&q, &r);
    check_results_tol(&r, lp, 12, 1e-5);
    resp_free(&r);
    finc_engine_free(e);
}
END_TEST

/* ---- bad input ---------------------------------------------------------------------- */

typedef struct {
    const char *method, *path, *ctype, *accept, *header;
    const char *body;         /* "@name" picks a prepared body */
    long status;
    const char *error_has;    /* substring of the JSON error */
    const char *allow;        /* expected Allow header */
} bad_case;

START_TEST(bad_input_table)
{
    finc_server_config c;
    test_config(&c);
    c.max_body = 64 * 1024;
    start(&c);

    /* prepared bodies */
    char err[256];
    uint8_t small[30 * H], rgb[3 * D];
    memset(small, 7, sizeof small);
    memset(rgb, 9, sizeof rgb);
    uint8_t *png_small, *png_rgb;
    size_t len_small, len_rgb;
    ck_assert_int_eq(finc_png_encode(small, 1, H, 30, &png_small, &len_small, err, sizeof err), 0);
    ck_assert_int_eq(finc_png_encode(rgb, 3, H, W, &png_rgb, &len_rgb, err, sizeof err), 0);
    char *b64_small = b64(png_small, len_small), *b64_ok = b64(img_png[0], img_len[0]);
    char json_small[4096], json_many[1 << 15], json_bad64[256];
    snprintf(json_small, sizeof json_small, "{\"images\": [\"%s\"]}", b64_small);
    int n = sprintf(json_many, "{\"images\": [");
    for (int i = 0; i < 17; i++) n += sprintf(json_many + n, "%s\"%s\"", i ? "," : "", b64_ok);
    sprintf(json_many + n, "]}");
    snprintf(json_bad64, sizeof json_bad64, "{\"images\": [\"iVBOR!!w0KGg\"]}");
    char *huge = malloc(100 * 1024);
    memset(huge, 'x', 100 * 1024);
    const char *mp_noclose = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.png\"\r\n\r\nabc";

    const bad_case cases[] = {
        {"GET", "/nope", NULL, NULL, NULL, NULL, 404, "no such endpoint", NULL},
        {"GET", "/sample/", NULL, NULL, NULL, NULL, 404, "no such endpoint", NULL},
        {"GET", "/sample", NULL, NULL, NULL, NULL, 405, "wants POST", "POST, OPTIONS"},
        {"DELETE", "/log-likelihood", NULL, NULL, NULL, NULL, 405, "wants POST", "POST, OPTIONS"},
        {"POST", "/healthz", "application/json", NULL, NULL, "{}", 405, "wants GET", "GET, HEAD, OPTIONS"},
        {"PUT", "/metrics", NULL, NULL, NULL, NULL, 405, "wants GET", "GET, HEAD, OPTIONS"},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": ", 400, "malformed JSON", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": 1} xyz", 400, "malformed JSON at byte 9", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": 1}{}", 400, "malformed JSON at byte 8", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "[1, 2]", 400, "JSON object", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": 0}", 400, "n must be an integer in 1..32", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": 33}", 400, "1..32", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": 1.5}", 400, "n must be", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"n\": \"2\"}", 400, "n must be", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"temperature\": -1}", 400, "temperature", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"seed\": -3}", 400, "seed must be", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"seed\": 1e300}", 400, "seed must be", NULL},
        {"POST", "/sample", "application/json", NULL, NULL, "{\"temprature\": 1}", 400, "unknown field 'temprature'", NULL},
        {"POST", "/sample", "text/plain", NULL, NULL, "{}", 415, "takes application/json", NULL},
        {"POST", "/sample", "application/json", "text/html", NULL, "{}", 406, "Accept", NULL},
        {"POST", "/sample", "application/json", NULL, "X-Finc-Timeout-Ms: soon", "{}", 400, "X-Finc-Timeout-Ms", NULL},
        {"POST", "/log-likelihood", "", NULL, NULL, "abc", 415, "takes image/png, multipart/form-data or application/json", NULL},
        {"POST", "/log-likelihood", "application/x-www-form-urlencoded", NULL, NULL, "a=b", 415, "got 'application/x-www-form-urlencoded'", NULL},
        {"POST", "/log-likelihood", "text/csv", NULL, NULL, "abc", 415, "got 'text/csv'", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "not a png at all", 400, "not a PNG", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "@truncated", 400, "images[0]", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "@small", 400, "image is 30x28, model expects 28x28", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "@rgb", 400, "model expects grayscale", NULL},
        {"POST", "/log-likelihood?samples=0", "image/png", NULL, NULL, "@ok", 400, "samples must be", NULL},
        {"POST", "/log-likelihood?samples=65", "image/png", NULL, NULL, "@ok", 400, "samples must be an integer in 1..64", NULL},
        {"POST", "/log-likelihood?seed=x", "image/png", NULL, NULL, "@ok", 400, "seed must be", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "", 400, "not a PNG", NULL},
        {"POST", "/log-likelihood", "multipart/form-data", NULL, NULL, "--x\r\n", 400, "boundary", NULL},
        {"POST", "/log-likelihood", "multipart/form-data; boundary=XyZ", NULL, NULL, "@mp_noclose", 400, "closing boundary", NULL},
        {"POST", "/log-likelihood", "multipart/form-data; boundary=XyZ", NULL, NULL, "garbage", 400, "no boundary", NULL},
        {"POST", "/log-likelihood", "multipart/form-data; boundary=XyZ", NULL, NULL, "--XyZ--\r\n", 400, "no images", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "{\"images\": \"x\"}", 400, "JSON object like", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "{\"images\": []}", 400, "no images", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "{\"images\": [3]}", 400, "images[0] must be a base64", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "@bad64", 400, "invalid base64", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "@json_small", 400, "model expects 28x28", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "@json_many", 400, "17 images, at most 16", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "{\"images\": [], \"x\": 1}", 400, "unknown field 'x'", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, "{\"imag", 400, "malformed JSON", NULL},
        {"POST", "/log-likelihood", "application/json", NULL, NULL, NULL, 400, "the body is empty", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, NULL, "@huge", 413, "over the limit of 65536 bytes", NULL},
        {"POST", "/log-likelihood", "image/png", NULL, "Transfer-Encoding: chunked", "@huge", 413, "over the limit", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *bc = &cases[i];
        const char *body = bc->body;
        long len = body ? (long)strlen(body) : 0;
        if (body && body[0] == '@') {
            const char *k = body + 1;
            if (!strcmp(k, "truncated")) body = (const char *)img_png[0], len = (long)img_len[0] / 2;
            else if (!strcmp(k, "small")) body = (const char *)png_small, len = (long)len_small;
            else if (!strcmp(k, "rgb")) body = (const char *)png_rgb, len = (long)len_rgb;
            else if (!strcmp(k, "ok")) body = (const char *)img_png[0], len = (long)img_len[0];
            else if (!strcmp(k, "mp_noclose")) body = mp_noclose, len = (long)strlen(mp_noclose);
            else if (!strcmp(k, "bad64")) body = json_bad64, len = (long)strlen(json_bad64);
            else if (!strcmp(k, "json_small")) body = json_small, len = (long)strlen(json_small);
            else if (!strcmp(k, "json_many")) body = json_many, len = (long)strlen(json_many);
            else if (!strcmp(k, "huge")) body = huge, len = 100 * 1024;
        }
        req q = {.method = bc->method, .path = bc->path, .ctype = bc->ctype, .accept = bc->accept,
                 .header = bc->header, .body = body, .len = len};
        resp r;
        http(&q, &r);
        ck_assert_msg(r.status == bc->status, "case %zu %s %s: status %ld, want %ld (%s)", i, bc->method, bc->path,
                      r.status, bc->status, r.body ? r.body : "");
        const cJSON *e = r.json ? cJSON_GetObjectItem(r.json, "error") : NULL;
        ck_assert_msg(cJSON_IsString(e), "case %zu: error is not JSON: %s", i, r.body ? r.body : "(none)");
        ck_assert_msg(strstr(e->valuestring, bc->error_has) != NULL, "case %zu: '%s' lacks '%s'", i, e->valuestring,
                      bc->error_has);
        char h[128];
        ck_assert_str_eq(resp_header(&r, "Content-Type", h, sizeof h), "application/json");
        if (bc->allow) {
            ck_assert_ptr_nonnull(resp_header(&r, "Allow", h, sizeof h));
            ck_assert_str_eq(h, bc->allow);
        }
        if (strstr(bc->error_has, "model expects 28x28")) {
            const cJSON *x = cJSON_GetObjectItem(r.json, "expected");
            ck_assert_int_eq((int)jnum(x, "channels"), 1);
            ck_assert_int_eq((int)jnum(x, "height"), H);
            ck_assert_int_eq((int)jnum(x, "width"), W);
        }
        resp_free(&r);
    }
    free(png_small);
    free(png_rgb);
    free(b64_small);
    free(b64_ok);
    free(huge);

    /* The server is unharmed: a good request still works, errors were counted. */
    resp r;
    post_json("/sample", "{\"n\": 1, \"seed\": 1}", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    char *m = scrape();
    ck_assert(metric(m, "finc_http_errors_total{endpoint=\"/sample\",reason=\"bad_request\"}") >= 9);
    ck_assert(metric(m, "finc_http_requests_total{endpoint=\"other\",code=\"404\"}") == 2);
    ck_assert(metric(m, "finc_http_errors_total{endpoint=\"/log-likelihood\",reason=\"too_large\"}") == 2);
    free(m);
}
END_TEST

/* Raw bytes no client library would send: the server answers or closes,
 * and keeps serving. */
START_TEST(hostile_connections)
{
    finc_server_config c;
    test_config(&c);
    c.read_timeout = 0.5;
    c.idle_timeout = 1;
    c.head_timeout = 1;
    c.max_connections = 6;
    start(&c);
    char buf[8192];

    /* garbage instead of HTTP */
    int fd = raw_connect(port);
    raw_send(fd, "\x01\x02\x03 nonsense\r\n\r\n", 17);
    raw_read_all(fd, buf, sizeof buf);
    close(fd);

    /* a body that trickles in past the read timeout: the connection is closed */
    fd = raw_connect(port);
    const char *hdr = "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n";
    raw_send(fd, hdr, strlen(hdr));
    raw_send(fd, "abc", 3);
    usleep(700000);
    send(fd, "def", 3, MSG_NOSIGNAL);
    const double t0 = finc_mono_now();
    raw_read_all(fd, buf, sizeof buf);
    ck_assert_msg(finc_mono_now() - t0 < 15, "slow body not cut off");
    ck_assert_ptr_null(strstr(buf, "200 OK"));
    close(fd);

    /* a connection that sends no head is answered 408 after the head timeout */
    fd = raw_connect(port);
    const double t1 = finc_mono_now();
    raw_read_all(fd, buf, sizeof buf);
    ck_assert_msg(finc_mono_now() - t1 < 5, "a silent connection was not closed");
    ck_assert_msg(strncmp(buf, "HTTP/1.1 408 ", 13) == 0 && strstr(buf, "did not come within"), "%.200s", buf);
    close(fd);

    /* a kept-alive connection is closed when its next head does not come within the idle timeout */
    fd = raw_connect(port);
    const char *models = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(fd, models, strlen(models));
    ck_assert_int_gt(recv(fd, buf, sizeof buf, 0), 12);
    ck_assert(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    const double t2 = finc_mono_now();
    for (int i = 0; i < 40 && send(fd, "G", 1, MSG_NOSIGNAL) == 1; i++) usleep(100000);  /* a byte at a time */
    raw_read_all(fd, buf, sizeof buf);
    ck_assert_msg(finc_mono_now() - t2 < 3.5, "a trickled second head held its connection %.1f s",
                  finc_mono_now() - t2);
    close(fd);

    /* the connection limit: 6 connections hold requests whose bodies never
     * come; a 7th still gets /healthz, and a clear 503 for anything else */
    int held[6];
    const char *post = "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n";
    for (int i = 0; i < 6; i++) {
        held[i] = raw_connect(port);
        raw_send(held[i], post, strlen(post));
    }
    usleep(200000);
    const char *get_health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    int extra = raw_connect(port);
    raw_send(extra, get_health, strlen(get_health));
    raw_read_all(extra, buf, sizeof buf);
    close(extra);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%.200s", buf);
    extra = raw_connect(port);
    raw_send(extra, models, strlen(models));
    raw_read_all(extra, buf, sizeof buf);
    close(extra);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 503", 12) == 0 && strstr(buf, "--max-connections") &&
                      strstr(buf, "Retry-After: "),
                  "%.300s", buf);
    for (int i = 0; i < 6; i++) close(held[i]);

    /* still serving */
    resp r;
    for (int i = 0; i < 100; i++) {
        get("/healthz", &r);
        if (r.status == 200) break;
        resp_free(&r);
        usleep(50000);
    }
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

/* Heads the server will not read are answered by it, in JSON with a request
 * id, and counted, never left to libmicrohttpd's HTML; the largest head it
 * accepts is served in full. */
START_TEST(malformed_heads_answered_json)
{
    start_default();
    static char big_target[FINC_MAX_TARGET + 64], big_field[FINC_MAX_HEAD + 64], many[4096];
    snprintf(big_target, sizeof big_target, "GET /%0*d HTTP/1.1\r\nHost: x\r\n\r\n", FINC_MAX_TARGET + 8, 0);
    snprintf(big_field, sizeof big_field, "GET / HTTP/1.1\r\nHost: x\r\nX-A: %0*d\r\n\r\n", FINC_MAX_HEAD, 0);
    int k = snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < FINC_MAX_HEADERS + 1; i++) k += snprintf(many + k, sizeof many - (size_t)k, "X%d: 1\r\n", i);
    snprintf(many + k, sizeof many - (size_t)k, "\r\n");
    static const struct {
        const char *head;
        int status;
        const char *error;
    } cases[] = {
        {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0 is not supported"},
        {"GET / HTTP/1.1\r\n\r\n", 400, "need a Host header"},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "several Host headers"},
        {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "not an HTTP request"},
        {"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
        {"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "malformed header line"},
        {"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400, "folded header lines"},
        {"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400, "control character"},
        {"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "malformed Content-Length"},
        {big_target, 414, "request target over the limit"},
        {big_field, 431, "request head over the limit"},
        {many, 431, "too many header fields"},
    };
    static char buf[65536];
    char first[64];
    int n400 = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fd = raw_connect(port);
        raw_send(fd, cases[i].head, strlen(cases[i].head));
        raw_read_all(fd, buf, sizeof buf);
        close(fd);
        snprintf(first, sizeof first, "HTTP/1.1 %d ", cases[i].status);
        ck_assert_msg(strncmp(buf, first, strlen(first)) == 0, "case %zu: %.80s", i, buf);
        ck_assert_msg(strstr(buf, "Content-Type: application/json") && strstr(buf, "X-Request-Id: "), "case %zu: %s",
                      i, buf);
        const char *body = strstr(buf, "\r\n\r\n");
        cJSON *j = body ? cJSON_Parse(body + 4) : NULL;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        ck_assert_msg(cJSON_IsString(e) && strstr(e->valuestring, cases[i].error), "case %zu: %s", i, buf);
        cJSON_Delete(j);
        n400 += cases[i].status == 400;
    }
    ck_assert_int_eq(metric_now("finc_http_requests_total{endpoint=\"other\",code=\"400\"}"), n400);
    ck_assert_int_eq(metric_now("finc_http_requests_total{endpoint=\"other\",code=\"505\"}"), 1);
    ck_assert_int_eq(metric_now("finc_http_requests_total{endpoint=\"other\",code=\"431\"}"), 2);

    /* just under every limit: served */
    k = snprintf(big_field, sizeof big_field, "GET /v1/models?%0*d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
                 FINC_MAX_TARGET - 15, 0);
    for (int i = 0; i < FINC_MAX_HEADERS - 3; i++)
        k += snprintf(big_field + k, sizeof big_field - (size_t)k, "X-%02d: %070d\r\n", i, i);
    k += snprintf(big_field + k, sizeof big_field - (size_t)k, "X-Pad: %0*d\r\n\r\n", FINC_MAX_HEAD - k - 11, 0);
    ck_assert_int_eq(k, FINC_MAX_HEAD);
    int fd = raw_connect(port);
    raw_send(fd, big_field, (size_t)k);
    raw_read_all(fd, buf, sizeof buf);
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "%.300s", buf);

    /* a bad head later on a kept-alive connection is libmicrohttpd's to answer: still counted */
    const double before2 = metric_now("finc_http_requests_total{endpoint=\"other\",code=\"400\"}");
    fd = raw_connect(port);
    const char *two = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nno colon\r\n\r\n";
    raw_send(fd, two, strlen(two));
    raw_read_all(fd, buf, sizeof buf);
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200 ", 13) == 0 && strstr(buf + 13, "HTTP/1.1 400 "), "%.300s", buf);
    ck_assert(wait_metric("finc_http_requests_total{endpoint=\"other\",code=\"400\"}", before2 + 1));
}
END_TEST

/* Connections that never finish a head cannot keep others out: past
 * --max-connections and the headroom the oldest of them is closed (408) to
 * let a new one in, and /healthz answers throughout. */
START_TEST(slow_heads_never_starve)
{
    finc_server_config c;
    test_config(&c);
    c.max_connections = 8;
    c.head_timeout = 60;
    start(&c);
    enum { SLOW = 8 + FINC_GATE_HEADROOM + 20 };
    int slow[SLOW];
    for (int i = 0; i < SLOW; i++) {
        slow[i] = raw_connect(port);
        raw_send(slow[i], "GET /healthz HTTP/1.1\r\nHo", 25);
    }
    usleep(300000);
    char buf[4096];
    for (int round = 0; round < 5; round++) {
        const double t0 = finc_mono_now();
        int fd = raw_connect(port);
        const char *h = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        raw_send(fd, h, strlen(h));
        raw_read_all(fd, buf, sizeof buf);
        close(fd);
        ck_assert_msg(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "round %d: %.200s", round, buf);
        ck_assert_msg(finc_mono_now() - t0 < 1, "round %d: /healthz took %.2f s", round, finc_mono_now() - t0);
    }
    /* waiting for heads costs nothing while no byte comes */
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    usleep(1000000);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    const double cpu = (double)(c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9;
    ck_assert_msg(cpu < 0.2, "%.2f s of CPU in 1 s with %d connections waiting", cpu, SLOW);
    /* the first slow ones were closed to make room, with a 408 */
    struct timeval tv = {2, 0};
    setsockopt(slow[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    raw_read_all(slow[0], buf, sizeof buf);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 408 ", 13) == 0, "%.200s", buf);
    for (int i = 0; i < SLOW; i++) close(slow[i]);
}
END_TEST

START_TEST(bearer_token)
{
    finc_server_config c;
    test_config(&c);
    snprintf(c.api_key, sizeof c.api_key, "s3cret-token\nnext-token");  /* two keys: a rotation */
    start(&c);
    resp r;
    const char *body = "{\"n\": 1, \"seed\": 1}";
    req q = {.path = "/sample", .ctype = "application/json", .body = body, .len = -1};
    http(&q, &r);
    ck_assert_int_eq(r.status, 401);
    char h[128];
    ck_assert_str_eq(resp_header(&r, "WWW-Authenticate", h, sizeof h), "Bearer");
    ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(r.json, "error")->valuestring, "Bearer"));
    resp_free(&r);
    const char *wrong[] = {"Bearer s3cret-tokem", "Bearer s3cret-token2", "Bearer s3cret", "Basic s3cret-token",
                           "Bearer ", "s3cret-token", "Bearer next-token s3cret-token"};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        q.auth = wrong[i];
        http(&q, &r);
        ck_assert_msg(r.status == 401, "'%s' got %ld", wrong[i], r.status);
        resp_free(&r);
    }
    q.auth = "Bearer s3cret-token";
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    q.auth = "Bearer next-token";
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    q = (req){.path = "/log-likelihood", .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
    http(&q, &r);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    get("/v1/models", &r);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    const char *open[] = {"/healthz", "/readyz", "/metrics"};
    for (int i = 0; i < 3; i++) {
        get(open[i], &r);
        ck_assert_msg(r.status == 200, "%s: %ld", open[i], r.status);
        resp_free(&r);
    }
}
END_TEST

/* Framing a proxy and the server could read two ways (request smuggling):
 * refused before the body is read, and the connection closed, so no byte
 * of it can become the next request. */
START_TEST(ambiguous_framing_refused)
{
    start_default();
    static const struct {
        const char *head;
        int status;
        const char *error;
    } cases[] = {
        {"Content-Length: 8\r\nContent-Length: 30\r\n", 400, "2 Content-Length headers"},
        {"Content-Length: 8\r\nTransfer-Encoding: chunked\r\n", 400, "Content-Length and Transfer-Encoding"},
        {"Transfer-Encoding : chunked\r\n", 400, "malformed header name 'Transfer-Encoding '"},
        {"Transfer-Encoding: gzip\r\n", 501, "Transfer-Encoding 'gzip' is not supported"},
        {"Transfer-Encoding: gzip, chunked\r\n", 501, "not supported"},
    };
    char buf[8192], first[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fd = raw_connect(port);
        char head[512];
        /* the body would smuggle a second request in if it were read as one */
        int n = snprintf(head, sizeof head,
                         "POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s\r\n"
                         "{\"n\":1}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                         cases[i].head);
        raw_send(fd, head, (size_t)n);
        raw_read_all(fd, buf, sizeof buf);  /* returns when the server closes */
        close(fd);
        snprintf(first, sizeof first, "HTTP/1.1 %d ", cases[i].status);
        ck_assert_msg(strncmp(buf, first, strlen(first)) == 0, "case %zu: %.80s", i, buf);
        ck_assert_msg(strstr(buf, cases[i].error) != NULL, "case %zu: %s", i, buf);
        ck_assert_msg(strcasestr(buf, "Connection: close") != NULL, "case %zu: %s", i, buf);
        ck_assert_msg(strstr(buf + strlen(first), "HTTP/1.1") == NULL, "case %zu: a second answer: %s", i, buf);
    }
    /* plain chunked framing still works */
    int fd = raw_connect(port);
    const char *ok = "POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n7\r\n{\"n\":1}\r\n0\r\n\r\n";
    raw_send(fd, ok, strlen(ok));
    raw_read_all(fd, buf, sizeof buf);
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "%.200s", buf);
    /* a malformed chunk is libmicrohttpd's to refuse (in its own words): counted on the request */
    fd = raw_connect(port);
    const char *bad = "POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                      "\r\n8\rzz\r\n0\r\n\r\n";
    raw_send(fd, bad, strlen(bad));
    raw_read_all(fd, buf, sizeof buf);
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 400 ", 13) == 0, "%.200s", buf);
    ck_assert(wait_metric("finc_http_requests_total{endpoint=\"/sample\",code=\"400\"}", 1));
}
END_TEST

/* ---- overload, deadlines, hang-ups ---------------------------------------------------- */

typedef struct {
    const char *body;
    long timeout_ms;
    const char *header;
    resp r;
} bg_req;

static void *bg_sample(void *arg)
{
    bg_req *b = arg;
    post_json_with("/sample", b->body, b->header, b->timeout_ms, &b->r);
    return NULL;
}

START_TEST(overload_answers_503_and_recovers)
{
    finc_server_config c;
    test_config(&c);
    /* A queue of 32 images that does not dispatch for 2 s (batches of 64 never fill). */
    c.queue_size = 32;
    c.max_n = 32;
    c.max_samples = 1;
    c.max_delay_ms = 2000;
    c.retry_after = 3;
    start(&c);
    bg_req a = {.body = "{\"n\": 32, \"seed\": 3}"};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, bg_sample, &a), 0);
    ck_assert(wait_metric("finc_queue_depth{kind=\"sample\"}", 32));

    resp r;
    post_json("/sample", "{\"n\": 1}", &r);
    ck_assert_int_eq(r.status, 503);
    char h[64];
    ck_assert_str_eq(resp_header(&r, "Retry-After", h, sizeof h), "3");
    ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(r.json, "error")->valuestring, "queue is full"));
    resp_free(&r);
    /* the other kind has its own queue; health and metrics stay up */
    req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    get("/healthz", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);

    pthread_join(t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(a.r.json, "images")), 32);
    resp_free(&a.r);
    post_json("/sample", "{\"n\": 1}", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert(metric_now("finc_http_errors_total{endpoint=\"/sample\",reason=\"overloaded\"}") == 1);
}
END_TEST

/* A score request of n copies of image 0 with `draws` importance-weighted
 * draws each, in the background; done is set when its answer came. */
typedef struct {
    int n, draws;
    const char *header;
    char *body;
    resp r;
    double t_done;
} bg_score;

static void *bg_score_main(void *arg)
{
    bg_score *b = arg;
    char *one = b64(img_png[0], img_len[0]);
    size_t cap = (size_t)b->n * (strlen(one) + 4) + 128, k = 0;
    b->body = malloc(cap);
    k += (size_t)snprintf(b->body + k, cap - k, "{\"samples\": %d, \"seed\": 1, \"images\": [", b->draws);
    for (int i = 0; i < b->n; i++) k += (size_t)snprintf(b->body + k, cap - k, "%s\"%s\"", i ? "," : "", one);
    snprintf(b->body + k, cap - k, "]}");
    free(one);
    post_json_with("/log-likelihood", b->body, b->header, 0, &b->r);
    b->t_done = finc_mono_now();
    return NULL;
}

/* Admission counts passes (images x draws): heavy requests may fill three
 * quarters of the queue, and the engine serves requests in turns, so a
 * one-image score is admitted and answered while heavy work is queued. A
 * request that could not finish before its deadline even alone is refused
 * up front; one that shared the engine past its deadline says how far it got. */
START_TEST(heavy_requests_do_not_starve_light_ones)
{
    finc_server_config c;
    test_config(&c);
    c.max_batch = 8;
    c.max_images = 64;
    c.max_samples = 64;
    c.queue_size = 16384;  /* heavy ones: 12288 passes, three requests of 64 x 64 */
    c.max_delay_ms = 1;
    start(&c);
    bg_score heavy[4];
    for (int i = 0; i < 4; i++) heavy[i] = (bg_score){.n = 64, .draws = 64};
    pthread_t th[4];
    for (int i = 0; i < 3; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, bg_score_main, &heavy[i]), 0);
    ck_assert(wait_metric("finc_queue_depth{kind=\"score\"}", 1));
    /* a light one is admitted and answered before the heavy ones; a fourth heavy one does not fit */
    resp r;
    req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[1], .len = (long)img_len[1]};
    http(&q, &r);
    const double t_light = finc_mono_now();
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    bg_score_main(&heavy[3]);
    const int fourth = (int)heavy[3].r.status;
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(heavy[i].r.status, 200);
        ck_assert_msg(heavy[i].t_done > t_light, "heavy %d answered %.3f s before the light one", i,
                      t_light - heavy[i].t_done);
    }
    /* (the fourth may have come after the first heavy one ended: then it fits) */
    if (fourth == 503)
        ck_assert_msg(strstr(cJSON_GetObjectItem(heavy[3].r.json, "error")->valuestring, "three quarters for heavy"),
                      "%s", heavy[3].r.body);
    else
        ck_assert_int_eq(fourth, 200);
    for (int i = 0; i < 4; i++) {
        free(heavy[i].body);
        resp_free(&heavy[i].r);
    }

    /* the engine's pace is known now: a request it cannot finish in time is refused before it starts */
    bg_score tight = {.n = 16, .draws = 64, .header = "X-Finc-Timeout-Ms: 1"};
    bg_score_main(&tight);
    ck_assert_int_eq(tight.r.status, 503);
    ck_assert_msg(strstr(cJSON_GetObjectItem(tight.r.json, "error")->valuestring, "more than its deadline"), "%s",
                  tight.r.body);
    free(tight.body);
    resp_free(&tight.r);

    /* three that each fit alone but not together: the deadline ends them part-way, and says so */
    bg_score one = {.n = 16, .draws = 64};
    double t0 = finc_mono_now();
    bg_score_main(&one);
    const double alone = finc_mono_now() - t0;
    free(one.body);
    resp_free(&one.r);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "X-Finc-Timeout-Ms: %.0f", alone * 1.6e3);
    bg_score three[3];
    for (int i = 0; i < 3; i++) three[i] = (bg_score){.n = 16, .draws = 64, .header = hdr};
    for (int i = 0; i < 3; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, bg_score_main, &three[i]), 0);
    int partial = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        const long st = three[i].r.status;
        ck_assert_msg(st == 200 || st == 503 || st == 504, "%ld: %s", st, three[i].r.body);
        if (st == 504) {
            const char *e = cJSON_GetObjectItem(three[i].r.json, "error")->valuestring;
            ck_assert_msg(strstr(e, "of its 16 images ran") || strstr(e, "would pass before it could finish"), "%s", e);
            partial += strstr(e, "of its 16 images ran") != NULL;
        }
        free(three[i].body);
        resp_free(&three[i].r);
    }
    ck_assert_msg(partial >= 1, "none of three ran out of time part-way (alone: %.3f s)", alone);
}
END_TEST

START_TEST(deadline_expires_while_queued_504)
{
    finc_server_config c;
    test_config(&c);
    c.max_delay_ms = 3000;
    start(&c);
    bg_req a = {.body = "{\"n\": 3, \"seed\": 1}", .header = "X-Finc-Timeout-Ms: 150"};
    const double t0 = finc_mono_now();
    bg_sample(&a);
    ck_assert_int_eq(a.r.status, 504);
    ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(a.r.json, "error")->valuestring, "deadline"));
    ck_assert_msg(finc_mono_now() - t0 < 2.9, "504 came only after the batch delay");
    resp_free(&a.r);
    char *m = scrape();
    ck_assert(metric(m, "finc_images_dropped_total{kind=\"sample\",reason=\"expired\"}") == 3);
    ck_assert(metric(m, "finc_images_total{kind=\"sample\"}") == 0);  /* never run */
    ck_assert(metric(m, "finc_http_requests_total{endpoint=\"/sample\",code=\"504\"}") == 1);
    free(m);
    /* the server default applies too */
    finc_server_stop(srv);
    c.timeout_ms = 100;
    start(&c);
    a = (bg_req){.body = "{\"n\": 1}"};
    bg_sample(&a);
    ck_assert_int_eq(a.r.status, 504);
    resp_free(&a.r);
}
END_TEST

START_TEST(client_hangup_drops_queued_work)
{
    finc_server_config c;
    test_config(&c);
    c.max_delay_ms = 2000;
    start(&c);
    /* The client gives up after 200 ms; its job waits for 2 s and must never run. */
    bg_req a = {.body = "{\"n\": 3, \"seed\": 1}", .timeout_ms = 200};
    bg_sample(&a);
    ck_assert_int_eq(a.r.rc, CURLE_OPERATION_TIMEDOUT);
    resp_free(&a.r);
    ck_assert(wait_metric("finc_images_dropped_total{kind=\"sample\",reason=\"cancelled\"}", 3));
    char *m = scrape();
    ck_assert(metric(m, "finc_images_total{kind=\"sample\"}") == 0);
    ck_assert(metric(m, "finc_http_requests_total{endpoint=\"/sample\",code=\"499\"}") == 1);
    free(m);
}
END_TEST

/* ---- metrics -------------------------------------------------------------------------- */

/* Every histogram series: buckets never decrease and +Inf equals _count. */
static int check_histograms(const char *text, char *why, size_t n)
{
    int checked = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *inf = strstr(p, "le=\"+Inf\"}");
        const char *eol = strchr(p, '\n');
        if (!inf || (eol && inf > eol)) continue;
        /* name_bucket{labels,le="+Inf"} v  ->  name_count{labels} */
        const char *b = strstr(p, "_bucket{");
        char series[512];
        int labels_len = (int)(inf - (b + 8));
        if (labels_len > 0 && b[8 + labels_len - 1] == ',') labels_len--;
        if (labels_len > 0) snprintf(series, sizeof series, "%.*s_count{%.*s}", (int)(b - p), p, labels_len, b + 8);
        else snprintf(series, sizeof series, "%.*s_count", (int)(b - p), p);
        const double vinf = strtod(inf + 10, NULL), vcount = metric(text, series);
        if (vinf != vcount) {
            snprintf(why, n, "%s is %g, +Inf bucket %g", series, vcount, vinf);
            return -1;
        }
        checked++;
    }
    return checked;
}

START_TEST(metrics_promtool_and_histograms)
{
    start_default();
    resp r;
    for (int i = 0; i < 3; i++) {
        post_json("/sample", "{\"n\": 2}", &r);
        resp_free(&r);
        req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[i], .len = (long)img_len[i]};
        http(&q, &r);
        resp_free(&r);
        get("/nope", &r);
        resp_free(&r);
    }
    get("/metrics", &r);
    ck_assert_int_eq(r.status, 200);
    char h[128];
    ck_assert_str_eq(resp_header(&r, "Content-Type", h, sizeof h), "text/plain; version=0.0.4; charset=utf-8");
    const char *text = r.body;
    const char *must[] = {"finc_http_request_duration_seconds_bucket{endpoint=\"/sample\",code=\"200\",le=\"+Inf\"} 3",
                          "finc_http_requests_total{endpoint=\"/log-likelihood\",code=\"200\"} 3",
                          "finc_http_requests_total{endpoint=\"other\",code=\"404\"} 3",
                          "finc_queue_wait_seconds_count{kind=\"score\"} 3",
                          "finc_engine_duration_seconds_count{op=\"sample\"}",
                          "finc_build_info{version=\"",
                          "finc_http_requests_in_flight 1",
                          "finc_queue_depth{kind=\"sample\"} 0",
                          "process_cpu_seconds_total ",
                          "process_resident_memory_bytes ",
                          "process_start_time_seconds ",
                          "process_open_fds "};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        ck_assert_msg(strstr(text, must[i]) != NULL, "metrics lack '%s'", must[i]);
    char why[600];
    int nh = check_histograms(text, why, sizeof why);
    ck_assert_msg(nh >= 8, "histograms: %s (%d)", why, nh);

    char path[400];
    snprintf(path, sizeof path, "%s/metrics.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fwrite(r.body, 1, r.len, f);
    fclose(f);
    resp_free(&r);
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        fprintf(stderr, "metrics_promtool_and_histograms: promtool not installed, lint skipped "
                        "(Debian package prometheus)\n");
        return;
    }
    char cmd[600], out[4096];
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    ck_assert_msg(run_capture(cmd, out, sizeof out) == 0, "promtool check metrics: %s", out);
}
END_TEST

/* ---- anomaly verdicts --------------------------------------------------------------- */

/* The test model's weights with an anomaly block fitted on 160 images of the
 * fixture's family (120 fit, 40 calibration). */
static void set_anomaly_meta(testmodel_file *f, void *user) { testmodel_set_meta(f, "anomaly", user); }

static void write_calibrated(const char *path)
{
    enum { N = 160, NFIT = 120 };
    char err[512];
    finc_engine *e = engine();
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    uint8_t *px = malloc((size_t)N * D);
    uint64_t x = 99;
    for (int i = 0; i < N; i++)
        for (int p = 0; p < D; p++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            const int r = p / W, c = p % W;
            px[i * D + p] = (uint8_t)(((r * (i % 5 + 1) * 7 + c * 5 * (i % 3 + 2)) + (int)(x >> 59)) % 256);
        }
    struct finc_anomaly a;
    ck_assert_msg(finc_calibrate(e, N, px, NFIT, "fixture", &a, err, sizeof err) == 0, "%s", err);
    char *block = finc_anomaly_to_json(&a, cfg);
    testmodel_spec spec = fmnist_spec();
    ck_assert_int_eq(testmodel_write_hook(path, &spec, 11, set_anomaly_meta, block), 0);
    free(block);
    finc_anomaly_free(&a);
    free(px);
    finc_engine_free(e);
}

/* One PNG of the given libpng colour type and depth holding gray pixels
 * (palette: a gray ramp; alpha: opaque), so decoding gives them back. */
static uint8_t *png_variant(const uint8_t *pix, int color, int depth, size_t *len)
{
    png_color pal[256];
    for (int i = 0; i < 256; i++) pal[i].red = pal[i].green = pal[i].blue = (png_byte)i;
    uint8_t raw[H * W * 2];
    for (int i = 0; i < H * W; i++) {
        if (depth == 16) raw[2 * i] = raw[2 * i + 1] = pix[i];                     /* v * 257, big-endian */
        else if (color == PNG_COLOR_TYPE_GRAY_ALPHA) raw[2 * i] = pix[i], raw[2 * i + 1] = 255;
        else raw[i] = pix[i];                                                      /* gray or palette index */
    }
    return testpng_write(W, H, color, depth, 0, raw, color == PNG_COLOR_TYPE_PALETTE ? pal : NULL, 256, NULL, 0,
                         NULL, len);
}

typedef struct {
    const uint8_t *png[4];
    size_t len[4];
    const char *alpha;
} variant_parts;

static curl_mime *variant_mime(CURL *c, void *user)
{
    variant_parts *v = user;
    curl_mime *m = curl_mime_init(c);
    for (int i = 0; i < 4; i++) {
        curl_mimepart *p = curl_mime_addpart(m);
        curl_mime_name(p, "image");
        curl_mime_filename(p, "v.png");
        curl_mime_data(p, (const char *)v->png[i], v->len[i]);
    }
    if (v->alpha) {
        curl_mimepart *p = curl_mime_addpart(m);
        curl_mime_name(p, "alpha");
        curl_mime_data(p, v->alpha, CURL_ZERO_TERMINATED);
    }
    return m;
}

/* JSON numbers are printed to 15 significant digits */
#define JSON_TOL 1e-14

static const cJSON *result_anomaly(const resp *r, int i)
{
    const cJSON *res = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r->json, "results"), i);
    ck_assert_ptr_nonnull(res);
    return cJSON_GetObjectItemCaseSensitive(res, "anomaly");
}

START_TEST(anomaly_fields_verdicts_and_metrics)
{
    char cal[400], err[512];
    snprintf(cal, sizeof cal, "%s/calibrated.safetensors", dir);
    write_calibrated(cal);
    finc_server_config c;
    test_config(&c);
    snprintf(c.weights, sizeof c.weights, "%s", cal);
    start(&c);

    /* each result against the engine on the same pixels */
    finc_engine_opts o = {.backend = "cpu", .max_batch = 64, .threads = 1};
    finc_engine *e = finc_engine_open(cal, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    finc_anomaly_result want[NIMG];
    double lp[NIMG], iw;
    ck_assert_int_eq(finc_score_anomaly(e, NIMG, &img_pix[0][0], lp, want, err, sizeof err), 0);
    ck_assert_int_eq(finc_score(e, 1, img_pix[1], 3, 5, 0, &iw, err, sizeof err), 0);
    finc_engine_free(e);
    resp r;
    int scored = 0, flagged = 0;
    for (int i = 0; i < NIMG; i++) {
        req q = {.path = i % 2 ? "/log-likelihood?alpha=0.5" : "/log-likelihood", .ctype = "image/png",
                 .body = img_png[i], .len = (long)img_len[i]};
        http(&q, &r);
        ck_assert_int_eq(r.status, 200);
        const double alpha = i % 2 ? 0.5 : 0.01;
        ck_assert_double_eq(jnum(r.json, "alpha"), alpha);
        const cJSON *an = result_anomaly(&r, 0);
        ck_assert_ptr_nonnull(an);
        ck_assert_double_eq_tol(jnum(an, "score"), want[i].score, JSON_TOL * fabs(want[i].score));
        ck_assert_double_eq_tol(jnum(an, "p_value"), want[i].p_value, JSON_TOL * fabs(want[i].p_value));
        ck_assert_double_eq_tol(jnum(an, "complexity_bits_per_dim"), want[i].complexity_bpd, JSON_TOL * fabs(want[i].complexity_bpd));
        const int anomalous = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(an, "anomalous"));
        ck_assert_int_eq(anomalous, want[i].p_value <= alpha);
        scored++, flagged += anomalous;
        resp_free(&r);
    }

    /* importance-weighted: that log p, and the verdict of the midpoint pass */
    req qiw = {.path = "/log-likelihood?samples=3&seed=5", .ctype = "image/png", .body = img_png[1],
               .len = (long)img_len[1]};
    http(&qiw, &r);
    ck_assert_int_eq(r.status, 200);
    const cJSON *res0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "results"), 0);
    ck_assert_double_eq_tol(jnum(res0, "log_likelihood"), iw, JSON_TOL * fabs(iw));
    ck_assert_double_eq_tol(jnum(result_anomaly(&r, 0), "score"), want[1].score, JSON_TOL * fabs(want[1].score));
    flagged += want[1].p_value <= 0.01, scored++;
    resp_free(&r);

    /* the same pixels in four encodings, alpha as a form field: one answer */
    variant_parts v = {.alpha = "0.2"};
    v.png[0] = img_png[2], v.len[0] = img_len[2];
    uint8_t *pal = png_variant(img_pix[2], PNG_COLOR_TYPE_PALETTE, 8, &v.len[1]);
    uint8_t *g16 = png_variant(img_pix[2], PNG_COLOR_TYPE_GRAY, 16, &v.len[2]);
    uint8_t *ga = png_variant(img_pix[2], PNG_COLOR_TYPE_GRAY_ALPHA, 8, &v.len[3]);
    v.png[1] = pal, v.png[2] = g16, v.png[3] = ga;
    req q = {.path = "/log-likelihood", .mime = variant_mime, .mime_user = &v};
    http(&q, &r);
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    ck_assert_double_eq(jnum(r.json, "alpha"), 0.2);
    for (int i = 0; i < 4; i++) {
        const cJSON *an = result_anomaly(&r, i);
        ck_assert_double_eq_tol(jnum(an, "score"), want[2].score, JSON_TOL * fabs(want[2].score));
        ck_assert_double_eq_tol(jnum(an, "p_value"), want[2].p_value, JSON_TOL * fabs(want[2].p_value));
        flagged += want[2].p_value <= 0.2;
    }
    scored += 4;
    resp_free(&r);

    /* JSON bodies: alpha as a number */
    char *b = b64(img_png[3], img_len[3]), body[8192];
    snprintf(body, sizeof body, "{\"images\": [\"%s\"], \"alpha\": 0.9}", b);
    post_json("/log-likelihood", body, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result_anomaly(&r, 0), "anomalous")),
                     want[3].p_value <= 0.9);
    flagged += want[3].p_value <= 0.9, scored++;
    resp_free(&r);

    /* bad alphas: 400 with a message, nothing scored */
    const char *bad_q[] = {"/log-likelihood?alpha=0", "/log-likelihood?alpha=1", "/log-likelihood?alpha=abc",
                           "/log-likelihood?alpha=-0.1", "/log-likelihood?alpha=0.5x", "/log-likelihood?alpha="};
    for (size_t i = 0; i < sizeof bad_q / sizeof bad_q[0]; i++) {
        req bq = {.path = bad_q[i], .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
        http(&bq, &r);
        ck_assert_msg(r.status == 400, "%s: %ld", bad_q[i], r.status);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(r.json, "error");
        ck_assert_msg(cJSON_IsString(m) && strstr(m->valuestring, "alpha must be a number in (0, 1)"), "%s", r.body);
        resp_free(&r);
    }
    const char *bad_json[] = {"\"0.1\"", "2", "null", "[0.1]"};
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        snprintf(body, sizeof body, "{\"images\": [\"%s\"], \"alpha\": %s}", b, bad_json[i]);
        post_json("/log-likelihood", body, &r);
        ck_assert_msg(r.status == 400 && strstr(r.body, "alpha"), "alpha %s: %ld %s", bad_json[i], r.status, r.body);
        resp_free(&r);
    }
    v.alpha = "1.5";
    http(&q, &r);
    ck_assert_msg(r.status == 400 && strstr(r.body, "alpha"), "%ld %s", r.status, r.body);
    resp_free(&r);
    free(b);

    get("/v1/models", &r);
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(r.json, "models"), 0), "anomaly");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(an, "calibrated")));
    ck_assert_double_eq(jnum(an, "fit_images"), 120);
    ck_assert_double_eq(jnum(an, "calibration_images"), 40);
    ck_assert_double_eq(jnum(an, "default_alpha"), 0.01);
    /* the calibration scores' histogram, binned here from the weights' own scores */
    e = finc_engine_open(cal, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    const struct finc_anomaly *fa = finc_engine_model(e)->anomaly;
    const cJSON *hist = cJSON_GetObjectItemCaseSensitive(an, "calibration_histogram");
    ck_assert_ptr_nonnull(hist);
    const double lo = jnum(hist, "lo"), hi = jnum(hist, "hi");
    ck_assert_double_eq_tol(lo, fa->cal[0], JSON_TOL * fabs(lo));
    ck_assert_double_eq_tol(hi, fa->cal[39], JSON_TOL * fabs(hi));  /* the 40th of 40 is the 99th percentile */
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(hist, "counts");
    ck_assert_int_eq(cJSON_GetArraySize(counts), 32);
    int want_counts[32] = {0}, want_over = 0, total = (int)jnum(hist, "over");
    for (int i = 0; i < fa->n_cal; i++) {
        const double x = fa->cal[i];
        if (x > fa->cal[39]) want_over++;
        else want_counts[x >= fa->cal[39] ? 31 : (int)((x - fa->cal[0]) / ((fa->cal[39] - fa->cal[0]) / 32))]++;
    }
    for (int k = 0; k < 32; k++) {
        ck_assert_int_eq((int)cJSON_GetArrayItem(counts, k)->valuedouble, want_counts[k]);
        total += (int)cJSON_GetArrayItem(counts, k)->valuedouble;
    }
    ck_assert_int_eq((int)jnum(hist, "over"), want_over);
    ck_assert_int_eq(total, 40);
    finc_engine_free(e);
    resp_free(&r);

    char *text = scrape();
    ck_assert_double_eq(metric(text, "finc_anomaly_p_value_count"), scored);
    ck_assert_double_eq(metric(text, "finc_anomalous_images_total"), flagged);
    free(text);
    free(pal);
    free(g16);
    free(ga);
}
END_TEST

START_TEST(uncalibrated_model_has_no_verdicts)
{
    start_default();
    resp r;
    req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_null(result_anomaly(&r, 0));
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(r.json, "alpha"));
    resp_free(&r);
    req qa = {.path = "/log-likelihood?alpha=0.05", .ctype = "image/png", .body = img_png[0], .len = (long)img_len[0]};
    http(&qa, &r);
    ck_assert_msg(r.status == 400 && strstr(r.body, "not calibrated"), "%ld %s", r.status, r.body);
    resp_free(&r);
    get("/v1/models", &r);
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(r.json, "models"), 0), "anomaly");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(an, "calibrated")));
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(an, "calibration_histogram"));
    resp_free(&r);
    ck_assert_double_eq(metric_now("finc_anomaly_p_value_count"), 0);
}
END_TEST

/* ---- the benchmark's load generator ----------------------------------------------------- */

/* build/loadgen's JSON line for one rate against this server. */
static cJSON *loadgen(const char *args)
{
    char cmd[1200], out[4096];
    snprintf(cmd, sizeof cmd, "build/loadgen --url http://127.0.0.1:%d %s --json", port, args);
    ck_assert_msg(run_capture(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j != NULL, "loadgen printed: %s", out);
    return j;
}

START_TEST(loadgen_drives_both_endpoints)
{
    if (access("build/loadgen", X_OK) != 0) {
        fprintf(stderr, "loadgen_drives_both_endpoints: build/loadgen not built (make build/loadgen)\n");
        return;
    }
    start_default();
    char args[600];
    snprintf(args, sizeof args, "--endpoint score --png '%s' --rates 40 --duration 1 --warmup 0.2", img_path[0]);
    for (int k = 0; k < 2; k++) {
        cJSON *j = loadgen(k ? "--endpoint sample --n 2 --rates 40 --duration 1 --warmup 0.2" : args);
        ck_assert_msg(jnum(j, "sent") == 40 && jnum(j, "ok") == 40 && jnum(j, "non200") == 0,
                      "%s: sent %g ok %g non200 %g", k ? "sample" : "score", jnum(j, "sent"), jnum(j, "ok"),
                      jnum(j, "non200"));
        ck_assert(jnum(j, "images_per_s") == 40 * (k ? 2 : 1));
        ck_assert(jnum(j, "p50_ms") > 0 && jnum(j, "p50_ms") <= jnum(j, "p99_ms"));
        ck_assert(jnum(j, "batches") >= 1 && jnum(j, "mean_batch") >= 1);
        cJSON_Delete(j);
    }
    /* every request refused: counted as such, none as served */
    finc_server_stop(srv);
    srv = NULL;
    cJSON *j = loadgen(args);
    ck_assert(jnum(j, "ok") == 0 && jnum(j, "non200") == 40 && jnum(j, "transport_errors") == 40);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "p99_ms")));
    cJSON_Delete(j);
}
END_TEST

/* ---- SIGTERM ---------------------------------------------------------------------------- */

/* The forked server's stderr, read until "ready on port N". */
static int read_port(int fd)
{
    char buf[8192];
    size_t n = 0;
    for (int tries = 0; tries < 3000 && n + 1 < sizeof buf; tries++) {
        ssize_t k = read(fd, buf + n, sizeof buf - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
        buf[n] = '\0';
        const char *p = strstr(buf, "ready on port ");
        if (p && strchr(p, '\n')) return atoi(p + strlen("ready on port "));
    }
    return -1;
}

/* Forks finc serve, the real entry point with its signal handling, on a free
 * loopback port with argv's flags (NULL-terminated, after "serve"); its
 * stderr goes to *err_fd and the port to the global `port`. Fork first,
 * while this process has no threads. */
static pid_t fork_serve(char **flags, int *err_fd)
{
    int errp[2];
    ck_assert_int_eq(pipe(errp), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(errp[1], STDERR_FILENO);
        close(errp[0]);
        char *argv[40] = {"serve", "--host", "127.0.0.1", "--port", "0", "--weights", weights, "--log", "off"};
        int argc = 9;
        for (int i = 0; flags[i] && argc < 39; i++) argv[argc++] = flags[i];
        const int rc = finc_serve_main(argc, argv);
        fflush(NULL);
        _exit(rc);
    }
    close(errp[1]);
    port = read_port(errp[0]);
    if (port <= 0) kill(pid, SIGKILL);
    ck_assert_int_gt(port, 0);
    *err_fd = errp[0];
    return pid;
}

/* Waits up to 20 s for pid to exit (then kills it); 1 when it exited by itself. */
static int wait_exit(pid_t pid, int *status)
{
    pid_t w = 0;
    for (int i = 0; i < 2000 && w == 0; i++) {
        w = waitpid(pid, status, WNOHANG);
        if (w == 0) usleep(10000);
    }
    if (w == 0) kill(pid, SIGKILL), waitpid(pid, status, 0);
    return w == pid;
}

START_TEST(sigterm_drains_accepted_requests)
{
    int err_fd;
    char *flags[] = {"--threads", "1", "--http-threads", "2", "--max-delay-ms", "1500", "--drain-timeout", "20", NULL};
    pid_t pid = fork_serve(flags, &err_fd);

    /* An upload in progress (headers in, body not yet): accepted work that
     * holds the drain open so readiness can be watched. */
    int slow = raw_connect(port);
    char hdr[256];
    snprintf(hdr, sizeof hdr,
             "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n\r\n",
             img_len[0]);
    raw_send(slow, hdr, strlen(hdr));
    raw_send(slow, img_png[0], 10);

    /* Three requests queued behind the 1.5 s batch delay. */
    bg_req q[3] = {{.body = "{\"n\": 2, \"seed\": 1}"}, {.body = "{\"n\": 1, \"seed\": 2}"}, {.body = "{\"n\": 3, \"seed\": 3}"}};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, bg_sample, &q[i]), 0);
    ck_assert(wait_metric("finc_queue_depth{kind=\"sample\"}", 6));
    ck_assert(wait_metric("finc_http_requests_in_flight", 5));  /* 3 queued, the upload, this scrape */

    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    resp r;
    int drained_ready = 0;
    for (int i = 0; i < 500 && !drained_ready; i++) {
        get("/readyz", &r);
        drained_ready = r.status == 503;
        if (drained_ready) ck_assert_str_eq(cJSON_GetObjectItem(r.json, "status")->valuestring, "draining");
        resp_free(&r);
        if (!drained_ready) usleep(10000);
    }
    ck_assert_msg(drained_ready, "readiness did not turn 503");
    /* new work is refused while draining */
    post_json("/sample", "{\"n\": 1}", &r);
    ck_assert_int_eq(r.status, 503);
    resp_free(&r);
    /* the queued requests were flushed and answered */
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(q[i].r.status == 200, "queued request %d: %ld", i, q[i].r.status);
        resp_free(&q[i].r);
    }
    /* the upload finishes and is answered too */
    raw_send(slow, img_png[0] + 10, img_len[0] - 10);
    char buf[8192];
    raw_read_all(slow, buf, sizeof buf);
    close(slow);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "upload answered: %.200s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "log_likelihood"));

    int st = 0;
    const int exited = wait_exit(pid, &st);
    close(err_fd);
    ck_assert_msg(exited, "server did not exit after the drain");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
}
END_TEST

/* One address holds at most --max-connections-per-ip connections: past it
 * a connection is closed unanswered; freeing one lets the next in. */
START_TEST(per_ip_connection_limit)
{
    finc_server_config c;
    test_config(&c);
    c.max_connections_per_ip = 2;
    start(&c);
    int idle[2] = {raw_connect(port), raw_connect(port)};
    raw_send(idle[0], "GET", 3);  /* a request begun and never finished */
    usleep(200000);               /* both accepted before the next connect */
    const char *get_health = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char buf[4096];
    int fd = raw_connect(port);
    send(fd, get_health, strlen(get_health), MSG_NOSIGNAL);
    ck_assert_msg(raw_read_all(fd, buf, sizeof buf) == 0, "a third connection was answered: %.100s", buf);
    close(fd);
    close(idle[1]);
    usleep(200000);
    fd = raw_connect(port);
    raw_send(fd, get_health, strlen(get_health));
    raw_read_all(fd, buf, sizeof buf);
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%.100s", buf);
    close(idle[0]);
}
END_TEST

static curl_mime *raw_name_mime(CURL *c, void *user)
{
    curl_mime *m = curl_mime_init(c);
    curl_mimepart *p = curl_mime_addpart(m);
    curl_mime_name(p, "image");
    curl_mime_filename(p, "\xff\xfe" "a.png");
    curl_mime_data(p, (const char *)img_png[0], img_len[0]);
    (void)user;
    return m;
}

/* Raw bytes that are not UTF-8, in a file name or a field name, come back as
 * '?' in answers (and in the log), never as they were sent. */
START_TEST(client_bytes_echoed_as_utf8)
{
    start_default();
    resp r;
    req q = {.path = "/log-likelihood", .mime = raw_name_mime};
    http(&q, &r);
    ck_assert_int_eq(r.status, 200);
    const cJSON *res = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "results"), 0);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(res, "name")->valuestring, "??a.png");
    resp_free(&r);
    post_json("/sample", "{\"\xff" "bad\": 1}", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_msg(strstr(cJSON_GetObjectItem(r.json, "error")->valuestring, "unknown field '?bad'") != NULL, "%s",
                  r.body);
    resp_free(&r);
}
END_TEST

/* Bodies held at once are bounded server-wide (--max-body-memory): a body
 * that would go past it is read and dropped and its request answered 503,
 * and what bodies held is given back when they end. */
START_TEST(body_memory_budget)
{
    finc_server_config c;
    test_config(&c);
    c.max_body = 1 << 20;
    c.max_body_memory = 3 << 19;  /* 1.5 MiB: one 1 MiB body fits, two do not */
    start(&c);
    const size_t len = 1000000, first = 900000;
    char *junk = malloc(len);
    memset(junk, ' ', len);
    char head[256];
    snprintf(head, sizeof head,
             "POST /log-likelihood HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n", len);
    char buf[8192];
    for (int round = 0; round < 2; round++) {  /* the second round finds the budget whole again */
        int fd[2];
        for (int i = 0; i < 2; i++) {
            fd[i] = raw_connect(port);
            raw_send(fd[i], head, strlen(head));
            raw_send(fd[i], junk, first);
            ck_assert(wait_metric("finc_http_requests_in_flight", i + 2));  /* this scrape too */
            usleep(100000);
        }
        for (int i = 0; i < 2; i++) {
            raw_send(fd[i], junk, len - first);
            raw_read_all(fd[i], buf, sizeof buf);
            close(fd[i]);
            if (i == 0) {
                ck_assert_msg(strncmp(buf, "HTTP/1.1 400", 12) == 0, "round %d, first: %.120s", round, buf);
            } else {
                ck_assert_msg(strncmp(buf, "HTTP/1.1 503", 12) == 0, "round %d, second: %.120s", round, buf);
                ck_assert_ptr_nonnull(strstr(buf, "--max-body-memory"));
                ck_assert_ptr_nonnull(strcasestr(buf, "Retry-After:"));
            }
        }
    }
    free(junk);
}
END_TEST

/* SIGHUP drains like SIGTERM and exits 0, instead of killing the process. */
START_TEST(sighup_drains)
{
    int err_fd;
    char *flags[] = {"--threads", "1", NULL};
    pid_t pid = fork_serve(flags, &err_fd);
    ck_assert_int_eq(kill(pid, SIGHUP), 0);
    int st = 0;
    const int exited = wait_exit(pid, &st);
    char log[4096];
    const ssize_t n = read(err_fd, log, sizeof log - 1);
    log[n > 0 ? n : 0] = '\0';
    close(err_fd);
    ck_assert_msg(exited && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, log);
    ck_assert_msg(strstr(log, "SIGHUP, draining") != NULL, "%s", log);
}
END_TEST

/* Resident memory of a process, bytes (from /proc). */
static long rss_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb * 1024;
}

/* After a burst of large bodies the memory goes back: the process's
 * resident size returns within 20% (or 16 MB) of what it was before. */
START_TEST(memory_returns_after_a_burst)
{
    int err_fd;
    char *flags[] = {"--threads", "1", "--http-threads", "4", NULL};
    pid_t pid = fork_serve(flags, &err_fd);
    for (int i = 0; i < 20; i++) {
        resp r;
        req q = {.path = "/log-likelihood", .ctype = "image/png", .body = img_png[i % NIMG],
                 .len = (long)img_len[i % NIMG]};
        http(&q, &r);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    usleep(1500000);
    const long base = rss_of(pid);
    enum { CONNS = 100, BODY = 2 << 20 };
    static char chunk[1 << 16];
    memset(chunk, 'x', sizeof chunk);
    int fds[CONNS];
    char head[256];
    snprintf(head, sizeof head,
             "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n", BODY);
    for (int i = 0; i < CONNS; i++) {
        fds[i] = raw_connect(port);
        raw_send(fds[i], head, strlen(head));
        for (int sent = 0; sent < BODY - 1;) {
            const int k = BODY - 1 - sent < (int)sizeof chunk ? BODY - 1 - sent : (int)sizeof chunk;
            raw_send(fds[i], chunk, (size_t)k);
            sent += k;
        }
    }
    usleep(500000);
    const long peak = rss_of(pid);
    for (int i = 0; i < CONNS; i++) close(fds[i]);
    /* within 20% of the baseline, or 16 MB where that is smaller (a CPU-only process starts near 15 MB) */
    const long slack = base / 5 > (16L << 20) ? base / 5 : (16L << 20);
    long now = peak;
    for (int i = 0; i < 100 && now > base + slack; i++) {
        usleep(100000);
        now = rss_of(pid);
    }
    kill(pid, SIGTERM);
    int st;
    wait_exit(pid, &st);
    close(err_fd);
    ck_assert_msg(peak > base + (long)CONNS * BODY / 2, "the burst did not show: %ld MB -> %ld MB", base >> 20,
                  peak >> 20);
#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer's allocator keeps freed blocks in quarantine: glibc's behaviour is the one tested */
    (void)now;
#else
    ck_assert_msg(now <= base + slack, "resident memory %ld MB before, %ld MB at the peak, %ld MB after",
                  base >> 20, peak >> 20, now >> 20);
#endif
}
END_TEST

/* finc serve's output (config printout and messages) under a shell's ulimit. */
static void serve_under_ulimit(const char *ulimit, const char *args, char *out, size_t cap)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "sh -c 'ulimit %s && exec ./finc serve --host 127.0.0.1 --port 0 --log off --weights %s/none.safetensors %s'",
             ulimit, dir, args);
    ck_assert_msg(run_capture(cmd, out, cap) == 1, "%s: %s", cmd, out);  /* no weights file */
}

START_TEST(connection_limit_fits_open_files)
{
    if (access("./finc", X_OK) != 0) {
        fprintf(stderr, "connection_limit_fits_open_files: ./finc not built\n");
        return;
    }
    char out[8192];
    /* a hard limit under the default 4096 connections: brought down to fit, said so */
    serve_under_ulimit("-n 300", "", out, sizeof out);
    ck_assert_msg(strstr(out, "warning: max-connections 4096 needs 4224 open files and the limit is 300 (ulimit -n); "
                              "serving at most 172 connections"), "%s", out);
    ck_assert_msg(strstr(out, "max-connections  172\n"), "%s", out);
    /* a low soft limit under a high enough hard one: raised, nothing to say */
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= 4224) {
        serve_under_ulimit("-S -n 300", "", out, sizeof out);
        ck_assert_msg(!strstr(out, "warning"), "%s", out);
        ck_assert_msg(strstr(out, "max-connections  4096\n"), "%s", out);
    }
    serve_under_ulimit("-S -n 300", "--max-connections 64 --queue-size 32 --max-n 32 --max-images 32 --max-samples 1", out, sizeof out);
    ck_assert_msg(!strstr(out, "warning"), "%s", out);
}
END_TEST

/* The entry point's exit statuses: 2 for bad flags, 1 when the weights do not load. */
START_TEST(serve_exit_statuses)
{
    /* its configuration printout and messages are not this test's output */
    ck_assert_ptr_nonnull(freopen("/dev/null", "w", stderr));
    char *bad[] = {"serve", "--max-batch", "0", NULL};
    ck_assert_int_eq(finc_serve_main(3, bad), 2);
    char *stray[] = {"serve", "weights.safetensors", NULL};
    ck_assert_int_eq(finc_serve_main(2, stray), 2);
    char missing[400];
    snprintf(missing, sizeof missing, "%s/none.safetensors", dir);
    char *nofile[] = {"serve", "--host", "127.0.0.1", "--port", "0", "--weights", missing, "--log", "off", NULL};
    ck_assert_int_eq(finc_serve_main(9, nofile), 1);
    /* an empty key file: no start rather than an open server */
    char keys[400];
    snprintf(keys, sizeof keys, "%s/empty-keys", dir);
    fclose(fopen(keys, "w"));
    setenv("FINC_API_KEY_FILE", keys, 1);
    char *serve[] = {"serve", "--host", "127.0.0.1", "--port", "0", "--weights", weights, "--log", "off", NULL};
    ck_assert_int_eq(finc_serve_main(9, serve), 2);
    unsetenv("FINC_API_KEY_FILE");
}
END_TEST

/* One test case per behaviour, so one can be run alone:
 *   make check SUITE=server CK_RUN_CASE=limits */
static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase(s, "endpoints");  /* answers equal the engine's and the CLI's */
    tcase_add_test(tc, health_ready_models);
    tcase_add_test(tc, page_and_its_files);
    tcase_add_test(tc, page_off);
    tcase_add_test(tc, sample_json_and_png_match_engine);
    tcase_add_test(tc, score_every_content_type_matches_engine);
    tcase_add_test(tc, score_equals_cli);
    tcase_add_test(tc, anomaly_fields_verdicts_and_metrics);
    tcase_add_test(tc, uncalibrated_model_has_no_verdicts);
    tc = tcase(s, "batching");
    tcase_add_test(tc, concurrent_clients_batch_and_agree);
    tcase_add_test(tc, large_n_is_split_across_batches);
    tcase_add_test(tc, loadgen_drives_both_endpoints);
    tc = tcase(s, "input");  /* what clients send: refused with clear answers */
    tcase_add_test(tc, bad_input_table);
    tcase_add_test(tc, bearer_token);
    tcase_add_test(tc, ambiguous_framing_refused);
    tcase_add_test(tc, malformed_heads_answered_json);
    tcase_add_test(tc, client_bytes_echoed_as_utf8);
    tc = tcase(s, "limits");  /* connections, bodies, memory, slow and hostile clients */
    tcase_add_test(tc, hostile_connections);
    tcase_add_test(tc, per_ip_connection_limit);
    tcase_add_test(tc, slow_heads_never_starve);
    tcase_add_test(tc, body_memory_budget);
    tcase_add_test(tc, connection_limit_fits_open_files);
    tc = tcase(s, "load");  /* queues, deadlines, fairness, hang-ups */
    tcase_add_test(tc, overload_answers_503_and_recovers);
    tcase_add_test(tc, deadline_expires_while_queued_504);
    tcase_add_test(tc, heavy_requests_do_not_starve_light_ones);
    tcase_add_test(tc, client_hangup_drops_queued_work);
    tcase_add_test(tc, metrics_promtool_and_histograms);
    tc = tcase(s, "process");  /* finc serve itself: signals, exit statuses, memory over time */
    tcase_add_test(tc, sigterm_drains_accepted_requests);
    tcase_add_test(tc, sighup_drains);
    tcase_add_test(tc, memory_returns_after_a_burst);
    tcase_add_test(tc, serve_exit_statuses);
    return s;
}

FINC_CHECK_MAIN(server_suite)
