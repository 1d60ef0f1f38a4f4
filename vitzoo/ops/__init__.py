"""Fused token-mixing ops with their PyTorch references.

Each op module holds the Triton kernels, the autograd wrapper, the ``torch.library`` custom op and a
``*_reference`` with the same signature. The reference is the specification; the kernel must equal it.
"""
from ._backend import get_backend, kernel_backend, set_backend, triton_available, use_backend
from .delta_rule import delta_rule_bidirectional
from .linear_attention import FEATURE_MAPS, linear_attention, linear_attention_reference
from .local_conv import local_conv

__all__ = [
    "FEATURE_MAPS",
    "delta_rule_bidirectional",
    "get_backend",
    "kernel_backend",
    "linear_attention",
    "linear_attention_reference",
    "local_conv",
    "set_backend",
    "triton_available",
    "use_backend",
]
