/* engine/safetensors: round trips of every dtype, half-precision conversion,
 * and one corrupt file per failure mode, each checked for its message. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* hlen goes in the length field as given; hdr is hdr_bytes long; then
 * data_len bytes of a pattern. */
static void write_raw(uint64_t hlen, const char *hdr, size_t hdr_bytes, size_t data_len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hlen >> (8 * i));
    ck_assert_uint_eq(fwrite(len8, 1, 8, fp), 8);
    ck_assert_uint_eq(fwrite(hdr, 1, hdr_bytes, fp), hdr_bytes);
    for (size_t i = 0; i < data_len; i++)
        fputc((int)(i * 7 + 1) & 0xff, fp);
    ck_assert_int_eq(fclose(fp), 0);
}

static void write_hdr(const char *hdr, size_t data_len) { write_raw(strlen(hdr), hdr, strlen(hdr), data_len); }

static void expect_fail(const char *fragment)
{
    finc_st f;
    int rc = finc_st_open(&f, path, err, sizeof err);
    if (rc == 0)
        finc_st_close(&f);
    ck_assert_msg(rc == -1, "opened a corrupt file (wanted '%s')", fragment);
    ck_assert_msg(strstr(err, fragment) != NULL, "message '%s' lacks '%s'", err, fragment);
    ck_assert_ptr_null(f.tensors);
    ck_assert_ptr_null(f.map);
}

/* ---- round trip -------------------------------------------------------- */

START_TEST(test_roundtrip)
{
    const float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    const uint8_t b[4] = {0, 1, 128, 255};
    const double c[2] = {M_PI, -1e300};
    const float s = 42;
    const uint16_t h[3] = {0x3c00, 0xc000, 0x3555};    /* 1, -2, ~0.3333 */
    const uint16_t g[2] = {0x3f80, 0xc040};            /* 1, -3 */
    const int32_t i32[2] = {-5, 70000};
    const int64_t sa[2] = {2, 3}, sb[1] = {4}, sc[3] = {1, 1, 2}, sz[2] = {0, 3}, sh[1] = {3}, sg[1] = {2},
                  si[1] = {2};
    const finc_st_write_tensor ts[] = {
        {"a", FINC_ST_F32, 2, sa, a},     {"b", FINC_ST_U8, 1, sb, b},   {"c", FINC_ST_F64, 3, sc, c},
        {"s", FINC_ST_F32, 0, NULL, &s},  {"z", FINC_ST_F32, 2, sz, NULL}, {"h", FINC_ST_F16, 1, sh, h},
        {"g", FINC_ST_BF16, 1, sg, g},    {"i", FINC_ST_I32, 1, si, i32},
    };
    const int n = (int)(sizeof ts / sizeof ts[0]);
    ck_assert_int_eq(finc_st_write(path, "{\"k\":\"v\",\"config\":\"{\\\"x\\\":1}\"}", n, ts, err, sizeof err), 0);

    finc_st f;
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(finc_st_count(&f), n);
    for (int i = 0; i < n; i++)
        ck_assert_str_eq(finc_st_at(&f, i)->name, ts[i].name);   /* header order */

    const finc_st_tensor *t = finc_st_find(&f, "a");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, FINC_ST_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->numel, 6);
    ck_assert_uint_eq(t->nbytes, 24);
    ck_assert_int_eq(memcmp(t->data, a, sizeof a), 0);

    t = finc_st_find(&f, "b");
    ck_assert_int_eq(t->dtype, FINC_ST_U8);
    ck_assert_int_eq(memcmp(t->data, b, 4), 0);
    double d[4];
    ck_assert_int_eq(finc_st_to_f64(t, d), 0);
    ck_assert(d[2] == 128 && d[3] == 255);

    t = finc_st_find(&f, "c");
    ck_assert_int_eq(t->ndim, 3);
    ck_assert_int_eq(finc_st_to_f64(t, d), 0);
    ck_assert(d[0] == M_PI && d[1] == -1e300);

    t = finc_st_find(&f, "s");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->numel, 1);
    float fv[4];
    ck_assert_int_eq(finc_st_to_f32(t, fv), 0);
    ck_assert(fv[0] == 42);

    t = finc_st_find(&f, "z");
    ck_assert_uint_eq(t->numel, 0);
    ck_assert_uint_eq(t->nbytes, 0);

    t = finc_st_find(&f, "h");
    ck_assert_int_eq(t->dtype, FINC_ST_F16);
    ck_assert_int_eq(finc_st_to_f32(t, fv), 0);
    ck_assert(fv[0] == 1 && fv[1] == -2 && fabsf(fv[2] - 1.0f / 3) < 1e-3f);

    t = finc_st_find(&f, "g");
    ck_assert_int_eq(finc_st_to_f32(t, fv), 0);
    ck_assert(fv[0] == 1 && fv[1] == -3);

    t = finc_st_find(&f, "i");
    ck_assert_int_eq(finc_st_to_f32(t, fv), 0);
    ck_assert(fv[0] == -5 && fv[1] == 70000);

    ck_assert_ptr_null(finc_st_find(&f, "nope"));
    ck_assert_ptr_null(finc_st_find(&f, ""));
    ck_assert_str_eq(finc_st_meta(&f, "k"), "v");
    ck_assert_str_eq(finc_st_meta(&f, "config"), "{\"x\":1}");
    ck_assert_ptr_null(finc_st_meta(&f, "v"));
    ck_assert_int_eq(f.nmeta, 2);
    char *mj = finc_st_metadata_json(&f, NULL), *less = finc_st_metadata_json(&f, "k");
    ck_assert_str_eq(mj, "{\"k\":\"v\",\"config\":\"{\\\"x\\\":1}\"}");
    ck_assert_str_eq(less, "{\"config\":\"{\\\"x\\\":1}\"}");
    free(mj);
    free(less);
    finc_st_close(&f);
    ck_assert_ptr_null(f.map);
}
END_TEST

