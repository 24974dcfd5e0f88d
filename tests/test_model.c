/* engine/model: config parsing, the expected tensor list, loading a valid
 * file with its derived tensors checked independently, and one corrupt file
 * per failure mode, each checked for its message. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/testmodel.h"

static char path[512];
static char err[1024];

static void setup(void)
{
    ck_assert_int_eq(testmodel_tmpfile(path, sizeof path, ".safetensors"), 0);
    err[0] = 0;
}

static void teardown(void) { unlink(path); }

/* ---- config ------------------------------------------------------------ */

#define GOOD "\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true"

START_TEST(test_config_parse)
{
    finc_config cfg;
    const char *js = "{\"image\":[3,32,16],\"levels\":3,\"steps\":[4,2,1],\"kernel\":5,"
                     "\"coupling_width\":64,\"actnorm\":false,\"dataset\":\"cifar\",\"test_bpd\":3.3}";
    ck_assert_msg(finc_config_parse(&cfg, js, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(cfg.c, 3);
    ck_assert_int_eq(cfg.h, 32);
    ck_assert_int_eq(cfg.w, 16);
    ck_assert_int_eq(cfg.levels, 3);
    ck_assert_int_eq(cfg.steps[0], 4);
    ck_assert_int_eq(cfg.steps[1], 2);
    ck_assert_int_eq(cfg.steps[2], 1);
    ck_assert_int_eq(cfg.kernel, 5);
    ck_assert_int_eq(cfg.width, 64);
    ck_assert_int_eq(cfg.actnorm, 0);
    ck_assert(cfg.alpha == 1e-6);
    ck_assert(isnan(cfg.test_bpd));
    ck_assert_str_eq(cfg.json, js);
    ck_assert_ptr_null(cfg.metadata_json);
    ck_assert_int_eq(finc_config_dim(&cfg), 3 * 32 * 16);
    finc_config_free(&cfg);
    ck_assert_ptr_null(cfg.json);

    ck_assert_int_eq(finc_config_parse(&cfg, "{" GOOD ",\"alpha\":0.05}", err, sizeof err), 0);
    ck_assert(cfg.alpha == 0.05);
    ck_assert_int_eq(cfg.actnorm, 1);
    finc_config_free(&cfg);

    /* the largest accepted sizes */
    ck_assert_msg(finc_config_parse(&cfg, "{\"image\":[16,4096,256],\"levels\":4,\"steps\":[1,1,1,1],"
                                          "\"kernel\":15,\"coupling_width\":8192,\"actnorm\":true}",
                                    err, sizeof err) == 0, "%s", err);
    finc_config_free(&cfg);
}
END_TEST

static const struct {
    const char *json, *fragment;
} bad_configs[] = {
    {"nope", "config is not valid JSON"},
    {"{" GOOD "", "config is not valid JSON"},
    {"[1,2]", "config is not a JSON object"},
    {"{\"image\":[1,8,8],\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}", "config: 'levels' missing"},
    {"{\"image\":[1,8,8],\"levels\":0,\"steps\":[],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'levels' is 0, must be in 1..8"},
    {"{\"image\":[1,8,8],\"levels\":9,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'levels' is 9, must be in 1..8"},
    {"{\"image\":[1,8,8],\"levels\":\"2\",\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'levels' is not an integer"},
    {"{\"image\":[1,8,8],\"levels\":1.5,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'levels' is not an integer"},
    {"{\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}", "config: 'image' missing"},
    {"{\"image\":[1,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image' must be an array [C, H, W]"},
    {"{\"image\":8,\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image' must be an array [C, H, W]"},
    {"{\"image\":[0,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image C' is 0, must be in 1..16"},
    {"{\"image\":[17,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image C' is 17"},
    {"{\"image\":[1,6,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: image H x W = 6 x 8 is not divisible by 2^levels = 4"},
    {"{\"image\":[1,8,12],\"levels\":3,\"steps\":[2,2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "is not divisible by 2^levels = 8"},
    {"{\"image\":[1,8192,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image H' is 8192, must be in 1..4096"},
    {"{\"image\":[1,8,0],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image W' is 0"},
    {"{\"image\":[1,8,-8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'image W' is -8"},
    {"{\"image\":[1,8,8],\"levels\":2,\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}", "config: 'steps' missing"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'steps' must be an array of 2 step counts"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":2,\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'steps' must be an array of 2 step counts"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,0],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'steps[1]' is 0, must be in 1..256"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[257,1],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'steps[0]' is 257"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"coupling_width\":8,\"actnorm\":true}", "config: 'kernel' missing"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":1,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'kernel' is 1, must be in 2..15"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":16,\"coupling_width\":8,\"actnorm\":true}",
     "config: 'kernel' is 16"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"actnorm\":true}", "config: 'coupling_width' missing"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":0,\"actnorm\":true}",
     "config: 'coupling_width' is 0, must be in 1..8192"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8193,\"actnorm\":true}",
     "config: 'coupling_width' is 8193"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8}", "config: 'actnorm' missing"},
    {"{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":1}",
     "config: 'actnorm' is not a boolean"},
    {"{" GOOD ",\"alpha\":\"small\"}", "config: 'alpha' is not a number"},
    {"{" GOOD ",\"alpha\":0.5}", "config: 'alpha' is 0.5, must be in (0, 0.5)"},
    {"{" GOOD ",\"alpha\":0}", "config: 'alpha' is 0, must be in (0, 0.5)"},
    {"{" GOOD ",\"alpha\":-1e-6}", "config: 'alpha' is -1e-06"},
    {"{\"image\":[16,4096,4096],\"levels\":8,\"steps\":[256,256,256,256,256,256,256,256],\"kernel\":15,"
     "\"coupling_width\":8192,\"actnorm\":true}",
     "more than 2^32"},
};

START_TEST(test_config_bad)
{
    finc_config cfg;
    int rc = finc_config_parse(&cfg, bad_configs[_i].json, err, sizeof err);
    ck_assert_msg(rc == -1, "accepted %s", bad_configs[_i].json);
    ck_assert_msg(strstr(err, bad_configs[_i].fragment) != NULL, "message '%s' lacks '%s'", err,
                  bad_configs[_i].fragment);
    ck_assert_ptr_null(cfg.json);
}
END_TEST

START_TEST(test_config_null)
{
    finc_config cfg;
    ck_assert_int_eq(finc_config_parse(&cfg, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "config"));
}
END_TEST

/* ---- expected tensors -------------------------------------------------- */

typedef struct {
    int n;
    char names[256][128];
    int ndim[256];
    int64_t shape[256][4];
} tensor_list;

static void list_cb(void *user, const char *name, int ndim, const int64_t *shape)
{
    tensor_list *tl = user;
    ck_assert_int_lt(tl->n, 256);
    snprintf(tl->names[tl->n], sizeof tl->names[0], "%s", name);
    tl->ndim[tl->n] = ndim;
    memcpy(tl->shape[tl->n], shape, (size_t)ndim * sizeof *shape);
    tl->n++;
}

static int find_name(const tensor_list *tl, const char *name)
{
    for (int i = 0; i < tl->n; i++)
        if (strcmp(tl->names[i], name) == 0)
            return i;
    return -1;
}

static void assert_shape(const tensor_list *tl, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int i = find_name(tl, name);
    ck_assert_msg(i >= 0, "no %s", name);
    ck_assert_int_eq(tl->ndim[i], ndim);
    const int64_t want[4] = {a, b, c, d};
    for (int j = 0; j < ndim; j++)
        ck_assert_msg(tl->shape[i][j] == want[j], "%s dim %d: %lld", name, j, (long long)tl->shape[i][j]);
}

START_TEST(test_each_tensor)
{
    finc_config cfg;
    ck_assert_int_eq(finc_config_parse(&cfg, "{\"image\":[3,16,8],\"levels\":2,\"steps\":[2,1],\"kernel\":5,"
                                             "\"coupling_width\":6,\"actnorm\":true}", err, sizeof err), 0);
    static tensor_list tl;
    memset(&tl, 0, sizeof tl);
    finc_config_each_tensor(&cfg, list_cb, &tl);
    ck_assert_int_eq(tl.n, 2 * 14 + 7 + 1 * 14);
    static const char *const first[14] = {
        "levels.0.steps.0.finc.tl", "levels.0.steps.0.finc.tr", "levels.0.steps.0.finc.bl",
        "levels.0.steps.0.finc.br", "levels.0.steps.0.actnorm.translation", "levels.0.steps.0.actnorm.log_scale",
        "levels.0.steps.0.conv1x1.weight", "levels.0.steps.0.coupling.conv1.weight",
        "levels.0.steps.0.coupling.conv1.bias", "levels.0.steps.0.coupling.conv2.weight",
        "levels.0.steps.0.coupling.conv2.bias", "levels.0.steps.0.coupling.conv3.weight",
        "levels.0.steps.0.coupling.conv3.bias", "levels.0.steps.0.coupling.conv3.logs",
    };
    for (int i = 0; i < 14; i++)
        ck_assert_str_eq(tl.names[i], first[i]);
    ck_assert_str_eq(tl.names[28], "levels.0.split.coupling.conv1.weight");
    ck_assert_str_eq(tl.names[34], "levels.0.split.coupling.conv3.logs");
    ck_assert_str_eq(tl.names[35], "levels.1.steps.0.finc.tl");
    ck_assert_int_eq(find_name(&tl, "levels.1.split.coupling.conv1.weight"), -1);
    /* level 0: C = 12; level 1: C = 24 */
    assert_shape(&tl, "levels.0.steps.1.finc.br", 4, 3, 3, 5, 5);
    assert_shape(&tl, "levels.0.steps.0.actnorm.log_scale", 1, 12, 0, 0, 0);
    assert_shape(&tl, "levels.0.steps.0.conv1x1.weight", 2, 12, 12, 0, 0);
    assert_shape(&tl, "levels.0.steps.0.coupling.conv1.weight", 4, 6, 6, 3, 3);
    assert_shape(&tl, "levels.0.steps.0.coupling.conv2.weight", 4, 6, 6, 1, 1);
    assert_shape(&tl, "levels.0.steps.0.coupling.conv3.weight", 4, 12, 6, 3, 3);
    assert_shape(&tl, "levels.0.split.coupling.conv1.weight", 4, 6, 6, 3, 3);
    assert_shape(&tl, "levels.0.split.coupling.conv3.logs", 1, 12, 0, 0, 0);
    assert_shape(&tl, "levels.1.steps.0.finc.tl", 4, 6, 6, 5, 5);
    assert_shape(&tl, "levels.1.steps.0.conv1x1.weight", 2, 24, 24, 0, 0);
    assert_shape(&tl, "levels.1.steps.0.coupling.conv1.weight", 4, 6, 12, 3, 3);
    assert_shape(&tl, "levels.1.steps.0.coupling.conv3.bias", 1, 24, 0, 0, 0);
    finc_config_free(&cfg);

    ck_assert_int_eq(finc_config_parse(&cfg, "{\"image\":[3,16,8],\"levels\":2,\"steps\":[2,1],\"kernel\":5,"
                                             "\"coupling_width\":6,\"actnorm\":false}", err, sizeof err), 0);
    memset(&tl, 0, sizeof tl);
    finc_config_each_tensor(&cfg, list_cb, &tl);
    ck_assert_int_eq(tl.n, 2 * 12 + 7 + 12);
    ck_assert_int_eq(find_name(&tl, "levels.0.steps.0.actnorm.translation"), -1);
    ck_assert_str_eq(tl.names[4], "levels.0.steps.0.conv1x1.weight");
    finc_config_free(&cfg);
}
END_TEST

/* ---- loading ----------------------------------------------------------- */

/* Every stored tensor of a model, by the names of model.md, with its pointer
 * and size (conv3.logs is not kept; scale3 is checked against it instead). */
typedef struct {
    int n;
    char name[1024][128];
    const float *p[1024];
    size_t numel[1024];
} param_list;

static void add_param(param_list *pl, const float *p, size_t numel, const char *prefix, const char *leaf)
{
    ck_assert_int_lt(pl->n, 1024);
    snprintf(pl->name[pl->n], sizeof pl->name[0], "%s%s", prefix, leaf);
    pl->p[pl->n] = p;
    pl->numel[pl->n++] = numel;
}

static void add_coupling(param_list *pl, const finc_coupling *cp, const char *prefix)
{
    size_t C = (size_t)cp->cout, F = (size_t)cp->width;
    add_param(pl, cp->w1, F * C / 2 * 9, prefix, "conv1.weight");
    add_param(pl, cp->b1, F, prefix, "conv1.bias");
    add_param(pl, cp->w2, F * F, prefix, "conv2.weight");
    add_param(pl, cp->b2, F, prefix, "conv2.bias");
    add_param(pl, cp->w3, C * F * 9, prefix, "conv3.weight");
    add_param(pl, cp->b3, C, prefix, "conv3.bias");
}

static void list_params(const finc_model *m, param_list *pl)
{
    static const char *const qn[4] = {"finc.tl", "finc.tr", "finc.bl", "finc.br"};
    char prefix[96];
    size_t k = (size_t)m->cfg.kernel;
    pl->n = 0;
    for (int l = 0; l < m->cfg.levels; l++) {
        const finc_level *lv = &m->levels[l];
        size_t C = (size_t)lv->c;
        for (int s = 0; s < lv->nsteps; s++) {
            const finc_step *st = &lv->steps[s];
            snprintf(prefix, sizeof prefix, "levels.%d.steps.%d.", l, s);
            for (int q = 0; q < 4; q++)
                add_param(pl, st->finc[q], C / 4 * C / 4 * k * k, prefix, qn[q]);
            if (m->cfg.actnorm) {
                add_param(pl, st->an_t, C, prefix, "actnorm.translation");
                add_param(pl, st->an_s, C, prefix, "actnorm.log_scale");
            }
            add_param(pl, st->w1x1, C * C, prefix, "conv1x1.weight");
            snprintf(prefix, sizeof prefix, "levels.%d.steps.%d.coupling.", l, s);
            add_coupling(pl, &st->coupling, prefix);
        }
        if (lv->has_split) {
            snprintf(prefix, sizeof prefix, "levels.%d.split.coupling.", l);
            add_coupling(pl, &lv->split, prefix);
        }
    }
}

static float *read_tensor(const finc_st *f, const char *name, size_t *numel)
{
    const finc_st_tensor *t = finc_st_find(f, name);
    ck_assert_msg(t != NULL, "file lacks %s", name);
    float *v = malloc(t->numel * sizeof *v + 1);
    ck_assert_int_eq(finc_st_to_f32(t, v), 0);
    if (numel)
        *numel = t->numel;
    return v;
}

/* Elimination with complete pivoting in long double, for matrices too big
 * for Laplace expansion. */
static double det_elim(const double *in, int n)
{
    long double *a = malloc((size_t)n * n * sizeof *a), det = 1;
    for (int i = 0; i < n * n; i++)
        a[i] = in[i];
    for (int c = 0; c < n; c++) {
        int pr = c, pc = c;
        for (int r = c; r < n; r++)
            for (int j = c; j < n; j++)
                if (fabsl(a[r * n + j]) > fabsl(a[pr * n + pc]))
                    pr = r, pc = j;
        if (pr != c) {
            det = -det;
            for (int j = 0; j < n; j++) {
                long double t = a[pr * n + j];
                a[pr * n + j] = a[c * n + j];
                a[c * n + j] = t;
            }
        }
        if (pc != c) {
            det = -det;
            for (int r = 0; r < n; r++) {
                long double t = a[r * n + pc];
                a[r * n + pc] = a[r * n + c];
                a[r * n + c] = t;
            }
        }
        long double p = a[c * n + c];
        det *= p;
        for (int r = c + 1; r < n; r++) {
            long double f = a[r * n + c] / p;
            for (int j = c; j < n; j++)
                a[r * n + j] -= f * a[c * n + j];
        }
    }
    free(a);
    return (double)det;
}

/* Laplace expansion along the first row: slow, but shares nothing with the loader. */
static double det_direct(const double *a, int n)
{
    if (n > 8)
        return det_elim(a, n);
    if (n == 1)
        return a[0];
    double *minor = malloc((size_t)(n - 1) * (n - 1) * sizeof *minor), d = 0;
    for (int j = 0; j < n; j++) {
        for (int r = 1; r < n; r++)
            for (int c = 0, cc = 0; c < n; c++)
                if (c != j)
                    minor[(r - 1) * (n - 1) + cc++] = a[r * n + c];
        d += (j % 2 ? -1 : 1) * a[j] * det_direct(minor, n - 1);
    }
    free(minor);
    return d;
}

static void check_model(const finc_model *m, const char *file)
{
    finc_st f;
    ck_assert_msg(finc_st_open(&f, file, err, sizeof err) == 0, "%s", err);

    /* every stored tensor equals the file's, and nothing else is in the file */
    static param_list pl;
    list_params(m, &pl);
    int logs_count = 0;
    size_t n_params = 0;
    for (int i = 0; i < f.n; i++) {
        n_params += f.tensors[i].numel;
        logs_count += strstr(f.tensors[i].name, "conv3.logs") != NULL;
    }
    ck_assert_int_eq(pl.n + logs_count, f.n);
    ck_assert_uint_eq(m->n_params, n_params);
    for (int i = 0; i < pl.n; i++) {
        size_t n;
        float *v = read_tensor(&f, pl.name[i], &n);
        ck_assert_uint_eq(n, pl.numel[i]);
        ck_assert_msg(memcmp(v, pl.p[i], n * sizeof *v) == 0, "%s differs", pl.name[i]);
        ck_assert_msg((uintptr_t)pl.p[i] % 64 == 0, "%s not 64-byte aligned", pl.name[i]);
        ck_assert(pl.p[i] >= m->block && pl.p[i] + n <= m->block + m->block_floats);
        free(v);
    }

    double logdet_const = 0;
    int C = 4 * m->cfg.c;
    for (int l = 0; l < m->cfg.levels; l++, C *= 2) {
        const finc_level *lv = &m->levels[l];
        ck_assert_int_eq(lv->c, C);
        ck_assert_int_eq(lv->h, m->cfg.h >> (l + 1));
        ck_assert_int_eq(lv->w, m->cfg.w >> (l + 1));
        ck_assert_int_eq(lv->nsteps, m->cfg.steps[l]);
        ck_assert_int_eq(lv->has_split, l < m->cfg.levels - 1);
        for (int s = 0; s <= lv->nsteps; s++) {
            const finc_coupling *cp;
            char name[128];
            if (s < lv->nsteps) {
                const finc_step *st = &lv->steps[s];
                cp = &st->coupling;
                snprintf(name, sizeof name, "levels.%d.steps.%d.coupling.conv3.logs", l, s);
                /* 1x1: inverse times matrix is the identity; logdet matches a direct determinant */
                double *a = malloc((size_t)C * C * sizeof *a);
                for (int i = 0; i < C * C; i++)
                    a[i] = st->w1x1[i];
                double det = det_direct(a, C);
                ck_assert_msg(fabs(log(fabs(det)) - st->w1x1_logdet) < 1e-9, "logdet %.12g vs %.12g",
                              st->w1x1_logdet, log(fabs(det)));
                for (int i = 0; i < C; i++)
                    for (int j = 0; j < C; j++) {
                        double dot = 0;
                        for (int k = 0; k < C; k++)
                            dot += (double)st->w1x1_inv[i * C + k] * st->w1x1[k * C + j];
                        ck_assert_msg(fabs(dot - (i == j)) < 1e-5, "W^-1 W [%d][%d] = %g", i, j, dot);
                    }
                free(a);
                double an = 0;
                if (m->cfg.actnorm)
                    for (int c = 0; c < C; c++)
                        an += st->an_s[c];
                else
                    ck_assert(st->an_t == NULL && st->an_s == NULL);
                ck_assert(fabs(an - st->an_logscale_sum) < 1e-12);
                logdet_const += (double)lv->h * lv->w * (log(fabs(det)) - an);
                /* TL forms: the flips of model.md section 2 */
                int cq = C / 4, k = m->cfg.kernel;
                for (int q = 0; q < 4; q++)
                    for (int i = 0; i < cq * cq; i++)
                        for (int y = 0; y < k; y++)
                            for (int x = 0; x < k; x++) {
                                int sy = q & 2 ? k - 1 - y : y, sx = q & 1 ? k - 1 - x : x;
                                ck_assert(st->finc_tl[q][(i * k + y) * k + x] == st->finc[q][(i * k + sy) * k + sx]);
                            }
            } else if (lv->has_split) {
                cp = &lv->split;
                snprintf(name, sizeof name, "levels.%d.split.coupling.conv3.logs", l);
            } else {
                break;
            }
            ck_assert_int_eq(cp->cin, C / 2);
            ck_assert_int_eq(cp->cout, C);
            ck_assert_int_eq(cp->width, m->cfg.width);
            float *logs = read_tensor(&f, name, NULL);
            for (int c = 0; c < C; c++)
                ck_assert_msg(fabs(cp->scale3[c] - exp(3.0 * logs[c])) <= 1e-6 * exp(3.0 * logs[c]),
                              "%s scale3[%d]", name, c);
            free(logs);
        }
    }
    ck_assert_msg(fabs(logdet_const - m->logdet_const) < 1e-9 * (1 + fabs(logdet_const)), "logdet_const %.12g vs %.12g",
                  m->logdet_const, logdet_const);
    finc_st_close(&f);
}

START_TEST(test_load_tiny)
{
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write(path, &sp, 1), 0);
    finc_model m;
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.cfg.c, 1);
    ck_assert_int_eq(m.cfg.h, 8);
    ck_assert_int_eq(m.cfg.levels, 2);
    ck_assert_int_eq(m.cfg.width, 8);
    ck_assert_int_eq(m.cfg.actnorm, 1);
    ck_assert(m.cfg.alpha == 1e-6);
    ck_assert(isnan(m.cfg.test_bpd));
    ck_assert_ptr_nonnull(strstr(m.cfg.json, "\"coupling_width\":8"));
    ck_assert_ptr_nonnull(strstr(m.cfg.metadata_json, "\"format\":\"finc-flow\""));
    ck_assert_ptr_nonnull(strstr(m.cfg.metadata_json, "random test weights"));
    ck_assert_uint_eq((uintptr_t)m.block % 64, 0);
    ck_assert(m.logdet_const != 0);
    check_model(&m, path);
    finc_model_free(&m);
    ck_assert_ptr_null(m.block);
    finc_model_free(&m);   /* twice is harmless */
}
END_TEST

