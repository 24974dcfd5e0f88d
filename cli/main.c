/* finc, the command line: thin subcommands over the engine API (engine/flow.h),
 * so the CLI and the server give the same answers by construction.
 * Exit status: 0 ok, 1 a bad file or a failed run, 2 bad arguments. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "cli/ood_metrics.h"
#include "engine/anomaly.h"
#include "engine/backend.h"
#include "engine/flow.h"
#include "engine/safetensors.h"
#include "engine/version.h"
#include "io/dataset.h"
#include "io/npy.h"
#include "io/png.h"
#include "server/config.h"
#include "server/serve.h"

#define ERRLEN 512
#define MAX_OOD_SETS 64

static const char *usage_text =
    "usage: finc <command> WEIGHTS [options]\n"
    "commands:\n"
    "  info WEIGHTS [--tensors]                      config, parameters, tensors\n"
    "  sample WEIGHTS [-n N] [-t T] [--seed S] -o OUT.png|DIR/\n"
    "                                                draw N images (a grid, or one PNG each into DIR)\n"
    "  score WEIGHTS IMAGE.png... [--json] [--samples S] [--seed S] [--alpha A]\n"
    "                                                log-likelihood and bits/dim per image; with a\n"
    "                                                calibrated model, the anomaly score and p-value\n"
    "  encode WEIGHTS IMAGE.png... -o Z.npy          latents, float32 (N, D)\n"
    "  decode WEIGHTS Z.npy -o OUT.png|DIR/          images from latents\n"
    "  eval WEIGHTS [--data SRC] [--offset N] [--limit N] [--samples S] [--seed S] [--json]\n"
    "                                                mean bits/dim over a data set (and the fraction\n"
    "                                                flagged at alpha 0.01 and 0.05 when calibrated)\n"
    "  calibrate WEIGHTS --data SRC [--offset N] [--limit N] [--data-name TEXT] -o OUT.safetensors\n"
    "                                                fit the anomaly score on in-distribution images\n"
    "  ood WEIGHTS --in SRC --out SRC [--out SRC...] [--limit N] [--json]\n"
    "                                                AUROC, AUPR, FPR at 95% TPR: bits/dim and anomaly score\n"
    "  serve [options]                               the HTTP service (finc serve --help)\n"
    "  --version                                     version, backends built in, the GPUs CUDA sees\n"
    "engine options: --backend cpu|cuda|auto, --threads N, --batch N (largest batch),\n"
    "  --precision fp32|tf32 (CUDA: the coupling nets' F x F GEMMs on TF32 tensor cores)\n"
    "SRC: test, train or val (Fashion-MNIST's test file, training file, its last 5,000),\n"
    "     an IDX file, a .npy of uint8 (N, C, H, W), or a folder of PNGs (searched recursively,\n"
    "     in path order)\n";

static int usage(const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs("finc: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    fputs("usage: finc info|sample|score|encode|decode|eval|calibrate|ood|serve WEIGHTS [options]; "
          "finc --help lists them\n",
          stderr);
    return 2;
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("finc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* Options every subcommand shares, plus the ones some use. */
typedef struct {
    finc_engine_opts eng;
    int n, samples, json, tensors, limit, offset;
    float temperature;
    double alpha;
    uint64_t seed;
    const char *out, *data, *in, *data_name;
    const char *ood[MAX_OOD_SETS];
    int nood;
} cli_opts;

enum { OPT_SEED = 256, OPT_JSON, OPT_SAMPLES, OPT_BACKEND, OPT_THREADS, OPT_BATCH,
       OPT_TENSORS, OPT_DATA, OPT_LIMIT, OPT_OFFSET, OPT_ALPHA, OPT_IN, OPT_OUT, OPT_DATA_NAME, OPT_PRECISION };

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

/* Parses options from argv (after the subcommand); positional arguments are
 * left in argv[optind..]. Returns 0 or the exit status of a usage error. */
