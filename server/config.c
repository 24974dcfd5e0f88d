#include "server/config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/flow.h"
#include "engine/version.h"
#include "server/batcher.h"

typedef enum { OPT_INT, OPT_DOUBLE, OPT_STR, OPT_BYTES } opt_type;

typedef struct {
    const char *flag, *env;
    opt_type type;
    size_t offset, size;       /* into finc_server_config; size for strings */
    double lo, hi;
    const char *help;
} opt_spec;

#define F(field) offsetof(finc_server_config, field), sizeof(((finc_server_config *)0)->field)

static const opt_spec specs[] = {
    {"host", "FINC_HOST", OPT_STR, F(host), 0, 0, "address to listen on"},
    {"port", "FINC_PORT", OPT_INT, F(port), 0, 65535, "TCP port (0: any free port)"},
    {"weights", "FINC_WEIGHTS", OPT_STR, F(weights), 0, 0, "model weights (.safetensors)"},
    {"backend", "FINC_BACKEND", OPT_STR, F(backend), 0, 0, "engine backend: cpu, cuda or auto"},
    {"precision", "FINC_PRECISION", OPT_STR, F(precision), 0, 0,
     "CUDA GEMM precision: fp32, or tf32 for the coupling nets' F x F products (faster, about 3 digits)"},
    {"threads", "FINC_THREADS", OPT_INT, F(threads), 0, 1024, "engine CPU threads (0: all cores)"},
    {"http-threads", "FINC_HTTP_THREADS", OPT_INT, F(http_threads), 1, 256,
     "HTTP worker threads (parsing, PNG decode and encode)"},
    {"max-batch", "FINC_MAX_BATCH", OPT_INT, F(max_batch), 1, 4096, "largest engine batch, in images"},
    {"max-delay-ms", "FINC_MAX_DELAY_MS", OPT_DOUBLE, F(max_delay_ms), 0, 10000,
     "longest a partial batch waits for more requests, ms"},
    {"queue-size", "FINC_QUEUE_SIZE", OPT_INT, F(queue_size), 1, 100000000,
     "passes waiting per kind (sample, score) before 503: an image counts its importance-weighted draws"},
    {"max-n", "FINC_MAX_N", OPT_INT, F(max_n), 1, 100000, "largest n of one /sample request"},
    {"max-images", "FINC_MAX_IMAGES", OPT_INT, F(max_images), 1, 100000,
     "most images in one /log-likelihood request"},
    {"max-samples", "FINC_MAX_SAMPLES", OPT_INT, F(max_samples), 1, 100000,
     "most importance-weighted draws per image"},
    {"max-body", "FINC_MAX_BODY", OPT_BYTES, F(max_body), 1024, 1073741824.0,
     "largest request body, bytes (k, M suffixes)"},
    {"max-body-memory", "FINC_MAX_BODY_MEMORY", OPT_BYTES, F(max_body_memory), 1024, 68719476736.0,
     "request bodies held in memory at once, all connections together, bytes; past it 503"},
    {"timeout-ms", "FINC_TIMEOUT_MS", OPT_DOUBLE, F(timeout_ms), 1, 86400000.0,
     "deadline of queued work, ms (X-Finc-Timeout-Ms may shorten it)"},
    {"idle-timeout", "FINC_IDLE_TIMEOUT", OPT_DOUBLE, F(idle_timeout), 1, 86400,
     "seconds an idle connection stays open"},
    {"read-timeout", "FINC_READ_TIMEOUT", OPT_DOUBLE, F(read_timeout), 0.1, 86400,
     "seconds to receive a whole request body"},
    {"head-timeout", "FINC_HEAD_TIMEOUT", OPT_DOUBLE, F(head_timeout), 0.1, 3600,
     "seconds a new connection has to send its whole request head (later heads: --idle-timeout)"},
    {"max-connections", "FINC_MAX_CONNECTIONS", OPT_INT, F(max_connections), 1, 1000000,
     "open connections at most (the open-file limit is raised to fit)"},
    {"max-connections-per-ip", "FINC_MAX_CONNECTIONS_PER_IP", OPT_INT, F(max_connections_per_ip), 0, 1000000,
     "open connections from one client address (0: no limit); behind a proxy that is the proxy's"},
    {"drain-timeout", "FINC_DRAIN_TIMEOUT", OPT_DOUBLE, F(drain_timeout), 0, 86400,
     "seconds SIGTERM waits for queued and running work"},
    {"unhealthy-after", "FINC_UNHEALTHY_AFTER", OPT_INT, F(unhealthy_after), 0, 1000000,
     "failed engine batches in a row before /healthz and /readyz answer 503 (0: never)"},
    {"retry-after", "FINC_RETRY_AFTER", OPT_INT, F(retry_after), 0, 3600, "Retry-After seconds on 503"},
    {"anomaly-alpha", "FINC_ANOMALY_ALPHA", OPT_DOUBLE, F(anomaly_alpha), 1e-9, 0.999999,
     "default alpha of the anomaly verdicts: an image is anomalous when its p-value <= alpha"},
    {"log", "FINC_LOG", OPT_STR, F(log), 0, 0, "request log on stderr: json or off"},
    {"ui", "FINC_UI", OPT_STR, F(ui), 0, 0, "the page at / (model card, samples, scores, live figures): on or off"},
};
#define NSPECS (sizeof specs / sizeof specs[0])

