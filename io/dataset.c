#include "io/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/error.h"
#include "io/idx.h"
#include "io/npy.h"
#include "io/png.h"

#define FMNIST_TRAIN FINC_FMNIST_DIR "/train-images-idx3-ubyte.gz"
#define FMNIST_TEST FINC_FMNIST_DIR "/t10k-images-idx3-ubyte.gz"
#define FMNIST_VAL_FIRST 55000
#define MAX_FILES 10000000
#define MAX_DEPTH 32

typedef struct {
    char **v;
    size_t n, cap;
} path_list;

static int has_png_suffix(const char *name)
{
    const size_t n = strlen(name);
    return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static int list_pngs(const char *dir, int depth, path_list *pl, char *err, size_t errlen)
{
    if (depth > MAX_DEPTH) return finc_errorf(err, errlen, "%s: folders nested deeper than %d", dir, MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) return finc_errorf(err, errlen, "%s: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *de; rc == 0 && (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        char *path = malloc(strlen(dir) + strlen(de->d_name) + 2);
        if (!path) {
            rc = finc_errorf(err, errlen, "out of memory");
            break;
        }
        sprintf(path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0) {
            rc = finc_errorf(err, errlen, "%s: %s", path, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            rc = list_pngs(path, depth + 1, pl, err, errlen);
        } else if (S_ISREG(st.st_mode) && has_png_suffix(de->d_name)) {
            if (pl->n == MAX_FILES) {
                rc = finc_errorf(err, errlen, "%s: more than %d PNG files", dir, MAX_FILES);
            } else {
                if (pl->n == pl->cap) {
                    size_t cap = pl->cap ? 2 * pl->cap : 256;
                    char **nv = realloc(pl->v, cap * sizeof *nv);
                    if (!nv) rc = finc_errorf(err, errlen, "out of memory");
                    else pl->v = nv, pl->cap = cap;
                }
                if (rc == 0) {
                    pl->v[pl->n++] = path;
                    path = NULL;
                }
            }
        }
        free(path);
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int finc_dataset_read_pngs(const char *const *paths, size_t n, int C, int H, int W, uint8_t **pixels, char *err,
                           size_t errlen)
{
    const size_t D = (size_t)C * H * W;
    uint8_t *pix = malloc(n * D);
    if (!pix) return finc_errorf(err, errlen, "out of memory for %zu images", n);
    for (size_t i = 0; i < n; i++) {
        finc_png_image img;
        char e2[256];
        if (finc_png_read_file(paths[i], C, &img, err, errlen) != 0) {  /* names the file */
            free(pix);
            return -1;
        }
        const int bad = finc_png_check_size(&img, H, W, e2, sizeof e2);
        if (!bad) memcpy(pix + i * D, img.pixels, D);
        finc_png_image_free(&img);
        if (bad) {
            free(pix);
            return finc_errorf(err, errlen, "%s: %s", paths[i], e2);
        }
    }
    *pixels = pix;
    return 0;
}

static int load_pngs(const char *dir, int C, int H, int W, long offset, long limit, uint8_t **pixels, int *n,
                     char *err, size_t errlen)
{
    path_list pl = {0};
    int rc = list_pngs(dir, 0, &pl, err, errlen);
    if (rc == 0 && pl.n == 0) rc = finc_errorf(err, errlen, "%s: no .png files in it", dir);
    if (rc == 0) qsort(pl.v, pl.n, sizeof *pl.v, cmp_str);
    size_t first = (size_t)offset < pl.n ? (size_t)offset : pl.n, count = pl.n - first;
    if (limit > 0 && (size_t)limit < count) count = (size_t)limit;
    if (rc == 0 && count == 0) rc = finc_errorf(err, errlen, "%s: %zu images, none from %ld on", dir, pl.n, offset);
    if (rc == 0) rc = finc_dataset_read_pngs((const char *const *)pl.v + first, count, C, H, W, pixels, err, errlen);
    for (size_t i = 0; i < pl.n; i++) free(pl.v[i]);
    free(pl.v);
    if (rc) return -1;
    *n = (int)count;
    return 0;
}

/* Images first + offset .. (+ limit, <= 0: all) of a set read whole (all:
 * total images of c x h x w, taken), as (n, C, H, W) in *pixels, checked
 * against the model's shape. With gray_to_rgb a gray set feeds a colour
 * model as the PNG reader does (the value in all three channels). */
static int select_images(const char *path, uint8_t *all, size_t total, int c, int h, int w, size_t first,
                         int gray_to_rgb, int C, int H, int W, long offset, long limit, uint8_t **pixels, int *n,
                         char *err, size_t errlen)
{
    int rc = 0;
    if (h != H || w != W || (c != C && !(gray_to_rgb && c == 1 && C == 3)))
        rc = finc_errorf(err, errlen, "%s: images are %dx%dx%d, the model expects %dx%dx%d", path, c, h, w, C, H, W);
    else if (first + (size_t)offset >= total)
        rc = finc_errorf(err, errlen, "%s: %zu images, none from %ld on", path, total - first, offset);
    else if (total - first - (size_t)offset > INT_MAX)
        rc = finc_errorf(err, errlen, "%s: %zu images, more than can be read at once", path, total - first);
    if (rc) {
        free(all);
        return -1;
    }
    const size_t start = first + (size_t)offset, d = (size_t)c * H * W, D = (size_t)C * H * W;
    size_t count = total - start;
    if (limit > 0 && (size_t)limit < count) count = (size_t)limit;
    uint8_t *out = all;
    if (c == C) {
        if (start > 0) memmove(all, all + start * D, count * D);
    } else if ((out = malloc(count * D)) != NULL) {
        for (size_t i = 0; i < count; i++)
            for (int k = 0; k < C; k++) memcpy(out + i * D + (size_t)k * H * W, all + (start + i) * d, (size_t)H * W);
        free(all);
    } else {
        free(all);
        return finc_errorf(err, errlen, "out of memory for %zu images", count);
    }
    *pixels = out;
    *n = (int)count;
    return 0;
}

int finc_dataset_load(const char *src, int C, int H, int W, long offset, long limit, uint8_t **pixels, int *n,
                      char *err, size_t errlen)
{
    *pixels = NULL;
    *n = 0;
    if (offset < 0) return finc_errorf(err, errlen, "negative offset %ld", offset);
    const char *path = src;
    long first = 0;
    if (!strcmp(src, "test")) path = FMNIST_TEST;
    else if (!strcmp(src, "train")) path = FMNIST_TRAIN;
    else if (!strcmp(src, "val")) path = FMNIST_TRAIN, first = FMNIST_VAL_FIRST;
    struct stat st;
    if (stat(path, &st) != 0) return finc_errorf(err, errlen, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return load_pngs(path, C, H, W, offset, limit, pixels, n, err, errlen);
    const size_t plen = strlen(path);
    uint8_t *all;
    char e2[256];
    if (plen > 4 && !strcmp(path + plen - 4, ".npy")) {
        size_t total;
        int c, h, w;
        if (finc_npy_read_images(path, &all, &total, &c, &h, &w, err, errlen) != 0) return -1;
        return select_images(path, all, total, c, h, w, 0, 1, C, H, W, offset, limit, pixels, n, err, errlen);
    }
    int total, h, w;
    if (finc_idx_read_images(path, &all, &total, &h, &w, e2, sizeof e2) != 0)
        return finc_errorf(err, errlen, "%s: %s", path, e2);
    return select_images(path, all, (size_t)total, 1, h, w, (size_t)first, 0, C, H, W, offset, limit, pixels, n, err,
                         errlen);
}
