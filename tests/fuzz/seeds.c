/* Writes the fuzz targets' starting corpora (make fuzz) with the project's own
 * writers: valid inputs the fuzzer mutates from.
 *   seeds DIR   -> DIR/weights, DIR/config, DIR/anomaly, DIR/png, DIR/npy, DIR/idx, DIR/multipart,
 *                  DIR/http */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "engine/anomaly.h"
#include "io/npy.h"
#include "io/png.h"
#include "server/base64.h"
#include "tests/testmodel.h"
#include "tests/testpng.h"

static const char *dir;

static void put(const char *target, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", dir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* A weights file, and its config JSON for the config target. */
static void weights(const char *name, testmodel_spec s)
{
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/weights", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/weights/%s", dir, name);
    if (testmodel_write(path, &s, 1) != 0) exit(1);
    finc_st f;
    if (finc_st_open(&f, path, err, sizeof err) != 0) {
        fprintf(stderr, "seeds: %s\n", err);
        exit(1);
    }
    const char *config = finc_st_meta(&f, "config");
    char json_name[256];
    snprintf(json_name, sizeof json_name, "%.*s.json", (int)(strcspn(name, ".")), name);
    if (config) put("config", json_name, config, strlen(config));
    finc_st_close(&f);
}

/* An anomaly block fitted by finc_anomaly_fit for the config JSON, on n
 * images of which the first n_fit are the fit set: pseudo-random statistics
 * and pixels from seed, into *a and *cfg (the caller frees both); exits on failure. */
static void anomaly_fit(struct finc_anomaly *a, finc_config *cfg, const char *config_json, int n, int n_fit,
                        const char *data, uint32_t seed)
{
    char err[256];
    if (finc_config_parse(cfg, config_json, err, sizeof err) != 0) {
        fprintf(stderr, "seeds: %s\n", err);
        exit(1);
    }
    const int d = finc_anomaly_feature_count(cfg), base = finc_anomaly_base_count(cfg);
    const size_t D = (size_t)finc_config_dim(cfg);
    double *feat = calloc((size_t)n * d, sizeof *feat);
    uint8_t *pixels = malloc((size_t)n * D);
    if (!feat || !pixels) exit(1);
    uint32_t h = seed ? seed : 1;  /* xorshift */
#define NEXT() (h ^= h << 13, h ^= h >> 17, h ^= h << 5, h)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < base; j++) feat[(size_t)i * d + j] = (double)NEXT() / 4294967296.0 * (j + 1) - 0.5 * j;
    for (size_t i = 0; i < (size_t)n * D; i++) pixels[i] = (uint8_t)(NEXT() >> 24);
#undef NEXT
    if (finc_anomaly_fit(a, cfg, feat, pixels, n, n_fit, data, err, sizeof err) != 0) {
        fprintf(stderr, "seeds: finc_anomaly_fit: %s\n", err);
        exit(1);
    }
    free(feat);
    free(pixels);
}

static void put_block(const char *name, const struct finc_anomaly *a, const finc_config *cfg, size_t keep)
{
    char *json = finc_anomaly_to_json(a, cfg);
    if (!json) {
        fprintf(stderr, "seeds: finc_anomaly_to_json failed\n");
        exit(1);
    }
    const size_t len = strlen(json);
    put("anomaly", name, json, keep && keep < len ? keep : len);
    free(json);
}

/* Blocks for fuzz_anomaly's model (1 x 8 x 8, 2 levels of 1 step: 44
 * features, so at least 88 fit images): valid ones, and ones it refuses. */
