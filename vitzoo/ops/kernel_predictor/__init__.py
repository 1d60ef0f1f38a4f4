"""InLine's per-image local kernels from the token mean (grouped two-layer MLP) in two launches: reference, kernels,
launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: :func:`predict_local_kernels`.
"""
from .function import predict_local_kernels
from .reference import predict_local_kernels_reference

__all__ = ["predict_local_kernels", "predict_local_kernels_reference"]
