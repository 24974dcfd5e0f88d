# cython: language_level=3, boundscheck=False, wraparound=False, nonecheck=False, cdivision=True, initializedcheck=False
"""Compiled FInC inverse for the PyTorch baseline benchmark (tools/bench_torch.py).

One call inverts a whole FInC unit (docs/model.md section 2) in float32:

    finc_inverse(y, w, out=None, nthreads=1) -> x

y     float32 C-contiguous (N, C, H, W), the unit's output.
w     float32 C-contiguous (4, C/4, C/4, k, k): the kernels of quarters TL, TR, BL, BR
      in their stored forward form (not flipped).
out   optional float32 C-contiguous (N, C, H, W) to write x into; it may be y itself
      (in place: each pixel's y is read before its x is written, and the solved
      values are kept in the scratch buffer).

Each quarter is solved in its own orientation instead of being flipped to TL form:
the forward convolution reads a one-sided padded input, so with the image placed in a
zero-padded scratch buffer at the quarter's padding offset (pt, pl), every output pixel
is y[c,h,w] = sum_{c',r,s} W[c,c',r,s] * P[c', h+r, w+s], and the current-pixel tap is
(r, s) = (pt, pl). Visiting rows top-down when the padding is on top (else bottom-up)
and columns left-to-right when the padding is on the left (else right-to-left) is the
quarter's raster order in TL form: every tap but the current one reads a pixel already
solved (or padding), and the current tap is a unit lower-triangular forward
substitution over channels. Sequential work per image is the raster order; images are
independent and may be spread over `nthreads` OpenMP threads (1 = single thread, the
public code's correct non-OpenMP setting). The GIL is released throughout.
"""

import numpy as np
cimport cython
from cython.parallel cimport prange, threadid
from libc.stdlib cimport malloc, free
from libc.string cimport memset


cdef void _solve_image(const float[:, :, :, ::1] y, const float[:, :, :, :, ::1] w,
                       float[:, :, :, ::1] x, Py_ssize_t n,
                       float* pbuf, float* acc) noexcept nogil:
    cdef Py_ssize_t cq = w.shape[1]
    cdef Py_ssize_t k = w.shape[3]
    cdef Py_ssize_t hh = y.shape[2]
    cdef Py_ssize_t ww = y.shape[3]
    cdef Py_ssize_t hp = hh + k - 1
    cdef Py_ssize_t wp = ww + k - 1
    cdef Py_ssize_t plane = hp * wp
    cdef Py_ssize_t q, pt, pl, ih, iw, h, w0, c, c2, r, s, dh, dw
    cdef float v
    cdef const float* wq
    cdef const float* wrow
    cdef float* prow
    for q in range(4):
        # TL (k-1, k-1), TR (k-1, 0), BL (0, k-1), BR (0, 0): top and left padding.
        pt = k - 1 if q < 2 else 0
        pl = k - 1 if (q % 2) == 0 else 0
        dh = 1 if pt else -1
        dw = 1 if pl else -1
        memset(pbuf, 0, cq * plane * sizeof(float))
        wq = &w[q, 0, 0, 0, 0]
        for ih in range(hh):
            h = ih if dh > 0 else hh - 1 - ih
            for iw in range(ww):
                w0 = iw if dw > 0 else ww - 1 - iw
                # Every tap, the current pixel's included (still 0 in pbuf).
                for c in range(cq):
                    v = y[n, q * cq + c, h, w0]
                    for c2 in range(cq):
                        for r in range(k):
                            wrow = wq + ((c * cq + c2) * k + r) * k
                            prow = pbuf + c2 * plane + (h + r) * wp + w0
                            for s in range(k):
                                v = v - wrow[s] * prow[s]
                    acc[c] = v
                # Forward substitution with the unit lower-triangular current tap.
                for c in range(cq):
                    v = acc[c]
                    for c2 in range(c):
                        v = v - wq[((c * cq + c2) * k + pt) * k + pl] * acc[c2]
                    acc[c] = v
                    pbuf[c * plane + (h + pt) * wp + (w0 + pl)] = v
                    x[n, q * cq + c, h, w0] = v


def finc_inverse(y, w, out=None, int nthreads=1):
    """Inverts one FInC unit; see the module docstring."""
    cdef const float[:, :, :, ::1] yv = y
    cdef const float[:, :, :, :, ::1] wv = w
    cdef Py_ssize_t nb = yv.shape[0], ch = yv.shape[1], hh = yv.shape[2], ww = yv.shape[3]
    if ch % 4 or wv.shape[0] != 4 or wv.shape[1] != ch // 4 or wv.shape[2] != ch // 4 \
            or wv.shape[3] != wv.shape[4] or wv.shape[3] < 1:
        raise ValueError("finc_inverse: y %s and w %s do not match"
                         % (tuple(y.shape), tuple(w.shape)))
    if out is None:
        out = np.empty((nb, ch, hh, ww), dtype=np.float32)
    cdef float[:, :, :, ::1] xv = out
    if xv.shape[0] != nb or xv.shape[1] != ch or xv.shape[2] != hh or xv.shape[3] != ww:
        raise ValueError("finc_inverse: out has the wrong shape")
    cdef Py_ssize_t cq = ch // 4, k = wv.shape[3]
    cdef Py_ssize_t scratch = cq * (hh + k - 1) * (ww + k - 1) + cq
    cdef Py_ssize_t n
    cdef float* buf
    cdef int tid
    if nb == 0:
        return out
    if nthreads < 1:
        nthreads = 1
    if nthreads > nb:
        nthreads = <int>nb
    # One scratch area per thread: a zero-padded plane per channel, then cq floats.
    buf = <float*>malloc(nthreads * scratch * sizeof(float))
    if buf == NULL:
        raise MemoryError("finc_inverse: out of memory")
    try:
        if nthreads == 1:
            with nogil:
                for n in range(nb):
                    _solve_image(yv, wv, xv, n, buf, buf + scratch - cq)
        else:
            for n in prange(nb, nogil=True, num_threads=nthreads, schedule="static"):
                tid = threadid()
                _solve_image(yv, wv, xv, n, buf + tid * scratch, buf + (tid + 1) * scratch - cq)
    finally:
        free(buf)
    return out
