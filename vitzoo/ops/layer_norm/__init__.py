"""Layer norm and RMS norm over the last dim: reference, kernels, launch shape, entry points.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the custom ops, the autograd functions and :func:`layer_norm` / :func:`rms_norm` /
:func:`add_layer_norm` (a residual add and the layer norm of its result in one kernel).
"""
from .function import add_layer_norm, layer_norm, rms_norm, takes_kernel
from .reference import add_layer_norm_reference, layer_norm_reference, rms_norm_reference

__all__ = ["add_layer_norm", "add_layer_norm_reference", "layer_norm", "layer_norm_reference", "rms_norm",
           "rms_norm_reference", "takes_kernel"]
