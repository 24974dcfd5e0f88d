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

#include "engine/backend.h"
#include "engine/flow.h"
#include "io/idx.h"
#include "io/npy.h"
#include "io/png.h"
#include "server/config.h"
#include "server/serve.h"

#define ERRLEN 512
#define FINC_FMNIST_DIR "/usr/share/datasets/fashion-mnist"

static const char *usage_text =
    "usage: finc <command> WEIGHTS [options]\n"
    "commands:\n"
    "  info WEIGHTS [--tensors]                      config, parameters, tensors\n"
    "  sample WEIGHTS [-n N] [-t T] [--seed S] -o OUT.png|DIR/\n"
    "                                                draw N images (a grid, or one PNG each into DIR)\n"
    "  score WEIGHTS IMAGE.png... [--json] [--samples S] [--seed S]\n"
    "                                                log-likelihood and bits/dim per image\n"
    "  encode WEIGHTS IMAGE.png... -o Z.npy          latents, float32 (N, D)\n"
    "  decode WEIGHTS Z.npy -o OUT.png|DIR/          images from latents\n"
    "  eval WEIGHTS [--data test|train|FILE.idx.gz] [--limit N] [--samples S] [--seed S] [--json]\n"
    "                                                mean bits/dim over a data set\n"
    "  serve [options]                               the HTTP service (finc serve --help)\n"
    "  --version                                     version, backends built in, the GPUs CUDA sees\n"
    "engine options: --backend cpu|cuda|auto, --threads N, --batch N (largest batch)\n";

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
    fputs("usage: finc info|sample|score|encode|decode|eval|serve WEIGHTS [options]; finc --help lists them\n",
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
    int n, samples, json, tensors, limit;
    float temperature;
    uint64_t seed;
    const char *out, *data;
} cli_opts;

enum { OPT_SEED = 256, OPT_JSON, OPT_SAMPLES, OPT_BACKEND, OPT_THREADS, OPT_BATCH,
       OPT_TENSORS, OPT_DATA, OPT_LIMIT };

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
        {"batch", required_argument, 0, OPT_BATCH},
        {"tensors", no_argument, 0, OPT_TENSORS},
        {"data", required_argument, 0, OPT_DATA},
        {"limit", required_argument, 0, OPT_LIMIT},
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
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
                return usage("--backend wants cpu, cuda or auto, got '%s'", optarg);
            o->eng.backend = optarg;
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
        case OPT_LIMIT:
            if (parse_int(optarg, 1, 100000000, &v)) return usage("--limit wants a positive count, got '%s'", optarg);
            o->limit = (int)v;
            break;
        case 'h': fputs(usage_text, stdout); exit(0);
        default:
            if (optopt) return usage("option -%c needs a value or is unknown", optopt);
            return usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    return 0;
}

