"""timm's contract for every DeiT-style vitzoo model (small input sizes keep it fast on CPU)."""
from __future__ import annotations

import fnmatch
import re

import pytest
import timm
import torch
from timm.models._manipulate import group_parameters

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.registry import DEIT_FAMILIES, FAMILIES

MODEL_NAMES = timm.list_models(module="vitzoo_vit")
SMALL = dict(img_size=32, patch_size=8)  # a 4x4 grid + cls token


def _create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_api(name):
    model = _create(name)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier", "license"):
        assert key in cfg, key
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state

    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without finite gradients: {missing}"

    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, features, rtol=1e-5, atol=1e-6)
        assert len(intermediates) == len(model.blocks) and intermediates[-1].shape == (2, model.embed_dim, 4, 4)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)

        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model.forward_features(x), features, rtol=1e-5, atol=1e-6)
        model.set_grad_checkpointing(False)

        model.reset_classifier(0)
        assert model(x).shape == pre_logits.shape
        model.reset_classifier(7)
        assert model.global_pool == "token" and model(x).shape == (2, 7)

    params = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in params), f"no_weight_decay name {pattern!r} matches nothing"
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) > 1


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if "_tiny_" in n])
def test_empty_batch(name):
    # timm's models take a batch of zero images (a data-parallel rank can get one); so do the zoo's
    model = _create(name)
    out = model(torch.randn(0, 3, 32, 32))
    assert out.shape == (0, 1000)
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 32, 32)).shape == (0, 1000)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_construction_options(name):
    meta = timm.create_model(name, device="meta", dtype=torch.float32)
    assert all(t.device.type == "meta" for t in [*meta.parameters(), *meta.buffers()])

    with pytest.raises(TypeError):
        timm.create_model(name, not_a_model_arg=1, device="meta")

    # Fashion-MNIST shape: 28x28 grey, 10 classes.
    fmnist = _create(name, img_size=28, patch_size=4, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert fmnist(torch.randn(3, 1, 28, 28)).shape == (3, 10)

    features = _create(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, features.feature_info.channels()[0], 4, 4)] * 2


@pytest.mark.parametrize("name", ["softmax_deit_tiny_patch16_224", "inline_deit_tiny_patch16_224"])
def test_dynamic_img_size(name):
    model = _create(name, dynamic_img_size=True).eval()
    with torch.no_grad():
        for size in ((32, 32), (48, 24)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 1000)
        with pytest.raises(ValueError, match="divisible by the patch size"):
            model(torch.randn(1, 3, 36, 32))


def test_bad_input_errors_name_the_model():
    model = _create("linear_deit_tiny_patch16_224").eval()
    with pytest.raises(ValueError, match=r"linear_deit_tiny_patch16_224 expects 3 input channel\(s\), got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects 32x32 input, got 40x40.*dynamic_img_size=True"):
        model(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="floating-point input"):
        model(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\): pass x.permute\(0, 3, 1, 2\)"):
        model(torch.randn(1, 32, 32, 3))
    with pytest.raises(ValueError, match="expects a torch.Tensor of images .* got ndarray; convert it with torch"):
        model(torch.randn(1, 3, 32, 32).numpy())
    with pytest.raises(ValueError, match=r"has torch.float32 weights but got a torch.float64 input; convert it"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the input's precision is autocast's business
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 1000)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_heads=0), "num_heads must be an integer >= 1, got 0"),
    (dict(embed_dim="64"), "embed_dim must be an integer >= 1, got '64'"),
    (dict(depth=-1), "depth must be an integer >= 1, got -1"),
    (dict(in_chans=0), "in_chans must be an integer >= 1, got 0"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0, got -1"),
    (dict(patch_size=0), "img_size and patch_size must be positive"),
    (dict(img_size=30), r"img_size=30 is not divisible by patch_size=16; pick a multiple of it, or dynamic_img_size"),
])
def test_bad_constructor_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("softmax_deit_tiny_patch16_224", **kwargs)


def test_pretrained_without_weights_says_how_to_pass_them():
    with pytest.raises(ValueError, match=r"pretrained_cfg_overlay=dict\(file="):
        timm.create_model("inline_deit_tiny_patch16_224", pretrained=True)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing.safetensors", None, "missing.safetensors does not exist or is not a file"),
    ("notes.txt", b"root:x:0:0:root:/root:/bin/bash\n", "notes.txt is not a PyTorch (.pth / .pt) or safetensors"),
])
@pytest.mark.parametrize("model", ["inline_deit_tiny_patch16_224", "qtvit_1"])
def test_pretrained_from_a_wrong_file_is_a_one_line_error(tmp_path, model, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(expected)):
        timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pretrained_from_file(tmp_path):
    from safetensors.torch import save_file

    source = _create("inline_deit_tiny_patch16_224").eval()
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model(
        "inline_deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_softmax_baseline_matches_timm_deit(size):
    """softmax_deit_* loads timm's deit_* state dict and gives the same logits."""
    torch.manual_seed(0)
    reference = timm.create_model(f"deit_{size}_patch16_224").eval()
    ours = timm.create_model(f"softmax_deit_{size}_patch16_224").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_vitzoo_list_models_covers_both_families():
    names = vitzoo.list_models()
    assert set(MODEL_NAMES) < set(names) and {f"qtvit_{i}" for i in range(1, 7)} < set(names)
    assert vitzoo.list_models("qtvit_*") == [f"qtvit_{i}" for i in range(1, 7)]


@pytest.mark.parametrize("name", [FAMILIES[family].model_name("tiny") for family in DEIT_FAMILIES]
                         + ["qtvit_1", "deit_tiny_patch16_224"])
def test_a_16_bit_batch_gives_the_logits_of_its_float32_batch_under_autocast(name):
    """What lets a bf16 run's device stage write bf16 batches (vitzoo.train.factories.model_input_dtype): autocast
    rounds a float32 input to bf16 before the first layer anyway, so the rounded batch changes nothing."""
    torch.manual_seed(0)
    model = timm.create_model(name, **({} if name.startswith("qtvit") else SMALL)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x.to(torch.bfloat16)), model(x))
        assert not torch.equal(model(x.to(torch.bfloat16)), model(x.to(torch.bfloat16).float() + 1e-2))