static void anomaly_seeds(void)
{
    static const char config[] = "{\"image\":[1,8,8],\"levels\":2,\"steps\":[1,1],\"kernel\":3,"
                                 "\"coupling_width\":8,\"actnorm\":true}";
    struct finc_anomaly a;
    finc_config cfg;
    anomaly_fit(&a, &cfg, config, 110, 100, "seed", 1);
    put_block("valid.json", &a, &cfg, 0);
    put_block("truncated.json", &a, &cfg, 2000);
    char *json = finc_anomaly_to_json(&a, &cfg), *m = json ? strstr(json, FINC_ANOMALY_METHOD) : NULL;
    if (!m) exit(1);
    memcpy(m, "whitened-gaussian-kdf", strlen(FINC_ANOMALY_METHOD));
    put("anomaly", "wrong-method.json", json, strlen(json));
    free(json);
    a.cal[0] = a.cal[a.n_cal - 1] + 1;  /* no longer ascending */
    put_block("unsorted-calibration.json", &a, &cfg, 0);
    a.cal[0] = a.cal[1] - 1;
    a.whiten[1] = 0.5;  /* above the diagonal */
    put_block("whiten-not-triangular.json", &a, &cfg, 0);
    finc_anomaly_free(&a);
    finc_config_free(&cfg);

    anomaly_fit(&a, &cfg, config, 101, 100, "one \"calibration\" image\n\u00e9", 2);
    put_block("valid-one-calibration.json", &a, &cfg, 0);
    finc_anomaly_free(&a);
    finc_config_free(&cfg);

    /* A model with one more step: 45 features, not this one's 44. */
    static const char config3[] = "{\"image\":[1,8,8],\"levels\":2,\"steps\":[2,1],\"kernel\":3,"
                                  "\"coupling_width\":8,\"actnorm\":true}";
    anomaly_fit(&a, &cfg, config3, 110, 100, "seed", 3);
    put_block("wrong-feature-count.json", &a, &cfg, 0);
    finc_anomaly_free(&a);
    finc_config_free(&cfg);
}

/* A PNG of C x H x W; the caller frees it. */
static uint8_t *png_bytes(int C, int H, int W, size_t *len)
{
    uint8_t px[3 * 28 * 28];
    for (int i = 0; i < C * H * W; i++) px[i] = (uint8_t)(i * 37);
    uint8_t *out;
    char err[256];
    if (finc_png_encode(px, C, H, W, &out, len, err, sizeof err) != 0) {
        fprintf(stderr, "seeds: %s\n", err);
        exit(1);
    }
    return out;
}

static void png(const char *name, int C, int H, int W)
{
    size_t len;
    uint8_t *out = png_bytes(C, H, W, &len);
    put("png", name, out, len);
    free(out);
}

/* A 28x28 PNG written by libpng itself in any colour type, bit depth and
 * interlacing (with a tRNS chunk where the type takes one), so the decoder's
 * every conversion has a seed to start from. */
static void png_typed(const char *name, int color, int depth, int interlace)
{
    enum { S = 28 };
    png_color pal[256];
    png_byte alpha[256];
    for (int i = 0; i < 256; i++) {
        pal[i].red = (png_byte)i, pal[i].green = (png_byte)(255 - i), pal[i].blue = (png_byte)(i * 7);
        alpha[i] = (png_byte)(255 - i / 2);
    }
    const int npal = 1 << (depth < 8 ? depth : 8), palette = color == PNG_COLOR_TYPE_PALETTE;
    const png_color_16 key = {.gray = 1, .red = 1, .green = 2, .blue = 3};
    const int keyed = color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_RGB;
    const int channels = color == PNG_COLOR_TYPE_RGB ? 3 : color == PNG_COLOR_TYPE_RGB_ALPHA ? 4
                         : color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
    const size_t rowbytes = ((size_t)S * channels * depth + 7) / 8;
    uint8_t *raw = malloc(rowbytes * S);
    for (size_t i = 0; i < rowbytes * S; i++) raw[i] = (uint8_t)(i * 37 + i / 7);
    size_t len;
    uint8_t *out = testpng_write(S, S, color, depth, interlace, raw, palette ? pal : NULL, npal,
                                 palette ? alpha : NULL, npal, keyed ? &key : NULL, &len);
    put("png", name, out, len);
    free(out);
    free(raw);
}

