"""QT-ViT: EfficientViT (MIT) with quadratic-Taylor linear attention.

Papers:
- QT-ViT: "QT-ViT: Improving Linear Attention in ViT with Quadratic Taylor Expansion", Xu et al., NeurIPS 2024.
- EfficientViT: "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction",
  https://arxiv.org/abs/2205.14756

Official QT-ViT code (Apache-2.0): https://github.com/AMD-AIG-AIMA/AMD_QTViT. QT-ViT-1..6 are EfficientViT-B1, B2,
B3, L1, L2 and L3 with every LiteMLA replaced by the QT version (:class:`vitzoo.layers.quadratic_taylor.
QuadraticTaylorLiteMLA`). The backbones are timm's own ``efficientvit_mit`` classes: :class:`QtVit` and
:class:`QtVitLarge` build timm's ``EfficientVit`` / ``EfficientVitLarge`` and then swap the attention modules of
the ViT stages, so everything else (stem, MBConvs, head, features, intermediates) is timm's code.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, GELUTanh
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.efficientvit_mit import EfficientVit, EfficientVitBlock, EfficientVitLarge, ResidualBlock

from ..layers.quadratic_taylor import QT_EPS, QuadraticTaylorLiteMLA
from ._helpers import check_images, check_pretrained_available, check_state_dict_keys, model_name, unwrap_state_dict

__all__ = ["QtVit", "QtVitLarge"]


def _use_qt_attention(
        model: EfficientVit | EfficientVitLarge,
        head_dim: int,
        norm_layer: type[nn.Module],
        pos_embed_img_size: int,
        attn_eps: float,
        device=None,
        dtype=None,
) -> None:
    """Replace the LiteMLA of every EfficientViT block in ``model.stages`` with the QT version.

    The QT module is built with the same arguments timm's ``EfficientVitBlock`` gives its LiteMLA, so its qkv,
    aggregation and proj modules (and their state_dict keys) are the ones timm would have made. The stored
    position embedding covers the stage's feature map at ``pos_embed_img_size`` (224 / stride, as the official
    code).
    """
    for stage, info in zip(model.stages, model.feature_info, strict=True):
        for block in stage.blocks:
            if not isinstance(block, EfficientVitBlock):
                continue
            width = info["num_chs"]
            block.context_module.main = QuadraticTaylorLiteMLA(
                in_channels=width,
                out_channels=width,
                dim=head_dim,
                norm_layer=(None, norm_layer),
                pos_embed_size=pos_embed_img_size // info["reduction"],
                eps=attn_eps,
                device=device,
                dtype=dtype,
            )


def _set_norm_eps(model: nn.Module, eps: float) -> None:
    """Give every BatchNorm / LayerNorm / GroupNorm of ``model`` the same eps.

    The official builder does this after construction for the L series (1e-7); timm's ``EfficientVitLarge`` only
    passes ``norm_eps`` to the norms of its own blocks, not to the head's 1x1 conv norm, and the QT shortcut
    BatchNorm is built here.
    """
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            module.eps = eps


class DropPathResidualBlock(ResidualBlock):
    """timm's ``ResidualBlock`` with stochastic depth on the main branch (same children, same state_dict keys)."""

    def __init__(self, block: ResidualBlock, drop_prob: float) -> None:
        super().__init__(block.main, block.shortcut, block.pre_norm)
        self.drop_path = DropPath(drop_prob) if drop_prob > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.drop_path(self.main(self.pre_norm(x)))
        return res + self.shortcut(x) if self.shortcut is not None else res


def _add_drop_path(model: EfficientVit | EfficientVitLarge, drop_path_rate: float, skip: int) -> None:
    """Stochastic depth on the identity-shortcut residuals of ``model.stages`` after the first ``skip``: block i of
    the N others drops with ``drop_path_rate * (i + 1) / N``, as the official EfficientViT recipe (timm's EfficientViT
    has none)."""
    if skip < 0:
        raise ValueError(f"drop_path_skip must be >= 0, got {skip}")
    if drop_path_rate <= 0:
        return
    residuals = [
        (parent, name) for parent in model.stages.modules() for name, child in parent.named_children()
        if isinstance(child, ResidualBlock) and isinstance(child.shortcut, nn.Identity)
    ][skip:]
    for i, (parent, name) in enumerate(residuals):
        rate = drop_path_rate * (i + 1) / len(residuals)
        setattr(parent, name, DropPathResidualBlock(getattr(parent, name), rate))


