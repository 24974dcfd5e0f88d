#!/usr/bin/python3
"""The PyTorch baseline of the engine benchmark: a fast float32 FInC Flow in PyTorch.

    tools/bench_torch.py MODEL.safetensors [--threads 2] [--json] [--budget 12]

Loads a weights file (docs/model.md section 4) into a float32 PyTorch model built for
speed (not the readable reference, tools/finc_torch.py, which it is checked against),
and times, under torch.no_grad() with torch.set_num_threads(THREADS):

  encode   pre-processing (u = 0.5) + the whole flow + log p, for a batch of random
           8-bit images: latency (ms per batch) and throughput (images/s);
  sample   draw the latents (N(0, T^2)) + the whole inverse + post-processing to 8-bit
           pixels: latency and throughput.

at batch 1 and 64 (--batches), each the median of >= 5 (--min-runs) timed runs after
a warm-up call; each figure runs for its share of --budget seconds (at most 200 runs),
so with loading, checks and warm-ups a model takes about 20 s at the default.
Activations are NHWC (channels_last), oneDNN's native layout; the FxF 1x1 convolution
is called through torch.mkldnn_convolution (PyTorch picks im2col + BLAS at batch 1,
about 2x slower).

The work is the engine's: PyTorch's own convolutions (oneDNN on CPU) for the FInC
forward, the 1x1 convolutions and the couplings, and a compiled FInC solver for every
FInC inverse, as in the public FInC Flow code, which uses Cython:
tools/finc_solve.pyx, built at run time by tools/build_solver.py (cython3, gcc -O3
-march=native) into build/bench/, GIL released, raster order per image and quarter,
images spread over --solver-threads OpenMP threads (default THREADS; 1 is the public
code's correct non-OpenMP build).

Load-time preparation, all exact algebra done once in float64: the FInC constraint is
applied to the kernels; the couplings' exp(3*logs) is folded into their last
convolution, whose outputs are reordered so scale and shift are contiguous halves; the
ActNorm is folded into the 1x1 convolution (forward) and into its inverse (inverse);
with --fuse (the default) the four FInC quarter convolutions, the ActNorm and the 1x1
convolution of the forward direction are one (C, C, 2k-1, 2k-1) convolution (they are
all linear); --no-fuse keeps four quarter convolutions then one 1x1 convolution.
Constant log-determinants are computed once.

Before timing, the baseline is checked (it must do the same work correctly): the
Cython solver against finc_torch's exact inverse on random data (max error < 1e-4),
log p against finc_torch.encode (float64 reference) on 2 images (relative error <
1e-3), and the sampled continuous output against finc_torch's flow_inverse on the same
latents.

Output: a JSON object (--json: only that, on stdout; else a table, then the JSON) with
encode_b1_ms, encode_b1_img_s, encode_b64_ms, encode_b64_img_s, sample_b1_ms,
sample_b1_img_s, sample_b64_ms, sample_b64_img_s (and _runs, _ms_min), torch_version,
threads, the checks' figures, and loadavg_start/loadavg_end (another process on the
cores makes the figures meaningless: time on a quiet machine).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_solver  # noqa: E402
import finc_torch as ft  # noqa: E402

LN_2PI = math.log(2.0 * math.pi)


T_START = time.perf_counter()


def log(msg):
    sys.stderr.write("[%6.1fs] %s\n" % (time.perf_counter() - T_START, msg))
    sys.stderr.flush()


# --------------------------------------------------------------------------- fast model

class FastFInCFlow:
    """Float32 inference form of a finc_torch.FInCFlow (forward and inverse)."""

    def __init__(self, ref, solver, solver_threads=1, fuse=True):
        self.config = cfg = ref.config
        self.solver = solver
        self.solver_threads = max(1, int(solver_threads))
        self.fuse = bool(fuse)
        self.alpha = cfg["alpha"]
        self.k = k = cfg["kernel"]
        self.dims = ft.num_dims(cfg)
        self.latent_shapes = ft.latent_shapes(cfg)
        f32 = torch.float32
        shapes = ft.level_shapes(cfg)
        self.levels = []
        const_logdet = 0.0
        with torch.no_grad():
            for l, level in enumerate(ref.levels):
                c, h, w = shapes[l]
                steps = []
                for step in level.steps:
                    cq = c // 4
                    kern = [step.finc.kernel_of(q).detach().double() for q in ft.QUARTERS]
                    # Block-diagonal (C, C, 2k-1, 2k-1) kernel, padding k-1 on every side:
                    # quarter q's kernel sits in the corner opposite its padding.
                    big = torch.zeros(c, c, 2 * k - 1, 2 * k - 1, dtype=torch.float64)
                    for i, q in enumerate(ft.QUARTERS):
                        r0 = 0 if q in ("tl", "tr") else k - 1
                        s0 = 0 if q in ("tl", "bl") else k - 1
                        big[i * cq:(i + 1) * cq, i * cq:(i + 1) * cq, r0:r0 + k, s0:s0 + k] = kern[i]
                    m = step.conv1x1.weight.detach().double()
                    if step.actnorm is not None:
                        ls = step.actnorm.log_scale.detach().double()
                        tr = step.actnorm.translation.detach().double()
                    else:
                        ls = torch.zeros(c, dtype=torch.float64)
                        tr = torch.zeros(c, dtype=torch.float64)
                    a = m * torch.exp(-ls).view(1, -1)            # y = A x + b, A = M diag(e^-s)
                    b = -(a @ tr)
                    minv = torch.inverse(m)
                    ainv = torch.exp(ls).view(-1, 1) * minv       # x = diag(e^s) M^-1 y + t
                    const_logdet += h * w * (float(torch.slogdet(m)[1]) - float(ls.sum()))
                    st = {
                        "finc_fused": torch.einsum("oc,cikl->oikl", a, big).to(f32).contiguous(),
                        "finc_quarters": [kq.to(f32).contiguous() for kq in kern],
                        "finc_solver": np.ascontiguousarray(torch.stack(kern).to(f32).numpy()),
                        "lin_w": a.to(f32).view(c, c, 1, 1).contiguous(),
                        "lin_b": b.to(f32).contiguous(),
                        "inv_w": ainv.to(f32).view(c, c, 1, 1).contiguous(),
                        "inv_b": tr.to(f32).contiguous(),
                        "coupling": self._coupling(step.coupling),
                    }
                    steps.append(st)
                split = self._coupling(level.split.coupling) if level.split is not None else None
                self.levels.append((steps, split))
        self.const_logdet = const_logdet

    @staticmethod
    def _coupling(cp):
        f32 = torch.float32
        c = cp.conv3.weight.shape[0]
        order = list(range(0, c, 2)) + list(range(1, c, 2))  # scale channels, then shift
        scale = torch.exp(3.0 * cp.conv3.logs.detach().double())
        w3 = cp.conv3.weight.detach().double() * scale.view(-1, 1, 1, 1)
        b3 = cp.conv3.bias.detach().double() * scale
        cl = torch.channels_last
        return (cp.conv1.weight.detach().to(f32).contiguous(memory_format=cl),
                cp.conv1.bias.detach().to(f32).contiguous(),
                cp.conv2.weight.detach().to(f32).contiguous(memory_format=cl),
                cp.conv2.bias.detach().to(f32).contiguous(),
                w3[order].to(f32).contiguous(memory_format=cl), b3[order].to(f32).contiguous())

    # -- pieces

    @staticmethod
    def _coupling_params(p, x1):
        # NHWC (channels_last) activations: oneDNN's native layout, no reorders per call.
        # The F x F 1x1 convolution goes to oneDNN directly: at batch 1 PyTorch's own
        # choice (im2col + BLAS) is about 2x slower.
        w1, b1, w2, b2, w3, b3 = p
        x1 = x1.contiguous(memory_format=torch.channels_last)
        h = torch.relu_(F.conv2d(x1, w1, b1, padding=1))
        h = torch.relu_(torch.mkldnn_convolution(h, w2, b2, (0, 0), (1, 1), (1, 1), 1))
        h = F.conv2d(h, w3, b3, padding=1)
        half = h.shape[1] // 2
        log_s = torch.tanh_(h[:, :half] * 0.5) * 2.0
        return log_s, h[:, half:]

    def _coupling_fwd(self, p, x, logdet):
        half = x.shape[1] // 2
        x1, x2 = x[:, :half], x[:, half:]
        log_s, t = self._coupling_params(p, x1)
        logdet += log_s.sum(dim=(1, 2, 3))
        return torch.cat([x1, torch.addcmul(t, x2, torch.exp(log_s))], 1)

    def _coupling_inv(self, p, y):
        half = y.shape[1] // 2
        y1, y2 = y[:, :half], y[:, half:]
        log_s, t = self._coupling_params(p, y1)
        return torch.cat([y1, (y2 - t).mul_(torch.exp_(log_s.neg_()))], 1)

    def _finc_linear_fwd(self, st, x):
        k = self.k
        if self.fuse:
            return F.conv2d(x, st["finc_fused"], st["lin_b"], padding=k - 1)
        cq = x.shape[1] // 4
        ys = [F.conv2d(F.pad(x[:, i * cq:(i + 1) * cq], ft.finc_pad(q, k)), st["finc_quarters"][i])
              for i, q in enumerate(ft.QUARTERS)]
        return F.conv2d(torch.cat(ys, 1), st["lin_w"], st["lin_b"])

    def _finc_inv(self, st, y):
        # NCHW copy of the (NHWC) 1x1 output, solved in place.
        x = y.contiguous()
        xn = x.numpy()
        self.solver.finc_inverse(xn, st["finc_solver"], xn, self.solver_threads)
        return x

    # -- whole model

    def encode(self, pixels):
        """uint8 (N, C, H, W) -> (latents list, log p float64 (N,)); u = 0.5."""
        a = self.alpha
        x = (pixels.to(torch.float32) + 0.5) * (1.0 / 256.0)
        x = (x + a) * (1.0 - 2.0 * a)
        lx, l1x = torch.log(x), torch.log1p(-x)
        logdet = -(lx + l1x).sum(dim=(1, 2, 3))
        x = lx - l1x
        zs = []
        for steps, split in self.levels:
            x = ft.squeeze(x)
            for st in steps:
                x = self._finc_linear_fwd(st, x)
                x = self._coupling_fwd(st["coupling"], x, logdet)
            if split is not None:
                x = self._coupling_fwd(split, x, logdet)
                half = x.shape[1] // 2
                zs.append(x[:, half:])
                x = x[:, :half]
        zs.append(x)
        sq = sum(z.square().sum(dim=(1, 2, 3)) for z in zs)
        const = self.const_logdet + self.dims * (math.log(1.0 - 2.0 * a) - math.log(256.0) - 0.5 * LN_2PI)
        logp = (logdet - 0.5 * sq).double() + const
        return zs, logp

    def draw(self, n, temperature=1.0, generator=None):
        return [torch.randn(n, c, h, w, generator=generator).mul_(temperature)
                for (c, h, w) in self.latent_shapes]

    def flow_inverse(self, zs):
        x = zs[-1]
        for l in reversed(range(len(self.levels))):
            steps, split = self.levels[l]
            if split is not None:
                x = self._coupling_inv(split, torch.cat([x, zs[l]], 1))
            for st in reversed(steps):
                x = self._coupling_inv(st["coupling"], x)
                x = F.conv2d(x, st["inv_w"], st["inv_b"])
                x = self._finc_inv(st, x)
            x = ft.unsqueeze(x)
        return x

    def postprocess(self, x):
        a = self.alpha
        x = torch.sigmoid(x) * (1.0 / (1.0 - 2.0 * a)) - a
        return torch.clamp(torch.floor(x * 256.0), 0, 255).to(torch.uint8)

    def sample(self, n, temperature=1.0, generator=None):
        return self.postprocess(self.flow_inverse(self.draw(n, temperature, generator)))


# --------------------------------------------------------------------------- checks

def check_solver(solver, ref, solver_threads):
    """Cython FInC inverse vs finc_torch's exact (float64, raster) inverse."""
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    cases = []
    # The model's own first FInC unit of every level, on random outputs.
    for l, level in enumerate(ref.levels):
        if len(level.steps):
            c, h, w = ft.level_shapes(ref.config)[l]
            cases.append((level.steps[0].finc, 3, h, w))
    # Random units: non-square images, wider quarters, other kernel sizes.
    for (c, k, h, w) in ((4, 3, 9, 5), (12, 3, 6, 11), (16, 2, 5, 4), (8, 5, 7, 8), (4, 1, 3, 3)):
        unit = ft.FInC(c, k).double()
        cq = c // 4
        with torch.no_grad():
            for q in ft.QUARTERS:
                wq = torch.randn(cq, cq, k, k, generator=g, dtype=torch.float64) * (0.8 / (cq * k * k))
                r, s = ft.finc_current_tap(q, k)
                wq[:, :, r, s] = torch.eye(cq, dtype=torch.float64) + \
                    torch.tril(torch.randn(cq, cq, generator=g, dtype=torch.float64) * 0.2, -1)
                getattr(unit, q).copy_(wq)
        cases.append((unit, 2, h, w))
    for unit, n, h, w in cases:
        unit = unit.double() if next(unit.parameters()).dtype != torch.float64 else unit
        y = torch.randn(n, unit.channels, h, w, generator=g, dtype=torch.float64).float().double()
        exact = unit.inverse(y)
        wk = np.ascontiguousarray(torch.stack([unit.kernel_of(q).detach() for q in ft.QUARTERS]).float().numpy())
        for nt in sorted({1, solver_threads}):
            got = solver.finc_inverse(np.ascontiguousarray(y.float().numpy()), wk, None, nt)
            err = float(np.abs(got.astype(np.float64) - exact.numpy()).max())
            worst = max(worst, err)
            if not err < 1e-4:
                raise AssertionError("Cython FInC inverse: max error %.3g >= 1e-4 (C=%d, k=%d, %dx%d, %d threads)"
                                     % (err, unit.channels, unit.kernel, h, w, nt))
    return worst, len(cases)


