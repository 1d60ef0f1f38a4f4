"""Loading the authors' InLine and QT-ViT checkpoints: key conversion, equality of the loaded models, clear errors.

No download: the official state dicts are built here with the official key names and shapes. For InLine they are
written from the official ``inline_deit.py`` model definition; for QT-ViT, ``data/qtvit_official_keys.json.gz``
lists the key names and shapes of the official ``efficientvit_cls_{b1,b2,b3,l1,l2,l3}`` classifiers of the
AMD_QTViT code (which QT-ViT-1..6 are), and the small numerical models get their official names from
:func:`_official_qtvit_name`, written from the same definitions.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.models._helpers import CheckpointLayoutError
from vitzoo.models.vitzoo_efficientvit import checkpoint_filter_fn as qtvit_filter
from vitzoo.models.vitzoo_vit import checkpoint_filter_fn as vit_filter

OFFICIAL_QTVIT_KEYS = json.loads(gzip.open(Path(__file__).parents[1] / "data" / "qtvit_official_keys.json.gz").read())
INLINE_SIZES = {  # official inline_deit_{tiny,small,base}: width, heads, resolution
    "inline_deit_tiny_patch16_224": (192, 6, 224),
    "inline_deit_small_patch16_288": (320, 10, 288),
    "inline_deit_base_patch16_448": (384, 12, 448),
}


def _official_inline_shapes(dim: int, heads: int, res: int, depth: int, num_classes: int) -> dict[str, tuple]:
    """Key names and shapes of the official InLine DeiT (timm 0.4 ViT with ``InLineAttention``)."""
    shapes = {
        "cls_token": (1, 1, dim), "pos_embed": (1, 1 + (res // 16) ** 2, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (num_classes, dim), "head.bias": (num_classes,),
    }
    for i in range(depth):
        block = {
            "norm1.weight": (dim,), "norm1.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
            "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
            "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
            "attn.residual.0.weight": (dim, dim // heads, 1), "attn.residual.0.bias": (dim,),
            "attn.residual.2.weight": (9 * dim, dim // heads, 1), "attn.residual.2.bias": (9 * dim,),
            "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
            "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,),
        }
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return shapes


def _official_qtvit_name(key: str, large: bool) -> str:
    """A zoo QT-ViT key under the official layout's name (``EfficientViTCls``: ``backbone`` + ``head.op_list``)."""
    head = {"head.in_conv.": "head.op_list.0.", "head.classifier.0.": "head.op_list.2.linear.",
            "head.classifier.1.": "head.op_list.2.norm.", "head.classifier.4.": "head.op_list.3.linear."}
    for zoo, official in head.items():
        if key.startswith(zoo):
            return official + key[len(zoo):]
    stem = "backbone.stages.0" if large else "backbone.input_stem"
    if key.startswith("stem.in_conv."):
        return f"{stem}.op_list.0." + key[len("stem.in_conv."):]
    if match := re.match(r"stem\.res(\d+)\.(.*)", key):
        return f"{stem}.op_list.{int(match[1]) + 1}.{match[2]}"
    match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
    rest = (match[3].replace("main.key_pos_embed", "main.positional_encoding")
            .replace("main.core.const", "main.ones_scale1").replace("main.core.v_norm.", "main.bn."))
    return f"backbone.stages.{int(match[1]) + large}.op_list.{match[2]}.{rest}"


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic away from its init, so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
            tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else 0.2 * noise)
    return model


