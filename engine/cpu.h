/* Internals of the CPU backend shared by its files (engine/cpu_*.c): the
 * context and the per-op functions. The readable spec of every op; the CUDA
 * backend mirrors these names. */
#ifndef FINC_CPU_H
#define FINC_CPU_H

#include "backend.h"

typedef struct {
    int max_batch, threads;
    /* coupling scratch, sized for the largest level at max_batch */
    float *col;                   /* (cin*9, B*HW) */
    float *h1, *h2;               /* (F, B*HW) */
    float *taps;                  /* (cout*9, B*HW) */
} finc_cpu_ctx;

void finc_cpu_finc_forward(finc_backend *be, float *y, const float *x, const finc_step *st,
                           int C, int B, int H, int W, int k);
/* The inverse: finc_cpu_finc_inverse_units when the batch's (quarter, image)
 * pairs share out evenly over the threads, else the wavefront. */
void finc_cpu_finc_inverse(finc_backend *be, float *x, const float *y, const finc_step *st,
                           int C, int B, int H, int W, int k);
/* All threads down the anti-diagonals together, a barrier after each. */
void finc_cpu_finc_inverse_wavefront(float *x, const float *y, const finc_step *st, int C, int B, int H, int W,
                                     int k);
/* Each thread solves whole (quarter, image) pairs in raster order: one barrier. */
void finc_cpu_finc_inverse_units(float *x, const float *y, const finc_step *st, int C, int B, int H, int W, int k);
/* The same inverse solved pixel by pixel in raster order, one thread: the
 * baseline the parallel solves are tested and benchmarked against. */
void finc_cpu_finc_inverse_raster(float *x, const float *y, const finc_step *st,
                                  int C, int B, int H, int W, int k);

void finc_cpu_coupling_forward(finc_backend *be, float *x, double *logdet, const finc_coupling *cp,
                               int B, int H, int W);
void finc_cpu_coupling_inverse(finc_backend *be, float *x, const finc_coupling *cp,
                               int B, int H, int W);

#endif
