/* The FInC unit on the GPU (model.md section 2), mirroring engine/cpu_finc.c:
 * every quarter is handled in "TL space", its image flipped so that its kernel
 * (finc_tl) looks up and to the left.
 *
 * Forward: one thread per output element.
 *
 * Inverse: one launch per FInC unit. Block (quarter, image) owns one quarter
 * image and steps through its H + W - 1 anti-diagonals with block barriers;
 * pixels of a diagonal depend only on earlier diagonals (and lower channels of
 * the same pixel), so within a diagonal
 *   phase 1: threads over (channel, pixel) subtract the taps on earlier
 *            diagonals from y, all channels at once;
 *   phase 2: threads over pixels finish the forward substitution over the
 *            unit lower-triangular current-pixel tap, channel by channel.
 * The quarter image (and the kernel) sit in shared memory when they fit; the
 * image is then stored in TL-space order and written back coalesced at the
 * end. Otherwise the block solves in place in global memory, where
 * __syncthreads also orders the global writes within the block. */
#include "kernels/cuda.h"

/* Passed by value; the kernels take it __grid_constant__, so w[q] with a
 * computed q reads the parameter in place instead of copying it to local memory. */
struct finc_quarters {
    const float *w[4];            /* device TL-form kernels (Cq, Cq, k, k) of TL, TR, BL, BR */
};

__device__ __forceinline__ int flip(int v, int n, int f) { return f ? n - 1 - v : v; }

static finc_quarters quarters_of(const finc_cuda_ctx *c, const finc_step *st)
{
    finc_quarters q;
    for (int i = 0; i < 4; i++) q.w[i] = finc_cuda_weight(c, st->finc_tl[i]);
    return q;
}

/* y (C, B, H, W) = conv(pad(x)) per quarter; one thread per element of y. */
__global__ void finc_forward_kernel(float *__restrict__ y, const float *__restrict__ x,
                                    const __grid_constant__ finc_quarters wq,
                                    int Cq, int B, int H, int W, int k)
{
    const size_t HW = (size_t)H * W, cs = (size_t)B * HW, n = 4 * (size_t)Cq * cs;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int ch = (int)(i / cs), b = (int)(i % cs / HW), p = (int)(i % HW);
        const int q = ch / Cq, co = ch % Cq, fy = q >> 1, fx = q & 1;
        const int hp = flip(p / W, H, fy), wp = flip(p % W, W, fx);
        const float *xq = x + ((size_t)q * Cq * B + b) * HW;
        const float *wk = wq.w[q] + (size_t)co * Cq * k * k;
        float acc = 0.0f;
        for (int ci = 0; ci < Cq; ci++)
            for (int a = 0; a < k; a++) {
                const int sh = hp - (k - 1) + a;
                if (sh < 0) continue;
                const float *row = xq + ci * cs + (size_t)flip(sh, H, fy) * W;
                const float *wr = wk + ((size_t)ci * k + a) * k;
                for (int j = 0; j < k; j++) {
                    const int sw = wp - (k - 1) + j;
                    if (sw >= 0) acc += wr[j] * row[flip(sw, W, fx)];
                }
            }
        y[i] = acc;
    }
}

void finc_cuda_finc_forward(finc_cuda_ctx *c, float *y, const float *x, const finc_step *st,
                            int C, int B, int H, int W, int k)
{
    const size_t n = (size_t)C * B * H * W;
    if (n == 0) return;
    finc_forward_kernel<<<finc_cuda_blocks(n), FINC_CUDA_THREADS, 0, c->stream>>>(y, x, quarters_of(c, st),
                                                                                  C / 4, B, H, W, k);
    FINC_CUDA_LAUNCHED(c, "finc_forward_kernel");
}

#define FINC_INV_MAX_THREADS 512

