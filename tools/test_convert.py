"""Tests of tools/convert.py: both public naming schemes map back to our tensors exactly.

    /usr/bin/python3 -m unittest discover -s tools -p 'test_*.py'
"""

import contextlib
import io
import os
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402
import finc_torch as ft  # noqa: E402

COUPLING = {"conv1.weight": "net.0.weight", "conv1.bias": "net.0.bias",
            "conv2.weight": "net.2.weight", "conv2.bias": "net.2.bias",
            "conv3.weight": "net.4.weight", "conv3.bias": "net.4.bias", "conv3.logs": "net.4.logs"}


def step_tensors(w, p, actnorm):
    """Our step tensors under prefix p -> [(layer kind, {public suffix: tensor})]."""
    out = [("finc", {"conv_%s.conv.weight" % q: w[p + "finc." + q] for q in ft.QUARTERS})]
    if actnorm:
        out.append(("actnorm", {"translation": w[p + "actnorm.translation"],
                                "log_scale": w[p + "actnorm.log_scale"],
                                "initialized": torch.tensor(1)}))
    out.append(("conv1x1", {"W": w[p + "conv1x1.weight"]}))
    out.append(("coupling", {pub: w[p + "coupling." + ours] for ours, pub in COUPLING.items()}))
    return out


def hierarchical_state_dict(model, prefix="module."):
    """The public FastFlow class's names (fastflow_mnist_multi_gpu.py)."""
    cfg, w, sd = model.config, ft.weights(model), {}
    inner = {"finc": "fastflow_step.fastflow_unit.", "actnorm": "fastflow_step.glow_unit.glow_step.actnorm.",
             "conv1x1": "fastflow_step.glow_unit.glow_step.conv1x1.",
             "coupling": "fastflow_step.glow_unit.glow_step.coupling."}
    sd["preprocess.layers.1.translation"] = torch.tensor([0.0])
    sd["preprocess.layers.1.scale"] = torch.tensor([256.0])
    for l in range(cfg["levels"]):
        last = l == cfg["levels"] - 1
        for s in range(cfg["steps"][l]):
            head = ("fastflow_step.%d." % s) if last else ("fastflow_levels.%d.fastflow_level.%d." % (l, s + 1))
            for kind, ts in step_tensors(w, "levels.%d.steps.%d." % (l, s), cfg["actnorm"]):
                for suffix, t in ts.items():
                    sd[head + inner[kind] + suffix] = t
        if not last:
            head = "fastflow_levels.%d.fastflow_level.%d.transform." % (l, cfg["steps"][l] + 1)
            for ours, pub in COUPLING.items():
                sd[head + pub] = w["levels.%d.split.coupling.%s" % (l, ours)]
    c = ft.level_shapes(cfg)[-1][0]
    sd["gaussianize.net.weight"] = torch.randn(2 * c, c, 3, 3)
    sd["gaussianize.net.bias"] = torch.randn(2 * c)
    sd["gaussianize.log_scale_factor"] = torch.randn(2 * c, 1, 1)
    return {prefix + k: v.clone() for k, v in sd.items()}


def flat_state_dict(model, finc_bias=None):
    """create_model's numbered modules (fastflow_mnist.py); finc_bias adds conv_*.conv.bias."""
    cfg, w, sd = model.config, ft.weights(model), {}
    sd["1.translation"], sd["1.scale"] = torch.tensor([0.0]), torch.tensor([256.0])
    sd["2.translation"], sd["2.scale"] = torch.tensor([-1e-6]), torch.tensor([1 / (1 - 2e-6)])
    n = 4
    for l in range(cfg["levels"]):
        n += 1  # squeeze
        for s in range(cfg["steps"][l]):
            for kind, ts in step_tensors(w, "levels.%d.steps.%d." % (l, s), cfg["actnorm"]):
                for suffix, t in ts.items():
                    sd["%d.%s" % (n, suffix)] = t
                if kind == "finc" and finc_bias is not None:
                    cq = ts["conv_tl.conv.weight"].shape[0]
                    for i, q in enumerate(ft.QUARTERS):
                        sd["%d.conv_%s.conv.bias" % (n, q)] = finc_bias[l][s][i * cq:(i + 1) * cq]
                n += 1
        if l < cfg["levels"] - 1:
            for ours, pub in COUPLING.items():
                sd["%d.transform.%s" % (n, pub)] = w["levels.%d.split.coupling.%s" % (l, ours)]
            n += 1
    return {k: v.clone() for k, v in sd.items()}


def args_for(cfg, **kw):
    argv = ["in.pt", "out.safetensors", "--image"] + [str(v) for v in cfg["image"]]
    for k, v in kw.items():
        argv += ["--" + k] + ([str(x) for x in v] if isinstance(v, list) else [str(v)])
    return convert.parse_args(argv)


