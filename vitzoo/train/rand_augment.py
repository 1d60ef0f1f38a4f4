"""timm's RandAugment on whole uint8 batches, on the device that holds them.

The DeiT recipe's RandAugment (``rand-m9-mstd0.5-inc1``) costs a loader worker more than decoding and cropping
together, and on a 16-core host the workers then feed a DeiT-T at about half its training speed. With
``augment_on_device`` the workers stop after the crop and flip, and :class:`BatchRandAugment` applies the same
policy to each batch on the training device: one launch per op position for the whole batch
(:func:`vitzoo.ops.rand_augment.rand_augment_layer`, a Triton kernel on CUDA).

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

import random
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vitzoo.ops.rand_augment import OP_CODES, rand_augment_layer

if TYPE_CHECKING:
    from timm.data.auto_augment import RandAugment

_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
# timm's op names -> the layer op's code (vitzoo.ops.rand_augment.LAYER_OPS); the geometric ops by their filter
_POINT_CODES = {
    "AutoContrast": "auto_contrast", "Equalize": "equalize", "Invert": "invert",
    "Posterize": "posterize", "PosterizeIncreasing": "posterize", "PosterizeOriginal": "posterize",
    "Solarize": "solarize", "SolarizeIncreasing": "solarize", "SolarizeAdd": "solarize_add",
    "Color": "color", "ColorIncreasing": "color", "Contrast": "contrast", "ContrastIncreasing": "contrast",
    "Brightness": "brightness", "BrightnessIncreasing": "brightness", "Sharpness": "sharpness",
    "SharpnessIncreasing": "sharpness",
}
_AFFINE_CODES = {Image.Resampling.NEAREST: "affine_nearest", Image.Resampling.BILINEAR: "affine_bilinear",
                 Image.Resampling.BICUBIC: "affine_bicubic"}
SUPPORTED_OPS = frozenset(_POINT_CODES) | _GEOMETRIC


def affine_matrices(name: str, values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's output-to-input affine coefficients (a, b, c, d, e, f) per image, as timm's ops pass them: float64
    (N, 6) from the N arguments. NumPy on the host: a batch's matrices cost microseconds, not a dozen torch ops."""
    values = np.asarray(values, dtype=np.float64)
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    if name == "ShearX":
        return np.stack([ones, values, zeros, zeros, ones, zeros], 1)
    if name == "ShearY":
        return np.stack([ones, zeros, zeros, values, ones, zeros], 1)
    if name == "TranslateXRel":
        return np.stack([ones, zeros, values * width, zeros, ones, zeros], 1)
    if name == "TranslateYRel":
        return np.stack([ones, zeros, zeros, zeros, ones, values * height], 1)
    # Image.rotate(degrees) about the centre, no expansion: Pillow's matrix, including its rounding to 15 places.
    angle = -np.deg2rad(values)
    cos, sin = np.round(np.cos(angle) * 1e15) / 1e15, np.round(np.sin(angle) * 1e15) / 1e15
    cx, cy = width / 2.0, height / 2.0
    return np.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], 1)


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
        self.fill = tuple(float(value) for value in policy.ops[0].kwargs["fillcolor"])

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
        batch, _, height, width = images.shape
        draws = self.draw(batch)
        layers = max((len(applied) for applied in draws), default=0)
        # Per op position (layer), each image's op code and argument, or its affine matrix; the geometric ops'
        # matrices are made per op name, for all its images at once.
        codes = np.zeros((layers, batch), dtype=np.int64)
        args = np.zeros((layers, batch), dtype=np.float64)
        geometric: dict[str, tuple[list[tuple[int, int]], list[float]]] = defaultdict(lambda: ([], []))
        for index, applied in enumerate(draws):
            for layer, (name, arg, resample) in enumerate(applied):
                if name in _GEOMETRIC:
                    codes[layer, index] = OP_CODES[_AFFINE_CODES[resample]]
                    places, values = geometric[name]
                    places.append((layer, index))
                    values.append(arg)
                else:
                    codes[layer, index] = OP_CODES[_POINT_CODES[name]]
                    args[layer, index] = arg
        matrices = np.zeros((layers, batch, 6), dtype=np.float64)
        for name, (places, values) in geometric.items():
            rows, cols = np.array(places).T
            matrices[rows, cols] = affine_matrices(name, np.array(values), height, width)
        codes_t, args_t, matrices_t = torch.from_numpy(codes), torch.from_numpy(args), torch.from_numpy(matrices)
        x = images
        for layer in range(layers):
            x = rand_augment_layer(x, codes_t[layer], args_t[layer], matrices_t[layer], self.fill)
        return x.clone() if x is images else x