void finc_server_config_defaults(finc_server_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "0.0.0.0");
    c->port = 8080;
    snprintf(c->weights, sizeof c->weights, "weights/fashion-mnist.safetensors");
    snprintf(c->backend, sizeof c->backend, "cpu");
    snprintf(c->precision, sizeof c->precision, "fp32");
    c->threads = 0;
    c->http_threads = 4;
    c->max_batch = FINC_DEFAULT_BATCH;
    c->max_delay_ms = 2;
    c->queue_size = 24576;
    c->max_n = 256;
    c->max_images = 256;
    c->max_samples = 64;
    c->max_body = 4L << 20;
    c->max_body_memory = 256L << 20;
    c->timeout_ms = 30000;
    c->idle_timeout = 30;
    c->read_timeout = 30;
    c->head_timeout = 10;
    c->max_connections = 4096;
    c->max_connections_per_ip = 1024;
    c->drain_timeout = 30;
    c->unhealthy_after = 3;
    c->retry_after = 1;
    c->anomaly_alpha = 0.01;
    snprintf(c->log, sizeof c->log, "json");
    snprintf(c->ui, sizeof c->ui, "on");
}

static int set_value(finc_server_config *c, const opt_spec *s, const char *v, const char *who,
                     char *err, size_t errlen)
{
    char *p = (char *)c + s->offset, *end;
    errno = 0;
    switch (s->type) {
    case OPT_STR:
        if (strlen(v) >= s->size) {
            snprintf(err, errlen, "%s: value too long (at most %zu characters)", who, s->size - 1);
            return -1;
        }
        memcpy(p, v, strlen(v) + 1);
        return 0;
    case OPT_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < s->lo || x > s->hi) {
            snprintf(err, errlen, "%s wants an integer in %.0f..%.0f, got '%s'", who, s->lo, s->hi, v);
            return -1;
        }
        *(int *)p = (int)x;
        return 0;
    }
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < s->lo || x > s->hi) {
            snprintf(err, errlen, "%s wants a number in %g..%g, got '%s'", who, s->lo, s->hi, v);
            return -1;
        }
        *(double *)p = x;
        return 0;
    }
    case OPT_BYTES: {
        double x = strtod(v, &end);
        if (!errno && end != v) {
            if (*end == 'k' || *end == 'K') x *= 1024, end++;
            else if (*end == 'm' || *end == 'M') x *= 1024 * 1024, end++;
            else if (*end == 'g' || *end == 'G') x *= 1024.0 * 1024 * 1024, end++;
        }
        if (errno || end == v || *end || !isfinite(x) || x < s->lo || x > s->hi) {
            snprintf(err, errlen, "%s wants a size in bytes %.0f..%.0f (k, M, G suffixes), got '%s'", who,
                     s->lo, s->hi, v);
            return -1;
        }
        *(long *)p = (long)x;
        return 0;
    }
    }
    return -1;
}

/* Keys from text: one per line, surrounding blanks trimmed, empty lines and
 * lines starting with # skipped. `what` names the source in messages.
 * Replaces c->api_key; at least one key, each printable ASCII without spaces
 * (what a bearer token can be). */
