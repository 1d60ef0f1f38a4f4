"""The entry point of one RandAugment layer: the kernel's host side (the per-image parameters in one copy, the image
statistics that auto-contrast, equalize and contrast read) and the dispatching :func:`rand_augment_layer`."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..utils import cdiv, kernel_backend, to_device, triton_available
from . import heuristics
from .reference import (
    OP_CODES,
    auto_contrast_params,
    check_inputs,
    contrast_mean,
    equalize_lut,
    rand_augment_layer_reference,
)

# ops whose kernel branch reads a statistic of the whole image, computed for their images before the launch
_NEEDS_STATS = (OP_CODES["contrast"], OP_CODES["auto_contrast"], OP_CODES["equalize"])

if triton_available():
    from ..launch import cached_launcher
    from .kernels import PARAMS, _rand_augment_layer_kernel

    _PER_IMAGE = int(PARAMS.value)  # the kernel's parameters per image

    @functools.cache
    def _placeholders(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Statistics buffers for a layer without the ops that read them: the kernel's branches that would read
        them take their dtypes (float32 means and stretches, int32 tables) even where they never run."""
        return (torch.zeros(1, dtype=torch.float32, device=device), torch.zeros(1, dtype=torch.float32, device=device),
                torch.zeros(1, dtype=torch.int32, device=device))

    def _rand_augment_layer(images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor, matrices: torch.Tensor,
                            fill: Sequence[float]) -> torch.Tensor:
        x = images.contiguous()
        batch, _, height, width = x.shape
        out = torch.empty_like(x)
        if out.numel() == 0:
            return out
        device = x.device
        codes = ops.to(torch.int64)
        # one host tensor, one copy: the parameters per image, then the images of each statistic's op
        rows = [(codes == code).nonzero().flatten() for code in _NEEDS_STATS]
        params = torch.cat([codes[:, None].double(), args[:, None].double(), matrices.double()], dim=1)
        host = torch.cat([params.flatten(), torch.tensor(list(fill), dtype=torch.float64),
                          *[r.double() for r in rows]])
        on_device = to_device(host, device)
        start = batch * _PER_IMAGE
        params_dev, fill_dev = on_device[:start], on_device[start:start + 3].float()
        start += 3
        stats = []
        for r in rows:
            stats.append(on_device[start:start + len(r)].long() if len(r) else None)
            start += len(r)
        contrast_rows, stretch_rows, equalize_rows = stats
        contrast, stretch, lut = _placeholders(device)  # of the dtypes the kernel reads; it reads none of them
        if contrast_rows is not None:
            contrast = torch.empty(batch, dtype=torch.float32, device=device)
            contrast[contrast_rows] = contrast_mean(x[contrast_rows].float()).flatten()
        if stretch_rows is not None:
            stretch = torch.empty(batch, 3, 3, dtype=torch.float32, device=device)
            scale, shift, stretched = auto_contrast_params(x[stretch_rows].float())
            stretch[stretch_rows] = torch.cat([scale, shift, stretched.float()], dim=3).flatten(2)
        if equalize_rows is not None:
            lut = torch.empty(batch, 3, 256, dtype=torch.int32, device=device)
            lut[equalize_rows] = equalize_lut(x[equalize_rows]).int()
        block = heuristics.block(height * width)
        cached_launcher(_rand_augment_layer_kernel)[(cdiv(height * width, block), batch)](
            x, out, params_dev, contrast, stretch, lut, fill_dev, height, width, BLOCK=block,
            num_warps=heuristics.NUM_WARPS, enable_fp_fusion=False)
        return out


def rand_augment_layer(images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor, matrices: torch.Tensor,
                       fill: Sequence[float]) -> torch.Tensor:
    """One RandAugment layer: image ``i`` of the uint8 (B, 3, H, W) ``images`` through op
    ``LAYER_OPS[ops[i]]`` (:data:`~vitzoo.ops.rand_augment.reference.LAYER_OPS`; 0 leaves it unchanged) with the
    argument ``args[i]`` (point and colour ops) or Pillow's output-to-input affine coefficients ``matrices[i]``
    (affine ops); points an affine op maps outside the image take ``fill`` (one value per channel). ``ops``, ``args``
    and ``matrices`` are host tensors: the layer reaches the device in one copy. Returns a new uint8 batch.

    Triton on CUDA (one launch, plus a few for the images whose op reads a whole-image statistic), the reference
    elsewhere.

    Raises:
        TypeError: images that are not uint8 (B, 3, H, W).
        ValueError: per-image tensors of the wrong shape or place, unknown op codes, or not three fill values.
    """
    check_inputs(images, ops, args, matrices, fill)
    if kernel_backend(images.device) == "reference":
        return rand_augment_layer_reference(images, ops, args, matrices, fill)
    return _rand_augment_layer(images, ops, args, matrices, fill)
