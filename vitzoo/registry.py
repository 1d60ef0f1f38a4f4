"""The zoo's one table of model families: what each is, which mixer it uses, its sizes and where it comes from.

Models, benchmarks, reports, scripts and tests read this table; nothing else lists the families.

- DeiT-style families (``<family>_deit_<size>_patch16_<res>``) are the ``vitzoo.models.vitzoo_vit`` backbone with
  one token mixer; DeiT's sizes are timm's (width, heads, resolution). InLine keeps its paper's S and B, which are
  narrower than DeiT's and run at a higher resolution to match FLOPs.
- QT-ViT (``qtvit_1`` .. ``qtvit_6``) is EfficientViT with quadratic-Taylor attention (``vitzoo_efficientvit``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Size(NamedTuple):
    """One size of a family: width and heads (None for staged backbones), resolution, and timm's model of that size
    (the speed comparison's reference)."""

    width: int | None
    heads: int | None
    resolution: int
    timm_model: str


DEIT_SIZES: dict[str, Size] = {
    "tiny": Size(192, 3, 224, "deit_tiny_patch16_224"),
    "small": Size(384, 6, 224, "deit_small_patch16_224"),
    "base": Size(768, 12, 224, "deit_base_patch16_224"),
}
INLINE_SIZES: dict[str, Size] = {
    "tiny": Size(192, 6, 224, "deit_tiny_patch16_224"),
    "small": Size(320, 10, 288, "deit_small_patch16_224"),
    "base": Size(384, 12, 448, "deit_base_patch16_224"),
}
QTVIT_SIZES: dict[str, Size] = {
    str(i): Size(None, None, 224, f"efficientvit_{name}")
    for i, name in enumerate(("b1", "b2", "b3", "l1", "l2", "l3"), start=1)
}


@dataclass(frozen=True)
class Family:
    """A model family: ``mixer`` (a name in ``vitzoo.layers.MIXERS``) with ``mixer_kwargs``, and its sizes
    ``{size: Size}``. ``backbone`` is 'deit' or 'efficientvit'."""

    name: str
    mixer: str
    paper: str
    notes: str
    sizes: dict[str, Size] = field(default_factory=lambda: dict(DEIT_SIZES))
    mixer_kwargs: dict = field(default_factory=dict)
    backbone: str = "deit"

    def model_name(self, size: str) -> str:
        """The registered name of one size, e.g. ``inline_deit_small_patch16_288`` or ``qtvit_1``."""
        if self.backbone == "efficientvit":
            return f"{self.name}_{size}"
        return f"{self.name}_deit_{size}_patch16_{self.sizes[size].resolution}"

    def model_names(self) -> list[str]:
        return [self.model_name(size) for size in self.sizes]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("softmax", "softmax", "DeiT", "softmax attention (SDPA); loads timm deit_* weights"),
    Family("linear", "linear", "linear attention baseline", "ReLU feature map, normalised"),
    Family("inline", "inline", "InLine (NeurIPS 2024)",
           "injective linear attention + predicted 3x3 local residual on V; widths/resolutions as the paper",
           sizes=dict(INLINE_SIZES)),
    Family("qt", "qt", "QT-ViT (NeurIPS 2024), DeiT adaptation",
           "adaptation: QT-ViT's quadratic-Taylor attention in a plain DeiT (the paper uses EfficientViT: qtvit_*)"),
    Family("zeros", "zeros", "ZeroS (NeurIPS 2025)", "non-causal zero-sum linear attention"),
    Family("fem", "fem", "FEM (ICLR 2026)", "free-energy mixer over a ReLU linear prior",
           mixer_kwargs={"prior": "linear"}),
    Family("fem_softmax", "fem", "FEM (ICLR 2026)", "free-energy mixer over a softmax prior",
           mixer_kwargs={"prior": "softmax"}),
    Family("deltanet", "deltanet", "DeltaNet (NeurIPS 2024), vision adaptation",
           "adaptation: bidirectional delta rule (forward + reversed scan, averaged), 3x3 depthwise conv"),
    Family("h3", "h3", "H3, vision adaptation", "adaptation: centred depthwise conv + bidirectional diagonal SSM"),
    Family("qtvit", "qt", "QT-ViT (NeurIPS 2024)", "EfficientViT-B/L with quadratic-Taylor attention",
           sizes=dict(QTVIT_SIZES), backbone="efficientvit"),
)}

DEIT_FAMILIES: tuple[str, ...] = tuple(name for name, f in FAMILIES.items() if f.backbone == "deit")


def family_of(model: str) -> str:
    """The family of a model name: a zoo family, or 'timm deit' / 'timm efficientvit' for timm's baselines."""
    if model.startswith("deit"):
        return "timm deit"
    if model.startswith("efficientvit"):
        return "timm efficientvit"
    if model.startswith("qtvit"):
        return "qtvit"
    return model.split("_deit_")[0] if "_deit_" in model else model.split("_")[0]