static int set_keys(finc_server_config *c, const char *text, const char *what, char *err, size_t errlen)
{
    char keys[sizeof c->api_key];
    size_t used = 0;
    int n = 0, line = 0;
    for (const char *p = text; *p; line++) {
        const char *eol = strchr(p, '\n');
        const char *end = eol ? eol : p + strlen(p), *b = p;
        p = eol ? eol + 1 : end;
        while (b < end && (*b == ' ' || *b == '\t' || *b == '\r')) b++;
        while (end > b && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) end--;
        if (b == end || *b == '#') continue;
        const size_t len = (size_t)(end - b);
        for (const char *q = b; q < end; q++)
            if (*q < 0x21 || *q > 0x7e) {
                snprintf(err, errlen, "%s line %d: a key is printable ASCII without spaces", what, line + 1);
                return -1;
            }
        if (len > FINC_API_KEY_LEN) {
            snprintf(err, errlen, "%s line %d: key longer than %d bytes", what, line + 1, FINC_API_KEY_LEN);
            return -1;
        }
        if (n == FINC_API_KEYS_MAX) {
            snprintf(err, errlen, "%s: more than %d keys", what, FINC_API_KEYS_MAX);
            return -1;
        }
        if (n++) keys[used++] = '\n';
        memcpy(keys + used, b, len);
        used += len;
    }
    if (n == 0) {
        snprintf(err, errlen, "%s holds no key", what);
        return -1;
    }
    keys[used] = '\0';
    memcpy(c->api_key, keys, used + 1);
    return 0;
}

/* A file of keys (FINC_API_KEY_FILE, --api-key-file): refused when missing,
 * unreadable, too long or empty, so a server never starts open by mistake. */
static int read_key_file(finc_server_config *c, const char *path, const char *who, char *err, size_t errlen)
{
    char what[600], text[sizeof c->api_key * 2];
    snprintf(what, sizeof what, "%s %s", who, path);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", what, strerror(errno));
        return -1;
    }
    size_t n = fread(text, 1, sizeof text - 1, f);
    const int more = fgetc(f) != EOF, bad = ferror(f);
    fclose(f);
    if (bad || more) {
        snprintf(err, errlen, "%s: %s", what, bad ? "read error" : "too long for a file of keys");
        return -1;
    }
    text[n] = '\0';
    if (strlen(text) != n) {
        snprintf(err, errlen, "%s: holds a NUL byte", what);
        return -1;
    }
    return set_keys(c, text, what, err, errlen);
}

int finc_server_config_env(finc_server_config *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < NSPECS; i++) {
        const char *v = getenv(specs[i].env);
        if (v && *v && set_value(c, &specs[i], v, specs[i].env, err, errlen) != 0) return -1;
    }
    const char *key = getenv("FINC_API_KEY"), *file = getenv("FINC_API_KEY_FILE");
    if (key && *key && file && *file) {
        snprintf(err, errlen, "FINC_API_KEY and FINC_API_KEY_FILE are both set: set one");
        return -1;
    }
    if (file && *file) return read_key_file(c, file, "FINC_API_KEY_FILE", err, errlen);
    if (key && *key) {
        struct stat st;
        /* the mistake of passing a secret's path as the key itself */
        if (key[0] == '/' && !strchr(key, '\n') && stat(key, &st) == 0) {
            snprintf(err, errlen, "FINC_API_KEY is the key itself, and this one names a file: "
                                  "set FINC_API_KEY_FILE=%.200s instead", key);
            return -1;
        }
        return set_keys(c, key, "FINC_API_KEY", err, errlen);
    }
    return 0;
}

int finc_server_config_args(finc_server_config *c, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (serve takes --flags only)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        if (nlen == strlen("api-key-file") && !strncmp(name, "api-key-file", nlen)) {
            if (!value && i + 1 < argc) value = argv[++i];
            if (!value) {
                snprintf(err, errlen, "--api-key-file needs a value");
                return -1;
            }
            if (read_key_file(c, value, "--api-key-file", err, errlen) != 0) return -1;
            continue;
        }
        const opt_spec *s = NULL;
        for (size_t k = 0; k < NSPECS; k++)
            if (strlen(specs[k].flag) == nlen && !strncmp(specs[k].flag, name, nlen)) s = &specs[k];
        if (!s) {
            snprintf(err, errlen, "unknown option '%.*s' (finc serve --help lists them)", (int)nlen + 2, a);
            return -1;
        }
        if (!value && i + 1 < argc) value = argv[++i];
        if (!value) {
            snprintf(err, errlen, "--%s needs a value", s->flag);
            return -1;
        }
        char who[64];
        snprintf(who, sizeof who, "--%s", s->flag);
        if (set_value(c, s, value, who, err, errlen) != 0) return -1;
    }
    return 0;
}

