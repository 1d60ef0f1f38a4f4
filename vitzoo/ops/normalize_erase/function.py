"""The entry point of normalisation and random erasing: the kernel's host side (the rectangles in one copy, the
per-channel constants kept per device) and the dispatching :func:`normalize_erase`."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..utils import cdiv, kernel_backend, to_device, triton_available
from . import heuristics
from .reference import ERASE_MODES, BatchMix, check_inputs, normalize_erase_reference, seed_key

if triton_available():
    from ..launch import cached_launcher
    from .kernels import _normalize_erase_kernel

    @functools.cache
    def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        # copied once per device, not per batch
        return (torch.tensor(mean, dtype=torch.float32, device=device),
                torch.tensor(std, dtype=torch.float32, device=device))

    def _normalize_erase(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], rectangles: torch.Tensor,
                         mode: str, seed: int, mix: BatchMix | None, dtype: torch.dtype) -> torch.Tensor:
        x = images.contiguous()
        batch, channels, height, width = x.shape
        # the kernel computes in float32 and rounds once to ``dtype`` as it stores
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        if out.numel() == 0:
            return out
        mean_t, std_t = _constants(tuple(map(float, mean)), tuple(map(float, std)), x.device)
        erase = len(rectangles) > 0
        boxes = x
        if erase:  # (top, left, height, width) per image, height 0 where none
            host = torch.zeros(batch, 4, dtype=torch.int32)
            host[rectangles[:, 0]] = rectangles[:, 1:].to(torch.int32)
            boxes = to_device(host, x.device)
        block = heuristics.block(height * width)
        lam = mix.lam if mix is not None else 1.0
        box = mix.box if mix is not None and mix.box is not None else (0, 0, 0, 0)
        kind = 0 if mix is None else (2 if mix.box is not None else 1)
        cached_launcher(_normalize_erase_kernel)[(cdiv(height * width, block), batch * channels)](
            x, out, boxes, mean_t, std_t, batch, channels, height, width, seed_key(seed), lam, 1.0 - lam, *box,
            ERASE=erase, MODE=ERASE_MODES.index(mode), MIX=kind, BLOCK=block, num_warps=heuristics.NUM_WARPS)
        return out


def normalize_erase(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    rectangles: torch.Tensor | None = None, mode: str = "pixel", seed: int = 0,
                    mix: BatchMix | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(images / 255 - mean) / std`` as ``dtype``, for uint8 (B, C, H, W) ``images``, with each rectangle (image,
    top, left, height, width) of the host tensor ``rectangles`` (R, 5) erased: ``mode`` ``'pixel'`` fills it with
    standard normal numbers, ``'rand'`` with one per channel, ``'const'`` with zeros; the numbers are a function of
    ``seed`` and the pixel's place (:func:`~vitzoo.ops.normalize_erase.reference.normal_noise`). ``mix`` then mixes
    the batch with itself reversed as timm's batch-mode mixup or cutmix does (:class:`BatchMix`), in the same pass.
    Computed in float32 and rounded once to ``dtype`` (float32, bfloat16 or float16): a bf16 model's autocast would
    round its float32 input the same way before its first layer, so writing bf16 here saves that cast and half the
    bytes of the batch's later copies.

    Triton on CUDA (one launch, and one copy of the rectangles), the reference elsewhere.

    Raises:
        TypeError: images that are not uint8 (B, C, H, W), or another ``dtype``.
        ValueError: a mean or std per channel missing, a rectangle outside its image or a second one in an image,
            an unknown mode, a mix of an odd batch or with a box outside the images.
    """
    if rectangles is None:
        rectangles = torch.zeros(0, 5, dtype=torch.int64)
    check_inputs(images, mean, std, rectangles, mode, mix, dtype)
    if kernel_backend(images.device) == "reference":
        return normalize_erase_reference(images, mean, std, rectangles, mode, seed, mix, dtype)
    return _normalize_erase(images, mean, std, rectangles, mode, seed, mix, dtype)
