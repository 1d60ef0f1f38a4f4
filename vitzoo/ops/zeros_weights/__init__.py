"""ZeroS's key and query weightings from radial logits: reference, kernels, launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the custom ops, the autograd function and :func:`zeros_weights`.
"""
from .function import zeros_weights
from .reference import zeros_weights_reference

__all__ = ["zeros_weights", "zeros_weights_reference"]
