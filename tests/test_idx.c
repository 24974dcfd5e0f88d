/* io/idx: the real Fashion-MNIST test set, small plain and gzip files, and
 * one broken file per check. Known values were computed once with Python's
 * gzip module from the same files. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "io/idx.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define T10K_IMAGES FMNIST "t10k-images-idx3-ubyte.gz"
#define T10K_LABELS FMNIST "t10k-labels-idx1-ubyte.gz"

static char path[64];

static void setup(void)
{
    snprintf(path, sizeof path, "/tmp/finc_test_idx_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
}

static void teardown(void)
{
    unlink(path);
}

static void put_file(const void *b, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(b, 1, len, fp), len);
    fclose(fp);
}

static void put_gz(const void *b, size_t len)
{
    gzFile gz = gzopen(path, "wb");
    ck_assert_ptr_nonnull(gz);
    ck_assert_int_eq(gzwrite(gz, b, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(gz), Z_OK);
}

static uint8_t *slurp(const char *p, size_t *len)
{
    FILE *fp = fopen(p, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", p);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    rewind(fp);
    uint8_t *b = malloc(*len);
    ck_assert_uint_eq(fread(b, 1, *len, fp), *len);
    fclose(fp);
    return b;
}

/* A small (2, 3, 4) IDX array holding 0..23. */
static uint8_t small[16 + 24] = {0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4};

static void init_small(void)
{
    for (int i = 0; i < 24; i++)
        small[16 + i] = (uint8_t)i;
}

static void expect_fail(const char *want)
{
    finc_idx a;
    char err[256] = "";
    ck_assert_int_eq(finc_idx_read(path, &a, err, sizeof err), -1);
    ck_assert_ptr_null(a.data);
    ck_assert_int_eq(a.ndim, 0);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0, "error '%s' lacks the path", err);
    ck_assert_msg(strstr(err, want) != NULL, "error '%s' lacks '%s'", err, want);
}

/* ---- the real data set ----------------------------------------------------- */

