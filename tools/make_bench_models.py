#!/usr/bin/python3
"""Writes the benchmark weights files: the paper's MNIST shape with random weights.

    tools/make_bench_models.py [--f512 PATH] [--f128 PATH] [--seed N]

Both models have the paper's MNIST shape (image 1x28x28, L=2, steps [16, 16], k=3,
actnorm on), one with coupling width F=512 (about 10M parameters, the paper's model)
and one with F=128. The weights are random, drawn by finc_torch.random_model with a
fixed seed, with each coupling's last convolution near zero and the ActNorms set by
data-dependent initialisation on 64 seeded random images, as at the start of
training, so values stay in range through the 34 couplings (latents of random images
come out about N(0, 1); without the ActNorm initialisation the F=512 model's latents
reach ~1e6). Same seed, same bytes (written with one thread).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch  # noqa: E402

DEFAULT_SEED = 20230121
DDI_BATCH = 64
MNIST = {"image": [1, 28, 28], "levels": 2, "steps": [16, 16], "kernel": 3,
         "actnorm": True, "alpha": 1e-6}


def make(path, width, seed):
    config = finc_torch.check_config(dict(MNIST, coupling_width=width))
    model = finc_torch.random_model(config, seed, near_zero_last=True, dtype=torch.float64)
    # Data-dependent ActNorm initialisation (Glow's, the public code's first batch) on
    # random 8-bit images, as at the start of training: each step's input is brought
    # back to unit scale, so the activations stay in range through all 16 + 16 steps
    # (without it the F=512 model's level-1 couplings grow the latents to ~1e6).
    g = torch.Generator().manual_seed(int(seed) + 1000)
    pixels = torch.randint(0, 256, (DDI_BATCH, *config["image"]), generator=g, dtype=torch.uint8)
    finc_torch.data_dependent_init(model, pixels)
    params = sum(int(t.numel()) for t in finc_torch.weights(model).values())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    finc_torch.save_safetensors(tmp, model, {
        "dataset": "none (random weights for benchmarking)",
        "note": "random_model(seed=%d, near_zero_last=True): coupling conv3 near zero; "
                "ActNorm data-dependent init on %d random images" % (seed, DDI_BATCH),
        "parameters": str(params)})
    os.replace(tmp, path)
    return params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--f512", default="build/bench/mnist-f512.safetensors",
                    help="output path of the F=512 model (default %(default)s)")
    ap.add_argument("--f128", default="build/bench/mnist-f128.safetensors",
                    help="output path of the F=128 model (default %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one reduction order: the same bytes on every run
    for path, width, seed in ((args.f512, 512, args.seed), (args.f128, 128, args.seed + 1)):
        params = make(path, width, seed)
        print("%s: F=%d, %d parameters (%.2fM)" % (path, width, params, params / 1e6))


if __name__ == "__main__":
    main()
