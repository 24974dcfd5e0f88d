"""`finc calibrate` -> load -> `finc score --json` against tools/anomaly_ref.py.

    /usr/bin/python3 -m unittest discover -s tools -p 'test_*.py'

Calibrates the shipped Fashion-MNIST model on 400 validation images (fit on the
first 200, calibration scores from the last 200), then checks every number of
the stored "anomaly" block and of `finc score --json` against the float64
reference. Needs ./finc and /usr/share/datasets/fashion-mnist; skipped without.

Tolerances. The C engine runs the flow in float32 and the reference in float64,
so only the encode statistics carry rounding error: measured on this data, at
most 6.3e-4 absolute (1.2e-6 relative) on the latent log densities (~500 nats)
and at most 3.1e-5 of a statistic's spread across the fit images. Everything
else (pre-processing log-det, complexity, pixel figures, layout) is float64 in
both and agrees to ~1e-13. The bounds below are ~5-10x the measured maxima, so
they absorb a different CPU's float32 kernels but not a wrong term.
"""

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anomaly_ref as ar  # noqa: E402
import finc_torch as ft  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINC = os.path.join(ROOT, "finc")
WEIGHTS = os.path.join(ROOT, "weights", "fashion-mnist.safetensors")
FMNIST = "/usr/share/datasets/fashion-mnist"
TRAIN = os.path.join(FMNIST, "train-images-idx3-ubyte.gz")
TEST = os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")
VAL_FIRST = 55000          # io/dataset.c: "val" is the training file from image 55000 on
N_IMAGES, N_FIT = 400, 200  # --limit 400; calibrate fits on the first half
N_TEST_PNGS = 10

# Per-image statistics, relative to the statistic's spread over the fit images
# (the unit whitening measures it in). Measured max 3.1e-5.
STAT_TOL_SD = 2e-4
# Float64 in C too: pre-processing log-det, complexity, pixel figures, layout; relative
# to the feature's largest magnitude (at least 1). Measured max 3e-14.
EXACT_TOL = 1e-11
# Fit mean, per feature, relative to its spread. Measured max 5.5e-6.
MEAN_TOL_SD = 5e-5
# whiten * diag(sd): the inverse Cholesky factor of the correlations, entries up
# to ~11, so an absolute bound is scale-free. Measured max 1.3e-5.
WHITEN_TOL = 1e-4
# Whitened fit points (entries up to ~5.5). Measured max 4.8e-5.
POINTS_TOL = 5e-4
# KDE scores (12..120 on validation images; -ln of a mean of exp). The error is
# the whitened error times the gradient |z - p| / h^2. Measured max 2.2e-4 on
# calibration images; the scaled term covers far-out images whose |z - p| is large.
SCORE_TOL_ABS, SCORE_TOL_REL = 1e-3, 2e-5
# The stored layout subspace (subspace iteration, float64) against numpy's eigh:
# the share of the top-32 variance it misses, and how far the top 8 eigenvectors
# are from it (Frobenius). Measured 2.6e-5 and 4e-15.
CAPTURED_TOL = 1e-3
LEADING, LEADING_TOL = 8, 1e-3