START_TEST(test_load_shapes)
{
    /* no ActNorm, k = 2, three levels, odd steps, non-square, three channels */
    testmodel_spec sp = testmodel_tiny();
    sp.c = 3;
    sp.h = 16;
    sp.w = 8;
    sp.levels = 3;
    sp.steps[0] = 1;
    sp.steps[1] = 3;
    sp.steps[2] = 1;
    sp.kernel = 2;
    sp.width = 5;
    sp.actnorm = 0;
    sp.alpha = 0.05;
    ck_assert_int_eq(testmodel_write(path, &sp, 7), 0);
    finc_model m;
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert(m.cfg.alpha == 0.05);
    ck_assert_int_eq(m.levels[0].c, 12);
    ck_assert_int_eq(m.levels[1].c, 24);
    ck_assert_int_eq(m.levels[2].c, 48);
    ck_assert_int_eq(m.levels[2].h, 2);
    ck_assert_int_eq(m.levels[2].w, 1);
    check_model(&m, path);
    finc_model_free(&m);

    /* one level, no split; a larger kernel */
    sp = testmodel_tiny();
    sp.levels = 1;
    sp.steps[0] = 2;
    sp.kernel = 5;
    ck_assert_int_eq(testmodel_write(path, &sp, 8), 0);
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.levels[0].has_split, 0);
    check_model(&m, path);
    finc_model_free(&m);
}
END_TEST

