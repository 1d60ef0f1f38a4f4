"""x + GELU(v * scale + shift), per-channel scale and shift: a BatchNorm-then-GELU shortcut in eval mode, added to
the attention output in one pass (QT-ViT's). Reference, kernel, launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernel; ``heuristics``: its launch shape;
``function``: the custom op and :func:`affine_gelu_add`.
"""
from .function import affine_gelu_add
from .reference import affine_gelu_add_reference

__all__ = ["affine_gelu_add", "affine_gelu_add_reference"]
