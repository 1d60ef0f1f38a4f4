"""Every token mixer written out as its math, token pair by token pair, from the mixer's own parameters.

``EXPLICIT[name](mixer, x, grid_size, num_prefix)`` returns what ``mixer(x, grid_size, num_prefix)`` must return.
The forms share no code with ``vitzoo.layers`` or ``vitzoo.ops``: they materialise the (N, N) attention weights
(or the (N, d, d) states), convolve with ``F.conv2d`` or token-by-token loops and read parameters directly. One
exception: H3's form takes its SSM kernels from the mixer's ``ssm`` module, which ``test_h3.py`` checks against the
complex-valued formula. They are meant for float64 and small N.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from rope_reference import rope_2d_reference

LINEAR_PRIOR_EPS = 1e-6  # FEM's released linear prior: phi = ReLU + eps, denominator clamped at eps


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], heads, -1)


def _grid_conv2d(tokens: torch.Tensor, conv: torch.nn.Conv2d, grid_size, num_prefix: int) -> torch.Tensor:
    """``conv`` over the patch tokens laid out as an image; prefix tokens unchanged."""
    batch, _, channels = tokens.shape
    grid = tokens[:, num_prefix:].transpose(1, 2).reshape(batch, channels, *grid_size)
    grid = F.conv2d(grid, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2, groups=channels)
    return torch.cat([tokens[:, :num_prefix], grid.flatten(2).transpose(1, 2)], dim=1)


def _grid_conv_loop(qkv: torch.Tensor, weight: torch.Tensor, grid_size, num_prefix: int) -> torch.Tensor:
    """Each channel's 3x3 kernel over the patch grid (zero padding), token by token; prefix tokens unchanged."""
    out = qkv.clone()
    for index in range(grid_size[0] * grid_size[1]):
        row, col = divmod(index, grid_size[1])
        acc = torch.zeros_like(qkv[:, 0])
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                if 0 <= r < grid_size[0] and 0 <= c < grid_size[1]:
                    acc = acc + weight[:, 0, dr + 1, dc + 1] * qkv[:, num_prefix + r * grid_size[1] + c]
        out[:, num_prefix + index] = acc
    return out


def _proj(mixer, out: torch.Tensor) -> torch.Tensor:
    return F.linear(out.reshape(out.shape[0], out.shape[1], -1), mixer.proj.weight, mixer.proj.bias)