/* A hand-made TL-form 3x3 kernel, stored in each quarter's forward form. */
static const float hand_tl[9] = {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f, 0.07f, 0.08f, 1.0f};

static void hook_hand_kernel(testmodel_file *f, void *user)
{
    static const char *const names[4] = {"levels.0.steps.0.finc.tl", "levels.0.steps.0.finc.tr",
                                         "levels.0.steps.0.finc.bl", "levels.0.steps.0.finc.br"};
    for (int q = 0; q < 4; q++) {
        testmodel_tensor *t = testmodel_find(f, names[q]);
        ck_assert_ptr_nonnull(t);
        ck_assert_uint_eq(t->numel, 9);
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 3; x++) {
                int sy = q & 2 ? 2 - y : y, sx = q & 1 ? 2 - x : x;
                t->data[sy * 3 + sx] = hand_tl[y * 3 + x];
            }
    }
}

START_TEST(test_tl_flips)
{
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write_hook(path, &sp, 2, hook_hand_kernel, NULL), 0);
    finc_model m;
    ck_assert_msg(finc_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    const finc_step *st = &m.levels[0].steps[0];
    /* stored forms, spelled out */
    static const float tr[9] = {0.03f, 0.02f, 0.01f, 0.06f, 0.05f, 0.04f, 1.0f, 0.08f, 0.07f};
    static const float bl[9] = {0.07f, 0.08f, 1.0f, 0.04f, 0.05f, 0.06f, 0.01f, 0.02f, 0.03f};
    static const float br[9] = {1.0f, 0.08f, 0.07f, 0.06f, 0.05f, 0.04f, 0.03f, 0.02f, 0.01f};
    const float *stored[4] = {hand_tl, tr, bl, br};
    for (int q = 0; q < 4; q++)
        for (int i = 0; i < 9; i++) {
            ck_assert_msg(st->finc[q][i] == stored[q][i], "quarter %d stored [%d]", q, i);
            ck_assert_msg(st->finc_tl[q][i] == hand_tl[i], "quarter %d TL form [%d]", q, i);
        }
    finc_model_free(&m);
}
END_TEST

