/* The affine coupling on the GPU (model.md section 2), mirroring
 * engine/cpu_coupling.c: the net's three convolutions are GEMMs over all B*H*W
 * pixels of the batch (kernels/gemm.cu),
 *   conv1 3x3:  im2col of x1 (cin*9, N), then W1 (F, cin*9) . col, + b1, ReLU
 *   conv2 1x1:  W2 (F, F) . h1, + b2, ReLU
 *   conv3 3x3:  W3 with taps outermost (cout*9, F) . h2, then a shift-add over
 *               the nine taps, fused with the affine transform and the log-det.
 * Bias and ReLU are the GEMMs' epilogue, not passes of their own; for that
 * the hidden activations h1, h2 are pixel-major (N, F), where the CPU's are
 * (F, N): the bias is then per row of cuBLASLt's column-major output.
 * The taps-outermost copy of W3 is derived at load (engine/model.c) and
 * uploaded with the rest of the weights block. */
#include "kernels/cuda.h"

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* col (cin*9, B*H*W) from x (cin, B, H, W), zero padding 1. */
__global__ void im2col3x3_kernel(float *col, const float *x, int cin, int B, int H, int W)
{
    const size_t HW = (size_t)H * W, N = (size_t)B * HW;
    GRID_STRIDE(i, (size_t)cin * 9 * N) {
        const int r = (int)(i / N), ci = r / 9, dy = (r % 9) / 3 - 1, dx = r % 3 - 1;
        const size_t n = i % N;
        const int b = (int)(n / HW), p = (int)(n % HW), sh = p / W + dy, sw = p % W + dx;
        col[i] = (sh >= 0 && sh < H && sw >= 0 && sw < W) ? x[((size_t)ci * B + b) * HW + (size_t)sh * W + sw]
                                                          : 0.0f;
    }
}

/* The net: fills c->taps (cout*9, N) for the shift-add. */
static void coupling_net(finc_cuda_ctx *c, const float *x1, const finc_coupling *cp, int B, int H, int W)
{
    const int N = B * H * W, K1 = cp->cin * 9;
    const finc_cuda_level_gemms *g = finc_cuda_gemms_of(c, cp->cout);
    im2col3x3_kernel<<<finc_cuda_blocks((size_t)K1 * N), FINC_CUDA_THREADS, 0, c->stream>>>(c->col, x1, cp->cin,
                                                                                            B, H, W);
    FINC_CUDA_LAUNCHED(c, "im2col3x3_kernel");
    finc_cuda_gemm_run(c, g->conv1, N, finc_cuda_weight(c, cp->w1), c->col, c->h1, finc_cuda_weight(c, cp->b1));
    /* The F x F product, the largest: the one TF32 applies to (its plan's). */
    finc_cuda_gemm_run(c, g->conv2, N, finc_cuda_weight(c, cp->w2), c->h1, c->h2, finc_cuda_weight(c, cp->b2));
    finc_cuda_gemm_run(c, g->conv3, N, c->h2, finc_cuda_weight(c, cp->w3_taps), c->taps, NULL);
}

/* Net output channel co at pixel (h, w) of image b: shift-add of the taps,
 * bias and the exp(3 logs) scale; the sum runs in the CPU's order. */
struct net_out_args {
    const float *taps;            /* (cout*9, N) */
    const float *b3, *scale3;     /* (cout,) */
    int B, H, W;
};

__device__ __forceinline__ float net_out(const net_out_args &a, int co, int b, int h, int w)
{
    const size_t HW = (size_t)a.H * a.W, N = (size_t)a.B * HW;
    float acc = 0.0f;
    for (int dy = -1; dy <= 1; dy++) {
        const int sh = h + dy;
        if (sh < 0 || sh >= a.H) continue;
        for (int dx = -1; dx <= 1; dx++) {
            const int sw = w + dx;
            if (sw < 0 || sw >= a.W) continue;
            const int t = (dy + 1) * 3 + (dx + 1);
            acc += a.taps[((size_t)co * 9 + t) * N + (size_t)b * HW + (size_t)sh * a.W + sw];
        }
    }
    return __fmul_rn(acc + a.b3[co], a.scale3[co]);
}

__device__ __forceinline__ float log_scale_of(float hs) { return 2.0f * tanhf(0.5f * hs); }

/* x2 <- x2 * exp(log_s) + t for element i = (j, h, w) of image b; returns log_s. */
struct affine_forward_op {
    net_out_args a;
    float *x2;                    /* (half, B, H, W) */
    __device__ double operator()(int b, int i) const
    {
        const int HW = a.H * a.W, j = i / HW, p = i % HW, h = p / a.W, w = p % a.W;
        const float ls = log_scale_of(net_out(a, 2 * j, b, h, w));
        const float t = net_out(a, 2 * j + 1, b, h, w);
        float *v = x2 + (size_t)j * a.B * HW + (size_t)b * HW + p;
        *v = __fadd_rn(__fmul_rn(*v, expf(ls)), t);
        return ls;
    }
};

__global__ void affine_inverse_kernel(net_out_args a, float *x2, int half)
{
    const size_t HW = (size_t)a.H * a.W, N = (size_t)a.B * HW;
    GRID_STRIDE(i, (size_t)half * N) {
        const int j = (int)(i / N), b = (int)(i % N / HW), p = (int)(i % HW), h = p / a.W, w = p % a.W;
        const float ls = log_scale_of(net_out(a, 2 * j, b, h, w));
        const float t = net_out(a, 2 * j + 1, b, h, w);
        x2[i] = __fmul_rn(__fsub_rn(x2[i], t), expf(-ls));
    }
}

static net_out_args net_args(const finc_cuda_ctx *c, const finc_coupling *cp, int B, int H, int W)
{
    const net_out_args a = {c->taps, finc_cuda_weight(c, cp->b3), finc_cuda_weight(c, cp->scale3), B, H, W};
    return a;
}

void finc_cuda_coupling_forward(finc_cuda_ctx *c, float *x, double *logdet, const finc_coupling *cp,
                                int B, int H, int W)
{
    if (B == 0) return;
    const size_t N = (size_t)B * H * W;
    coupling_net(c, x, cp, B, H, W);
    /* Per image, so each image's log-det sums in the same order at any batch. */
    const affine_forward_op f = {net_args(c, cp, B, H, W), x + (size_t)cp->cin * N};
    finc_cuda_reduce(c, logdet, B, cp->cin * H * W, f);
}

void finc_cuda_coupling_inverse(finc_cuda_ctx *c, float *x, const finc_coupling *cp, int B, int H, int W)
{
    if (B == 0) return;
    const size_t N = (size_t)B * H * W, n = (size_t)cp->cin * N;
    coupling_net(c, x, cp, B, H, W);
    affine_inverse_kernel<<<finc_cuda_blocks(n), FINC_CUDA_THREADS, 0, c->stream>>>(net_args(c, cp, B, H, W),
                                                                                    x + (size_t)cp->cin * N, cp->cin);
    FINC_CUDA_LAUNCHED(c, "affine_inverse_kernel");
}
