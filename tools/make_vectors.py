#!/usr/bin/python3
"""Writes the reference vectors of tests/vectors/ from the PyTorch reference (finc_torch.py).

    /usr/bin/python3 tools/make_vectors.py [--out tests/vectors]

For each small random model NAME (odd shapes on purpose: non-square, three levels with
a 1x1 final level, a 5x5 kernel larger than the image, ActNorm on and off) it writes

  NAME.safetensors          the weights file (model.md section 4), float32
  NAME.vectors.safetensors  pixels          U8  (N, C, H, W)   N = 5; image 1 holds only 0 and 255
                            latents         F32 (N, D)         encode, u = 0.5
                            logp            F64 (N,)           log p in nats, u = 0.5
                            dequant_u       F32 (N, C, H, W)   uniform u in [0, 1)
                            latents_u       F32 (N, D)         encode with dequant_u
                            logp_u          F64 (N,)
                            decode_latents  F32 (N, D)         N(0, 0.7^2)
                            decoded_pixels  U8  (N, C, H, W)   decode(decode_latents)
                            decoded_scaled  F64 (N, C, H, W)   256 * x before the floor, so a
                                                               test can excuse a pixel that sits
                                                               within rounding of a bin edge

The random weights are drawn in float64, rounded to float32 (the file's values), and
the vectors are computed in float64 from exactly those float32 values; float32 inputs
(dequant_u, decode_latents) are likewise used as their float32 values. So an engine's
only error is its own arithmetic. Metadata of the vectors file: model, seed, D, and
decode_min_margin (the smallest distance of decoded_scaled to an integer).
Deterministic: the same command writes byte-identical files.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finc_torch as ft  # noqa: E402

N_IMAGES = 5

MODELS = [
    # name, config, seed
    ("l2_1x8x12", {"image": [1, 8, 12], "levels": 2, "steps": [2, 2], "kernel": 3,
                   "coupling_width": 16, "actnorm": True, "alpha": 1e-6}, 101),
    ("l3_3x8x8_k2_noact", {"image": [3, 8, 8], "levels": 3, "steps": [1, 2, 1], "kernel": 2,
                           "coupling_width": 8, "actnorm": False, "alpha": 1e-6}, 202),
    ("l1_2x4x8_k5", {"image": [2, 4, 8], "levels": 1, "steps": [3], "kernel": 5,
                     "coupling_width": 12, "actnorm": True, "alpha": 1e-6}, 303),
]


def make_vectors(config, seed):
    """Returns (model in float64 with float32-exact weights, {name: tensor}, metadata)."""
    model = ft.round_to_float32_(ft.random_model(config, seed, near_zero_last=True))
    g = torch.Generator().manual_seed(seed + 1)
    c, h, w = model.config["image"]
    d = ft.num_dims(model.config)
    pixels = torch.randint(0, 256, (N_IMAGES, c, h, w), generator=g, dtype=torch.uint8)
    pixels[1] = torch.where(torch.rand(c, h, w, generator=g) < 0.5, 0, 255).to(torch.uint8)
    u = torch.rand(N_IMAGES, c, h, w, generator=g, dtype=torch.float64).float()
    zdec = (torch.randn(N_IMAGES, d, generator=g, dtype=torch.float64) * 0.7).float()

    latents, logp = ft.encode(model, pixels)
    latents_u, logp_u = ft.encode(model, pixels, u.double())
    if not torch.equal(ft.decode(model, latents), pixels):
        raise RuntimeError("reference round trip failed")

    zs = ft.unflatten_latents(model.config, zdec.double())
    x = model.flow_inverse(zs)
    alpha = model.config["alpha"]
    scaled = 256.0 * (torch.sigmoid(x) / (1.0 - 2.0 * alpha) - alpha)
    decoded = ft.decode(model, zdec.double())
    inside = (scaled > 0) & (scaled < 256)
    frac = scaled - torch.floor(scaled)
    margin = torch.minimum(frac, 1 - frac)[inside].min().item() if inside.any() else 1.0

    tensors = {"pixels": pixels, "latents": latents.float(), "logp": logp.double(),
               "dequant_u": u, "latents_u": latents_u.float(), "logp_u": logp_u.double(),
               "decode_latents": zdec, "decoded_pixels": decoded, "decoded_scaled": scaled}
    meta = {"seed": str(seed), "D": str(d), "decode_min_margin": "%.3g" % margin}
    return model, tensors, meta


def main(argv=None):
    p = argparse.ArgumentParser(description="write tests/vectors/ from the PyTorch reference")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(os.path.dirname(here), "tests", "vectors"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for name, config, seed in MODELS:
        model, tensors, meta = make_vectors(config, seed)
        wpath = os.path.join(args.out, name + ".safetensors")
        vpath = os.path.join(args.out, name + ".vectors.safetensors")
        ft.save_safetensors(wpath, model, {"name": name, "seed": str(seed),
                                           "purpose": "test vectors (random weights)"})
        meta.update(model=name + ".safetensors", config=json.dumps(model.config, separators=(",", ":")))
        ft.write_safetensors(vpath, tensors, meta)
        bpd = ft.bits_per_dim(tensors["logp"], int(meta["D"]))
        print("%-22s D=%-4s bpd(u=.5) %s  decode margin %s  %d + %d bytes" % (
            name, meta["D"], " ".join("%.3f" % v for v in bpd.tolist()), meta["decode_min_margin"],
            os.path.getsize(wpath), os.path.getsize(vpath)))


if __name__ == "__main__":
    main()