static int parse_opts(int argc, char **argv, cli_opts *o)
{
    static const struct option longopts[] = {
        {"n", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'},
        {"output", required_argument, 0, 'o'},
        {"seed", required_argument, 0, OPT_SEED},
        {"json", no_argument, 0, OPT_JSON},
        {"samples", required_argument, 0, OPT_SAMPLES},
        {"backend", required_argument, 0, OPT_BACKEND},
        {"threads", required_argument, 0, OPT_THREADS},
        {"precision", required_argument, 0, OPT_PRECISION},
        {"batch", required_argument, 0, OPT_BATCH},
        {"tensors", no_argument, 0, OPT_TENSORS},
        {"data", required_argument, 0, OPT_DATA},
        {"data-name", required_argument, 0, OPT_DATA_NAME},
        {"limit", required_argument, 0, OPT_LIMIT},
        {"offset", required_argument, 0, OPT_OFFSET},
        {"alpha", required_argument, 0, OPT_ALPHA},
        {"in", required_argument, 0, OPT_IN},
        {"out", required_argument, 0, OPT_OUT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    opterr = 0;
    optind = 1;
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "n:t:o:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'n':
            if (parse_int(optarg, 1, 1000000, &v)) return usage("-n wants 1..1000000, got '%s'", optarg);
            o->n = (int)v;
            break;
        case 't': {
            char *end;
            double t = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(t) || t < 0 || t > 100)
                return usage("-t wants a temperature in [0, 100], got '%s'", optarg);
            o->temperature = (float)t;
            break;
        }
        case 'o': o->out = optarg; break;
        case OPT_SEED:
            if (parse_u64(optarg, &o->seed)) return usage("--seed wants an unsigned integer, got '%s'", optarg);
            break;
        case OPT_JSON: o->json = 1; break;
        case OPT_SAMPLES:
            if (parse_int(optarg, 1, 100000, &v)) return usage("--samples wants 1..100000, got '%s'", optarg);
            o->samples = (int)v;
            break;
        case OPT_BACKEND:
            if (!finc_backend_name_ok(optarg))
                return usage("--backend wants cpu, cuda or auto, got '%s'", optarg);
            o->eng.backend = optarg;
            break;
        case OPT_PRECISION:
            if (finc_precision_parse(optarg, &o->eng.precision) != 0)
                return usage("--precision wants fp32 or tf32, got '%s'", optarg);
            break;
        case OPT_THREADS:
            if (parse_int(optarg, 1, 1024, &v)) return usage("--threads wants 1..1024, got '%s'", optarg);
            o->eng.threads = (int)v;
            break;
        case OPT_BATCH:
            if (parse_int(optarg, 1, 4096, &v)) return usage("--batch wants 1..4096, got '%s'", optarg);
            o->eng.max_batch = (int)v;
            break;
        case OPT_TENSORS: o->tensors = 1; break;
        case OPT_DATA: o->data = optarg; break;
        case OPT_DATA_NAME: o->data_name = optarg; break;
        case OPT_LIMIT:
            if (parse_int(optarg, 1, 100000000, &v)) return usage("--limit wants a positive count, got '%s'", optarg);
            o->limit = (int)v;
            break;
        case OPT_OFFSET:
            if (parse_int(optarg, 0, 100000000, &v)) return usage("--offset wants a count >= 0, got '%s'", optarg);
            o->offset = (int)v;
            break;
        case OPT_ALPHA: {
            char *end;
            const double a = strtod(optarg, &end);
            if (end == optarg || *end || !(a > 0 && a < 1))
                return usage("--alpha wants a significance level in (0, 1), got '%s'", optarg);
            o->alpha = a;
            break;
        }
        case OPT_IN: o->in = optarg; break;
        case OPT_OUT:
            if (o->nood == MAX_OOD_SETS) return usage("at most %d --out sets", MAX_OOD_SETS);
            o->ood[o->nood++] = optarg;
            break;
        case 'h': fputs(usage_text, stdout); exit(0);
        default:
            if (optopt) return usage("option -%c needs a value or is unknown", optopt);
            return usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    return 0;
}

/* The engine for a job of `rows` passes (0: not known before the load): its
 * activations are sized for min(rows, --batch), so one image costs one
 * image's buffers. */
static finc_engine *open_engine(const char *path, const cli_opts *o, long rows)
{
    char err[ERRLEN];
    finc_engine_opts eng = o->eng;
    const int batch = eng.max_batch > 0 ? eng.max_batch : FINC_DEFAULT_BATCH;
    eng.max_batch = rows > 0 && rows < batch ? (int)rows : batch;
    finc_engine *e = finc_engine_open(path, &eng, err, sizeof err);
    if (!e) fprintf(stderr, "finc: %s: %s\n", path, err);
    return e;
}

static int is_dir_target(const char *out)
{
    struct stat st;
    size_t n = strlen(out);
    return (n > 0 && out[n - 1] == '/') || (stat(out, &st) == 0 && S_ISDIR(st.st_mode));
}

/* Writes n images (n, C, H, W): one PNG, a grid, or one file per image in a folder. */
static int write_images(const char *out, const uint8_t *pix, int n, int C, int H, int W)
{
    char err[ERRLEN];
    const size_t D = (size_t)C * H * W;
    if (is_dir_target(out)) {
        if (mkdir(out, 0777) != 0 && errno != EEXIST) return fail("%s: %s", out, strerror(errno));
        for (int i = 0; i < n; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s%s%05d.png", out, out[strlen(out) - 1] == '/' ? "" : "/", i);
            if (finc_png_write_file(path, pix + i * D, C, H, W, err, sizeof err)) return fail("%s: %s", path, err);
        }
        return 0;
    }
    if (n == 1) {
        if (finc_png_write_file(out, pix, C, H, W, err, sizeof err)) return fail("%s: %s", out, err);
        return 0;
    }
    uint8_t *grid;
    int gh, gw;
    if (finc_png_grid(pix, n, C, H, W, 0, 2, 0, &grid, &gh, &gw, err, sizeof err)) return fail("%s", err);
    int rc = finc_png_write_file(out, grid, C, gh, gw, err, sizeof err);
    free(grid);
    if (rc) return fail("%s: %s", out, err);
    return 0;
}

/* Reads each PNG into pixels (n, C, H, W) at the model's size. */
static uint8_t *read_images(char **files, int n, const finc_config *cfg)
{
    char err[ERRLEN];
    uint8_t *pix;
    if (finc_dataset_read_pngs((const char *const *)files, (size_t)n, cfg->c, cfg->h, cfg->w, &pix, err, sizeof err)) {
        fail("%s", err);
        return NULL;
    }
    return pix;
}

static void tensor_count(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)name, (void)ndim, (void)shape;
    ++*(int *)user;
}

static void tensor_print(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)user;
    printf("  %-48s (", name);
    for (int i = 0; i < ndim; i++) printf("%s%lld", i ? ", " : "", (long long)shape[i]);
    printf(")\n");
}