def read_idx_images(path, first, n):
    """(n, 1, H, W) uint8 from an IDX3 gzip file, images first..first+n-1."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, h, w = struct.unpack(">IIII", data[:16])
    if magic != 0x803:
        raise ValueError("%s: IDX magic %#x, expected 0x803" % (path, magic))
    if first + n > count:
        raise ValueError("%s: %d images, wanted %d..%d" % (path, count, first, first + n - 1))
    return np.frombuffer(data, np.uint8, count=n * h * w, offset=16 + first * h * w).reshape(n, 1, h, w).copy()


def write_png_gray(path, img):
    """Minimal 8-bit greyscale PNG (filter 0 rows), so the test needs no PIL."""
    h, w = img.shape

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\0" + img[y].tobytes() for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def run_finc(*args):
    p = subprocess.run([FINC] + list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("finc %s: exit %d\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


def score_json(weights, pngs):
    return [json.loads(line) for line in run_finc("score", weights, *pngs, "--json").splitlines() if line.strip()]


def score_tol(score):
    return SCORE_TOL_ABS + SCORE_TOL_REL * abs(score)


_MISSING = [p for p in (FINC, WEIGHTS, TRAIN, TEST) if not os.path.exists(p)]


@unittest.skipIf(_MISSING, "needs %s (build with `make finc`; the data set is Debian's fashion-mnist files)"
                 % ", ".join(_MISSING))
class CalibrateScoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="finc-anomaly-")
        cls.cal_path = os.path.join(cls.tmp.name, "cal.safetensors")
        run_finc("calibrate", WEIGHTS, "--data", "val", "--limit", str(N_IMAGES), "-o", cls.cal_path)
        cls.ref = ar.AnomalyReference(cls.cal_path)
        cls.block = cls.ref.block
        cls.pixels = read_idx_images(TRAIN, VAL_FIRST, N_IMAGES)
        cls.feat = cls.ref.features(cls.pixels)
        cls.fit = ar.refit(cls.feat[:N_FIT])
        cls.sd = cls.feat[:N_FIT].std(0, ddof=1)
        cls.S = len(ar.stat_names(cls.ref.config))

        # Ten test-set images, one all black, one uniform noise.
        imgs = list(read_idx_images(TEST, 0, N_TEST_PNGS))
        imgs.append(np.zeros((1, 28, 28), np.uint8))
        imgs.append(np.random.default_rng(7).integers(0, 256, (1, 28, 28), dtype=np.uint8))
        cls.png_pixels = np.stack(imgs)
        cls.pngs = []
        for i, img in enumerate(cls.png_pixels):
            path = os.path.join(cls.tmp.name, "img%02d.png" % i)
            write_png_gray(path, img[0])
            cls.pngs.append(path)
        cls.scored = score_json(cls.cal_path, cls.pngs)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_block_header(self):
        b = self.block
        self.assertEqual(b["method"], "whitened-gaussian-kde")
        self.assertEqual(b["version"], 1)
        self.assertEqual(b["features"], ar.feature_names(self.ref.config))
        self.assertEqual(b["fit_images"], N_FIT)
        self.assertEqual(len(b["calibration_scores"]), N_IMAGES - N_FIT)
        self.assertTrue(np.all(np.diff(b["calibration_scores"]) >= 0))

    def test_fit_features(self):
        # The engine's own fit rows, recovered from the stored points: x = mean + whiten^-1 p.
        c_rows = self.block["mean"] + np.linalg.solve(self.block["whiten"], self.block["fit_points"].T).T
        err = np.abs(c_rows - self.feat[:N_FIT])
        names = self.block["features"]
        # preprocess.logdet is float64 in C (a sum over pixels of a function of the byte).
        for j in range(1, self.S):
            self.assertLessEqual(err[:, j].max(), STAT_TOL_SD * self.sd[j], names[j])
        for j in [0] + list(range(self.S, len(names))):
            scale = max(1.0, np.abs(self.feat[:N_FIT, j]).max())
            self.assertLessEqual(err[:, j].max(), EXACT_TOL * scale, names[j])

    def test_fit(self):
        b, fit, sd = self.block, self.fit, self.sd
        self.assertLessEqual(np.max(np.abs(fit["mean"] - b["mean"]) / sd), MEAN_TOL_SD)
        self.assertEqual(np.count_nonzero(np.triu(b["whiten"], 1)), 0)
        self.assertLessEqual(np.abs((fit["whiten"] - b["whiten"]) * sd).max(), WHITEN_TOL)
        self.assertLessEqual(np.abs(fit["points"] - b["fit_points"]).max(), POINTS_TOL)
        # n^(-1/(d+4)) from integers: the same libm pow on both sides.
        self.assertAlmostEqual(b["bandwidth"], N_FIT ** (-1.0 / (len(b["mean"]) + 4)), delta=1e-15)
        self.assertEqual(fit["bandwidth"], N_FIT ** (-1.0 / (len(b["mean"]) + 4)))

    def test_calibration_scores(self):
        ref = np.sort(self.ref.score(self.feat[N_FIT:], self.fit))  # the reference's own fit throughout
        stored = self.block["calibration_scores"]
        for r, c in zip(ref, stored):
            self.assertLessEqual(abs(r - c), score_tol(r), (r, c))

    def test_layout_basis(self):
        x = ar.pooled(self.pixels[:N_FIT])
        mean = x.mean(0)
        np.testing.assert_allclose(self.block["layout_mean"], mean, rtol=0, atol=1e-13)
        xc = x - mean
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        top = evecs[:, -ar.PCA:]
        V = self.block["layout_basis"]
        np.testing.assert_allclose(V @ V.T, np.eye(ar.PCA), rtol=0, atol=1e-12)
        # Subspace iteration converges slowly where the tail eigenvalues crowd
        # (the 32nd and 33rd differ by ~1%), so the check is the variance the
        # subspace holds, which is what the residual feature measures, and that
        # the leading directions, well separated, lie inside it.
        captured = np.trace(V @ (xc.T @ xc) @ V.T)
        self.assertGreater(captured, (1 - CAPTURED_TOL) * evals[-ar.PCA:].sum())
        lead = evecs[:, -LEADING:]
        self.assertLess(np.linalg.norm(lead - V.T @ (V @ lead)), LEADING_TOL)

    def test_score_json(self):
        self.assertEqual(len(self.scored), len(self.pngs))
        feat = self.ref.features(self.png_pixels)
        ref_scores = self.ref.score(feat)
        cal = self.block["calibration_scores"]
        for i, (out, path) in enumerate(zip(self.scored, self.pngs)):
            self.assertEqual(out["file"], path)
            an = out["anomaly"]
            self.assertLessEqual(abs(an["score"] - ref_scores[i]), score_tol(ref_scores[i]), path)
            # Complexity: the same sum of log2 terms in another order, printed with %.10g.
            self.assertEqual(an["complexity_bits_per_dim"], float("%.10g" % feat[i, self.S]), path)
            # The p-value is a step function of the score: exact, unless a
            # calibration score lies within the tolerance of it.
            tol = score_tol(ref_scores[i])
            lo, hi = ar.p_value([ref_scores[i] + tol, ref_scores[i] - tol], cal)
            if lo == hi:
                self.assertEqual(an["p_value"], float("%.10g" % lo), path)
            else:
                self.assertTrue(lo - 1e-12 <= an["p_value"] <= hi + 1e-12, (path, an["p_value"], lo, hi))
            self.assertEqual(an["alpha"], 0.01)
            self.assertEqual(an["anomalous"], an["p_value"] <= an["alpha"], path)
        # Uniform noise scores far above every calibration image: the smallest p-value.
        # (The black image is not asserted: it lands near the top calibration scores.)
        noise = self.scored[-1]["anomaly"]
        self.assertGreater(noise["score"], cal[-1] + score_tol(cal[-1]))
        self.assertEqual(noise["p_value"], float("%.10g" % (1.0 / (len(cal) + 1))))
        self.assertTrue(noise["anomalous"])

    def test_uncalibrated_has_no_anomaly(self):
        tensors, md = ft.read_safetensors(WEIGHTS)
        md = {k: v for k, v in md.items() if k != "anomaly"}
        plain = os.path.join(self.tmp.name, "plain.safetensors")
        ft.write_safetensors(plain, tensors, md)
        outs = score_json(plain, self.pngs[:2])
        self.assertEqual(len(outs), 2)
        for out, cal_out in zip(outs, self.scored):
            self.assertNotIn("anomaly", out)
            # The block changes nothing else about the score.
            self.assertEqual(out["log_likelihood"], cal_out["log_likelihood"])
        with self.assertRaises(ValueError):
            ar.read_block(plain)


if __name__ == "__main__":
    unittest.main()
