/* The front door. One thread accepts every connection and holds it until its
 * first request head has arrived whole: the head is peeked at, never
 * consumed, so libmicrohttpd later reads the same bytes. Then the gate
 *
 *   - answers /healthz and /readyz itself, whatever libmicrohttpd is doing;
 *   - answers a head that is malformed, too long, of another HTTP version or
 *     not complete within --head-timeout with a JSON error, counted in the
 *     metrics and written to the request log like any other answer;
 *   - answers 503 when libmicrohttpd already holds --max-connections;
 *   - else hands the socket to libmicrohttpd (MHD_add_connection).
 *
 * So a connection that trickles its head, or sends none, never takes a slot
 * of the pool that serves requests. Connections still waiting for their head
 * are cheap (a socket and a slot here) and when there is no room for a new
 * one the oldest of them is closed, so a flood of slow clients churns itself
 * while a client that sends its head at once always gets through.
 *
 * The gate also keeps the per-address connection counts (waiting and handed
 * over together), and a deadline for the heads of later requests on a kept
 * alive connection, which libmicrohttpd reads itself: each must be whole
 * within --idle-timeout of the previous answer, else the socket is shut down. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "server/httputil.h"

#define LINGER_S 2.0              /* an answered connection's unread bytes are drained this long */
#define LINGER_BYTES (1 << 20)    /* or until this many were */
#define IP_BUCKETS 4096
#define EV_LISTEN UINT32_MAX
#define EV_WAKE (UINT32_MAX - 1)

typedef enum { SLOT_FREE, SLOT_HEAD, SLOT_LINGER } slot_state;

typedef struct {
    int fd;
    slot_state st;
    double t_open, deadline;
    size_t drained;
    struct sockaddr_storage addr;
    socklen_t alen;
    uint8_t ip[16];
} slot;

typedef struct ip_count {
    struct ip_count *next;
    uint8_t ip[16];
    int n;
} ip_count;

/* A connection libmicrohttpd holds (its socket context). */
typedef struct conn_track {
    struct conn_track *prev, *next;
    int fd;
    uint8_t ip[16];
    int in_request;            /* a head has come and its answer has not ended */
    double deadline;           /* for the next head, when not in_request */
} conn_track;

struct finc_gate {
    finc_server *srv;
    int listen_fd, ep, wake;
    pthread_t thread;
    int started;
    slot *slots;
    int cap, waiting;          /* slots, and those in use */
    int *free_ids, nfree;      /* a stack of the free slots */
    char *buf;                 /* FINC_MAX_HEAD + 1 bytes: a peeked head */
    pthread_mutex_t mu;        /* ips, tracks, held */
    ip_count *ips[IP_BUCKETS];
    conn_track *tracks;
    int held;                  /* connections handed to libmicrohttpd and not closed */
};

/* ---- connections per client address --------------------------------------------- */

static void ip_key(const struct sockaddr *sa, uint8_t key[16])
{
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;  /* the IPv4-mapped IPv6 form */
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
}

static ip_count **ip_slot(finc_gate *g, const uint8_t ip[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++) h = (h ^ ip[i]) * 16777619u;
    ip_count **p = &g->ips[h % IP_BUCKETS];
    while (*p && memcmp((*p)->ip, ip, 16) != 0) p = &(*p)->next;
    return p;
}

