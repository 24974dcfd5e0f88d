/* An open-loop load generator for finc serve. Requests leave on a fixed
 * schedule (constant rate, or Poisson arrivals) whatever the server does,
 * and each latency is measured from the request's intended send time, so a
 * stalled server cannot hide its stall by slowing the client down
 * (coordinated omission). One libcurl multi handle drives every request.
 *
 *   loadgen --url http://127.0.0.1:8080 --endpoint score --png img.png \
 *           --rates 50,100,200 --duration 10
 *
 * Per rate it prints one markdown table row (or a JSON line with --json):
 * offered and achieved request rate, images/s, p50/p90/p99/max latency,
 * errors by status, and the server's batch sizes over the run (from the
 * difference of two /metrics scrapes). */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *url, *endpoint, *png_path, *accept, *token;
    double rates[32];
    int nrates;
    double duration, warmup, timeout;
    int n;                    /* /sample images per request */
    int images;               /* /log-likelihood images per request (JSON body) */
    int poisson, json, max_outstanding;
} opts;

typedef struct {
    CURL *h;
    double intended;
    long index;
    int busy;
} slot;

typedef struct {
    double *lat;              /* latencies of 200 answers, seconds */
    long nlat, cap;
    long sent, done, ok, dropped;   /* dropped: never sent, outstanding cap reached */
    long codes[600];
    long transport_errors;
    double first_intended, last_done;
} run_stats;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t sink(char *p, size_t sz, size_t n, void *u)
{
    (void)p, (void)u;
    return sz * n;
}

typedef struct {
    char *buf;
    size_t len;
} membuf;

static size_t to_mem(char *p, size_t sz, size_t n, void *u)
{
    membuf *m = u;
    char *nb = realloc(m->buf, m->len + sz * n + 1);
    if (!nb) return 0;
    m->buf = nb;
    memcpy(m->buf + m->len, p, sz * n);
    m->len += sz * n;
    m->buf[m->len] = '\0';
    return sz * n;
}

static char *http_get(const char *url)
{
    membuf m = {0};
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, to_mem);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &m);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK) {
        free(m.buf);
        return NULL;
    }
    return m.buf;
}

/* Sum of the finc_batch_size histogram's buckets for kind, le-bounds in le. */
typedef struct {
    double le[64], cum[64];
    int nb;
    double sum, count;
} batch_hist;