static int cmd_info(int argc, char **argv)
{
    cli_opts o = {0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("info wants one weights file");
    char err[ERRLEN];
    finc_model m;
    if (finc_model_load_header(&m, argv[optind], err, sizeof err)) return fail("%s: %s", argv[optind], err);
    const finc_config *c = &m.cfg;
    int nt = 0;
    finc_config_each_tensor(c, tensor_count, &nt);
    printf("weights      %s\n", argv[optind]);
    printf("image        %d x %d x %d (C x H x W), D = %d\n", c->c, c->h, c->w, finc_config_dim(c));
    printf("levels       %d, steps [", c->levels);
    for (int l = 0; l < c->levels; l++) printf("%s%d", l ? ", " : "", c->steps[l]);
    printf("], kernel %d, coupling width %d, actnorm %s, alpha %g\n", c->kernel, c->width,
           c->actnorm ? "on" : "off", c->alpha);
    printf("parameters   %zu (%.2f M) in %d tensors\n", m.n_params, m.n_params / 1e6, nt);
    for (int l = 0; l < c->levels; l++) {
        const finc_level *lv = &m.levels[l];
        printf("level %d      %d x %d x %d, %d steps%s\n", l, lv->c, lv->h, lv->w, lv->nsteps,
               lv->has_split ? ", split" : "");
    }
    if (!isnan(c->test_bpd)) printf("test bits/dim %.4f\n", c->test_bpd);
    cJSON *meta = c->metadata_json ? cJSON_Parse(c->metadata_json) : NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, meta) {
        if (cJSON_IsString(it) && strcmp(it->string, "config") && strcmp(it->string, "format") &&
            strcmp(it->string, "anomaly"))
            printf("%-12s %s\n", it->string, it->valuestring);
    }
    cJSON_Delete(meta);
    if (m.anomaly)
        printf("anomaly      calibrated (%s): %d statistics fitted on %d images, %d calibration scores; %s\n",
               FINC_ANOMALY_METHOD, m.anomaly->d, m.anomaly->n_fit, m.anomaly->n_cal, m.anomaly->data);
    else
        printf("anomaly      not calibrated (finc calibrate)\n");
    if (o.tensors) {
        printf("tensors:\n");
        finc_config_each_tensor(c, tensor_print, NULL);
    }
    finc_model_free(&m);
    return 0;
}

