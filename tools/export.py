#!/usr/bin/python3
"""Exports a training checkpoint of tools/train.py to a finc weights file, calibrated.

    /usr/bin/python3 tools/export.py [--checkpoint tools/checkpoints/fmnist.best.pt]
                                     [--out weights/fashion-mnist.safetensors] [--test-bpd 3.05]

Default source: the best-by-validation copy if present, else the training checkpoint.
Default output: weights/fashion-mnist.safetensors for Fashion-MNIST, else NAME.safetensors
beside the checkpoint (NAME: the data set's name).
Metadata (strings, docs/model.md): format, format_version, config, dataset (its name),
data_images and data_shape (the set's size and C x H x W), split (how it was held out,
with counts), epochs (completed epochs of the exported weights), steps, parameters,
train_bpd (mean training bits/dim of the last completed epoch, uniform dequantization),
val_bpd (validation, uniform u with a fixed seed) and val_bpd_u05 (validation with
u = 0.5, the engine's default score) from the log, or measured now by the float32
PyTorch reference unless --no-eval; test_bpd when --test-bpd gives one (measured by the
C engine).

Then `finc calibrate` fits the anomaly score on the validation split (docs/anomaly.md),
so the file answers with anomaly verdicts; --no-calibrate leaves it uncalibrated.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import datasets  # noqa: E402
import finc_torch as ft  # noqa: E402

MAX_BYTES = 45 * 1024 * 1024


def default_checkpoint():
    best = os.path.join(HERE, "checkpoints", "fmnist.best.pt")
    return best if os.path.exists(best) else os.path.join(HERE, "checkpoints", "fmnist.pt")


def facts_from_log(ck):
    """(completed epochs, val record of the exported weights or None)."""
    log = ck.get("log", [])
    epochs = ck["epoch"]  # train.py counts completed epochs in both files
    if "val" in ck:  # a best copy: saved right after this validation
        return epochs, ck["val"]
    vals = [r for r in log if r.get("kind") == "val" and r.get("epoch") == epochs - 1]
    return epochs, (vals[-1] if vals else None)


def split_text(rec, n_train, n_val):
    if rec["kind"] == "fashion-mnist":
        return "train: first %d of the training file; validation: last %d" % (n_train, n_val)
    return "train: %d, validation: %d (shuffled with seed %d)" % (n_train, n_val, rec["split_seed"])


def calibrate(finc, out, val_px, name, n_all):
    """finc calibrate on the validation images, through a .npy of them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "val.npy")
        np.save(path, np.ascontiguousarray(val_px.numpy(), dtype=np.uint8))
        what = "%s validation split (%d images)" % (name, len(val_px))
        r = subprocess.run([finc, "calibrate", out, "--data", path, "--data-name", what, "-o", out],
                           capture_output=True, text=True)
    if r.returncode != 0:
        m = re.search(r"need (\d+)\.\.", r.stderr)
        hint = ("\nthe anomaly score fits on half the validation images and calibrates on the other half: "
                "this model needs at least %d, the split has %d. Train a new checkpoint with a larger "
                "--val-fraction (%.2f of these %d images), or add images, or export with --no-calibrate"
                % (2 * int(m.group(1)), len(val_px), min(0.5, 2 * int(m.group(1)) / max(n_all, 1) + 0.01), n_all)
                if m else "")
        raise SystemExit("export: finc calibrate failed: %s%s" % (r.stderr.strip(), hint))
    print(r.stdout.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description="export a training checkpoint to a finc weights file")
    p.add_argument("--checkpoint", default=None, help="default: the best copy, else the checkpoint")
    p.add_argument("--out", help="default: weights/fashion-mnist.safetensors, or NAME.safetensors by the checkpoint")
    p.add_argument("--finc", default=os.path.join(os.path.dirname(HERE), "finc"), help="the finc binary (calibrate)")
    p.add_argument("--no-calibrate", action="store_true", help="leave the anomaly score uncalibrated")
    p.add_argument("--test-bpd", type=float, help="test bits/dim measured by the C engine")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="one more metadata string (figures measured by the C engine)")
    p.add_argument("--no-eval", action="store_true", help="do not score the validation set now")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    src = args.checkpoint or default_checkpoint()
    ck = torch.load(src, map_location="cpu")
    model = ft.FInCFlow(ck["config"])
    model.load_state_dict(ck["model"])
    epochs, val = facts_from_log(ck)
    import train  # the same data, split and validation routine as training
    rec = train.data_record(ck)
    if args.out is None:
        args.out = (os.path.join(os.path.dirname(HERE), "weights", "fashion-mnist.safetensors")
                    if rec["kind"] == "fashion-mnist" else
                    os.path.join(os.path.dirname(os.path.abspath(src)), rec["name"] + ".safetensors"))
    if not args.no_calibrate and not os.access(args.finc, os.X_OK):
        p.error("%s is not built: run make first, or pass --finc PATH or --no-calibrate" % args.finc)
    # The split's sizes are in the record; the images are read only to score or calibrate.
    n_all = rec.get("n", datasets.FMNIST_IMAGES)
    n_val = len(rec["val"]) if "val" in rec else datasets.FMNIST_VAL
    val_px = None

    def val_images():
        nonlocal val_px
        if val_px is None:
            val_px = train.load_data(rec["src"], saved=rec if "fingerprint" in rec else None)[1]
        return val_px
    c, h, w = ck["config"]["image"]
    meta = {"dataset": rec["name"], "epochs": str(epochs), "steps": str(ck["step"]),
            "parameters": str(sum(t.numel() for t in ft.weights(model).values())),
            "source": "tools/train.py (%s)" % os.path.basename(src),
            "data_images": str(n_all), "data_shape": "%dx%dx%d" % (c, h, w),
            "split": split_text(rec, n_all - n_val, n_val)}
    if val is not None:
        if val.get("train_bpd") is not None:
            meta["train_bpd"] = "%.4f" % val["train_bpd"]
        meta["val_bpd"] = "%.4f" % val["val_bpd"]
        if val.get("val_bpd_u05") is not None:
            meta["val_bpd_u05"] = "%.4f" % val["val_bpd_u05"]
    if not args.no_eval and "val_bpd_u05" not in meta:
        half, unif = train.validate(model, val_images(), "cpu", 500, ck.get("args", {}).get("seed", 1) + 99)
        meta["val_bpd_u05"] = "%.4f" % half
        meta.setdefault("val_bpd", "%.4f" % unif)
    if args.test_bpd is not None:
        meta["test_bpd"] = "%.4f" % args.test_bpd
    for kv in args.meta:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            p.error("--meta wants KEY=VALUE, got %r" % kv)
        meta[key] = value

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    ft.save_safetensors(tmp, model, meta)
    size = os.path.getsize(tmp)
    if size > MAX_BYTES:
        os.remove(tmp)
        sys.stderr.write("export: %d bytes is over the %d-byte limit\n" % (size, MAX_BYTES))
        return 1
    os.replace(tmp, args.out)
    ft.load_safetensors(args.out)  # the file passes the reference loader's checks
    print("wrote %s (%d bytes) from %s: %s" % (args.out, size, src, json.dumps(meta)))
    if not args.no_calibrate:
        calibrate(args.finc, args.out, val_images(), rec["name"], n_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