/* The block's quarter image, ready to solve: copied into shared memory in
 * TL-space order (xs), or y copied to x, where it is solved in place under
 * its flips. Returns X and sets its channel stride and flips:
 * X(ci, hp, wp) = X[ci * xcs + flip(hp, H, xfy) * W + flip(wp, W, xfx)]. */
__device__ static float *quarter_in(bool xs, float *smem, float *x, const float *y, size_t base, size_t cs, int Cq,
                                    int H, int W, int fy, int fx, int tid, int nt, size_t *xcs, int *xfy, int *xfx)
{
    const int HW = H * W;
    if (xs) {
        *xcs = HW, *xfy = 0, *xfx = 0;
        for (int e = tid; e < Cq * HW; e += nt) {
            const int ci = e / HW, p = e % HW;
            smem[(size_t)ci * HW + flip(p / W, H, fy) * W + flip(p % W, W, fx)] = y[base + ci * cs + p];
        }
        return smem;
    }
    *xcs = cs, *xfy = fy, *xfx = fx;
    float *X = x + base;
    for (int e = tid; e < Cq * HW; e += nt) {
        const size_t o = (size_t)(e / HW) * cs + e % HW;
        X[o] = y[base + o];
    }
    return X;
}

/* A solved quarter in shared memory back to x, in the image's own order. */
__device__ static void quarter_out(float *x, const float *X, size_t base, size_t cs, int Cq, int H, int W, int fy,
                                   int fx, int tid, int nt)
{
    const int HW = H * W;
    for (int e = tid; e < Cq * HW; e += nt) {
        const int ci = e / HW, p = e % HW;
        x[base + ci * cs + p] = X[(size_t)ci * HW + flip(p / W, H, fy) * W + flip(p % W, W, fx)];
    }
}

/* XS: the quarter image lives in shared memory; WS: its kernel does. */
template <bool XS, bool WS>
__global__ void __launch_bounds__(FINC_INV_MAX_THREADS)
finc_inverse_kernel(float *x, const float *y, const __grid_constant__ finc_quarters wq, int Cq, int B, int H, int W,
                    int k)
{
    extern __shared__ float smem[];
    const int q = blockIdx.x & 3, b = blockIdx.x >> 2, fy = q >> 1, fx = q & 1;
    const int tid = threadIdx.x, nt = blockDim.x, kk = k * k, HW = H * W;
    const size_t cs = (size_t)B * HW, base = ((size_t)q * Cq * B + b) * HW;

    const float *w = wq.w[q];
    if (WS) {
        float *ws = smem + (XS ? (size_t)Cq * HW : 0);
        for (int i = tid; i < Cq * Cq * kk; i += nt) ws[i] = w[i];
        w = ws;
    }
    /* X(ci, hp, wp) = X[ci * xcs + flip(hp, H, xfy) * W + flip(wp, W, xfx)] */
    size_t xcs;
    int xfy, xfx;
    float *X = quarter_in(XS, smem, x, y, base, cs, Cq, H, W, fy, fx, tid, nt, &xcs, &xfy, &xfx);
    __syncthreads();

    for (int d = 0; d <= H + W - 2; d++) {
        const int h0 = d - (W - 1) > 0 ? d - (W - 1) : 0, h1 = d < H - 1 ? d : H - 1, n = h1 - h0 + 1;
        /* Phase 1: X(co, pixel) = y - taps on earlier diagonals. */
        for (int it = tid; it < n * Cq; it += nt) {
            const int co = it / n, hp = h0 + it % n, wp = d - hp;
            const float *wk = w + (size_t)co * Cq * kk;
            float acc = 0.0f;
            for (int ci = 0; ci < Cq; ci++) {
                const float *xc = X + ci * xcs;
                for (int a = 0; a < k; a++) {
                    const int sh = hp - (k - 1) + a;
                    if (sh < 0) continue;
                    const float *row = xc + (size_t)flip(sh, H, xfy) * W;
                    const float *wr = wk + ((size_t)ci * k + a) * k;
                    const int jend = a == k - 1 ? k - 1 : k;  /* the current pixel is phase 2's */
                    for (int j = 0; j < jend; j++) {
                        const int sw = wp - (k - 1) + j;
                        if (sw >= 0) acc += wr[j] * row[flip(sw, W, xfx)];
                    }
                }
            }
            X[co * xcs + (size_t)flip(hp, H, xfy) * W + flip(wp, W, xfx)] -= acc;
        }
        if (Cq > 1) {
            __syncthreads();
            /* Phase 2: forward substitution over the current-pixel tap. */
            for (int p = tid; p < n; p += nt) {
                const int hp = h0 + p, wp = d - hp;
                float *xp = X + (size_t)flip(hp, H, xfy) * W + flip(wp, W, xfx);
                for (int co = 1; co < Cq; co++) {
                    float acc = xp[co * xcs];
                    for (int ci = 0; ci < co; ci++) acc -= w[((size_t)co * Cq + ci) * kk + kk - 1] * xp[ci * xcs];
                    xp[co * xcs] = acc;
                }
            }
        }
        __syncthreads();
    }

    if (XS) quarter_out(x, X, base, cs, Cq, H, W, fy, fx, tid, nt);
}

