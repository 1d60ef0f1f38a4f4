"""The norm references against PyTorch's own layer and RMS norms, in float64."""
import pytest
import torch
import torch.nn.functional as F

from vitzoo.ops.layer_norm import add_layer_norm_reference, layer_norm_reference, rms_norm_reference


def test_layer_norm_reference_is_f_layer_norm():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 37, generator=gen, dtype=torch.float64) * 3 + 1
    weight, bias = (torch.randn(37, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(layer_norm_reference(x, weight, bias, 1e-5), F.layer_norm(x, (37,), weight, bias, 1e-5))
    torch.testing.assert_close(layer_norm_reference(x), F.layer_norm(x, (37,)))


def test_add_layer_norm_reference_is_the_sum_and_its_f_layer_norm():
    gen = torch.Generator().manual_seed(2)
    x, update = (torch.randn(3, 7, 29, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    weight, bias = (torch.randn(29, generator=gen, dtype=torch.float64) for _ in range(2))
    total, normed = add_layer_norm_reference(x, update, weight, bias, 1e-6)
    torch.testing.assert_close(total, x + update, rtol=0, atol=0)
    torch.testing.assert_close(normed, F.layer_norm(x + update, (29,), weight, bias, 1e-6))


def test_rms_norm_reference_is_f_rms_norm():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 19, generator=gen, dtype=torch.float64) + 0.5
    weight = torch.randn(19, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rms_norm_reference(x, weight, 1e-6), F.rms_norm(x, (19,), weight, 1e-6))
    gate = torch.randn(4, 2, 19, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rms_norm_reference(x, weight, 1e-6, gate),
                               F.rms_norm(x, (19,), weight, 1e-6) * F.silu(gate))


def test_low_precision_input_keeps_its_dtype_with_fp32_parameters():
    x = torch.randn(6, 24, dtype=torch.bfloat16)
    out = layer_norm_reference(x, torch.randn(24), torch.randn(24))
    assert out.dtype == torch.bfloat16


def test_bad_parameter_shape_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        layer_norm_reference(torch.randn(2, 8), torch.randn(7))


@pytest.mark.parametrize("where", ["x", "weight", "bias"])
def test_non_tensors_are_a_one_line_error(where):
    """A shape passed where F.layer_norm takes it (``layer_norm(x, (8,), weight, ...)``) names the argument."""
    x, ones = torch.randn(2, 8), torch.ones(8)
    args = {"x": ((8,), ones, ones), "weight": (x, (8,), ones), "bias": (x, ones, [0.0] * 8)}[where]
    expected = {"x": "tuple", "weight": "tuple", "bias": "list"}[where]
    with pytest.raises(ValueError, match=rf"^layer_norm: {where} must be a tensor( or None)?, got {expected}$"):
        layer_norm_reference(*args)


@pytest.mark.parametrize("where", ["x", "weight", "bias", "gate", "update"])
def test_integer_tensors_are_a_one_line_error(where):
    """An integer tensor would be normalised and rounded back to integers; each op names it and the dtypes it takes."""
    x, ones = torch.randn(2, 3, 4), torch.ones(4)
    bad = torch.arange(24).reshape(2, 3, 4) if where in ("x", "gate", "update") else torch.ones(4, dtype=torch.int64)
    op, call = {
        "x": ("rms_norm", lambda: rms_norm_reference(bad, ones)),
        "weight": ("layer_norm", lambda: layer_norm_reference(x, bad, ones)),
        "bias": ("layer_norm", lambda: layer_norm_reference(x, ones, bad)),
        "gate": ("rms_norm", lambda: rms_norm_reference(x, ones, gate=bad)),
        "update": ("add_layer_norm", lambda: add_layer_norm_reference(x, bad, ones, ones)),
    }[where]
    with pytest.raises(ValueError, match=rf"^{op}: {where} has dtype torch.int64; use float16, bfloat16, float32 or "
                                         r"float64$"):
        call()
