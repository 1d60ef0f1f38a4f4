"""One RandAugment layer on a uint8 batch, each image through its own op (timm's Pillow ops): reference, kernel,
launch shape, entry point. :class:`vitzoo.train.rand_augment.BatchRandAugment` draws the ops and runs a layer per op
position.

``reference``: the specification in PyTorch (and each op as a function); ``kernels``: the Triton kernel, every op in
one launch; ``heuristics``: its launch shape; ``function``: :func:`rand_augment_layer`.
"""
from .function import rand_augment_layer
from .reference import LAYER_OPS, OP_CODES, rand_augment_layer_reference

__all__ = ["LAYER_OPS", "OP_CODES", "rand_augment_layer", "rand_augment_layer_reference"]
