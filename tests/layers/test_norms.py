"""The backbone's and the mixers' norms (``vitzoo.layers.norms``) against PyTorch's in float64: in autocast they keep
a 16-bit input in its dtype, on every path (PyTorch's norms on the CPU, the kernels under the Triton backend)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitzoo.layers.norms import LayerNorm, low_precision_layer_norm, low_precision_rms_norm
from vitzoo.ops import use_backend
from vitzoo.ops.testing import relative_error
from vitzoo.ops.utils import interpreting, triton_available

# the kernels on CPU tensors: the Triton interpreter (a GPU runs them in tests/models/test_cuda_models.py)
needs_interpreter = pytest.mark.skipif(not (triton_available() and interpreting()),
                                       reason="needs the Triton interpreter (TRITON_INTERPRET=1, CPU)")
BACKENDS = ["reference", pytest.param("triton", marks=needs_interpreter)]


def _inputs(seed: int, width: int = 48):
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(3, 7, width, generator=gen, dtype=torch.float64) + 0.5
    weight, bias, gate = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in
                          ((width,), (width,), (3, 7, width)))
    return x, weight, bias, gate


@pytest.mark.parametrize("backend", BACKENDS)
def test_norms_under_autocast_keep_bf16_and_equal_float64(backend):
    x, weight, bias, gate = _inputs(0)
    expected_ln = F.layer_norm(x, (48,), weight, bias, 1e-5)
    expected_rms = F.rms_norm(x, (48,), weight, 1e-6) * F.silu(gate)
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        ln = low_precision_layer_norm(x.bfloat16(), (48,), weight.float(), bias.float(), 1e-5)
        rms = low_precision_rms_norm(x.bfloat16(), (48,), weight.float(), 1e-6, gate.bfloat16())
    assert ln.dtype == rms.dtype == torch.bfloat16
    assert relative_error(ln.double(), expected_ln) < 1e-2
    assert relative_error(rms.double(), expected_rms) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_with_update_returns_the_sum_and_its_norm(backend):
    x, weight, bias, _ = _inputs(1)
    update = torch.randn_like(x)
    norm = LayerNorm(48, dtype=torch.float32)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    with use_backend(backend), torch.no_grad():
        total, normed = norm(x.float(), update.float())
        alone = norm(x.float())
    torch.testing.assert_close(total.double(), x + update, rtol=1e-6, atol=1e-6)
    assert relative_error(normed.double(), F.layer_norm(x + update, (48,), weight, bias, 1e-5)) < 1e-5
    assert relative_error(alone.double(), F.layer_norm(x, (48,), weight, bias, 1e-5)) < 1e-5


def test_float64_is_pytorchs_norm_exactly():
    x, weight, bias, gate = _inputs(2)
    torch.testing.assert_close(low_precision_layer_norm(x, (48,), weight, bias, 1e-5),
                               F.layer_norm(x, (48,), weight, bias, 1e-5), rtol=0, atol=0)
    torch.testing.assert_close(low_precision_rms_norm(x, (48,), weight, 1e-6, gate),
                               F.rms_norm(x, (48,), weight, 1e-6) * F.silu(gate), rtol=0, atol=0)
