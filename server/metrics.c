#include "server/metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MAX_BUCKETS 40
#define MAX_SERIES 96  /* (endpoint, code) pairs: ~7 endpoints x a dozen codes */

typedef struct {
    int nb;                       /* finite bounds */
    const double *le;             /* (nb,) ascending */
    uint64_t counts[MAX_BUCKETS + 1];  /* per bucket, not cumulative; [nb] is above the last bound */
    uint64_t count;
    double sum;
} histogram;

typedef struct {
    int ep, code;
    histogram latency;
    uint64_t requests;
} http_series;

static const double latency_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                    0.5, 1, 2.5, 5, 10, 30, 60};
static const double wait_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double p_value_le[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75};
static const double engine_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25, 0.5, 1, 2.5, 5, 10, 30};

struct finc_metrics {
    pthread_mutex_t mu;
    int nseries;
    http_series series[MAX_SERIES];
    uint64_t errors[FINC_EP_COUNT][FINC_ERR_COUNT];
    long inflight;
    double batch_le[MAX_BUCKETS];
    histogram queue_wait[FINC_METRICS_KINDS];
    histogram batch_size[FINC_METRICS_KINDS];
    histogram engine[FINC_METRICS_KINDS];
    uint64_t images[FINC_METRICS_KINDS];
    uint64_t dropped[FINC_METRICS_KINDS][FINC_DROP_COUNT];
    long depth[FINC_METRICS_KINDS];
    histogram p_value;
    uint64_t anomalous;
    int graphs, dead;
    long capture_failures;
    char version[64], backend[64], model[128];
};

static const char *kind_names[FINC_METRICS_KINDS] = {"sample", "score"};
static const char *drop_names[FINC_DROP_COUNT] = {"expired", "cancelled", "failed", "shutdown"};
static void hist_init(histogram *h, const double *le, int nb)
{
    memset(h, 0, sizeof *h);
    h->le = le;
    h->nb = nb;
}

