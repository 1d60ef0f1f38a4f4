"""timm's RandAugment on whole uint8 batches, on the device that holds them.

The DeiT recipe's RandAugment (``rand-m9-mstd0.5-inc1``) costs a loader worker more than decoding and cropping
together, and on a 16-core host the workers then feed a DeiT-T at about half its training speed. With
``augment_on_device`` the workers stop after the crop and flip, and :class:`BatchRandAugment` applies the same
policy to each batch on the training device.

Same policy: the ops, their number per image, their probability, the magnitude draw (mean, std, upper bound) and
each op's argument come from timm's own ``RandAugment`` object, drawn per image from python's ``random`` and numpy in
timm's order, which the training loop seeds per batch. Same pixels, up to rounding, for the point and colour ops
(Pillow's lookup tables, its L conversion, its blend's truncation and its 3x3 smoothing are reproduced); the affine
ops (rotate, shear, translate) use Pillow's coordinates, fill and nearest pixel (Pillow's fixed-point steps can put
a point that lies exactly on a pixel edge on the other side), and ``grid_sample``'s bilinear and bicubic filters:
bilinear is within one grey level of Pillow's, bicubic within a few (PyTorch's kernel is a = -0.75, Pillow's
a = -0.5).
"""
from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from timm.data.auto_augment import RandAugment

# Pillow's RGB -> L weights in 16-bit fixed point (``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``).
_L_WEIGHTS = (19595, 38470, 7471)
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # ImageFilter.SMOOTH
_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
_AFFINE = "affine"  # the op groups' name for the geometric ops, which all run as one affine transform
_FILTERS = {Image.Resampling.NEAREST: "nearest", Image.Resampling.BILINEAR: "bilinear",
            Image.Resampling.BICUBIC: "bicubic"}


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's L channel of a float (B, 3, H, W) batch of integer values, (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return torch.floor((r * _L_WEIGHTS[0] + g * _L_WEIGHTS[1] + b * _L_WEIGHTS[2] + 0x8000) / 65536.0)[:, None]


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, x, factor)``: truncated towards zero, then clipped to [0, 255]."""
    return torch.trunc(degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255)


def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Apply a per-image, per-channel lookup table (B, C, 256) to integer values."""
    b, c, h, w = x.shape
    return torch.gather(lut, 2, x.long().view(b, c, h * w)).view(b, c, h, w).to(x.dtype)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histograms (B, C, 256) of integer values."""
    b, c = x.shape[:2]
    flat = x.long().view(b * c, -1)
    counts = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts.view(b, c, 256)


def auto_contrast(x: torch.Tensor, _args: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast``: stretch each channel's [min, max] to [0, 255] (unchanged where min == max)."""
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = torch.floor(x * scale - lo * scale).clamp_(0, 255)
    return torch.where(hi > lo, stretched, x)


