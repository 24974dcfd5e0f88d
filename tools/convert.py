#!/usr/bin/python3
"""Converts a checkpoint of the public FInC Flow code to a finc weights file (model.md section 5).

    /usr/bin/python3 tools/convert.py CHECKPOINT.pt OUT.safetensors --image 1 28 28 \
        [--levels L] [--steps K0 K1 ..] [--kernel k] [--width F] [--actnorm | --no-actnorm]

Reads a torch.save file holding a state dict, or a dict with `model_state_dict` (or
`state_dict`), with or without DataParallel's `module.` prefix, in either naming scheme:

  hierarchical  fastflow_levels.{l}.fastflow_level.{1+s}.fastflow_step.{fastflow_unit,glow_unit}...,
                fastflow_levels.{l}.fastflow_level.{K_l+1}.transform.net.*  (split),
                fastflow_step.{s}.fastflow_step.*                              (the last level)
  flat          create_model's numbered modules: N.conv_{tl,tr,bl,br}.conv.weight, N+1.{translation,
                log_scale}, N+2.W, N+3.net.*, M.transform.net.* (split), walked in order

Every config value not given is read from the tensor shapes (the image's C, k, F, L, the
steps, ActNorm); H and W cannot be, so --image is needed. Given values are checked
against the shapes. Buffers (`initialized`, `preprocess.*`, the base distributions) and
the unused `gaussianize.*` are dropped; any other unexpected tensor is an error that names
its checkpoint key, as is any shape that disagrees with the config.

The public PaddedConv2d may carry a bias (`conv_*.conv.bias`). The contract's FInC unit has
none: a zero bias is dropped, a non-zero one is folded into the next ActNorm's translation
(t' = t - b, exact), and without ActNorm it is an error.
The FInC current-pixel tap must be exactly unit lower-triangular; --fix-finc forces it and
reports the largest change instead of failing.
"""

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch as ft  # noqa: E402

QUARTERS = ft.QUARTERS


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------- reading

def load_state_dict(path):
    obj = torch.load(path, map_location="cpu")
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConvertError("%s: no state dict found (expected a dict of tensors or a dict with "
                           "'model_state_dict')" % path)
    out = {}
    for k, v in obj.items():
        name = k[len("module."):] if k.startswith("module.") else k
        out[name] = v.detach().cpu()
    return out


def is_droppable(key):
    """Buffers and tensors the contract does not use."""
    parts = key.split(".")
    return (parts[-1] in ("initialized", "mask") or parts[0] in ("preprocess", "gaussianize",
            "base_distribution", "squeeze") or "base" in parts[:-1] or "gaussianize" in parts)


# One layer's tensors, named by the layer's own suffixes (e.g. "conv_tl.conv.weight").
FINC_KEYS = ["conv_%s.conv.weight" % q for q in QUARTERS]
FINC_BIAS = ["conv_%s.conv.bias" % q for q in QUARTERS]
ACTNORM_KEYS = ["translation", "log_scale"]
CONV1X1_KEYS = ["W"]
COUPLING_KEYS = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                 "net.4.weight", "net.4.bias", "net.4.logs"]
COUPLING_MAP = dict(zip(COUPLING_KEYS, ["conv1.weight", "conv1.bias", "conv2.weight",
                                        "conv2.bias", "conv3.weight", "conv3.bias", "conv3.logs"]))


class Layer:
    """A group of checkpoint tensors that forms one layer: kind, {suffix: (key, tensor)}."""

    def __init__(self, kind, prefix):
        self.kind, self.prefix, self.tensors = kind, prefix, {}

    def add(self, suffix, key, t):
        self.tensors[suffix] = (key, t)

    def get(self, suffix):
        if suffix not in self.tensors:
            raise ConvertError("missing checkpoint tensor %s%s" % (self.prefix, suffix))
        return self.tensors[suffix]


def classify(prefix, suffixes):
    s = set(suffixes)
    if ("scale" in s and s <= {"translation", "scale"}) or all(x.startswith("distribution.") for x in s):
        return "preprocess"  # Normalization / Dequantization buffers of create_model's 0.*-3.*
    if any(x.startswith("conv_") for x in s):
        return "finc"
    if s & set(ACTNORM_KEYS):
        return "actnorm"
    if "W" in s:
        return "conv1x1"
    if any(x.startswith("transform.net.") for x in s):
        return "split"
    if any(x.startswith("net.") for x in s):
        return "coupling"
    return None