static int cmd_sample(int argc, char **argv)
{
    cli_opts o = {.n = 16, .temperature = 1.0f, .seed = 0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("sample wants one weights file");
    if (!o.out) return usage("sample wants -o OUT.png or -o DIR/");
    o.eng.uncalibrated = 1;  /* no anomaly scores here: its block is not read */
    finc_engine *e = open_engine(argv[optind], &o, o.n);
    if (!e) return 1;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)finc_config_dim(cfg);
    uint8_t *pix = malloc((size_t)o.n * D);
    char err[ERRLEN];
    rc = 0;
    if (!pix) rc = fail("out of memory for %d images", o.n);
    else if (finc_sample(e, o.n, o.temperature, o.seed, 0, pix, err, sizeof err)) rc = fail("%s", err);
    else rc = write_images(o.out, pix, o.n, cfg->c, cfg->h, cfg->w);
    free(pix);
    finc_engine_free(e);
    return rc;
}

/* A JSON string literal for s (file names are the only strings we print). */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

#define DEFAULT_ALPHA 0.01

static void print_score(const char *name, double logp, const finc_anomaly_result *an, double alpha,
                        const finc_config *cfg, int json)
{
    const double bpd = finc_bits_per_dim(cfg, logp);
    if (json) {
        printf("{\"file\": ");
        json_string(stdout, name);
        printf(", \"log_likelihood\": %.10g, \"bits_per_dim\": %.10g", logp, bpd);
        if (an)
            printf(", \"anomaly\": {\"score\": %.10g, \"p_value\": %.10g, \"complexity_bits_per_dim\": %.10g, "
                   "\"alpha\": %g, \"anomalous\": %s}",
                   an->score, an->p_value, an->complexity_bpd, alpha, an->p_value <= alpha ? "true" : "false");
        printf("}\n");
    } else {
        printf("%s\t%.6f bits/dim\tlog p = %.4f nats", name, bpd, logp);
        if (an)
            printf("\tanomaly %.3f  p = %.4f%s", an->score, an->p_value, an->p_value <= alpha ? "  ANOMALOUS" : "");
        printf("\n");
    }
}

/* log p of n images (importance-weighted when samples > 1) and, for a
 * calibrated model, their anomaly results (an NULL otherwise). */
static int score_images(finc_engine *e, int n, const uint8_t *pix, int samples, uint64_t seed, uint64_t first_index,
                        double *lp, finc_anomaly_result *an, char *err, size_t errlen)
{
    if (an && finc_score_anomaly(e, n, pix, samples <= 1 ? lp : NULL, an, err, errlen)) return -1;
    if (an && samples <= 1) return 0;
    return finc_score(e, n, pix, samples, seed, first_index, lp, err, errlen);
}

static int cmd_score(int argc, char **argv)
{
    cli_opts o = {.samples = 1, .alpha = DEFAULT_ALPHA};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (argc - optind < 2) return usage("score wants a weights file and at least one PNG");
    finc_engine *e = open_engine(argv[optind], &o, (long)(argc - optind - 1) * (o.samples > 1 ? o.samples : 1));
    if (!e) return 1;
    const finc_model *m = finc_engine_model(e);
    const finc_config *cfg = &m->cfg;
    const int n = argc - optind - 1;
    char **files = argv + optind + 1;
    uint8_t *pix = read_images(files, n, cfg);
    double *lp = malloc((size_t)n * sizeof *lp);
    finc_anomaly_result *an = m->anomaly ? malloc((size_t)n * sizeof *an) : NULL;
    char err[ERRLEN];
    rc = 0;
    if (!pix || !lp || (m->anomaly && !an)) rc = pix ? fail("out of memory") : 1;
    else if (score_images(e, n, pix, o.samples, o.seed, 0, lp, an, err, sizeof err)) rc = fail("%s", err);
    else
        for (int i = 0; i < n; i++) print_score(files[i], lp[i], an ? &an[i] : NULL, o.alpha, cfg, o.json);
    free(pix);
    free(lp);
    free(an);
    finc_engine_free(e);
    return rc;
}

