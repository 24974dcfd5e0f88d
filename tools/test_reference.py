"""Tests of the PyTorch reference (tools/finc_torch.py) and its file formats.

    /usr/bin/python3 -m unittest discover -s tools -p 'test_*.py'
"""

import json
import math
import os
import struct
import sys
import tempfile
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch as ft  # noqa: E402
import make_vectors  # noqa: E402

torch.set_num_threads(1)

CFG = {"image": [1, 8, 12], "levels": 2, "steps": [2, 2], "kernel": 3, "coupling_width": 16,
       "actnorm": True, "alpha": 1e-6}
TINY = {"image": [2, 4, 4], "levels": 2, "steps": [1, 1], "kernel": 2, "coupling_width": 6,
        "actnorm": True, "alpha": 1e-6}


class LayerTest(unittest.TestCase):
    def test_squeeze_layout(self):
        x = torch.arange(2 * 4 * 6, dtype=torch.float64).view(1, 2, 4, 6)
        y = ft.squeeze(x)
        c, dy, dx, i, j = 1, 1, 0, 1, 2
        self.assertEqual(y[0, 4 * c + 2 * dy + dx, i, j], x[0, c, 2 * i + dy, 2 * j + dx])
        self.assertTrue(torch.equal(ft.unsqueeze(y), x))

    def test_finc_inverse_and_causality(self):
        model = ft.random_model({"image": [2, 6, 10], "levels": 1, "steps": [1], "kernel": 3,
                                 "coupling_width": 4, "actnorm": False}, 4, near_zero_last=False)
        finc = model.levels[0].steps[0].finc
        x = torch.randn(3, 8, 3, 5, dtype=torch.float64)
        y, ld = finc(x)
        self.assertTrue(torch.equal(ld, torch.zeros(3, dtype=torch.float64)))
        self.assertLess((finc.inverse(y) - x).abs().max().item(), 1e-12)
        # TL quarter output at (1, 1) must not depend on inputs below or to the right.
        x2 = x.clone()
        x2[:, 0:2, 2:, :] += 1.0
        x2[:, 0:2, :, 2:] += 1.0
        self.assertTrue(torch.equal(finc(x2)[0][:, 0:2, :2, :2], y[:, 0:2, :2, :2]))

    def test_finc_constraint_survives_training_step(self):
        model = ft.random_model(TINY, 5, dtype=torch.float32)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        px = torch.randint(0, 256, (4, 2, 4, 4), dtype=torch.uint8)
        for _ in range(3):
            lp, _ = ft.log_prob(model, px, torch.rand(px.shape))
            opt.zero_grad()
            (-lp.mean()).backward()
            opt.step()
        for name, t in ft.weights(model).items():
            if ".finc." in name:
                ft.check_finc_kernel(name, t, name.rsplit(".", 1)[1])
                self.assertTrue(torch.equal(t, getattr(model.get_submodule(name.rsplit(".", 1)[0]),
                                                       name.rsplit(".", 1)[1]).detach()), name)


