"""Non-causal linear attention: one op family for every linear mixer in the zoo.

Per (batch, head), with a feature map phi and an optional appended constant feature c:

    sim(q, k)  = scale * phi(q) . phi~(k) + c^2          phi~(k_i) = phi(k_i) - mean_j phi(k_j) if center_keys
    state_w    = sum_i a_{i,w} [phi~(k_i), c] v_i^T       (w = 1..W weightings, a = key_weights)
    z_w        = sum_i a_{i,w} [phi~(k_i), c]
    num_t      = sum_w b_{t,w} [sqrt(scale) phi(q_t), c]^T state_w   (b = query_weights)
    out_t      = num_t / (sum_w b_{t,w} [...]^T z_w + eps)   if normalize else num_t
                 (the denominator max(..., eps) instead with clamp_denominator)

How the mixers use it (see ``vitzoo/layers``):
    ReLU linear   feature_map='relu', normalize=True
    InLine        identity, center_keys=True, scale=d^-1/2 / N, feature_const=N^-1/2 (weights sum to 1)
    QT            feature_map='qt' (x^2 / ||x^2||), feature_const=learnable c, normalize=True
    ZeroS         feature_map='l2norm', W=3 key weights (e^s, s, 1) and per-query coefficients
    FEM (linear)  feature_map='relu_eps' (ReLU + eps), normalize=True, clamp_denominator=True, on doubled values
                  [v, exp(beta v - M)]

Layout is the one the mixers produce from a fused qkv projection: (B, N, H, D), any strides. This module holds the
specification: :func:`linear_attention_reference` in plain PyTorch, which accumulates in fp32 (float64 inputs stay
float64).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..utils import check_input_dtypes, check_qkv

FEATURE_MAPS = ("identity", "relu", "l2norm", "qt", "relu_eps")
_FEATURE_EPS = 1e-12  # guards the L2 norms of 'l2norm' and 'qt' (as F.normalize)


def check_inputs(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_weights: torch.Tensor | None,
        query_weights: torch.Tensor | None,
        feature_map: str,
        normalize: bool = False,
        clamp_denominator: bool = False,
        *,
        feature_const: torch.Tensor | float | None = None,
        scale: float = 1.0,
        eps: float = 1e-6,
) -> None:
    """The contract shared by the reference and the kernels. Metadata only (dtypes, shapes, Python types): nothing
    reads a tensor's values, so the checks cost no device sync and trace under ``torch.compile(fullgraph=True)``."""
    check_qkv("linear_attention", q, k, v)
    if not (_is_real(scale) and _is_real(eps)):
        name, value = ("scale", scale) if not _is_real(scale) else ("eps", eps)
        raise ValueError(f"linear_attention: {name} must be a real number, got {type(value).__name__}")
    # Finiteness in eager calls only: while tracing, the value may be symbolic (InLine's scale depends on N), and
    # math.isfinite of it does not trace.
    if not torch.compiler.is_compiling() and not (_is_finite(scale) and _is_finite(eps)):
        name, value = ("scale", scale) if not _is_finite(scale) else ("eps", eps)
        raise ValueError(f"linear_attention: {name} must be finite, got {value}")
    if isinstance(feature_const, torch.Tensor):
        if feature_const.numel() != 1:
            raise ValueError(f"linear_attention: feature_const must be a float or a 0-dim tensor, got a tensor of "
                             f"shape {tuple(feature_const.shape)}")
        if not feature_const.is_floating_point():
            raise ValueError(f"linear_attention: feature_const has dtype {feature_const.dtype}; use a float tensor")
    elif feature_const is not None and not _is_real(feature_const):
        raise ValueError(f"linear_attention: feature_const must be a float or a 0-dim tensor, got "
                         f"{type(feature_const).__name__}")
    if clamp_denominator and not normalize:
        raise ValueError("linear_attention: clamp_denominator clamps the normaliser; it needs normalize=True")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"linear_attention: feature_map={feature_map!r} is not one of {FEATURE_MAPS}")
    if (key_weights is None) != (query_weights is None):
        raise ValueError("linear_attention: key_weights and query_weights must be given together")
    if key_weights is not None:
        check_input_dtypes("linear_attention", (("key_weights", key_weights), ("query_weights", query_weights)))
        expected = (*q.shape[:3], key_weights.shape[-1])
        if key_weights.dim() != 4 or key_weights.shape != expected or query_weights.shape != expected:
            raise ValueError(
                f"linear_attention: key_weights and query_weights must both be (B, N, H, W) = {expected}; got "
                f"{tuple(key_weights.shape)} and {tuple(query_weights.shape)}"
            )