static int cmd_encode(int argc, char **argv)
{
    cli_opts o = {0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (argc - optind < 2) return usage("encode wants a weights file and at least one PNG");
    if (!o.out) return usage("encode wants -o Z.npy");
    o.eng.uncalibrated = 1;  /* no anomaly scores here: its block is not read */
    finc_engine *e = open_engine(argv[optind], &o, argc - optind - 1);
    if (!e) return 1;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const int n = argc - optind - 1;
    const size_t D = (size_t)finc_config_dim(cfg);
    uint8_t *pix = read_images(argv + optind + 1, n, cfg);
    float *z = malloc((size_t)n * D * sizeof *z);
    double *lp = malloc((size_t)n * sizeof *lp);
    char err[ERRLEN];
    rc = 0;
    if (!pix || !z || !lp) rc = pix ? fail("out of memory") : 1;
    else if (finc_encode(e, n, pix, NULL, z, lp, err, sizeof err)) rc = fail("%s", err);
    else if (finc_npy_write_f32(o.out, z, (size_t)n, D, err, sizeof err)) rc = fail("%s: %s", o.out, err);
    free(pix);
    free(z);
    free(lp);
    finc_engine_free(e);
    return rc;
}

static int cmd_decode(int argc, char **argv)
{
    cli_opts o = {0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (argc - optind != 2) return usage("decode wants a weights file and one .npy file");
    if (!o.out) return usage("decode wants -o OUT.png or -o DIR/");
    o.eng.uncalibrated = 1;  /* no anomaly scores here: its block is not read */
    finc_engine *e = open_engine(argv[optind], &o, 0);
    if (!e) return 1;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const size_t D = (size_t)finc_config_dim(cfg);
    char err[ERRLEN];
    float *z = NULL;
    size_t n = 0, d = 0;
    uint8_t *pix = NULL;
    rc = 0;
    if (finc_npy_read_f32(argv[optind + 1], &z, &n, &d, err, sizeof err)) rc = fail("%s: %s", argv[optind + 1], err);
    else if (d != D)
        rc = fail("%s: latents have %zu values per row, model expects %zu", argv[optind + 1], d, D);
    else if (n == 0 || n > 1000000) rc = fail("%s: %zu rows, want 1..1000000", argv[optind + 1], n);
    else if (!(pix = malloc(n * D))) rc = fail("out of memory");
    else if (finc_decode(e, (int)n, z, pix, err, sizeof err)) rc = fail("%s", err);
    else rc = write_images(o.out, pix, (int)n, cfg->c, cfg->h, cfg->w);
    free(z);
    free(pix);
    finc_engine_free(e);
    return rc;
}

static void progress(const char *what, long done, long total)
{
    if (!isatty(STDERR_FILENO)) return;
    const int width = 40;
    int fill = total ? (int)(width * done / total) : width;
    fprintf(stderr, "\r%s [%.*s%*s] %ld/%ld", what, fill, "########################################",
            width - fill, "", done, total);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

/* Loads SRC for the engine's model, with the messages the CLI prints. */
static uint8_t *load_set(const char *src, const finc_config *cfg, long offset, long limit, int *n)
{
    char err[ERRLEN];
    uint8_t *pix;
    if (finc_dataset_load(src, cfg->c, cfg->h, cfg->w, offset, limit, &pix, n, err, sizeof err)) {
        fail("%s", err);
        return NULL;
    }
    return pix;
}

static int cmd_eval(int argc, char **argv)
{
    cli_opts o = {.samples = 1, .data = "test", .alpha = 0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("eval wants one weights file");
    finc_engine *e = open_engine(argv[optind], &o, 0);
    if (!e) return 1;
    const finc_model *m = finc_engine_model(e);
    const finc_config *cfg = &m->cfg;
    int n;
    uint8_t *pixels = load_set(o.data, cfg, o.offset, o.limit, &n);
    const int chunk = finc_engine_max_batch(e);
    const size_t D = (size_t)finc_config_dim(cfg);
    double *lp = malloc((size_t)chunk * sizeof *lp), sum = 0.0, sum2 = 0.0;
    finc_anomaly_result *an = m->anomaly ? malloc((size_t)chunk * sizeof *an) : NULL;
    /* flagged at 0.01, 0.05 and --alpha */
    const double alphas[3] = {0.01, 0.05, o.alpha};
    long flagged[3] = {0, 0, 0};
    char err[ERRLEN];
    if (!pixels) rc = 1;
    else if (!lp || (m->anomaly && !an)) rc = fail("out of memory");
    for (int i = 0; rc == 0 && i < n; i += chunk) {
        const int b = n - i < chunk ? n - i : chunk;
        if (score_images(e, b, pixels + (size_t)i * D, o.samples, o.seed, (uint64_t)i, lp, an, err, sizeof err)) {
            rc = fail("%s", err);
            break;
        }
        for (int j = 0; j < b; j++) {
            const double bpd = finc_bits_per_dim(cfg, lp[j]);
            sum += bpd;
            sum2 += bpd * bpd;
            for (int k = 0; an && k < 3; k++) flagged[k] += an[j].p_value <= alphas[k];
        }
        progress("eval", i + b, n);
    }
    if (rc == 0) {
        const double mean = sum / n;
        const double var = n > 1 ? (sum2 - n * mean * mean) / (n - 1) : 0.0;
        const double se = sqrt(var > 0 ? var / n : 0.0);
        const int nk = o.alpha > 0 ? 3 : 2;
        if (o.json) {
            printf("{\"data\": ");
            json_string(stdout, o.data);
            printf(", \"images\": %d, \"samples\": %d, \"bits_per_dim\": %.6f, \"stderr\": %.6f", n, o.samples, mean,
                   se);
            if (an) {
                printf(", \"anomaly\": {\"flagged\": {");
                for (int k = 0; k < nk; k++) printf("%s\"%g\": %.6f", k ? ", " : "", alphas[k], (double)flagged[k] / n);
                printf("}}");
            }
            printf("}\n");
        } else {
            printf("%s: %d images, %s: %.4f bits/dim (standard error %.4f)\n", o.data, n,
                   o.samples > 1 ? "importance-weighted" : "midpoint dequantization", mean, se);
            for (int k = 0; an && k < nk; k++)
                printf("flagged anomalous at alpha %g: %ld of %d (%.2f%%)\n", alphas[k], flagged[k], n,
                       100.0 * flagged[k] / n);
        }
    }
    free(lp);
    free(an);
    free(pixels);
    finc_engine_free(e);
    return rc;
}

/* The weights file again, with its metadata's "anomaly" block set. */
static int write_calibrated(const char *in, const char *out, const char *block, char *err, size_t errlen)
{
    finc_st st;
    if (finc_st_open(&st, in, err, errlen)) return -1;
    char *kept = finc_st_metadata_json(&st, "anomaly");
    cJSON *meta = kept ? cJSON_Parse(kept) : NULL;
    free(kept);
    finc_st_write_tensor *t = calloc((size_t)st.n + 1, sizeof *t);
    int rc = 0;
    if (!meta || !t) {
        rc = -1;
        snprintf(err, errlen, "out of memory");
    } else {
        cJSON_AddStringToObject(meta, "anomaly", block);
        char *mj = cJSON_PrintUnformatted(meta);
        for (int i = 0; i < st.n; i++) {
            const finc_st_tensor *x = finc_st_at(&st, i);
            t[i] = (finc_st_write_tensor){x->name, x->dtype, x->ndim, x->shape, x->data};
        }
        /* Through a temporary name, so OUT may be the input file itself. */
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", out);
        rc = mj ? finc_st_write(tmp, mj, st.n, t, err, errlen) : -1;
        if (!mj) snprintf(err, errlen, "out of memory");
        if (rc == 0 && rename(tmp, out) != 0) rc = -1, snprintf(err, errlen, "%s: %s", out, strerror(errno));
        if (rc) unlink(tmp);
        free(mj);
    }
    cJSON_Delete(meta);
    free(t);
    finc_st_close(&st);
    return rc;
}

/* Fits on the first half of the images and calibrates on the second: the
 * p-values are then conformal (the calibration images are exchangeable with
 * new in-distribution images, and the fit never saw them). */
static int cmd_calibrate(int argc, char **argv)
{
    cli_opts o = {0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("calibrate wants one weights file");
    if (!o.data) return usage("calibrate wants --data SRC: held-out in-distribution images");
    if (!o.out) return usage("calibrate wants -o OUT.safetensors");
    o.eng.uncalibrated = 1;  /* a stale or broken block is what calibrate is for */
    finc_engine *e = open_engine(argv[optind], &o, 0);
    if (!e) return 1;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    int n;
    uint8_t *pixels = load_set(o.data, cfg, o.offset, o.limit, &n);
    char err[ERRLEN], what[600];
    struct finc_anomaly a = {0};
    char *block = NULL;
    const int n_fit = n / 2;
    if (!pixels) rc = 1;
    else if (n_fit > FINC_ANOMALY_MAX_FIT || n - n_fit > FINC_ANOMALY_MAX_FIT)
        rc = fail("%d images; calibrate takes at most %d (--limit)", n, 2 * FINC_ANOMALY_MAX_FIT);
    else {
        snprintf(what, sizeof what, "%s, images %d..%d (fit on the first %d)", o.data_name ? o.data_name : o.data,
                 o.offset, o.offset + n - 1, n_fit);
        if (finc_calibrate(e, n, pixels, n_fit, what, &a, err, sizeof err))
            rc = fail("%s: %s", o.data, err);
        else if (!(block = finc_anomaly_to_json(&a, cfg))) rc = fail("out of memory");
        else if (write_calibrated(argv[optind], o.out, block, err, sizeof err)) rc = fail("%s: %s", o.out, err);
        else
            printf("%s: calibrated on %s: %d statistics fitted on %d images, %d calibration scores\n", o.out,
                   o.data_name ? o.data_name : o.data, a.d, a.n_fit, a.n_cal);
    }
    free(block);
    finc_anomaly_free(&a);
    free(pixels);
    finc_engine_free(e);
    return rc;
}

/* bits/dim and (when calibrated) anomaly scores of every image of one set. */
static int ood_scores(finc_engine *e, const char *src, const cli_opts *o, double **bpd, double **score, int *n)
{
    const finc_model *m = finc_engine_model(e);
    uint8_t *pix = load_set(src, &m->cfg, 0, o->limit, n);
    if (!pix) return 1;
    double *lp = malloc((size_t)*n * sizeof *lp);
    finc_anomaly_result *an = m->anomaly ? malloc((size_t)*n * sizeof *an) : NULL;
    *bpd = malloc((size_t)*n * sizeof **bpd);
    *score = m->anomaly ? malloc((size_t)*n * sizeof **score) : NULL;
    char err[ERRLEN];
    int rc = 0;
    if (!lp || !*bpd || (m->anomaly && (!an || !*score))) rc = fail("out of memory");
    else if (score_images(e, *n, pix, 1, 0, 0, lp, an, err, sizeof err)) rc = fail("%s: %s", src, err);
    for (int i = 0; rc == 0 && i < *n; i++) {
        (*bpd)[i] = finc_bits_per_dim(&m->cfg, lp[i]);
        if (an) (*score)[i] = an[i].score;
    }
    free(pix);
    free(lp);
    free(an);
    return rc;
}

static int cmd_ood(int argc, char **argv)
{
    cli_opts o = {0};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("ood wants one weights file");
    if (!o.in || o.nood == 0) return usage("ood wants --in SRC (in-distribution) and at least one --out SRC");
    finc_engine *e = open_engine(argv[optind], &o, 0);
    if (!e) return 1;
    const int cal = finc_engine_model(e)->anomaly != NULL;
    double *in_bpd = NULL, *in_score = NULL, mean_raw = 0, mean_an = 0;
    int n_in;
    rc = ood_scores(e, o.in, &o, &in_bpd, &in_score, &n_in);
    if (rc == 0 && !o.json) {
        if (!cal) printf("(the model is not calibrated: bits/dim only; finc calibrate adds the anomaly score)\n");
        printf("in: %s, %d images\n%-28s %7s  %-23s  %-23s\n", o.in, n_in, "out", "images",
               "bits/dim AUROC AUPR FPR95", cal ? "anomaly  AUROC AUPR FPR95" : "");
    }
    for (int k = 0; rc == 0 && k < o.nood; k++) {
        double *bpd = NULL, *score = NULL;
        int n;
        finc_ood_metrics raw, an = {0};
        rc = ood_scores(e, o.ood[k], &o, &bpd, &score, &n);
        if (rc == 0 && (finc_ood_measure(in_bpd, n_in, bpd, n, &raw) ||
                        (cal && finc_ood_measure(in_score, n_in, score, n, &an))))
            rc = fail("out of memory");
        if (rc == 0) {
            mean_raw += raw.auroc / o.nood;
            mean_an += an.auroc / o.nood;
            if (o.json) {
                printf("{\"in\": ");
                json_string(stdout, o.in);
                printf(", \"out\": ");
                json_string(stdout, o.ood[k]);
                printf(", \"images_in\": %d, \"images_out\": %d, \"bits_per_dim\": {\"auroc\": %.6f, \"aupr\": %.6f, "
                       "\"fpr95\": %.6f}",
                       n_in, n, raw.auroc, raw.aupr, raw.fpr95);
                if (cal)
                    printf(", \"anomaly\": {\"auroc\": %.6f, \"aupr\": %.6f, \"fpr95\": %.6f}", an.auroc, an.aupr,
                           an.fpr95);
                printf("}\n");
            } else {
                printf("%-28.28s %7d  %5.3f %5.3f %5.3f        ", o.ood[k], n, raw.auroc, raw.aupr, raw.fpr95);
                if (cal) printf("  %5.3f %5.3f %5.3f", an.auroc, an.aupr, an.fpr95);
                printf("\n");
            }
        }
        free(bpd);
        free(score);
    }
    if (rc == 0 && !o.json) {
        printf("%-28s %7s  %5.3f", "mean AUROC", "", mean_raw);
        if (cal) printf("                    %5.3f", mean_an);
        printf("\n");
    }
    free(in_bpd);
    free(in_score);
    finc_engine_free(e);
    return rc;
}

/* The version, the backends, and the GPUs the CUDA backend would see or why
 * it cannot: what an operator checks first when a container does not use its GPU. */
static int cmd_version(void)
{
    char why[1024];
    const int cuda = finc_cuda_available(why, sizeof why);
    printf("finc %s (backends: cpu%s)\n", FINC_VERSION, cuda ? ", cuda" : "");
    if (!cuda) {
        printf("cuda: not available: %s\n", why);
        return 0;
    }
    printf("cuda: module %s\n", finc_cuda_module_path());
    for (int d = 0; d < finc_cuda_devices(); d++) {
        finc_cuda_device_text(d, why, sizeof why);
        printf("cuda: device %d: %s\n", d, why);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(NULL);
    const char *cmd = argv[1];
    argc--, argv++;
    if (!strcmp(cmd, "info")) return cmd_info(argc, argv);
    if (!strcmp(cmd, "sample")) return cmd_sample(argc, argv);
    if (!strcmp(cmd, "score")) return cmd_score(argc, argv);
    if (!strcmp(cmd, "encode")) return cmd_encode(argc, argv);
    if (!strcmp(cmd, "decode")) return cmd_decode(argc, argv);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc, argv);
    if (!strcmp(cmd, "calibrate")) return cmd_calibrate(argc, argv);
    if (!strcmp(cmd, "ood")) return cmd_ood(argc, argv);
    if (!strcmp(cmd, "serve")) return finc_serve_main(argc, argv);
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) return cmd_version();
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    return usage("unknown command '%s'", cmd);
}