def _qkv(mixer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = F.linear(x, mixer.qkv.weight, mixer.qkv.bias).chunk(3, dim=-1)
    return _heads(q, mixer.num_heads), _heads(k, mixer.num_heads), _heads(v, mixer.num_heads)


def explicit_softmax(mixer, x, grid_size, num_prefix):
    """out_t = sum_i softmax_i(q_t . k_i / sqrt(d)) v_i."""
    q, k, v = _qkv(mixer, x)
    attn = torch.softmax(torch.einsum("bthd,bihd->bhti", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    return _proj(mixer, torch.einsum("bhti,bihd->bthd", attn, v))


def explicit_linear(mixer, x, grid_size, num_prefix):
    """out_t = sum_i relu(q_t).relu(k_i) v_i / (sum_i relu(q_t).relu(k_i) + eps)."""
    q, k, v = _qkv(mixer, x)
    sim = torch.einsum("bthd,bihd->bhti", F.relu(q), F.relu(k))
    attn = sim / (sim.sum(-1, keepdim=True) + mixer.eps)
    return _proj(mixer, torch.einsum("bhti,bihd->bthd", attn, v))


def inline_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """InLine's w (B, h, t, i) as the released code writes it: (s/N)(q_t.k_i - q_t.kbar) + 1/N."""
    n, s = q.shape[1], q.shape[-1] ** -0.5
    q_dot_k = torch.einsum("bthd,bihd->bhti", q, k)
    q_dot_kbar = torch.einsum("bthd,bhd->bht", q, k.mean(1)).unsqueeze(-1)
    return (s / n) * (q_dot_k - q_dot_kbar) + 1.0 / n


def explicit_inline(mixer, x, grid_size, num_prefix):
    """sum_i w_ti v_i, plus on patch tokens each image's predicted 3x3 kernel applied channel by channel to V."""
    batch, n, dim = x.shape
    q, k, v = _qkv(mixer, x)
    out = torch.einsum("bhti,bihd->bthd", inline_weights(q, k), v).reshape(batch, n, dim)
    size = mixer.kernel_size
    # the released predictor: grouped Conv1d -> GELU -> grouped Conv1d on the token mean as a length-1 signal
    first, act, second = mixer.residual_predictor
    kernels = second(act(first(x.mean(1).unsqueeze(-1)))).reshape(batch, dim, size, size)
    v = v.reshape(batch, n, dim)
    residual = torch.zeros(batch, n - num_prefix, dim, dtype=x.dtype)
    for b in range(batch):
        v_grid = v[b, num_prefix:].T.reshape(dim, *grid_size)
        for c in range(dim):
            residual[b, :, c] = F.conv2d(v_grid[c][None, None], kernels[b, c][None, None], padding=size // 2).flatten()
    out = torch.cat([out[:, :num_prefix], out[:, num_prefix:] + residual], dim=1)
    return _proj(mixer, out)


def explicit_qt(mixer, x, grid_size, num_prefix):
    """phi(x) = x^2 / ||x^2||, sim = phi(q).phi(k) + c^2, normalised, plus GELU(BatchNorm(v)) over (B N h, d) rows."""
    q, k, v = _qkv(mixer, x)
    core = mixer.core
    phi_q, phi_k = (F.normalize(t.square(), dim=-1) for t in (q, k))
    sim = torch.einsum("bthd,bihd->bhti", phi_q, phi_k) + core.const.square()
    attn = sim / (sim.sum(-1, keepdim=True) + core.eps)
    bn = core.v_norm
    rows = v.reshape(-1, v.shape[-1])
    if mixer.training:
        normed = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    else:
        normed = (rows - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    shortcut = F.gelu(normed).view(v.shape)
    return _proj(mixer, torch.einsum("bhti,bihd->bthd", attn, v) + shortcut)


def zeros_weights_and_output(mixer, x, grid_size, num_prefix):
    """ZeroS's output and its weights w (B, t, i, h), built pair by pair.

    With the zero-order gate, the released first-layer form: w += tanh(g0) / t (t = N here); with rope, q and k
    are rotated before their normalisation."""
    batch, n, dim = x.shape
    h, d = mixer.num_heads, mixer.head_dim
    q, k, v, u = F.linear(x, mixer.qkvu.weight, mixer.qkvu.bias).view(batch, n, 4, h, d).unbind(2)
    if mixer.rope:
        q, k = rope_2d_reference(q, grid_size, num_prefix), rope_2d_reference(k, grid_size, num_prefix)
    gates = F.linear(x, mixer.gates.weight, mixer.gates.bias).view(batch, n, -1, h)
    sigma1, sigmah = torch.sigmoid(gates[:, :, 0]), torch.sigmoid(gates[:, :, 1])
    tau = mixer.log_tau.clamp(-50, 30).exp()
    u_bar = (tau[:, None] * mixer.mu + u.sum(1)) / (tau[:, None] + n)
    s = -torch.einsum("bnhd,bhd->bnh", u, u_bar) / math.sqrt(d)
    softmax = torch.softmax(s, dim=1)
    delta = s - s.mean(dim=1, keepdim=True)
    residual = softmax - 1 / n - delta / n  # eps_i: sums to zero
    weights = sigma1[:, :, None] * delta[:, None] / n + sigmah[:, :, None] * residual[:, None]  # (B, t, i, h)
    if mixer.zero_order_gate:
        weights = weights + torch.tanh(gates[:, :, 2])[:, :, None] / n
    cos = torch.einsum("bthd,bihd->btih", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    out = torch.einsum("btih,bihd->bthd", weights * cos, v)
    out = F.layer_norm(out, (d,), eps=1e-5)
    return _proj(mixer, out), weights


def explicit_zeros(mixer, x, grid_size, num_prefix):
    return zeros_weights_and_output(mixer, x, grid_size, num_prefix)[0]


def fem_prior_and_values(mixer, x, grid_size, num_prefix):
    """FEM's prior p (B, h, t, i) built pair by pair, and the clipped values (B, h, i, d_v).

    With the options: the depthwise conv on the projections, then RoPE on q and k (the released code rotates the
    projected q and k before the prior)."""
    batch, n, dim = x.shape
    heads = mixer.num_heads
    qkv = F.linear(x, mixer.qkv.weight, mixer.qkv.bias)
    if mixer.conv is not None:
        qkv = _grid_conv_loop(qkv, mixer.conv.conv.weight, grid_size, num_prefix)
    q, k, v = qkv.split([dim, dim, mixer.value_dim], dim=-1)
    q, k = _heads(q, heads), _heads(k, heads)
    if mixer.rope:
        q, k = rope_2d_reference(q, grid_size, num_prefix), rope_2d_reference(k, grid_size, num_prefix)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = _heads(v, heads).transpose(1, 2)
    if mixer.prior == "softmax":
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    else:
        # The released non-causal linear read: phi(x) = relu(x) + eps, den = phi(q) . sum_i phi(k_i), clamped.
        phi_q, phi_k = F.relu(q) + LINEAR_PRIOR_EPS, F.relu(k) + LINEAR_PRIOR_EPS
        den = (phi_q * phi_k.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True).clamp_min(LINEAR_PRIOR_EPS)
        p = phi_q @ phi_k.transpose(-1, -2) / den
    cap = 40.0 / _fem_beta(mixer)[:, None]
    return p, torch.maximum(torch.minimum(v, cap), -cap)


def _fem_beta(mixer):
    """FEM's per-channel inverse temperature (h, d_v): softplus of its parameter, plus 1e-6."""
    return F.softplus(mixer.beta_param.double()) + 1e-6


def fem_reads(mixer, x, grid_size, num_prefix):
    """mu and F (B, N, h, d_v) as their definitions: p-weighted mean and (1/beta) log sum p exp(beta v)."""
    p, v = fem_prior_and_values(mixer, x, grid_size, num_prefix)
    beta = _fem_beta(mixer)[:, None]  # (h, 1, d_v)
    mean = p @ v
    free_energy = torch.log(p @ torch.exp(beta * v)) / beta
    return mean.transpose(1, 2), free_energy.transpose(1, 2)


def explicit_fem(mixer, x, grid_size, num_prefix):
    """out = proj(g * ((1 - lambda) mu + lambda F)), g = softplus + 1e-6 scaled to RMS 1 per head."""
    batch, n, _ = x.shape
    mean, free_energy = fem_reads(mixer, x, grid_size, num_prefix)
    gates = F.linear(x, mixer.gates.weight, mixer.gates.bias).view(batch, n, 2, mixer.num_heads, -1)
    inner, outer = torch.sigmoid(gates[:, :, 0]), F.softplus(gates[:, :, 1]) + 1e-6
    outer = outer / outer.norm(dim=-1, keepdim=True) * math.sqrt(outer.shape[-1])
    return _proj(mixer, outer * ((1 - inner) * mean + inner * free_energy))


def _delta_rule_scan(q, k, v, beta, reverse):
    """The delta rule token by token on (B, N, h, d) inputs: S <- (I - beta k k^T) S + beta k v^T, o_t = S^T q_t."""
    batch, n, heads, dk = q.shape
    eye = torch.eye(dk, dtype=q.dtype)
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for i in range(batch):
        for j in range(heads):
            state = torch.zeros(dk, v.shape[-1], dtype=q.dtype)
            for t in (reversed(range(n)) if reverse else range(n)):
                kt, bt = k[i, t, j], beta[i, t, j]
                state = (eye - bt * torch.outer(kt, kt)) @ state + bt * torch.outer(kt, v[i, t, j])
                out[i, t, j] = state.T @ q[i, t, j]
    return out


def explicit_deltanet(mixer, x, grid_size, num_prefix):
    """SiLU(conv(qkv)), L2-normalised q, k, the delta rule token by token in both directions,
    averaged, then RMSNorm(eps 1e-5) times the SiLU gate."""
    batch, n, dim = x.shape
    heads = mixer.num_heads
    qkv = F.silu(_grid_conv2d(F.linear(x, mixer.qkv.weight, mixer.qkv.bias), mixer.conv.conv, grid_size, num_prefix))
    q, k, v = (_heads(t, heads) for t in qkv.split(dim, dim=-1))
    # L2 norms with 1e-6 under the root (the layer's choice, as in the released code's kernels); q also scaled d^-1/2
    q, k = (t / (t.square().sum(dim=-1, keepdim=True) + 1e-6).sqrt() for t in (q, k))
    q = q * q.shape[-1] ** -0.5
    beta = torch.sigmoid(x @ mixer.beta_proj.weight.T)
    o = 0.5 * (_delta_rule_scan(q, k, v, beta, reverse=False) + _delta_rule_scan(q, k, v, beta, reverse=True))
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * mixer.norm_weight
    return _proj(mixer, o * F.silu(_heads(x @ mixer.gate.weight.T, heads)))


def explicit_h3(mixer, x, grid_size, num_prefix):
    """Every (B, N, h, d, d) outer product k v^T summed against the two-sided SSM kernel pair by pair, read by q."""
    batch, n, dim = x.shape
    q, k, v = F.linear(x, mixer.qkv.weight, mixer.qkv.bias).chunk(3, dim=-1)
    k = _grid_conv2d(k, mixer.k_conv.conv, grid_size, num_prefix)
    q, k, v = (_heads(t, mixer.num_heads) for t in (q, k, v))
    kv = torch.einsum("bnhi,bnhj->bnhij", k, v)
    kernel_fwd, kernel_bwd = mixer.ssm(n, torch.float64)  # (h, N) each
    y = mixer.D[:, None, None] * kv
    for t in range(n):
        for s in range(n):
            weight = (kernel_fwd[:, t - s] if t >= s else 0) + (kernel_bwd[:, s - t] if s >= t else 0)
            y[:, t] = y[:, t] + weight[:, None, None] * kv[:, s]
    return _proj(mixer, torch.einsum("bnhi,bnhij->bnhj", q, y))


EXPLICIT = {
    "softmax": explicit_softmax,
    "linear": explicit_linear,
    "inline": explicit_inline,
    "qt": explicit_qt,
    "zeros": explicit_zeros,
    "fem": explicit_fem,
    "deltanet": explicit_deltanet,
    "h3": explicit_h3,
}
