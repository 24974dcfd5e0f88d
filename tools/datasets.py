"""Image sets for training: what `tools/train.py --data SRC` reads.

SRC is one of
  - `fashion-mnist` (the default), or the folder /usr/share/datasets/fashion-mnist:
    the 60,000-image training file, split as the shipped model was (last 5,000 held out);
  - an IDX image file (.gz or not): (N, H, W) gray, or (N, H, W, C) with C = 1 or 3;
  - a .npy of uint8 shaped (N, C, H, W) (or (N, H, W) for gray), C = 1 or 3;
  - a folder of PNGs, searched recursively, in sorted path order.

PNGs become pixels exactly as the C engine decodes them (io/png.h): palette
expanded, 16-bit scaled with rounding, alpha composited onto black, and when a
channel count is asked for, RGB to gray by BT.601 luma (Pillow's "L") or gray
replicated into RGB. Without one, a folder must be all gray or all colour.

Errors are DataError with a message that names the file and says what to do.
"""

import gzip
import hashlib
import os

import numpy as np

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_TRAIN = "train-images-idx3-ubyte.gz"
FMNIST_IMAGES = 60000  # in the training file
FMNIST_VAL = 5000
MIN_IMAGES = 20


class DataError(Exception):
    pass


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError("%s: cannot read: %s" % (path, e))
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError("%s: not an IDX file of unsigned bytes" % path)
    ndim = data[3]
    if ndim not in (3, 4) or len(data) < 4 + 4 * ndim:
        raise DataError("%s: an IDX file of %d dimensions; image sets have 3 (N, H, W) or 4 (N, H, W, C)"
                        % (path, ndim))
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    need = int(np.prod(dims))
    body = data[4 + 4 * ndim:]
    if len(body) != need:
        raise DataError("%s: %d bytes of pixels, shape %s needs %d" % (path, len(body), tuple(dims), need))
    a = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    if ndim == 3:
        return a[:, None, :, :].copy()
    if dims[3] not in (1, 3):
        raise DataError("%s: %d channels; finc models take 1 (gray) or 3 (RGB)" % (path, dims[3]))
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _read_npy(path):
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError("%s: cannot read as .npy: %s" % (path, e))
    if a.dtype != np.uint8:
        raise DataError("%s: dtype %s; image sets are uint8 (N, C, H, W): convert with .astype(np.uint8)"
                        % (path, a.dtype))
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise DataError("%s: shape %s; image sets are (N, C, H, W) with C = 1 or 3, or (N, H, W)"
                        % (path, a.shape))
    return np.ascontiguousarray(a)


def _png_pixels(path):
    """(C, H, W) uint8 as io/png.c decodes it, C = 1 for gray files and 3 for colour ones."""
    from PIL import Image
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # PIL raises many kinds for bad files
        raise DataError("%s: not a readable PNG: %s" % (path, e))
    if im.format != "PNG":
        raise DataError("%s: a %s file, not a PNG" % (path, im.format))
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I"):
        v = np.asarray(im, dtype=np.int64)
        a = ((v * 255 + 32767) // 65535).astype(np.uint8)[None]
        return a
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)[None]
    if mode == "LA":
        v = np.asarray(im, dtype=np.int64)
        return ((v[..., 0] * v[..., 1] + 127) // 255).astype(np.uint8)[None]
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    if mode == "RGBA":
        v = np.asarray(im, dtype=np.int64)
        rgb = (v[..., :3] * v[..., 3:4] + 127) // 255
        return rgb.astype(np.uint8).transpose(2, 0, 1)
    raise DataError("%s: PNG mode %s is not supported" % (path, mode))


def to_channels(a, channels):
    """(C, H, W) to the asked channel count, as io/png.c converts."""
    if a.shape[0] == channels:
        return a
    if channels == 3:
        return np.repeat(a, 3, axis=0)
    r, g, b = (a[i].astype(np.int64) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)[None]


def _read_pngs(folder, channels):
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(".png")]
    paths.sort()
    if not paths:
        raise DataError("%s: no .png files in it or its subfolders" % folder)
    out, first = [], None
    for p in paths:
        a = _png_pixels(p)
        if first is None:
            first = (p, a.shape)
        if a.shape[1:] != first[1][1:]:
            raise DataError("mixed sizes: %s is %dx%d, %s is %dx%d (width x height); resize them to one size"
                            % (first[0], first[1][2], first[1][1], p, a.shape[2], a.shape[1]))
        if channels is None and a.shape[0] != first[1][0]:
            kind = {1: "gray", 3: "colour"}
            raise DataError("mixed channels: %s is %s, %s is %s; convert them, or pass --channels 1 or 3"
                            % (first[0], kind[first[1][0]], p, kind[a.shape[0]]))
        out.append(to_channels(a, channels) if channels else a)
    return np.stack(out), paths


def load(src, channels=None):
    """(pixels uint8 (N, C, H, W), name, kind) of SRC; kind is 'fashion-mnist' or 'file'."""
    if src in ("fashion-mnist", FMNIST_DIR, FMNIST_DIR + "/"):
        px = _read_idx(os.path.join(FMNIST_DIR, FMNIST_TRAIN))
        return px, "fashion-mnist", "fashion-mnist"
    if not os.path.exists(src):
        raise DataError("%s: no such file or folder" % src)
    name = os.path.basename(os.path.normpath(src))
    for ext in (".gz", ".npy", ".idx", "-ubyte"):
        if name.endswith(ext):
            name = name[:-len(ext)]
    if os.path.isdir(src):
        px, _ = _read_pngs(src, channels)
    elif src.endswith(".npy"):
        px = _read_npy(src)
    else:
        px = _read_idx(src)
    if channels and px.shape[1] != channels:
        px = np.stack([to_channels(a, channels) for a in px])
    if len(px) < MIN_IMAGES:
        raise DataError("%s: %d images; training needs at least %d (a tenth is held out for validation)"
                        % (src, len(px), MIN_IMAGES))
    return np.ascontiguousarray(px), name, "file"


def fingerprint(px):
    return hashlib.sha256(px.tobytes()).hexdigest()[:16]


def val_count(n, val_fraction=None):
    """Images held out of n: val_fraction of them, or by default a tenth but at least 400
    (the anomaly score's fit and calibration take half each) and at most half."""
    if val_fraction is not None:
        return max(1, int(round(n * val_fraction)))
    return max(int(round(n * 0.1)), min(400, n // 2))


def split(n, kind, seed=0, val_fraction=None):
    """(train indices, validation indices). Fashion-MNIST keeps the shipped model's split
    (the last 5,000 of the training file held out); other sets are shuffled with seed and
    the first val_count of them held out."""
    if kind == "fashion-mnist":
        return np.arange(n - FMNIST_VAL), np.arange(n - FMNIST_VAL, n)
    perm = np.random.RandomState(seed).permutation(n)
    nval = val_count(n, val_fraction)
    return np.sort(perm[nval:]), np.sort(perm[:nval])


def default_levels(h, w):
    """The most levels (up to 4) that halve H and W evenly and leave at least 4x4 at the last."""
    best = 1
    for lv in range(1, 5):
        if h % (1 << lv) == 0 and w % (1 << lv) == 0 and min(h, w) >> lv >= 4:
            best = lv
    if h % 2 or w % 2:
        raise DataError("images are %dx%d (height x width): a FInC Flow halves both at each level, so "
                        "both must be even" % (h, w))
    return best
