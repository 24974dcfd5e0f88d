/* An open-loop load generator for finc serve. Requests leave on a fixed
 * schedule (constant rate, or Poisson arrivals) whatever the server does,
 * and each latency is measured from the request's intended send time, so a
 * stalled server cannot hide its stall by slowing the client down
 * (coordinated omission). Requests go over a pool of keep-alive HTTP/1.1
 * connections driven by one epoll loop, a connection per request in flight,
 * so the generator's own cost per request stays a few microseconds however
 * many requests the server holds: it shares the machine with the server in
 * tools/bench_server.sh, and CPU it spends is CPU the engine loses.
 *
 *   loadgen --url http://127.0.0.1:8080 --endpoint score --png img.png \
 *           --rates 50,100,200 --duration 10
 *
 * Per rate it prints one markdown table row (or a JSON line with --json):
 * offered and achieved request rate, images/s, p50/p90/p99/max latency,
 * errors by status, and the server's batch sizes over the run (from the
 * difference of two /metrics scrapes). */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

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

/* The server: its address and the Host header's value. */
typedef struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[300];
} target;

/* http://HOST[:PORT] → t. 0, or -1 when the URL is not of that form or does not resolve. */
static int resolve(const char *url, target *t)
{
    if (strncmp(url, "http://", 7)) return -1;
    char host[256], port[16] = "80";
    const char *h = url + 7, *end = h + strcspn(h, "/");
    snprintf(t->host, sizeof t->host, "%.*s", (int)(end - h), h);
    const char *colon = memchr(h, ':', (size_t)(end - h));
    const size_t hl = (size_t)((colon ? colon : end) - h);
    if (hl == 0 || hl >= sizeof host || (colon && (size_t)(end - colon - 1) >= sizeof port)) return -1;
    memcpy(host, h, hl), host[hl] = '\0';
    if (colon) snprintf(port, sizeof port, "%.*s", (int)(end - colon - 1), colon + 1);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res)) return -1;
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* GET path over a connection of its own (HTTP/1.0: the answer ends where the
 * connection does): the body of a 200 answer, malloc'd, or NULL. */
static char *http_get(const target *t, const char *path)
{
    const int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    const struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[512], *buf = NULL;
    const int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, t->host);
    size_t len = 0, cap = 0;
    if (connect(fd, (const struct sockaddr *)&t->addr, t->addrlen) == 0 && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n)
        for (;;) {
            if (len + 1 >= cap) {
                char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);
                if (!nb) break;
                buf = nb;
            }
            const ssize_t k = recv(fd, buf + len, cap - 1 - len, 0);
            if (k <= 0) break;
            len += (size_t)k;
        }
    close(fd);
    if (!buf) return NULL;
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (!body || strncmp(buf, "HTTP/1.", 7) || len < 12 || strtol(buf + 9, NULL, 10) != 200) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, len - (size_t)(body + 4 - buf) + 1);
    return buf;
}

/* Sum of the finc_batch_size histogram's buckets for kind, le-bounds in le. */
typedef struct {
    double le[64], cum[64];
    int nb;
    double sum, count;
} batch_hist;

static void scrape_batches(const target *t, const char *kind, batch_hist *h)
{
    memset(h, 0, sizeof *h);
    char *text = http_get(t, "/metrics");
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

/* One keep-alive HTTP/1.1 connection of the pool. A request is sent whole,
 * the answer read to the end of its Content-Length; nothing is pipelined. */
typedef struct {
    int fd;                   /* -1: closed (opened again when next used) */
    int busy;                 /* a request is in flight on it */
    int reused;               /* the request went out on a kept-alive connection */
    int want_out;             /* registered for EPOLLOUT (connecting or a partial write) */
    size_t woff;              /* bytes of the request written */
    char head[4096];          /* the answer's status line and headers */
    size_t hlen;
    long status, body_left;   /* body_left: -1 until the headers are in */
    int close_after;          /* the answer said Connection: close */
    double intended, sent_at;
} conn;

typedef struct {
    int ep;
    const target *t;
    const char *req;          /* the whole request, headers and body */
    size_t req_len;
    conn *c;
    int *free_list, nfree;    /* idle connections, most recently used on top */
    double t_warm;
    run_stats *st;
} pool;

static void conn_close(pool *p, conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->want_out = 0;
}

static void conn_watch(pool *p, conn *c, int want_out)
{
    if (want_out == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - p->c)};
    epoll_ctl(p->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static int conn_open(pool *p, conn *c)
{
    c->fd = socket(p->t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    const int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)&p->t->addr, p->t->addrlen) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - p->c)};
    epoll_ctl(p->ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;          /* writable once connected */
    return 0;
}

/* Write what the socket takes; 0 when the request is out or waits for room, -1 on error. */
static int conn_write(pool *p, conn *c)
{
    while (c->woff < p->req_len) {
        const ssize_t n = send(c->fd, p->req + c->woff, p->req_len - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            return -1;
        }
        c->woff += (size_t)n;
    }
    conn_watch(p, c, c->woff < p->req_len);
    return 0;
}

