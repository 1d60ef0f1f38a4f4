"""The fused local-convolution kernels against the float64 PyTorch reference.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch

from vitzoo.ops import local_conv, local_conv_reference, set_backend
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import assert_matches_reference, relative_error

from .cases import HAS_CUDA, make_inputs, needs_cuda, needs_kernels, outputs_and_grads


@needs_kernels
@pytest.mark.parametrize(
    "b, c, grid, prefix, k, per_image, with_bias, with_residual",
    [
        (2, 5, (3, 4), 1, 3, True, False, True),    # InLine: per-image kernel onto the attention output
        (2, 7, (4, 3), 1, 3, False, True, False),   # DeltaNet / H3: one kernel, bias, prefix copied through
        (3, 20, (2, 5), 0, 3, False, False, False),  # no prefix, C over one channel block
        (1, 70, (5, 5), 2, 5, True, True, True),    # K = 5, two channel blocks, every option
        (1, 6, (34, 5), 1, 3, False, True, False),  # 34 rows: two bands of rows (forward and dw)
        (2, 5, (10, 35), 1, 3, True, False, True),  # 35 columns: three column blocks
        (1, 4, (66, 3), 1, 3, False, True, False),  # 66 rows: three bands of rows
        (1, 3, (35, 2), 0, 5, True, False, True),   # K = 5 in two bands
    ],
)
def test_kernel_matches_reference(b, c, grid, prefix, k, per_image, with_bias, with_residual):
    """Forward and every gradient of the kernel (fp32) against the float64 reference, on strided inputs."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    seed = 7 * b + c
    tensors, grad = make_inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, torch.float32, device, seed)
    ref_tensors, ref_grad = make_inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, torch.float64,
                                        "cpu", seed)
    out, grads = outputs_and_grads(local_conv, tensors, grad, grid, prefix)
    ref_out, ref_grads = outputs_and_grads(local_conv_reference, ref_tensors, ref_grad, grid, prefix)
    assert out.dtype == torch.float32
    assert_matches_reference(out, grads, ref_out, ref_grads, 1e-5)