static void check_half(finc_st_dtype dt)
{
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write(path, &sp, 3), 0);
    finc_model m32, m16;
    ck_assert_msg(finc_model_load(&m32, path, err, sizeof err) == 0, "%s", err);
    sp.dtype = dt;
    ck_assert_int_eq(testmodel_write(path, &sp, 3), 0);
    finc_st f;
    ck_assert_int_eq(finc_st_open(&f, path, err, sizeof err), 0);
    ck_assert_int_eq(finc_st_find(&f, "levels.0.steps.0.conv1x1.weight")->dtype, dt);
    finc_st_close(&f);
    ck_assert_msg(finc_model_load(&m16, path, err, sizeof err) == 0, "%s", err);
    static param_list p32, p16;
    list_params(&m32, &p32);
    list_params(&m16, &p16);
    ck_assert_int_eq(p32.n, p16.n);
    ck_assert_uint_eq(m32.n_params, m16.n_params);
    ck_assert_uint_eq(m32.block_floats, m16.block_floats);
    int differs = 0;
    for (int i = 0; i < p32.n; i++) {
        ck_assert_str_eq(p32.name[i], p16.name[i]);
        ck_assert_uint_eq(p32.numel[i], p16.numel[i]);
        for (size_t j = 0; j < p32.numel[i]; j++) {
            float want = dt == FINC_ST_F16 ? finc_st_f16_to_f32(finc_st_f32_to_f16(p32.p[i][j]))
                                           : finc_st_bf16_to_f32(finc_st_f32_to_bf16(p32.p[i][j]));
            ck_assert_msg(p16.p[i][j] == want, "%s[%zu]: %g vs %g", p16.name[i], j, p16.p[i][j], want);
            differs |= p16.p[i][j] != p32.p[i][j];
        }
    }
    ck_assert(differs);   /* the rounding did happen */
    check_model(&m16, path);
    finc_model_free(&m32);
    finc_model_free(&m16);
}

