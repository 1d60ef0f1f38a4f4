"""The bidirectional delta rule (DeltaNet for images): references, kernels, launch settings and entry points.

``reference``: the token-by-token, chunked and bidirectional references in PyTorch; ``kernels``: the Triton kernels;
``heuristics``: their launch settings; ``function``: the custom ops, the autograd function and the public functions.
"""
from .function import delta_rule_bidirectional, delta_rule_triton
from .reference import (
    CHUNK,
    delta_rule_bidirectional_reference,
    delta_rule_chunked_reference,
    delta_rule_recurrent_reference,
    l2_normalize,
    unit_lower_inverse,
)

__all__ = [
    "CHUNK",
    "delta_rule_bidirectional",
    "delta_rule_bidirectional_reference",
    "delta_rule_chunked_reference",
    "delta_rule_recurrent_reference",
    "delta_rule_triton",
    "l2_normalize",
    "unit_lower_inverse",
]