static void scrape_batches(const char *base, const char *kind, batch_hist *h)
{
    memset(h, 0, sizeof *h);
    char url[1024];
    snprintf(url, sizeof url, "%s/metrics", base);
    char *text = http_get(url);
    if (!text) return;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "finc_batch_size_bucket{kind=\"%s\",le=\"", kind);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, prefix, strlen(prefix)) && h->nb < 64) {
            const char *le = line + strlen(prefix);
            h->le[h->nb] = !strncmp(le, "+Inf", 4) ? INFINITY : strtod(le, NULL);
            const char *v = strstr(le, "} ");
            h->cum[h->nb++] = v ? strtod(v + 2, NULL) : 0;
        }
        char name[128];
        snprintf(name, sizeof name, "finc_batch_size_sum{kind=\"%s\"} ", kind);
        if (!strncmp(line, name, strlen(name))) h->sum = strtod(line + strlen(name), NULL);
        snprintf(name, sizeof name, "finc_batch_size_count{kind=\"%s\"} ", kind);
        if (!strncmp(line, name, strlen(name))) h->count = strtod(line + strlen(name), NULL);
    }
    free(text);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, long n, double p)
{
    if (n == 0) return NAN;
    long i = (long)ceil(p * n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n > 0 ? malloc((size_t)n) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = buf ? (size_t)n : 0;
    return buf;
}

static const char b64a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *base64(const unsigned char *p, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = b64a[v >> 18];
        *o++ = b64a[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64a[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64a[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Exponential inter-arrival with mean 1/rate, from a xorshift generator. */
static double next_gap(const opts *o, double rate, uint64_t *s)
{
    if (!o->poisson) return 1.0 / rate;
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    const double u = ((double)(*s >> 11) + 0.5) * 0x1p-53;
    return -log(u) / rate;
}

static void run_rate(const opts *o, double rate, const char *body, size_t body_len, const char *ctype,
                     run_stats *st)
{
    char url[1024];
    snprintf(url, sizeof url, "%s/%s", o->url, !strcmp(o->endpoint, "sample") ? "sample" : "log-likelihood");
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)o->max_outstanding);
    struct curl_slist *hs = NULL;
    char line[600];
    snprintf(line, sizeof line, "Content-Type: %s", ctype);
    hs = curl_slist_append(hs, line);
    snprintf(line, sizeof line, "Accept: %s", o->accept);
    hs = curl_slist_append(hs, line);
    hs = curl_slist_append(hs, "Expect:");
    if (o->token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", o->token);
        hs = curl_slist_append(hs, line);
    }
    slot *slots = calloc((size_t)o->max_outstanding, sizeof *slots);
    int *free_list = malloc(sizeof(int) * (size_t)o->max_outstanding), nfree = o->max_outstanding;
    for (int i = 0; i < o->max_outstanding; i++) free_list[i] = o->max_outstanding - 1 - i;
    memset(st, 0, sizeof *st);
    st->cap = (long)(rate * (o->duration + o->warmup) * 1.2) + 16;
    st->lat = malloc(sizeof(double) * (size_t)st->cap);

    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(rate * 1000);
    const double t0 = now_s() + 0.05, t_warm = t0 + o->warmup, t_end = t_warm + o->duration;
    double next = t0;
    long index = 0;
    int running = 0;
    st->first_intended = t_warm;
    for (;;) {
        double now = now_s();
        /* every request whose time has come leaves now; late ones keep their intended time */
        while (next <= now && next < t_end) {
            if (nfree == 0) {
                st->dropped++;
            } else {
                int k = free_list[--nfree];
                slot *sl = &slots[k];
                if (!sl->h) {
                    sl->h = curl_easy_init();
                    curl_easy_setopt(sl->h, CURLOPT_URL, url);
                    curl_easy_setopt(sl->h, CURLOPT_WRITEFUNCTION, sink);
                    curl_easy_setopt(sl->h, CURLOPT_HTTPHEADER, hs);
                    curl_easy_setopt(sl->h, CURLOPT_POSTFIELDS, body);
                    curl_easy_setopt(sl->h, CURLOPT_POSTFIELDSIZE, (long)body_len);
                    curl_easy_setopt(sl->h, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000));
                    curl_easy_setopt(sl->h, CURLOPT_NOSIGNAL, 1L);
                    curl_easy_setopt(sl->h, CURLOPT_PRIVATE, sl);
                }
                sl->intended = next;
                sl->index = index;
                sl->busy = 1;
                curl_multi_add_handle(m, sl->h);
                if (next >= t_warm) st->sent++;
            }
            index++;
            next += next_gap(o, rate, &rng);
        }
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            slot *sl;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
            const double done = now_s();
            if (sl->intended >= t_warm) {
                st->done++;
                long code = 0;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
                if (msg->data.result != CURLE_OK) st->transport_errors++;
                else if (code >= 0 && code < 600) st->codes[code]++;
                if (msg->data.result == CURLE_OK && code == 200) {
                    st->ok++;
                    if (st->nlat < st->cap) st->lat[st->nlat++] = done - sl->intended;
                    if (done > st->last_done) st->last_done = done;
                }
            }
            curl_multi_remove_handle(m, msg->easy_handle);
            sl->busy = 0;
            free_list[nfree++] = (int)(sl - slots);
        }
        now = now_s();
        if (now >= t_end && running == 0 && nfree == o->max_outstanding) break;
        if (now >= t_end + o->timeout + 1) break;
        const double wait = next < t_end ? next - now : 0.05;
        int ms = wait <= 0 ? 0 : (int)ceil(wait * 1000);
        if (ms > 50) ms = 50;
        curl_multi_poll(m, NULL, 0, ms, NULL);
    }
    for (int i = 0; i < o->max_outstanding; i++)
        if (slots[i].h) {
            if (slots[i].busy) curl_multi_remove_handle(m, slots[i].h);
            curl_easy_cleanup(slots[i].h);
        }
    free(slots);
    free(free_list);
    curl_slist_free_all(hs);
    curl_multi_cleanup(m);
    qsort(st->lat, (size_t)st->nlat, sizeof *st->lat, cmp_double);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --url URL --endpoint score|sample --rates R1,R2,... [options]\n"
            "  --duration S      seconds measured per rate (10)\n"
            "  --warmup S        seconds sent first and not measured (2)\n"
            "  --png FILE        image to score (score; required)\n"
            "  --images K        images per score request, sent as JSON (1: one image/png body)\n"
            "  --n N             images per sample request (1)\n"
            "  --accept TYPE     Accept for /sample (application/json)\n"
            "  --poisson         exponential inter-arrival times instead of a constant rate\n"
            "  --timeout S       per-request timeout (30)\n"
            "  --max-outstanding K   requests in flight at most (2048); more are counted as dropped\n"
            "  --token T         bearer token\n"
            "  --json            JSON lines instead of a markdown table\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o = {.url = "http://127.0.0.1:8080", .endpoint = "score", .accept = "application/json",
              .duration = 10, .warmup = 2, .timeout = 30, .n = 1, .images = 1, .max_outstanding = 2048};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--poisson")) o.poisson = 1;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!v) usage();
        else if (!strcmp(a, "--url")) o.url = v, i++;
        else if (!strcmp(a, "--endpoint")) o.endpoint = v, i++;
        else if (!strcmp(a, "--png")) o.png_path = v, i++;
        else if (!strcmp(a, "--accept")) o.accept = v, i++;
        else if (!strcmp(a, "--token")) o.token = v, i++;
        else if (!strcmp(a, "--duration")) o.duration = atof(v), i++;
        else if (!strcmp(a, "--warmup")) o.warmup = atof(v), i++;
        else if (!strcmp(a, "--timeout")) o.timeout = atof(v), i++;
        else if (!strcmp(a, "--n")) o.n = atoi(v), i++;
        else if (!strcmp(a, "--images")) o.images = atoi(v), i++;
        else if (!strcmp(a, "--max-outstanding")) o.max_outstanding = atoi(v), i++;
        else if (!strcmp(a, "--rates")) {
            char *copy = strdup(v);
            for (char *t = strtok(copy, ","); t && o.nrates < 32; t = strtok(NULL, ",")) o.rates[o.nrates++] = atof(t);
            free(copy);
            i++;
        } else usage();
    }
    const int sample = !strcmp(o.endpoint, "sample");
    if (o.nrates == 0 || (!sample && strcmp(o.endpoint, "score")) || o.duration <= 0 || o.n < 1 || o.images < 1 ||
        o.max_outstanding < 1 || (!sample && !o.png_path))
        usage();
    for (int i = 0; i < o.nrates; i++)
        if (!(o.rates[i] > 0)) usage();

    curl_global_init(CURL_GLOBAL_DEFAULT);
    char *body = NULL;
    size_t body_len = 0;
    const char *ctype = "application/json";
    if (sample) {
        body = malloc(64);
        body_len = (size_t)snprintf(body, 64, "{\"n\": %d}", o.n);
    } else {
        size_t png_len;
        char *png = read_file(o.png_path, &png_len);
        if (!png) {
            fprintf(stderr, "loadgen: cannot read %s: %s\n", o.png_path, strerror(errno));
            return 1;
        }
        if (o.images == 1) {
            body = png, body_len = png_len, ctype = "image/png";
        } else {
            char *b = base64((unsigned char *)png, png_len);
            const size_t bl = strlen(b);
            body = malloc((bl + 4) * (size_t)o.images + 32);
            size_t n = (size_t)sprintf(body, "{\"images\": [");
            for (int k = 0; k < o.images; k++) n += (size_t)sprintf(body + n, "%s\"%s\"", k ? "," : "", b);
            n += (size_t)sprintf(body + n, "]}");
            body_len = n;
            free(b);
            free(png);
        }
    }
    const int per_req = sample ? o.n : o.images;
    const char *kind = sample ? "sample" : "score";
    if (!o.json) {
        printf("| endpoint | offered req/s | achieved req/s | images/s | p50 ms | p90 ms | p99 ms | max ms | "
               "non-200 | mean batch | batches > 1 |\n");
        printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        fflush(stdout);
    }
    for (int r = 0; r < o.nrates; r++) {
        batch_hist before, after;
        scrape_batches(o.url, kind, &before);
        run_stats st;
        run_rate(&o, o.rates[r], body, body_len, ctype, &st);
        scrape_batches(o.url, kind, &after);
        const double span = o.duration;
        const double achieved = st.ok / span;
        const double dcount = after.count - before.count, dsum = after.sum - before.sum;
        double ones = 0;
        for (int k = 0; k < after.nb && k < before.nb; k++)
            if (after.le[k] == 1) ones = after.cum[k] - before.cum[k];
        const double mean_batch = dcount > 0 ? dsum / dcount : NAN;
        const double multi = dcount > 0 ? (dcount - ones) / dcount : NAN;
        long non200 = st.transport_errors + st.dropped;
        for (int c = 0; c < 600; c++)
            if (c != 200) non200 += st.codes[c];
        if (o.json) {
            printf("{\"endpoint\": \"%s\", \"offered_rps\": %.1f, \"achieved_rps\": %.2f, \"images_per_s\": %.2f, "
                   "\"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, \"max_ms\": %.2f, \"sent\": %ld, "
                   "\"ok\": %ld, \"non200\": %ld, \"dropped\": %ld, \"status_503\": %ld, \"status_504\": %ld, "
                   "\"mean_batch\": %.2f, \"multi_batch_fraction\": %.3f, \"batches\": %.0f}\n",
                   kind, o.rates[r], achieved, achieved * per_req, pct(st.lat, st.nlat, 0.5) * 1e3,
                   pct(st.lat, st.nlat, 0.9) * 1e3, pct(st.lat, st.nlat, 0.99) * 1e3,
                   st.nlat ? st.lat[st.nlat - 1] * 1e3 : NAN, st.sent, st.ok, non200, st.dropped, st.codes[503],
                   st.codes[504], mean_batch, multi, dcount);
        } else {
            printf("| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %ld | %.2f | %.0f%% |\n", kind, o.rates[r],
                   achieved, achieved * per_req, pct(st.lat, st.nlat, 0.5) * 1e3, pct(st.lat, st.nlat, 0.9) * 1e3,
                   pct(st.lat, st.nlat, 0.99) * 1e3, st.nlat ? st.lat[st.nlat - 1] * 1e3 : NAN, non200, mean_batch,
                   multi * 100);
        }
        fflush(stdout);
        free(st.lat);
    }
    free(body);
    curl_global_cleanup();
    return 0;
}
