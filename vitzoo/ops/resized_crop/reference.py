"""Crops of a uint8 batch resized to a square and flipped as drawn: the specification in PyTorch.

Each image's box (x0, y0, x1, y1 in pixels: it covers pixels x0 .. x1 - 1) is resampled to ``size`` x ``size`` by
torchvision's ``roi_align`` with ``aligned=True`` and ``sampling_ratio=-1``: every output pixel averages
``ceil(box side / size)`` bilinear samples per axis (an area filter when shrinking); flipped images are mirrored left
to right, then the values are rounded half to even and clipped to uint8.
"""
from __future__ import annotations

import torch


def check_inputs(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> None:
    """The contract: uint8 (B, C, H, W) images; on the host, float (B, 4) boxes and bool (B,) flips; size >= 1."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"resized_crops takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    batch = images.shape[0]
    if boxes.device.type != "cpu" or tuple(boxes.shape) != (batch, 4) or not boxes.dtype.is_floating_point:
        raise ValueError(f"resized_crops: boxes must be a host float tensor of shape ({batch}, 4), got {boxes.dtype} "
                         f"{tuple(boxes.shape)} on {boxes.device}")
    if flips.device.type != "cpu" or tuple(flips.shape) != (batch,) or flips.dtype != torch.bool:
        raise ValueError(f"resized_crops: flips must be a host bool tensor of shape ({batch},), got {flips.dtype} "
                         f"{tuple(flips.shape)} on {flips.device}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"resized_crops: size must be a positive integer, got {size!r}")


def resized_crops_reference(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Box ``boxes[i]`` of image ``i`` resized to ``size`` x ``size``, mirrored where ``flips[i]``: uint8
    (B, C, size, size)."""
    from torchvision.ops import roi_align

    check_inputs(images, boxes, flips, size)
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype).unsqueeze(1), boxes], dim=1)
    crops = roi_align(images.float(), rois.float().to(images.device), output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)
    crops = torch.where(flips.to(images.device).view(-1, 1, 1, 1), crops.flip(-1), crops)
    return crops.round_().clamp_(0, 255).to(torch.uint8)