def check_model(fast, ref):
    """log p and sampling of the fast model vs finc_torch (float64) on 2 images."""
    g = torch.Generator().manual_seed(11)
    cfg = ref.config
    pixels = torch.randint(0, 256, (2, *cfg["image"]), generator=g, dtype=torch.uint8)
    lat_ref, logp_ref = ft.encode(ref, pixels)
    with torch.no_grad():
        zs, logp = fast.encode(pixels)
    rel = float(((logp - logp_ref).abs() / logp_ref.abs()).max())
    lat_err = float((ft.flatten_latents(zs).double() - lat_ref).abs().max())
    if not rel < 1e-3:
        raise AssertionError("fast model log p %s vs reference %s: relative error %.3g >= 1e-3"
                             % (logp.tolist(), logp_ref.tolist(), rel))
    # Sampling: the same latents through both inverses (continuous output, before rounding).
    zs = fast.draw(2, 1.0, torch.Generator().manual_seed(12))
    with torch.no_grad():
        x_fast = fast.flow_inverse(zs).double()
        x_ref = ref.flow_inverse([z.double() for z in zs])
        round_trip = fast.flow_inverse(fast.encode(pixels)[0])
    ref_pre, _ = ft.preprocess(pixels)
    inv_err = float(((x_fast - x_ref).abs() / (1.0 + x_ref.abs())).max())
    rt_err = float((round_trip.double() - ref_pre).abs().max())
    if not inv_err < 1e-3:
        raise AssertionError("fast inverse vs reference: max error %.3g >= 1e-3 (relative to 1+|x|)" % inv_err)
    if not rt_err < 1e-2:
        raise AssertionError("fast encode -> inverse round trip: max error %.3g" % rt_err)
    return {"logp_ref": [round(float(v), 4) for v in logp_ref],
            "logp_fast": [round(float(v), 4) for v in logp],
            "logp_rel_err": rel, "latent_max_abs_err": lat_err,
            "inverse_max_rel_err": inv_err, "round_trip_max_abs_err": rt_err}


