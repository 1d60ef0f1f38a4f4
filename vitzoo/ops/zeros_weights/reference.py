"""ZeroS's weightings of the shared linear-attention op, from radial logits and per-token gates.

Per (batch, head), over the N tokens, in fp32 (fp64 for fp64 inputs):

    tau    = exp(clamp(log_tau, -50, 30))
    ubar   = (tau mu + sum_j u_j) / (tau + N)                    smoothed mean of u
    s_i    = -(u_i . ubar) / sqrt(d)                            radial logits
    key weights    (e_i, delta_i, 1):   e_i = exp(s_i - max s), delta_i = s_i - mean(s)
    query weights  (alpha_t, beta_t, gamma_t):
                   alpha_t = sigmah_t / sum_i e_i, beta_t = (sigma1_t - sigmah_t) / N, gamma_t = -sigmah_t / N
                   [+ tanh(g0_t) / N on gamma with the zero-order gate]
    sigma1, sigmah = sigmoid of the first two gate logits; g0 the third (zero-order gate)

so that sum_w a_{i,w} b_{t,w} = sigmah_t softmax(s)_i + (sigma1_t - sigmah_t) delta_i / N - sigmah_t / N, the zero-sum
weight of query t on key i (``vitzoo/layers/zeros.py`` states the mixer).
"""
from __future__ import annotations

import math

import torch

LOG_TAU_RANGE = (-50.0, 30.0)  # the clamp of log tau in the released code: keeps tau finite and positive


def check_inputs(u: torch.Tensor, gate_logits: torch.Tensor, mu: torch.Tensor, log_tau: torch.Tensor) -> None:
    """The contract shared by the reference and the kernels."""
    if u.dim() != 4:
        raise ValueError(f"zeros_weights expects u of shape (B, N, H, D), got {tuple(u.shape)}")
    b, n, h, d = u.shape
    if gate_logits.dim() != 4 or gate_logits.shape[:2] != (b, n) or gate_logits.shape[3] != h \
            or gate_logits.shape[2] not in (2, 3):
        raise ValueError(f"zeros_weights: gate_logits must be (B, N, 2 or 3, H) = ({b}, {n}, 2 or 3, {h}), got "
                         f"{tuple(gate_logits.shape)}")
    if tuple(mu.shape) != (h, d) or tuple(log_tau.shape) != (h,):
        raise ValueError(f"zeros_weights: mu must be ({h}, {d}) and log_tau ({h},), got {tuple(mu.shape)} and "
                         f"{tuple(log_tau.shape)}")


def zeros_weights_reference(u: torch.Tensor, gate_logits: torch.Tensor, mu: torch.Tensor,
                            log_tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(key weights, query weights), each (B, N, H, 3) in fp32 (fp64 for fp64 inputs).

    Args:
        u: the radial-logit inputs (B, N, H, D).
        gate_logits: (B, N, G, H) with G = 2 (sigma1, sigmah) or 3 (and the zero-order gate).
        mu: the prior mean of u per head, (H, D).
        log_tau: the log pseudo-count of the prior per head, (H,).
    """
    check_inputs(u, gate_logits, mu, log_tau)
    acc = torch.promote_types(u.dtype, torch.float32)
    num_tokens = u.shape[1]
    u = u.to(acc)
    tau = log_tau.to(acc).clamp(*LOG_TAU_RANGE).exp().unsqueeze(-1)  # (h, 1)
    u_bar = (tau * mu.to(acc) + u.sum(dim=1)) / (tau + num_tokens)  # (B, h, d)
    logits = -(u * u_bar.unsqueeze(1)).sum(dim=-1) / math.sqrt(u.shape[-1])  # (B, N, h)

    gates = gate_logits.to(acc)
    sigma1, sigmah = torch.sigmoid(gates[:, :, :2]).unbind(2)
    # The linear weight is the mean-centred logit: the weights are invariant to shifting s, and with
    # sum_i delta_i = 0 the reads need no large cancellation when the kernel keeps its states in low precision.
    deltas = logits - logits.mean(dim=1, keepdim=True)
    exp_logits = torch.exp(logits - logits.amax(dim=1, keepdim=True).detach())
    key_weights = torch.stack([exp_logits, deltas, torch.ones_like(deltas)], dim=-1)
    alpha = sigmah / exp_logits.sum(dim=1, keepdim=True)
    beta = (sigma1 - sigmah) / num_tokens
    gamma = -sigmah / num_tokens
    if gates.shape[2] == 3:  # the restored zero-order term sigma0 / N on every key
        gamma = gamma + torch.tanh(gates[:, :, 2]) / num_tokens
    return key_weights, torch.stack([alpha, beta, gamma], dim=-1)