static void hist_observe(histogram *h, double v)
{
    int i = 0;
    while (i < h->nb && v > h->le[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

finc_metrics *finc_metrics_new(int max_batch)
{
    finc_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    /* Batch sizes: 1, 2, 3, 4, 6, 8, 12, 16, ... up to max_batch, which is a bound itself. */
    int nb = 0;
    for (long p = 1; p < max_batch && nb < MAX_BUCKETS - 2; p *= 2) {
        m->batch_le[nb++] = (double)p;
        if (p >= 2 && p + p / 2 < max_batch) m->batch_le[nb++] = (double)(p + p / 2);
    }
    m->batch_le[nb++] = max_batch > 0 ? max_batch : 1;
    for (int k = 0; k < FINC_METRICS_KINDS; k++) {
        hist_init(&m->queue_wait[k], wait_le, (int)(sizeof wait_le / sizeof wait_le[0]));
        hist_init(&m->batch_size[k], m->batch_le, nb);
        hist_init(&m->engine[k], engine_le, (int)(sizeof engine_le / sizeof engine_le[0]));
    }
    hist_init(&m->p_value, p_value_le, (int)(sizeof p_value_le / sizeof p_value_le[0]));
    snprintf(m->version, sizeof m->version, "unknown");
    snprintf(m->backend, sizeof m->backend, "none");
    snprintf(m->model, sizeof m->model, "none");
    return m;
}

void finc_metrics_free(finc_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void finc_metrics_set_info(finc_metrics *m, const char *version, const char *backend,
                           const char *model)
{
    pthread_mutex_lock(&m->mu);
    snprintf(m->version, sizeof m->version, "%s", version);
    snprintf(m->backend, sizeof m->backend, "%s", backend);
    snprintf(m->model, sizeof m->model, "%s", model);
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_request(finc_metrics *m, finc_endpoint ep, int code, double seconds,
                          finc_error_reason reason)
{
    if (ep >= FINC_EP_COUNT) ep = FINC_EP_OTHER;
    if (code < 100 || code > 599) code = 500;
    pthread_mutex_lock(&m->mu);
    http_series *s = NULL;
    for (int i = 0; i < m->nseries; i++)
        if (m->series[i].ep == (int)ep && m->series[i].code == code) {
            s = &m->series[i];
            break;
        }
    if (!s && m->nseries < MAX_SERIES) {
        s = &m->series[m->nseries++];
        s->ep = ep;
        s->code = code;
        hist_init(&s->latency, latency_le, (int)(sizeof latency_le / sizeof latency_le[0]));
    }
    if (s) {
        hist_observe(&s->latency, seconds);
        s->requests++;
    }
    if (reason != FINC_ERR_NONE && reason < FINC_ERR_COUNT) m->errors[ep][reason]++;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_inflight_add(finc_metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->inflight += delta;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_queue_wait(finc_metrics *m, int kind, double seconds)
{
    if (kind < 0 || kind >= FINC_METRICS_KINDS) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->queue_wait[kind], seconds);
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_batch(finc_metrics *m, int kind, int size, double seconds)
{
    if (kind < 0 || kind >= FINC_METRICS_KINDS) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->batch_size[kind], size);
    hist_observe(&m->engine[kind], seconds);
    m->images[kind] += (uint64_t)size;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_dropped(finc_metrics *m, int kind, finc_drop_reason why, int images)
{
    if (kind < 0 || kind >= FINC_METRICS_KINDS || why >= FINC_DROP_COUNT) return;
    pthread_mutex_lock(&m->mu);
    m->dropped[kind][why] += (uint64_t)images;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_anomaly(finc_metrics *m, double p_value, int anomalous)
{
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->p_value, p_value);
    m->anomalous += anomalous != 0;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_backend(finc_metrics *m, int graphs, long capture_failures, int dead)
{
    pthread_mutex_lock(&m->mu);
    m->graphs = graphs;
    m->capture_failures = capture_failures;
    m->dead = dead;
    pthread_mutex_unlock(&m->mu);
}

void finc_metrics_queue_depth(finc_metrics *m, int kind, long passes)
{
    if (kind < 0 || kind >= FINC_METRICS_KINDS) return;
    pthread_mutex_lock(&m->mu);
    m->depth[kind] = passes;
    pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_printf(strbuf *sb, const char *fmt, ...)
{
    if (sb->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->oom = 1;
            return;
        }
        if ((size_t)n < sb->cap - sb->len) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = sb->cap * 2 + (size_t)n + 1;
        char *nb = realloc(sb->buf, cap);
        if (!nb) {
            sb->oom = 1;
            return;
        }
        sb->buf = nb;
        sb->cap = cap;
    }
}

/* A label value with \, " and newline escaped, into out. */
static const char *label_escape(const char *s, char *out, size_t outlen)
{
    size_t n = 0;
    for (; *s && n + 3 < outlen; s++) {
        if (*s == '\\' || *s == '"') {
            out[n++] = '\\';
            out[n++] = *s;
        } else if (*s == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    return out;
}

static void fmt_le(double v, char *out, size_t n)
{
    snprintf(out, n, "%.10g", v);
}

/* One histogram series; labels is "" or `a="b",c="d"`. */
static void hist_render(strbuf *sb, const char *name, const char *labels, const histogram *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    char le[32];
    for (int i = 0; i < h->nb; i++) {
        cum += h->counts[i];
        fmt_le(h->le[i], le, sizeof le);
        sb_printf(sb, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, le, (unsigned long long)cum);
    }
    sb_printf(sb, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->count);
    if (labels[0]) {
        sb_printf(sb, "%s_sum{%s} %.9g\n", name, labels, h->sum);
        sb_printf(sb, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        sb_printf(sb, "%s_sum %.9g\n", name, h->sum);
        sb_printf(sb, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

static void header(strbuf *sb, const char *name, const char *type, const char *help)
{
    sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int series_cmp(const void *a, const void *b)
{
    const http_series *x = *(http_series *const *)a, *y = *(http_series *const *)b;
    return x->ep != y->ep ? x->ep - y->ep : x->code - y->code;
}

/* process_* from /proc; silently absent where /proc is not there. */
static void render_process(strbuf *sb)
{
    const long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[2048];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0, vsize = 0;
        unsigned long long start = 0;
        long rss = 0;
        /* Fields from 3 (state) on; utime is 14, stime 15, starttime 22, vsize 23, rss 24. */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %lu %ld",
                        &utime, &stime, &start, &vsize, &rss) == 5 && tck > 0) {
            header(sb, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
            sb_printf(sb, "process_cpu_seconds_total %.2f\n", (double)(utime + stime) / tck);
            header(sb, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            sb_printf(sb, "process_virtual_memory_bytes %lu\n", vsize);
            header(sb, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            sb_printf(sb, "process_resident_memory_bytes %ld\n", rss * page);
            FILE *st = fopen("/proc/stat", "r");
            unsigned long long btime = 0;
            if (st) {
                char line[256];
                while (fgets(line, sizeof line, st))
                    if (sscanf(line, "btime %llu", &btime) == 1) break;
                fclose(st);
            }
            if (btime) {
                header(sb, "process_start_time_seconds", "gauge",
                       "Start time of the process since unix epoch in seconds.");
                sb_printf(sb, "process_start_time_seconds %.2f\n", (double)btime + (double)start / tck);
            }
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long nfd = -1; /* the directory's own descriptor is listed too */
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') nfd++;
        closedir(d);
        header(sb, "process_open_fds", "gauge", "Number of open file descriptors.");
        sb_printf(sb, "process_open_fds %ld\n", nfd);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        header(sb, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        sb_printf(sb, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

char *finc_metrics_render(finc_metrics *m, size_t *len)
{
    strbuf sb = {.cap = 16384};
    sb.buf = malloc(sb.cap);
    if (!sb.buf) return NULL;
    sb.buf[0] = '\0';
    char labels[256], e1[96], e2[96], e3[160];

    pthread_mutex_lock(&m->mu);
    header(&sb, "finc_build_info", "gauge", "Build and model of this server; the value is always 1.");
    sb_printf(&sb, "finc_build_info{version=\"%s\",backend=\"%s\",model=\"%s\"} 1\n",
              label_escape(m->version, e1, sizeof e1), label_escape(m->backend, e2, sizeof e2),
              label_escape(m->model, e3, sizeof e3));

    http_series *sorted[MAX_SERIES];
    for (int i = 0; i < m->nseries; i++) sorted[i] = &m->series[i];
    qsort(sorted, (size_t)m->nseries, sizeof sorted[0], series_cmp);

    header(&sb, "finc_http_request_duration_seconds", "histogram",
           "HTTP request latency from the first byte read to the last byte sent, by endpoint and status.");
    for (int i = 0; i < m->nseries; i++) {
        snprintf(labels, sizeof labels, "endpoint=\"%s\",code=\"%d\"", finc_endpoint_path(sorted[i]->ep), sorted[i]->code);
        hist_render(&sb, "finc_http_request_duration_seconds", labels, &sorted[i]->latency);
    }
    header(&sb, "finc_http_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
    for (int i = 0; i < m->nseries; i++)
        sb_printf(&sb, "finc_http_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n",
                  finc_endpoint_path(sorted[i]->ep), sorted[i]->code, (unsigned long long)sorted[i]->requests);
    header(&sb, "finc_http_errors_total", "counter", "HTTP requests that failed, by endpoint and reason.");
    for (int ep = 0; ep < FINC_EP_COUNT; ep++)
        for (int r = 1; r < FINC_ERR_COUNT; r++)
            if (m->errors[ep][r])
                sb_printf(&sb, "finc_http_errors_total{endpoint=\"%s\",reason=\"%s\"} %llu\n", finc_endpoint_path(ep),
                          finc_error_reason_name(r), (unsigned long long)m->errors[ep][r]);
    header(&sb, "finc_http_requests_in_flight", "gauge", "HTTP requests being read, queued, run or answered.");
    sb_printf(&sb, "finc_http_requests_in_flight %ld\n", m->inflight);

    header(&sb, "finc_queue_depth", "gauge", "Work waiting in the batcher's queue, by kind, in passes of an image through the flow (a score with K importance-weighted draws counts K).");
    for (int k = 0; k < FINC_METRICS_KINDS; k++)
        sb_printf(&sb, "finc_queue_depth{kind=\"%s\"} %ld\n", kind_names[k], m->depth[k]);
    header(&sb, "finc_queue_wait_seconds", "histogram",
           "Time a request waited in the queue before its first batch started, by kind.");
    for (int k = 0; k < FINC_METRICS_KINDS; k++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", kind_names[k]);
        hist_render(&sb, "finc_queue_wait_seconds", labels, &m->queue_wait[k]);
    }
    header(&sb, "finc_batch_size", "histogram", "Images per engine batch, by kind.");
    for (int k = 0; k < FINC_METRICS_KINDS; k++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", kind_names[k]);
        hist_render(&sb, "finc_batch_size", labels, &m->batch_size[k]);
    }
    header(&sb, "finc_engine_duration_seconds", "histogram", "Engine time per batch, by operation.");
    for (int k = 0; k < FINC_METRICS_KINDS; k++) {
        snprintf(labels, sizeof labels, "op=\"%s\"", kind_names[k]);
        hist_render(&sb, "finc_engine_duration_seconds", labels, &m->engine[k]);
    }
    header(&sb, "finc_images_total", "counter", "Images sampled or scored by the engine, by kind.");
    for (int k = 0; k < FINC_METRICS_KINDS; k++)
        sb_printf(&sb, "finc_images_total{kind=\"%s\"} %llu\n", kind_names[k], (unsigned long long)m->images[k]);
    header(&sb, "finc_images_dropped_total", "counter",
           "Queued images that never ran or did not finish, by kind and reason.");
    for (int k = 0; k < FINC_METRICS_KINDS; k++)
        for (int r = 0; r < FINC_DROP_COUNT; r++)
            sb_printf(&sb, "finc_images_dropped_total{kind=\"%s\",reason=\"%s\"} %llu\n", kind_names[k],
                      drop_names[r], (unsigned long long)m->dropped[k][r]);
    header(&sb, "finc_anomaly_p_value", "histogram",
           "Conformal p-values of the images scored by a calibrated model (near 0: unlike the calibration images).");
    hist_render(&sb, "finc_anomaly_p_value", "", &m->p_value);
    header(&sb, "finc_anomalous_images_total", "counter",
           "Scored images whose p-value was at most the request's alpha.");
    sb_printf(&sb, "finc_anomalous_images_total %llu\n", (unsigned long long)m->anomalous);
    header(&sb, "finc_cuda_graphs_in_use", "gauge",
           "1 while the CUDA backend replays its chains as CUDA graphs (0 on the CPU, or while capture backs off).");
    sb_printf(&sb, "finc_cuda_graphs_in_use %d\n", m->graphs);
    header(&sb, "finc_cuda_graph_capture_failures_total", "counter",
           "CUDA graph captures that failed; each chain then ran op by op, and capture was retried after a back-off.");
    sb_printf(&sb, "finc_cuda_graph_capture_failures_total %ld\n", m->capture_failures);
    header(&sb, "finc_engine_dead", "gauge",
           "1 once the device hit an unrecoverable (sticky) error: every batch fails until the process restarts.");
    sb_printf(&sb, "finc_engine_dead %d\n", m->dead);
    pthread_mutex_unlock(&m->mu);

    render_process(&sb);
    if (sb.oom) {
        free(sb.buf);
        return NULL;
    }
    *len = sb.len;
    return sb.buf;
}
