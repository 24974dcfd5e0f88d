#!/usr/bin/python3
"""Trains a FInC Flow (tools/finc_torch.py, docs/model.md) on Fashion-MNIST.

    /usr/bin/python3 tools/train.py --threads 1          # start, or resume from --checkpoint
    /usr/bin/python3 tools/export.py                     # then write weights/fashion-mnist.safetensors

Data: the 60,000-image training file is split once and for all into the first 55,000
images (training) and the last 5,000 (validation); the file is already in random order.
The test file is never read here. Uniform dequantization v + u, u ~ U[0,1), during
training. Validation, once per epoch on all 5,000 images without gradients, reports
bits/dim with uniform u from a fixed seed (the usual dequantized bound, used to pick
"best"), and every --val-u05-every epochs also with u = 0.5 (the engine's default score).

Architecture: L=2, K=[8,8], k=3, F=128, ActNorm on (about 0.46M parameters, 1.8 MB of
float32 weights). Measured on this 2-core machine with 1 thread, batch 64 (one
forward+backward+Adam step): L=2,K=8,F=128 0.31 s; K=6,F=160 0.30 s; K=10,F=96 0.28 s.
The paper's MNIST model (K=16..32, F=512) is ~20-40x the work per step and would see
only a few epochs in a day here; at 0.31 s/step an epoch (860 steps) takes ~4.5 min, so a
night gives ~100 epochs, and for a 28x28 grey-scale set more epochs of a modest model beat
few epochs of a big one. Width 128 keeps the 1x1 conv of the coupling (F x F) the
dominant cost while depth 8 per level keeps enough FInC/1x1 mixing between couplings.

Optimisation: Adam, lr 1e-3 with linear warm-up over --warmup steps then a per-epoch
decay --lr-decay, gradient-norm clipping --clip, ActNorm data-dependent init on the
first batch. The FInC current-pixel tap is fixed by a mask + constant inside the layer
(finc_torch.FInC.kernel_of), so those entries never receive a gradient.

Checkpoints: every --save-every seconds and at each epoch end, written atomically
(temp file + rename) to --checkpoint: model, optimizer, epoch, position in the epoch,
RNG states, the log. A run resumes from it automatically; SIGTERM/SIGINT save and exit.
The best model by validation bits/dim goes to <checkpoint stem>.best.pt (no optimizer).
The log is JSON lines in <checkpoint stem>.log.jsonl, rewritten from the checkpoint on
resume so it never holds steps that were lost.
"""

import argparse
import gzip
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch as ft  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
N_TRAIN = 55000
N_VAL = 5000


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise ValueError("%s: not an IDX image file" % path)
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(int(n), 1, int(h), int(w))


def load_split(data_dir):
    images = read_idx_images(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    if len(images) != N_TRAIN + N_VAL:
        raise ValueError("expected %d training images, found %d" % (N_TRAIN + N_VAL, len(images)))
    return torch.from_numpy(images[:N_TRAIN].copy()), torch.from_numpy(images[N_TRAIN:].copy())


def stem(path):
    return path[:-3] if path.endswith(".pt") else path


def atomic_save(obj, path):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="tools/checkpoints/fmnist.pt")
    p.add_argument("--data", default=DATA_DIR)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500, help="linear lr warm-up, in steps")
    p.add_argument("--lr-decay", type=float, default=0.985, help="lr factor per epoch")
    p.add_argument("--clip", type=float, default=50.0, help="max gradient norm")
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[8], help="K per level (one value = all)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--no-actnorm", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50, help="steps per train log line")
    p.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--val-batch", type=int, default=100)
    p.add_argument("--val-u05-every", type=int, default=5,
                   help="also score validation with u=0.5 every this many epochs (and the last)")
    p.add_argument("--max-hours", type=float, default=0.0, help="stop after this long (0: no limit)")
    a = p.parse_args(argv)
    steps = a.steps * a.levels if len(a.steps) == 1 else a.steps
    a.config = ft.check_config({"image": [1, 28, 28], "levels": a.levels, "steps": steps,
                                "kernel": a.kernel, "coupling_width": a.width,
                                "actnorm": not a.no_actnorm, "alpha": 1e-6})
    return a


