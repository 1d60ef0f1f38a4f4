"""uint8 images to normalised float32 with random-erasing rectangles filled: the specification in PyTorch.

``(x / 255 - mean) / std`` per channel (torchvision's ``to_tensor`` and ``Normalize``, in their order), then each
rectangle of the erased images takes the erasing mode's fill: ``'pixel'`` a standard normal number per pixel and
channel, ``'rand'`` one per image and channel, ``'const'`` zero; then, optionally, timm's batch-mode mixup or cutmix of
the batch with itself reversed (:class:`BatchMix`), with timm's float32 operations; the result is float32 or, for a
model whose autocast casts its input to 16 bits first, rounded to that dtype once at the end. The normal numbers are a
counter-based hash of the seed and the element's index (two 32-bit hashes, Box-Muller), so they depend on nothing but
the seed and the layout: the kernel draws the same ones (up to the last bits of its log, cos and sqrt), on any device,
without writing a noise tensor.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ERASE_MODES = ("const", "rand", "pixel")
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer hash (the ``lowbias32`` finaliser) of int64 values in [0, 2^32); exact in int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The 32-bit key the hashes of ``seed`` start from."""
    return mix32((seed & _MASK32) ^ 0x9E3779B9)


def _hash(counter: torch.Tensor, key: int) -> torch.Tensor:
    return mix32(mix32((counter & _MASK32) ^ key) ^ (counter >> 32))


def normal_noise(index: torch.Tensor, seed: int) -> torch.Tensor:
    """The standard normal number (float32) of each int64 element ``index`` for ``seed``."""
    key = seed_key(seed)
    first, second = _hash(2 * index, key), _hash(2 * index + 1, key)
    u1 = (first.float() + 1.0) * 2.3283064365386963e-10  # (0, 1]
    u2 = second.float() * 2.3283064365386963e-10  # [0, 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * u2)


@dataclass(frozen=True)
class BatchMix:
    """timm's batch-mode mix of a batch with itself reversed (image i with image B - 1 - i): without ``box``,
    ``lam * x + (1 - lam) * x.flip(0)`` (mixup); with ``box`` = (top, bottom, left, right), timm's (yl, yh, xl, xh),
    that region taken from the reversed batch (cutmix)."""

    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


def check_inputs(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], rectangles: torch.Tensor,
                 mode: str, mix: BatchMix | None = None, dtype: torch.dtype = torch.float32) -> None:
    """The contract: uint8 (B, C, H, W) images, C means and standard deviations, ``rectangles`` a host (R, 5)
    integer tensor of (image, top, left, height, width) inside the images, at most one per image, a mode of
    :data:`ERASE_MODES`, a mix of an even batch whose box lies inside the images, and an output dtype of
    :data:`OUT_DTYPES`."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"normalize_erase takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if dtype not in OUT_DTYPES:
        raise TypeError(f"normalize_erase writes float32, bfloat16 or float16, not {dtype}")
    batch, channels, height, width = images.shape
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalize_erase: {channels} channels need {channels} means and stds, got {len(mean)} and "
                         f"{len(std)}")
    if mode not in ERASE_MODES:
        raise ValueError(f"normalize_erase: mode must be one of {', '.join(ERASE_MODES)}, got {mode!r}")
    if rectangles.device.type != "cpu" or rectangles.dim() != 2 or rectangles.shape[1] != 5 \
            or rectangles.dtype.is_floating_point:
        raise ValueError("normalize_erase: rectangles must be a host (R, 5) integer tensor of (image, top, left, "
                         f"height, width), got {rectangles.dtype} {tuple(rectangles.shape)} on {rectangles.device}")
    if len(rectangles):
        index, top, left, h, w = rectangles.numpy().T  # NumPy: a batch's checks in microseconds of host time
        if len(np.unique(index)) != len(index) or not (
                (index >= 0) & (index < batch) & (top >= 0) & (left >= 0) & (h > 0) & (w > 0)
                & (top + h <= height) & (left + w <= width)).all():
            raise ValueError("normalize_erase: each rectangle must lie inside its image, one per image")
    if mix is not None:
        if batch % 2:
            raise ValueError(f"normalize_erase: mixing a batch with itself reversed needs an even batch, got {batch}")
        if mix.box is not None:
            top, bottom, left, right = mix.box
            if not (0 <= top <= bottom <= height and 0 <= left <= right <= width):
                raise ValueError(f"normalize_erase: the mix box (top, bottom, left, right) {mix.box} must lie inside "
                                 f"the {height}x{width} images")


def normalize_erase_reference(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                              rectangles: torch.Tensor, mode: str = "pixel", seed: int = 0,
                              mix: BatchMix | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(images / 255 - mean) / std`` (float32) with each rectangle (image, top, left, height, width) of
    ``rectangles`` filled as ``mode`` says, its normal numbers drawn for ``seed``, then mixed as ``mix`` says; as
    ``dtype``."""
    check_inputs(images, mean, std, rectangles, mode, mix, dtype)
    shape = (1, -1, 1, 1)
    x = images.float().div(255).sub_(torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape))
    x = x.div_(torch.tensor(std, dtype=torch.float32, device=images.device).view(shape))
    batch, channels, height, width = x.shape
    for index, top, left, h, w in rectangles.tolist():
        if mode == "const":
            x[index, :, top:top + h, left:left + w] = 0.0
            continue
        planes = index * channels + torch.arange(channels, device=x.device).view(-1, 1, 1)
        if mode == "rand":
            fill = normal_noise(planes, seed).expand(-1, h, w)
        else:
            rows = torch.arange(top, top + h, device=x.device).view(1, -1, 1)
            cols = torch.arange(left, left + w, device=x.device).view(1, 1, -1)
            fill = normal_noise((planes * height + rows) * width + cols, seed)
        x[index, :, top:top + h, left:left + w] = fill
    if mix is not None:  # timm's Mixup._mix_batch, operation for operation
        if mix.box is not None:
            top, bottom, left, right = mix.box
            x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        else:
            flipped = x.flip(0).mul_(1.0 - mix.lam)
            x.mul_(mix.lam).add_(flipped)
    return x.to(dtype)
