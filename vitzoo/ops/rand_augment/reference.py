"""One RandAugment layer on a uint8 batch, each image through its own op: the specification in PyTorch.

The ops are timm's Pillow ops on integer pixel values held in float32 (``docs/training.md`` says how close to
Pillow each one is): the point and colour ops follow Pillow's lookup tables, its L conversion, its blend's truncation
and its 3x3 smoothing; the affine ops (Pillow's output-to-input matrices) take Pillow's fill and nearest pixel, and
``grid_sample``'s bilinear and bicubic filters. A layer applies at most one op to each image, so the images that
share an op are transformed together, in any order.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# The op of each image in a layer, by code (the kernel's switch): 0 leaves the image as it is; the affine codes differ
# only in the filter.
LAYER_OPS = ("identity", "auto_contrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "color",
             "contrast", "brightness", "sharpness", "affine_nearest", "affine_bilinear", "affine_bicubic")
OP_CODES = {name: code for code, name in enumerate(LAYER_OPS)}
AFFINE_FILTERS = {"affine_nearest": "nearest", "affine_bilinear": "bilinear", "affine_bicubic": "bicubic"}

# Pillow's RGB -> L weights in 16-bit fixed point (``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``).
L_WEIGHTS = (19595, 38470, 7471)
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # ImageFilter.SMOOTH


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's L channel of a float (B, 3, H, W) batch of integer values, (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return torch.floor((r * L_WEIGHTS[0] + g * L_WEIGHTS[1] + b * L_WEIGHTS[2] + 0x8000) / 65536.0)[:, None]


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


def auto_contrast_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and channel (B, C, 1, 1): the stretch ``scale``, ``lo * scale`` and whether the channel has two
    levels or more (``hi > lo``)."""
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    # a tensor numerator: `255.0 / t` multiplies by t's reciprocal (two roundings), this division rounds once
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)
    return scale, lo * scale, hi > lo


