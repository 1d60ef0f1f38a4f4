"""Random-resized crops of a uint8 batch, resized and flipped in one pass: the training pipeline's crops of images
decoded on the device. Reference, kernel, launch shape, entry point.

``reference``: the specification (torchvision's ``roi_align`` with aligned boxes and adaptive sampling); ``kernels``:
the Triton kernel; ``heuristics``: its launch shape; ``function``: :func:`resized_crops`.
"""
from .function import resized_crops
from .reference import resized_crops_reference

__all__ = ["resized_crops", "resized_crops_reference"]
