"""Toeplitz-weighted attention: per batch and head, with the (N, N) Toeplitz weights T[t, s] = lags[s - t + N - 1]
read from a vector of 2N - 1 lags (lags[N - 1] is lag 0, lags[N - 1 - l] the weight of key s = t - l, lags[N - 1 + l]
that of s = t + l),

    o_t = sum_s T[t, s] (q_t . k_s) v_s

with no softmax and no normaliser. H3's bidirectional long convolution sum_s Kbi(t - s) (q_t . k_s) v_s is this
with lags = [Kf(N-1) .. Kf(1), Kf(0) + Kb(0) + D, Kb(1) .. Kb(N-1)]. The products run in the inputs' dtype (16-bit
products accumulate in fp32, as attention's do); the reference rounds the scores and the weighted scores to that
dtype, the kernels keep them in fp32 until the product with v.
"""
from __future__ import annotations

import torch

from ..utils import check_qkv


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor) -> None:
    """The contract shared by the reference and the kernels."""
    check_qkv("toeplitz_attention", q, k, v)
    length, heads = q.shape[1], q.shape[2]
    if tuple(lags.shape) != (heads, 2 * length - 1):
        raise ValueError(f"toeplitz_attention: lags must be (H, 2N - 1) = ({heads}, {2 * length - 1}) for q of shape "
                         f"{tuple(q.shape)}, got {tuple(lags.shape)}")
    if not lags.is_floating_point():
        raise ValueError(f"toeplitz_attention: lags must be a float tensor, got {lags.dtype}")


def toeplitz_from_lags(lags: torch.Tensor, length: int) -> torch.Tensor:
    """The (..., N, N) matrix T[t, s] = lags[..., s - t + N - 1] of a (..., 2N - 1) lag vector (sliding windows, whose
    backward is cheap where a gather by a lag index matrix falls back to a sort-based scatter)."""
    return lags.unfold(-1, length, 1).flip(-2)


def toeplitz_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor
                                 ) -> torch.Tensor:
    """Plain PyTorch :func:`vitzoo.ops.toeplitz_attention`: q, k (B, N, H, Dk), v (B, N, H, Dv), lags (H, 2N - 1);
    returns (B, N, H, Dv) in the promoted dtype of q, k, v."""
    check_inputs(q, k, v, lags)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    weights = toeplitz_from_lags(lags, q.shape[1]).to(dtype)  # (H, N, N)
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    return torch.einsum("bhts,bshd->bthd", scores * weights, v)