def auto_contrast(x: torch.Tensor, _args: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast``: stretch each channel's [min, max] to [0, 255] (unchanged where min == max)."""
    scale, shift, stretch = auto_contrast_params(x)
    return torch.where(stretch, torch.floor(x * scale - shift).clamp_(0, 255), x)


def equalize_lut(x: torch.Tensor) -> torch.Tensor:
    """Pillow's equalisation table per image and channel, (B, C, 256) integer values."""
    counts = _histogram(x)
    levels = torch.arange(256, device=x.device)
    last = torch.where(counts > 0, levels, -1).amax(dim=2, keepdim=True)  # the highest level present
    step = (counts.sum(dim=2, keepdim=True) - counts.gather(2, last)) // 255
    before = torch.cumsum(counts, dim=2) - counts  # pixels below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp_(max=255)  # Image.point clips the table
    return torch.where(step > 0, lut, levels)  # one level only, or too few pixels: unchanged


def equalize(x: torch.Tensor, _args: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``: each channel through Pillow's cumulative-histogram table."""
    return _lut(x, equalize_lut(x).to(x.dtype))


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


def contrast_mean(x: torch.Tensor) -> torch.Tensor:
    """The grey level ``ImageEnhance.Contrast`` blends with: the image's mean L, rounded half up, (B, 1, 1, 1); in
    integers, floor(sum / n + 1/2) = (2 sum + n) // (2 n), so no float rounding can move a mean that lies at .5."""
    total = _grey(x).sum(dim=(1, 2, 3), keepdim=True, dtype=torch.float64).long()
    pixels = x.shape[2] * x.shape[3]
    return torch.div(2 * total + pixels, 2 * pixels, rounding_mode="floor").to(x.dtype)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the grey level of the image's mean L."""
    return _blend(contrast_mean(x).expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


@functools.cache
def _smooth_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``ImageFilter.SMOOTH``'s kernel on ``device`` (copied once per device, not per batch)."""
    return _SMOOTH.to(device, dtype)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (its border pixels are the image's own)."""
    channels, height, width = x.shape[1:]
    degenerate = x.clone()
    if height >= 3 and width >= 3:  # smaller images are all border
        kernel = _smooth_kernel(x.device, x.dtype).expand(channels, 1, 3, 3)
        degenerate[:, :, 1:-1, 1:-1] = torch.floor(F.conv2d(x, kernel, groups=channels) + 0.5).clamp_(0, 255)
    return _blend(degenerate, x, factor)


@functools.cache
def _pixel_centres(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output pixel centres x + 0.5 and y + 0.5 as (1, 1, H, W) float64 tensors on ``device``, and the image's
    (width, height) as a (1, 2, 1, 1) tensor (made once per size and device, not per batch)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    size = torch.tensor([width, height], dtype=torch.float64).view(1, 2, 1, 1)
    return xs[None, None].to(device), ys[None, None].to(device), size.to(device)


def affine(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """``Image.transform(AFFINE)`` with Pillow's output-to-input ``matrices`` (B, 6) (a, b, c, d, e, f): each output
    pixel centre (x + 0.5, y + 0.5) maps to the input point (a x + b y + c, d x + e y + f); points outside the image
    take ``fill``, points inside are filtered (``mode``: nearest, bilinear or bicubic) with edge clamping, as Pillow
    does."""
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


POINT_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "auto_contrast": auto_contrast, "equalize": equalize, "invert": invert, "posterize": posterize,
    "solarize": solarize, "solarize_add": solarize_add, "color": color, "contrast": contrast,
    "brightness": brightness, "sharpness": sharpness,
}


def check_inputs(images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor, matrices: torch.Tensor,
                 fill: Sequence[float]) -> None:
    """The contract of a layer: uint8 (B, 3, H, W) images; on the host, ``ops`` (B,) integer codes of
    :data:`LAYER_OPS`, ``args`` (B,) and ``matrices`` (B, 6) floats; three fill values."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"rand_augment_layer takes uint8 (B, 3, H, W) images, got {images.dtype} "
                        f"{tuple(images.shape)}")
    batch = images.shape[0]
    for name, t, shape in (("ops", ops, (batch,)), ("args", args, (batch,)), ("matrices", matrices, (batch, 6))):
        if t.device.type != "cpu" or tuple(t.shape) != shape:
            raise ValueError(f"rand_augment_layer: {name} must be a host tensor of shape {shape}, got "
                             f"{tuple(t.shape)} on {t.device}")
    if ops.dtype.is_floating_point or ops.dtype == torch.bool:
        raise ValueError(f"rand_augment_layer: ops must hold integer op codes, got {ops.dtype}")
    if batch and not 0 <= int(ops.min()) <= int(ops.max()) < len(LAYER_OPS):
        raise ValueError(f"rand_augment_layer: op codes must be in 0..{len(LAYER_OPS) - 1}, got "
                         f"{int(ops.min())}..{int(ops.max())}")
    if len(fill) != 3:
        raise ValueError(f"rand_augment_layer: fill takes 3 values (one per channel), got {len(fill)}")


def rand_augment_layer_reference(images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor,
                                 matrices: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """Image ``i`` of ``images`` through op ``LAYER_OPS[ops[i]]`` with argument ``args[i]`` (the point ops, as
    float32) or Pillow's affine ``matrices[i]`` (the affine ops, float64); a new uint8 batch."""
    check_inputs(images, ops, args, matrices, fill)
    x = images.float()
    out = x.clone()
    fill_values = torch.tensor(list(fill), dtype=torch.float32)
    for code in ops.unique().tolist():
        name = LAYER_OPS[code]
        if name == "identity":
            continue
        rows = (ops == code).nonzero().flatten()
        on_device = rows.to(x.device)
        if name in AFFINE_FILTERS:
            out[on_device] = affine(x[on_device], matrices[rows], fill_values, AFFINE_FILTERS[name])
        else:
            out[on_device] = POINT_OPS[name](x[on_device], args[rows].float().to(x.device))
    return out.to(torch.uint8)
