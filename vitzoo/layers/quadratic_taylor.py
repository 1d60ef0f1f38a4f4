"""QT-ViT: quadratic-Taylor linear attention.

Paper: `QT-ViT: Improving Linear Attention in ViT with Quadratic Taylor Expansion` (Xu et al., NeurIPS 2024).
Official code (Apache-2.0): https://github.com/AMD-AIG-AIMA/AMD_QTViT, ``efficientvit/models/nn/ops.py``
(``LiteMLA.relu_linear_att``). This file follows the released code rather than Eq. 11 of the paper (see
``docs/mixers.md``, QT-ViT):

    phi(x)    = x^2 / ||x^2||                   (QT-ViT's normalise -> square -> normalise; the first norm cancels)
    sim(q, k) = <phi(q), phi(k)> + c^2           c: one learnable scalar per layer, init 1.0, shared by q and k
    out       = normalised linear attention with sim, accumulated in fp32, + GELU(BN(v))

The BatchNorm of the shortcut normalises the head-dim channels with statistics over batch, heads and tokens, so
its parameters are shared across heads, as in the official code.

Two forms share :class:`QuadraticTaylorCore`:

* :class:`QuadraticTaylorLiteMLA`: the official EfficientViT form (QT-ViT-1..6), timm's ``LiteMLA`` (multi-scale
  qkv aggregation and ``proj`` are timm's modules) plus a learnable absolute position embedding added to k.
* :class:`QuadraticTaylorAttention`: a DeiT-shaped adaptation for the plain-ViT ``qt_deit_*`` models.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models.efficientvit_mit import LiteMLA

from ..ops import batch_norm_gelu_add, linear_attention
from .base import TokenMixer

__all__ = ["QuadraticTaylorAttention", "QuadraticTaylorCore", "QuadraticTaylorLiteMLA"]

# The official LiteMLA eps (the QT-ViT fork keeps EfficientViT's 1e-15): the normaliser is >= N * c^2, so a
# larger eps would only bias small-c layers.
QT_EPS = 1e-15


class QuadraticTaylorCore(nn.Module):
    """QT attention on per-head q, k, v, plus the GELU(BN(v)) shortcut.

    In eval mode (running statistics) the shortcut and its sum with the attention are one pass
    (:func:`vitzoo.ops.batch_norm_gelu_add`).

    Args:
        head_dim: channels per head (the BatchNorm width).
        eps: added to the attention normaliser.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(self, head_dim: int, eps: float = QT_EPS, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.eps = eps
        # The appended constant feature c: sim(q, k) gains c^2, which keeps every similarity positive.
        self.const = nn.Parameter(torch.empty((), **dd))
        # BatchNorm1d on (tokens * heads, head_dim) rows: the same statistics and state_dict keys as the official
        # BatchNorm2d over (B * heads, head_dim, H, W), and it needs no square grid (so cls tokens are fine).
        self.v_norm = nn.BatchNorm1d(head_dim, **dd)
        self.v_act = nn.GELU()
        self.init_weights()

    def init_weights(self) -> None:
        """c = 1 as the official code; the shortcut BatchNorm back to identity."""
        nn.init.ones_(self.const)
        self.v_norm.reset_parameters()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend.

        Args:
            q: queries, (B, N, H, D); any strides with a unit stride on D.
            k: keys, (B, N, H, D).
            v: values, (B, N, H, D).

        Returns:
            (B, N, H, D) in v's dtype.
        """
        out = linear_attention(q, k, v, feature_map="qt", feature_const=self.const, normalize=True, eps=self.eps)
        norm = self.v_norm
        if not norm.training and norm.running_mean is not None:
            # one pass where the BatchNorm, GELU and sum took four launches and a copy of v (on the H100 about
            # 80 us a block of QT-DeiT-T at batch 256)
            return batch_norm_gelu_add(out, v, norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.eps)
        head_dim = v.shape[-1]
        # contiguous rows: CUDA's BatchNorm runs its channels-last kernels on a contiguous (rows, channels) input, but
        # on this strided view of the fused qkv its one-block-per-channel kernels (16 blocks for all the rows); that
        # backward kernel took 96 of QT-ViT-1's 146 ms training step in the H200 profile, summed over these 7
        # shortcut BatchNorms and the convolutions' ones (whose NCHW inputs channels_last=true addresses)
        shortcut = self.v_act(self.v_norm(v.reshape(-1, head_dim).contiguous())).view(v.shape)
        return out + shortcut


class QuadraticTaylorAttention(TokenMixer):
    """QT attention in the DeiT layout (an adaptation: QT-ViT itself only exists on EfficientViT).

    qkv Linear -> QT core with the GELU(BN(v)) shortcut -> proj. The cls token takes part in attention and in
    the shortcut's BatchNorm statistics like any other token. No position embedding on k here: the DeiT backbone
    already adds absolute position embeddings to its input.

    Args:
        dim: token width C.
        num_heads: attention heads; ``dim`` must be divisible by it.
        qkv_bias: bias on the qkv projection.
        attn_drop: dropout on the mixed values (attention plus shortcut) before ``proj``.
        proj_drop: dropout after the output projection.
        eps: added to the attention normaliser.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            eps: float = QT_EPS,
            device=None,
            dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.core = QuadraticTaylorCore(self.head_dim, eps=eps, **dd)
        self.build_output(attn_drop, proj_drop, **dd)

    def init_weights(self) -> None:
        """Re-initialise the non-Linear parameters (the backbone re-inits the Linears)."""
        self.core.init_weights()

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        # QT attention is order-free: the grid is only checked (by ``forward``).
        b, n, c = x.shape
        # Views of the fused projection, (B, N, H, D) each with unit stride on D: the op reads them in place.
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        return self.core(q, k, v).reshape(b, n, c)


class QuadraticTaylorLiteMLA(LiteMLA):
    """timm's EfficientViT ``LiteMLA`` with QT attention, as in the official QT-ViT code.

    The qkv conv, the multi-scale aggregation and ``proj`` are timm's (same modules and state_dict keys). The
    differences from ReLU LiteMLA: a learnable absolute position embedding added to k only, of shape
    (1, heads * (1 + len(scales)) * dim, S, S) with S = ``pos_embed_size`` (224 / stride in QT-ViT), zero init
    and bicubic-resampled when the feature map has another size; the QT core; the GELU(BN(v)) shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        heads: heads before the multi-scale doubling; default ``in_channels // dim * heads_ratio``.
        heads_ratio: see ``heads``.
        dim: head dim.
        use_bias: biases of the (qkv / aggregation, proj) convs.
        norm_layer: norms after the (qkv, proj) convs.
        act_layer: activations after the (qkv, proj) convs.
        scales: kernel sizes of the multi-scale aggregation branches.
        pos_embed_size: (H, W) of the stored position embedding, i.e. the feature map at the training resolution.
        eps: added to the attention normaliser.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            heads: int | None = None,
            heads_ratio: float = 1.0,
            dim: int = 8,
            use_bias: bool | tuple[bool, ...] = False,
            norm_layer: type[nn.Module] | tuple[type[nn.Module] | None, ...] = (None, nn.BatchNorm2d),
            act_layer: type[nn.Module] | tuple[type[nn.Module] | None, ...] = (None, None),
            scales: tuple[int, ...] = (5,),
            pos_embed_size: int | tuple[int, int] = 14,
            eps: float = QT_EPS,
            device=None,
            dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        # kernel_func is LiteMLA's ReLU feature map; QT's feature map lives in the op, so the module is an Identity.
        super().__init__(
            in_channels, out_channels, heads=heads, heads_ratio=heads_ratio, dim=dim, use_bias=use_bias,
            norm_layer=norm_layer, act_layer=act_layer, kernel_func=nn.Identity, scales=scales, eps=eps, **dd,
        )
        total_dim = self.qkv.conv.out_channels // 3
        key_channels = total_dim * (1 + len(scales))  # the aggregation branches multiply the heads
        size = (pos_embed_size, pos_embed_size) if isinstance(pos_embed_size, int) else tuple(pos_embed_size)
        self.key_pos_embed = nn.Parameter(torch.empty(1, key_channels, *size, **dd))
        self.core = QuadraticTaylorCore(dim, eps=eps, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero position embedding and the core's init, as the official code."""
        nn.init.zeros_(self.key_pos_embed)
        self.core.init_weights()

    def _key_pos_embed(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The position embedding for an (H, W) feature map as (1, H*W, heads, dim) tokens."""
        pos_embed = self.key_pos_embed
        if tuple(pos_embed.shape[-2:]) != tuple(grid_size):
            # Multi-resolution training (128..224) and other test sizes: resample like the official code.
            pos_embed = F.interpolate(pos_embed, size=grid_size, mode="bicubic")
        # Channel e * dim + c is channel c of head e (the official reshape), token h * W + w.
        return pos_embed.permute(0, 2, 3, 1).reshape(1, grid_size[0] * grid_size[1], -1, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W)."""
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        # Channel layout is (heads, [q, k, v], dim) as in LiteMLA. The op wants a unit stride on dim, so move the
        # channels last: one copy for an NCHW input, a free view for a channels_last one.
        qkv = qkv.permute(0, 2, 3, 1).reshape(b, h * w, qkv.shape[1] // (3 * self.dim), 3 * self.dim)
        q, k, v = qkv.chunk(3, dim=-1)
        # In k's dtype: under autocast the embedding (fp32) would otherwise promote k alone, and the op wants one
        # input dtype for q, k and v.
        k = k + self._key_pos_embed((h, w)).to(k.dtype)
        out = self.core(q, k, v)
        out = out.flatten(2).unflatten(1, (h, w)).permute(0, 3, 1, 2)
        return self.proj(out)


# The kernel dispatch reads tensor devices and the position embedding resampling branches on the grid size,
# neither of which FX can trace: keep these modules as leaves for timm's FX feature extraction.
register_notrace_module(QuadraticTaylorAttention)
register_notrace_module(QuadraticTaylorLiteMLA)