/* One more connection from ip: 0, or -1 when that is over the limit (or memory is out). */
static int ip_add(finc_gate *g, const uint8_t ip[16])
{
    const int limit = g->srv->cfg.max_connections_per_ip;
    if (limit <= 0) return 0;
    pthread_mutex_lock(&g->mu);
    ip_count **p = ip_slot(g, ip);
    int rc = 0;
    if (!*p && (*p = calloc(1, sizeof **p)) != NULL) memcpy((*p)->ip, ip, 16);
    if (!*p || (*p)->n >= limit) rc = -1;
    else (*p)->n++;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void ip_del_locked(finc_gate *g, const uint8_t ip[16])
{
    if (g->srv->cfg.max_connections_per_ip <= 0) return;
    ip_count **p = ip_slot(g, ip);
    if (!*p) return;
    if (--(*p)->n <= 0) {
        ip_count *dead = *p;
        *p = dead->next;
        free(dead);
    }
}

static void ip_del(finc_gate *g, const uint8_t ip[16])
{
    pthread_mutex_lock(&g->mu);
    ip_del_locked(g, ip);
    pthread_mutex_unlock(&g->mu);
}

/* ---- reading a head ---------------------------------------------------------------- */

typedef struct {
    int status;                /* 0: well-formed and whole; else the answer's status */
    finc_error_reason reason;
    char error[200];
    char method[16];
    char path[160];            /* the target up to '?', cut to fit */
    char id[72];               /* X-Request-Id as sent, when plain */
} head;

static int bad(head *h, int status, const char *msg)
{
    h->status = status;
    h->reason = status == 408 ? FINC_ERR_DEADLINE : status == 503 ? FINC_ERR_OVERLOADED : FINC_ERR_BAD_REQUEST;
    snprintf(h->error, sizeof h->error, "%s", msg);
    return 1;
}

/* The end of the line that starts at p (its '\n'), or NULL when it has not come. */
static const char *line_end(const char *p, const char *end) { return memchr(p, '\n', (size_t)(end - p)); }

/* Checks the request line [p, nl); fills method and path. 1 when it is bad. */
static int request_line(head *h, const char *p, const char *nl)
{
    const char *e = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
    const char *m = p;
    while (p < e && finc_http_tchar((unsigned char)*p)) p++;
    if (p == m || p >= e || *p != ' ') return bad(h, 400, "malformed request line");
    snprintf(h->method, sizeof h->method, "%.*s", (int)(p - m), m);
    const char *t = ++p;
    while (p < e && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f) p++;
    if (p == t || p >= e || *p != ' ') {
        if (p - t > FINC_MAX_TARGET) return bad(h, 414, "request target over the limit");
        return bad(h, 400, "malformed request line");
    }
    if (p - t > FINC_MAX_TARGET) return bad(h, 414, "request target over the limit");
    const char *q = memchr(t, '?', (size_t)(p - t));
    const int plen = (int)((q ? q : p) - t);
    snprintf(h->path, sizeof h->path, "%.*s", plen, t);
    p++;
    if (e - p != 8 || strncmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' ||
        p[7] > '9')
        return bad(h, 400, "malformed request line");
    if (p[5] != '1' || p[7] > '1') {
        char msg[80];
        snprintf(msg, sizeof msg, "HTTP/%c.%c is not supported: use HTTP/1.1", p[5], p[7]);
        return bad(h, 505, msg);
    }
    return 0;
}

/* Looks at what has come of a head: 1 with h->status set when it is whole,
 * or when it is already known to be bad; 0 when more is needed. */
static int read_head(head *h, const char *buf, size_t n)
{
    memset(h, 0, sizeof *h);
    const char *p = buf, *end = buf + n;
    while (p < end && (*p == '\r' || *p == '\n')) p++;  /* empty lines before the request line */
    if (p < end && !finc_http_tchar((unsigned char)*p)) return bad(h, 400, "not an HTTP request");
    const char *nl = line_end(p, end);
    if (!nl) {
        if (n > FINC_MAX_TARGET + 32) return bad(h, 414, "request line over the limit");
        return 0;
    }
    if (request_line(h, p, nl)) return 1;
    const int http11 = nl[-1 - (nl[-1] == '\r')] == '1';
    int headers = 0, hosts = 0;
    for (p = nl + 1;; p = nl + 1) {
        nl = line_end(p, end);
        if (!nl) {
            if (n > FINC_MAX_HEAD) return bad(h, 431, "request head over the limit");
            return 0;
        }
        if (nl == p || (nl == p + 1 && *p == '\r')) break;  /* the empty line: the head is whole */
        if (++headers > FINC_MAX_HEADERS) return bad(h, 431, "too many header fields");
        if (*p == ' ' || *p == '\t') return bad(h, 400, "folded header lines are not accepted");
        const char *name = p;
        while (p < nl && finc_http_tchar((unsigned char)*p)) p++;
        if (p == name || *p != ':') {
            const char *colon = memchr(name, ':', (size_t)(nl - name));
            if (!colon || colon - name > 40) return bad(h, 400, "malformed header line");
            char msg[96] = "malformed header name '";
            size_t k = strlen(msg);
            for (const char *c = name; c < colon && k < 80; c++) msg[k++] = *c >= 0x20 && *c < 0x7f ? *c : '?';
            snprintf(msg + k, sizeof msg - k, "'");
            return bad(h, 400, msg);
        }
        const size_t nlen = (size_t)(p - name);
        const char *v = p + 1, *ve = nl > v && nl[-1] == '\r' ? nl - 1 : nl;
        for (const char *c = v; c < ve; c++)
            if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
                return bad(h, 400, "control character in a header value");
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        if (nlen == 4 && !strncasecmp(name, "host", 4)) hosts++;
        if (nlen == 14 && !strncasecmp(name, "content-length", 14)) {
            if (v == ve || ve - v > 19 || memchr(p + 1, '\t', (size_t)(nl - p - 1)))
                return bad(h, 400, "malformed Content-Length");
            for (const char *c = v; c < ve; c++)
                if (*c < '0' || *c > '9') return bad(h, 400, "malformed Content-Length");
        }
        if (nlen == 12 && !strncasecmp(name, "x-request-id", 12) && ve - v < (long)sizeof h->id)
            snprintf(h->id, sizeof h->id, "%.*s", (int)(ve - v), v);
    }
    if ((size_t)(nl + 1 - buf) > FINC_MAX_HEAD) return bad(h, 431, "request head over the limit");
    if (hosts > 1) return bad(h, 400, "several Host headers");
    if (http11 && !hosts) return bad(h, 400, "HTTP/1.1 requests need a Host header");
    return 1;
}

/* ---- answering ------------------------------------------------------------------ */

static void slot_close(finc_gate *g, int i)
{
    slot *sl = &g->slots[i];
    if (sl->st == SLOT_FREE) return;
    epoll_ctl(g->ep, EPOLL_CTL_DEL, sl->fd, NULL);
    close(sl->fd);
    ip_del(g, sl->ip);
    sl->st = SLOT_FREE;
    g->waiting--;
    g->free_ids[g->nfree++] = i;
}

/* Reads and drops what an answered client still sends, until it closes. */
static void linger(finc_gate *g, int i)
{
    slot *sl = &g->slots[i];
    for (;;) {
        const ssize_t k = recv(sl->fd, g->buf, FINC_MAX_HEAD + 1, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k > 0) sl->drained += (size_t)k;
        if (k == 0 || (k < 0 && errno != EAGAIN) || sl->drained > LINGER_BYTES) slot_close(g, i);
        if (k <= 0 || sl->st == SLOT_FREE) return;
    }
}

/* Writes a JSON answer (or an empty one for HEAD), records it like every
 * other request, and leaves the connection draining what the client still
 * sends, so the answer is read before the socket closes. */
static void answer(finc_gate *g, int i, const head *h, int status, finc_endpoint ep, cJSON *body)
{
    finc_server *s = g->srv;
    slot *sl = &g->slots[i];
    finc_request r = {.srv = s, .env = &s->env, .ep = ep, .status = status, .reason = h->status ? h->reason : FINC_ERR_NONE};
    finc_request_id(&s->env, h->id[0] ? h->id : NULL, r.id);
    finc_format_addr((const struct sockaddr *)&sl->addr, r.remote, sizeof r.remote);
    snprintf(r.path, sizeof r.path, "%s", h->path[0] ? h->path : "-");
    r.method = finc_parse_method(h->method);
    if (h->status) {
        snprintf(r.error, sizeof r.error, "%s", h->error);
        if (!body) body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "error", h->error);
    }
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    const size_t blen = text ? strlen(text) : 0;
    char hdr[512], date[64];
    const time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
    int k = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "X-Request-Id: %s\r\nCache-Control: no-store\r\nConnection: close\r\n",
                     status, MHD_get_reason_phrase_for((unsigned)status), date, blen, r.id);
    if (status == 503) k += snprintf(hdr + k, sizeof hdr - (size_t)k, "Retry-After: %d\r\n", s->cfg.retry_after);
    k += snprintf(hdr + k, sizeof hdr - (size_t)k, "\r\n");
    const int with_body = r.method != METHOD_HEAD;
    struct iovec iov[2] = {{hdr, (size_t)k}, {text, with_body ? blen : 0}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    const ssize_t w = sendmsg(sl->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    r.bytes_out = w > k ? (size_t)(w - k) : 0;
    free(text);
    finc_metrics_request(s->metrics, ep, status, finc_mono_now() - sl->t_open, r.reason);
    if (s->env.log_json) finc_request_log(&r, status, finc_mono_now() - sl->t_open);
    /* What the client sent is drained until it closes, then the socket is closed. */
    shutdown(sl->fd, SHUT_WR);
    sl->st = SLOT_LINGER;
    sl->deadline = finc_mono_now() + LINGER_S;
    sl->drained = 0;
    linger(g, i);
}

static void answer_error(finc_gate *g, int i, const head *h)
{
    answer(g, i, h, h->status, FINC_EP_OTHER, NULL);
}

static void answer_health(finc_gate *g, int i, const head *h, finc_endpoint ep)
{
    char err[400];
    const char *word;
    head copy = *h;
    const int status = finc_health(g->srv, ep, &word, err, sizeof err);
    cJSON *o = cJSON_CreateObject();
    if (status != 200) {
        copy.status = status;
        copy.reason = FINC_ERR_NOT_READY;
        snprintf(copy.error, sizeof copy.error, "%.190s", err);
    }
    cJSON_AddStringToObject(o, "status", word);
    answer(g, i, &copy, status, ep, o);
}

/* ---- the connections libmicrohttpd holds ------------------------------------------- */

void finc_gate_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode code)
{
    finc_gate *g = ((finc_server *)cls)->gate;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_track *t = calloc(1, sizeof *t);
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        uint8_t ip[16] = {0};
        if (ad && ad->client_addr) ip_key(ad->client_addr, ip);
        if (!t) {
            /* out of memory: counted as closed now, untracked (no deadline for later heads) */
            pthread_mutex_lock(&g->mu);
            ip_del_locked(g, ip);
            g->held--;
            pthread_mutex_unlock(&g->mu);
            return;
        }
        t->fd = fd ? fd->connect_fd : -1;
        memcpy(t->ip, ip, 16);
        t->deadline = finc_mono_now() + g->srv->cfg.head_timeout;
        pthread_mutex_lock(&g->mu);
        t->next = g->tracks;
        if (g->tracks) g->tracks->prev = t;
        g->tracks = t;
        pthread_mutex_unlock(&g->mu);
        *socket_context = t;
        return;
    }
    finc_http_connection_closed(g->srv);
    conn_track *t = *socket_context;
    if (!t) return;
    /* Before libmicrohttpd closes the socket, so the sweep never shuts down a reused descriptor. */
    pthread_mutex_lock(&g->mu);
    if (t->prev) t->prev->next = t->next;
    else g->tracks = t->next;
    if (t->next) t->next->prev = t->prev;
    ip_del_locked(g, t->ip);
    g->held--;
    pthread_mutex_unlock(&g->mu);
    free(t);
    *socket_context = NULL;
}