static finc_engine *open_engine(const char *path, const cli_opts *o)
{
    char err[ERRLEN];
    finc_engine *e = finc_engine_open(path, &o->eng, err, sizeof err);
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
    const size_t D = (size_t)finc_config_dim(cfg);
    uint8_t *pix = malloc((size_t)n * D);
    if (!pix) {
        fail("out of memory for %d images", n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        finc_png_image img;
        if (finc_png_read_file(files[i], cfg->c, &img, err, sizeof err) ||
            (finc_png_check_size(&img, cfg->h, cfg->w, err, sizeof err) && (finc_png_image_free(&img), 1))) {
            fail("%s: %s", files[i], err);
            free(pix);
            return NULL;
        }
        memcpy(pix + i * D, img.pixels, D);
        finc_png_image_free(&img);
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
    if (finc_model_load(&m, argv[optind], err, sizeof err)) return fail("%s: %s", argv[optind], err);
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
        if (cJSON_IsString(it) && strcmp(it->string, "config") && strcmp(it->string, "format"))
            printf("%-12s %s\n", it->string, it->valuestring);
    }
    cJSON_Delete(meta);
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
    finc_engine *e = open_engine(argv[optind], &o);
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

static void print_score(const char *name, double logp, const finc_config *cfg, int json)
{
    const double bpd = finc_bits_per_dim(cfg, logp);
    if (json) {
        printf("{\"file\": ");
        json_string(stdout, name);
        printf(", \"log_likelihood\": %.10g, \"bits_per_dim\": %.10g}\n", logp, bpd);
    } else {
        printf("%s\t%.6f bits/dim\tlog p = %.4f nats\n", name, bpd, logp);
    }
}

static int cmd_score(int argc, char **argv)
{
    cli_opts o = {.samples = 1};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (argc - optind < 2) return usage("score wants a weights file and at least one PNG");
    finc_engine *e = open_engine(argv[optind], &o);
    if (!e) return 1;
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    const int n = argc - optind - 1;
    char **files = argv + optind + 1;
    uint8_t *pix = read_images(files, n, cfg);
    double *lp = malloc((size_t)n * sizeof *lp);
    char err[ERRLEN];
    rc = 0;
    if (!pix || !lp) rc = pix ? fail("out of memory") : 1;
    else if (finc_score(e, n, pix, o.samples, o.seed, 0, lp, err, sizeof err)) rc = fail("%s", err);
    else
        for (int i = 0; i < n; i++) print_score(files[i], lp[i], cfg, o.json);
    free(pix);
    free(lp);
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
    finc_engine *e = open_engine(argv[optind], &o);
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
    finc_engine *e = open_engine(argv[optind], &o);
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

typedef struct {
    uint8_t *pixels;   /* (n, 1, h, w) */
    int n, h, w;
} eval_data;

static int cmd_eval(int argc, char **argv)
{
    cli_opts o = {.samples = 1, .data = "test"};
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (optind + 1 != argc) return usage("eval wants one weights file");
    const char *path = o.data;
    if (!strcmp(o.data, "test")) path = FINC_FMNIST_DIR "/t10k-images-idx3-ubyte.gz";
    else if (!strcmp(o.data, "train")) path = FINC_FMNIST_DIR "/train-images-idx3-ubyte.gz";
    char err[ERRLEN];
    eval_data data = {0};
    if (finc_idx_read_images(path, &data.pixels, &data.n, &data.h, &data.w, err, sizeof err))
        return fail("%s: %s", path, err);
    finc_engine *e = open_engine(argv[optind], &o);
    if (!e) {
        free(data.pixels);
        return 1;
    }
    const finc_config *cfg = &finc_engine_model(e)->cfg;
    if (cfg->c != 1 || data.h != cfg->h || data.w != cfg->w) {
        rc = fail("%s: images are 1x%dx%d, model expects %dx%dx%d", path, data.h, data.w, cfg->c, cfg->h, cfg->w);
        goto out;
    }
    const int n = o.limit && o.limit < data.n ? o.limit : data.n;
    const int chunk = finc_engine_max_batch(e);
    const size_t D = (size_t)finc_config_dim(cfg);
    double *lp = malloc((size_t)chunk * sizeof *lp), sum = 0.0, sum2 = 0.0;
    if (!lp) {
        rc = fail("out of memory");
        goto out;
    }
    for (int i = 0; i < n && rc == 0; i += chunk) {
        const int b = n - i < chunk ? n - i : chunk;
        if (finc_score(e, b, data.pixels + (size_t)i * D, o.samples, o.seed, (uint64_t)i, lp, err, sizeof err)) {
            rc = fail("%s", err);
            break;
        }
        for (int j = 0; j < b; j++) {
            const double bpd = finc_bits_per_dim(cfg, lp[j]);
            sum += bpd;
            sum2 += bpd * bpd;
        }
        progress("eval", i + b, n);
    }
    free(lp);
    if (rc) goto out;
    const double mean = sum / n;
    const double var = n > 1 ? (sum2 - n * mean * mean) / (n - 1) : 0.0;
    const double se = sqrt(var > 0 ? var / n : 0.0);
    if (o.json)
        printf("{\"data\": \"%s\", \"images\": %d, \"samples\": %d, \"bits_per_dim\": %.6f, \"stderr\": %.6f}\n",
               o.data, n, o.samples, mean, se);
    else
        printf("%s: %d images, %s: %.4f bits/dim (standard error %.4f)\n", o.data, n,
               o.samples > 1 ? "importance-weighted" : "midpoint dequantization", mean, se);
out:
    finc_engine_free(e);
    free(data.pixels);
    return rc;
}

/* libgomp reads its settings when it loads, before main, so the spin count
 * is set by running this binary again with it in the environment. By
 * default an idle OpenMP thread spins for ~300k iterations at every barrier;
 * when the cores are shared (the server's own threads, a neighbour
 * container) that spinning starves the thread it waits for: the CLI's eval
 * ran 6x slower next to one busy process. 10k spins keeps the quiet-machine
 * latency and loses little under load (docs/benchmarks.md). */
static void set_spin_count(char **argv)
{
    if (getenv("GOMP_SPINCOUNT") || getenv("OMP_WAIT_POLICY")) return;
    if (setenv("GOMP_SPINCOUNT", "10000", 1) == 0) execv("/proc/self/exe", argv);
}

/* The version, and the GPUs the CUDA backend would see: what an operator
 * checks first when a container does not use its GPU. */
static int cmd_version(void)
{
#ifdef FINC_HAVE_CUDA
    printf("finc %s (backends: cpu, cuda)\n", FINC_SERVER_VERSION);
    char desc[512];
    const int n = finc_cuda_device_count();
    if (n == 0) {
        finc_cuda_describe(0, desc, sizeof desc);
        printf("cuda: no usable device (%s)\n", desc);
    }
    for (int d = 0; d < n; d++) {
        finc_cuda_describe(d, desc, sizeof desc);
        printf("cuda: device %d: %s\n", d, desc);
    }
#else
    printf("finc %s (backends: cpu; built without CUDA)\n", FINC_SERVER_VERSION);
#endif
    return 0;
}

int main(int argc, char **argv)
{
    set_spin_count(argv);
    if (argc < 2) return usage(NULL);
    const char *cmd = argv[1];
    argc--, argv++;
    if (!strcmp(cmd, "info")) return cmd_info(argc, argv);
    if (!strcmp(cmd, "sample")) return cmd_sample(argc, argv);
    if (!strcmp(cmd, "score")) return cmd_score(argc, argv);
    if (!strcmp(cmd, "encode")) return cmd_encode(argc, argv);
    if (!strcmp(cmd, "decode")) return cmd_decode(argc, argv);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc, argv);
    if (!strcmp(cmd, "serve")) return finc_serve_main(argc, argv);
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) return cmd_version();
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    return usage("unknown command '%s'", cmd);
}