/* The k = 3 inverse, for batch-1 latency: the same two phases, with the
 * kernel size a constant so the tap loops unroll; each thread keeps one output
 * channel for the whole solve (phase 1 strides by a multiple of Cq), so when
 * Cq <= K3_REG_CQ its Cq x 3 x 3 taps sit in registers, loaded once; the
 * quarter weights are a __grid_constant__ parameter, read in place rather
 * than copied to local memory for the dynamic w[q]; and a block of one warp
 * (WARP, when a diagonal's work fits 32 threads) steps through the
 * diagonals with __syncwarp instead of block barriers. */
#define K3_REG_CQ 4

template <bool XS, bool WS, bool WARP>
__global__ void __launch_bounds__(FINC_INV_MAX_THREADS)
finc_inverse_k3_kernel(float *x, const float *y, const __grid_constant__ finc_quarters wq, int Cq, int B, int H, int W)
{
    extern __shared__ float smem[];
    const int q = blockIdx.x & 3, b = blockIdx.x >> 2, fy = q >> 1, fx = q & 1;
    const int tid = threadIdx.x, nt = blockDim.x, HW = H * W;
    const size_t cs = (size_t)B * HW, base = ((size_t)q * Cq * B + b) * HW;
    /* Phase 1's stride: a multiple of Cq, so thread tid always has channel tid % Cq. */
    const int nt1 = nt - nt % Cq, co = tid % Cq;

    const float *w = wq.w[q];
    if (WS) {
        float *ws = smem + (XS ? (size_t)Cq * HW : 0);
        for (int i = tid; i < Cq * Cq * 9; i += nt) ws[i] = w[i];
        w = ws;
    }
    /* X(ci, hp, wp) = X[ci * xcs + flip(hp, H, xfy) * W + flip(wp, W, xfx)] */
    size_t xcs;
    int xfy, xfx;
    float *X = quarter_in(XS, smem, x, y, base, cs, Cq, H, W, fy, fx, tid, nt, &xcs, &xfy, &xfx);
    if (WARP) __syncwarp();
    else __syncthreads();

    /* This thread's taps, channel co: (ci, a, j) at ci * 9 + a * 3 + j. */
    const bool reg = Cq <= K3_REG_CQ;
    float tap[K3_REG_CQ * 9];
#pragma unroll
    for (int i = 0; i < K3_REG_CQ * 9; i++) tap[i] = reg && i < Cq * 9 ? w[(size_t)co * Cq * 9 + i] : 0.0f;

    for (int d = 0; d <= H + W - 2; d++) {
        const int h0 = d - (W - 1) > 0 ? d - (W - 1) : 0, h1 = d < H - 1 ? d : H - 1, n = h1 - h0 + 1;
        /* Phase 1: X(co, pixel) = y - taps on earlier diagonals. */
        for (int it = tid; tid < nt1 && it < n * Cq; it += nt1) {
            const int hp = h0 + it / Cq, wp = d - hp;
            float acc = 0.0f;
            /* The same sum twice: from the registers, whose indices must be
             * compile-time constants (a pointer into tap[] would put it in
             * local memory), or from the weights, for larger Cq. */
            if (reg) {
#pragma unroll
                for (int ci = 0; ci < K3_REG_CQ; ci++) {
                    if (ci >= Cq) break;
                    const float *xc = X + ci * xcs;
#pragma unroll
                    for (int a = 0; a < 3; a++) {
                        const int sh = hp - 2 + a;
                        if (sh < 0) continue;
                        const float *row = xc + (size_t)flip(sh, H, xfy) * W;
#pragma unroll
                        for (int j = 0; j < (a == 2 ? 2 : 3); j++) {
                            const int sw = wp - 2 + j;
                            if (sw >= 0) acc += tap[ci * 9 + a * 3 + j] * row[flip(sw, W, xfx)];
                        }
                    }
                }
            } else {
                const float *wk = w + (size_t)co * Cq * 9;
                for (int ci = 0; ci < Cq; ci++) {
                    const float *xc = X + ci * xcs;
#pragma unroll
                    for (int a = 0; a < 3; a++) {
                        const int sh = hp - 2 + a;
                        if (sh < 0) continue;
                        const float *row = xc + (size_t)flip(sh, H, xfy) * W;
                        const float *wr = wk + ci * 9 + a * 3;
#pragma unroll
                        for (int j = 0; j < (a == 2 ? 2 : 3); j++) {
                            const int sw = wp - 2 + j;
                            if (sw >= 0) acc += wr[j] * row[flip(sw, W, xfx)];
                        }
                    }
                }
            }
            X[co * xcs + (size_t)flip(hp, H, xfy) * W + flip(wp, W, xfx)] -= acc;
        }
        if (Cq > 1) {
            if (WARP) __syncwarp();
            else __syncthreads();
            /* Phase 2: forward substitution over the current-pixel tap. */
            for (int p = tid; p < n; p += nt) {
                const int hp = h0 + p, wp = d - hp;
                float *xp = X + (size_t)flip(hp, H, xfy) * W + flip(wp, W, xfx);
                for (int c2 = 1; c2 < Cq; c2++) {
                    float acc = xp[c2 * xcs];
                    for (int ci = 0; ci < c2; ci++) acc -= w[((size_t)c2 * Cq + ci) * 9 + 8] * xp[ci * xcs];
                    xp[c2 * xcs] = acc;
                }
            }
        }
        if (WARP) __syncwarp();
        else __syncthreads();
    }

    if (XS) quarter_out(x, X, base, cs, Cq, H, W, fy, fx, tid, nt);
}