void finc_gate_request(finc_server *s, struct MHD_Connection *conn, int begun)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_track *t = ci ? ci->socket_context : NULL;
    if (!t) return;
    pthread_mutex_lock(&s->gate->mu);
    t->in_request = begun;
    if (!begun) t->deadline = finc_mono_now() + s->cfg.idle_timeout;
    pthread_mutex_unlock(&s->gate->mu);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void hand_over(finc_gate *g, int i, const head *h)
{
    slot *sl = &g->slots[i];
    pthread_mutex_lock(&g->mu);
    const int room = g->held < g->srv->cfg.max_connections;
    if (room) g->held++;
    pthread_mutex_unlock(&g->mu);
    if (!room) {
        head full = *h;
        bad(&full, 503, "the server holds as many connections as it may (--max-connections); retry later");
        answer_error(g, i, &full);
        return;
    }
    epoll_ctl(g->ep, EPOLL_CTL_DEL, sl->fd, NULL);
    sl->st = SLOT_FREE;
    g->waiting--;
    g->free_ids[g->nfree++] = i;
    /* From here the address's count is the tracked connection's, dropped when it closes. */
    if (MHD_add_connection(g->srv->mhd, sl->fd, (const struct sockaddr *)&sl->addr, sl->alen) != MHD_YES) {
        pthread_mutex_lock(&g->mu);  /* it closed the socket and never started the connection */
        g->held--;
        ip_del_locked(g, sl->ip);
        pthread_mutex_unlock(&g->mu);
    }
}