def group_layers(items, prefix_re):
    """Groups {key: tensor} by the layer prefix that prefix_re captures, keeping key order."""
    groups, order = {}, []
    for key, t in items:
        m = prefix_re.match(key)
        if not m:
            raise ConvertError("unexpected checkpoint tensor %s" % key)
        prefix, suffix = m.group(1), key[len(m.group(1)):]
        if prefix not in groups:
            groups[prefix] = []
            order.append(prefix)
        groups[prefix].append((suffix, key, t))
    layers = []
    for prefix in order:
        kind = classify(prefix, [s for s, _, _ in groups[prefix]])
        if kind == "preprocess":
            continue
        if kind is None:
            raise ConvertError("unexpected checkpoint tensor %s" % groups[prefix][0][1])
        layer = Layer(kind, prefix)
        for suffix, key, t in groups[prefix]:
            if kind == "split":
                suffix = suffix[len("transform."):]
            layer.add(suffix, key, t)
        layers.append(layer)
    return layers


def parse_hierarchical(sd):
    """-> list per level of (list of step layer-lists, split coupling Layer or None)."""
    step_re = re.compile(r"^(fastflow_levels\.(\d+)\.fastflow_level\.(\d+)\.|fastflow_step\.(\d+)\.)")
    levels, last = {}, {}
    for key, t in sd.items():
        if is_droppable(key):
            continue
        m = step_re.match(key)
        if not m:
            raise ConvertError("unexpected checkpoint tensor %s" % key)
        rest = key[len(m.group(1)):]
        if m.group(2) is not None:
            l, idx = int(m.group(2)), int(m.group(3))
            levels.setdefault(l, {}).setdefault(idx, []).append((rest, key, t))
        else:
            last.setdefault(int(m.group(4)), []).append((rest, key, t))

    def step_layers(idx_items):
        inner = re.compile(r"^fastflow_step\.(fastflow_unit\.|glow_unit\.glow_step\.(actnorm|conv1x1|coupling)\.)")
        out = {}
        for rest, key, t in idx_items:
            m = inner.match(rest)
            if not m:
                raise ConvertError("unexpected checkpoint tensor %s" % key)
            kind = "finc" if m.group(2) is None else m.group(2)
            if kind not in out:
                out[kind] = Layer(kind, key[:len(key) - len(rest)] + m.group(0))
            out[kind].add(rest[len(m.group(0)):], key, t)
        return [out[k] for k in ("finc", "actnorm", "conv1x1", "coupling") if k in out]

    result = []
    nlev = max(levels) + 1 if levels else 0
    for l in range(nlev):
        if l not in levels:
            raise ConvertError("checkpoint has no tensors for fastflow_levels.%d" % l)
        idxs = sorted(levels[l])
        split_idx = idxs[-1]
        items = levels[l][split_idx]
        if not all(rest.startswith("transform.net.") for rest, _, _ in items):
            raise ConvertError("fastflow_levels.%d: last module %d is not a split prior "
                               "(tensor %s)" % (l, split_idx, items[0][1]))
        split = Layer("coupling", "fastflow_levels.%d.fastflow_level.%d.transform." % (l, split_idx))
        for rest, key, t in items:
            split.add(rest[len("transform."):], key, t)
        steps = []
        for n, idx in enumerate(idxs[:-1]):
            if idx != n + 1:
                raise ConvertError("fastflow_levels.%d.fastflow_level.%d: expected step module %d"
                                   % (l, idx, n + 1))
            steps.append(step_layers(levels[l][idx]))
        result.append((steps, split))
    steps = []
    for n, s in enumerate(sorted(last)):
        if s != n:
            raise ConvertError("fastflow_step.%d: expected fastflow_step.%d" % (s, n))
        steps.append(step_layers(last[s]))
    result.append((steps, None))
    return result


def parse_flat(sd):
    """create_model's numbered modules -> same structure as parse_hierarchical."""
    items = [(k, t) for k, t in sd.items() if not is_droppable(k)]
    items.sort(key=lambda kt: int(kt[0].split(".", 1)[0]) if kt[0].split(".", 1)[0].isdigit() else -1)
    layers = group_layers(items, re.compile(r"^(\d+\.)"))
    result, steps, cur = [], [], []
    for layer in layers:
        if layer.kind == "split":
            if cur:
                steps.append(cur)
            layer.kind = "coupling"
            result.append((steps, layer))
            steps, cur = [], []
            continue
        if layer.kind == "finc" and cur:
            steps.append(cur)
            cur = []
        if not cur and layer.kind != "finc":
            raise ConvertError("module %s (tensor %s) is a %s where a FInC unit should start a step"
                               % (layer.prefix.rstrip("."), next(iter(layer.tensors.values()))[0],
                                  layer.kind))
        cur.append(layer)
    if cur:
        steps.append(cur)
    result.append((steps, None))
    return result


# --------------------------------------------------------------------------- mapping