/* An HTTP request with a body: the headers, Content-Length, then the body. */
static void request(const char *name, const char *head, const void *body, size_t len)
{
    char *r = malloc(strlen(head) + 64 + len);
    int n = sprintf(r, "%sContent-Length: %zu\r\n\r\n", head, len);
    memcpy(r + n, body, len);
    put("http", name, r, (size_t)n + len);
    free(r);
}

/* Requests to the tiny test model (1 x 8 x 8) that the fuzz_http server runs. */
static void http_seeds(void)
{
    static const char *gets[] = {"/healthz", "/readyz", "/metrics", "/v1/models", "/nope"};
    for (size_t i = 0; i < sizeof gets / sizeof gets[0]; i++) {
        char r[256], name[32];
        snprintf(r, sizeof r, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", gets[i]);
        snprintf(name, sizeof name, "get-%zu", i);
        put("http", name, r, strlen(r));
    }
    const char *js = "{\"n\": 3, \"temperature\": 0.7, \"seed\": 42}";
    request("sample-json", "POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n", js,
            strlen(js));
    request("sample-png", "POST /sample HTTP/1.1\r\nHost: x\r\nAccept: image/png\r\nX-Finc-Timeout-Ms: 500\r\n",
            "{\"n\": 2}", 8);
    size_t len;
    uint8_t *p = png_bytes(1, 8, 8, &len);
    request("score-png", "POST /log-likelihood?samples=2&seed=1 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n",
            p, len);
    char *b64 = malloc(finc_base64_encoded_len(len) + 1), *body = malloc(2 * len + 64);
    finc_base64_encode(p, len, b64);
    b64[finc_base64_encoded_len(len)] = 0;
    sprintf(body, "{\"images\": [\"%s\"], \"samples\": 1}", b64);
    request("score-json", "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n", body,
            strlen(body));
    static const char pre[] = "--b0\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.png\"\r\n"
                              "Content-Type: image/png\r\n\r\n";
    static const char post[] = "\r\n--b0\r\nContent-Disposition: form-data; name=\"samples\"\r\n\r\n2\r\n--b0--\r\n";
    char *mp = malloc(sizeof pre + len + sizeof post);
    memcpy(mp, pre, sizeof pre - 1);
    memcpy(mp + sizeof pre - 1, p, len);
    memcpy(mp + sizeof pre - 1 + len, post, sizeof post - 1);
    request("score-multipart",
            "POST /log-likelihood HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b0\r\n", mp,
            sizeof pre - 1 + len + sizeof post - 1);
    free(mp), free(b64), free(body), free(p);
    /* framing a proxy and the server could read two ways, and other head shapes */
    static const char *const heads[] = {
        "POST /sample HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"n\": 1}\r\n0\r\n\r\n",
        "POST /sample HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8;ext=1\r\n{\"n\": 1}\r\n0\r\nT: 1\r\n\r\n",
        "POST /sample HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n{\"n\": 1}",
        "POST /sample HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nContent-Length: 9\r\n\r\n{\"n\": 1}",
        "POST /sample HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /sample HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
        "GET /v1/models HTTP/1.0\r\n\r\n",
        "GET /v1/models HTTP/1.1\nHost: x\n\n",
        "GET http://x/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /sample HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n{\"n\": 1}",
        "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nPOST /sample HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{\"n\": 1}",
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "framing-%zu", i);
        put("http", name, heads[i], strlen(heads[i]));
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seeds DIR\n");
        return 2;
    }
    dir = argv[1];
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        perror(dir);
        return 1;
    }
    testmodel_spec s = testmodel_tiny();
    weights("tiny.safetensors", s);
    s.dtype = FINC_ST_F16;
    s.levels = 1;
    weights("tiny-f16-one-level.safetensors", s);

    anomaly_seeds();

    png("gray-28.png", 1, 28, 28);
    png("color-28.png", 3, 28, 28);
    png("gray-5x3.png", 1, 5, 3);
    static const struct {
        const char *name;
        int color, depth, interlace;
    } typed[] = {
        {"gray1.png", PNG_COLOR_TYPE_GRAY, 1, 0},           {"gray2.png", PNG_COLOR_TYPE_GRAY, 2, 0},
        {"gray4.png", PNG_COLOR_TYPE_GRAY, 4, 0},           {"gray16.png", PNG_COLOR_TYPE_GRAY, 16, 0},
        {"gray8-adam7.png", PNG_COLOR_TYPE_GRAY, 8, 1},     {"rgb16.png", PNG_COLOR_TYPE_RGB, 16, 0},
        {"rgb8-adam7.png", PNG_COLOR_TYPE_RGB, 8, 1},       {"palette1.png", PNG_COLOR_TYPE_PALETTE, 1, 0},
        {"palette4.png", PNG_COLOR_TYPE_PALETTE, 4, 0},     {"palette8.png", PNG_COLOR_TYPE_PALETTE, 8, 1},
        {"gray-alpha8.png", PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0}, {"gray-alpha16.png", PNG_COLOR_TYPE_GRAY_ALPHA, 16, 0},
        {"rgba8.png", PNG_COLOR_TYPE_RGB_ALPHA, 8, 0},       {"rgba16-adam7.png", PNG_COLOR_TYPE_RGB_ALPHA, 16, 1},
    };
    for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++)
        png_typed(typed[i].name, typed[i].color, typed[i].depth, typed[i].interlace);

    float x[2 * 6];
    for (int i = 0; i < 12; i++) x[i] = (float)i - 5.5f;
    uint8_t *npy;
    size_t len;
    char err[256];
    if (finc_npy_encode_f32(x, 2, 6, &npy, &len, err, sizeof err) != 0) {
        fprintf(stderr, "seeds: %s\n", err);
        return 1;
    }
    put("npy", "2x6.npy", npy, len);
    free(npy);
    /* an image set: uint8 (2, 3, 2, 2), as np.save writes it */
    static const char dict[] = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 2, 2), }";
    uint8_t u8[128] = "\x93NUMPY\x01\x00";
    const size_t hl = 128 - 24 - 10;
    u8[8] = (uint8_t)hl;
    memset(u8 + 10, ' ', hl);
    memcpy(u8 + 10, dict, sizeof dict - 1);
    u8[10 + hl - 1] = '\n';
    for (int i = 0; i < 24; i++) u8[10 + hl + (size_t)i] = (uint8_t)(i * 10);
    put("npy", "images-2x3x2x2.npy", u8, sizeof u8);

    /* IDX: 2 images of 3x4 (magic 0x00000803), plain and gzip; 3 labels. */
    uint8_t idx[16 + 24] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4};
    for (int i = 0; i < 24; i++) idx[16 + i] = (uint8_t)(i * 11);
    put("idx", "images.idx", idx, sizeof idx);
    uint8_t gz[256];
    z_stream z = {0};
    if (deflateInit2(&z, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 1;
    z.next_in = idx, z.avail_in = sizeof idx, z.next_out = gz, z.avail_out = sizeof gz;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) return 1;
    put("idx", "images.idx.gz", gz, sizeof gz - z.avail_out);
    deflateEnd(&z);
    const uint8_t labels[] = {0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9};
    put("idx", "labels.idx", labels, sizeof labels);

    http_seeds();

    const char *mp[] = {
        "multipart/form-data; boundary=XyZ\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
        "Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\r\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"samples\"\r\n\r\n4\r\n--XyZ--\r\n",
        "multipart/form-data; boundary=\"quoted b\"; charset=utf-8\n"
        "preamble\r\n--quoted b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n"
        "aGVsbG8=\r\n--quoted b--\r\nepilogue",
        "application/json\n{\"images\": [\"iVBORw0KGgo=\", \"data:image/png;base64,AQID\"], \"samples\": 4, "
        "\"seed\": 7, \"alpha\": 0.05}",
        "application/json\n{\"n\": 4, \"temperature\": 0.7, \"seed\": null}",
    };
    for (size_t i = 0; i < sizeof mp / sizeof mp[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "body-%zu", i);
        put("multipart", name, mp[i], strlen(mp[i]));
    }
    return 0;
}