class ReferenceTest(unittest.TestCase):
    def test_round_trip_exact(self):
        model = ft.random_model(CFG, 1)
        g = torch.Generator().manual_seed(2)
        px = torch.randint(0, 256, (6, 1, 8, 12), generator=g, dtype=torch.uint8)
        px[0] = 0
        px[1] = 255
        z, logp = ft.encode(model, px)
        self.assertEqual(tuple(z.shape), (6, 96))
        self.assertTrue(torch.equal(ft.decode(model, z), px))

    def test_logdet_matches_brute_force_jacobian(self):
        model = ft.random_model(TINY, 3, near_zero_last=False)
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64)

        def flow(v):
            return ft.flatten_latents(model.flow_forward(v.view(1, 2, 4, 4))[0]).view(-1)
        jac = torch.autograd.functional.jacobian(flow, x.view(-1))
        _, ld = model.flow_forward(x)
        self.assertAlmostEqual(torch.slogdet(jac)[1].item(), ld.item(), places=9)

    def test_preprocess_logdet(self):
        """Section 1's pre-processing log-det is that of the map v+u -> x (per pixel)."""
        v = torch.tensor([[[[0, 17, 128, 255]]]], dtype=torch.uint8)
        u = torch.tensor([[[[0.25, 0.5, 0.9, 0.01]]]], dtype=torch.float64)
        x, ld = ft.preprocess(v, u)
        a = 1e-6

        def f(w):
            y = ((w / 256.0) + a) * (1 - 2 * a)
            return torch.log(y) - torch.log1p(-y)
        w = v.double() + u
        jac = torch.autograd.functional.jacobian(lambda t: f(t), w.view(-1)).view(4, 4)
        self.assertTrue(torch.allclose(f(w), x))
        self.assertAlmostEqual(torch.log(torch.diagonal(jac)).sum().item(), ld.item(), places=9)

    def test_logp_is_sum_of_parts(self):
        model = ft.random_model(CFG, 6)
        px = torch.randint(0, 256, (2, 1, 8, 12), dtype=torch.uint8)
        z, logp = ft.encode(model, px)
        x, ld0 = ft.preprocess(px)
        _, ld1 = model.flow_forward(x)
        want = (-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum(1) + ld0 + ld1
        self.assertTrue(torch.allclose(logp, want, rtol=0, atol=1e-9))

    def test_batch_invariance(self):
        model = ft.random_model(CFG, 7)
        px = torch.randint(0, 256, (7, 1, 8, 12), dtype=torch.uint8)
        z, lp = ft.encode(model, px)
        z1, lp1 = ft.encode(model, px[3:4])
        self.assertTrue(torch.allclose(z[3:4], z1, atol=1e-12))
        self.assertTrue(torch.allclose(lp[3:4], lp1, atol=1e-9))


class FileTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_weights_round_trip(self):
        model = ft.round_to_float32_(ft.random_model(CFG, 8))
        path = os.path.join(self.tmp.name, "w.safetensors")
        ft.save_safetensors(path, model, {"dataset": "none"})
        loaded, meta = ft.load_safetensors(path)
        self.assertEqual(meta["format"], "finc-flow")
        self.assertEqual(meta["format_version"], "1")
        self.assertEqual(json.loads(meta["config"]), ft.check_config(CFG))
        for name, t in ft.weights(model).items():
            self.assertTrue(torch.equal(t, ft.weights(loaded)[name]), name)
        # Header layout: 8-byte length, JSON padded to a multiple of 8, data covered exactly.
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        self.assertEqual(n % 8, 0)
        header = json.loads(data[8:8 + n])
        spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
        self.assertEqual(spans[0][0], 0)
        for (b0, e0), (b1, e1) in zip(spans, spans[1:]):
            self.assertEqual(e0, b1)
        self.assertEqual(spans[-1][1], len(data) - 8 - n)
        self.assertEqual(set(header) - {"__metadata__"}, set(ft.expected_shapes(CFG)))

    def test_load_rejects_broken_finc(self):
        model = ft.random_model(CFG, 9)
        tensors = ft.weights(model)
        tensors["levels.1.steps.0.finc.tr"][0, 0, 2, 0] = 0.9
        with self.assertRaises(ValueError) as cm:
            ft.load_weights(ft.FInCFlow(CFG), tensors)
        self.assertIn("levels.1.steps.0.finc.tr", str(cm.exception))

    def test_vectors_round_trip(self):
        name, cfg, seed = make_vectors.MODELS[0]
        model, tensors, meta = make_vectors.make_vectors(cfg, seed)
        path = os.path.join(self.tmp.name, "v.safetensors")
        ft.write_safetensors(path, tensors, meta)
        back, meta2 = ft.read_safetensors(path)
        self.assertEqual(meta2, meta)
        self.assertEqual(set(back), set(tensors))
        for k, t in tensors.items():
            self.assertEqual(back[k].dtype, t.numpy().dtype, k)
            self.assertTrue(np.array_equal(back[k], t.numpy()), k)
        self.assertEqual(back["pixels"].dtype, np.uint8)
        self.assertEqual(back["logp"].dtype, np.float64)
        self.assertEqual(back["latents"].dtype, np.float32)
        # The stored vectors follow from the stored inputs.
        z, lp = ft.encode(model, torch.from_numpy(back["pixels"]),
                          torch.from_numpy(back["dequant_u"]).double())
        self.assertTrue(torch.allclose(lp, torch.from_numpy(back["logp_u"]), rtol=0, atol=1e-9))
        px = ft.decode(model, torch.from_numpy(back["decode_latents"]).double())
        self.assertTrue(np.array_equal(px.numpy(), back["decoded_pixels"]))

    def test_committed_vectors_match_generator(self):
        """tests/vectors/ is what make_vectors.py writes today (skipped if not generated)."""
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "vectors")
        for name, cfg, seed in make_vectors.MODELS:
            vpath = os.path.join(root, name + ".vectors.safetensors")
            wpath = os.path.join(root, name + ".safetensors")
            if not os.path.exists(vpath):
                self.skipTest("tests/vectors not generated")
            back, _ = ft.read_safetensors(vpath)
            model, _ = ft.load_safetensors(wpath)
            z, lp = ft.encode(model, torch.from_numpy(back["pixels"]))
            self.assertTrue(torch.allclose(lp, torch.from_numpy(back["logp"]), rtol=0, atol=1e-9), name)
            self.assertTrue(np.array_equal(z.float().numpy(), back["latents"]), name)


if __name__ == "__main__":
    unittest.main()
