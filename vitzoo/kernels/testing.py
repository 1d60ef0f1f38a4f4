"""Comparison helpers shared by the kernel tests and the kernel benchmarks."""
from __future__ import annotations

import torch


def relative_error(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """||x - ref|| / max(||ref||, floor) in float64; ``inf`` when ``x`` holds NaN/Inf (e.g. an unwritten output).

    ``floor`` keeps a reference that cancels to ~0 from turning rounding noise into a large relative error.
    """
    if not torch.isfinite(x).all():
        return float("inf")
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(max(floor, torch.finfo(torch.float64).tiny))).item()
