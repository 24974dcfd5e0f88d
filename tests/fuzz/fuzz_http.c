/* The HTTP service itself: each input is the bytes a client sends on one
 * connection to a real finc server on loopback (the tiny test model, CPU
 * engine), which then half-closes it and reads the answer.
 * Covers the routes, headers, query strings, bodies and the batcher behind
 * them. The first answer on the connection, when one comes, must be the
 * server's own (a status line and an X-Request-Id): a head the gate lets
 * through that libmicrohttpd then refuses in its own HTML is a finding
 * (but for a malformed chunk, which libmicrohttpd alone sees).
 * After every input /healthz must answer 200 within 5 s; a crash or
 * sanitizer report anywhere in the server fails the target too. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"
#include "tests/testmodel.h"

static int port;

/* The server's threads allocate and free on their own schedule, so the
 * per-input leak check would blame the input for them. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char dir[256], path[300];
    char err[512];
    if (testmodel_tmpdir(dir, sizeof dir)) abort();
    snprintf(path, sizeof path, "%s/tiny.safetensors", dir);
    testmodel_spec s = testmodel_tiny();
    if (testmodel_write(path, &s, 5)) abort();
    finc_server_config c;
    finc_server_config_defaults(&c);
    snprintf(c.host, sizeof c.host, "127.0.0.1");
    c.port = 0;
    snprintf(c.weights, sizeof c.weights, "%s", path);
    snprintf(c.log, sizeof c.log, "off");
    c.threads = 1;
    c.http_threads = 2;
    c.max_delay_ms = 0;
    c.max_n = 8;
    c.max_images = 8;
    c.max_batch = 4;
    c.max_samples = 4;
    c.queue_size = 64;
    c.max_body = 1 << 16;
    /* Half-closed connections that libmicrohttpd holds on to go after 2 s. */
    c.idle_timeout = 2;
    c.read_timeout = 1;
    finc_server *srv = finc_server_start(&c, err, sizeof err);
    if (!srv || finc_server_wait_ready(srv, err, sizeof err)) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    port = finc_server_port(srv);
    return 0;
}

/* Whether buf holds a whole answer: its header and Content-Length bytes. */
static int answer_complete(const char *buf, size_t n)
{
    const char *end = memmem(buf, n, "\r\n\r\n", 4);
    if (!end) return 0;
    const size_t head = (size_t)(end - buf) + 4;
    for (const char *p = buf; p < end;) {
        const char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (eol - p > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
            return n >= head + strtoul(p + 15, NULL, 10);
        p = eol + 2;
    }
    return 0;
}

/* Sends data on a new connection, half-closes it, and reads the answer into
 * buf (the rest is read and dropped) until the server closes, 200 ms pass
 * after the answer began, or wait_s pass with nothing. Returns the bytes kept,
 * or -1 when nothing came within wait_s. */
static long exchange(const void *data, size_t size, char *buf, size_t cap, double wait_s)
{
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&a, sizeof a);
    if (rc != 0 && errno == EINTR) {
        /* Interrupted by libFuzzer's timer, the connect goes on: wait for it. */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int e = 0;
        socklen_t el = sizeof e;
        const double until = now() + 5.0;
        while ((rc = poll(&p, 1, 100)) <= 0 && now() < until) continue;
        rc = rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0 ? 0 : -1;
    }
    if (rc != 0) {
        perror("fuzz_http: connect");
        abort();
    }
    for (size_t off = 0; off < size;) {
        const ssize_t w = send(fd, (const char *)data + off, size - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;  /* the server may answer and close before reading it all */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    size_t kept = 0, got = 0;
    char drop[4096];
    const double deadline = now() + wait_s;
    for (;;) {
        /* libFuzzer's timer interrupts poll and recv (EINTR): retry until the
         * deadline. libmicrohttpd 0.9.75 may hold a half-closed connection
         * open until the idle timeout, after a keep-alive answer or while a
         * header is unfinished: quiet ends the wait, not only a close. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        const int left_ms = got ? (answer_complete(buf, kept) ? 10 : 200) : (int)((deadline - now()) * 1000);
        const int ready = left_ms > 0 ? poll(&p, 1, left_ms) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            close(fd);
            return got ? (long)kept : -1;
        }
        char *dst = kept < cap ? buf + kept : drop;
        const ssize_t r = recv(fd, dst, kept < cap ? cap - kept : sizeof drop, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
        if (dst != drop) kept += (size_t)r;
    }
    close(fd);
    return (long)kept;
}

/* Whether needle (lower case) is in the n bytes at p, in any case. */
static int strcasestr_n(const char *p, size_t n, const char *needle)
{
    const size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!strncasecmp(p + i, needle, k)) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char buf[4096];
    const long got = exchange(data, size, buf, sizeof buf, 0.15);
    const char *a = buf;
    size_t left = got > 0 ? (size_t)got : 0;
    const char *end;
    /* past interim answers (100 Continue) */
    while (left > 10 && !memcmp(a, "HTTP/1.1 1", 10) && (end = memmem(a, left, "\r\n\r\n", 4)) != NULL) {
        left -= (size_t)(end + 4 - a);
        a = end + 4;
    }
    /* A malformed chunk in a body is refused by libmicrohttpd itself. */
    const uint8_t *eoh = memmem(data, size, "\r\n\r\n", 4);
    const int chunked = eoh && strcasestr_n((const char *)data, (size_t)(eoh - data), "transfer-encoding");
    if (left > 0 && !chunked) {
        end = memmem(a, left, "\r\n\r\n", 4);
        const size_t head = end ? (size_t)(end - a) : left;
        if (left < 13 || memcmp(a, "HTTP/1.1 ", 9) != 0 || !memmem(a, head, "\r\nX-Request-Id: ", 16)) {
            fprintf(stderr, "fuzz_http: an answer not from the server: %.*s\n", (int)got, buf);
            abort();
        }
    }
    static const char health[] = "GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    const long n = exchange(health, sizeof health - 1, buf, sizeof buf, 5.0);
    if (n < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "fuzz_http: /healthz after the input: %.*s\n", n > 0 ? (int)n : 0, buf);
        abort();
    }
    return 0;
}