def equalize(x: torch.Tensor, _args: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``: each channel through Pillow's cumulative-histogram table."""
    counts = _histogram(x)
    levels = torch.arange(256, device=x.device)
    last = torch.where(counts > 0, levels, -1).amax(dim=2, keepdim=True)  # the highest level present
    step = (counts.sum(dim=2, keepdim=True) - counts.gather(2, last)) // 255
    before = torch.cumsum(counts, dim=2) - counts  # pixels below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp_(max=255)  # Image.point clips the table
    lut = torch.where(step > 0, lut, levels)  # one level only, or too few pixels: unchanged
    return _lut(x, lut.to(x.dtype))


def invert(x: torch.Tensor, _args: torch.Tensor) -> torch.Tensor:
    """``ImageOps.invert``."""
    return 255.0 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` bits of each value (0 bits: black, 8 or more: unchanged)."""
    drop = (8 - bits.clamp(max=8)).view(-1, 1, 1, 1)
    return torch.floor(x / 2.0**drop) * 2.0**drop


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize``: invert the values at or above ``threshold``."""
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255.0 - x, x)


def solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """timm's ``solarize_add``: add ``add`` to the values below 128, clipped at 255."""
    return torch.where(x < 128, (x + add.view(-1, 1, 1, 1)).clamp_(max=255), x)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the image's grey version."""
    return _blend(_grey(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the grey level of the image's mean L (rounded half up)."""
    mean = torch.floor(_grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


@functools.cache
def _smooth_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``ImageFilter.SMOOTH``'s kernel on ``device`` (copied once per device, not per batch)."""
    return _SMOOTH.to(device, dtype)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (its border pixels are the image's own)."""
    channels = x.shape[1]
    kernel = _smooth_kernel(x.device, x.dtype).expand(channels, 1, 3, 3)
    smooth = torch.floor(F.conv2d(x, kernel, groups=channels) + 0.5).clamp_(0, 255)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def _affine_matrices(name: str, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's output-to-input affine coefficients (a, b, c, d, e, f) per image, as timm's ops pass them."""
    ones, zeros = torch.ones_like(values), torch.zeros_like(values)
    if name == "ShearX":
        return torch.stack([ones, values, zeros, zeros, ones, zeros], 1)
    if name == "ShearY":
        return torch.stack([ones, zeros, zeros, values, ones, zeros], 1)
    if name == "TranslateXRel":
        return torch.stack([ones, zeros, values * width, zeros, ones, zeros], 1)
    if name == "TranslateYRel":
        return torch.stack([ones, zeros, zeros, zeros, ones, values * height], 1)
    # Image.rotate(degrees) about the centre, no expansion: Pillow's matrix, including its rounding to 15 places.
    angle = -torch.deg2rad(values)
    cos, sin = torch.round(torch.cos(angle) * 1e15) / 1e15, torch.round(torch.sin(angle) * 1e15) / 1e15
    cx, cy = width / 2.0, height / 2.0
    return torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], 1)


@functools.cache
def _pixel_centres(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output pixel centres x + 0.5 and y + 0.5 as (1, 1, H, W) float64 tensors on ``device``, and the image's
    (width, height) as a (1, 2, 1, 1) tensor (made once per size and device, not per batch)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    size = torch.tensor([width, height], dtype=torch.float64).view(1, 2, 1, 1)
    return xs[None, None].to(device), ys[None, None].to(device), size.to(device)


def affine(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """``Image.transform(AFFINE)``: each output pixel centre (x + 0.5, y + 0.5) maps to an input point; points
    outside the image take ``fill``, points inside are filtered with edge clamping, as Pillow does. Both coordinates
    are computed together, in few launches: a batch's affine ops share one call per filter."""
    b, _, h, w = x.shape
    xs, ys, size = _pixel_centres(h, w, x.device)
    m = matrices.to(x.device, torch.float64).view(b, 2, 3, 1, 1)
    points = m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]  # (B, 2, H, W): input x, input y
    inside = ((points >= 0) & (points < size)).all(dim=1, keepdim=True)
    if mode == "nearest":  # Pillow takes the pixel the point falls in (grid_sample would round pixel centres)
        cell = torch.minimum(points.floor().clamp_(min=0), size - 1)
        index = (cell[:, 1] * w + cell[:, 0]).long().view(b, 1, h * w)
        sampled = torch.gather(x.flatten(2), 2, index.expand(-1, x.shape[1], -1)).view_as(x)
    else:
        grid = (2 * points / size - 1).permute(0, 2, 3, 1).to(x.dtype)
        sampled = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        # Pillow rounds its filtered value to the nearest integer and clips it.
        sampled = torch.floor(sampled + 0.5).clamp_(0, 255)
    return torch.where(inside, sampled, fill.to(x.device, x.dtype).view(1, -1, 1, 1))


_POINT_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert,
    "Posterize": posterize, "PosterizeIncreasing": posterize, "PosterizeOriginal": posterize,
    "Solarize": solarize, "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "ColorIncreasing": color, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Brightness": brightness, "BrightnessIncreasing": brightness, "Sharpness": sharpness,
    "SharpnessIncreasing": sharpness,
}
SUPPORTED_OPS = frozenset(_POINT_OPS) | _GEOMETRIC


class BatchRandAugment:
    """Apply a timm ``RandAugment`` (``timm.data.auto_augment.rand_augment_transform``) to uint8 (B, 3, H, W)
    batches; returns uint8 on the same device.

    Raises:
        ValueError: the policy holds an op this batch version does not implement (see :data:`SUPPORTED_OPS`).
    """

    def __init__(self, policy: RandAugment) -> None:
        unsupported = sorted({op.name for op in policy.ops} - SUPPORTED_OPS)
        if unsupported:
            raise ValueError(f"augment_on_device does not implement the RandAugment op(s) {', '.join(unsupported)}; "
                             "set augment_on_device=false for this auto_augment policy")
        self.policy = policy
        self._fills: dict[torch.device, torch.Tensor] = {}

    def draw(self, count: int) -> list[list[tuple[str, float, object]]]:
        """Per image, the ops it gets as (name, argument, resample filter of an affine op, else None): timm's draws
        in timm's order."""
        policy, draws = self.policy, []
        if policy.choice_weights is None:  # the numbers np.random.choice draws per image, drawn for all at once
            chosen = np.random.randint(0, len(policy.ops), size=(count, policy.num_layers))
        else:
            chosen = [np.random.choice(len(policy.ops), policy.num_layers, replace=False, p=policy.choice_weights)
                      for _ in range(count)]
        for indices in chosen:
            applied = []
            for op in (policy.ops[index] for index in indices):
                if op.prob < 1.0 and random.random() > op.prob:
                    continue
                magnitude = op.magnitude
                if op.magnitude_std == float("inf"):
                    magnitude = random.uniform(0, magnitude)
                elif op.magnitude_std > 0:
                    magnitude = random.gauss(magnitude, op.magnitude_std)
                magnitude = max(0.0, min(magnitude, op.magnitude_max or 10.0))
                args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else (0.0,)
                resample = op.kwargs["resample"] if op.name in _GEOMETRIC else None
                if isinstance(resample, (list, tuple)):  # timm draws the filter of an affine op when it applies it
                    resample = random.choice(resample)
                applied.append((op.name, float(args[0]), resample))
            draws.append(applied)
        return draws

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise TypeError(f"BatchRandAugment takes uint8 (B, 3, H, W) batches, got {images.dtype} "
                            f"{tuple(images.shape)}")
        draws = self.draw(images.shape[0])
        x = images.float()
        # Images that get the same op in the same position are transformed together; the affine ops (rotate, shear,
        # translate) differ only in their matrices, so those with the same filter form one group. Every group's
        # image indices and arguments (the affine matrices, made on the host) reach the device in one copy each: a
        # copy per group from pageable memory made the host wait for the device's queue each time.
        groups: list[tuple[str, object, slice, slice]] = []
        indices: list[int] = []
        values: list[torch.Tensor] = []
        offset = 0
        for layer in range(max((len(d) for d in draws), default=0)):
            # (op name, or "affine"; filter) -> op name -> (image indices, arguments)
            in_layer: dict[tuple[str, object], dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
            for index, applied in enumerate(draws):
                if layer < len(applied):
                    name, arg, resample = applied[layer]
                    rows, args = in_layer[_AFFINE if name in _GEOMETRIC else name, resample].setdefault(name, ([], []))
                    rows.append(index)
                    args.append(arg)
            for (kind, resample), by_name in in_layer.items():
                row_start, value_start = len(indices), offset
                for name, (rows, args) in by_name.items():
                    op_values = torch.tensor(args, dtype=torch.float64)
                    if kind == _AFFINE:
                        op_values = _affine_matrices(name, op_values, x.shape[2], x.shape[3]).flatten()
                    indices += rows
                    values.append(op_values)
                    offset += len(op_values)
                groups.append((kind, resample, slice(row_start, len(indices)), slice(value_start, offset)))
        if not groups:
            return x.to(torch.uint8)
        all_rows = to_device(torch.tensor(indices), x.device)
        all_values = to_device(torch.cat(values), x.device)
        point_values = all_values.to(x.dtype)  # the point ops' arguments, converted once rather than per group
        fill = self._fill(x.device)
        for kind, resample, row_span, value_span in groups:
            rows = all_rows[row_span]
            if kind == _AFFINE:
                out = affine(x[rows], all_values[value_span].view(-1, 6), fill, _FILTERS[resample])
            else:
                out = _POINT_OPS[kind](x[rows], point_values[value_span])
            x[rows] = out
        return x.to(torch.uint8)

    def _fill(self, device: torch.device) -> torch.Tensor:
        """The affine ops' fill colour on ``device`` (made once per device)."""
        if device not in self._fills:
            self._fills[device] = torch.tensor(self.policy.ops[0].kwargs["fillcolor"], dtype=torch.float32,
                                               device=device)
        return self._fills[device]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; to a CUDA device from pinned memory without blocking, as a copy from
    pageable memory first waits for everything queued on the device."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
