"""uint8 images to normalised float32 with timm's random-erasing rectangles filled and, optionally, timm's batch
mixup or cutmix, in one pass: the end of the training pipeline's device stage. Reference, kernel, launch shape,
entry point.

``reference``: the specification in PyTorch (and the noise's hash); ``kernels``: the Triton kernel; ``heuristics``:
its launch shape; ``function``: :func:`normalize_erase`.
"""
from .function import normalize_erase
from .reference import ERASE_MODES, BatchMix, normalize_erase_reference

__all__ = ["ERASE_MODES", "BatchMix", "normalize_erase", "normalize_erase_reference"]
