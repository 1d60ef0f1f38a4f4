"""Layer norm and RMS norm over the last dim: reference, kernels, launch shape, entry points.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the custom ops, the autograd function and :func:`layer_norm` / :func:`rms_norm`.
"""
from .function import layer_norm, rms_norm, takes_kernel
from .reference import layer_norm_reference, rms_norm_reference

__all__ = ["layer_norm", "layer_norm_reference", "rms_norm", "rms_norm_reference", "takes_kernel"]
