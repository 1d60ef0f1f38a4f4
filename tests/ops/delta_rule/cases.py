"""Inputs and markers shared by the delta-rule tests, and the bidirectional specification written out."""
from __future__ import annotations

import pytest
import torch

from vitzoo.ops import delta_rule_recurrent_reference
from vitzoo.ops.delta_rule import l2_normalize

from ..markers import INTERPRETED

needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="needs the Triton interpreter: TRITON_INTERPRET=1 before triton is imported, on CPU"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(b, n, h, d, dtype=torch.float64, device="cpu", dv=None, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k = (torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, n, h, dv or d, generator=g, dtype=torch.float64)
    beta = torch.rand(b, n, h, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, beta)]


def bidirectional_recurrent(q, k, v, beta, scale=None):
    """The specification written out: both scans with the token-loop reference on L2-normalised q and k."""
    q, k = l2_normalize(q), l2_normalize(k)
    fwd = delta_rule_recurrent_reference(q, k, v, beta, scale=scale)
    bwd = delta_rule_recurrent_reference(q, k, v, beta, scale=scale, reverse=True)
    return 0.5 * (fwd + bwd)