static void conn_finish(pool *p, conn *c, int ok)
{
    run_stats *st = p->st;
    if (c->intended >= p->t_warm) {
        st->done++;
        if (!ok) st->transport_errors++;
        else if (c->status >= 0 && c->status < 600) st->codes[c->status]++;
        if (ok && c->status == 200) {
            const double done = now_s();
            st->ok++;
            if (st->nlat < st->cap) st->lat[st->nlat++] = done - c->intended;
            if (done > st->last_done) st->last_done = done;
        }
    }
    if (!ok || c->close_after) conn_close(p, c);
    c->busy = 0;
    p->free_list[p->nfree++] = (int)(c - p->c);
}

static void conn_start(pool *p, conn *c)
{
    c->busy = 1;
    c->woff = c->hlen = 0;
    c->body_left = -1;
    c->status = 0;
    c->close_after = 0;
    c->sent_at = now_s();
    c->reused = c->fd >= 0;
    if (c->fd < 0 && conn_open(p, c) < 0) {
        conn_finish(p, c, 0);
        return;
    }
    if (!c->want_out && conn_write(p, c) < 0) conn_finish(p, c, 0);
}

/* A request that failed before any answer on a kept-alive connection (the
 * server closed it while idle) goes again on a new one, as browsers and
 * libcurl do; anything else is a transport error. */
static void conn_fail(pool *p, conn *c)
{
    const int retry = c->reused && c->hlen == 0;
    conn_close(p, c);
    if (!retry) {
        conn_finish(p, c, 0);
        return;
    }
    conn_start(p, c);
}

/* Headers complete: status, Content-Length, Connection. 0, or -1 when the
 * answer cannot be framed (no Content-Length: the server always sends one). */
static int parse_head(conn *c, size_t end)
{
    c->head[end] = '\0';
    if (strncmp(c->head, "HTTP/1.", 7) || strlen(c->head) < 12) return -1;
    c->status = strtol(c->head + 9, NULL, 10);
    c->body_left = -1;
    for (char *line = strstr(c->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (!strncasecmp(h, "Content-Length:", 15)) c->body_left = strtol(h + 15, NULL, 10);
        else if (!strncasecmp(h, "Connection:", 11) && strcasestr(h, "close")) c->close_after = 1;
    }
    return c->body_left < 0 ? -1 : 0;
}

static void conn_read(pool *p, conn *c)
{
    char buf[65536];
    for (;;) {
        const ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) {         /* closed or reset */
            if (c->busy) conn_fail(p, c);
            else conn_close(p, c);
            return;
        }
        if (!c->busy) {       /* bytes nobody asked for */
            conn_close(p, c);
            return;
        }
        size_t used = 0;
        if (c->body_left < 0) {
            const size_t take = (size_t)n < sizeof c->head - 1 - c->hlen ? (size_t)n : sizeof c->head - 1 - c->hlen;
            memcpy(c->head + c->hlen, buf, take);
            c->hlen += take;
            c->head[c->hlen] = '\0';
            char *end = strstr(c->head, "\r\n\r\n");
            if (!end) {
                if (c->hlen < sizeof c->head - 1) continue;
                conn_fail(p, c);      /* headers past 4 KiB: not our server */
                return;
            }
            const size_t hend = (size_t)(end - c->head) + 4;
            used = take - (c->hlen - hend);
            if (parse_head(c, hend) < 0) {
                conn_finish(p, c, 0);
                return;
            }
        }
        c->body_left -= (long)((size_t)n - used);
        if (c->body_left <= 0) {
            conn_finish(p, c, c->body_left == 0);
            return;
        }
    }
}