def infer_config(structure, args):
    """Config from the arguments, with every missing value read from the shapes."""
    levels = len(structure)
    steps = [len(s) for s, _ in structure]
    first = structure[0][0][0] if structure[0][0] else None
    if first is None:
        raise ConvertError("level 0 has no flow steps; cannot read the channel count")
    key, w = first[0].get("conv_tl.conv.weight")
    if w.dim() != 4:
        raise ConvertError("%s: expected a 4-d kernel, got shape %s" % (key, tuple(w.shape)))
    cimg, kernel = w.shape[0], w.shape[-1]
    width = None
    for layer in first:
        if layer.kind == "coupling":
            width = layer.get("net.0.weight")[1].shape[0]
    actnorm = any(l.kind == "actnorm" for st, _ in structure for step in st for l in step)

    def given(name, value, derived):
        if value is not None and derived is not None and value != derived:
            raise ConvertError("--%s %s disagrees with the checkpoint, which has %s" % (name, value, derived))
        return value if value is not None else derived

    if args.image is None:
        raise ConvertError("give --image C H W: the image size cannot be read from a checkpoint "
                           "(the checkpoint's channel count is %d)" % cimg)
    if args.steps is not None and args.steps != steps:
        raise ConvertError("--steps %s disagrees with the checkpoint, which has %s" % (args.steps, steps))
    cfg = {"image": list(args.image),
           "levels": given("levels", args.levels, levels),
           "steps": steps,
           "kernel": given("kernel", args.kernel, kernel),
           "coupling_width": given("width", args.width, width),
           "actnorm": given("actnorm", args.actnorm, actnorm),
           "alpha": 1e-6}
    if cfg["image"][0] != cimg:
        raise ConvertError("--image C=%d disagrees with the checkpoint (%s has %d channels per "
                           "quarter, so C=%d)" % (cfg["image"][0], key, cimg, cimg))
    try:
        return ft.check_config(cfg)
    except ValueError as e:
        raise ConvertError(str(e))


def map_tensors(structure, config, fix_finc=False):
    """-> {our name: tensor}, checking every shape against the config."""
    shapes = ft.expected_shapes(config)
    out, notes = {}, []

    def put(name, key, t):
        if name not in shapes:
            raise ConvertError("checkpoint tensor %s has no place in the config (would be %s)" % (key, name))
        if tuple(t.shape) != tuple(shapes[name]):
            raise ConvertError("checkpoint tensor %s: shape %s, the config needs %s for %s"
                               % (key, tuple(t.shape), tuple(shapes[name]), name))
        if not torch.all(torch.isfinite(t.double())):
            raise ConvertError("checkpoint tensor %s: non-finite values" % key)
        out[name] = t.float().clone()

    def coupling(layer, prefix):
        for suffix in layer.tensors:
            if suffix not in COUPLING_MAP:
                raise ConvertError("unexpected checkpoint tensor %s" % layer.tensors[suffix][0])
        for suffix, ours in COUPLING_MAP.items():
            key, t = layer.get(suffix)
            put(prefix + ours, key, t)

    for l, (steps, split) in enumerate(structure):
        for s, layers in enumerate(steps):
            p = "levels.%d.steps.%d." % (l, s)
            kinds = [x.kind for x in layers]
            want = ["finc", "actnorm", "conv1x1", "coupling"] if config["actnorm"] else \
                   ["finc", "conv1x1", "coupling"]
            if kinds != want:
                raise ConvertError("%s: step holds %s, the config needs %s" % (
                    layers[0].prefix.rstrip("."), "+".join(kinds), "+".join(want)))
            finc, bias = layers[0], None
            for suffix in finc.tensors:
                if suffix not in FINC_KEYS + FINC_BIAS:
                    raise ConvertError("unexpected checkpoint tensor %s" % finc.tensors[suffix][0])
            for q, wkey, bkey in zip(QUARTERS, FINC_KEYS, FINC_BIAS):
                key, w = finc.get(wkey)
                put(p + "finc." + q, key, w)
                try:
                    ft.check_finc_kernel(key, out[p + "finc." + q], q)
                except ValueError as e:
                    if not fix_finc:
                        raise ConvertError("checkpoint tensor %s (use --fix-finc to force the "
                                           "constraint)" % e)
                    fixed = fix_finc_kernel(out[p + "finc." + q], q)
                    notes.append("%s: forced the current-pixel tap, max change %.3g"
                                 % (key, (fixed - out[p + "finc." + q]).abs().max().item()))
                    out[p + "finc." + q] = fixed
                if bkey in finc.tensors:
                    bias = [] if bias is None else bias
                    bias.append(finc.get(bkey))
            rest = layers[1:]
            if config["actnorm"]:
                an = rest.pop(0)
                for suffix in an.tensors:
                    if suffix not in ACTNORM_KEYS:
                        raise ConvertError("unexpected checkpoint tensor %s" % an.tensors[suffix][0])
                for suffix in ACTNORM_KEYS:
                    key, t = an.get(suffix)
                    put(p + "actnorm." + suffix, key, t)
            if bias is not None:
                if len(bias) != 4:
                    raise ConvertError("%s: FInC bias present on some quarters only" % bias[0][0])
                b = torch.cat([t.reshape(-1).float() for _, t in bias])
                if tuple(b.shape) != (shapes[p + "conv1x1.weight"][0],):
                    raise ConvertError("checkpoint tensor %s: bias shape %s does not fit the config"
                                       % (bias[0][0], tuple(bias[0][1].shape)))
                if torch.any(b != 0):
                    if not config["actnorm"]:
                        raise ConvertError("checkpoint tensor %s: non-zero FInC bias and no ActNorm "
                                           "to fold it into" % bias[0][0])
                    out[p + "actnorm.translation"] = out[p + "actnorm.translation"] - b
                    notes.append("%s..: folded the FInC bias into %sactnorm.translation"
                                 % (bias[0][0].rsplit(".", 3)[0], p))
            c1 = rest.pop(0)
            if list(c1.tensors) != ["W"]:
                extra = [k for s_, (k, _) in c1.tensors.items() if s_ != "W"]
                raise ConvertError("unexpected checkpoint tensor %s" % (extra[0] if extra else c1.prefix))
            key, t = c1.get("W")
            put(p + "conv1x1.weight", key, t)
            if torch.linalg.det(out[p + "conv1x1.weight"].double()).abs() == 0:
                raise ConvertError("checkpoint tensor %s: singular 1x1 matrix" % key)
            coupling(rest.pop(0), p + "coupling.")
        if split is not None:
            coupling(split, "levels.%d.split.coupling." % l)
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise ConvertError("the checkpoint has nothing for %s" % missing[0])
    return out, notes


