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


def const_grad_terms(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grad: torch.Tensor,
        const: float,
        *,
        feature_map: str,
        scale: float = 1.0,
        eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dc of the normalised read with an appended constant feature c (one weighting, uncentred keys), float64,
    split per (batch, head) into the numerator's part A and the normaliser's part B: dL/dc = sum(A + B).

    With out_t = num_t / den_t, num_t = phi(q_t) S + c^2 u and den_t = phi(q_t) . z + c^2 N + eps:
    A = 2c u . sum_t g_t / den_t and B = -2c N sum_t (g_t . num_t) / den_t^2. When A ~ -B the gradient is a small
    difference of large sums, and any rounding in those sums is judged against |A| + |B|, not against the net.
    """
    from .linear_attention import apply_feature_map

    q, k, v, grad = (t.detach().double() for t in (q, k, v, grad))
    phi_q, phi_k = (apply_feature_map(t, feature_map) * scale**0.5 for t in (q, k))
    n = q.shape[1]
    z, u = phi_k.sum(1), v.sum(1)
    state = torch.einsum("bnhk,bnhv->bhkv", phi_k, v)
    num = torch.einsum("bnhk,bhkv->bnhv", phi_q, state) + const * const * u[:, None]
    den = torch.einsum("bnhk,bhk->bnh", phi_q, z) + const * const * n + eps
    term_a = 2 * const * (u * (grad / den[..., None]).sum(1)).sum(-1)
    term_b = -2 * const * n * ((grad * num).sum(-1) / den**2).sum(1)
    return term_a, term_b