# A leaf for FX (its checks branch on the input's shape). torch.fx.wrap, not timm's register_notrace_function: the
# call sits in forward_features, which timm's tracer does not visit for autowrapping (only forward methods).
torch.fx.wrap("check_images")


class _CheckedImages:
    """Checks images before timm's EfficientViT sees them: one-line errors instead of conv shape errors."""

    in_chans: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_chans, model_name(self), next(self.parameters()).dtype)
        return super().forward_features(x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        check_images(x, self.in_chans, model_name(self), next(self.parameters()).dtype)
        return super().forward_intermediates(x, *args, **kwargs)


class QtVit(_CheckedImages, EfficientVit):
    """EfficientViT-B backbone with QT attention (QT-ViT-1..3).

    Args:
        in_chans: input image channels.
        widths: stem and stage widths.
        depths: stem and stage depths.
        head_dim: attention head dim.
        expand_ratio: MBConv expansion.
        norm_layer: norm of the conv blocks.
        act_layer: activation of the conv blocks.
        global_pool: head pooling.
        head_widths: widths of the head's 1x1 conv and hidden Linear.
        drop_rate: head dropout.
        drop_path_rate: stochastic depth of the residual blocks, rising linearly to this rate.
        drop_path_skip: the first identity residual blocks left without stochastic depth (the official L recipes
            skip 2 or 3).
        num_classes: classifier outputs (0 for none).
        pos_embed_img_size: image size whose feature maps size the key position embeddings (training size).
        attn_eps: added to the attention normaliser.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
            self,
            in_chans: int = 3,
            widths: tuple[int, ...] = (),
            depths: tuple[int, ...] = (),
            head_dim: int = 32,
            expand_ratio: float = 4,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            act_layer: type[nn.Module] = nn.Hardswish,
            global_pool: str = "avg",
            head_widths: tuple[int, ...] = (),
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            drop_path_skip: int = 0,
            num_classes: int = 1000,
            pos_embed_img_size: int = 224,
            attn_eps: float = QT_EPS,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(
            in_chans=in_chans, widths=widths, depths=depths, head_dim=head_dim, expand_ratio=expand_ratio,
            norm_layer=norm_layer, act_layer=act_layer, global_pool=global_pool, head_widths=head_widths,
            drop_rate=drop_rate, num_classes=num_classes, device=device, dtype=dtype,
        )
        self.in_chans = in_chans
        _use_qt_attention(self, head_dim, norm_layer, pos_embed_img_size, attn_eps, device=device, dtype=dtype)
        _add_drop_path(self, drop_path_rate, drop_path_skip)


class QtVitLarge(_CheckedImages, EfficientVitLarge):
    """EfficientViT-L backbone with QT attention (QT-ViT-4..6).

    Args:
        in_chans: input image channels.
        widths: stem and stage widths.
        depths: stem and stage depths.
        head_dim: attention head dim.
        norm_layer: norm of the conv blocks.
        act_layer: activation of the conv blocks.
        global_pool: head pooling.
        head_widths: widths of the head's 1x1 conv and hidden Linear.
        drop_rate: head dropout.
        drop_path_rate: stochastic depth of the residual blocks, rising linearly to this rate.
        drop_path_skip: the first identity residual blocks left without stochastic depth (the official L recipes
            skip 2 or 3).
        num_classes: classifier outputs (0 for none).
        norm_eps: eps of every norm layer, including the head's and the QT shortcut's (1e-7 for the L series,
            as the official builder).
        pos_embed_img_size: image size whose feature maps size the key position embeddings (training size).
        attn_eps: added to the attention normaliser.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
            self,
            in_chans: int = 3,
            widths: tuple[int, ...] = (),
            depths: tuple[int, ...] = (),
            head_dim: int = 32,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            act_layer: type[nn.Module] = GELUTanh,
            global_pool: str = "avg",
            head_widths: tuple[int, ...] = (),
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            drop_path_skip: int = 0,
            num_classes: int = 1000,
            norm_eps: float = 1e-7,
            pos_embed_img_size: int = 224,
            attn_eps: float = QT_EPS,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(
            in_chans=in_chans, widths=widths, depths=depths, head_dim=head_dim, norm_layer=norm_layer,
            act_layer=act_layer, global_pool=global_pool, head_widths=head_widths, drop_rate=drop_rate,
            num_classes=num_classes, norm_eps=norm_eps, device=device, dtype=dtype,
        )
        _use_qt_attention(self, head_dim, norm_layer, pos_embed_img_size, attn_eps, device=device, dtype=dtype)
        _set_norm_eps(self, norm_eps)
        self.in_chans = in_chans
        _add_drop_path(self, drop_path_rate, drop_path_skip)


# Official QT-ViT (AMD_QTViT, EfficientViT's own code) names -> timm/zoo names. The QT attention adds three
# tensors to EfficientViT's LiteMLA: the key position embedding, the constant feature c and the v-shortcut BatchNorm.
_QT_ATTENTION_RENAMES = {"positional_encoding": "key_pos_embed", "ones_scale1": "core.const", "bn.": "core.v_norm."}
_HEAD_RENAMES = {
    "head.op_list.0.": "head.in_conv.",
    "head.op_list.2.linear.": "head.classifier.0.",
    "head.op_list.2.norm.": "head.classifier.1.",
    "head.op_list.3.linear.": "head.classifier.4.",
}


def _official_qtvit_key(key: str, large: bool) -> str:
    """Map one key of the official layout (``backbone.*`` / ``head.op_list.*``) to the zoo's."""
    for old, new in _HEAD_RENAMES.items():
        if key.startswith(old):
            return new + key[len(old):]
    # The B series has a separate input stem; the L series' stem is its stages.0 and the rest shift down by one.
    stem = r"backbone\.stages\.0\." if large else r"backbone\.input_stem\."
    if match := re.match(stem + r"op_list\.(\d+)\.(.*)", key):
        index, rest = int(match[1]), match[2]
        return f"stem.in_conv.{rest}" if index == 0 else f"stem.res{index - 1}.{rest}"
    if match := re.match(r"backbone\.stages\.(\d+)\.op_list\.(\d+)\.(.*)", key):
        stage, block, rest = int(match[1]) - int(large), match[2], match[3]
        if rest.startswith("context_module.main."):
            head, tail = "context_module.main.", rest[len("context_module.main."):]
            for old, new in _QT_ATTENTION_RENAMES.items():
                if tail.startswith(old):
                    tail = new + tail[len(old):]
                    break
            rest = head + tail
        return f"stages.{stage}.blocks.{block}.{rest}"
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: QtVit | QtVitLarge) -> dict[str, torch.Tensor]:
    """Accept the zoo's own weights or an official QT-ViT checkpoint (AMD_QTViT key layout).

    Training-script wrappers (``model`` / ``state_dict`` / ``model_ema`` / ``state_dict_ema``) and DDP ``module.``
    prefixes are removed. Official checkpoints are recognised by their ``backbone.`` keys and renamed; the tensors
    themselves need no change (the position embedding's channel order is already head-major, see
    :class:`~vitzoo.layers.quadratic_taylor.QuadraticTaylorLiteMLA`). Raises
    :class:`~vitzoo.models._helpers.CheckpointLayoutError` (a ValueError) when the keys do not fit the model.
    """
    state_dict = unwrap_state_dict(state_dict)
    official = any(k.startswith("backbone.") for k in state_dict)
    if official:
        large = isinstance(model, QtVitLarge)
        state_dict = {_official_qtvit_key(k, large): v for k, v in state_dict.items()}
    check_state_dict_keys(state_dict, model, "official QT-ViT" if official else "vitzoo")
    return state_dict