START_TEST(test_load_f16) { check_half(FINC_ST_F16); }
END_TEST

START_TEST(test_load_bf16) { check_half(FINC_ST_BF16); }
END_TEST

START_TEST(test_test_bpd)
{
    testmodel_spec sp = testmodel_tiny();
    finc_model m;
    ck_assert_int_eq(testmodel_write(path, &sp, 4), 0);
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), 0);
    ck_assert(isnan(m.cfg.test_bpd));
    finc_model_free(&m);
}
END_TEST

static void hook_bpd(testmodel_file *f, void *user) { testmodel_set_meta(f, "test_bpd", user); }

START_TEST(test_test_bpd_values)
{
    testmodel_spec sp = testmodel_tiny();
    finc_model m;
    ck_assert_int_eq(testmodel_write_hook(path, &sp, 4, hook_bpd, "3.25"), 0);
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), 0);
    ck_assert(m.cfg.test_bpd == 3.25);
    ck_assert_ptr_nonnull(strstr(m.cfg.metadata_json, "\"test_bpd\":\"3.25\""));
    finc_model_free(&m);
    ck_assert_int_eq(testmodel_write_hook(path, &sp, 4, hook_bpd, "n/a"), 0);
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), 0);
    ck_assert(isnan(m.cfg.test_bpd));
    finc_model_free(&m);
}
END_TEST

