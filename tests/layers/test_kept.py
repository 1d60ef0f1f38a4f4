"""KeptCastLinear: under autocast, eval-mode forwards without gradients cast the weight and bias once and keep them;
the output is nn.Linear's bit for bit, and it follows every change of the parameters."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from dispatch_counting import CastCounter

import vitzoo  # noqa: F401  (registers the models)
import vitzoo.layers.kept as kept_module
from vitzoo.layers.kept import KeptCastLinear, NarrowLinear, linear_with_product_bias_grad
from vitzoo.layers.local_conv import GridDepthwiseConv
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


def test_product_bias_grad_linear_matches_float64_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_with_product_bias_grad, (x, weight, bias))
    out = linear_with_product_bias_grad(x, weight, bias)
    assert torch.equal(out, torch.nn.functional.linear(x, weight, bias))


def test_product_bias_grad_linear_under_autocast_is_nn_linears_forward_and_close_in_backward():
    plain, kept = _pair()
    x = torch.randn(6, 9, 24)
    grad = torch.randn(6, 9, 40)
    results = []
    for layer, forward in ((plain, plain), (kept, lambda t: linear_with_product_bias_grad(t, kept.weight, kept.bias))):
        xi = x.clone().requires_grad_()
        with torch.autocast(**AUTOCAST):
            out = forward(xi)
        out.backward(grad.to(out.dtype))
        results.append((out, xi.grad, layer.weight.grad, layer.bias.grad))
    (out, dx, dw, db), (out2, dx2, dw2, db2) = results
    assert out2.dtype == torch.bfloat16 and torch.equal(out2, out)
    assert dw2.dtype == db2.dtype == torch.float32
    torch.testing.assert_close(dx2, dx)
    torch.testing.assert_close(dw2, dw)
    # both sum the 54 rows of the bf16 output gradient, in different orders, to a bf16 bias gradient
    torch.testing.assert_close(db2, db, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(db2, grad.sum((0, 1)), rtol=1e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA-graph capture)")
def test_captured_training_forward_takes_the_product_path_and_eager_does_not(monkeypatch):
    """A training forward captured into a CUDA graph takes the product bias gradient and replays to nn.Linear's
    output and gradients; the same forward run eagerly takes nn.Linear's own path."""
    plain, kept = (layer.cuda().train() for layer in _pair())
    calls = []
    product = kept_module.linear_with_product_bias_grad
    monkeypatch.setattr(kept_module, "linear_with_product_bias_grad", lambda *a: calls.append(1) or product(*a))
    x = torch.randn(4, 197, 24, device="cuda")
    grad = torch.randn(4, 197, 40, device="cuda", dtype=torch.bfloat16)

    def step(layer):
        layer.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = layer(x)
        out.backward(grad)
        # detached: an output that kept its autograd graph alive would keep the parameters' AccumulateGrad nodes from
        # this (default-stream) step, and the captured backward would then make the default stream wait on the
        # capture ("operation would make the legacy stream depend on a capturing blocking stream", seen on an H100)
        return out.detach()

    eager = step(kept)
    assert calls == []
    for layer in (plain, kept):  # gradients exist before capture: the graph accumulates into them in place
        step(layer)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(kept)  # warm-up on a side stream, as capture needs
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(kept)
    assert calls == [1]
    graph.replay()
    expected = step(plain)
    torch.cuda.synchronize()
    assert torch.equal(eager, expected) and torch.equal(captured, expected)
    torch.testing.assert_close(kept.weight.grad, plain.weight.grad)
    torch.testing.assert_close(kept.bias.grad, plain.bias.grad, rtol=1e-2, atol=5e-2)


@pytest.mark.parametrize("bias", [True, False])
def test_narrow_linear_is_nn_linear_in_float64(bias):
    """Same outputs and gradients as nn.Linear (float64), returned as a strided view of the (outputs, rows) product."""
    torch.manual_seed(1)
    plain = nn.Linear(24, 3, bias=bias).double()
    narrow = NarrowLinear(24, 3, bias=bias).double()
    narrow.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    out = narrow(x)
    assert out.shape == (2, 7, 3) and out.stride() == (7, 1, 14)
    expected = plain(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *narrow.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *plain.parameters()], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_narrow_linear_keeps_its_casts_under_autocast():
    torch.manual_seed(2)
    plain = nn.Linear(24, 6).eval()
    narrow = NarrowLinear(24, 6).eval()
    narrow.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 24).to(torch.bfloat16)
    expected, _ = _autocast_forward(plain, x)
    _autocast_forward(narrow, x)
    out, casts = _autocast_forward(narrow, x)
    assert casts == 0 and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)  # bf16 sums in another order


def test_grid_conv_keeps_its_tap_major_weight_until_the_weight_changes():
    conv = GridDepthwiseConv(6, 3).eval()
    with torch.no_grad():
        first = conv.tap_major_weight()
        assert conv.tap_major_weight() is first  # kept
        assert first.stride(1) == 1 and torch.equal(first, conv.conv.weight.view(1, 6, 3, 3))
        conv.conv.weight.mul_(2.0)
        second = conv.tap_major_weight()
    assert second is not first and torch.equal(second, conv.conv.weight.view(1, 6, 3, 3))
    with torch.enable_grad():  # a forward that records the weight's gradient copies it every time
        assert conv.tap_major_weight().requires_grad and conv.tap_major_weight() is not conv.tap_major_weight()
