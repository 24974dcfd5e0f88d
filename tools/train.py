#!/usr/bin/python3
"""Trains a FInC Flow (tools/finc_torch.py, docs/model.md) on a set of images.

    /usr/bin/python3 tools/train.py --threads 1          # Fashion-MNIST; start, or resume from --checkpoint
    /usr/bin/python3 tools/export.py                     # then write weights/fashion-mnist.safetensors

    /usr/bin/python3 tools/train.py --data my-pngs/ --checkpoint models/parts/ckpt.pt --epochs 20
    /usr/bin/python3 tools/export.py --checkpoint models/parts/ckpt.best.pt --out models/parts.safetensors

Data (--data, tools/datasets.py): Fashion-MNIST by default, or an IDX file, a .npy of
uint8 (N, C, H, W), or a folder of PNGs; gray (C = 1) or RGB (C = 3), any H x W that
the levels halve evenly. Fashion-MNIST's 60,000-image training file is split as the
shipped model was: the first 55,000 images train, the last 5,000 validate (the file is
already in random order; the test file is never read here). Any other set is shuffled
with --split-seed and part held out for validation: --val-fraction, by default a tenth
but at least 400 images (what calibrating the anomaly score takes) and at most half. The split, the
data's size and a fingerprint of its pixels are kept in the checkpoint: a resumed run
uses the same split, and refuses data that changed. Uniform dequantization v + u, u ~ U[0,1), during
training. Validation, once per epoch on all 5,000 images without gradients, reports
bits/dim with uniform u from a fixed seed (the usual dequantized bound, used to pick
"best"), and every --val-u05-every epochs also with u = 0.5 (the engine's default score).

Architecture (defaults for Fashion-MNIST; for other sets --levels defaults to the most
levels, up to 4, that halve H and W evenly and leave at least 4x4, --width to 96 past
4096 dimensions): L=2, K=[8,8], k=3, F=128, ActNorm on (about 0.46M parameters, 1.8 MB of
float32 weights). The parameters, and after the first steps the time per epoch, are
printed at the start. Measured on this 2-core machine with 1 thread, batch 64 (one
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
import json
import math
import os
import signal
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402
import finc_torch as ft  # noqa: E402


def load_data(src, channels=None, split_seed=0, val_fraction=None, saved=None):
    """(train pixels, validation pixels, data record) as uint8 tensors (N, C, H, W).
    With saved (a checkpoint's data record), its split is used and the data must match it."""
    px, name, kind = datasets.load(src, channels)
    fp = datasets.fingerprint(px)
    if saved is not None:
        if saved["fingerprint"] != fp or saved["n"] != len(px):
            raise datasets.DataError(
                "%s: %d images (fingerprint %s), but the checkpoint was trained on %d (fingerprint %s): "
                "the data changed; start a new checkpoint, or restore the data" %
                (src, len(px), fp, saved["n"], saved["fingerprint"]))
        val = torch.tensor(saved["val"], dtype=torch.long)
        keep = torch.ones(len(px), dtype=torch.bool)
        keep[val] = False
        train = torch.nonzero(keep).flatten()
        rec = saved
    else:
        train, val = (torch.from_numpy(i.astype("int64")) for i in datasets.split(len(px), kind, split_seed,
                                                                                   val_fraction))
        rec = {"src": src if kind == "fashion-mnist" else os.path.abspath(src), "name": name, "kind": kind,
               "n": len(px), "shape": list(px.shape[1:]), "fingerprint": fp, "split_seed": split_seed,
               "val_fraction": val_fraction, "val": val.tolist()}
    t = torch.from_numpy(px)
    return t[train], t[val], rec


def data_record(ck):
    """A checkpoint's data record; checkpoints from before --data trained on Fashion-MNIST
    with its fixed split."""
    return ck.get("data") or {"src": "fashion-mnist", "name": "fashion-mnist", "kind": "fashion-mnist"}


def default_config(a, shape):
    """The architecture flags, with defaults for an image of shape (C, H, W)."""
    c, h, w = shape
    levels = a.levels or datasets.default_levels(h, w)
    if h % (1 << levels) or w % (1 << levels):
        raise datasets.DataError("images are %dx%d (height x width): %d levels need both divisible by %d; "
                                 "use --levels %d or fewer" % (h, w, levels, 1 << levels,
                                                              datasets.default_levels(h, w)))
    steps = a.steps * levels if len(a.steps) == 1 else a.steps
    width = a.width or (128 if c * h * w <= 4096 else 96)
    return ft.check_config({"image": [c, h, w], "levels": levels, "steps": steps, "kernel": a.kernel,
                            "coupling_width": width, "actnorm": a.actnorm, "alpha": 1e-6})


def stem(path):
    return path[:-3] if path.endswith(".pt") else path


def atomic_save(obj, path):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="tools/checkpoints/fmnist.pt")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, an IDX file, a .npy of uint8 (N, C, H, W), or a folder of PNGs")
    p.add_argument("--channels", type=int, choices=[1, 3],
                   help="convert every image to 1 (gray) or 3 (RGB) channels (default: as they are)")
    p.add_argument("--val-fraction", type=float,
                   help="held out for validation (not Fashion-MNIST); default a tenth, at least 400 images "
                        "(the anomaly calibration's need) and at most half")
    p.add_argument("--split-seed", type=int, default=0, help="the validation split's shuffle")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when a GPU answers, else cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500, help="linear lr warm-up, in steps")
    p.add_argument("--lr-decay", type=float, default=0.985, help="lr factor per epoch")
    p.add_argument("--clip", type=float, default=50.0, help="max gradient norm")
    p.add_argument("--levels", type=int, help="default: from the image size (2 for 28x28)")
    p.add_argument("--steps", type=int, nargs="+", default=[8], help="K per level (one value = all)")
    p.add_argument("--width", type=int, help="coupling width F (default 128, 96 past 4096 dimensions)")
    p.add_argument("--kernel", type=int, default=3)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--actnorm", dest="actnorm", action="store_true", default=True, help="ActNorm in each step (default)")
    g.add_argument("--no-actnorm", dest="actnorm", action="store_false")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50, help="steps per train log line")
    p.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--val-batch", type=int, default=100)
    p.add_argument("--val-u05-every", type=int, default=5,
                   help="also score validation with u=0.5 every this many epochs (and the last)")
    p.add_argument("--max-hours", type=float, default=0.0, help="stop after this long (0: no limit)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all (0: no limit)")
    a = p.parse_args(argv)
    if a.val_fraction is not None and not 0 < a.val_fraction < 1:
        p.error("--val-fraction wants a fraction in (0, 1)")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU answers here (torch.cuda.is_available() is False)")
    return a


