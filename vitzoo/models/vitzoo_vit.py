"""DeiT-style Vision Transformer with a pluggable token mixer.

The only thing that differs between the zoo's plain backbones is the token mixer, so one backbone serves them all:
softmax attention (the DeiT baseline, weight-compatible with timm's ``deit_*``), ReLU linear attention, InLine,
quadratic-Taylor (QT), ZeroS, FEM (linear and softmax priors), bidirectional DeltaNet and bidirectional H3.

Papers:
- DeiT: "Training data-efficient image transformers & distillation through attention", arXiv 2012.12877
- InLine: "Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024, arXiv 2412.06590
- QT-ViT: "QT-ViT: Improving Linear Attention in ViT with Quadratic Taylor Expansion", NeurIPS 2024
- ZeroS: "Zero-Sum Linear Attention", arXiv 2602.05230
- FEM: "Free Energy Mixer", ICLR 2026, arXiv 2602.07160
- DeltaNet: "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", arXiv 2406.06484
- H3: "Hungry Hungry Hippos", arXiv 2212.14052, as analysed in "Fine-grained Analysis of In-context Linear
  Estimation", NeurIPS 2024

Model names are ``<family>_deit_<size>_patch16_<res>``; the entrypoints at the bottom, one per family and size of
``vitzoo.registry.FAMILIES``, list them.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm import layers as timm_layers
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerScale,
    register_notrace_function,
    register_notrace_module,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import named_apply
from torch.utils.checkpoint import checkpoint

from ..layers import create_mixer
from ..layers.base import Dropout
from ..layers.kept import KeepsAutocastCopies, KeptCastLinear
from ..layers.norms import LayerNorm
from ..registry import FAMILIES
from ._helpers import (
    check_images,
    check_pretrained_available,
    check_state_dict_keys,
    model_name,
    unwrap_state_dict,
)

__all__ = ["MixerViT", "MixerBlock", "Mlp", "PatchEmbed"]


class PatchEmbed(KeepsAutocastCopies, timm_layers.PatchEmbed):
    """timm's ``PatchEmbed`` (same parameters, options and state_dict) with the patch convolution computed as one
    matrix product over the unfolded patches, its kernel and bias kept in the autocast dtype between inference
    forwards (:class:`~vitzoo.layers.kept.KeepsAutocastCopies`).

    A convolution whose stride is its kernel is a matrix product of the (C * p * p)-long patch vectors with the
    flattened kernel. As a convolution, cuDNN ran it as a generic implicit-GEMM kernel on bf16 NCHW images (627 us of
    the softmax DeiT-T's 4.1 ms inference step at batch 256 on the H200); unfolded it is one copy that gathers and
    casts the patches and one cuBLAS product. Inputs must be divisible by the patch size (the model checks
    that first; timm's dynamic padding is not used by the zoo).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ph, pw = self.patch_size
        gh, gw = h // ph, w // pw
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
            dtype = torch.get_autocast_dtype(x.device.type)  # what autocast would cast the patches to
        # one kernel gathers every patch into a (C, p, p) row and casts it
        patches = torch.empty((b, gh, gw, c, ph, pw), dtype=dtype, device=x.device)
        patches.copy_(x.view(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5))
        weight, bias = self.autocast_copies(x, self.proj.weight, self.proj.bias) or (self.proj.weight, self.proj.bias)
        weight = weight.reshape(self.proj.out_channels, c * ph * pw)  # a view unless channels-last
        tokens = F.linear(patches.view(b, gh * gw, c * ph * pw), weight, bias)
        if self.output_fmt == timm_layers.Format.NHWC:
            tokens = tokens.view(b, gh, gw, -1)
        return self.norm(tokens)


# shape arithmetic in the forward: a leaf for timm's FX feature extraction
register_notrace_module(PatchEmbed)


class Mlp(nn.Module):
    """The block's two-layer MLP, as timm's ``Mlp`` (same modules, init order and state_dict keys), on
    :class:`~vitzoo.layers.kept.KeptCastLinear` layers."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            act_layer: type[nn.Module] = nn.GELU,
            drop: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.fc1 = KeptCastLinear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = act_layer()
        self.drop1 = Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = KeptCastLinear(hidden_features, in_features, device=device, dtype=dtype)
        self.drop2 = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class MixerBlock(nn.Module):
    """Pre-norm transformer block whose attention is any registered token mixer.

    Attribute names follow timm's ``Block`` (``norm1``, ``attn``, ``ls1``, ...) so softmax weights load from timm.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mixer: str,
            mixer_kwargs: dict | None = None,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            init_values: float | None = None,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = LayerNorm,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = create_mixer(
            mixer, dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            **(mixer_kwargs or {}), **dd,
        )
        self.ls1 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        update = self.drop_path1(self.ls1(self.attn(self.norm1(x), grid_size, num_prefix_tokens)))
        if isinstance(self.norm2, LayerNorm):  # the residual add and norm2 in one pass (one kernel on CUDA)
            added = self.norm2(x, update)
            x, normed = added[0], added[1]  # indexed, not unpacked: FX sees norm2 as one leaf call
        else:
            x = x + update
            normed = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(normed)))


