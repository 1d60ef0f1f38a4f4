"""timm's random erasing for whole batches: timm's rectangles, erased in the normalising pass.

timm's ``RandomErasing`` walks a batch in Python and fills each erased rectangle with a tensor of its own: on a GPU
three launches per erased image plus the loop, with the DeiT recipe (``re_prob`` 0.25) about 200 launches and several
milliseconds of the training process's host time per batch of 256. :class:`BatchRandomErasing` draws the rectangles
from python's ``random`` exactly as timm does (the same calls in the same order, so the same rectangles for the same
seed) and a seed for their fill; :func:`vitzoo.ops.normalize_erase.normalize_erase` then normalises the batch and
erases them all in one pass. The fill values follow timm's distribution (per-pixel or per-image-and-channel standard
normal, or zeros) but are not timm's numbers: they are a hash of the seed and the pixel's place.
"""
from __future__ import annotations

import math
import random

import torch

from vitzoo.train.config import RE_MODES


class BatchRandomErasing:
    """The rectangles of timm's ``RandomErasing`` (default area 2-33% of the image, aspect ratio 0.3-3.3, one
    rectangle per image) erased with probability ``probability`` per image, for whole batches.

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

    def draw(self, batch: int, height: int, width: int) -> tuple[torch.Tensor, int]:
        """A batch's rectangles as an (R, 5) int64 tensor (:meth:`rectangles`) and the 32-bit seed of their fill,
        both from python's ``random``."""
        rectangles = torch.tensor(self.rectangles(batch, height, width), dtype=torch.int64).view(-1, 5)
        return rectangles, random.getrandbits(32)