# --------------------------------------------------------------------------- timing

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_runs(fn, min_runs, budget_s, max_runs=200):
    """Warm-up, then timed runs: at least min_runs, more while the budget lasts (at most
    max_runs). Returns the list of seconds. The first call (oneDNN primitive creation,
    first allocations) is not timed."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    log("bench_torch:   warm-up %.3f s, %d timed runs in %.2f s" % (warm, len(times), time.perf_counter() - start))
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="weights file (.safetensors)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    ap.add_argument("--solver-threads", type=int, default=None,
                    help="OpenMP threads of the Cython FInC solver, over images (default: --threads)")
    ap.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default %(default)s)")
    ap.add_argument("--budget", type=float, default=12.0,
                    help="about how many seconds of timing per model (default %(default)s)")
    ap.add_argument("--min-runs", type=int, default=5, help="timed runs per figure, at least (default %(default)s)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--fuse", dest="fuse", action="store_true", default=True,
                    help="forward FInC + ActNorm + 1x1 as one convolution (default)")
    ap.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="four FInC quarter convolutions, then ActNorm+1x1 as one 1x1 convolution")
    ap.add_argument("--skip-check", action="store_true", help="skip the correctness checks")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = ap.parse_args(argv)

    threads = max(1, args.threads)
    solver_threads = threads if args.solver_threads is None else max(1, args.solver_threads)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    solver = build_solver.load()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref, md = ft.load_safetensors(args.model, dtype=torch.float64)
    fast = FastFInCFlow(ref, solver, solver_threads, args.fuse)
    load_s = time.perf_counter() - t0
    cfg = ref.config
    params = sum(int(t.numel()) for t in ft.weights(ref).values())
    log("bench_torch: %s: image %s, L=%d, steps %s, k=%d, F=%d, %d parameters; torch %s, %d threads, "
        "solver %d threads, fuse=%s" % (args.model, cfg["image"], cfg["levels"], cfg["steps"], cfg["kernel"],
                                        cfg["coupling_width"], params, torch.__version__, threads,
                                        solver_threads, args.fuse))

    result = {"model": args.model, "image": cfg["image"], "levels": cfg["levels"], "steps": cfg["steps"],
              "kernel": cfg["kernel"], "coupling_width": cfg["coupling_width"], "parameters": params,
              "torch_version": torch.__version__, "threads": threads, "solver_threads": solver_threads,
              "solver": "Cython %s raster FInC inverse, gcc %s" % (solver.__name__, " ".join(build_solver.CFLAGS)),
              "fuse": args.fuse, "temperature": args.temperature, "dtype": "float32",
              "mkldnn": bool(torch.backends.mkldnn.is_available()), "cpu": cpu_name(), "cpus": os.cpu_count(),
              "loadavg_start": round(os.getloadavg()[0], 2),
              "solver_build_s": round(build_s, 3), "load_s": round(load_s, 3)}

    if not args.skip_check:
        t0 = time.perf_counter()
        worst, ncases = check_solver(solver, ref, solver_threads)
        checks = check_model(fast, ref)
        checks.update(solver_max_err=worst, solver_cases=ncases, check_s=round(time.perf_counter() - t0, 3))
        result["checks"] = checks
        log("bench_torch: checks passed: solver max error %.2g; log p %s vs reference %s (rel %.2g); "
            "inverse rel err %.2g" % (worst, checks["logp_fast"], checks["logp_ref"], checks["logp_rel_err"],
                                      checks["inverse_max_rel_err"]))
    del ref

    g = torch.Generator().manual_seed(1)
    # Budget: an equal share per figure (encode and sample at every batch size).
    share = args.budget / (2 * len(batches))
    def record(op, b, t):
        med = statistics.median(t)
        result["%s_b%d_ms" % (op, b)] = round(med * 1e3, 3)
        result["%s_b%d_img_s" % (op, b)] = round(b / med, 3)
        result["%s_b%d_runs" % (op, b)] = len(t)
        result["%s_b%d_ms_min" % (op, b)] = round(min(t) * 1e3, 3)
        log("bench_torch: %s b%-3d %10.3f ms  %9.2f img/s  (%d runs)" % (op, b, med * 1e3, b / med, len(t)))

    for b in batches:
        pixels = torch.randint(0, 256, (b, *cfg["image"]), generator=g, dtype=torch.uint8)
        record("encode", b, time_runs(lambda: fast.encode(pixels), args.min_runs, share))
        sg = torch.Generator().manual_seed(2)
        record("sample", b, time_runs(lambda: fast.sample(b, args.temperature, sg), args.min_runs, share))

    # A load average well above the thread count at the end means another process shared
    # the cores during the timing: the figures are then not to be trusted.
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - T_START, 2)
    text = json.dumps(result, sort_keys=False)
    if not args.json:
        print("%-10s %6s %12s %12s" % ("", "batch", "ms/batch", "images/s"))
        for what in ("encode", "sample"):
            for b in batches:
                print("%-10s %6d %12.3f %12.2f" % (what, b, result["%s_b%d_ms" % (what, b)],
                                                   result["%s_b%d_img_s" % (what, b)]))
    print(text)


if __name__ == "__main__":
    main()
