"""FInC Flow in PyTorch: the readable reference of docs/model.md.

This module is the executable form of the model contract. It favours clarity and
exactness over speed: the FInC inverse is a raster-order solve in float64, and
every layer keeps the names of the weights file (model.md section 4) as its
state-dict names, so `weights(model)` is the file's tensor set.

Public API
    default_config(**overrides) -> dict
    check_config(config) -> dict                     (normalised copy, raises ValueError)
    level_shapes(config) -> [(C, H, W) per level]    (shape inside level l, after squeeze)
    latent_shapes(config) -> [(C, H, W) per latent]  (model.md section 3 order)
    FInCFlow(config)                                 nn.Module; .flow_forward(x), .flow_inverse(zs)
    preprocess(pixels, u=None, alpha) -> (x, logdet) ; postprocess(x, alpha) -> uint8 pixels
    encode(model, pixels, u=None) -> (latents (N, D), logp (N,))
    decode(model, latents) -> pixels uint8 (N, C, H, W)
    bits_per_dim(logp, D) -> tensor
    data_dependent_init(model, pixels_or_x, u=None)
    random_model(config, seed, near_zero_last=True, dtype=torch.float64) -> FInCFlow
    weights(model) -> {name: tensor}   expected_shapes(config) -> {name: shape}
    load_weights(model, tensors)       (checks names, shapes, FInC constraint)
    save_safetensors(path, model, metadata=None)
    load_safetensors(path, dtype=torch.float64) -> (model, metadata)
    write_safetensors(path, tensors, metadata=None)  read_safetensors(path) -> (tensors, metadata)
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "finc-flow"
FORMAT_VERSION = "1"
QUARTERS = ("tl", "tr", "bl", "br")
LN_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- config

def default_config(**overrides):
    config = {"image": [1, 28, 28], "levels": 2, "steps": [8, 8], "kernel": 3,
              "coupling_width": 128, "actnorm": True, "alpha": 1e-6}
    config.update(overrides)
    return check_config(config)


def check_config(config):
    """Returns a normalised copy of `config`; raises ValueError on an inconsistent one."""
    c = dict(config)
    try:
        image = [int(v) for v in c["image"]]
        levels = int(c["levels"])
        steps = c["steps"]
        steps = [int(steps)] * levels if isinstance(steps, int) else [int(v) for v in steps]
        kernel = int(c["kernel"])
        width = int(c["coupling_width"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("config: missing or malformed key (%s)" % e)
    if len(image) != 3 or min(image) < 1:
        raise ValueError("config: image must be [C, H, W] with positive entries")
    if levels < 1:
        raise ValueError("config: levels must be >= 1")
    if len(steps) != levels or min(steps) < 0:
        raise ValueError("config: steps must list %d non-negative counts" % levels)
    if kernel < 1 or width < 1:
        raise ValueError("config: kernel and coupling_width must be >= 1")
    _, h, w = image
    if h % (1 << levels) or w % (1 << levels):
        raise ValueError("config: H and W must be divisible by 2^levels = %d" % (1 << levels))
    c.update(image=image, levels=levels, steps=steps, kernel=kernel, coupling_width=width,
             actnorm=bool(c.get("actnorm", True)), alpha=float(c.get("alpha", 1e-6)))
    return c


def level_shapes(config):
    """(C, H, W) inside each level, after its squeeze."""
    c, h, w = config["image"]
    shapes = []
    for l in range(config["levels"]):
        c, h, w = 4 * c, h // 2, w // 2
        shapes.append((c, h, w))
        if l < config["levels"] - 1:
            c = c // 2
    return shapes


def latent_shapes(config):
    """Latent shapes in file order: level 0's split latent first, the final latent last."""
    shapes = level_shapes(config)
    out = [(c // 2, h, w) for (c, h, w) in shapes[:-1]]
    out.append(shapes[-1])
    return out


def num_dims(config):
    c, h, w = config["image"]
    return c * h * w


# --------------------------------------------------------------------------- layers

def squeeze(x):
    """(N, C, H, W) -> (N, 4C, H/2, W/2); channel 4c + 2dy + dx holds pixel (2i+dy, 2j+dx)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x):
    n, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(n, c, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


def finc_pad(q, k):
    """One-sided zero padding (left, right, top, bottom) of quarter q."""
    return {"tl": (k - 1, 0, k - 1, 0), "tr": (0, k - 1, k - 1, 0),
            "bl": (k - 1, 0, 0, k - 1), "br": (0, k - 1, 0, k - 1)}[q]


def finc_flip_dims(q):
    """Dims to flip to turn quarter q's kernel (and image) into TL form."""
    return {"tl": (), "tr": (-1,), "bl": (-2,), "br": (-2, -1)}[q]


def finc_current_tap(q, k):
    """(row, col) of the current-pixel tap in quarter q's forward-form kernel."""
    return {"tl": (k - 1, k - 1), "tr": (k - 1, 0), "bl": (0, k - 1), "br": (0, 0)}[q]


def _flip(t, dims):
    return torch.flip(t, dims) if dims else t


class FInC(nn.Module):
    """FInC unit: four quarters, each a one-sided-padded k x k convolution.

    The stored parameter of each quarter may hold anything on the fixed entries of
    the current-pixel tap; the kernel actually used is `raw * mask + const`, which
    puts 1 on the diagonal and 0 above it. The fixed entries therefore never get a
    gradient and the constraint holds by construction, during training too.
    """

    def __init__(self, channels, kernel):
        super().__init__()
        if channels % 4:
            raise ValueError("FInC needs C % 4 == 0, got C=%d" % channels)
        cq, k = channels // 4, kernel
        self.channels, self.kernel = channels, kernel
        for q in QUARTERS:
            mask = torch.ones(cq, cq, k, k)
            const = torch.zeros(cq, cq, k, k)
            r, s = finc_current_tap(q, k)
            mask[:, :, r, s] = torch.tril(torch.ones(cq, cq), diagonal=-1)  # free: c' < c
            const[:, :, r, s] = torch.eye(cq)
            self.register_buffer("mask_" + q, mask, persistent=False)
            self.register_buffer("const_" + q, const, persistent=False)
            w = torch.zeros(cq, cq, k, k)
            w[:, :, r, s] = torch.eye(cq)  # identity at init
            setattr(self, q, nn.Parameter(w))

    def kernel_of(self, q):
        raw = getattr(self, q)
        return raw * getattr(self, "mask_" + q) + getattr(self, "const_" + q)

    @torch.no_grad()
    def project_(self):
        """Writes the constrained kernels into the parameters."""
        for q in QUARTERS:
            getattr(self, q).copy_(self.kernel_of(q))

    def forward(self, x):
        cq, k = self.channels // 4, self.kernel
        ys = []
        for i, q in enumerate(QUARTERS):
            xq = x[:, i * cq:(i + 1) * cq]
            ys.append(F.conv2d(F.pad(xq, finc_pad(q, k)), self.kernel_of(q)))
        return torch.cat(ys, 1), x.new_zeros(x.shape[0])

    @torch.no_grad()
    def inverse(self, y):
        cq = self.channels // 4
        xs = []
        for i, q in enumerate(QUARTERS):
            dims = finc_flip_dims(q)
            y_tl = _flip(y[:, i * cq:(i + 1) * cq].double(), dims)
            w_tl = _flip(self.kernel_of(q).double(), dims)
            xs.append(_flip(finc_solve_tl(y_tl, w_tl), dims).to(y.dtype))
        return torch.cat(xs, 1)


def finc_solve_tl(y, w):
    """Solves y = conv2d(pad(x, (k-1, 0, k-1, 0)), w) for x, pixel by pixel in raster order.

    y (N, Cq, H, W), w (Cq, Cq, k, k) in TL form with a unit lower-triangular current
    tap w[:, :, k-1, k-1]. Every tap other than the current one reads a pixel that an
    earlier raster position has solved already; the current tap is a forward
    substitution over channels.
    """
    n, cq, h, wd = y.shape
    k = w.shape[-1]
    xp = y.new_zeros(n, cq, h + k - 1, wd + k - 1)
    lower = w[:, :, k - 1, k - 1]
    for i in range(h):
        for j in range(wd):
            # xp at the current pixel is still 0, so it drops out of this sum.
            patch = xp[:, :, i:i + k, j:j + k]
            r = y[:, :, i, j] - torch.einsum("ocab,ncab->no", w, patch)
            for c in range(cq):
                r[:, c] -= r[:, :c] @ lower[c, :c] if c else 0.0
            xp[:, :, i + k - 1, j + k - 1] = r
    return xp[:, :, k - 1:, k - 1:].contiguous()


class ActNorm(nn.Module):
    """y = (x - t) * exp(-s) per channel; data-dependent init on demand."""

    def __init__(self, channels):
        super().__init__()
        self.translation = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.pending_init = False

    def forward(self, x):
        if self.pending_init:
            with torch.no_grad():
                mean = x.mean(dim=(0, 2, 3))
                std = x.std(dim=(0, 2, 3), unbiased=False)
                self.translation.copy_(mean)
                self.log_scale.copy_(torch.log(std + 1e-6))
            self.pending_init = False
        t = self.translation.view(1, -1, 1, 1)
        s = self.log_scale.view(1, -1, 1, 1)
        logdet = -x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x - t) * torch.exp(-s), logdet.expand(x.shape[0])

    @torch.no_grad()
    def inverse(self, y):
        return y * torch.exp(self.log_scale.view(1, -1, 1, 1)) + self.translation.view(1, -1, 1, 1)


class Conv1x1(nn.Module):
    """Invertible 1x1 convolution y[:, o] = sum_c Wm[o, c] x[:, c]."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels))

    def forward(self, x):
        y = torch.einsum("oc,nchw->nohw", self.weight, x)
        logdet = x.shape[2] * x.shape[3] * torch.slogdet(self.weight)[1]
        return y, logdet.expand(x.shape[0])

    @torch.no_grad()
    def inverse(self, y):
        winv = torch.inverse(self.weight.double()).to(y.dtype)
        return torch.einsum("oc,nchw->nohw", winv, y)


class ZeroConv3(nn.Module):
    """(conv3x3(x; pad 1) + bias) * exp(3 * logs), per output channel."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.logs = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1) * torch.exp(3.0 * self.logs).view(1, -1, 1, 1)


class Coupling(nn.Module):
    """Affine coupling: x2 is scaled and shifted by a function of x1 = x[:, :C/2]."""

    def __init__(self, channels, width):
        super().__init__()
        if channels % 2:
            raise ValueError("coupling needs an even channel count, got %d" % channels)
        self.conv1 = nn.Conv2d(channels // 2, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.conv3 = ZeroConv3(width, channels)

    def params(self, x1):
        h = F.relu(self.conv1(x1))
        h = F.relu(self.conv2(h))
        h = self.conv3(h)
        log_s = 2.0 * torch.tanh(h[:, 0::2] / 2.0)
        return log_s, h[:, 1::2]

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        log_s, t = self.params(x1)
        return torch.cat([x1, x2 * torch.exp(log_s) + t], 1), log_s.flatten(1).sum(1)

    @torch.no_grad()
    def inverse(self, y):
        c = y.shape[1] // 2
        y1, y2 = y[:, :c], y[:, c:]
        log_s, t = self.params(y1)
        return torch.cat([y1, (y2 - t) * torch.exp(-log_s)], 1)


class FlowStep(nn.Module):
    """FInC unit -> ActNorm -> 1x1 conv -> coupling."""

    def __init__(self, channels, kernel, width, actnorm):
        super().__init__()
        self.finc = FInC(channels, kernel)
        self.actnorm = ActNorm(channels) if actnorm else None
        self.conv1x1 = Conv1x1(channels)
        self.coupling = Coupling(channels, width)

    def layers(self):
        return [m for m in (self.finc, self.actnorm, self.conv1x1, self.coupling) if m is not None]

    def forward(self, x):
        logdet = 0.0
        for m in self.layers():
            x, ld = m(x)
            logdet = logdet + ld
        return x, logdet

    @torch.no_grad()
    def inverse(self, y):
        for m in reversed(self.layers()):
            y = m.inverse(y)
        return y


class Split(nn.Module):
    """Coupling on all C channels; x[:, :C/2] continues, x[:, C/2:] is a latent."""

    def __init__(self, channels, width):
        super().__init__()
        self.coupling = Coupling(channels, width)

    def forward(self, x):
        y, logdet = self.coupling(x)
        c = y.shape[1] // 2
        return y[:, :c], y[:, c:], logdet

    @torch.no_grad()
    def inverse(self, x, z):
        return self.coupling.inverse(torch.cat([x, z], 1))


class Level(nn.Module):
    def __init__(self, channels, steps, kernel, width, actnorm, split):
        super().__init__()
        self.steps = nn.ModuleList(FlowStep(channels, kernel, width, actnorm) for _ in range(steps))
        self.split = Split(channels, width) if split else None


class FInCFlow(nn.Module):
    """The whole flow, without pre-processing: (N, C, H, W) real -> latents."""

    def __init__(self, config):
        super().__init__()
        self.config = check_config(config)
        cfg = self.config
        shapes = level_shapes(cfg)
        self.levels = nn.ModuleList(
            Level(shapes[l][0], cfg["steps"][l], cfg["kernel"], cfg["coupling_width"],
                  cfg["actnorm"], l < cfg["levels"] - 1)
            for l in range(cfg["levels"]))

    def flow_forward(self, x):
        """x (N, C, H, W) -> (list of latents in file order, logdet (N,))."""
        zs, logdet = [], x.new_zeros(x.shape[0])
        for level in self.levels:
            x = squeeze(x)
            for step in level.steps:
                x, ld = step(x)
                logdet = logdet + ld
            if level.split is not None:
                x, z, ld = level.split(x)
                logdet = logdet + ld
                zs.append(z)
        zs.append(x)
        return zs, logdet

    @torch.no_grad()
    def flow_inverse(self, zs):
        x = zs[-1]
        for l in reversed(range(len(self.levels))):
            level = self.levels[l]
            if level.split is not None:
                x = level.split.inverse(x, zs[l])
            for step in reversed(level.steps):
                x = step.inverse(x)
            x = unsqueeze(x)
        return x

    def finc_units(self):
        return [m for m in self.modules() if isinstance(m, FInC)]

    def actnorms(self):
        return [m for m in self.modules() if isinstance(m, ActNorm)]


# --------------------------------------------------------------------------- data in/out

def preprocess(pixels, u=None, alpha=1e-6, dtype=torch.float64):
    """uint8 pixels (N, C, H, W) -> (x in logit space, logdet (N,)), model.md section 1."""
    v = pixels.to(dtype)
    if u is None:
        u = 0.5
    if not torch.is_tensor(u):
        u = torch.full_like(v, float(u))
    d = v[0].numel()
    x = (v + u.to(dtype)) / 256.0
    logdet = torch.full((v.shape[0],), -d * math.log(256.0), dtype=dtype, device=v.device)
    x = (x + alpha) * (1.0 - 2.0 * alpha)  # sic, model.md: not alpha + (1 - 2 alpha) x
    logdet = logdet + d * math.log(1.0 - 2.0 * alpha)
    logdet = logdet + (-torch.log(x) - torch.log1p(-x)).flatten(1).sum(1)
    x = torch.log(x) - torch.log1p(-x)
    return x, logdet


def postprocess(x, alpha=1e-6):
    """Logit-space x -> uint8 pixels."""
    x = torch.sigmoid(x.double()) / (1.0 - 2.0 * alpha) - alpha
    return torch.clamp(torch.floor(256.0 * x), 0, 255).to(torch.uint8)


def gaussian_logp(z):
    return (-0.5 * z * z - 0.5 * LN_2PI).flatten(1).sum(1)


def flatten_latents(zs):
    return torch.cat([z.flatten(1) for z in zs], 1)


def unflatten_latents(config, latents):
    zs, at = [], 0
    for (c, h, w) in latent_shapes(config):
        n = c * h * w
        zs.append(latents[:, at:at + n].reshape(-1, c, h, w))
        at += n
    if at != latents.shape[1]:
        raise ValueError("latents have %d columns, the config needs %d" % (latents.shape[1], at))
    return zs


def model_dtype(model):
    return next(model.parameters()).dtype


def log_prob(model, pixels, u=None):
    """Differentiable log p (nats per image) and the latents list; for training."""
    x, logdet = preprocess(pixels, u, model.config["alpha"], dtype=model_dtype(model))
    zs, ld = model.flow_forward(x)
    return sum(gaussian_logp(z) for z in zs) + logdet + ld, zs


def encode(model, pixels, u=None):
    """uint8 pixels (N, C, H, W) -> (latents (N, D), log p in nats (N,)); u=None means 0.5."""
    with torch.no_grad():
        logp, zs = log_prob(model, pixels, u)
    return flatten_latents(zs), logp


def decode(model, latents):
    """Latents (N, D) -> uint8 pixels (N, C, H, W)."""
    zs = unflatten_latents(model.config, latents.to(model_dtype(model)))
    return postprocess(model.flow_inverse(zs), model.config["alpha"])


def bits_per_dim(logp, d):
    return -logp / (d * math.log(2.0))


@torch.no_grad()
def data_dependent_init(model, pixels, u=None):
    """Runs one forward pass in which every ActNorm sets itself from its input's statistics."""
    for m in model.actnorms():
        m.pending_init = True
    log_prob(model, pixels, u)
    for m in model.actnorms():
        m.pending_init = False


# --------------------------------------------------------------------------- weights

def expected_shapes(config):
    """{tensor name: shape} of a weights file for `config` (model.md section 4)."""
    cfg = check_config(config)
    k, f = cfg["kernel"], cfg["coupling_width"]
    out = {}

    def coupling(prefix, c):
        out[prefix + "conv1.weight"] = (f, c // 2, 3, 3)
        out[prefix + "conv1.bias"] = (f,)
        out[prefix + "conv2.weight"] = (f, f, 1, 1)
        out[prefix + "conv2.bias"] = (f,)
        out[prefix + "conv3.weight"] = (c, f, 3, 3)
        out[prefix + "conv3.bias"] = (c,)
        out[prefix + "conv3.logs"] = (c,)

    for l, (c, _, _) in enumerate(level_shapes(cfg)):
        for s in range(cfg["steps"][l]):
            p = "levels.%d.steps.%d." % (l, s)
            for q in QUARTERS:
                out[p + "finc." + q] = (c // 4, c // 4, k, k)
            if cfg["actnorm"]:
                out[p + "actnorm.translation"] = (c,)
                out[p + "actnorm.log_scale"] = (c,)
            out[p + "conv1x1.weight"] = (c, c)
            coupling(p + "coupling.", c)
        if l < cfg["levels"] - 1:
            coupling("levels.%d.split.coupling." % l, c)
    return out


def weights(model):
    """The weights-file tensors of `model` (FInC kernels with the constraint applied)."""
    out = {}
    sd = model.state_dict()
    for name in expected_shapes(model.config):
        mod, _, q = name.rpartition(".")
        if q in QUARTERS and mod.endswith(".finc"):
            out[name] = model.get_submodule(mod).kernel_of(q).detach().clone()
        else:
            out[name] = sd[name].detach().clone()
    return out


def check_finc_kernel(name, w, quarter):
    k = w.shape[-1]
    r, s = finc_current_tap(quarter, k)
    tap = w[:, :, r, s]
    cq = tap.shape[0]
    if not torch.equal(torch.diagonal(tap), torch.ones(cq, dtype=tap.dtype)):
        raise ValueError("%s: current-pixel tap diagonal is not 1" % name)
    if torch.any(torch.triu(tap, diagonal=1) != 0):
        raise ValueError("%s: current-pixel tap has non-zero entries above the diagonal" % name)


def load_weights(model, tensors):
    """Copies `tensors` (weights-file names) into `model`, checking names and shapes."""
    shapes = expected_shapes(model.config)
    unknown = sorted(set(tensors) - set(shapes))
    missing = sorted(set(shapes) - set(tensors))
    if unknown:
        raise ValueError("unknown tensor %s" % unknown[0])
    if missing:
        raise ValueError("missing tensor %s" % missing[0])
    sd = {}
    for name, shape in shapes.items():
        t = torch.as_tensor(tensors[name])
        if tuple(t.shape) != tuple(shape):
            raise ValueError("%s: shape %s, expected %s" % (name, tuple(t.shape), tuple(shape)))
        if not torch.all(torch.isfinite(t.double())):
            raise ValueError("%s: non-finite values" % name)
        q = name.rpartition(".")[2]
        if name.rpartition(".")[0].endswith(".finc"):
            check_finc_kernel(name, t, q)
        sd[name] = t
    own = model.state_dict()
    for name, t in sd.items():
        own[name].copy_(t.to(own[name].dtype))
    return model


# --------------------------------------------------------------------------- random weights

def random_model(config, seed, near_zero_last=True, dtype=torch.float64):
    """A valid FInCFlow with random weights that keep activations in a sane range."""
    model = FInCFlow(config).to(dtype)
    g = torch.Generator().manual_seed(int(seed))

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FInC):
                cq, k = m.channels // 4, m.kernel
                for q in QUARTERS:
                    # Off-current taps small enough that the raster inverse stays contractive.
                    w = randn(cq, cq, k, k, std=0.8 / (cq * k * k))
                    r, s = finc_current_tap(q, k)
                    w[:, :, r, s] = torch.eye(cq, dtype=dtype) + torch.tril(randn(cq, cq, std=0.2), -1)
                    getattr(m, q).copy_(w)
            elif isinstance(m, ActNorm):
                m.translation.copy_(randn(m.translation.numel(), std=0.2))
                m.log_scale.copy_(randn(m.log_scale.numel(), std=0.1))
            elif isinstance(m, Conv1x1):
                c = m.weight.shape[0]
                qm, rm = torch.linalg.qr(randn(c, c).double())
                qm = qm * torch.sign(torch.diagonal(rm)).view(1, -1)
                scale = torch.exp(randn(c, std=0.1).double()).view(-1, 1)
                m.weight.copy_((qm * scale).to(dtype))
            elif isinstance(m, Coupling):
                for conv in (m.conv1, m.conv2):
                    fan_in = conv.weight[0].numel()
                    conv.weight.copy_(randn(*conv.weight.shape, std=1.0 / math.sqrt(fan_in)))
                    conv.bias.copy_(randn(*conv.bias.shape, std=0.1))
                fan_in = m.conv3.weight[0].numel()
                std3 = (0.1 if near_zero_last else 1.0) / math.sqrt(fan_in)
                m.conv3.weight.copy_(randn(*m.conv3.weight.shape, std=std3))
                m.conv3.bias.copy_(randn(*m.conv3.bias.shape, std=0.05))
                m.conv3.logs.copy_(randn(*m.conv3.logs.shape, std=0.05))
    return model


def round_to_float32_(model):
    """Rounds every parameter to float32 values in place (keeps the model's dtype)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().to(p.dtype))
    return model


# --------------------------------------------------------------------------- safetensors

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _np_dtype_name(a):
    for name, dt in _DTYPES.items():
        if a.dtype == np.dtype(dt):
            return name
    raise ValueError("dtype %s has no safetensors name" % a.dtype)


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: array or tensor} with string metadata, in the safetensors format.

    Tensors are laid out by element size (largest first), then name, so every tensor
    starts at an offset aligned to its element size, with no gaps.
    """
    arrays = {}
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
        arrays[name] = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": _np_dtype_name(a), "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in order:
            f.write(arrays[name].tobytes())


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: too short" % path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("%s: header length %d beyond the file" % (path, n))
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        b, e = info["data_offsets"]
        if not (0 <= b <= e <= len(body)):
            raise ValueError("%s: offsets out of bounds" % name)
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if e - b != count * dt.itemsize:
            raise ValueError("%s: byte count does not match shape" % name)
        tensors[name] = np.frombuffer(body[b:e], dtype=dt).reshape(info["shape"]).copy()
    return tensors, metadata


def weights_metadata(config, extra=None):
    md = {"format": FORMAT, "format_version": FORMAT_VERSION,
          "config": json.dumps(check_config(config), separators=(",", ":"))}
    for k, v in (extra or {}).items():
        if k in ("format", "format_version", "config"):
            continue
        md[k] = v if isinstance(v, str) else json.dumps(v)
    return md


def save_safetensors(path, model, metadata=None):
    """Writes the weights file of model.md section 4 (float32 tensors)."""
    tensors = {name: t.float() for name, t in weights(model).items()}
    write_safetensors(path, tensors, weights_metadata(model.config, metadata))


def load_safetensors(path, dtype=torch.float64):
    """Reads a weights file -> (FInCFlow in `dtype`, metadata dict)."""
    tensors, md = read_safetensors(path)
    if md.get("format") != FORMAT or md.get("format_version") != FORMAT_VERSION:
        raise ValueError("%s: not a finc-flow v1 file" % path)
    config = json.loads(md["config"])
    model = FInCFlow(config).to(dtype)
    load_weights(model, {k: torch.from_numpy(v) for k, v in tensors.items()})
    return model, md
