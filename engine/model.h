/* The FInC Flow model: its config, and its weights as one block with named
 * pointers into it (model.md sections 2 and 4). Loading validates every byte
 * of the file before anything is trusted; nothing is half-loaded. */
#ifndef FINC_MODEL_H
#define FINC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define FINC_MAX_LEVELS 8
#define FINC_MAX_STEPS 256

typedef struct {
    int c, h, w;                  /* image channels and size */
    int levels;                   /* L */
    int steps[FINC_MAX_LEVELS];   /* K_l */
    int kernel;                   /* k of the FInC units, >= 2 */
    int width;                    /* F, coupling net width */
    int actnorm;                  /* 1 when ActNorm layers are present */
    double alpha;                 /* pre-processing alpha */
    char *json;                   /* the config object as stored (owned) */
    char *metadata_json;          /* the __metadata__ object less its "anomaly" block, which is
                                     finc_model.anomaly (owned) */
    double test_bpd;              /* metadata test_bpd if present, else NaN */
} finc_config;

typedef struct {
    int cin, cout, width;         /* x1 channels (C/2), output channels (C), F */
    const float *w1, *b1;         /* (F, cin, 3, 3), (F,) */
    const float *w2, *b2;         /* (F, F), (F,) */
    const float *w3, *b3;         /* (cout, F, 3, 3), (cout,) */
    const float *scale3;          /* (cout,)  exp(3 * logs), derived at load */
    const float *w3_taps;         /* (cout*9, F) w3 with its taps outermost, derived at load: conv3
                                     as one GEMM then a shift-add over the nine taps (both backends) */
} finc_coupling;

typedef struct {
    const float *finc[4];         /* TL,TR,BL,BR in stored forward form (C/4, C/4, k, k) */
    const float *finc_tl[4];      /* the same kernels flipped to TL form, derived */
    const float *an_t, *an_s;     /* (C,) ActNorm translation, log_scale; NULL without ActNorm */
    const float *w1x1;            /* (C, C) */
    const float *w1x1_inv;        /* (C, C) inverse, computed in double at load */
    double w1x1_logdet;           /* ln|det W| */
    double an_logscale_sum;       /* sum of log_scale over channels */
    finc_coupling coupling;
} finc_step;

typedef struct {
    int c, h, w;                  /* shape inside the level, after its squeeze */
    int nsteps;
    finc_step *steps;
    int has_split;
    finc_coupling split;          /* valid when has_split */
} finc_level;

struct finc_anomaly;

typedef struct {
    finc_config cfg;
    finc_level levels[FINC_MAX_LEVELS];
    float *block;                 /* all weights and derived tensors, one allocation */
    size_t block_floats;
    size_t n_params;              /* stored parameters (excludes derived tensors) */
    double logdet_const;          /* data-independent part of log-det: ActNorm + 1x1 */
    struct finc_anomaly *anomaly; /* the "anomaly" metadata block (engine/anomaly.h), NULL when uncalibrated */
} finc_model;

/* Parse and validate the config object (a JSON string) into cfg.
 * Returns 0, or -1 with a message in err. */
int finc_config_parse(finc_config *cfg, const char *json, char *err, size_t errlen);
/* Frees the owned strings of a parsed config (finc_model_free does this for a model's). */
void finc_config_free(finc_config *cfg);

/* Load and validate a weights file. Returns 0, or -1 with a message naming
 * the offending tensor or field in err; on failure nothing is allocated. */
int finc_model_load(finc_model *m, const char *path, char *err, size_t errlen);
/* finc_model_load that leaves out the "anomaly" block, valid or not: what
 * finc calibrate reads, since it replaces the block. */
int finc_model_load_uncalibrated(finc_model *m, const char *path, char *err, size_t errlen);
/* The header alone: the format, config, metadata and every tensor's name,
 * dtype and shape checked, n_params and the level shapes set, and the
 * anomaly block's summary (finc_anomaly_parse_summary); no weight is read,
 * so block is NULL and the model cannot run. What finc info shows, in a few
 * milliseconds whatever the model's size. */
int finc_model_load_header(finc_model *m, const char *path, char *err, size_t errlen);
void finc_model_free(finc_model *m);

/* Coupling i of the model in chain order (each level's steps, then its
 * split), or NULL past the last: how backends walk every coupling once. */
const finc_coupling *finc_model_coupling(const finc_model *m, int i);

/* The per-image statistics of an encode pass (engine/flow.h,
 * finc_encode_stats): how many, and the name of statistic i. */
int finc_config_stat_count(const finc_config *cfg);
void finc_config_stat_name(const finc_config *cfg, int i, char *buf, size_t n);

/* Coupling scratch of a backend, in floats, for batches up to max_batch:
 * the largest level's im2col of x1 (cin*9, B*HW), hidden activations
 * (F, B*HW) each, and conv3's taps (cout*9, B*HW). */
typedef struct {
    size_t col, hidden, taps;
} finc_scratch_sizes;
finc_scratch_sizes finc_model_scratch_sizes(const finc_model *m, int max_batch);

/* Floating-point operations (multiply-adds x2) of one image's pass through
 * the model's convolutions: the couplings' three dominate; the FInC units
 * and 1x1s count too. Encode and decode cost the same. */
double finc_model_flops(const finc_model *m);

/* Total image dimensions D = C*H*W. */
static inline int finc_config_dim(const finc_config *cfg) { return cfg->c * cfg->h * cfg->w; }

/* Expected tensor names and shapes, in file order, for a config: used by the
 * loader and by tools that write files. Calls fn once per tensor. */
typedef void (*finc_tensor_fn)(void *user, const char *name, int ndim, const int64_t *shape);
void finc_config_each_tensor(const finc_config *cfg, finc_tensor_fn fn, void *user);

#endif
