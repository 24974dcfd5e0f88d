/* The server's Prometheus metrics: request latency by endpoint and status,
 * queue wait, batch size, engine time, counters, gauges, build info and the
 * standard process_* metrics, rendered in the text exposition format (0.0.4)
 * in base units. Thread-safe; every update takes one short lock. */
#ifndef FINC_METRICS_H
#define FINC_METRICS_H

#include <stddef.h>

#include "server/request.h"   /* finc_endpoint, finc_error_reason */

/* Job kinds as the batcher numbers them: 0 sample, 1 score. */
#define FINC_METRICS_KINDS 2

/* Why queued work was dropped or ended without a result. */
typedef enum {
    FINC_DROP_EXPIRED,
    FINC_DROP_CANCELLED,
    FINC_DROP_FAILED,
    FINC_DROP_SHUTDOWN,
    FINC_DROP_COUNT
} finc_drop_reason;

typedef struct finc_metrics finc_metrics;

/* max_batch sizes the batch-size buckets. NULL when out of memory. */
finc_metrics *finc_metrics_new(int max_batch);
void finc_metrics_free(finc_metrics *m);

/* finc_build_info's labels, set once the model is loaded. */
void finc_metrics_set_info(finc_metrics *m, const char *version, const char *backend,
                           const char *model);

/* A finished HTTP request: latency histogram and requests counter by endpoint
 * and status; errors counter by reason when reason != FINC_ERR_NONE. */
void finc_metrics_request(finc_metrics *m, finc_endpoint ep, int code, double seconds,
                          finc_error_reason reason);
void finc_metrics_inflight_add(finc_metrics *m, int delta);

void finc_metrics_queue_wait(finc_metrics *m, int kind, double seconds);
/* One engine batch of `size` images of a kind that took `seconds`. */
void finc_metrics_batch(finc_metrics *m, int kind, int size, double seconds);
void finc_metrics_dropped(finc_metrics *m, int kind, finc_drop_reason why, int images);
void finc_metrics_queue_depth(finc_metrics *m, int kind, long passes);
/* One image scored by a calibrated model: its p-value and verdict. */
void finc_metrics_anomaly(finc_metrics *m, double p_value, int anomalous);

/* The backend's own state after a batch (engine/backend.h): CUDA graphs in
 * use, capture failures so far, and whether the device is dead. */
void finc_metrics_backend(finc_metrics *m, int graphs, long capture_failures, int dead);

/* The whole exposition as a malloc'd, NUL-terminated string (*len bytes), or NULL. */
char *finc_metrics_render(finc_metrics *m, size_t *len);

#endif
