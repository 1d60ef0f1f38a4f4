"""Depthwise convolution over the patch grid of a token sequence: reference, kernels, launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the custom ops, the autograd function and :func:`local_conv`.
"""
from .function import local_conv
from .reference import local_conv_reference

__all__ = ["local_conv", "local_conv_reference"]