class ConvertTest(unittest.TestCase):
    CFG = {"image": [1, 8, 8], "levels": 2, "steps": [2, 1], "kernel": 3, "coupling_width": 8,
           "actnorm": True, "alpha": 1e-6}
    CFG_FLAT = {"image": [2, 8, 4], "levels": 2, "steps": [1, 2], "kernel": 2, "coupling_width": 6,
                "actnorm": False, "alpha": 1e-6}

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def run_convert(self, obj, cfg, **kw):
        src = os.path.join(self.tmp.name, "ckpt.pt")
        dst = os.path.join(self.tmp.name, "out.safetensors")
        torch.save(obj, src)
        argv = [src, dst, "--image"] + [str(v) for v in cfg["image"]]
        for k, v in kw.items():
            argv += ["--" + k] + ([str(x) for x in v] if isinstance(v, list) else [str(v)])
        with contextlib.redirect_stdout(io.StringIO()):
            rc = convert.main(argv)
        self.assertEqual(rc, 0)
        return ft.read_safetensors(dst)

    def assert_same(self, model, tensors):
        want = ft.weights(model)
        self.assertEqual(set(want), set(tensors))
        for name, t in want.items():
            self.assertTrue(torch.equal(t.float(), torch.from_numpy(tensors[name])), name)

    def test_hierarchical_with_module_prefix(self):
        model = ft.random_model(self.CFG, 11, dtype=torch.float32)
        obj = {"model_state_dict": hierarchical_state_dict(model), "epoch": 7}
        tensors, meta = self.run_convert(obj, self.CFG)
        self.assert_same(model, tensors)
        self.assertEqual(meta["format"], "finc-flow")
        self.assertEqual(ft.check_config(__import__("json").loads(meta["config"])), ft.check_config(self.CFG))

    def test_hierarchical_given_config_checked(self):
        model = ft.random_model(self.CFG, 12, dtype=torch.float32)
        sd = hierarchical_state_dict(model, prefix="")
        tensors, _ = self.run_convert(sd, self.CFG, levels=2, steps=[2, 1], kernel=3, width=8)
        self.assert_same(model, tensors)
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(sd, args_for(self.CFG, width=16))
        self.assertIn("--width", str(cm.exception))

    def test_flat(self):
        model = ft.random_model(self.CFG_FLAT, 13, dtype=torch.float32)
        obj = {"model_state_dict": {"module." + k: v for k, v in flat_state_dict(model).items()}}
        tensors, _ = self.run_convert(obj, self.CFG_FLAT)
        self.assert_same(model, tensors)

    def test_flat_with_actnorm_and_finc_bias(self):
        model = ft.random_model(self.CFG, 14, dtype=torch.float64)
        chans = [c for c, _, _ in ft.level_shapes(self.CFG)]
        g = torch.Generator().manual_seed(5)
        bias = [[torch.randn(chans[l], generator=g, dtype=torch.float64) * 0.1
                 for _ in range(self.CFG["steps"][l])] for l in range(2)]
        sd = flat_state_dict(model, finc_bias=bias)
        cfg, tensors, scheme, notes = convert.convert(sd, args_for(self.CFG))
        self.assertEqual(scheme, "flat")
        self.assertTrue(any("folded" in n for n in notes))
        converted = ft.load_weights(ft.FInCFlow(cfg).double(),
                                    {k: v.double() for k, v in tensors.items()})
        # The original with its FInC bias, evaluated by hand, against the converted model.
        px = torch.randint(0, 256, (3, 1, 8, 8), generator=g, dtype=torch.uint8)
        x, _ = ft.preprocess(px)
        zs_conv, ld_conv = converted.flow_forward(x)
        handles = []
        for l, level in enumerate(model.levels):
            for s, step in enumerate(level.steps):
                b = bias[l][s].view(1, -1, 1, 1)
                handles.append(step.finc.register_forward_hook(
                    lambda mod, inp, out, b=b: (out[0] + b, out[1])))
        zs_orig, ld_orig = model.flow_forward(x)
        for h in handles:
            h.remove()
        diff = (ft.flatten_latents(zs_conv) - ft.flatten_latents(zs_orig)).abs().max().item()
        self.assertLess(diff, 1e-5)  # float32 rounding of the folded translation
        self.assertTrue(torch.allclose(ld_conv, ld_orig, atol=1e-6))

    def test_wrong_shape_names_key(self):
        model = ft.random_model(self.CFG, 15, dtype=torch.float32)
        sd = hierarchical_state_dict(model)
        key = "module.fastflow_levels.0.fastflow_level.2.fastflow_step.glow_unit.glow_step.conv1x1.W"
        sd[key] = torch.eye(5)
        src = os.path.join(self.tmp.name, "bad.pt")
        torch.save({"model_state_dict": sd}, src)
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(convert.load_state_dict(src), args_for(self.CFG))
        self.assertIn(key[len("module."):], str(cm.exception))
        self.assertIn("shape", str(cm.exception))

    def test_flat_wrong_shape_names_key(self):
        model = ft.random_model(self.CFG_FLAT, 16, dtype=torch.float32)
        sd = flat_state_dict(model)
        key = [k for k in sd if k.endswith("net.4.logs")][-1]
        sd[key] = torch.zeros(3)
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(sd, args_for(self.CFG_FLAT))
        self.assertIn(key, str(cm.exception))

    def test_unknown_tensor_and_broken_finc(self):
        model = ft.random_model(self.CFG, 17, dtype=torch.float32)
        sd = hierarchical_state_dict(model, prefix="")
        sd["fastflow_step.0.fastflow_step.glow_unit.glow_step.coupling.net.6.weight"] = torch.zeros(1)
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(sd, args_for(self.CFG))
        self.assertIn("net.6.weight", str(cm.exception))
        sd = hierarchical_state_dict(model, prefix="")
        key = "fastflow_levels.0.fastflow_level.1.fastflow_step.fastflow_unit.conv_br.conv.weight"
        sd[key][0, 0, 0, 0] = 0.5  # BR's current tap is [0, 0]
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(sd, args_for(self.CFG))
        self.assertIn(key, str(cm.exception))
        args = args_for(self.CFG)
        args.fix_finc = True
        _, tensors, _, notes = convert.convert(sd, args)
        self.assertTrue(torch.equal(tensors["levels.0.steps.0.finc.br"], ft.weights(model)["levels.0.steps.0.finc.br"]))

    def test_missing_image(self):
        model = ft.random_model(self.CFG, 18, dtype=torch.float32)
        args = convert.parse_args(["a", "b"])
        with self.assertRaises(convert.ConvertError) as cm:
            convert.convert(hierarchical_state_dict(model, ""), args)
        self.assertIn("--image", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
