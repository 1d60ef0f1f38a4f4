"""timm's random erasing on whole batches, in a fixed handful of tensor operations.

timm's ``RandomErasing`` walks a batch in Python and fills each erased rectangle with a tensor of its own: on a GPU
three launches per erased image plus the loop, with the DeiT recipe (``re_prob`` 0.25) about 200 launches and several
milliseconds of the training process's host time per batch of 256. :class:`BatchRandomErasing` draws the rectangles
from python's ``random`` exactly as timm does (the same calls in the same order, so the same rectangles for the same
seed), then erases them all at once: one mask, one draw of fill values for the whole batch, one ``where``. The fill
values follow timm's distribution (per-pixel or per-image-and-channel standard normal, or zeros) but are not timm's
numbers, which come from one draw per rectangle.
"""
from __future__ import annotations

import math
import random

import torch

from vitzoo.ops.utils import to_device
from vitzoo.train.config import RE_MODES


class BatchRandomErasing:
    """Erase one rectangle of each image with probability ``probability`` (timm's ``RandomErasing`` with its
    default area 2-33% of the image, aspect ratio 0.3-3.3 and one rectangle per image) of a normalised float
    (B, C, H, W) batch; returns the erased batch.

    Args:
        probability: the chance that an image gets a rectangle.
        mode: the erased pixels: ``'pixel'`` per-pixel normal noise, ``'rand'`` one normal colour per image and
            channel, ``'const'`` zeros.
    """

    min_area, max_area = 0.02, 1 / 3
    log_aspect_ratio = (math.log(0.3), math.log(1 / 0.3))

    def __init__(self, probability: float, mode: str = "pixel") -> None:
        if mode not in RE_MODES:
            raise ValueError(f"random erasing mode must be one of {', '.join(RE_MODES)}, got {mode!r}")
        self.probability, self.mode = probability, mode

    def rectangles(self, batch: int, height: int, width: int) -> list[tuple[int, int, int, int, int]]:
        """(image index, top, left, height, width) of each erased rectangle: timm's draws, image by image."""
        drawn = []
        area = height * width
        for index in range(batch):
            if random.random() > self.probability:
                continue
            for _ in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area
                aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
                h = int(round(math.sqrt(target_area * aspect_ratio)))
                w = int(round(math.sqrt(target_area / aspect_ratio)))
                if w < width and h < height:
                    top = random.randint(0, height - h)
                    left = random.randint(0, width - w)
                    drawn.append((index, top, left, h, w))
                    break
        return drawn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        drawn = self.rectangles(b, h, w)
        if not drawn:
            return x
        index, top, left, rect_h, rect_w = to_device(torch.tensor(drawn, dtype=torch.int64), x.device).unbind(1)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])  # (R, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])  # (R, W)
        mask = torch.zeros(b, h, w, dtype=torch.bool, device=x.device)
        mask[index] = in_rows[:, :, None] & in_cols[:, None, :]  # at most one rectangle per image
        if self.mode == "pixel":
            fill = torch.randn_like(x)
        elif self.mode == "rand":
            fill = torch.randn(b, c, 1, 1, dtype=x.dtype, device=x.device)
        else:
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(mask[:, None], fill, x)
