"""Out-of-distribution probe sets for a 28x28 gray model, made from what a Debian machine has.

Writes one IDX file (uint8, N x 28 x 28) per set into OUT (default build/probes/):

  noise       uniform i.i.d. pixels
  constant    one gray level per image, 0..255
  inverted    Fashion-MNIST test images, 255 - v
  vflip       Fashion-MNIST test images upside down (close to the data: same pixels, same texture)
  glyphs      digits and letters from the installed TrueType fonts, white on black,
              random size, position, rotation and stroke (MNIST- and notMNIST-like)
  natural     random crops of the photographs shipped in python3-skimage, gray, rescaled
  faces       the 25x25 face crops shipped in python3-skimage (lfw_subset), resized

The sets were fixed before the anomaly score was chosen and are not changed to suit it.
Everything is seeded: the same files come out on every run. The skimage images come
from the Debian package: installed, or unpacked from `apt-get download python3-skimage`
into the folder given with --skimage (tools/probes.sh does that).
"""
import argparse
import glob
import gzip
import os
import struct
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FMNIST_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
SKIMAGE_DATA = "/usr/lib/python3/dist-packages/skimage/data"
PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket",
          "brick", "motorcycle_left", "hubble_deep_field", "retina", "cell", "microaneurysms", "ihc",
          "horse", "page", "text", "immunohistochemistry"]
GLYPHS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SIDE = 28


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    magic, n, h, w = struct.unpack(">IIII", data[:16])
    if magic != 0x803:
        raise ValueError("%s: not an IDX image file" % path)
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, h, w)


def write_idx(path, images):
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, h, w = images.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, h, w))
        f.write(images.tobytes())


def noise(rng, n):
    return rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)


def constant(rng, n):
    return np.repeat(rng.integers(0, 256, size=n, dtype=np.uint8), SIDE * SIDE).reshape(n, SIDE, SIDE)


def glyphs(rng, n):
    fonts = sorted(f for f in glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True)
                   if "glyphicons" not in f and "MathTeX" not in f)
    if not fonts:
        raise SystemExit("no TrueType fonts under /usr/share/fonts/truetype (apt-get install fonts-dejavu-core)")
    out = np.zeros((n, SIDE, SIDE), dtype=np.uint8)
    for i in range(n):
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(70, 110)))
        ch = GLYPHS[rng.integers(len(GLYPHS))]
        big = Image.new("L", (112, 112), 0)
        draw = ImageDraw.Draw(big)
        box = draw.textbbox((0, 0), ch, font=font)
        x = (112 - (box[2] - box[0])) / 2 - box[0] + rng.normal(0, 6)
        y = (112 - (box[3] - box[1])) / 2 - box[1] + rng.normal(0, 6)
        draw.text((x, y), ch, fill=255, font=font, stroke_width=int(rng.integers(0, 6)), stroke_fill=255)
        big = big.rotate(float(rng.normal(0, 12)), resample=Image.BILINEAR)
        out[i] = np.asarray(big.resize((SIDE, SIDE), Image.LANCZOS))
    return out


def natural(rng, n, data_dir):
    photos = []
    for name in PHOTOS:
        for ext in ("png", "jpg"):
            p = os.path.join(data_dir, "%s.%s" % (name, ext))
            if os.path.exists(p):
                photos.append(np.asarray(Image.open(p).convert("L")))
    if not photos:
        raise SystemExit("no skimage photographs under %s (tools/probes.sh unpacks python3-skimage)" % data_dir)
    out = np.zeros((n, SIDE, SIDE), dtype=np.uint8)
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        side = int(rng.integers(SIDE, min(img.shape[:2]) // 2 + 1))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        crop = Image.fromarray(img[y:y + side, x:x + side])
        out[i] = np.asarray(crop.resize((SIDE, SIDE), Image.BILINEAR))
    return out


def faces(data_dir):
    lfw = np.load(os.path.join(data_dir, "lfw_subset.npy"))
    out = []
    for f in lfw:
        img = Image.fromarray(np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8))
        out.append(np.asarray(img.resize((SIDE, SIDE), Image.BILINEAR)))
    return np.stack(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="build/probes")
    p.add_argument("-n", type=int, default=2000, help="images per generated set")
    p.add_argument("--skimage", default=SKIMAGE_DATA, help="python3-skimage's data folder")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    test = read_idx(FMNIST_TEST)
    sets = {
        "noise": noise(np.random.default_rng(1), a.n),
        "constant": constant(np.random.default_rng(2), a.n),
        "inverted": 255 - test[:a.n],
        "vflip": test[:a.n, ::-1, :],
        "glyphs": glyphs(np.random.default_rng(3), a.n),
        "natural": natural(np.random.default_rng(4), a.n, a.skimage),
        "faces": faces(a.skimage),
    }
    for name, images in sets.items():
        path = os.path.join(a.out, name + ".idx")
        write_idx(path, images)
        print("%-9s %5d images  %s" % (name, len(images), path), file=sys.stderr)


if __name__ == "__main__":
    main()