# A leaf for timm's FX feature extraction: the checks branch on the input's shape, which FX cannot trace.
@register_notrace_function
def check_vit_input(
        x: torch.Tensor, name: str, in_chans: int, img_size: tuple[int, int], patch_size: tuple[int, int],
        dynamic_img_size: bool, weight_dtype: torch.dtype | None = None,
) -> None:
    """Turn shape/dtype mistakes into one-line errors that say what the model ``name`` expects."""
    check_images(x, in_chans, name, weight_dtype)
    h, w = x.shape[-2:]
    ph, pw = patch_size
    if dynamic_img_size:
        if h % ph or w % pw:
            raise ValueError(f"{name} needs an input size divisible by the patch size {ph}x{pw}, got {h}x{w}")
    elif (h, w) != tuple(img_size):
        eh, ew = img_size
        raise ValueError(
            f"{name} expects {eh}x{ew} input, got {h}x{w}; create it with img_size={h if h == w else (h, w)} "
            f"or dynamic_img_size=True"
        )


def _init_weights(module: nn.Module, name: str = "") -> None:
    """timm's ViT init: trunc-normal Linear weights, zero biases, then a mixer's own ``init_weights``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, "init_weights"):
        module.init_weights()


class MixerViT(nn.Module):
    """DeiT-style ViT (cls token, learned absolute position embedding) with a pluggable token mixer."""

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 3,
            mixer: str = "softmax",
            mixer_kwargs: dict | None = None,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            init_values: float | None = None,
            class_token: bool = True,
            dynamic_img_size: bool = False,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            img_size: Input image size (the position embedding's grid).
            patch_size: Patch size.
            in_chans: Number of input channels.
            num_classes: Number of classes of the head (0 for none).
            global_pool: 'token' (cls token), 'avg' (mean of patch tokens) or '' (no pooling).
            embed_dim: Width.
            depth: Number of blocks.
            num_heads: Number of heads of the mixer.
            mixer: Token-mixer name (see ``vitzoo.layers.MIXERS``).
            mixer_kwargs: Family options passed to the mixer.
            mlp_ratio: MLP hidden width over embed_dim.
            qkv_bias: Bias on the mixer's input projections.
            init_values: LayerScale init (None for none).
            class_token: Use a cls token.
            dynamic_img_size: Accept any input size divisible by the patch size, resampling the position embedding.
            drop_rate: Head dropout.
            pos_drop_rate: Dropout after the position embedding.
            proj_drop_rate: Dropout after projections.
            attn_drop_rate: Dropout inside the mixer.
            drop_path_rate: Stochastic depth, increasing linearly with depth.
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not one of '', 'token', 'avg'")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        for key, value, least in (("embed_dim", embed_dim, 1), ("num_heads", num_heads, 1), ("depth", depth, 1),
                                  ("in_chans", in_chans, 1), ("num_classes", num_classes, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{key} must be an integer >= {least}, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        grid, patch = timm_layers.to_2tuple(img_size), timm_layers.to_2tuple(patch_size)
        if min(patch) < 1 or min(grid) < 1:
            raise ValueError(f"img_size and patch_size must be positive, got {img_size} and {patch_size}")
        if not dynamic_img_size and (grid[0] % patch[0] or grid[1] % patch[1]):
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}; pick a multiple of "
                             "it, or dynamic_img_size=True")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.mixer = mixer
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            strict_img_size=not dynamic_img_size, output_fmt="NHWC" if dynamic_img_size else None, **dd,
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = Dropout(pos_drop_rate)

        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            MixerBlock(
                embed_dim, num_heads, mixer, mixer_kwargs=mixer_kwargs, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, init_values=init_values, drop_path=dpr[i],
                norm_layer=partial(LayerNorm, eps=1e-6), **dd,
            )
            for i in range(depth)
        ])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = LayerNorm(embed_dim, eps=1e-6, **dd)
        self.fc_norm = nn.Identity()
        self.head_drop = Dropout(drop_rate)
        self.head = KeptCastLinear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        named_apply(_init_weights, self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed", "cls_token"} if self.cls_token is not None else {"pos_embed"}
        for i, block in enumerate(self.blocks):
            if hasattr(block.attn, "no_weight_decay"):
                names |= {f"blocks.{i}.attn.{n}" for n in block.attn.no_weight_decay()}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "token", "avg"):
                raise ValueError(f"global_pool={global_pool!r} is not one of '', 'token', 'avg'")
            self.global_pool = global_pool
        weight = self.patch_embed.proj.weight  # follows the model's device and dtype
        self.head = (
            KeptCastLinear(self.embed_dim, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes > 0 else nn.Identity()
        )

    def set_input_size(
            self,
            img_size: int | tuple[int, int] | None = None,
            patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        """Change the input resolution and/or the patch size of a built model, as timm's
        ``VisionTransformer.set_input_size``.

        The patch embedding takes the new image size and grid (its kernel is resampled for a new patch size) and
        the position embedding is resampled (bicubic, prefix tokens unchanged) to the new grid. The mixers hold
        nothing sized by the grid: they receive it on every call.

        Args:
            img_size: New input resolution; None keeps the current one.
            patch_size: New patch size; None keeps the current one.
        """
        prev_grid_size = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.patch_embed.grid_size != prev_grid_size:
            self.pos_embed = nn.Parameter(
                resample_abs_pos_embed(
                    self.pos_embed, new_size=self.patch_embed.grid_size, old_size=prev_grid_size,
                    num_prefix_tokens=self.num_prefix_tokens, verbose=True,
                ),
                requires_grad=self.pos_embed.requires_grad,
            )
        for info in self.feature_info:
            info["reduction"] = self.patch_embed.patch_size[0]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed, prepend the cls token and add the (resampled if needed) position embedding."""
        check_vit_input(
            x, model_name(self), self.in_chans, tuple(self.patch_embed.img_size), tuple(self.patch_embed.patch_size),
            self.dynamic_img_size, self.pos_embed.dtype,
        )
        x = self.patch_embed(x)
        if self.dynamic_img_size:
            b, h, w, c = x.shape
            pos_embed = resample_abs_pos_embed(
                self.pos_embed, (h, w), num_prefix_tokens=self.num_prefix_tokens,
            )
            x = x.reshape(b, h * w, c)
        else:
            h, w = self.patch_embed.grid_size
            pos_embed = self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.pos_drop(x + pos_embed.to(x.dtype)), (h, w)

    def _run_block(self, block: MixerBlock, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, grid_size, self.num_prefix_tokens, use_reentrant=False)
        return block(x, grid_size, self.num_prefix_tokens)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward features and return the outputs of the selected blocks (timm's feature API).

        Args:
            x: Input images.
            indices: Last n blocks if int, all if None, those listed if a sequence.
            return_prefix_tokens: Return (spatial, prefix) pairs.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: 'NCHW' or 'NLC'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not one of 'NCHW', 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch = x.shape[0]
        x, grid_size = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, grid_size)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [
                y.reshape(batch, grid_size[0], grid_size[1], -1).permute(0, 3, 1, 2).contiguous()
                for y in intermediates
            ]
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and optionally norm / head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid_size = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x, grid_size)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MixerViT) -> dict[str, torch.Tensor]:
    """Accept the zoo's own, timm / DeiT and official InLine checkpoints.

    Training-script wrappers (``model`` / ``state_dict`` / ``model_ema`` / ``state_dict_ema``) and DDP ``module.``
    prefixes are removed, DeiT's distillation token and head are dropped, the official InLine code's local-residual
    predictor (``attn.residual.*``) is renamed to ``attn.residual_predictor.*`` (all its other keys are already
    timm's), and the position embedding is resampled to the model's grid. Raises
    :class:`~vitzoo.models._helpers.CheckpointLayoutError` (a ValueError) when the keys do not fit the model.
    """
    state_dict = unwrap_state_dict(state_dict)
    official_inline = any(".attn.residual." in k for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("dist_token", "head_dist")):
            continue
        key = key.replace(".attn.residual.", ".attn.residual_predictor.")
        if key == "pos_embed" and value.shape != model.pos_embed.shape:
            grid = model.patch_embed.grid_size
            value = resample_abs_pos_embed(value, grid, num_prefix_tokens=model.num_prefix_tokens, verbose=True)
        out[key] = value
    check_state_dict_keys(out, model, "official InLine" if official_inline else "timm/vitzoo")
    return out