/* ---- corrupt files ----------------------------------------------------- */

typedef struct {
    const char *tensor;   /* or the metadata key */
    int index;
    float value;
    const char *text;     /* metadata value */
} mutation;

static void hook_set_value(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_tensor *t = testmodel_find(f, mu->tensor);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_lt((size_t)mu->index, t->numel);
    t->data[mu->index] = mu->value;
}

static void hook_dtype_i32(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_find(f, mu->tensor)->dtype = FINC_ST_I32;
}

static void hook_dtype_f64(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_find(f, mu->tensor)->dtype = FINC_ST_F64;
}

static void hook_reshape(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_tensor *t = testmodel_find(f, mu->tensor);
    int64_t shape[4];
    memcpy(shape, t->shape, sizeof shape);
    shape[t->ndim - 1] = mu->index;
    ck_assert_int_eq(testmodel_reshape(t, t->ndim, shape), 0);
}

static void hook_flatten(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_tensor *t = testmodel_find(f, mu->tensor);
    const int64_t shape[1] = {(int64_t)t->numel};
    ck_assert_int_eq(testmodel_reshape(t, 1, shape), 0);
}

static void hook_remove(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    ck_assert_int_eq(testmodel_remove(f, mu->tensor), 0);
}

static void hook_add(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    const int64_t shape[1] = {3};
    ck_assert_ptr_nonnull(testmodel_add(f, mu->tensor, 1, shape));
}

static void hook_meta(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_set_meta(f, mu->tensor, mu->text);
}

static void hook_no_meta(testmodel_file *f, void *user)
{
    while (f->nmeta)
        testmodel_set_meta(f, f->meta_key[0], NULL);
}

/* Row 1 := row 0, so the matrix is exactly singular. */
static void hook_singular(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_tensor *t = testmodel_find(f, mu->tensor);
    int C = (int)t->shape[0];
    memcpy(t->data + C, t->data, (size_t)C * sizeof *t->data);
}

/* diag(1, 1, 1, 1e-12): invertible in exact arithmetic, useless in float. */
static void hook_ill_conditioned(testmodel_file *f, void *user)
{
    const mutation *mu = user;
    testmodel_tensor *t = testmodel_find(f, mu->tensor);
    int C = (int)t->shape[0];
    for (int i = 0; i < C * C; i++)
        t->data[i] = i % (C + 1) == 0 ? 1.0f : 0.0f;
    t->data[C * C - 1] = 1e-12f;
}

static const char *const CFG_WIDTH16 =
    "{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":16,\"actnorm\":true}";
static const char *const CFG_NO_ACTNORM =
    "{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8,\"actnorm\":false}";
static const char *const CFG_MORE_STEPS =
    "{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,3],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}";

