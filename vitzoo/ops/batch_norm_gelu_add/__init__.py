"""x + GELU(BatchNorm(v)) with running statistics (eval mode), the statistics per head-dim channel and shared by
the heads, in one pass: QT-ViT's shortcut added to its attention output. Reference, kernel, launch shape, entry
point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernel; ``heuristics``: its launch shape;
``function``: :func:`batch_norm_gelu_add`.
"""
from .function import batch_norm_gelu_add
from .reference import batch_norm_gelu_add_reference

__all__ = ["batch_norm_gelu_add", "batch_norm_gelu_add_reference"]