def fmt_time(sec):
    sec = max(0, int(sec))
    return "%dh%02dm" % (sec // 3600, sec // 60 % 60) if sec >= 3600 else "%dm%02ds" % (sec // 60, sec % 60)


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
        # read once: its data record now, the rest when run() resumes from it
        self.first_ck = torch.load(self.ckpt, map_location="cpu") if os.path.exists(self.ckpt) else None
        saved = data_record(self.first_ck) if self.first_ck else None
        if saved:
            if "fingerprint" not in saved:
                saved = None  # Fashion-MNIST before --data: the fixed split is made again
            elif os.path.abspath(args.data) != saved["src"] and args.data != saved["src"]:
                sys.stderr.write("note: resuming on %s, the checkpoint's data (--data %s is ignored)\n"
                                 % (saved["src"], args.data))
        src = saved["src"] if saved else args.data
        self.train_px, self.val_px, self.data = load_data(src, args.channels, args.split_seed, args.val_fraction,
                                                          saved)
        args.config = default_config(args, tuple(self.train_px.shape[1:]))
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

    def resume(self, ck=None):
        if ck is None:
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
        atomic_save({"version": 1, "config": self.config, "args": vars(self.args), "data": self.data,
                     "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                     "optimizer": self.opt.state_dict(), "epoch": self.epoch, "pos": self.pos,
                     "step": self.step, "noise_rng": self.noise.get_state(),
                     "torch_rng": torch.get_rng_state(), "log": self.log,
                     "best_val": self.best_val, "elapsed": self.elapsed,
                     "lr_scale": self.lr_scale}, self.ckpt)

    def save_best(self, rec):
        atomic_save({"version": 1, "config": self.config, "data": self.data, "args": vars(self.args),
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
        if self.first_ck is not None:
            self.resume(self.first_ck)
            self.first_ck = None
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
        if nbatches == 0:
            raise datasets.DataError("%d training images, fewer than one batch of %d: lower --batch"
                                     % (len(self.train_px), a.batch))
        c, h, w = self.config["image"]
        sys.stderr.write("data %s: %d training and %d validation images of %dx%dx%d (C x H x W), split %s\n" % (
            self.data["name"], len(self.train_px), len(self.val_px), c, h, w,
            "as shipped (the last 5,000 held out)" if self.data["kind"] == "fashion-mnist"
            else "shuffled with seed %d" % self.data["split_seed"]))
        sys.stderr.write("config %s, %d parameters, %d steps per epoch, device %s\n" % (
            json.dumps(self.config), sum(p.numel() for p in self.model.parameters()), nbatches, a.device))
        run_t0, run_s0, estimated = time.time(), self.step, False

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
                    _, v0 = validate(self.model, self.val_px, self.device, a.val_batch, a.seed + 99, False)
                    self.record({"kind": "val_init", "step": 0, "val_bpd": round(v0, 5)})
                    sys.stderr.write("validation bits/dim at the start: %.4f\n" % v0)
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
                if self.step - run_s0 == 1:
                    run_t0, run_s0 = time.time(), self.step  # timed from after the first step's set-up
                per_step = (time.time() - run_t0) / max(self.step - run_s0, 1)
                if not estimated and self.step - run_s0 >= 5:
                    estimated = True
                    sys.stderr.write("estimate: %.3f s per step, %s per epoch\n"
                                     % (per_step, fmt_time(per_step * nbatches)))
                left = (nbatches - self.pos) + (a.epochs - self.epoch - 1) * nbatches
                if a.max_steps:
                    left = min(left, a.max_steps - self.step)
                progress.show("epoch %d %s %d/%d  bpd %.4f  step %d  %s, eta %s" % (
                    self.epoch, progress.bar(self.pos, nbatches), self.pos, nbatches,
                    ep_sum / max(ep_n, 1), self.step, fmt_time(self.elapsed), fmt_time(left * per_step)))
                if time.time() - t_saved > a.save_every:
                    self.save()
                    t_saved = time.time()
                if a.max_hours and self.elapsed - base_elapsed > a.max_hours * 3600:
                    self.stop = True
                if a.max_steps and self.step >= a.max_steps:
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
    try:
        trainer = Trainer(args)
    except datasets.DataError as e:
        sys.stderr.write("train: %s\n" % e)
        return 2

    def on_signal(signum, frame):
        trainer.stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        trainer.run()
    except datasets.DataError as e:
        sys.stderr.write("train: %s\n" % e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