static const struct {
    testmodel_hook hook;
    mutation mu;
    const char *fragment;
} bad_models[] = {
    {hook_dtype_i32, {"levels.0.steps.0.conv1x1.weight", 0, 0, NULL},
     "tensor 'levels.0.steps.0.conv1x1.weight': dtype I32, expected F32"},
    {hook_dtype_f64, {"levels.1.steps.1.coupling.conv2.bias", 0, 0, NULL},
     "tensor 'levels.1.steps.1.coupling.conv2.bias': dtype F64, expected F32"},
    {hook_reshape, {"levels.0.steps.1.coupling.conv1.weight", 1, 0, NULL},
     "tensor 'levels.0.steps.1.coupling.conv1.weight': shape (8, 2, 3, 1), expected (8, 2, 3, 3)"},
    {hook_flatten, {"levels.1.steps.0.conv1x1.weight", 0, 0, NULL},
     "tensor 'levels.1.steps.0.conv1x1.weight': shape (64), expected (8, 8)"},
    {hook_reshape, {"levels.0.split.coupling.conv3.logs", 5, 0, NULL},
     "tensor 'levels.0.split.coupling.conv3.logs': shape (5), expected (4)"},
    {hook_remove, {"levels.1.steps.1.coupling.conv3.logs", 0, 0, NULL},
     "tensor 'levels.1.steps.1.coupling.conv3.logs' missing (expected shape (8))"},
    {hook_remove, {"levels.0.steps.0.finc.br", 0, 0, NULL},
     "tensor 'levels.0.steps.0.finc.br' missing (expected shape (1, 1, 3, 3))"},
    {hook_add, {"levels.0.steps.0.extra", 0, 0, NULL}, "unknown tensor 'levels.0.steps.0.extra'"},
    {hook_add, {"levels.1.split.coupling.conv1.bias", 0, 0, NULL}, "unknown tensor 'levels.1.split.coupling.conv1.bias'"},
    {hook_set_value, {"levels.0.steps.1.actnorm.translation", 2, NAN, NULL},
     "tensor 'levels.0.steps.1.actnorm.translation': non-finite value (NaN) at index 2"},
    {hook_set_value, {"levels.0.split.coupling.conv2.weight", 5, INFINITY, NULL},
     "tensor 'levels.0.split.coupling.conv2.weight': non-finite value (Inf) at index 5"},
    {hook_set_value, {"levels.1.steps.1.coupling.conv3.bias", 7, -INFINITY, NULL},
     "tensor 'levels.1.steps.1.coupling.conv3.bias': non-finite value (Inf) at index 7"},
    {hook_set_value, {"levels.0.steps.0.finc.tl", 8, 0.5f, NULL},
     "tensor 'levels.0.steps.0.finc.tl': current-pixel tap [0][0][2][2] is 0.5, must be 1"},
    /* BL's current pixel is [k-1][0] flipped in height: stored [0][2] */
    {hook_set_value, {"levels.0.steps.1.finc.bl", 2, 2.0f, NULL},
     "tensor 'levels.0.steps.1.finc.bl': current-pixel tap [0][0][0][2] is 2, must be 1"},
    /* level 1 has C = 8, two channels per quarter: W[0][1] at TR's tap [2][0] is above the diagonal */
    {hook_set_value, {"levels.1.steps.0.finc.tr", (0 * 2 + 1) * 9 + 2 * 3 + 0, 0.25f, NULL},
     "tensor 'levels.1.steps.0.finc.tr': current-pixel tap [0][1][2][0] is 0.25, must be 0"},
    {hook_set_value, {"levels.1.steps.1.finc.br", (0 * 2 + 1) * 9 + 0, -0.125f, NULL},
     "tensor 'levels.1.steps.1.finc.br': current-pixel tap [0][1][0][0] is -0.125, must be 0"},
    {hook_set_value, {"levels.1.steps.1.finc.tl", (1 * 2 + 1) * 9 + 8, 1.0f + 1e-6f, NULL},
     "tensor 'levels.1.steps.1.finc.tl': current-pixel tap [1][1][2][2] is 1.00000095, must be 1"},
    {hook_singular, {"levels.0.steps.1.conv1x1.weight", 0, 0, NULL},
     "tensor 'levels.0.steps.1.conv1x1.weight' is singular"},
    {hook_ill_conditioned, {"levels.1.steps.0.conv1x1.weight", 0, 0, NULL},
     "tensor 'levels.1.steps.0.conv1x1.weight' is singular or badly conditioned"},
    {hook_set_value, {"levels.1.steps.0.coupling.conv3.logs", 3, 40.0f, NULL},
     "tensor 'levels.1.steps.0.coupling.conv3.logs': exp(3*logs) overflows float at index 3"},
    {hook_set_value, {"levels.0.steps.0.actnorm.log_scale", 1, -100.0f, NULL},
     "tensor 'levels.0.steps.0.actnorm.log_scale': value -100 at index 1 is out of range"},
    {hook_meta, {"format", 0, 0, "safetensors"}, "metadata format is 'safetensors', expected 'finc-flow'"},
    {hook_meta, {"format", 0, 0, NULL}, "metadata 'format' missing"},
    {hook_meta, {"format_version", 0, 0, "2"}, "metadata format_version is '2', this loader reads '1'"},
    {hook_meta, {"format_version", 0, 0, NULL}, "metadata 'format_version' missing"},
    {hook_meta, {"config", 0, 0, NULL}, "metadata 'config' missing"},
    {hook_meta, {"config", 0, 0, "{\"image\": [1, 8"}, "config is not valid JSON"},
    {hook_meta, {"config", 0, 0, "[]"}, "config is not a JSON object"},
    {hook_meta, {"config", 0, 0, "{\"image\":[1,8,8],\"levels\":0,\"steps\":[],\"kernel\":3,\"coupling_width\":8,\"actnorm\":true}"},
     "config: 'levels' is 0"},
    {hook_meta, {"config", 0, 0, "{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,2],\"kernel\":3,\"coupling_width\":8}"},
     "config: 'actnorm' missing"},
    {hook_no_meta, {NULL, 0, 0, NULL}, "file has no __metadata__"},
};

