"""Your own images, end to end: tools/train.py --data -> tools/export.py (calibrated) ->
the C engine, the CLI and finc serve, on sets these tests draw themselves.

    /usr/bin/python3 -m unittest discover -s tools -p 'test_*.py'

- RGB 3x16x32 rendered shapes (a folder of PNGs) and gray 1x16x32 stripes (a .npy): 100
  training steps each (a few seconds), validation bits/dim at least 1.0 below its value
  at the start (measured: 6.69 -> 4.62 for the shapes), the exported file's log p equal to
  the PyTorch reference's (relative 1e-5), calibrated, then served: /v1/models, scores
  with anomaly verdicts, a sampled PNG grid of the model's channels, gray PNGs refused by
  the RGB model.
- The data readers: one set as IDX, .npy and PNGs reads the same; mixed sizes, mixed
  channels, an unreadable file and too few images give their messages.
- A resumed run keeps its split, and refuses data that changed.
- PNGs of every kind (RGBA, LA, 16-bit, 1-bit, palette with tRNS, RGB) read by datasets.py
  as gray and as RGB score exactly as the C decoder's reading of them.
Needs ./finc (make); skipped without.
"""

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import datasets  # noqa: E402
import finc_torch as ft  # noqa: E402

ROOT = os.path.dirname(HERE)
FINC = os.path.join(ROOT, "finc")
PY = sys.executable
SMALL = ["--levels", "2", "--steps", "2", "--width", "32", "--batch", "16", "--warmup", "20", "--threads", "2",
         "--log-every", "20", "--epochs", "1000"]


