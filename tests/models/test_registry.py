"""``vitzoo.registry.FAMILIES`` and the registered timm entrypoints agree: every family x size is registered, with
exactly the family's mixer (and mixer kwargs) and the size's width, heads and resolution, and nothing else is."""
from __future__ import annotations

import pytest
import timm
from timm.models import model_entrypoint

import vitzoo
from vitzoo.models import vitzoo_vit
from vitzoo.registry import DEIT_FAMILIES, FAMILIES


def _expected_deit_args() -> dict[str, dict]:
    expected = {}
    for family in (FAMILIES[name] for name in DEIT_FAMILIES):
        for size, shape in family.sizes.items():
            args = dict(img_size=shape.resolution, patch_size=16, embed_dim=shape.width, depth=12,
                        num_heads=shape.heads, mixer=family.mixer)
            if family.mixer_kwargs:
                args["mixer_kwargs"] = dict(family.mixer_kwargs)
            expected[family.model_name(size)] = args
    return expected


def test_registered_names_are_the_registry_names():
    deit = set(_expected_deit_args())
    others = {f.model_name(size) for f in FAMILIES.values() if f.backbone != "deit" for size in f.sizes}
    assert set(timm.list_models(module="vitzoo_vit")) == deit
    assert set(timm.list_models(module="vitzoo_efficientvit")) == others
    assert vitzoo.list_models() == sorted(deit | others)


@pytest.mark.parametrize("name", sorted(_expected_deit_args()))
def test_entrypoint_passes_the_registry_args(name, monkeypatch):
    calls = []
    monkeypatch.setattr(vitzoo_vit, "_create_mixer_vit", lambda variant, **kwargs: calls.append((variant, kwargs)))
    entrypoint = model_entrypoint(name)
    assert entrypoint.__name__ == name and entrypoint.__module__ == vitzoo_vit.__name__
    entrypoint()
    entrypoint(pretrained=False, depth=2, mixer_kwargs=None)  # caller kwargs override the model args
    expected = _expected_deit_args()[name]
    assert calls[0] == (name, dict(pretrained=False, **expected))
    assert calls[1] == (name, dict(pretrained=False, **{**expected, "depth": 2, "mixer_kwargs": None}))
    cfg = vitzoo_vit.default_cfgs[name].default.to_dict()
    assert cfg["input_size"] == (3, expected["img_size"], expected["img_size"])