START_TEST(test_bad_model)
{
    const char *fragment = bad_models[_i].fragment;
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write_hook(path, &sp, 5, bad_models[_i].hook, (void *)&bad_models[_i].mu), 0);
    finc_model m;
    memset(&m, 0x5a, sizeof m);   /* load must not trust what was there */
    int rc = finc_model_load(&m, path, err, sizeof err);
    if (rc == 0)
        finc_model_free(&m);
    ck_assert_msg(rc == -1, "loaded a corrupt file (wanted '%s')", fragment);
    ck_assert_msg(strstr(err, fragment) != NULL, "message '%s' lacks '%s'", err, fragment);
    ck_assert_ptr_null(m.block);
    ck_assert_ptr_null(m.cfg.json);
    ck_assert_ptr_null(m.cfg.metadata_json);
    for (int l = 0; l < FINC_MAX_LEVELS; l++)
        ck_assert_ptr_null(m.levels[l].steps);
    finc_model_free(&m);
}
END_TEST

/* The config disagrees with the tensors in the file. */
static const struct {
    const char *const *config;
    const char *fragment;
} mismatched[] = {
    {&CFG_WIDTH16, "tensor 'levels.0.steps.0.coupling.conv1.weight': shape (8, 2, 3, 3), expected (16, 2, 3, 3)"},
    {&CFG_NO_ACTNORM, "unknown tensor 'levels.0.steps.0.actnorm.translation'"},
    {&CFG_MORE_STEPS, "tensor 'levels.1.steps.2.finc.tl' missing"},
};

START_TEST(test_config_mismatch)
{
    testmodel_spec sp = testmodel_tiny();
    mutation mu = {"config", 0, 0, *mismatched[_i].config};
    ck_assert_int_eq(testmodel_write_hook(path, &sp, 6, hook_meta, &mu), 0);
    finc_model m;
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), -1);
    ck_assert_msg(strstr(err, mismatched[_i].fragment) != NULL, "message '%s' lacks '%s'", err,
                  mismatched[_i].fragment);
    ck_assert_ptr_null(m.block);
}
END_TEST

START_TEST(test_file_level_errors)
{
    finc_model m;
    ck_assert_int_eq(finc_model_load(&m, "/nonexistent/model.safetensors", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), -1);   /* the fixture's empty file */
    ck_assert_ptr_nonnull(strstr(err, "too short"));

    /* a valid model with bytes appended */
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write(path, &sp, 9), 0);
    FILE *fp = fopen(path, "ab");
    ck_assert_ptr_nonnull(fp);
    fputs("junk", fp);
    fclose(fp);
    ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "4 trailing bytes after the last tensor"));
    ck_assert_ptr_null(m.block);
}
END_TEST

START_TEST(test_reload_many)
{
    /* load and free repeatedly: leaks show under make asan */
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write(path, &sp, 10), 0);
    for (int i = 0; i < 5; i++) {
        finc_model m;
        ck_assert_int_eq(finc_model_load(&m, path, err, sizeof err), 0);
        finc_model_free(&m);
    }
}
END_TEST

/* Random single-byte changes (half of them in the header) and truncations
 * of a valid file: each load returns 0 or -1 with a message, never crashes;
 * run under make asan for the memory side. */
START_TEST(test_byte_flips)
{
    testmodel_spec sp = testmodel_tiny();
    ck_assert_int_eq(testmodel_write(path, &sp, 11), 0);
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    static unsigned char orig[1 << 20], buf[1 << 20];
    size_t size = fread(orig, 1, sizeof orig, fp);
    fclose(fp);
    ck_assert_uint_gt(size, 64);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | orig[i];
    uint64_t r = 12345;
    int loaded = 0;
    for (int it = 0; it < 600; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t x = r >> 24;
        size_t n = size;
        memcpy(buf, orig, size);
        if (it % 3 == 2) {
            n = (size_t)(x % size);
        } else {
            size_t pos = it % 2 ? (size_t)(x % (hlen + 8)) : (size_t)(x % size);
            buf[pos] ^= (unsigned char)(1u << (x >> 32) % 8);
        }
        fp = fopen(path, "wb");
        ck_assert_uint_eq(fwrite(buf, 1, n, fp), n);
        fclose(fp);
        finc_model m;
        err[0] = 0;
        if (finc_model_load(&m, path, err, sizeof err) == 0) {
            loaded++;
            finc_model_free(&m);
        } else {
            ck_assert_msg(err[0] != 0, "iteration %d failed without a message", it);
        }
    }
    ck_assert_int_lt(loaded, 600);
}
END_TEST

static Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_config_parse);
    tcase_add_loop_test(tc, test_config_bad, 0, (int)(sizeof bad_configs / sizeof bad_configs[0]));
    tcase_add_test(tc, test_config_null);
    tcase_add_test(tc, test_each_tensor);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_load_tiny);
    tcase_add_test(tc, test_load_shapes);
    tcase_add_test(tc, test_tl_flips);
    tcase_add_test(tc, test_load_f16);
    tcase_add_test(tc, test_load_bf16);
    tcase_add_test(tc, test_test_bpd);
    tcase_add_test(tc, test_test_bpd_values);
    tcase_add_loop_test(tc, test_bad_model, 0, (int)(sizeof bad_models / sizeof bad_models[0]));
    tcase_add_loop_test(tc, test_config_mismatch, 0, (int)(sizeof mismatched / sizeof mismatched[0]));
    tcase_add_test(tc, test_file_level_errors);
    tcase_add_test(tc, test_reload_many);
    tcase_add_test(tc, test_byte_flips);
    suite_add_tcase(s, tc);
    return s;
}

#include "tests/check_main.h"
FINC_CHECK_MAIN(model_suite)