typedef void (*finc_inverse_fn)(float *, const float *, finc_quarters, int, int, int, int, int);

/* Indexed by mode - 1: FINC_CUDA_FINC_SMEM_BOTH .. FINC_CUDA_FINC_GLOBAL. */
static const finc_inverse_fn inverse_kernels[4] = {
    finc_inverse_kernel<true, true>, finc_inverse_kernel<true, false>,
    finc_inverse_kernel<false, true>, finc_inverse_kernel<false, false>};

typedef void (*finc_inverse_k3_fn)(float *, const float *, const finc_quarters, int, int, int, int);

/* Indexed by 2 * (mode - 1) + warp. */
static const finc_inverse_k3_fn inverse_k3_kernels[8] = {
    finc_inverse_k3_kernel<true, true, false>,   finc_inverse_k3_kernel<true, true, true>,
    finc_inverse_k3_kernel<true, false, false>,  finc_inverse_k3_kernel<true, false, true>,
    finc_inverse_k3_kernel<false, true, false>,  finc_inverse_k3_kernel<false, true, true>,
    finc_inverse_k3_kernel<false, false, false>, finc_inverse_k3_kernel<false, false, true>};

int finc_cuda_finc_init(finc_cuda_ctx *c)
{
    int optin = 0;
    if (FINC_CUDA_TRY(c, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->device)))
        return -1;
    /* Past 48 KiB a kernel must opt in; without it the default limit holds. */
    c->smem_limit = 48 * 1024;
    if ((size_t)optin > c->smem_limit) {
        int ok = 1;
        for (int i = 0; i < 12; i++)
            if (cudaFuncSetAttribute(i < 4 ? (const void *)inverse_kernels[i] : (const void *)inverse_k3_kernels[i - 4],
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, optin) != cudaSuccess) {
                (void)cudaGetLastError();
                ok = 0;
            }
        if (ok) c->smem_limit = (size_t)optin;
    }
    c->smem_device = c->smem_limit;
    return 0;
}