def _assert_same_logits(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> None:
    for train in (False, True):
        torch.manual_seed(0)
        got = model.train(train)(x)
        torch.manual_seed(0)
        expected = reference.train(train)(x)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def _save(tmp_path: Path, checkpoint: dict) -> str:
    path = tmp_path / "official.pth"
    torch.save(checkpoint, path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# InLine
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(INLINE_SIZES))
def test_official_inline_checkpoint_loads_as_the_same_model(name: str, tmp_path: Path) -> None:
    dim, heads, res = INLINE_SIZES[name]
    depth, num_classes = 2, 1000
    reference = _randomised(timm.create_model(name, depth=depth, dtype=torch.float64), seed=1)
    zoo_state = reference.state_dict()
    official = {k.replace(".attn.residual_predictor.", ".attn.residual."): v for k, v in zoo_state.items()}
    expected_shapes = _official_inline_shapes(dim, heads, res, depth, num_classes)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected_shapes

    # The training script's wrapper and DDP prefixes, through timm's pretrained path and torch.load(weights_only).
    path = _save(tmp_path, {"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 299})
    model = timm.create_model(name, depth=depth, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              dtype=torch.float64)
    converted = vit_filter(torch.load(path, weights_only=True), model)
    assert len(converted) == len(official) and converted.keys() == zoo_state.keys()  # every official key consumed
    x = torch.randn(2, 3, res, res, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _assert_same_logits(model, reference, x)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_ema", "state_dict_ema", None])
def test_inline_wrappers(wrapper: str | None) -> None:
    model = timm.create_model("inline_deit_tiny_patch16_224", depth=1, device="meta")
    official = {k.replace("residual_predictor", "residual"): v for k, v in model.state_dict().items()}
    checkpoint = {wrapper: official} if wrapper else official
    assert vit_filter(checkpoint, model).keys() == model.state_dict().keys()


# ---------------------------------------------------------------------------------------------------------------
# QT-ViT
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OFFICIAL_QTVIT_KEYS))
def test_every_official_qtvit_key_maps_to_a_zoo_key_of_the_same_shape(name: str) -> None:
    model = timm.create_model(name, device="meta")
    official = {k: torch.empty(shape, device="meta") for k, shape in OFFICIAL_QTVIT_KEYS[name]}
    converted = qtvit_filter({"state_dict": official}, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(converted) == len(official)  # no two official keys land on one zoo key
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    large = int(name[-1]) > 3
    assert {_official_qtvit_name(k, large) for k in expected} == set(official)


# Small widths, each size's own depths and block types: the numerics at a fraction of the CPU time.
_SMALL_QTVIT = dict(widths=(8, 16, 16, 32, 32), head_dim=8, head_widths=(48, 40), num_classes=10)


@pytest.mark.parametrize("name", list(OFFICIAL_QTVIT_KEYS))
def test_official_qtvit_checkpoint_loads_as_the_same_model(name: str, tmp_path: Path) -> None:
    large = int(name[-1]) > 3
    reference = _randomised(timm.create_model(name, dtype=torch.float64, **_SMALL_QTVIT), seed=3)
    zoo_state = reference.state_dict()
    official = {_official_qtvit_name(k, large): v for k, v in zoo_state.items()}
    assert len(official) == len(zoo_state) and all(k.startswith(("backbone.", "head.op_list.")) for k in official)

    path = _save(tmp_path, {"state_dict": {f"module.{k}": v for k, v in official.items()}})
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=10),
                              dtype=torch.float64, **_SMALL_QTVIT)
    converted = qtvit_filter(torch.load(path, weights_only=True), model)
    assert len(converted) == len(official) and converted.keys() == zoo_state.keys()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _assert_same_logits(model, reference, x)


# ---------------------------------------------------------------------------------------------------------------
# Errors: truncated and foreign state dicts, one line
# ---------------------------------------------------------------------------------------------------------------
def _one_line_error(filter_fn, state_dict: dict, model: torch.nn.Module, match: str) -> None:
    with pytest.raises(CheckpointLayoutError, match=match) as info:
        filter_fn(state_dict, model)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_truncated_and_foreign_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    inline = timm.create_model("inline_deit_tiny_patch16_224", depth=2, device="meta")
    official = {k.replace("residual_predictor", "residual"): v for k, v in inline.state_dict().items()}
    truncated = {k: v for k, v in official.items() if not k.startswith("blocks.1.")}
    _one_line_error(vit_filter, {"model": truncated}, inline, r"official InLine layout.*missing 16 \(blocks\.1\.")
    # The same through timm's pretrained path.
    path = _save(tmp_path, {"model": {k: torch.zeros(v.shape) for k, v in truncated.items()}})
    with pytest.raises(CheckpointLayoutError, match=r"inline_deit_tiny_patch16_224: .*missing 16") as info:
        timm.create_model("inline_deit_tiny_patch16_224", depth=2, pretrained=True,
                          pretrained_cfg_overlay=dict(file=path))
    assert "\n" not in str(info.value)

    qtvit = timm.create_model("qtvit_1", device="meta")
    official_qt = {k: torch.empty(s, device="meta") for k, s in OFFICIAL_QTVIT_KEYS["qtvit_1"]}
    truncated_qt = {k: v for k, v in official_qt.items() if "ones_scale1" not in k}
    _one_line_error(qtvit_filter, truncated_qt, qtvit, r"official QT-ViT layout.*missing 7 \(.*core\.const")

    # Foreign: an official QT-ViT checkpoint offered to InLine, and a ResNet-like dict to QT-ViT.
    _one_line_error(vit_filter, official_qt, inline, r"missing .*unexpected 321 \(backbone\.")
    _one_line_error(qtvit_filter, {"conv1.weight": torch.empty(1)}, qtvit, r"missing 321 .*unexpected 1 \(conv1")
    # The large layout offered to a B-series model.
    official_l1 = {k: torch.empty(s, device="meta") for k, s in OFFICIAL_QTVIT_KEYS["qtvit_4"]}
    _one_line_error(qtvit_filter, official_l1, qtvit, "does not fit the model")
