/* Image sets named on the command line: the Fashion-MNIST files by name
 * (test, train, val), an IDX file, a .npy of uint8 (N, C, H, W) (or (N, H, W)),
 * or a folder of PNGs searched recursively in path order. What `finc eval`,
 * `calibrate` and `ood` read. */
#ifndef FINC_DATASET_H
#define FINC_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define FINC_FMNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Loads images offset .. offset + limit - 1 (limit <= 0: to the end) of src
 * as pixels (n, C, H, W), converted to C channels (io/png.h) and checked
 * against H x W. `val` is the last 5,000 images of the Fashion-MNIST training
 * file, which the shipped model held out; `train` the whole file. Returns 0,
 * or -1 with a message naming the file at fault. */
int finc_dataset_load(const char *src, int C, int H, int W, long offset, long limit, uint8_t **pixels, int *n,
                      char *err, size_t errlen);

/* The PNG files paths[0..n) as pixels (n, C, H, W), as finc_dataset_load
 * reads a folder's. Returns 0, or -1 with a message naming the file. */
int finc_dataset_read_pngs(const char *const *paths, size_t n, int C, int H, int W, uint8_t **pixels, char *err,
                           size_t errlen);

#endif
