"""The delta rule (DeltaNet) as a chunked scan, and its bidirectional form for images.

Per (batch, head), with a state S in R^{d_k x d_v} starting at zero and tokens taken in scan order:

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T        o_t = S_t^T (scale q_t)

Chunked form (WY / UT transform; C tokens per chunk, S_0 the state entering the chunk):

    A   = tril(diag(beta) K K^T, -1)            T = (I + A)^-1
    U   = T diag(beta) (V - K S_0)              (the per-token corrections, "new values")
    O   = scale (Q S_0 + tril(Q K^T) U)         S_C = S_0 + K^T U

Images have no causal order, so :func:`delta_rule_bidirectional` averages the scan in token order with the scan in
reversed order (flipped back). The Triton path runs both directions in every launch with no flipped copies: the two
scans share chunk boundaries (see the comment above the kernels), so the chunk-parallel kernels serve both
directions from one load of a chunk and write each output once. Only two small kernels are sequential (the state
entering every chunk, and in the backward the gradient of the state leaving it), with two dependent products per
chunk; everything else (T and the WY form, outputs, input gradients) is chunk-parallel.

The L2 normalisation of q and k and the beta scaling are fused into the kernels (no extra pass).

Layout is (B, N, H, D) with any strides and a unit stride on D; beta is (B, N, H). This module holds the
specification: a token-by-token and a chunked PyTorch reference, which accumulate in fp32 (float64 inputs stay
float64), and the bidirectional reference built on the chunked one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import check_input_dtypes, check_qkv

_L2_EPS = 1e-6  # q / sqrt(sum(q^2) + eps), as fla's fused L2 norm
CHUNK = 64


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> None:
    """The contract shared by the references and the kernels."""
    check_qkv("delta rule", q, k, v)
    if beta.shape != q.shape[:3]:
        raise ValueError(f"delta rule: beta must be (B, N, H) = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    check_input_dtypes("delta rule", (("beta", beta),))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + 1e-6) over the last dim: the normalisation the fused kernels apply to q and k."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + _L2_EPS)


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 for strictly lower-triangular A (..., C, C), exactly, in matrix products only.

    A is nilpotent (A^C = 0), so (I + A)^-1 = sum_{j < C} (-A)^j = (I - A)(I + A^2)(I + A^4)...(I + A^(2^(m-1)))
    with 2^m >= C: m - 1 squarings and m - 1 products. Unlike ``linalg.solve_triangular`` every step has an ONNX
    equivalent (MatMul), so the reference exports.
    """
    power = -a
    inverse = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device) + power
    for _ in range(max(int(a.shape[-1]) - 1, 1).bit_length() - 1):  # int(): a traced size is a tensor
        power = power @ power
        inverse = inverse + inverse @ power
    return inverse


def delta_rule_recurrent_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        reverse: bool = False,
) -> torch.Tensor:
    """Token-by-token delta rule; q and k are used as given. Returns (B, N, H, Dv) in v's dtype.

    Args:
        q, k: (B, N, H, Dk). v: (B, N, H, Dv). beta: (B, N, H), the write strength in (0, 1).
        scale: multiplies q; default Dk^-1/2.
        reverse: scan from the last token to the first; outputs stay in the original token order.
    """
    check_inputs(q, k, v, beta)
    acc = _acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    b, n, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = [None] * n
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        k_t, v_t, beta_t = k[:, t], v[:, t], beta[:, t, :, None]
        # S <- S + beta k (v - S^T k)^T, which is (I - beta k k^T) S + beta k v^T
        correction = beta_t * (v_t - torch.einsum("bhkv,bhk->bhv", state, k_t))
        state = state + k_t.unsqueeze(-1) * correction.unsqueeze(-2)
        out[t] = torch.einsum("bhkv,bhk->bhv", state, q[:, t])
    return torch.stack(out, dim=1).to(v.dtype)


def delta_rule_chunked_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        reverse: bool = False,
        chunk_size: int = CHUNK,
) -> torch.Tensor:
    """The WY / UT chunked delta rule in plain PyTorch (any N; padded internally); contract as the recurrent one."""
    check_inputs(q, k, v, beta)
    acc = _acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    if reverse:
        q, k, v, beta = q.flip(1), k.flip(1), v.flip(1), beta.flip(1)
    b, n, h, dk = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, n)  # a sequence shorter than one chunk is one chunk of its own length: no padded work
    pad = -n % c
    # Padded tokens have k = 0 and beta = 0: they neither change the state nor feed real outputs.
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    beta = F.pad(beta, (0, 0, 0, pad))
    nc = (n + pad) // c
    # (B, H, NC, C, D)
    q, k, v = (t.reshape(b, nc, c, h, t.shape[-1]).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    beta = beta.reshape(b, nc, c, h).permute(0, 3, 1, 2)
    strict = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    a = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2))).masked_fill(~strict, 0)
    t_inv = unit_lower_inverse(a)
    w = t_inv @ (beta.unsqueeze(-1) * k)  # U = T diag(beta) V - W S_0
    u = t_inv @ (beta.unsqueeze(-1) * v)
    qk = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
    state = q.new_zeros(b, h, dk, dv)
    out = []
    for i in range(nc):
        new_v = u[:, :, i] - w[:, :, i] @ state
        out.append(q[:, :, i] @ state + qk[:, :, i] @ new_v)
        state = state + k[:, :, i].transpose(-1, -2) @ new_v
    o = torch.stack(out, dim=2).permute(0, 2, 3, 1, 4).reshape(b, nc * c, h, dv)[:, :n]
    if reverse:
        o = o.flip(1)
    return o.to(out_dtype)


def delta_rule_bidirectional_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
        beta_logits: bool = False,
) -> torch.Tensor:
    """Plain PyTorch :func:`delta_rule_bidirectional` (same arguments), built on the chunked reference."""
    check_inputs(q, k, v, beta)
    if beta_logits:
        beta = torch.sigmoid(beta.to(_acc_dtype(beta)))
    if qk_l2norm:
        q, k = l2_normalize(q.to(_acc_dtype(q))), l2_normalize(k.to(_acc_dtype(k)))
    fwd = delta_rule_chunked_reference(q, k, v, beta, scale=scale)
    bwd = delta_rule_chunked_reference(q, k, v, beta, scale=scale, reverse=True)
    return (0.5 * (fwd.to(_acc_dtype(fwd)) + bwd.to(_acc_dtype(bwd)))).to(v.dtype)