/* Sockets are edge-triggered: an event comes when bytes arrive (or the
 * peer shuts down), not while peeked bytes sit unread. */
static void on_readable(finc_gate *g, int i, uint32_t events)
{
    slot *sl = &g->slots[i];
    if (sl->st == SLOT_LINGER) {
        linger(g, i);
        return;
    }
    ssize_t k;
    while ((k = recv(sl->fd, g->buf, FINC_MAX_HEAD + 1, MSG_PEEK | MSG_DONTWAIT)) < 0 && errno == EINTR) continue;
    if (k == 0 || (k < 0 && errno != EAGAIN)) {
        slot_close(g, i);  /* gone before a whole head */
        return;
    }
    head h = {0};
    if (k < 0 || !read_head(&h, g->buf, (size_t)k)) {
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            /* the client stopped sending with its head unfinished: it never will finish it */
            bad(&h, 400, "the request head ended before its empty line");
            answer_error(g, i, &h);
        }
        return;
    }
    if (h.status) {
        answer_error(g, i, &h);
        return;
    }
    const int get = !strcmp(h.method, "GET") || !strcmp(h.method, "HEAD");
    const finc_endpoint ep = finc_endpoint_find(h.path);
    if (get && (ep == FINC_EP_HEALTHZ || ep == FINC_EP_READYZ)) answer_health(g, i, &h, ep);
    else hand_over(g, i, &h);
}