def shapes_rgb(n, seed=0, w=16):
    """Discs and squares of random colours on dark backgrounds, (n, 3, 16, w)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:16, 0:w]
    out = np.zeros((n, 3, 16, w), np.uint8)
    for i in range(n):
        out[i] = rng.randint(0, 40, (3, 1, 1))
        cy, cx, r = rng.randint(4, 12), rng.randint(4, w - 4), rng.randint(2, 6)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if i % 2 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        out[i][:, m] = rng.randint(120, 256, (3, 1))
    return out


def stripes_gray(n, seed=1):
    """Soft stripes of random period and phase, (n, 1, 16, 32)."""
    rng = np.random.RandomState(seed)
    x = np.arange(32)[None, :] + np.zeros((16, 1))
    out = np.zeros((n, 1, 16, 32), np.uint8)
    for i in range(n):
        p, ph = rng.uniform(4, 10), rng.uniform(0, 6.3)
        out[i, 0] = np.clip(128 + 100 * np.sin(2 * np.pi * x / p + ph) + rng.normal(0, 8, (16, 32)), 0, 255)
    return out


def png_bytes(a):
    """A (C, H, W) uint8 array as PNG bytes."""
    from PIL import Image
    im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()


def write_pngs(folder, px, nested=True):
    for i, a in enumerate(px):
        d = os.path.join(folder, "part%d" % (i % 3)) if nested else folder
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%04d.png" % i), "wb") as f:
            f.write(png_bytes(a))


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kw)


class Server:
    def __init__(self, weights):
        self.p = subprocess.Popen([FINC, "serve", "--host", "127.0.0.1", "--port", "0", "--weights", weights,
                                   "--log", "off", "--threads", "2"], stderr=subprocess.PIPE, text=True)
        self.port = None
        for line in self.p.stderr:
            m = re.search(r"ready on port (\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.p.kill()
            raise RuntimeError("finc serve did not start")

    def request(self, path, body=None, ctype=None, accept=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=body)
        if ctype:
            req.add_header("Content-Type", ctype)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers.get("Content-Type"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()

    def close(self):
        self.p.terminate()
        self.p.wait(timeout=30)
        self.p.stderr.close()


@unittest.skipUnless(os.access(FINC, os.X_OK), "needs ./finc (make)")
class OwnImages(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="finc-train-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def train(self, data, *extra, ckpt=None):
        ckpt = ckpt or os.path.join(self.tmp, "model", "ck.pt")
        r = run([PY, "tools/train.py", "--data", data, "--checkpoint", ckpt] + SMALL + list(extra))
        return r, ckpt

    def end_to_end(self, data, px, val_fraction):
        """Trains 100 steps, exports calibrated, checks the engine against the reference, serves."""
        r, ckpt = self.train(data, "--max-steps", "100", "--val-fraction", str(val_fraction))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        with open(ckpt[:-3] + ".log.jsonl") as f:
            log = [json.loads(line) for line in f]
        start = [x["val_bpd"] for x in log if x["kind"] == "val_init"][0]
        last = [x["val_bpd"] for x in log if x["kind"] == "val"][-1]
        self.assertLess(last, start - 1.0, "validation bits/dim %.3f at the start, %.3f after 100 steps"
                        % (start, last))
        out = os.path.join(self.tmp, "mine.safetensors")
        r = run([PY, "tools/export.py", "--checkpoint", ckpt, "--out", out])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:] + r.stdout[-2000:])
        c, h, w = px.shape[1:]
        meta = ft.load_safetensors(out)[1]
        self.assertEqual(meta["data_shape"], "%dx%dx%d" % (c, h, w))
        self.assertEqual(meta["data_images"], str(len(px)))
        self.assertIn("validation: %d" % round(len(px) * val_fraction), meta["split"])
        self.assertIn("anomaly", meta)
        info = run([FINC, "info", out]).stdout
        self.assertIn("%d x %d x %d" % (c, h, w), info)
        self.assertIn("anomaly      calibrated", info)

        # the C engine's log p of a few images against the float64 PyTorch reference (u = 0.5)
        files = []
        for i in range(4):
            files.append(os.path.join(self.tmp, "x%d.png" % i))
            with open(files[-1], "wb") as f:
                f.write(png_bytes(px[i]))
        r = run([FINC, "score", out, "--json"] + files)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = [json.loads(line)["log_likelihood"] for line in r.stdout.splitlines()]
        model = ft.load_safetensors(out)[0]
        with torch.no_grad():
            want, _ = ft.log_prob(model, torch.from_numpy(px[:4].copy()), None)
        for g, wv in zip(got, want.tolist()):
            self.assertLess(abs(g - wv), 1e-5 * abs(wv), (got, want.tolist()))

        srv = Server(out)
        try:
            st, _, body = srv.request("/v1/models")
            shape = json.loads(body)["models"][0]["image"]
            self.assertEqual((st, shape), (200, {"channels": c, "height": h, "width": w}))
            st, _, body = srv.request("/log-likelihood", png_bytes(px[0]), "image/png")
            self.assertEqual(st, 200, body)
            res = json.loads(body)["results"][0]
            self.assertAlmostEqual(res["log_likelihood"], got[0], delta=1e-6)
            self.assertIn("anomaly", res)
            other = np.repeat(px[:1], 3, axis=1) if c == 1 else px[:1, :1]
            st, _, body = srv.request("/log-likelihood", png_bytes(other[0]), "image/png")
            self.assertEqual(st, 400)
            self.assertIn("expects", json.loads(body)["error"])
            st, ctype, body = srv.request("/sample", b'{"n": 4, "seed": 3}', "application/json", "image/png")
            self.assertEqual((st, ctype), (200, "image/png"), body[:200])
            from PIL import Image
            grid = Image.open(io.BytesIO(body))
            self.assertEqual(grid.mode, "RGB" if c == 3 else "L")
            self.assertGreaterEqual(grid.size, (2 * w, 2 * h))
        finally:
            srv.close()

    def test_rgb_non_square_png_folder(self):
        px = shapes_rgb(500, w=32)
        folder = os.path.join(self.tmp, "shapes")
        write_pngs(folder, px)
        # the folder reads in sorted path order: put the arrays in that order for the checks
        order = sorted(range(len(px)), key=lambda i: ("part%d" % (i % 3), i))
        self.end_to_end(folder, px[order], 0.4)

    def test_gray_non_square_npy(self):
        px = stripes_gray(400)
        path = os.path.join(self.tmp, "stripes.npy")
        np.save(path, px)
        self.end_to_end(path, px, 0.5)

    def test_readers_agree_and_refuse(self):
        px = stripes_gray(30)
        np.save(os.path.join(self.tmp, "a.npy"), px)
        with gzip.open(os.path.join(self.tmp, "a-idx3-ubyte.gz"), "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (30, 16, 32)) + px.tobytes())
        write_pngs(os.path.join(self.tmp, "pngs"), px, nested=False)
        for src in ("a.npy", "a-idx3-ubyte.gz", "pngs"):
            got, _, kind = datasets.load(os.path.join(self.tmp, src))
            self.assertTrue(np.array_equal(got, px), src)
        rgb = datasets.load(os.path.join(self.tmp, "pngs"), channels=3)[0]
        self.assertTrue(np.array_equal(rgb, np.repeat(px, 3, axis=1)))

        def refused(name, files, want):
            folder = os.path.join(self.tmp, name)
            os.makedirs(folder)
            for fname, data in files.items():
                with open(os.path.join(folder, fname), "wb") as f:
                    f.write(data)
            r, _ = self.train(folder, "--max-steps", "1", ckpt=os.path.join(self.tmp, name + ".pt"))
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertRegex(r.stderr, want)

        many = {"%02d.png" % i: png_bytes(px[i]) for i in range(25)}
        refused("sizes", dict(many, **{"zz.png": png_bytes(shapes_rgb(1)[0][:1])}),
                r"mixed sizes: .*00\.png is 32x16, .*zz\.png is 16x16")
        refused("channels", dict(many, **{"zz.png": png_bytes(np.repeat(px[0], 3, axis=0))}),
                r"mixed channels: .*00\.png is gray, .*zz\.png is colour; .*--channels")
        refused("unreadable", dict(many, **{"bad.png": b"\x89PNG\r\n\x1a\n not really"}), r"bad\.png: not a readable PNG")
        refused("few", {"%02d.png" % i: png_bytes(px[i]) for i in range(5)}, r"5 images; training needs at least 20")
        refused("empty", {"notes.txt": b"hello"}, r"no \.png files")

    def test_resume_keeps_split_and_refuses_changed_data(self):
        px = shapes_rgb(120, seed=5)
        folder = os.path.join(self.tmp, "set")
        write_pngs(folder, px, nested=False)
        r, ckpt = self.train(folder, "--max-steps", "10", "--split-seed", "7")
        self.assertEqual(r.returncode, 0, r.stderr)
        first = torch.load(ckpt)
        self.assertEqual(first["step"], 10)
        # a different split seed on the command line does not change the checkpoint's split
        r, _ = self.train(folder, "--max-steps", "25", "--split-seed", "99")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resumed from", r.stderr)
        second = torch.load(ckpt)
        self.assertEqual(second["step"], 25)
        self.assertEqual(second["data"]["val"], first["data"]["val"])
        self.assertEqual(len(first["data"]["val"]), 60)  # at least 400, at most half
        with open(os.path.join(folder, "0003.png"), "wb") as f:
            f.write(png_bytes(px[4]))
        r, _ = self.train(folder, "--max-steps", "30")
        self.assertEqual(r.returncode, 2)
        self.assertIn("the data changed", r.stderr)


@unittest.skipUnless(os.access(FINC, os.X_OK), "needs ./finc (make)")
class DecodeParity(unittest.TestCase):
    """tools/datasets.py reads PNGs as the C engine does: each odd kind of PNG scores exactly
    as a plain 8-bit PNG of the pixels datasets.py made of it (finc score, the C decoder)."""

    def test_png_kinds(self):
        from PIL import Image
        rng = np.random.RandomState(2)
        tmp = tempfile.mkdtemp(prefix="finc-decode-")
        try:
            def save(name, im, **kw):
                path = os.path.join(tmp, name)
                im.save(path, format="PNG", **kw)
                return path
            def kinds(h, w):
                pal = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(
                    "P", palette=Image.ADAPTIVE, colors=16)
                return {
                    "rgba": (Image.fromarray(rng.randint(0, 256, (h, w, 4), dtype=np.uint8), "RGBA"), {}),
                    "la": (Image.fromarray(rng.randint(0, 256, (h, w, 2), dtype=np.uint8), "LA"), {}),
                    "gray16": (Image.fromarray(rng.randint(0, 65536, (h, w)).astype(np.uint16)), {}),
                    "bits": (Image.fromarray(rng.randint(0, 2, (h, w)).astype(bool)), {}),
                    "rgb": (Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB"), {}),
                    "palette-trns": (pal, {"transparency": 3}),
                }
            # the vector models: gray 1x8x12 and RGB 3x8x8; each kind of PNG read as each
            models = {1: ("l2_1x8x12", 8, 12), 3: ("l3_3x8x8_k2_noact", 8, 8)}
            checked = 0
            for c, (model, h, w) in models.items():
                model = os.path.join(ROOT, "tests", "vectors", model + ".safetensors")
                for name, (im, kw) in kinds(h, w).items():
                    path = save("%s-%d.png" % (name, c), im, **kw)
                    a = datasets._png_pixels(path)
                    plain = os.path.join(tmp, "%s-%d-plain.png" % (name, c))
                    with open(plain, "wb") as f:
                        f.write(png_bytes(datasets.to_channels(a, c)))
                    r = run([FINC, "score", model, "--json", path, plain])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    got = [json.loads(line)["log_likelihood"] for line in r.stdout.splitlines()]
                    self.assertEqual(got[0], got[1], "%s as %d channels" % (name, c))
                    checked += 1
            self.assertEqual(checked, 12)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
