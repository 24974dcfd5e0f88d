/* The server's parts that need no socket: base64, multipart, Accept
 * negotiation, the bearer-token check, configuration parsing, and the
 * metrics exposition. Inputs are the malformed ones a client can send. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/base64.h"
#include "server/config.h"
#include "server/httputil.h"
#include "server/inference.h"
#include "server/metrics.h"
#include "server/multipart.h"
#include "tests/check_main.h"

START_TEST(base64_round_trip_and_rejects)
{
    uint8_t in[300], out[300 + 3];
    char enc[420], err[128];
    for (int i = 0; i < 300; i++) in[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= 300; n += (n < 10 ? 1 : 37)) {
        finc_base64_encode(in, n, enc);
        ck_assert_uint_eq(strlen(enc), finc_base64_encoded_len(n));
        long m = finc_base64_decode(enc, strlen(enc), out, err, sizeof err);
        ck_assert_int_eq(m, (long)n);
        ck_assert(memcmp(in, out, n) == 0);
        /* unpadded decodes the same */
        size_t len = strlen(enc);
        while (len && enc[len - 1] == '=') len--;
        ck_assert_int_eq(finc_base64_decode(enc, len, out, err, sizeof err), (long)n);
    }
    finc_base64_encode((const uint8_t *)"foobar", 6, enc);
    ck_assert_str_eq(enc, "Zm9vYmFy");
    finc_base64_encode((const uint8_t *)"fo", 2, enc);
    ck_assert_str_eq(enc, "Zm8=");
    const char *bad[] = {"Zm9v YmFy", "Zm9vY", "Zm=9v", "Zm9vYmFy\n", "Zg===", "Z", "@@@@"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(finc_base64_decode(bad[i], strlen(bad[i]), out, err, sizeof err) < 0, "'%s' accepted", bad[i]);
    ck_assert_ptr_nonnull(strstr((finc_base64_decode("ab!d", 4, out, err, sizeof err), err), "'!' at offset 2"));
    ck_assert_ptr_nonnull(strstr((finc_base64_decode("Zm9vYmFy\n", 9, out, err, sizeof err), err),
                                 "whitespace at offset 8"));
    ck_assert_ptr_nonnull(strstr((finc_base64_decode("Zm9v YmFy", 9, out, err, sizeof err), err), "whitespace at offset 4"));
}
END_TEST