_NOTES = (
    "follows the official AMD_QTViT code: k += learnable APE (224/stride, bicubic-resampled); q, k -> x^2/||x^2||; "
    "appended learnable constant c (init 1); normalised linear attention, fp32 accumulation; + GELU(BN(v))",
)
QTVIT_REPO = "https://github.com/AMD-AIG-AIMA/AMD_QTViT"


def _cfg(paper_table: str, top1: float, weights: str | None, crop_pct: float = 1.0) -> dict:
    """``weights``: where the official README publishes the checkpoint (official key layout, converted on load)."""
    where = f"authors' checkpoint (official QT-ViT layout): {weights}" if weights else \
        "no checkpoint published by the authors"
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=crop_pct,
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="stem.in_conv.conv", classifier="head.classifier.4", license="apache-2.0",
        paper_name="QT-ViT: Improving Linear Attention in ViT with Quadratic Taylor Expansion (NeurIPS 2024)",
        paper_ids="arXiv:2205.14756 (EfficientViT backbone)", origin_url=QTVIT_REPO,
        notes=(paper_table, f"published top-1: {top1}", where, *_NOTES),
    )


_DRIVE = "https://drive.google.com/file/d/{}/view"
# Test crop ratio 0.95 for the B1-based model, 1.0 for the rest (official configs).
default_cfgs = generate_default_cfgs({
    "qtvit_1": _cfg("paper Table 1: EfficientViT-B1, 9.4M params, 0.52 GMACs", 79.6,
                    _DRIVE.format("11TNSXvfNmNYbehHbmJDyxzEz7DNlezNK"), crop_pct=0.95),
    "qtvit_2": _cfg("paper Table 1: EfficientViT-B2, 24.9M params, 1.60 GMACs", 82.5,
                    _DRIVE.format("1DUzJ7-nCWHZrMfSX4MEXbAC4GGabQ5GA")),
    "qtvit_3": _cfg("paper Table 1: EfficientViT-B3, 49.7M params, 3.97 GMACs", 83.9,
                    _DRIVE.format("1uvQr0tE0Jy7VLCLFYraNKysPshlfw-La")),
    "qtvit_4": _cfg("paper Table 1: EfficientViT-L1, 53.0M params, 5.26 GMACs", 84.7, None),
    "qtvit_5": _cfg("paper Table 1: EfficientViT-L2, 64.1M params, 6.96 GMACs", 85.2,
                    _DRIVE.format("1YKOFu8PYQvHM89ZKB9P_2blcHInGKS3H")),
    "qtvit_6": _cfg("paper Table 1: EfficientViT-L3, 246.8M params, 27.60 GMACs", 86.0,
                    _DRIVE.format("1MnAgjk_uOD6wH7QyCkF4z4bxJXQf4PTr")),
})


