/* Writes the fuzz targets' starting corpora (make fuzz) with the project's own
 * writers: valid inputs the fuzzer mutates from.
 *   seeds DIR   -> DIR/weights, DIR/config, DIR/png, DIR/npy, DIR/idx, DIR/multipart, DIR/http */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io/npy.h"
#include "io/png.h"
#include "server/base64.h"
#include "tests/testmodel.h"

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

    png("gray-28.png", 1, 28, 28);
    png("color-28.png", 3, 28, 28);
    png("gray-5x3.png", 1, 5, 3);

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
    };
    for (size_t i = 0; i < sizeof mp / sizeof mp[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "body-%zu", i);
        put("multipart", name, mp[i], strlen(mp[i]));
    }
    return 0;
}
