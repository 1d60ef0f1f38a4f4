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


def assert_matches_reference(out: torch.Tensor, grads: tuple[torch.Tensor, ...], ref_out: torch.Tensor,
                             ref_grads: tuple[torch.Tensor, ...], tol: float) -> None:
    """An op's output and input gradients against its reference's, each within ``tol`` relative error (norm-wise),
    with the reference's shapes."""
    assert out.shape == ref_out.shape and relative_error(out.cpu(), ref_out) < tol
    for got, expected in zip(grads, ref_grads, strict=True):
        assert got.shape == expected.shape
        assert relative_error(got.cpu(), expected) < tol


def const_grad_terms(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grad: torch.Tensor,
        const: float,
        key_weights: torch.Tensor | None = None,
        query_weights: torch.Tensor | None = None,
        *,
        eps: float = 1e-6,
        **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dc of a normalised linear-attention read with an appended constant feature c, float64, split per (batch,
    head) into the numerator's part A and the normaliser's part B: dL/dc = sum(A + B), L = sum(grad * out).

    c enters out = num(c) / (den(c) + eps) twice; A and B are the gradients through num and den, taken with two
    copies of c (den is the unnormalised read of unit values). When A ~ -B the gradient is a small difference of
    large sums, and rounding in those sums is judged against |A| + |B|, not against the net. ``options``: the
    other arguments of :func:`~vitzoo.ops.linear_attention_reference` (feature_map, center_keys, scale).
    """
    from .linear_attention import linear_attention_reference

    q, k, v, grad = (t.detach().double() for t in (q, k, v, grad))
    weights = [None if w is None else w.detach().double() for w in (key_weights, query_weights)]
    c_num, c_den = (torch.tensor(float(const), dtype=torch.float64, requires_grad=True) for _ in range(2))
    options = dict(options, normalize=False)
    num = linear_attention_reference(q, k, v, *weights, feature_const=c_num, **options)
    den = linear_attention_reference(q, k, torch.ones_like(v[..., :1]), *weights, feature_const=c_den, **options)
    out = num / (den + eps)
    batch, _, heads, _ = q.shape
    term_a, term_b = torch.zeros(batch, heads, dtype=torch.float64), torch.zeros(batch, heads, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            loss = (grad[b, :, h] * out[b, :, h]).sum()
            term_a[b, h], term_b[b, h] = torch.autograd.grad(loss, (c_num, c_den), retain_graph=True)
    return term_a, term_b