START_TEST(test_t10k_images)
{
    uint8_t *px;
    int n, h, w;
    char err[256] = "";
    ck_assert_msg(finc_idx_read_images(T10K_IMAGES, &px, &n, &h, &w, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_int_eq(n, 10000);
    ck_assert_int_eq(h, 28);
    ck_assert_int_eq(w, 28);
    /* image 0 (an ankle boot): row 10, its pixel sum, its first non-zero pixel */
    static const uint8_t row10[28] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 53, 129, 120,
                                      147, 175, 157, 166, 135, 154, 168, 140, 0, 0};
    ck_assert_mem_eq(px + 10 * 28, row10, 28);
    uint64_t sum0 = 0, sum_last = 0, sum_all = 0;
    int first = -1;
    for (int i = 0; i < 784; i++) {
        sum0 += px[i];
        if (first < 0 && px[i] != 0)
            first = i;
    }
    for (int i = 0; i < 784; i++)
        sum_last += px[9999 * 784 + i];
    for (size_t i = 0; i < (size_t)10000 * 784; i++)
        sum_all += px[i];
    ck_assert_uint_eq(sum0, 33456);
    ck_assert_int_eq(first, 215);
    ck_assert_uint_eq(sum_last, 24390);
    ck_assert_uint_eq(sum_all, 573469082);
    ck_assert_uint_eq(px[784 + 14 * 28 + 14], 234);        /* image 1, (14, 14) */
    ck_assert_uint_eq(px[5000 * 784 + 20 * 28 + 7], 68);   /* image 5000, (20, 7) */
    free(px);

    finc_idx a;
    ck_assert_int_eq(finc_idx_read(T10K_IMAGES, &a, err, sizeof err), 0);
    ck_assert_int_eq(a.ndim, 3);
    ck_assert_uint_eq(a.dims[0], 10000);
    ck_assert_uint_eq(a.size, 7840000);
    finc_idx_free(&a);
    ck_assert_ptr_null(a.data);
}
END_TEST

START_TEST(test_t10k_labels)
{
    uint8_t *lab;
    int n;
    char err[256] = "";
    ck_assert_msg(finc_idx_read_labels(T10K_LABELS, &lab, &n, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(n, 10000);
    static const uint8_t first[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    ck_assert_mem_eq(lab, first, 10);
    ck_assert_uint_eq(lab[9999], 5);
    int count[256] = {0};
    for (int i = 0; i < n; i++)
        count[lab[i]]++;
    for (int c = 0; c < 10; c++)
        ck_assert_int_eq(count[c], 1000);
    free(lab);

    /* the wrong helper for the file says so */
    uint8_t *px;
    int h, w;
    ck_assert_int_eq(finc_idx_read_images(T10K_LABELS, &px, &n, &h, &w, err, sizeof err), -1);
    ck_assert_ptr_null(px);
    ck_assert_ptr_nonnull(strstr(err, "IDX file has 1 dimensions; images (N, H, W) need 3"));
    ck_assert_int_eq(finc_idx_read_labels(T10K_IMAGES, &lab, &n, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "IDX file has 3 dimensions; labels (N) need 1"));
}
END_TEST

/* ---- small files ----------------------------------------------------------- */

START_TEST(test_plain_and_gzip)
{
    init_small();
    for (int gz = 0; gz < 2; gz++) {
        if (gz)
            put_gz(small, sizeof small);
        else
            put_file(small, sizeof small);
        finc_idx a;
        char err[256] = "";
        ck_assert_msg(finc_idx_read(path, &a, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(a.ndim, 3);
        ck_assert_uint_eq(a.dims[0], 2);
        ck_assert_uint_eq(a.dims[1], 3);
        ck_assert_uint_eq(a.dims[2], 4);
        ck_assert_uint_eq(a.size, 24);
        ck_assert_mem_eq(a.data, small + 16, 24);
        finc_idx_free(&a);
    }
}
END_TEST

START_TEST(test_large_grows)
{
    /* 3 MiB of data: past the first allocation, so the buffer grows */
    size_t n = 3u << 20;
    uint8_t *b = malloc(8 + n);
    const uint8_t head[8] = {0, 0, 0x08, 1, 0, 0x30, 0, 0};
    memcpy(b, head, 8);
    for (size_t i = 0; i < n; i++)
        b[8 + i] = (uint8_t)(i * 31 + (i >> 12));
    put_gz(b, 8 + n);
    finc_idx a;
    char err[256] = "";
    ck_assert_msg(finc_idx_read(path, &a, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(a.size, n);
    ck_assert_mem_eq(a.data, b + 8, n);
    finc_idx_free(&a);
    /* and one byte short */
    put_gz(b, 8 + n - 1);
    expect_fail("truncated IDX file: 3145727 of 3145728 data bytes");
    free(b);
}
END_TEST

/* ---- broken files ---------------------------------------------------------- */

START_TEST(test_header_errors)
{
    put_file("", 0);
    expect_fail("not an IDX file: 0 bytes, too short for the magic");
    put_file("\0\0\x08", 3);
    expect_fail("not an IDX file: 3 bytes, too short for the magic");
    put_file("\x89PNG\r\n\x1a\n", 8);
    expect_fail("not an IDX file (bad magic 89 50 4e 47)");
    put_file("\0\0\x0d\x01\0\0\0\x01\0\0\0\0", 12);
    expect_fail("IDX element type 0x0D (float32) is not supported; only 0x08 (unsigned byte)");
    put_file("\0\0\x08\x00", 4);
    expect_fail("IDX file has 0 dimensions (1 to 8 are read)");
    put_file("\0\0\x08\x09", 4);
    expect_fail("IDX file has 9 dimensions (1 to 8 are read)");
    put_file("\0\0\x08\x03\0\0\0\x02\0\0", 10);
    expect_fail("truncated IDX file: header cut short in its 3 dimensions");
    put_file("\0\0\x08\x02\0\0\0\x02\0\0\0\0", 12);
    expect_fail("IDX dimension 1 is 0 (an empty array)");
    /* 65536 x 65536 bytes claimed by a 12-byte file: refused, nothing allocated */
    put_file("\0\0\x08\x02\0\x01\0\0\0\x01\0\0", 12);
    expect_fail("IDX array exceeds the limit of 1073741824 bytes");
    put_file("\0\0\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 16);
    expect_fail("IDX array exceeds the limit");
    /* a header claiming 1 GiB with no data behind it fails fast as truncated */
    put_file("\0\0\x08\x02\0\0\x80\0\0\0\x80\0", 12);
    expect_fail("truncated IDX file: 0 of 1073741824 data bytes");
}
END_TEST

START_TEST(test_truncated_and_trailing)
{
    init_small();
    for (size_t cut = 0; cut < sizeof small; cut++) {
        put_file(small, cut);
        expect_fail(cut < 4 ? "not an IDX file" : "truncated IDX file");
        put_gz(small, cut);
        expect_fail(cut < 4 ? "not an IDX file" : "truncated IDX file");
    }
    put_file(small, 16 + 20);
    expect_fail("truncated IDX file: 20 of 24 data bytes");
    uint8_t more[sizeof small + 1];
    memcpy(more, small, sizeof small);
    more[sizeof small] = 7;
    put_file(more, sizeof more);
    expect_fail("trailing bytes in IDX file after 24 data bytes");
    put_gz(more, sizeof more);
    expect_fail("trailing bytes in IDX file after 24 data bytes");

    /* missing file */
    unlink(path);
    finc_idx a;
    char err[256];
    ck_assert_int_eq(finc_idx_read(path, &a, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    ck_assert_ptr_nonnull(strstr(err, "No such file"));
}
END_TEST

START_TEST(test_broken_gzip)
{
    size_t len;
    uint8_t *gz = slurp(T10K_LABELS, &len);
    /* the real labels file cut short at several points in its deflate stream */
    for (size_t cut = 20; cut < len; cut += len / 16) {
        put_file(gz, cut);
        expect_fail("truncated");
    }
    put_file(gz, len - 4);   /* only the length trailer missing */
    expect_fail("IDX file");
    /* a flipped byte in the deflate data: a zlib data or CRC error, or the
     * wrong amount of data; never success, never a crash */
    uint8_t *bad = malloc(len);
    for (size_t i = len / 2; i < len / 2 + 40; i++) {
        memcpy(bad, gz, len);
        bad[i] ^= 0x10;
        put_file(bad, len);
        finc_idx a;
        char err[256] = "";
        ck_assert_msg(finc_idx_read(path, &a, err, sizeof err) == -1, "flip at %zu accepted", i);
        ck_assert_ptr_null(a.data);
    }
    /* a corrupted CRC32 trailer */
    memcpy(bad, gz, len);
    bad[len - 8] ^= 1;
    put_file(bad, len);
    expect_fail("corrupt IDX file (gzip: incorrect data check)");
    free(bad);
    free(gz);
}
END_TEST

static Suite *idx_suite(void)
{
    Suite *s = suite_create("idx");
    TCase *tc = tcase_create("idx");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_t10k_images);
    tcase_add_test(tc, test_t10k_labels);
    tcase_add_test(tc, test_plain_and_gzip);
    tcase_add_test(tc, test_large_grows);
    tcase_add_test(tc, test_header_errors);
    tcase_add_test(tc, test_truncated_and_trailing);
    tcase_add_test(tc, test_broken_gzip);
    suite_add_tcase(s, tc);
    return s;
}

#include "tests/check_main.h"
FINC_CHECK_MAIN(idx_suite)