def _create_qtvit(model_cls: type[QtVit | QtVitLarge], variant: str, pretrained: bool = False, **kwargs):
    check_pretrained_available(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs,
    )


@register_model
def qtvit_1(pretrained: bool = False, **kwargs) -> QtVit:
    """QT-ViT-1: EfficientViT-B1 with QT attention."""
    model_args = dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16, head_widths=(1536, 1600))
    return _create_qtvit(QtVit, "qtvit_1", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qtvit_2(pretrained: bool = False, **kwargs) -> QtVit:
    """QT-ViT-2: EfficientViT-B2 with QT attention."""
    model_args = dict(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32, head_widths=(2304, 2560))
    return _create_qtvit(QtVit, "qtvit_2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qtvit_3(pretrained: bool = False, **kwargs) -> QtVit:
    """QT-ViT-3: EfficientViT-B3 with QT attention."""
    model_args = dict(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32, head_widths=(2304, 2560))
    return _create_qtvit(QtVit, "qtvit_3", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qtvit_4(pretrained: bool = False, **kwargs) -> QtVitLarge:
    """QT-ViT-4: EfficientViT-L1 with QT attention."""
    model_args = dict(widths=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 6), head_dim=32, head_widths=(3072, 3200),
                      drop_path_skip=2)
    return _create_qtvit(QtVitLarge, "qtvit_4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qtvit_5(pretrained: bool = False, **kwargs) -> QtVitLarge:
    """QT-ViT-5: EfficientViT-L2 with QT attention."""
    model_args = dict(widths=(32, 64, 128, 256, 512), depths=(1, 2, 2, 8, 8), head_dim=32, head_widths=(3072, 3200),
                      drop_path_skip=3)
    return _create_qtvit(QtVitLarge, "qtvit_5", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qtvit_6(pretrained: bool = False, **kwargs) -> QtVitLarge:
    """QT-ViT-6: EfficientViT-L3 with QT attention."""
    model_args = dict(
        widths=(64, 128, 256, 512, 1024), depths=(1, 2, 2, 8, 8), head_dim=32, head_widths=(6144, 6400),
        drop_path_skip=3,
    )
    return _create_qtvit(QtVitLarge, "qtvit_6", pretrained=pretrained, **dict(model_args, **kwargs))
