"""The entry point of one RandAugment layer: the kernels' host side (the per-image parameters in one copy; the
histograms and statistics that auto-contrast, equalize and contrast read, two launches) and the dispatching
:func:`rand_augment_layer`."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..utils import cdiv, kernel_backend, to_device, triton_available
from . import heuristics
from .reference import OP_CODES, check_inputs, rand_augment_layer_reference

# ops whose kernel branch reads a statistic of the whole image, computed for their images before the launch
_NEEDS_STATS = torch.tensor([OP_CODES["contrast"], OP_CODES["auto_contrast"], OP_CODES["equalize"]])

if triton_available():
    from ..launch import cached_launcher
    from .kernels import (
        HIST_BLOCKS,
        HIST_ROWS,
        LEVELS,
        PARAMS,
        _image_histograms_kernel,
        _image_statistics_kernel,
        _rand_augment_layer_kernel,
    )

    _PER_IMAGE = int(PARAMS.value)  # the kernel's parameters per image

    def _rand_augment_layer(images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor, matrices: torch.Tensor,
                            fill: Sequence[float]) -> torch.Tensor:
        x = images.contiguous()
        batch, _, height, width = x.shape
        out = torch.empty_like(x)
        if out.numel() == 0:
            return out
        device = x.device
        # one host tensor, one copy: the parameters per image, then the fill
        params = torch.cat([ops[:, None].double(), args[:, None].double(), matrices.double()], dim=1)
        on_device = to_device(torch.cat([params.flatten(), torch.tensor(list(fill), dtype=torch.float64)]), device)
        params_dev, fill_dev = on_device[:batch * _PER_IMAGE], on_device[batch * _PER_IMAGE:].float()
        # the whole-image statistics, written by the kernels for the images whose op reads them (the others' stay
        # unset and unread)
        contrast = torch.empty(batch, dtype=torch.float32, device=device)
        stretch = torch.empty(batch, 3, 3, dtype=torch.float32, device=device)
        lut = torch.empty(batch, 3, int(LEVELS.value), dtype=torch.int32, device=device)
        block = heuristics.block(height * width)
        if bool(torch.isin(ops, _NEEDS_STATS).any()):
            hist = torch.zeros(batch, int(HIST_ROWS.value), int(LEVELS.value), dtype=torch.int32, device=device)
            cached_launcher(_image_histograms_kernel)[(cdiv(height * width, block * int(HIST_BLOCKS.value)), batch)](
                x, params_dev, hist, height, width, BLOCK=block, num_warps=heuristics.NUM_WARPS)
            cached_launcher(_image_statistics_kernel)[(batch,)](
                params_dev, hist, contrast, stretch, lut, height * width, num_warps=heuristics.NUM_WARPS,
                enable_fp_fusion=False)
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

    Triton on CUDA (one launch, and two before it when an image's op reads a whole-image statistic), the reference
    elsewhere.

    Raises:
        TypeError: images that are not uint8 (B, 3, H, W).
        ValueError: per-image tensors of the wrong shape or place, unknown op codes, or not three fill values.
    """
    check_inputs(images, ops, args, matrices, fill)
    if kernel_backend(images.device) == "reference":
        return rand_augment_layer_reference(images, ops, args, matrices, fill)
    return _rand_augment_layer(images, ops, args, matrices, fill)