def _create_mixer_vit(variant: str, pretrained: bool = False, **kwargs) -> MixerViT:
    check_pretrained_available(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        MixerViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Variants. Each family is DeiT-T/S/B shaped (192/3, 384/6, 768/12 heads, 224) except InLine, whose paper narrows
# S and B and raises their resolution to match FLOPs (T 192/6/224, S 320/10/288, B 384/12/448).
# ---------------------------------------------------------------------------------------------------------------

# The authors' ImageNet-1K checkpoints (official InLine key layout, converted by ``checkpoint_filter_fn`` on load)
# and the top-1 their README publishes. ``url`` stays empty: the zoo hosts no weights, and the files are loaded
# with ``pretrained_cfg_overlay=dict(file=...)`` (docs/pretrained.md).
INLINE_REPO = "https://github.com/LeapLabTHU/InLine"
_PUBLISHED_WEIGHTS = {
    "inline_deit_tiny_patch16_224": ("https://cloud.tsinghua.edu.cn/f/1d6b8191ad6d4114b291/?dl=1", 74.5),
    "inline_deit_small_patch16_288": ("https://cloud.tsinghua.edu.cn/f/2f3898b07e9247f3beb3/?dl=1", 80.2),
    "inline_deit_base_patch16_448": ("https://cloud.tsinghua.edu.cn/f/10bdd726d4b0435eb34e/?dl=1", 82.3),
}


def _cfg(name: str, res: int, paper: str, notes: str) -> dict:
    extra = {}
    if name in _PUBLISHED_WEIGHTS:
        weights, top1 = _PUBLISHED_WEIGHTS[name]
        extra = dict(origin_url=INLINE_REPO)
        notes = (
            notes, f"authors' checkpoint (official InLine layout; the repository has no licence file): {weights}",
            f"published top-1: {top1}",
        )
    else:
        notes = (notes,)
    return dict(
        url="", num_classes=1000, input_size=(3, res, res), pool_size=None, crop_pct=0.875, interpolation="bicubic",
        fixed_input_size=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj",
        classifier="head", license="apache-2.0", paper_name=paper, notes=notes, **extra,
    )


default_cfgs = generate_default_cfgs({
    family.model_name(size): _cfg(family.model_name(size), shape.resolution, family.paper, family.notes)
    for family in FAMILIES.values() if family.backbone == "deit"
    for size, shape in family.sizes.items()
})


# One entrypoint per family x size of ``vitzoo.registry.FAMILIES`` (the DeiT-style ones), with exactly that
# family's mixer and mixer_kwargs and that size's width, heads and resolution; tests/models/test_registry.py
# checks that the two agree. timm reads ``default_cfgs`` above when each entrypoint is registered.


@register_model
def softmax_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with softmax attention (DeiT; timm's deit weights load into it)."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="softmax")
    return _create_mixer_vit("softmax_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def softmax_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with softmax attention (DeiT; timm's deit weights load into it)."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="softmax")
    return _create_mixer_vit("softmax_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def softmax_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with softmax attention (DeiT; timm's deit weights load into it)."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="softmax")
    return _create_mixer_vit("softmax_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def linear_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with ReLU linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="linear")
    return _create_mixer_vit("linear_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def linear_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with ReLU linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="linear")
    return _create_mixer_vit("linear_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def linear_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with ReLU linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="linear")
    return _create_mixer_vit("linear_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def inline_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """InLine-DeiT-T (width 192, 6 heads, 224 px, the paper's shape) with InLine attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6, mixer="inline")
    return _create_mixer_vit("inline_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def inline_deit_small_patch16_288(pretrained: bool = False, **kwargs) -> MixerViT:
    """InLine-DeiT-S (width 320, 10 heads, 288 px, the paper's shape) with InLine attention."""
    model_args = dict(img_size=288, patch_size=16, embed_dim=320, depth=12, num_heads=10, mixer="inline")
    return _create_mixer_vit("inline_deit_small_patch16_288", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def inline_deit_base_patch16_448(pretrained: bool = False, **kwargs) -> MixerViT:
    """InLine-DeiT-B (width 384, 12 heads, 448 px, the paper's shape) with InLine attention."""
    model_args = dict(img_size=448, patch_size=16, embed_dim=384, depth=12, num_heads=12, mixer="inline")
    return _create_mixer_vit("inline_deit_base_patch16_448", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qt_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with quadratic-Taylor (QT-ViT) linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="qt")
    return _create_mixer_vit("qt_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qt_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with quadratic-Taylor (QT-ViT) linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="qt")
    return _create_mixer_vit("qt_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qt_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with quadratic-Taylor (QT-ViT) linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="qt")
    return _create_mixer_vit("qt_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zeros_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with ZeroS zero-sum linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="zeros")
    return _create_mixer_vit("zeros_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zeros_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with ZeroS zero-sum linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="zeros")
    return _create_mixer_vit("zeros_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zeros_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with ZeroS zero-sum linear attention."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="zeros")
    return _create_mixer_vit("zeros_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with the Free Energy Mixer over a ReLU linear prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
        mixer="fem", mixer_kwargs=dict(prior="linear"),
    )
    return _create_mixer_vit("fem_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with the Free Energy Mixer over a ReLU linear prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
        mixer="fem", mixer_kwargs=dict(prior="linear"),
    )
    return _create_mixer_vit("fem_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with the Free Energy Mixer over a ReLU linear prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
        mixer="fem", mixer_kwargs=dict(prior="linear"),
    )
    return _create_mixer_vit("fem_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_softmax_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with the Free Energy Mixer over a softmax prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
        mixer="fem", mixer_kwargs=dict(prior="softmax"),
    )
    return _create_mixer_vit("fem_softmax_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_softmax_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with the Free Energy Mixer over a softmax prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
        mixer="fem", mixer_kwargs=dict(prior="softmax"),
    )
    return _create_mixer_vit("fem_softmax_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fem_softmax_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with the Free Energy Mixer over a softmax prior."""
    model_args = dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
        mixer="fem", mixer_kwargs=dict(prior="softmax"),
    )
    return _create_mixer_vit("fem_softmax_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def deltanet_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with bidirectional DeltaNet."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="deltanet")
    return _create_mixer_vit("deltanet_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def deltanet_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with bidirectional DeltaNet."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="deltanet")
    return _create_mixer_vit("deltanet_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def deltanet_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with bidirectional DeltaNet."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="deltanet")
    return _create_mixer_vit("deltanet_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def h3_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Tiny (width 192, 3 heads, 224 px) with bidirectional H3."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mixer="h3")
    return _create_mixer_vit("h3_deit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def h3_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Small (width 384, 6 heads, 224 px) with bidirectional H3."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mixer="h3")
    return _create_mixer_vit("h3_deit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def h3_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Base (width 768, 12 heads, 224 px) with bidirectional H3."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mixer="h3")
    return _create_mixer_vit("h3_deit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))