/* Room for one more connection: a free slot, or, when --max-connections plus
 * the headroom are open, the oldest waiting one closed. libmicrohttpd holds
 * at most --max-connections, so that many and more are always waiting. */
static int free_slot(finc_gate *g)
{
    pthread_mutex_lock(&g->mu);
    const int open = g->waiting + g->held;
    pthread_mutex_unlock(&g->mu);
    if (!g->nfree || open >= g->cap) {
        int oldest = -1;
        for (int i = 0; i < g->cap; i++)
            if (g->slots[i].st != SLOT_FREE && (oldest < 0 || g->slots[i].t_open < g->slots[oldest].t_open))
                oldest = i;
        if (g->slots[oldest].st == SLOT_HEAD) {
            head h = {0};
            bad(&h, 408, "the request head did not come in time while others waited");
            answer_error(g, oldest, &h);
        }
        slot_close(g, oldest);
    }
    return g->free_ids[--g->nfree];
}

static void on_accept(finc_gate *g)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        const int fd = accept4(g->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  /* EAGAIN, or out of descriptors: the backlog keeps them */
        uint8_t ip[16];
        ip_key((struct sockaddr *)&ss, ip);
        if (ip_add(g, ip) != 0) {
            close(fd);  /* over --max-connections-per-ip */
            continue;
        }
        const int i = free_slot(g);
        slot *s = &g->slots[i];
        *s = (slot){.fd = fd, .st = SLOT_HEAD, .t_open = finc_mono_now(), .addr = ss, .alen = sl};
        memcpy(s->ip, ip, 16);
        s->deadline = s->t_open + g->srv->cfg.head_timeout;
        g->waiting++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)i};
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) != 0) slot_close(g, i);
    }
}