/* The placement for a shape: the forced mode if it fits, else the next smaller. */
static int inverse_mode(const finc_cuda_ctx *c, size_t xbytes, size_t wbytes)
{
    const size_t lim = c->smem_limit;
    int m = c->finc_mode == FINC_CUDA_FINC_AUTO ? FINC_CUDA_FINC_SMEM_BOTH : c->finc_mode;
    if (m == FINC_CUDA_FINC_SMEM_BOTH && xbytes + wbytes > lim) m = FINC_CUDA_FINC_SMEM_IMAGE;
    if (m == FINC_CUDA_FINC_SMEM_IMAGE && xbytes > lim) m = FINC_CUDA_FINC_SMEM_WEIGHTS;
    if (m == FINC_CUDA_FINC_SMEM_WEIGHTS && wbytes > lim) m = FINC_CUDA_FINC_GLOBAL;
    return m;
}

void finc_cuda_finc_inverse(finc_cuda_ctx *c, float *x, const float *y, const finc_step *st,
                            int C, int B, int H, int W, int k)
{
    if (B == 0 || C == 0) return;
    const int Cq = C / 4;
    const size_t xbytes = (size_t)Cq * H * W * sizeof(float), wbytes = (size_t)Cq * Cq * k * k * sizeof(float);
    const int mode = inverse_mode(c, xbytes, wbytes);
    const size_t smem = (mode == FINC_CUDA_FINC_SMEM_BOTH || mode == FINC_CUDA_FINC_SMEM_IMAGE ? xbytes : 0) +
                        (mode == FINC_CUDA_FINC_SMEM_BOTH || mode == FINC_CUDA_FINC_SMEM_WEIGHTS ? wbytes : 0);
    /* Enough threads for every (channel, pixel) of the longest diagonal. */
    const int diag = H < W ? H : W;
    int threads = (diag * Cq + 31) / 32 * 32;
    if (k == 3 && !c->finc_general) {
        /* One warp when the longest diagonal's work fits it. */
        const int warp = diag * Cq <= 32;
        threads = warp ? 32 : threads > FINC_INV_MAX_THREADS ? FINC_INV_MAX_THREADS : threads;
        inverse_k3_kernels[2 * (mode - 1) + warp]<<<4 * B, threads, smem, c->stream>>>(x, y, quarters_of(c, st), Cq, B,
                                                                                       H, W);
        FINC_CUDA_LAUNCHED(c, "finc_inverse_k3_kernel");
        return;
    }
    threads = threads < 64 ? 64 : threads > FINC_INV_MAX_THREADS ? FINC_INV_MAX_THREADS : threads;
    inverse_kernels[mode - 1]<<<4 * B, threads, smem, c->stream>>>(x, y, quarters_of(c, st), Cq, B, H, W, k);
    FINC_CUDA_LAUNCHED(c, "finc_inverse_kernel");
}
