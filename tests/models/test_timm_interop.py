"""timm interoperability of every model family: FX feature extraction (forward and backward), ONNX export run in
onnxruntime, ``set_input_size``, the kernel-backend switch and the registry's module names (tiny configs, CPU)."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import create_feature_extractor

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.models import MODEL_MODULES
from vitzoo.ops import get_backend, kernel_backend, set_backend, use_backend, utils
from vitzoo.registry import FAMILIES

TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2)  # a 4x4 grid + cls token
TINY_QTVIT = dict(widths=(8, 16, 16, 32, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_widths=(64, 64))


def _tiny(family: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    """A tiny model of ``family``, an input batch, and the modules whose outputs are read as features."""
    torch.manual_seed(seed)
    if family == "qtvit":
        return timm.create_model("qtvit_1", **TINY_QTVIT), torch.randn(2, 3, 64, 64), ["stages.1", "stages.3"]
    model = timm.create_model(f"{family}_deit_tiny_patch16_224", **TINY_VIT)
    return model, torch.randn(2, 3, 32, 32), ["blocks.0", "norm"]


def _features_and_grads(model: torch.nn.Module, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict]:
    """The features, detached, and the parameter gradients of a loss on all of them."""
    torch.stack([f.float().square().mean() for f in features]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return [f.detach() for f in features], grads


@pytest.mark.parametrize("family", FAMILIES)
def test_fx_feature_extraction_forward_and_backward(family):
    """timm's FX feature extractor traces the model; its features and their gradients equal the eager model's."""
    model, x, names = _tiny(family)
    extractor = create_feature_extractor(model, return_nodes={name: name for name in names})
    traced = extractor(x)
    got, got_grads = _features_and_grads(model, [traced[name] for name in names])

    captured = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: captured.__setitem__(name, out)) for name in names]
    model(x)
    for hook in hooks:
        hook.remove()
    expected, expected_grads = _features_and_grads(model, [captured[name] for name in names])

    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == expected_grads.keys() and len(got_grads) > 4
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_runs_in_onnxruntime(family, tmp_path):
    """torch.onnx.export (the dynamo exporter), fp32, run in onnxruntime: logits within 1e-4 of eager."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, x, _ = _tiny(family)
    model.eval()
    path = tmp_path / f"{family}.onnx"
    with torch.no_grad():
        expected = model(x)
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["softmax", "inline"])
def test_set_input_size_equals_a_model_built_at_the_new_size(family):
    """Built at 224 and resized to 320 equals a model built at 320 holding the resampled position embedding."""
    kwargs = dict(TINY_VIT, img_size=224, patch_size=16)
    torch.manual_seed(0)
    model = timm.create_model(f"{family}_deit_tiny_patch16_224", **kwargs).eval()
    state = model.state_dict()
    model.set_input_size(img_size=320)

    resampled = resample_abs_pos_embed(state["pos_embed"], new_size=(20, 20), old_size=(14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), resampled)
    assert model.patch_embed.img_size == (320, 320) and model.patch_embed.grid_size == (20, 20)
    built = timm.create_model(f"{family}_deit_tiny_patch16_224", **dict(kwargs, img_size=320)).eval()
    built.load_state_dict(dict(state, pos_embed=resampled))
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        torch.testing.assert_close(model(x), built(x))
    with pytest.raises(ValueError, match="expects 320x320 input"):
        model(torch.randn(1, 3, 224, 224))


def test_set_input_size_new_patch_size_updates_grid_and_features():
    model, _, _ = _tiny("linear")
    model.set_input_size(patch_size=4)
    assert model.patch_embed.grid_size == (8, 8) and model.pos_embed.shape[1] == 1 + 64
    assert all(info["reduction"] == 4 for info in model.feature_info)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_backend_is_read_once_and_switched_through_the_api(monkeypatch):
    """The environment is read at import only; set_backend / use_backend switch every later op call."""
    monkeypatch.setenv("VITZOO_KERNELS", "not-a-backend")  # read per call, this would raise
    assert kernel_backend("cpu") == "reference"
    start = get_backend()
    with use_backend("reference"):
        assert get_backend() == "reference" and kernel_backend("cuda") == "reference"
    assert get_backend() == start
    assert set_backend("reference") == start and get_backend() == "reference"
    with pytest.raises(ValueError, match="not one of"):
        set_backend("cuda")
    assert utils._parse(" Triton ") == "triton"


def test_model_modules_are_the_zoos_own():
    """timm files each model under the last component of its module path: the zoo's names must not read as
    timm's own modules."""
    assert MODEL_MODULES == ("vitzoo_vit", "vitzoo_efficientvit")
    assert timm.list_models(module="vitzoo_vit") and timm.list_models(module="vitzoo_efficientvit")
    assert not timm.list_models(module="vit") and not timm.list_models(module="efficientvit")