class Progress:
    """A text progress bar on stderr: redrawn in place on a terminal, one line a minute in a file."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text, force=False):
        now = time.time()
        if not force and now - self.last < (0.5 if self.tty else 60.0):
            return
        self.last = now
        sys.stderr.write(("\r%s\033[K" if self.tty else "%s\n") % text)
        sys.stderr.flush()

    def bar(self, done, total, width=30):
        n = int(width * done / max(total, 1))
        return "[" + "#" * n + "." * (width - n) + "]"


@torch.no_grad()
def validate(model, val, device, batch, seed, half=True):
    """Mean validation bits/dim with uniform u from a fixed seed and (if half) with u = 0.5."""
    model.eval()
    d = ft.num_dims(model.config)
    g = torch.Generator().manual_seed(seed)
    tot_half, tot_unif = 0.0, 0.0
    for i in range(0, len(val), batch):
        px = val[i:i + batch].to(device)
        u = torch.rand(px.shape, generator=g).to(device)
        lp_unif, _ = ft.log_prob(model, px, u)
        tot_unif += ft.bits_per_dim(lp_unif.double(), d).sum().item()
        if half:
            lp_half, _ = ft.log_prob(model, px, None)
            tot_half += ft.bits_per_dim(lp_half.double(), d).sum().item()
    model.train()
    return (tot_half / len(val) if half else None), tot_unif / len(val)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.ckpt = args.checkpoint
        self.best_path = stem(self.ckpt) + ".best.pt"
        self.log_path = stem(self.ckpt) + ".log.jsonl"
        self.stop = False
        self.train_px, self.val_px = load_split(args.data)
        self.state = None

    # ----------------------------------------------------------------- state
    def fresh(self):
        a = self.args
        torch.manual_seed(a.seed)
        self.config = a.config
        self.model = ft.FInCFlow(self.config).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=a.lr)
        self.epoch, self.pos, self.step = 0, 0, 0
        self.noise = torch.Generator().manual_seed(a.seed + 7)
        self.log, self.best_val, self.elapsed, self.lr_scale = [], float("inf"), 0.0, 1.0
        self.initialized = False

    def resume(self):
        ck = torch.load(self.ckpt, map_location="cpu")
        self.config = ft.check_config(ck["config"])
        if self.config != self.args.config:
            sys.stderr.write("note: resuming with the checkpoint's config %s (the command line's "
                             "architecture options are ignored)\n" % json.dumps(self.config))
        self.model = ft.FInCFlow(self.config)
        self.model.load_state_dict(ck["model"])
        self.model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.args.lr)
        self.opt.load_state_dict(ck["optimizer"])
        self.epoch, self.pos, self.step = ck["epoch"], ck["pos"], ck["step"]
        self.noise = torch.Generator()
        self.noise.set_state(ck["noise_rng"])
        torch.set_rng_state(ck["torch_rng"])
        self.log, self.best_val = ck["log"], ck["best_val"]
        self.elapsed, self.lr_scale = ck["elapsed"], ck.get("lr_scale", 1.0)
        self.initialized = True
        with open(self.log_path, "w") as f:
            for rec in self.log:
                f.write(json.dumps(rec) + "\n")

    def save(self):
        atomic_save({"version": 1, "config": self.config, "args": vars(self.args),
                     "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                     "optimizer": self.opt.state_dict(), "epoch": self.epoch, "pos": self.pos,
                     "step": self.step, "noise_rng": self.noise.get_state(),
                     "torch_rng": torch.get_rng_state(), "log": self.log,
                     "best_val": self.best_val, "elapsed": self.elapsed,
                     "lr_scale": self.lr_scale}, self.ckpt)

    def save_best(self, rec):
        atomic_save({"version": 1, "config": self.config,
                     "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                     "epoch": self.epoch, "step": self.step, "val": rec, "log": self.log},
                    self.best_path)

    def record(self, rec):
        self.log.append(rec)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ----------------------------------------------------------------- loop
    def lr_at(self):
        a = self.args
        warm = min(1.0, (self.step + 1) / max(a.warmup, 1))
        return a.lr * warm * (a.lr_decay ** self.epoch) * self.lr_scale

    def permutation(self):
        g = torch.Generator().manual_seed(self.args.seed * 1000003 + self.epoch)
        return torch.randperm(len(self.train_px), generator=g)

    def run(self):
        a = self.args
        os.makedirs(os.path.dirname(os.path.abspath(self.ckpt)), exist_ok=True)
        if os.path.exists(self.ckpt):
            self.resume()
            sys.stderr.write("resumed from %s: epoch %d, step %d\n" % (self.ckpt, self.epoch, self.step))
        else:
            self.fresh()
            open(self.log_path, "w").close()
        self.model.train()
        d = ft.num_dims(self.config)
        nbatches = len(self.train_px) // a.batch
        progress = Progress()
        t_start, t_saved = time.time(), time.time()
        base_elapsed = self.elapsed
        acc, acc_n, acc_gn, acc_t, bad = 0.0, 0, 0.0, time.time(), 0
        sys.stderr.write("config %s, %d parameters, %d steps per epoch\n" % (
            json.dumps(self.config), sum(p.numel() for p in self.model.parameters()), nbatches))

        while self.epoch < a.epochs and not self.stop:
            perm = self.permutation()
            ep_sum, ep_n = 0.0, 0
            while self.pos < nbatches and not self.stop:
                idx = perm[self.pos * a.batch:(self.pos + 1) * a.batch]
                px = self.train_px[idx].to(self.device)
                u = torch.rand(px.shape, generator=self.noise).to(self.device)
                if not self.initialized:
                    ft.data_dependent_init(self.model, px, u)
                    self.initialized = True
                for group in self.opt.param_groups:
                    group["lr"] = self.lr_at()
                lp, _ = ft.log_prob(self.model, px, u)
                loss = ft.bits_per_dim(lp, d).mean()
                self.opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad += 1
                    self.pos += 1
                    if bad >= 10:
                        self.recover()
                        bad = 0
                        break  # the outer loop redraws the resumed epoch's order
                    continue
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip).item()
                if not math.isfinite(gn):
                    bad += 1
                    self.pos += 1
                    continue
                bad = 0
                self.opt.step()
                self.pos += 1
                self.step += 1
                lv = loss.item()
                acc, acc_n, acc_gn = acc + lv, acc_n + 1, acc_gn + gn
                ep_sum, ep_n = ep_sum + lv, ep_n + 1
                self.elapsed = base_elapsed + time.time() - t_start
                if acc_n == a.log_every:
                    now = time.time()
                    self.record({"kind": "train", "epoch": self.epoch, "step": self.step,
                                 "bpd": round(acc / acc_n, 5), "grad_norm": round(acc_gn / acc_n, 4),
                                 "lr": self.lr_at(), "sec_per_step": round((now - acc_t) / acc_n, 4),
                                 "elapsed_s": round(self.elapsed, 1)})
                    acc, acc_n, acc_gn, acc_t = 0.0, 0, 0.0, now
                progress.show("epoch %d %s %d/%d  bpd %.4f  step %d  %.0f s" % (
                    self.epoch, progress.bar(self.pos, nbatches), self.pos, nbatches,
                    ep_sum / max(ep_n, 1), self.step, self.elapsed))
                if time.time() - t_saved > a.save_every:
                    self.save()
                    t_saved = time.time()
                if a.max_hours and self.elapsed - base_elapsed > a.max_hours * 3600:
                    self.stop = True
            if self.pos >= nbatches:
                half = (self.epoch + 1) % a.val_u05_every == 0 or self.epoch + 1 == a.epochs
                v_half, v_unif = validate(self.model, self.val_px, self.device, a.val_batch,
                                          a.seed + 99, half)
                rec = {"kind": "val", "epoch": self.epoch, "step": self.step,
                       "train_bpd": round(ep_sum / max(ep_n, 1), 5) if ep_n else None,
                       "val_bpd": round(v_unif, 5),
                       "val_bpd_u05": round(v_half, 5) if half else None,
                       "elapsed_s": round(self.elapsed, 1)}
                self.record(rec)
                progress.show("epoch %d done: val bpd %.4f%s" % (
                    self.epoch, v_unif, " (u=0.5: %.4f)" % v_half if half else ""), force=True)
                if progress.tty:
                    sys.stderr.write("\n")
                self.epoch += 1
                self.pos = 0
                if v_unif < self.best_val:
                    self.best_val = v_unif
                    self.save_best(rec)
                self.save()
                t_saved = time.time()
        self.save()
        sys.stderr.write("\nstopped at epoch %d, step %d; checkpoint %s\n" % (self.epoch, self.step, self.ckpt))

    def recover(self):
        """Many non-finite losses in a row: reload the last checkpoint at half the learning rate."""
        scale = self.lr_scale * 0.5
        if os.path.exists(self.ckpt):
            self.resume()
        self.lr_scale = scale
        self.record({"kind": "event", "what": "non-finite loss; reloaded checkpoint",
                     "lr_scale": scale, "step": self.step})


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)

    def on_signal(signum, frame):
        trainer.stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    trainer.run()


if __name__ == "__main__":
    main()