static void sweep(finc_gate *g, double now)
{
    for (int i = 0; i < g->cap; i++) {
        slot *sl = &g->slots[i];
        if (sl->st == SLOT_FREE || now < sl->deadline) continue;
        if (sl->st == SLOT_HEAD) {
            head h = {0};
            char msg[96];
            snprintf(msg, sizeof msg, "the request head did not come within %g s", g->srv->cfg.head_timeout);
            bad(&h, 408, msg);
            answer_error(g, i, &h);
        } else {
            slot_close(g, i);
        }
    }
    pthread_mutex_lock(&g->mu);
    for (conn_track *t = g->tracks; t; t = t->next)
        if (!t->in_request && now >= t->deadline && t->fd >= 0) {
            shutdown(t->fd, SHUT_RDWR);  /* libmicrohttpd sees the end and closes it */
            t->deadline = INFINITY;
        }
    pthread_mutex_unlock(&g->mu);
}

static void *gate_main(void *arg)
{
    finc_gate *g = arg;
    struct epoll_event evs[64];
    double next_sweep = 0;
    for (;;) {
        const int n = epoll_wait(g->ep, evs, 64, 100);
        for (int e = 0; e < n; e++) {
            const uint32_t id = evs[e].data.u32;
            if (id == EV_WAKE) return NULL;
            if (id == EV_LISTEN) on_accept(g);
            else if (g->slots[id].st != SLOT_FREE) on_readable(g, (int)id, evs[e].events);
        }
        const double now = finc_mono_now();
        if (now >= next_sweep) {
            sweep(g, now);
            next_sweep = now + 0.05;
        }
    }
}

int finc_gate_start(finc_server *s, int listen_fd, char *err, size_t errlen)
{
    finc_gate *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->srv = s;
    g->listen_fd = listen_fd;
    g->cap = s->cfg.max_connections + FINC_GATE_HEADROOM;
    g->slots = calloc((size_t)g->cap, sizeof *g->slots);
    g->free_ids = malloc((size_t)g->cap * sizeof *g->free_ids);
    g->buf = malloc(FINC_MAX_HEAD + 1);
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&g->mu, NULL);
    s->gate = g;
    for (int i = g->cap - 1; g->free_ids && i >= 0; i--) g->free_ids[g->nfree++] = i;
    struct epoll_event lev = {.events = EPOLLIN, .data.u32 = EV_LISTEN};
    struct epoll_event wev = {.events = EPOLLIN, .data.u32 = EV_WAKE};
    if (!g->slots || !g->free_ids || !g->buf || g->ep < 0 || g->wake < 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, listen_fd, &lev) != 0 ||
        epoll_ctl(g->ep, EPOLL_CTL_ADD, g->wake, &wev) != 0 || pthread_create(&g->thread, NULL, gate_main, g) != 0) {
        snprintf(err, errlen, "cannot start the connection gate: %s", strerror(errno));
        return -1;
    }
    g->started = 1;
    return 0;
}

void finc_gate_close(finc_server *s)
{
    finc_gate *g = s->gate;
    if (!g || !g->started) return;
    const uint64_t one = 1;
    ssize_t w = write(g->wake, &one, sizeof one);
    (void)w;
    pthread_join(g->thread, NULL);
    g->started = 0;
    for (int i = 0; i < g->cap; i++) slot_close(g, i);
    close(g->listen_fd);
    g->listen_fd = -1;
}

void finc_gate_free(finc_server *s)
{
    finc_gate *g = s->gate;
    if (!g) return;
    finc_gate_close(s);
    if (g->listen_fd >= 0) close(g->listen_fd);
    if (g->ep >= 0) close(g->ep);
    if (g->wake >= 0) close(g->wake);
    for (int b = 0; b < IP_BUCKETS; b++)
        for (ip_count *c = g->ips[b], *next; c; c = next) {
            next = c->next;
            free(c);
        }
    pthread_mutex_destroy(&g->mu);
    free(g->slots);
    free(g->free_ids);
    free(g->buf);
    free(g);
    s->gate = NULL;
}