def fix_finc_kernel(w, q):
    k = w.shape[-1]
    r, s = ft.finc_current_tap(q, k)
    w = w.clone()
    tap = w[:, :, r, s]
    w[:, :, r, s] = torch.tril(tap, -1) + torch.eye(tap.shape[0], dtype=w.dtype)
    return w


def convert(state_dict, args):
    """state dict (prefix already stripped) -> (config, {name: tensor}, scheme, notes)."""
    if any(k.startswith("fastflow_levels.") or k.startswith("fastflow_step.") for k in state_dict):
        scheme, structure = "hierarchical", parse_hierarchical(state_dict)
    elif any(re.match(r"^\d+\.", k) for k in state_dict):
        scheme, structure = "flat", parse_flat(state_dict)
    else:
        raise ConvertError("checkpoint matches neither naming scheme (first key: %s)"
                           % next(iter(state_dict), "<none>"))
    config = infer_config(structure, args)
    tensors, notes = map_tensors(structure, config, args.fix_finc)
    return config, tensors, scheme, notes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="convert a public FInC Flow checkpoint to a finc weights file")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--image", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--levels", type=int)
    p.add_argument("--steps", type=int, nargs="+")
    p.add_argument("--kernel", type=int)
    p.add_argument("--width", type=int)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--actnorm", dest="actnorm", action="store_true", default=None)
    g.add_argument("--no-actnorm", dest="actnorm", action="store_false")
    p.add_argument("--fix-finc", action="store_true", help="force the FInC current-pixel constraint")
    p.add_argument("--dataset", help="recorded in the metadata")
    a = p.parse_args(argv)
    if a.steps is not None and a.levels is not None and len(a.steps) == 1 and a.levels > 1:
        a.steps = a.steps * a.levels
    return a


def main(argv=None):
    args = parse_args(argv)
    try:
        sd = load_state_dict(args.checkpoint)
        config, tensors, scheme, notes = convert(sd, args)
        model = ft.FInCFlow(config)
        ft.load_weights(model, tensors)
        meta = {"source": "converted from %s (%s naming)" % (os.path.basename(args.checkpoint), scheme)}
        if args.dataset:
            meta["dataset"] = args.dataset
        ft.write_safetensors(args.output, tensors, ft.weights_metadata(config, meta))
    except (ConvertError, ValueError, OSError) as e:
        sys.stderr.write("convert: %s\n" % e)
        return 1
    for n in notes:
        sys.stderr.write("note: %s\n" % n)
    print("wrote %s: %s naming, config %s, %d tensors" % (args.output, scheme,
          json.dumps(config), len(tensors)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
