"""Independent float64 reference of finc's anomaly score (engine/anomaly.c).

Given a weights file whose metadata holds the "anomaly" block that `finc calibrate`
writes, this module recomputes, from uint8 images (N, C, H, W), everything the C
engine computes: the feature rows (encode statistics, pixel figures, layout), the
whitened Gaussian-KDE score and the conformal p-value. `refit` redoes the fit
itself from feature rows, so a test can check the stored block, not only use it.

Nothing here calls the C code or shares its arithmetic: the statistics come from
finc_torch in float64, the rest from numpy, so agreement is evidence for both.

    ref = AnomalyReference("cal.safetensors")
    feat = ref.features(pixels)          # (N, d) float64
    scores = ref.score(feat)             # (N,)
    p = ref.p_value(scores)
    fit = refit(feat[:n_fit])            # {"mean", "whiten", "points", "bandwidth"}
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch as ft  # noqa: E402

PCA = 32                # principal components of the layout (FINC_ANOMALY_PCA)
PCA_SIDE = 32           # pool until the pooled plane fits 32 x 32
PIXEL_FEATURES = ("complexity_bpd", "pixel_mean", "pixel_std", "pixel_fraction_0", "pixel_fraction_255")


# --------------------------------------------------------------------------- names

def stat_names(config):
    """Encode statistics in the order of the feature row."""
    names = ["preprocess.logdet"]
    levels = config["levels"]
    for l in range(levels):
        names += ["levels.%d.steps.%d.coupling.logdet" % (l, s) for s in range(config["steps"][l])]
        if l < levels - 1:
            names.append("levels.%d.split.coupling.logdet" % l)
    names += ["levels.%d.latent.logp" % l for l in range(levels)]
    return names


def feature_names(config):
    return (stat_names(config) + list(PIXEL_FEATURES) + ["layout.pc%d" % k for k in range(PCA)]
            + ["layout.residual"])


# --------------------------------------------------------------------------- features

def encode_stats(model, pixels, chunk=50):
    """(N, S) float64: pre-processing log-det, coupling log-dets, latent log densities."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    # Small chunks keep float64 activations in cache; one 400-image pass is ~2x slower.
    return np.concatenate([_encode_stats(model, pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)])


@torch.no_grad()
def _encode_stats(model, pixels):
    # FlowStep.forward returns only the summed log-det of its four layers, so the
    # layers run one by one here to keep the coupling's share apart.
    px = torch.from_numpy(pixels)
    x, pre = ft.preprocess(px, 0.5, model.config["alpha"], dtype=torch.float64)
    cols, latents = [pre], []
    for level in model.levels:
        x = ft.squeeze(x)
        for step in level.steps:
            for layer in step.layers():
                x, ld = layer(x)
                if layer is step.coupling:
                    cols.append(ld)
        if level.split is not None:
            x, z, ld = level.split(x)
            cols.append(ld)
            latents.append(z)
    latents.append(x)
    cols += [ft.gaussian_logp(z) for z in latents]
    return torch.stack(cols, 1).numpy()


def _paeth_residuals(plane):
    """PNG Paeth filter of one (H, W) plane with zero neighbours outside it, uint8."""
    p = plane.astype(np.int32)
    a = np.zeros_like(p)
    b = np.zeros_like(p)
    c = np.zeros_like(p)
    a[:, 1:] = p[:, :-1]
    b[1:, :] = p[:-1, :]
    c[1:, 1:] = p[:-1, :-1]
    est = a + b - c
    pa, pb, pc = np.abs(est - a), np.abs(est - b), np.abs(est - c)
    # PNG's tie order: a before b before c.
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((p - pred) & 0xFF).astype(np.uint8)


N_CLASSES = 9  # residual magnitude classes: 0, then 1 + floor(log2 |r|) for |r| in 1..128


def complexity_bits(image):
    """Code length in bits of one (C, H, W) uint8 image under the engine's coder: Paeth
    residuals as signed bytes, each coded as its magnitude class under an adaptive
    Krichevsky-Trofimov model in one of three contexts (the class to its left: 0, 1-2,
    3+), plus the class's raw low bits and a sign bit."""
    bits = 0.0
    for plane in np.asarray(image, dtype=np.uint8):
        r = _paeth_residuals(plane).astype(np.int8).astype(np.int64)
        cls = np.zeros_like(r)
        nz = r != 0
        cls[nz] = np.floor(np.log2(np.abs(r[nz]))).astype(np.int64) + 1
        count = np.zeros((3, N_CLASSES))
        total = np.zeros(3)
        for row in cls:
            left = 0
            for k in row:
                ctx = 0 if left == 0 else (1 if left <= 2 else 2)
                bits -= math.log2((2 * count[ctx, k] + 1) / (2 * total[ctx] + N_CLASSES))
                bits += k  # k - 1 low bits and a sign bit; none for 0
                count[ctx, k] += 1
                total[ctx] += 1
                left = k
    return bits


def complexity_bpd(image):
    return complexity_bits(image) / np.asarray(image).size