START_TEST(multipart_parts_and_errors)
{
    char b[FINC_MULTIPART_BOUNDARY_MAX + 1], err[256];
    ck_assert_int_eq(finc_multipart_boundary("multipart/form-data; boundary=abc", b, err, sizeof err), 0);
    ck_assert_str_eq(b, "abc");
    ck_assert_int_eq(finc_multipart_boundary("multipart/form-data; charset=x; boundary=\"a b;c\"", b, err, sizeof err), 0);
    ck_assert_str_eq(b, "a b;c");
    ck_assert_int_eq(finc_multipart_boundary("multipart/form-data", b, err, sizeof err), -1);
    ck_assert_int_eq(finc_multipart_boundary("multipart/form-data; boundary=", b, err, sizeof err), -1);
    char longb[200];
    memset(longb, 'x', sizeof longb);
    snprintf(longb, sizeof longb, "multipart/form-data; boundary=%0100d", 7);
    ck_assert_int_eq(finc_multipart_boundary(longb, b, err, sizeof err), -1);

    const char body[] = "preamble\r\n--XX\r\n"
                        "Content-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\n"
                        "Content-Type: image/png\r\n\r\n"
                        "A\r\nB--X\r\n"
                        "--XX\r\n"
                        "Content-Disposition: form-data; name=\"samples\"\r\n\r\n"
                        "4\r\n"
                        "--XX--\r\nepilogue";
    finc_part parts[4];
    int n = finc_multipart_parse((const uint8_t *)body, sizeof body - 1, "XX", parts, 4, err, sizeof err);
    ck_assert_msg(n == 2, "%d: %s", n, err);
    ck_assert_str_eq(parts[0].name, "f");
    ck_assert_str_eq(parts[0].filename, "a.png");
    ck_assert_int_eq(parts[0].has_filename, 1);
    ck_assert_str_eq(parts[0].content_type, "image/png");
    ck_assert_uint_eq(parts[0].len, 7);
    ck_assert(memcmp(parts[0].data, "A\r\nB--X", 7) == 0);
    ck_assert_str_eq(parts[1].name, "samples");
    ck_assert_int_eq(parts[1].has_filename, 0);
    ck_assert_uint_eq(parts[1].len, 1);
    /* too many parts */
    ck_assert_int_eq(finc_multipart_parse((const uint8_t *)body, sizeof body - 1, "XX", parts, 1, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "too many parts"));

    struct {
        const char *body, *why;
    } bad[] = {
        {"", "no boundary"},
        {"--XX", "ends"},
        {"--XXjunk\r\n", "no CRLF"},
        {"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ndata", "no closing boundary"},
        {"--XX\r\n\r\ndata\r\n--XX--", "no Content-Disposition"},
        {"--XX\r\nContent-Type: image/png\r\n\r\ndata\r\n--XX--", "no Content-Disposition"},
        {"--XX\r\nContent-Disposition: attachment\r\n\r\nd\r\n--XX--", "not form-data"},
        {"--XX\r\nno colon here\r\n\r\nd\r\n--XX--", "without ':'"},
        {"--XX\r\nContent-Disposition: form-data; name=\"unterminated\r\n\r\nd\r\n--XX--", "parameters"},
        {"--XX\r\nContent-Disposition: form-data; name=a", "do not end"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = finc_multipart_parse((const uint8_t *)bad[i].body, strlen(bad[i].body), "XX", parts, 4, err, sizeof err);
        ck_assert_msg(n == -1, "case %zu parsed (%d)", i, n);
        ck_assert_msg(strstr(err, bad[i].why) != NULL, "case %zu: '%s' lacks '%s'", i, err, bad[i].why);
    }
    /* a header line longer than the cap, and headers that never end */
    char *huge = malloc(20000);
    int k = sprintf(huge, "--XX\r\nContent-Disposition: form-data; name=\"");
    memset(huge + k, 'a', 15000);
    strcpy(huge + k + 15000, "\"\r\n\r\nd\r\n--XX--");
    ck_assert_int_eq(finc_multipart_parse((const uint8_t *)huge, strlen(huge), "XX", parts, 4, err, sizeof err), -1);
    free(huge);

    ck_assert(finc_media_is("Image/PNG", "image/png"));
    ck_assert(finc_media_is(" image/png ; q=1", "image/png"));
    ck_assert(!finc_media_is("image/pngx", "image/png"));
    ck_assert(!finc_media_is(NULL, "image/png"));
}
END_TEST

START_TEST(accept_negotiation)
{
    struct {
        const char *accept;
        int png;
    } cases[] = {
        {NULL, 0}, {"", 0}, {"*/*", 0}, {"application/json", 0}, {"image/png", 1}, {"image/*", 1},
        {"image/png, application/json", 1}, {"application/json, image/png", 0},
        {"image/png;q=0.5, application/json", 0}, {"application/json;q=0.1, image/png", 1},
        {"text/html", -1}, {"image/png;q=0", -1}, {"text/html, */*;q=0.1", 0}, {"image/*, application/*", 0},
        {"IMAGE/PNG", 1}, {"image/webp, image/png;q=0.9", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(finc_accept_png(cases[i].accept) == cases[i].png, "Accept '%s': %d", cases[i].accept,
                      finc_accept_png(cases[i].accept));
}
END_TEST

START_TEST(bearer_check)
{
    ck_assert(finc_bearer_ok("Bearer k3y", "k3y"));
    ck_assert(finc_bearer_ok("bearer  k3y ", "k3y"));
    ck_assert(!finc_bearer_ok("Bearer k3", "k3y"));
    ck_assert(!finc_bearer_ok("Bearer k3yy", "k3y"));
    ck_assert(!finc_bearer_ok("Bearer K3Y", "k3y"));
    ck_assert(!finc_bearer_ok("Bearer ", "k3y"));
    ck_assert(!finc_bearer_ok("Token k3y", "k3y"));
    ck_assert(!finc_bearer_ok(NULL, "k3y"));
    ck_assert(!finc_bearer_ok("Bearer ", ""));
    /* a token that repeats the key's prefix cyclically must not pass */
    ck_assert(!finc_bearer_ok("Bearer ab", "abab"));
    /* several keys, one per line: any of them, nothing between or around them */
    ck_assert(finc_bearer_ok("Bearer old-key", "old-key\nnew-key"));
    ck_assert(finc_bearer_ok("Bearer new-key", "old-key\nnew-key"));
    ck_assert(!finc_bearer_ok("Bearer old-key\nnew-key", "old-key\nnew-key"));
    ck_assert(!finc_bearer_ok("Bearer key", "old-key\nnew-key"));
    ck_assert(!finc_bearer_ok("Bearer ", "old-key\nnew-key"));
}
END_TEST

START_TEST(utf8_sanitize)
{
    struct {
        const char *in, *want;
    } cases[] = {
        {"plain", "plain"},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
        {"a\xff" "b", "a?b"},
        {"\xc0\x80", "??"},          /* overlong NUL */
        {"\xed\xa0\x80" "x", "???x"},   /* a surrogate */
        {"cut \xe2\x82", "cut ??"},  /* a sequence cut short */
        {"\xf5\x80\x80\x80", "????"},  /* past U+10FFFF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s", cases[i].in);
        finc_utf8_sanitize(buf);
        ck_assert_msg(strcmp(buf, cases[i].want) == 0, "case %zu: '%s'", i, buf);
    }
    char out[64];
    ck_assert_str_eq(finc_json_escape("x\xff\"y", out, sizeof out), "x?\\\"y");
}
END_TEST

START_TEST(json_escape_and_numbers)
{
    char out[64];
    ck_assert_str_eq(finc_json_escape("a\"b\\c\nd\x01", out, sizeof out), "a\\\"b\\\\c\\nd\\u0001");
    ck_assert_uint_le(strlen(finc_json_escape("0123456789012345678901234567890123456789", out, 16)), 15);
    double v;
    ck_assert_int_eq(finc_parse_positive("250", 1000, &v), 0);
    ck_assert(v == 250);
    ck_assert_int_eq(finc_parse_positive(" 1.5 ", 1000, &v), 0);
    const char *bad[] = {"0", "-1", "abc", "", "1e9", "nan", "inf", "5ms"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(finc_parse_positive(bad[i], 1000, &v) == -1, "'%s'", bad[i]);
}
END_TEST

START_TEST(config_env_flags_and_checks)
{
    finc_server_config c;
    char err[512];
    finc_server_config_defaults(&c);
    ck_assert_int_eq(finc_server_config_check(&c, err, sizeof err), 0);
    setenv("FINC_PORT", "9001", 1);
    setenv("FINC_MAX_BODY", "2M", 1);
    setenv("FINC_MAX_DELAY_MS", "2.5", 1);
    setenv("FINC_API_KEY", "env-key", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), 0);
    ck_assert_int_eq(c.port, 9001);
    ck_assert_int_eq(c.max_body, 2L << 20);
    ck_assert(c.max_delay_ms == 2.5);
    ck_assert_str_eq(c.api_key, "env-key");
    setenv("FINC_PORT", "70000", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "FINC_PORT"));
    unsetenv("FINC_PORT");
    unsetenv("FINC_MAX_BODY");
    unsetenv("FINC_MAX_DELAY_MS");
    unsetenv("FINC_API_KEY");

    char *ok[] = {"serve", "--port", "0", "--max-batch=8", "--weights", "w.safetensors", "--log", "off", NULL};
    ck_assert_int_eq(finc_server_config_args(&c, 8, ok, err, sizeof err), 0);
    ck_assert_int_eq(c.port, 0);
    ck_assert_int_eq(c.max_batch, 8);
    ck_assert_str_eq(c.weights, "w.safetensors");
    char *help[] = {"serve", "--help", NULL};
    ck_assert_int_eq(finc_server_config_args(&c, 2, help, err, sizeof err), 1);
    struct {
        char *a, *b;
        const char *why;
    } bad[] = {
        {"--port", "-1", "--port"}, {"--max-batch", "0", "--max-batch"}, {"--max-batch", "x", "--max-batch"},
        {"--max-body", "12Q", "--max-body"}, {"--bogus", "1", "unknown option"}, {"--port", NULL, "needs a value"},
        {"stray", NULL, "unexpected argument"}, {"--max-delay-ms", "nan", "--max-delay-ms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"serve", bad[i].a, bad[i].b, NULL};
        ck_assert_int_eq(finc_server_config_args(&c, bad[i].b ? 3 : 2, argv, err, sizeof err), -1);
        ck_assert_msg(strstr(err, bad[i].why) != NULL, "case %zu: '%s'", i, err);
    }
    /* keys: FINC_API_KEY is the key itself, FINC_API_KEY_FILE a file of them */
    char dir[] = "/tmp/finc-keys-XXXXXX", path[64], empty[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/keys", dir);
    snprintf(empty, sizeof empty, "%s/empty", dir);
    FILE *f = fopen(path, "w");
    fputs("# rotated on Monday\n  old-key  \n\nnew-key\r\n", f);
    fclose(f);
    fclose(fopen(empty, "w"));
    finc_server_config_defaults(&c);
    setenv("FINC_API_KEY_FILE", path, 1);
    ck_assert_msg(finc_server_config_env(&c, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(c.api_key, "old-key\nnew-key");
    setenv("FINC_API_KEY", "k", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "both set") != NULL, "%s", err);
    unsetenv("FINC_API_KEY");
    setenv("FINC_API_KEY_FILE", empty, 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "holds no key") && strstr(err, empty), "%s", err);
    setenv("FINC_API_KEY_FILE", "/nonexistent/keys", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "/nonexistent/keys") && strstr(err, "No such file"), "%s", err);
    unsetenv("FINC_API_KEY_FILE");
    /* the path of a secret given as the key itself is refused, not used as the token */
    setenv("FINC_API_KEY", path, 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "FINC_API_KEY_FILE=") != NULL, "%s", err);
    setenv("FINC_API_KEY", "has space", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "printable ASCII") != NULL, "%s", err);
    unsetenv("FINC_API_KEY");
    char *flag[] = {"serve", "--api-key-file", path, NULL};
    finc_server_config_defaults(&c);
    ck_assert_int_eq(finc_server_config_args(&c, 3, flag, err, sizeof err), 0);
    ck_assert_str_eq(c.api_key, "old-key\nnew-key");
    char *flag_empty[] = {"serve", "--api-key-file", empty, NULL};
    ck_assert_int_eq(finc_server_config_args(&c, 3, flag_empty, err, sizeof err), -1);
    unlink(path);
    unlink(empty);
    rmdir(dir);

    finc_server_config_defaults(&c);
    c.queue_size = 10;
    ck_assert_int_eq(finc_server_config_check(&c, err, sizeof err), -1);
    finc_server_config_defaults(&c);
    snprintf(c.backend, sizeof c.backend, "tpu");
    ck_assert_int_eq(finc_server_config_check(&c, err, sizeof err), -1);
    /* the page: on by default, --ui off, nothing else */
    finc_server_config_defaults(&c);
    ck_assert_str_eq(c.ui, "on");
    char *ui_off[] = {"serve", "--ui", "off", NULL};
    ck_assert_int_eq(finc_server_config_args(&c, 3, ui_off, err, sizeof err), 0);
    ck_assert_str_eq(c.ui, "off");
    ck_assert_int_eq(finc_server_config_check(&c, err, sizeof err), 0);
    setenv("FINC_UI", "no", 1);
    ck_assert_int_eq(finc_server_config_env(&c, err, sizeof err), 0);
    unsetenv("FINC_UI");
    ck_assert_int_eq(finc_server_config_check(&c, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "ui must be on or off, got 'no'") != NULL, "%s", err);
}
END_TEST

START_TEST(metrics_exposition)
{
    finc_metrics *m = finc_metrics_new(64);
    ck_assert_ptr_nonnull(m);
    finc_metrics_set_info(m, "1.2.3", "cpu", "we\"ird\\name");
    finc_metrics_request(m, FINC_EP_SAMPLE, 200, 0.004, FINC_ERR_NONE);
    finc_metrics_request(m, FINC_EP_SAMPLE, 200, 0.5, FINC_ERR_NONE);
    finc_metrics_request(m, FINC_EP_SCORE, 400, 0.001, FINC_ERR_BAD_REQUEST);
    finc_metrics_batch(m, 1, 5, 0.01);
    finc_metrics_batch(m, 1, 64, 0.2);
    finc_metrics_batch(m, 1, 1, 0.001);
    finc_metrics_dropped(m, 0, FINC_DROP_EXPIRED, 3);
    size_t len;
    char *t = finc_metrics_render(m, &len);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(strlen(t), len);
    const char *must[] = {
        "finc_build_info{version=\"1.2.3\",backend=\"cpu\",model=\"we\\\"ird\\\\name\"} 1\n",
        "finc_http_request_duration_seconds_bucket{endpoint=\"/sample\",code=\"200\",le=\"0.005\"} 1\n",
        "finc_http_request_duration_seconds_bucket{endpoint=\"/sample\",code=\"200\",le=\"0.5\"} 2\n",
        "finc_http_request_duration_seconds_bucket{endpoint=\"/sample\",code=\"200\",le=\"+Inf\"} 2\n",
        "finc_http_request_duration_seconds_count{endpoint=\"/sample\",code=\"200\"} 2\n",
        "finc_http_errors_total{endpoint=\"/log-likelihood\",reason=\"bad_request\"} 1\n",
        "finc_batch_size_bucket{kind=\"score\",le=\"1\"} 1\n",
        "finc_batch_size_bucket{kind=\"score\",le=\"6\"} 2\n",
        "finc_batch_size_bucket{kind=\"score\",le=\"48\"} 2\n",
        "finc_batch_size_bucket{kind=\"score\",le=\"64\"} 3\n",
        "finc_batch_size_sum{kind=\"score\"} 70\n",
        "finc_images_total{kind=\"score\"} 70\n",
        "finc_images_dropped_total{kind=\"sample\",reason=\"expired\"} 3\n",
        "# TYPE finc_batch_size histogram\n",
        "# TYPE process_cpu_seconds_total counter\n",
    };
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        ck_assert_msg(strstr(t, must[i]) != NULL, "missing: %s", must[i]);
    free(t);
    finc_metrics_free(m);
    /* batch-size buckets for an odd limit end at the limit */
    m = finc_metrics_new(5);
    t = finc_metrics_render(m, &len);
    ck_assert_ptr_nonnull(strstr(t, "finc_batch_size_bucket{kind=\"sample\",le=\"4\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(t, "finc_batch_size_bucket{kind=\"sample\",le=\"5\"} 0\n"));
    ck_assert_ptr_null(strstr(t, "le=\"6\"} 0\nfinc_batch_size"));
    free(t);
    finc_metrics_free(m);
}
END_TEST

/* The request parsers, without a socket: each body format into its ask, or
 * the status and message the client gets. */
static finc_server_config parser_cfg(void)
{
    finc_server_config c;
    finc_server_config_defaults(&c);
    c.max_n = 8;
    c.max_images = 3;
    c.max_samples = 16;
    return c;
}

#define REFUSED(call, st, text)                                                                  \
    do {                                                                                         \
        memset(&e, 0, sizeof e);                                                                 \
        ck_assert_int_eq(call, -1);                                                              \
        ck_assert_int_eq(e.status, st);                                                          \
        ck_assert_msg(strstr(e.message, text) != NULL, "'%s' lacks '%s'", e.message, text);     \
    } while (0)

START_TEST(sample_parser)
{
    const finc_server_config c = parser_cfg();
    finc_sample_ask a;
    finc_parse_error e;
    ck_assert_int_eq(finc_parse_sample("", 0, &c, &a, &e), 0);
    ck_assert(a.n == 1 && a.temperature == 1.0 && !a.have_seed);
    const char *ok = "{\"n\": 8, \"temperature\": 0.5, \"seed\": 9007199254740991}  \n";
    ck_assert_int_eq(finc_parse_sample(ok, strlen(ok), &c, &a, &e), 0);
    ck_assert(a.n == 8 && a.temperature == 0.5 && a.have_seed && a.seed == 9007199254740991ull);
    ck_assert_int_eq(finc_parse_sample("{\"seed\": null}", 14, &c, &a, &e), 0);
    ck_assert(!a.have_seed);
    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"{\"n\": 9}", "n must be an integer in 1..8"},
        {"{\"n\": 1.5}", "n must be"},
        {"{\"temperature\": -1}", "temperature must be a number in [0, 100]"},
        {"{\"seed\": -1}", "seed must be an integer in 0..9007199254740991"},
        {"{\"seed\": 9007199254740992}", "seed must be"},
        {"{\"steps\": 3}", "unknown field 'steps'"},
        {"[1, 2]", "must be a JSON object"},
        {"{\"n\": 2} x", "malformed JSON at byte 9"},
        {"{\"n\": ", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        REFUSED(finc_parse_sample(bad[i].body, strlen(bad[i].body), &c, &a, &e), 400, bad[i].msg);
}
END_TEST

START_TEST(score_parsers)
{
    const finc_server_config c = parser_cfg();
    finc_score_ask a;
    finc_parse_error e;
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', 1, 2, 3};
    /* raw PNG: the options from the query string */
    ck_assert_int_eq(finc_parse_score_png(png, sizeof png, "4", "77", "0.01", &c, &a, &e), 0);
    ck_assert(a.n == 1 && a.images[0].data == png && a.images[0].len == sizeof png && !a.images[0].name);
    ck_assert(a.samples == 4 && a.have_seed && a.seed == 77 && a.alpha == 0.01);
    finc_score_ask_free(&a);
    ck_assert_int_eq(finc_parse_score_png(png, sizeof png, NULL, NULL, NULL, &c, &a, &e), 0);
    ck_assert(a.samples == 1 && !a.have_seed && isnan(a.alpha));
    finc_score_ask_free(&a);
    REFUSED(finc_parse_score_png(png, sizeof png, "17", NULL, NULL, &c, &a, &e), 400, "samples must be an integer in 1..16");
    finc_score_ask_free(&a);
    REFUSED(finc_parse_score_png(png, sizeof png, NULL, "x", NULL, &c, &a, &e), 400, "seed must be");
    finc_score_ask_free(&a);
    REFUSED(finc_parse_score_png(png, sizeof png, NULL, NULL, "1", &c, &a, &e), 400, "alpha must be a number in (0, 1)");
    finc_score_ask_free(&a);

    /* JSON: base64 and data: URLs, decoded */
    const char *json = "{\"images\": [\"iVBORw==\", \"data:image/png;base64,AQID\"], \"samples\": 2, \"seed\": 5, "
                       "\"alpha\": 0.2}";
    ck_assert_int_eq(finc_parse_score_json(json, strlen(json), &c, &a, &e), 0);
    ck_assert(a.n == 2 && a.samples == 2 && a.seed == 5 && a.alpha == 0.2);
    ck_assert(a.images[0].len == 4 && !memcmp(a.images[0].data, "\x89PNG", 4));
    ck_assert(a.images[1].len == 3 && !memcmp(a.images[1].data, "\x01\x02\x03", 3));
    finc_score_ask_free(&a);
    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"", "the body is empty"},
        {"{\"images\": []}", "no images in the request"},
        {"{\"images\": [\"AA==\", \"AA==\", \"AA==\", \"AA==\"]}", "4 images, at most 3 per request"},
        {"{\"images\": [7]}", "images[0] must be a base64 string"},
        {"{\"images\": [\"AA==\", \"*\"]}", "images[1]: "},
        {"{\"images\": [\"AA==\"], \"samples\": 0}", "samples must be an integer in 1..16"},
        {"{\"images\": [\"AA==\"], \"seed\": 1.5}", "seed must be"},
        {"{\"images\": [\"AA==\"], \"alpha\": 0}", "alpha must be"},
        {"{\"images\": [\"AA==\"], \"n\": 1}", "unknown field 'n'"},
        {"{\"image\": \"AA==\"}", "unknown field 'image'"},
        {"{}", "must be a JSON object like {\"images\""},
        {"{\"images\": [\"AA==\"]", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        REFUSED(finc_parse_score_json(bad[i].body, strlen(bad[i].body), &c, &a, &e), 400, bad[i].msg);
        finc_score_ask_free(&a);
    }

    /* multipart: files are images (their names kept), fields are options */
    const char *ct = "multipart/form-data; boundary=XyZ";
    const char *mp = "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\n\r\nPNG1\r\n"
                     "--XyZ\r\nContent-Disposition: form-data; name=\"samples\"\r\n\r\n3\r\n"
                     "--XyZ\r\nContent-Disposition: form-data; name=\"g\"; filename=\"b.png\"\r\n\r\nPNG22\r\n"
                     "--XyZ--\r\n";
    ck_assert_int_eq(finc_parse_score_multipart((const uint8_t *)mp, strlen(mp), ct, &c, &a, &e), 0);
    ck_assert(a.n == 2 && a.samples == 3);
    ck_assert_str_eq(a.images[0].name, "a.png");
    ck_assert_str_eq(a.images[1].name, "b.png");
    ck_assert(a.images[1].len == 5 && !memcmp(a.images[1].data, "PNG22", 5));
    finc_score_ask_free(&a);
    const char *none = "--XyZ\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n3\r\n--XyZ--\r\n";
    REFUSED(finc_parse_score_multipart((const uint8_t *)none, strlen(none), ct, &c, &a, &e), 400, "no images");
    finc_score_ask_free(&a);
    const char *long_field = "--XyZ\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n"
                             "1234567890123456789012345678901234567890\r\n--XyZ--\r\n";
    REFUSED(finc_parse_score_multipart((const uint8_t *)long_field, strlen(long_field), ct, &c, &a, &e), 400,
            "form field 'seed' is too long");
    finc_score_ask_free(&a);
    REFUSED(finc_parse_score_multipart((const uint8_t *)mp, strlen(mp), "multipart/form-data", &c, &a, &e), 400,
            "boundary");
    finc_score_ask_free(&a);
}
END_TEST

static Suite *parts_suite(void)
{
    Suite *s = suite_create("server_parts");
    TCase *tc = tcase_create("parts");
    tcase_add_test(tc, base64_round_trip_and_rejects);
    tcase_add_test(tc, multipart_parts_and_errors);
    tcase_add_test(tc, accept_negotiation);
    tcase_add_test(tc, utf8_sanitize);
    tcase_add_test(tc, bearer_check);
    tcase_add_test(tc, json_escape_and_numbers);
    tcase_add_test(tc, config_env_flags_and_checks);
    tcase_add_test(tc, metrics_exposition);
    tcase_add_test(tc, sample_parser);
    tcase_add_test(tc, score_parsers);
    suite_add_tcase(s, tc);
    return s;
}

FINC_CHECK_MAIN(parts_suite)