def _is_real(value: object) -> bool:
    """A Python / NumPy real number (not a bool), or a symbolic one: a size-derived value under torch.compile, or a
    one-element tensor under torch.jit.trace (which fvcore's counting uses), where sizes are 0-dim tensors."""
    if type(value) is float or type(value) is int:  # the common case first: these checks run on every call
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, (torch.SymInt, torch.SymFloat)) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool))


def _is_finite(value: object) -> bool:
    """False for a float inf or nan (a real number per :func:`_is_real`; a symbolic one passes)."""
    return not isinstance(value, float) or math.isfinite(value)


def apply_feature_map(x: torch.Tensor, feature_map: str, eps: float = 1e-6) -> torch.Tensor:
    """The elementwise / per-token feature maps phi, in the precision of ``x`` (``eps``: the offset of 'relu_eps')."""
    if feature_map == "identity":
        return x
    if feature_map == "relu":
        return F.relu(x)
    if feature_map == "relu_eps":
        return F.relu(x) + eps
    if feature_map == "l2norm":
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_FEATURE_EPS)
    if feature_map == "qt":
        # QT-ViT's normalise -> square -> normalise equals square -> normalise: the first norm cancels.
        sq = x * x
        return sq / sq.norm(dim=-1, keepdim=True).clamp_min(_FEATURE_EPS)
    raise ValueError(f"feature_map={feature_map!r} is not one of {FEATURE_MAPS}")


def linear_attention_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_weights: torch.Tensor | None = None,
        query_weights: torch.Tensor | None = None,
        *,
        feature_map: str = "identity",
        feature_const: torch.Tensor | float | None = None,
        center_keys: bool = False,
        scale: float = 1.0,
        normalize: bool = False,
        eps: float = 1e-6,
        clamp_denominator: bool = False,
) -> torch.Tensor:
    """Plain PyTorch linear attention, the specification of :func:`linear_attention` (same arguments)."""
    check_inputs(q, k, v, key_weights, query_weights, feature_map, normalize, clamp_denominator,
                 feature_const=feature_const, scale=scale, eps=eps)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out_dtype = v.dtype
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    phi_q = apply_feature_map(q, feature_map, eps) * scale**0.5
    phi_k = apply_feature_map(k, feature_map, eps) * scale**0.5
    if center_keys:
        phi_k = phi_k - phi_k.mean(dim=1, keepdim=True)
    if feature_const is not None:
        const = torch.as_tensor(feature_const, dtype=acc, device=q.device).reshape(1, 1, 1, 1)
        phi_q = torch.cat([phi_q, const.expand(*phi_q.shape[:3], 1)], dim=-1)
        phi_k = torch.cat([phi_k, const.expand(*phi_k.shape[:3], 1)], dim=-1)
    if key_weights is None:
        a = torch.ones(*q.shape[:3], 1, dtype=acc, device=q.device)
        b = a
    else:
        a, b = key_weights.to(acc), query_weights.to(acc)
    state = torch.einsum("bnhw,bnhk,bnhv->bhwkv", a, phi_k, v)
    out = torch.einsum("bnhw,bnhk,bhwkv->bnhv", b, phi_q, state)
    if normalize:
        z = torch.einsum("bnhw,bnhk->bhwk", a, phi_k)
        den = torch.einsum("bnhw,bnhk,bhwk->bnh", b, phi_q, z)
        den = den.clamp_min(eps) if clamp_denominator else den + eps
        out = out / den.unsqueeze(-1)
    return out.to(out_dtype)