START_TEST(test_many_tensors_find)
{
    enum { N = 300 };
    static float vals[N];
    static char names[N][16];
    finc_st_write_tensor ts[N];
    const int64_t one[1] = {1};
    for (int i = 0; i < N; i++) {
        int j = (i * 131) % N;    /* not in name order */
        snprintf(names[i], sizeof names[i], "t%03d", j);
        vals[i] = (float)j;
        ts[i] = (finc_st_write_tensor){names[i], FINC_ST_F32, 1, one, &vals[i]};
    }
    ck_assert_int_eq(finc_st_write(path, NULL, N, ts, err, sizeof err), 0);
    finc_st f;
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_null(finc_st_metadata_json(&f, NULL));
    ck_assert_ptr_null(finc_st_meta(&f, "format"));
    for (int j = 0; j < N; j++) {
        char nm[16];
        snprintf(nm, sizeof nm, "t%03d", j);
        const finc_st_tensor *t = finc_st_find(&f, nm);
        ck_assert_ptr_nonnull(t);
        float v;
        finc_st_to_f32(t, &v);
        ck_assert(v == (float)j);
    }
    finc_st_close(&f);
}
END_TEST

START_TEST(test_padded_header_and_empty)
{
    const char *hdr = "{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}  \n  ";
    write_hdr(hdr, 2);
    finc_st f;
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(f.n, 1);
    ck_assert_int_eq(((const uint8_t *)f.tensors[0].data)[1], 8);
    finc_st_close(&f);

    write_hdr("{}", 0);
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(f.n, 0);
    ck_assert_ptr_null(finc_st_find(&f, "x"));
    finc_st_close(&f);

    /* zero-size tensors may sit anywhere the tiling allows */
    write_hdr("{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    finc_st_close(&f);
}
END_TEST

/* ---- half precision ---------------------------------------------------- */

START_TEST(test_f16_conversion)
{
    ck_assert(finc_st_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(finc_st_f16_to_f32(0xc000) == -2.0f);
    ck_assert(finc_st_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(finc_st_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(finc_st_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    ck_assert(finc_st_f16_to_f32(0x0400) == 0x1p-14f);
    ck_assert(isinf(finc_st_f16_to_f32(0x7c00)) && finc_st_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(finc_st_f16_to_f32(0x7e00)));
    ck_assert(signbit(finc_st_f16_to_f32(0x8000)) && finc_st_f16_to_f32(0x8000) == 0);

    ck_assert_uint_eq(finc_st_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(finc_st_f32_to_f16(-2.0f), 0xc000);
    ck_assert_uint_eq(finc_st_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);        /* tie to even */
    ck_assert_uint_eq(finc_st_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);    /* tie to even, up */
    ck_assert_uint_eq(finc_st_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    ck_assert_uint_eq(finc_st_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(finc_st_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(finc_st_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(finc_st_f32_to_f16(-1e9f), 0xfc00);
    ck_assert_uint_eq(finc_st_f32_to_f16(0x1p-25f), 0x0000);               /* tie to even (zero) */
    ck_assert_uint_eq(finc_st_f32_to_f16(3e-8f), 0x0001);
    ck_assert_uint_eq(finc_st_f32_to_f16(1023.5f * 0x1p-24f), 0x0400);     /* rounds up to the smallest normal */
    ck_assert_uint_eq(finc_st_f32_to_f16(-0.0f), 0x8000);
    uint16_t nan = finc_st_f32_to_f16(NAN);
    ck_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);

    for (uint32_t v = 0; v < 0x10000; v++) {
        if ((v & 0x7c00) == 0x7c00 && (v & 0x3ff))
            continue;
        ck_assert_uint_eq(finc_st_f32_to_f16(finc_st_f16_to_f32((uint16_t)v)), v);
    }
}
END_TEST

START_TEST(test_bf16_conversion)
{
    ck_assert(finc_st_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(finc_st_bf16_to_f32(0xc040) == -3.0f);
    ck_assert_uint_eq(finc_st_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(finc_st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);        /* tie to even */
    ck_assert_uint_eq(finc_st_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    ck_assert_uint_eq(finc_st_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-12f), 0x3f81);
    ck_assert(isnan(finc_st_bf16_to_f32(finc_st_f32_to_bf16(NAN))));
    ck_assert(isinf(finc_st_bf16_to_f32(finc_st_f32_to_bf16(INFINITY))));
    for (uint32_t v = 0; v < 0x10000; v++) {
        if ((v & 0x7f80) == 0x7f80 && (v & 0x7f))
            continue;
        ck_assert_uint_eq(finc_st_f32_to_bf16(finc_st_bf16_to_f32((uint16_t)v)), v);
    }
}
END_TEST

/* ---- corrupt files ----------------------------------------------------- */

#define T1(dt, sh, off) "{\"dtype\":\"" dt "\",\"shape\":" sh ",\"data_offsets\":" off "}"

static const struct {
    const char *what, *hdr;
    size_t data_len;
    const char *fragment;
} bad_headers[] = {
    {"not JSON", "{\"a\": ", 0, "header is not valid JSON"},
    {"not JSON 2", "hello", 0, "header is not valid JSON"},
    {"not an object", "[1, 2]", 0, "header is not a JSON object"},
    {"string", "\"x\"", 0, "header is not a JSON object"},
    {"bytes after the JSON", "{} x", 0, "non-space bytes after its JSON value"},
    {"entry not an object", "{\"a\": 5}", 0, "tensor 'a': header entry is not an object"},
    {"unexpected key", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
     "tensor 'a': unexpected key 'x'"},
    {"dtype missing", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': dtype missing"},
    {"dtype not string", "{\"a\":" T1("F32", "[1]", "[0,4]") ",\"b\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "tensor 'b': dtype missing or not a string"},
    {"unknown dtype", "{\"a\":" T1("F128", "[1]", "[0,16]") "}", 16, "tensor 'a': unknown dtype 'F128'"},
    {"shape missing", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': shape missing or not an array"},
    {"shape not array", "{\"a\":" T1("F32", "4", "[0,4]") "}", 4, "tensor 'a': shape missing or not an array"},
    {"shape negative", "{\"a\":" T1("F32", "[2,-1]", "[0,4]") "}", 4, "tensor 'a': shape[1] is not a non-negative integer"},
    {"shape fractional", "{\"a\":" T1("F32", "[1.5]", "[0,4]") "}", 4, "tensor 'a': shape[0] is not a non-negative integer"},
    {"shape string", "{\"a\":" T1("F32", "[\"1\"]", "[0,4]") "}", 4, "tensor 'a': shape[0] is not a non-negative integer"},
    {"shape too many dims", "{\"a\":" T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, "shape has 9 dims, at most 8"},
    {"shape overflow", "{\"a\":" T1("F32", "[1099511627776,1099511627776]", "[0,4]") "}", 4,
     "tensor 'a': shape (1099511627776, 1099511627776) has too many elements"},
    {"shape huge number", "{\"a\":" T1("F32", "[1e300]", "[0,4]") "}", 4, "shape[0] is not a non-negative integer"},
    {"offsets missing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': data_offsets must be [begin, end]"},
    {"offsets one value", "{\"a\":" T1("F32", "[1]", "[4]") "}", 4, "tensor 'a': data_offsets must be [begin, end]"},
    {"offsets negative", "{\"a\":" T1("F32", "[1]", "[-4,0]") "}", 4, "tensor 'a': data_offsets must be [begin, end]"},
    {"offsets reversed", "{\"a\":" T1("F32", "[1]", "[8,4]") "}", 8, "tensor 'a': data_offsets [8, 4] end before they begin"},
    {"offsets length mismatch", "{\"a\":" T1("F32", "[2]", "[0,4]") "}", 4,
     "tensor 'a': data_offsets [0, 4] span 4 bytes, dtype F32 shape (2) needs 8"},
    {"offsets length mismatch F16", "{\"a\":" T1("F16", "[2,3]", "[0,24]") "}", 24,
     "tensor 'a': data_offsets [0, 24] span 24 bytes, dtype F16 shape (2, 3) needs 12"},
    {"offsets out of bounds", "{\"a\":" T1("F32", "[2]", "[0,8]") "}", 4,
     "tensor 'a': data_offsets [0, 8] out of bounds of the 4-byte data section"},
    {"offsets out of bounds far", "{\"a\":" T1("U8", "[4]", "[1000000,1000004]") "}", 4, "out of bounds"},
    {"overlap", "{\"a\":" T1("F32", "[2]", "[0,8]") ",\"b\":" T1("F32", "[2]", "[4,12]") "}", 12,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
    {"overlap same", "{\"b\":" T1("F32", "[1]", "[0,4]") ",\"a\":" T1("F32", "[1]", "[0,4]") "}", 4,
     "overlap tensor 'b'"},
    {"overlap contained", "{\"a\":" T1("F32", "[4]", "[0,16]") ",\"b\":" T1("F32", "[1]", "[4,8]") ",\"c\":" T1("F32", "[1]", "[16,20]") "}", 20,
     "tensor 'b': data_offsets [4, 8] overlap tensor 'a'"},
    {"gap", "{\"a\":" T1("F32", "[1]", "[0,4]") ",\"b\":" T1("F32", "[1]", "[8,12]") "}", 12,
     "tensor 'b': data_offsets [8, 12] leave a gap of 4 bytes after tensor 'a'"},
    {"gap at start", "{\"a\":" T1("F32", "[1]", "[4,8]") "}", 8, "tensor 'a': data_offsets [4, 8] leave a gap of 4 bytes at the start"},
    {"trailing bytes", "{\"a\":" T1("F32", "[1]", "[0,4]") "}", 7, "3 trailing bytes after the last tensor"},
    {"data without tensors", "{}", 4, "4 trailing bytes after the last tensor"},
    {"duplicate name", "{\"a\":" T1("F32", "[1]", "[0,4]") ",\"a\":" T1("F32", "[1]", "[4,8]") "}", 8,
     "tensor 'a' appears twice in the header"},
    {"empty name", "{\"\":" T1("F32", "[1]", "[0,4]") "}", 4, "empty name"},
    {"metadata not object", "{\"__metadata__\": 5}", 0, "__metadata__ is not an object"},
    {"metadata value not string", "{\"__metadata__\":{\"k\":\"v\",\"n\":1}}", 0, "__metadata__ value 'n' is not a string"},
    {"metadata nested", "{\"__metadata__\":{\"k\":{}}}", 0, "__metadata__ value 'k' is not a string"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice"},
    {"metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "__metadata__ key 'k' appears twice"},
};

START_TEST(test_bad_header)
{
    write_hdr(bad_headers[_i].hdr, bad_headers[_i].data_len);
    expect_fail(bad_headers[_i].fragment);
}
END_TEST

START_TEST(test_empty_file)
{
    write_raw(0, "", 0, 0);      /* writes an 8-byte zero length, then truncate */
    ck_assert_int_eq(truncate(path, 0), 0);
    expect_fail("file is 0 bytes, too short for the 8-byte header length");
    ck_assert_int_eq(truncate(path, 7), 0);
    expect_fail("file is 7 bytes, too short");
}
END_TEST

START_TEST(test_header_length)
{
    write_raw(1000, "{}", 2, 0);
    expect_fail("header length 1000 runs past the end of the file (2 bytes follow the length field)");
    write_raw(UINT64_MAX, "{}", 2, 0);
    expect_fail("header length 18446744073709551615 runs past the end");
    write_raw(0, "", 0, 0);
    expect_fail("header is empty");
    write_raw(3, "{}\0", 3, 0);
    expect_fail("NUL byte");
    /* a header longer than the cap, in a sparse file of that size */
    uint64_t big = (uint64_t)FINC_ST_MAX_HEADER + 8;
    write_raw(big, "{}", 2, 0);
    ck_assert_int_eq(truncate(path, (off_t)(big + 8)), 0);
    expect_fail("header length 104857608 exceeds the 104857600-byte limit");
}
END_TEST

START_TEST(test_truncated)
{
    const float v[4] = {1, 2, 3, 4};
    const int64_t sh[1] = {4};
    const finc_st_write_tensor ts[2] = {{"w", FINC_ST_F32, 1, sh, v}, {"v", FINC_ST_F32, 1, sh, v}};
    ck_assert_int_eq(finc_st_write(path, "{\"a\":\"b\"}", 2, ts, err, sizeof err), 0);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(truncate(path, sb.st_size - 1), 0);     /* inside the last tensor */
    expect_fail("tensor 'v': data_offsets [16, 32] out of bounds of the 31-byte data section");
    ck_assert_int_eq(truncate(path, 40), 0);                  /* inside the header */
    expect_fail("runs past the end of the file (32 bytes follow the length field)");
}
END_TEST

START_TEST(test_not_a_file)
{
    expect_fail("");      /* the fixture's empty file */
    ck_assert_ptr_nonnull(strstr(err, "too short"));
    finc_st f;
    ck_assert_int_eq(finc_st_open(&f, "/nonexistent/dir/x.safetensors", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open '/nonexistent/dir/x.safetensors'"));
    char dir[512];
    ck_assert_int_eq(testmodel_tmpdir(dir, sizeof dir), 0);
    ck_assert_int_eq(finc_st_open(&f, dir, err, sizeof err), -1);
    testmodel_rmdir(dir);
    ck_assert_ptr_nonnull(strstr(err, "is not a regular file"));
}
END_TEST

/* ---- writer ------------------------------------------------------------ */

START_TEST(test_writer_errors)
{
    const float v[2] = {1, 2};
    const int64_t sh[1] = {2}, neg[1] = {-2};
    finc_st_write_tensor ts[2] = {{"a", FINC_ST_F32, 1, sh, v}, {"a", FINC_ST_F32, 1, sh, v}};
    ck_assert_int_eq(finc_st_write(path, NULL, 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor 'a' given twice"));
    ts[1].name = "__metadata__";
    ck_assert_int_eq(finc_st_write(path, NULL, 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "reserved name"));
    ts[1].name = "b";
    ts[1].shape = neg;
    ck_assert_int_eq(finc_st_write(path, NULL, 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor 'b': invalid shape[0] = -2"));
    ts[1].shape = sh;
    ck_assert_int_eq(finc_st_write(path, "[1]", 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "metadata is not a JSON object"));
    ck_assert_int_eq(finc_st_write(path, "{\"x\":1}", 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "metadata value 'x' is not a string"));
    ck_assert_int_eq(finc_st_write("/nonexistent/dir/x", NULL, 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot create"));
    ts[1].data = NULL;
    ck_assert_int_eq(finc_st_write(path, NULL, 2, ts, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor 'b': no data"));
    ck_assert_int_eq(access(path, F_OK), -1);    /* a failed write leaves no file */
}
END_TEST

START_TEST(test_writer_aligns_data)
{
    const float v[1] = {5};
    const int64_t sh[1] = {1};
    const finc_st_write_tensor ts[1] = {{"name-of-odd-length", FINC_ST_F32, 1, sh, v}};
    ck_assert_int_eq(finc_st_write(path, "{\"k\":\"odd\"}", 1, ts, err, sizeof err), 0);
    finc_st f;
    ck_assert_msg(finc_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq((uintptr_t)f.tensors[0].data % 8, 0);
    finc_st_close(&f);
}
END_TEST

START_TEST(test_dtype_table)
{
    for (int d = 0; d < FINC_ST_NDTYPES; d++)
        ck_assert_int_eq(finc_st_dtype_parse(finc_st_dtype_name((finc_st_dtype)d)), d);
    ck_assert_int_eq(finc_st_dtype_parse("f32"), -1);
    ck_assert_uint_eq(finc_st_dtype_size(FINC_ST_BF16), 2);
    ck_assert_uint_eq(finc_st_dtype_size(FINC_ST_F64), 8);
    ck_assert_uint_eq(finc_st_dtype_size(FINC_ST_U8), 1);
    ck_assert_uint_eq(finc_st_dtype_size(FINC_ST_I64), 8);
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_many_tensors_find);
    tcase_add_test(tc, test_padded_header_and_empty);
    tcase_add_test(tc, test_f16_conversion);
    tcase_add_test(tc, test_bf16_conversion);
    tcase_add_loop_test(tc, test_bad_header, 0, (int)(sizeof bad_headers / sizeof bad_headers[0]));
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_header_length);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_not_a_file);
    tcase_add_test(tc, test_writer_errors);
    tcase_add_test(tc, test_writer_aligns_data);
    tcase_add_test(tc, test_dtype_table);
    suite_add_tcase(s, tc);
    return s;
}

#include "tests/check_main.h"
FINC_CHECK_MAIN(safetensors_suite)