int finc_server_config_check(const finc_server_config *c, char *err, size_t errlen)
{
    if (!finc_backend_name_ok(c->backend)) {
        snprintf(err, errlen, "backend must be cpu, cuda or auto, got '%s'", c->backend);
        return -1;
    }
    finc_precision prec;
    if (finc_precision_parse(c->precision, &prec) != 0) {
        snprintf(err, errlen, "precision must be fp32 or tf32, got '%s'", c->precision);
        return -1;
    }
    if (strcmp(c->log, "json") && strcmp(c->log, "off")) {
        snprintf(err, errlen, "log must be json or off, got '%s'", c->log);
        return -1;
    }
    if (strcmp(c->ui, "on") && strcmp(c->ui, "off")) {
        snprintf(err, errlen, "ui must be on or off, got '%s'", c->ui);
        return -1;
    }
    /* The largest score request's passes; a heavy one (over a batch) may take 3/4 of the queue. */
    const long most = (long)c->max_images * c->max_samples;
    if (c->queue_size < c->max_n || c->queue_size < c->max_images ||
        (most > c->max_batch && most > finc_heavy_limit(c->queue_size))) {
        snprintf(err, errlen,
                 "queue-size %d must hold the largest request: max-n %d, and max-images %d times max-samples %d "
                 "(which may fill three quarters of it when over max-batch)",
                 c->queue_size, c->max_n, c->max_images, c->max_samples);
        return -1;
    }
    if (c->max_body_memory < c->max_body + 1) {
        snprintf(err, errlen, "max-body-memory %ld must hold at least one largest body (max-body %ld)",
                 c->max_body_memory, c->max_body);
        return -1;
    }
    if (!c->weights[0] || !c->host[0]) {
        snprintf(err, errlen, "weights and host must not be empty");
        return -1;
    }
    return 0;
}

static void print_value(const finc_server_config *c, const opt_spec *s, FILE *f)
{
    const char *p = (const char *)c + s->offset;
    switch (s->type) {
    case OPT_STR: fprintf(f, "%s", p); break;
    case OPT_INT: fprintf(f, "%d", *(const int *)p); break;
    case OPT_DOUBLE: fprintf(f, "%g", *(const double *)p); break;
    case OPT_BYTES: fprintf(f, "%ld", *(const long *)p); break;
    }
}

void finc_server_config_print(const finc_server_config *c, FILE *f)
{
    fprintf(f, "finc serve %s configuration:\n", FINC_VERSION);
    for (size_t i = 0; i < NSPECS; i++) {
        fprintf(f, "  %-16s ", specs[i].flag);
        print_value(c, &specs[i], f);
        fputc('\n', f);
    }
    int keys = c->api_key[0] != '\0';
    for (const char *p = c->api_key; *p; p++) keys += *p == '\n';
    if (keys) fprintf(f, "  %-16s %d key%s (inference endpoints need a bearer token)\n", "api-key", keys, keys > 1 ? "s" : "");
    else fprintf(f, "  %-16s off\n", "api-key");
    fflush(f);
}

void finc_server_usage(FILE *f)
{
    finc_server_config d;
    finc_server_config_defaults(&d);
    fprintf(f,
            "usage: finc serve [--flag VALUE | --flag=VALUE]...\n"
            "The HTTP service: POST /sample, POST /log-likelihood, GET /healthz, /readyz,\n"
            "/v1/models, /metrics (api/openapi.yaml), and a page to try the model at /.\n"
            "Flags override FINC_* variables.\n\n");
    for (size_t i = 0; i < NSPECS; i++) {
        char flag[40];
        snprintf(flag, sizeof flag, "--%s", specs[i].flag);
        fprintf(f, "  %-18s %-22s %s (default ", flag, specs[i].env, specs[i].help);
        print_value(&d, &specs[i], f);
        fprintf(f, ")\n");
    }
    fprintf(f, "  %-18s %-22s %s\n", "--api-key-file", "FINC_API_KEY_FILE",
            "file of bearer tokens for the inference endpoints, one per line (rotate by listing two)");
    fprintf(f, "  %-18s %-22s %s\n", "", "FINC_API_KEY", "the token itself (one per line for several)");
    fprintf(f, "\nSIGTERM, SIGINT or SIGHUP: readiness turns 503, queued and running work finishes\n"
               "(up to --drain-timeout), then exit 0; a second signal stops at once.\n");
}