@needs_kernels
@pytest.mark.parametrize("per_image", [False, True])
def test_channels_last_weights_match_reference(per_image):
    """Weights in the layout the layers pass (channels-last: taps outer, channels contiguous), forward and gradients
    against float64."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    args = (2, 70, (5, 6), 1, 3, per_image, not per_image, per_image)
    tensors, grad = make_inputs(*args, torch.float32, device, 5)
    ref_tensors, ref_grad = make_inputs(*args, torch.float64, "cpu", 5)
    tensors[1] = tensors[1].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert tensors[1].stride(1) == 1
    out, grads = outputs_and_grads(local_conv, tensors, grad, (5, 6), 1)
    ref_out, ref_grads = outputs_and_grads(local_conv_reference, ref_tensors, ref_grad, (5, 6), 1)
    assert_matches_reference(out, grads, ref_out, ref_grads, 1e-5)


@needs_kernels
@pytest.mark.parametrize("b, c, grid, prefix, with_bias", [
    (2, 7, (4, 3), 1, False),    # DeltaNet: one kernel, the cls token activated too
    (1, 70, (5, 5), 2, True),    # two channel blocks, a bias inside the activation
])
def test_silu_activation_matches_reference(b, c, grid, prefix, with_bias):
    """SiLU on the output in the same kernel, and its backward from the convolution recomputed, against float64."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    seed = 11 * b + c
    args = (b, c, grid, prefix, 3, False, with_bias, False)
    tensors, grad = make_inputs(*args, torch.float32, device, seed)
    ref_tensors, ref_grad = make_inputs(*args, torch.float64, "cpu", seed)
    out, grads = outputs_and_grads(local_conv, tensors, grad, grid, prefix, "silu")
    ref_out, ref_grads = outputs_and_grads(local_conv_reference, ref_tensors, ref_grad, grid, prefix, "silu")
    assert_matches_reference(out, grads, ref_out, ref_grads, 1e-5)


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """Outputs are fresh buffers: poisoning the allocator's memory must not leak into them (no unwritten element)."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    (x, weight, bias, residual), _ = make_inputs(2, 6, (3, 3), 1, 3, True, True, True, torch.float32, device, 3)
    out = local_conv(x.detach(), weight.detach(), (3, 3), 1, bias=bias.detach(), residual=residual.detach())
    assert torch.isfinite(out).all()


@needs_kernels
@pytest.mark.parametrize("activation, with_residual", [(None, True), ("silu", False)])
def test_inference_launches_directly_and_matches_reference(activation, with_residual, monkeypatch):
    """Without gradients the kernel launches without the autograd function (host time), with the same output."""
    from vitzoo.ops.local_conv import function

    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    args = (2, 7, (4, 5), 1, 3, with_residual, not with_residual, with_residual)
    tensors, _ = make_inputs(*args, torch.float32, device, 13)
    ref_tensors, _ = make_inputs(*args, torch.float64, "cpu", 13)

    def no_autograd_function(*_):
        raise AssertionError("the autograd function ran without gradients to record")

    monkeypatch.setattr(function._LocalConvFunction, "apply", no_autograd_function)
    with torch.no_grad():
        out = local_conv(tensors[0], tensors[1], (4, 5), 1, bias=tensors[2], residual=tensors[3],
                         activation=activation)
        ref = local_conv_reference(ref_tensors[0], ref_tensors[1], (4, 5), 1, bias=ref_tensors[2],
                                   residual=ref_tensors[3], activation=activation)
    assert relative_error(out.double().cpu(), ref) < 1e-5


@needs_kernels
def test_inference_calls_reuse_their_kept_launch(monkeypatch):
    """An eager call without gradients and with the key of an earlier one skips the checks and repeats its kept
    launch on the new tensors; another grid, prefix or layout is checked and kept again; every call matches float64
    (poisoned buffers)."""
    from vitzoo.ops.local_conv import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a: checks.append(1) or check(*a))
    device = "cuda" if HAS_CUDA else "cpu"
    args = (2, 7, (4, 5), 1, 3, True, True, True)
    set_backend("triton")
    try:
        with torch.no_grad():
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            for seed, grid, prefix, expected_checks in [(1, (4, 5), 1, 1), (2, (4, 5), 1, 1), (3, (5, 4), 1, 2),
                                                        (4, (4, 5), 1, 2), (5, (3, 7), 0, 3)]:
                tensors = [t.detach() for t in make_inputs(*args, torch.float32, device, seed)[0]]
                ref = [t.detach() for t in make_inputs(*args, torch.float64, "cpu", seed)[0]]
                out = local_conv(tensors[0], tensors[1], grid, prefix, bias=tensors[2], residual=tensors[3])
                expected = local_conv_reference(ref[0], ref[1], grid, prefix, bias=ref[2], residual=ref[3])
                assert relative_error(out.double().cpu(), expected) < 1e-5
                assert len(checks) == expected_checks
            # a channels-last weight of the same shape: other strides, another key
            weight = tensors[1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            out = local_conv(tensors[0], weight, (3, 7), 0, bias=tensors[2], residual=tensors[3])
            assert relative_error(out.double().cpu(), expected) < 1e-5 and len(checks) == 4
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 4


def test_bad_inputs_raise_one_line_errors():
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="needs 13"):
        local_conv(x, torch.randn(1, 4, 3, 3), (3, 4), 1)
    with pytest.raises(ValueError, match="weight must be"):
        local_conv(x, torch.randn(3, 4, 3, 3), (3, 3), 1)
    with pytest.raises(ValueError, match="odd"):
        local_conv(x, torch.randn(1, 4, 2, 2), (3, 3), 1)
    with pytest.raises(ValueError, match="activation='relu' is not one of"):
        local_conv(x, torch.randn(1, 4, 3, 3), (3, 3), 1, activation="relu")
    with pytest.raises(ValueError, match="takes no residual"):
        local_conv(x, torch.randn(1, 4, 3, 3), (3, 3), 1, residual=x, activation="silu")


@needs_cuda
@pytest.mark.parametrize("per_image", [False, True])
def test_bf16_at_model_size(per_image):
    """bf16 inputs at DeiT-T size (B=32, 14x14 grid + cls, C=576 / 192) against the float64 reference."""
    c = 192 if per_image else 576
    tensors, grad = make_inputs(32, c, (14, 14), 1, 3, per_image, not per_image, per_image, torch.bfloat16, "cuda", 5)
    ref = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]
    out, grads = outputs_and_grads(local_conv, tensors, grad, (14, 14), 1)
    ref_out, ref_grads = outputs_and_grads(local_conv_reference, ref, grad.double().cpu(), (14, 14), 1)
    assert relative_error(out.cpu(), ref_out) < 1e-2
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-2