def pixel_features(pixels):
    """(N, 5): complexity, mean/255, population std/255, fraction of 0s, of 255s."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    out = np.empty((len(pixels), len(PIXEL_FEATURES)))
    out[:, 0] = [complexity_bpd(img) for img in pixels]
    out[:, 1] = flat.mean(1) / 255.0
    out[:, 2] = flat.std(1) / 255.0
    out[:, 3] = (flat == 0).mean(1)
    out[:, 4] = (flat == 255).mean(1)
    return out


def pool_factor(h, w):
    p = 1
    while (h // p) * (w // p) > PCA_SIDE * PCA_SIDE:
        p *= 2
    return p


def pooled(pixels):
    """(N, P): p x p block means / 255, C-major; a partial last block is dropped, as in C."""
    pixels = np.asarray(pixels)
    n, C, H, W = pixels.shape
    p = pool_factor(H, W)
    hp, wp = H // p, W // p
    blocks = pixels[:, :, :hp * p, :wp * p].astype(np.float64).reshape(n, C, hp, p, wp, p)
    return (blocks.sum((3, 5)) / (255.0 * p * p)).reshape(n, -1)


def layout_features(x, mean, basis):
    """(N, PCA + 1): subspace coordinates and ln(mean squared residual + 1e-12)."""
    x = np.asarray(x, dtype=np.float64) - mean
    coords = x @ basis.T
    # The basis is orthonormal, so the residual's norm is |x|^2 minus the coordinates'.
    r2 = (x * x).sum(1) - (coords * coords).sum(1)
    resid = np.log(np.maximum(r2, 0.0) / x.shape[1] + 1e-12)
    return np.concatenate([coords, resid[:, None]], 1)


# --------------------------------------------------------------------------- density

def kde_score(z, points, bandwidth):
    """-ln mean_i exp(-|z - p_i|^2 / 2h^2) for each row of z, via log-sum-exp."""
    z = np.atleast_2d(z)
    r2 = ((z[:, None, :] - points[None, :, :]) ** 2).sum(2)
    e = -r2 / (2.0 * bandwidth * bandwidth)
    top = e.max(1)
    # The nearest point's term is 1 after the shift, so the log never sees 0.
    return -(top + np.log(np.exp(e - top[:, None]).sum(1))) + math.log(points.shape[0])


def refit(fit_rows):
    """The C fit redone in float64: {"mean", "whiten", "points", "bandwidth"}."""
    x = np.asarray(fit_rows, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False, ddof=1)
    var = np.diag(cov)
    # A constant feature (all black fit images, say) gets unit scale, not 1/0.
    sd = np.where(var > 1e-24 * (1.0 + mean * mean), np.sqrt(np.maximum(var, 0.0)), 1.0)
    corr = cov / np.outer(sd, sd) + 1e-6 * np.eye(d)
    chol = np.linalg.cholesky(corr)
    whiten = np.linalg.solve(chol, np.diag(1.0 / sd))
    whiten = np.tril(whiten)  # exact zeros above the diagonal, as the C solve leaves them
    points = (x - mean) @ whiten.T
    return {"mean": mean, "whiten": whiten, "points": points, "bandwidth": n ** (-1.0 / (d + 4))}


def p_value(scores, calibration):
    """(1 + #{calibration >= score}) / (n_cal + 1), elementwise."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    scores = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    at_least = len(cal) - np.searchsorted(cal, scores, side="left")
    return (1.0 + at_least) / (len(cal) + 1.0)


# --------------------------------------------------------------------------- the block

def read_block(path):
    """(model config, the parsed "anomaly" block with numpy arrays); ValueError without one."""
    _, md = ft.read_safetensors(path)
    if "anomaly" not in md:
        raise ValueError("%s: no 'anomaly' metadata (run finc calibrate)" % path)
    config = ft.check_config(json.loads(md["config"]))
    block = json.loads(md["anomaly"])
    want = feature_names(config)
    if block.get("features") != want:
        raise ValueError("%s: anomaly features %s, this reference computes %s"
                         % (path, block.get("features"), want))
    d, n_fit = len(want), int(block["fit_images"])
    C, H, W = config["image"]
    p = pool_factor(H, W)
    P = C * (H // p) * (W // p)
    arr = lambda k, *shape: np.asarray(block[k], dtype=np.float64).reshape(shape)  # noqa: E731
    block.update(mean=arr("mean", d), whiten=arr("whiten", d, d), fit_points=arr("fit_points", n_fit, d),
                 calibration_scores=arr("calibration_scores", -1), layout_mean=arr("layout_mean", P),
                 layout_basis=arr("layout_basis", PCA, P), bandwidth=float(block["bandwidth"]))
    return config, block


class AnomalyReference:
    """A calibrated weights file, scored in float64."""

    def __init__(self, path):
        self.config, self.block = read_block(path)
        self.model, _ = ft.load_safetensors(path, dtype=torch.float64)
        self.model.eval()

    def base_features(self, pixels):
        """(N, S + 5): what does not depend on the fit."""
        return np.concatenate([encode_stats(self.model, pixels), pixel_features(pixels)], 1)

    def features(self, pixels, layout_mean=None, layout_basis=None):
        b = self.block
        lm = b["layout_mean"] if layout_mean is None else layout_mean
        lb = b["layout_basis"] if layout_basis is None else layout_basis
        return np.concatenate([self.base_features(pixels), layout_features(pooled(pixels), lm, lb)], 1)

    def score(self, feat, fit=None):
        """Scores of feature rows against the stored fit, or against `fit` from refit()."""
        if fit is None:
            fit = {"mean": self.block["mean"], "whiten": self.block["whiten"],
                   "points": self.block["fit_points"], "bandwidth": self.block["bandwidth"]}
        z = (np.atleast_2d(feat) - fit["mean"]) @ fit["whiten"].T
        return kde_score(z, fit["points"], fit["bandwidth"])

    def p_value(self, scores):
        return p_value(scores, self.block["calibration_scores"])
