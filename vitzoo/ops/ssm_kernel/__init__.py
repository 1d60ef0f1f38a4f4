"""The convolution kernels of S4D-Lin diagonal state-space models (H3's long-convolution kernels): reference, kernels,
launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the autograd function and :func:`ssm_kernels`.
"""
from .function import ssm_kernels
from .reference import ssm_kernels_reference

__all__ = ["ssm_kernels", "ssm_kernels_reference"]