static void run_rate(const opts *o, const target *t, double rate,
                     const char *req, size_t req_len, run_stats *st)
{
    memset(st, 0, sizeof *st);
    st->cap = (long)(rate * (o->duration + o->warmup) * 1.2) + 16;
    st->lat = malloc(sizeof(double) * (size_t)st->cap);
    pool p = {.t = t, .req = req, .req_len = req_len, .st = st,
              .ep = epoll_create1(EPOLL_CLOEXEC), .c = calloc((size_t)o->max_outstanding, sizeof(conn)),
              .free_list = malloc(sizeof(int) * (size_t)o->max_outstanding), .nfree = o->max_outstanding};
    if (p.ep < 0 || !p.c || !p.free_list || !st->lat) {
        fprintf(stderr, "loadgen: out of memory or file descriptors\n");
        exit(1);
    }
    for (int i = 0; i < o->max_outstanding; i++) {
        p.c[i].fd = -1;
        p.free_list[i] = o->max_outstanding - 1 - i;
    }

    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(rate * 1000);
    const double t0 = now_s() + 0.05, t_end = t0 + o->warmup + o->duration;
    p.t_warm = t0 + o->warmup;
    st->first_intended = p.t_warm;
    double next = t0, next_sweep = t0;
    struct epoll_event evs[256];
    for (;;) {
        double now = now_s();
        /* every request whose time has come leaves now; late ones keep their intended time */
        while (next <= now && next < t_end) {
            if (p.nfree == 0) {
                if (next >= p.t_warm) st->dropped++;
            } else {
                conn *c = &p.c[p.free_list[--p.nfree]];
                c->intended = next;
                if (next >= p.t_warm) st->sent++;
                conn_start(&p, c);
            }
            next += next_gap(o, rate, &rng);
        }
        if (now >= next_sweep) {      /* requests past the client timeout */
            for (int i = 0; i < o->max_outstanding; i++)
                if (p.c[i].busy && now - p.c[i].sent_at > o->timeout) conn_finish(&p, &p.c[i], 0);
            next_sweep = now + 0.1;
        }
        if (now >= t_end && p.nfree == o->max_outstanding) break;
        if (now >= t_end + o->timeout + 1) break;
        double wait = next < t_end ? next - now : 0.05;
        wait = wait < 0 ? 0 : wait > 0.05 ? 0.05 : wait;
        const struct timespec ts = {0, (long)(wait * 1e9)};
        const int n = epoll_pwait2(p.ep, evs, 256, &ts, NULL);
        for (int k = 0; k < n; k++) {
            conn *c = &p.c[evs[k].data.u32];
            const uint32_t e = evs[k].events;
            if (c->fd < 0) continue;
            if (c->want_out && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || conn_write(&p, c) < 0) {
                    conn_fail(&p, c);
                    continue;
                }
            }
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(&p, c);
        }
    }
    for (int i = 0; i < o->max_outstanding; i++)
        if (p.c[i].fd >= 0) close(p.c[i].fd);
    close(p.ep);
    free(p.c);
    free(p.free_list);
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
    target srv;
    if (resolve(o.url, &srv) < 0) {
        fprintf(stderr, "loadgen: cannot resolve %s (expected http://HOST[:PORT])\n", o.url);
        return 1;
    }
    char auth[600] = "";
    if (o.token) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", o.token);
    char *req = malloc(body_len + 2048);
    const size_t head_len = (size_t)snprintf(req, 2048,
                                             "POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nAccept: %s\r\n"
                                             "Content-Length: %zu\r\n%s\r\n",
                                             sample ? "sample" : "log-likelihood", srv.host, ctype, o.accept, body_len, auth);
    memcpy(req + head_len, body, body_len);
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
        scrape_batches(&srv, kind, &before);
        run_stats st;
        run_rate(&o, &srv, o.rates[r], req, head_len + body_len, &st);
        scrape_batches(&srv, kind, &after);
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
            char v[6][32];    /* latencies and batch figures; null where there were none */
            const double vals[6] = {pct(st.lat, st.nlat, 0.5) * 1e3, pct(st.lat, st.nlat, 0.9) * 1e3,
                                    pct(st.lat, st.nlat, 0.99) * 1e3, st.nlat ? st.lat[st.nlat - 1] * 1e3 : NAN,
                                    mean_batch, multi};
            for (int k = 0; k < 6; k++)
                snprintf(v[k], sizeof v[k], isfinite(vals[k]) ? (k == 5 ? "%.3f" : "%.2f") : "null", vals[k]);
            printf("{\"endpoint\": \"%s\", \"offered_rps\": %.1f, \"achieved_rps\": %.2f, \"images_per_s\": %.2f, "
                   "\"p50_ms\": %s, \"p90_ms\": %s, \"p99_ms\": %s, \"max_ms\": %s, \"sent\": %ld, "
                   "\"ok\": %ld, \"non200\": %ld, \"dropped\": %ld, \"status_503\": %ld, \"status_504\": %ld, "
                   "\"transport_errors\": %ld, \"mean_batch\": %s, \"multi_batch_fraction\": %s, \"batches\": %.0f}\n",
                   kind, o.rates[r], achieved, achieved * per_req, v[0], v[1], v[2], v[3], st.sent, st.ok, non200,
                   st.dropped, st.codes[503], st.codes[504], st.transport_errors, v[4], v[5], dcount);
        } else {
            printf("| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %ld | %.2f | %.0f%% |\n", kind, o.rates[r],
                   achieved, achieved * per_req, pct(st.lat, st.nlat, 0.5) * 1e3, pct(st.lat, st.nlat, 0.9) * 1e3,
                   pct(st.lat, st.nlat, 0.99) * 1e3, st.nlat ? st.lat[st.nlat - 1] * 1e3 : NAN, non200, mean_batch,
                   multi * 100);
        }
        fflush(stdout);
        free(st.lat);
    }
    free(req);
    free(body);
    return 0;
}
