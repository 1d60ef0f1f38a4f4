"""The entry point of resized crops: the kernel's host side (boxes and flips in one copy) and the dispatching
:func:`resized_crops`."""
from __future__ import annotations

import torch

from ..utils import cdiv, kernel_backend, to_device, triton_available
from . import heuristics
from .reference import check_inputs, resized_crops_reference

if triton_available():
    from ..launch import cached_launcher
    from .kernels import _resized_crops_kernel

    def _resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
        x = images.contiguous()
        batch, channels, height, width = x.shape
        out = torch.empty(batch, channels, size, size, dtype=torch.uint8, device=x.device)
        if out.numel() == 0:
            return out
        params = to_device(torch.cat([boxes.float(), flips.float()[:, None]], dim=1), x.device)
        block = heuristics.block(size * size)
        cached_launcher(_resized_crops_kernel)[(cdiv(size * size, block), batch)](
            x, out, params, channels, height, width, size, BLOCK=block, num_warps=heuristics.NUM_WARPS)
        return out


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Box ``boxes[i]`` (x0, y0, x1, y1 in pixels) of each uint8 (B, C, H, W) image resized to ``size`` x ``size``
    as ``roi_align`` with aligned boxes and adaptive sampling does, mirrored left to right where ``flips[i]``,
    rounded to uint8 (B, C, size, size). ``boxes`` and ``flips`` are host tensors: they reach the device in one
    copy.

    Triton on CUDA (one launch), the reference elsewhere.

    Raises:
        TypeError: images that are not uint8 (B, C, H, W).
        ValueError: boxes or flips of the wrong shape, type or place, or a size below 1.
    """
    check_inputs(images, boxes, flips, size)
    if kernel_backend(images.device) == "reference":
        return resized_crops_reference(images, boxes, flips, size)
    return _resized_crops(images, boxes, flips, size)
