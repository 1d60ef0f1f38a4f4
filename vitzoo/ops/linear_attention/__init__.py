"""Non-causal linear attention (every linear mixer of the zoo): reference, kernels, launch rules and entry points.

``reference``: the specification in PyTorch; ``kernels``: the Triton forward and backward kernels; ``heuristics``:
how they are launched; ``function``: the custom ops, the autograd function and the public functions.
"""
from .function import linear_attention, linear_attention_triton
from .reference import FEATURE_MAPS, apply_feature_map, linear_attention_reference

__all__ = [
    "FEATURE_MAPS",
    "apply_feature_map",
    "linear_attention",
    "linear_attention_reference",
    "linear_attention_triton",
]
