"""KeptCastLinear: under autocast, eval-mode forwards without gradients cast the weight and bias once and keep them;
the output is nn.Linear's bit for bit, and it follows every change of the parameters."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from dispatch_counting import CastCounter

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.layers.kept import KeptCastLinear
from vitzoo.registry import DEIT_FAMILIES, FAMILIES

AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


def _pair(bias: bool = True) -> tuple[nn.Linear, KeptCastLinear]:
    torch.manual_seed(0)
    plain = nn.Linear(24, 40, bias=bias)
    kept = KeptCastLinear(24, 40, bias=bias)
    kept.load_state_dict(plain.state_dict())
    return plain.eval(), kept.eval()


def _autocast_forward(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    with torch.inference_mode(), torch.autocast(**AUTOCAST), CastCounter() as counter:
        out = layer(x)
    return out, counter.casts


@pytest.mark.parametrize("bias", [True, False])
def test_kept_casts_give_nn_linears_output_and_cast_once(bias):
    plain, kept = _pair(bias)
    x = torch.randn(3, 7, 24).to(torch.bfloat16)
    expected, plain_casts = _autocast_forward(plain, x)
    first, first_casts = _autocast_forward(kept, x)
    second, second_casts = _autocast_forward(kept, x)
    assert expected.dtype == first.dtype == second.dtype == torch.bfloat16
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert plain_casts == first_casts == (2 if bias else 1)
    assert second_casts == 0


def test_fp32_input_is_still_cast_and_matches():
    plain, kept = _pair()
    x = torch.randn(5, 24)
    _autocast_forward(kept, x)
    out, casts = _autocast_forward(kept, x)
    assert casts == 1  # the input only
    assert torch.equal(out, _autocast_forward(plain, x)[0])


def test_kept_casts_follow_parameter_changes():
    plain, kept = _pair()
    x = torch.randn(4, 24)
    _autocast_forward(kept, x)
    with torch.no_grad():  # version counter bumped, as EMA, foreach optimizers and load_state_dict do
        for layer in (plain, kept):
            layer.weight.mul_(-2.0)
            layer.bias.add_(1.0)
    assert torch.equal(_autocast_forward(kept, x)[0], _autocast_forward(plain, x)[0])
    new = {key: torch.randn_like(value) for key, value in plain.state_dict().items()}
    plain.load_state_dict(new)
    kept.load_state_dict(new)
    assert torch.equal(_autocast_forward(kept, x)[0], _autocast_forward(plain, x)[0])
    # through .data the version counter stays as it was: eval() (or train()) drops the kept copies
    for layer in (plain, kept):
        layer.weight.data.mul_(0.5)
    kept.eval()
    assert torch.equal(_autocast_forward(kept, x)[0], _autocast_forward(plain, x)[0])


def test_other_dtype_asks_for_new_copies():
    plain, kept = _pair()
    x = torch.randn(4, 24)
    _autocast_forward(kept, x)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(kept(x), plain(x))
        assert kept(x).dtype == torch.float16


@pytest.mark.parametrize("mode", ["train", "grad", "no_autocast"])
def test_nothing_is_kept_where_the_plain_path_must_run(mode):
    plain, kept = _pair()
    x = torch.randn(4, 24, requires_grad=mode == "grad")
    if mode == "train":
        plain.train()
        kept.train()
    for layer in (plain, kept):
        layer.requires_grad_(mode != "grad")  # "grad": a frozen model, gradients of the input
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "no_autocast"):
        out, expected = kept(x), plain(x)
    assert kept._kept is None
    assert torch.equal(out, expected)
    if mode == "grad":
        out.float().sum().backward()
        assert x.grad is not None


def test_kept_copies_made_in_inference_mode_serve_no_grad_forwards():
    plain, kept = _pair()
    x = torch.randn(4, 24)
    _autocast_forward(kept, x)
    with torch.no_grad(), torch.autocast(**AUTOCAST):
        assert torch.equal(kept(x), plain(x))


@pytest.mark.parametrize("family", DEIT_FAMILIES)
def test_every_linear_of_the_deit_models_keeps_its_casts(family):
    """A mixer or head built on plain ``nn.Linear`` would pay the casts on every inference forward again."""
    model = timm.create_model(FAMILIES[family].model_name("tiny"), img_size=32, patch_size=8, embed_dim=32, depth=1,
                               num_heads=2)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    assert linears
    assert [name for name in linears if not isinstance(model.get_submodule(name), KeptCastLinear)] == []
    model.reset_classifier(7)
    assert isinstance(model.get_classifier(), KeptCastLinear)
