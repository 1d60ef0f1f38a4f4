"""The norm kernels against the float64 reference, forward and every gradient.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.layer_norm import (
    add_layer_norm,
    add_layer_norm_reference,
    layer_norm,
    layer_norm_reference,
    rms_norm,
    rms_norm_reference,
)
from vitzoo.ops.testing import assert_matches_reference, relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(shape, with_weight, with_bias, dtype, device, seed, strided=False):
    """Fresh random rows (offset and scaled, never zeros), optionally a strided slice of wider rows."""
    gen = torch.Generator().manual_seed(seed)
    width = shape[-1]
    wide = torch.randn(*shape[:-1], 3 * width, generator=gen, dtype=torch.float64) * 2 + 0.7
    x = wide[..., width:2 * width] if strided else wide[..., :width].contiguous()
    weight = torch.randn(width, generator=gen, dtype=torch.float64) if with_weight else None
    bias = torch.randn(width, generator=gen, dtype=torch.float64) if with_bias else None
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    cast = [t.to(device=device, dtype=dtype if t is x else torch.float32) if t is not None else None
            for t in (x, weight, bias)]
    return [t.requires_grad_() if t is not None else None for t in cast], grad.to(device, dtype)


def _run(fn, tensors, grad, rms, eps):
    x, weight, bias = tensors
    out = fn(x, weight, eps=eps) if rms else fn(x, weight, bias, eps=eps)
    live = [t for t in tensors if t is not None]
    return out, torch.autograd.grad(out, live, grad)


CASES = [  # (shape, weight, bias, rms, strided)
    ((3, 5, 7), True, True, False, False),     # odd width in one tile, leading dims flattened
    ((2, 33, 37), True, True, False, True),    # several row blocks, strided rows
    ((70, 192), True, True, False, False),     # DeiT-T width, rows over several programs
    ((4, 9, 64), False, False, False, False),  # ZeroS's per-head norm: no affine
    ((5, 11, 64), True, False, True, True),    # DeltaNet's RMS head norm
    ((3, 13), False, False, True, False),      # RMS without weight
]


@needs_kernels
@pytest.mark.parametrize("shape, with_weight, with_bias, rms, strided", CASES)
def test_kernel_matches_float64_reference(shape, with_weight, with_bias, rms, strided):
    set_backend("triton")
    try:
        tensors, grad = _inputs(shape, with_weight, with_bias, torch.float32, DEVICE, 3 + len(shape), strided)
        reference_tensors = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]
        out, grads = _run(rms_norm if rms else layer_norm, tensors, grad, rms, 1e-5)
        ref_out, ref_grads = _run(rms_norm_reference if rms else layer_norm_reference, reference_tensors,
                                  grad.double().cpu(), rms, 1e-5)
    finally:
        set_backend("auto")
    assert out.dtype == torch.float32 and out.shape == torch.Size(shape)
    assert_matches_reference(out, grads, ref_out, ref_grads, 1e-5)


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """Outputs are fresh buffers: poisoning the allocator's memory must not leak into them."""
    set_backend("triton")
    try:
        (x, weight, bias), grad = _inputs((3, 21, 24), True, True, torch.float32, DEVICE, 5)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        out = layer_norm(x, weight, bias)
        grads = torch.autograd.grad(out, (x, weight, bias), grad)
    finally:
        set_backend("auto")
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)


@needs_cuda
@pytest.mark.parametrize("rms", [False, True])
def test_bf16_at_model_size(rms):
    """bf16 rows at DeiT-T size (32 x 197 tokens of 192) with fp32 parameters, against float64."""
    tensors, grad = _inputs((32, 197, 192), True, not rms, torch.bfloat16, "cuda", 11)
    reference_tensors = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]
    out, grads = _run(rms_norm if rms else layer_norm, tensors, grad, rms, 1e-6)
    ref_out, ref_grads = _run(rms_norm_reference if rms else layer_norm_reference, reference_tensors,
                              grad.double().cpu(), rms, 1e-6)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.cpu(), ref_out) < 1e-2
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-2


@needs_cuda
def test_torch_compile_fullgraph_matches_eager():
    tensors, grad = _inputs((8, 50, 192), True, True, torch.bfloat16, "cuda", 13)
    eager, eager_grads = _run(layer_norm, tensors, grad, False, 1e-6)
    compiled_fn = torch.compile(layer_norm, fullgraph=True)
    compiled, compiled_grads = _run(compiled_fn, tensors, grad, False, 1e-6)
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)



@needs_kernels
@pytest.mark.parametrize("rms", [False, True])
def test_inference_launch_matches_reference(rms, monkeypatch):
    """Without gradients the output is launched alone (no statistics): fresh buffers, the reference's values."""
    set_backend("triton")
    try:
        (x, weight, bias), _ = _inputs((3, 17, 40), True, not rms, torch.float32, DEVICE, 9, strided=True)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        with torch.no_grad():
            out = rms_norm(x, weight, eps=1e-5) if rms else layer_norm(x, weight, bias, eps=1e-5)
    finally:
        set_backend("auto")
    x64, w64 = x.detach().double().cpu(), weight.detach().double().cpu()
    if rms:
        expected = rms_norm_reference(x64, w64, 1e-5)
    else:
        expected = layer_norm_reference(x64, w64, bias.detach().double().cpu(), 1e-5)
    assert relative_error(out.cpu(), expected) < 1e-5


def _fresh(t):
    """Another tensor of ``t``'s values, shape, strides, dtype and device (new storage, so a new address)."""
    return None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t)


@needs_kernels
@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm", "rms_norm", "gated_rms_norm"])
def test_inference_calls_reuse_their_kept_launch(op, monkeypatch):
    """An eager call with nothing to differentiate and the key of an earlier one (shapes, strides, dtypes, devices,
    alignment, eps) skips the checks and launches the kept launch; a new key is checked and kept again, calls with
    gradients are checked every time, and every call matches float64 (poisoned buffers)."""
    from vitzoo.ops.layer_norm import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a, **kw: checks.append(a[0]) or check(*a, **kw))
    (x, weight, bias), _ = _inputs((3, 17, 40), True, True, torch.float32, DEVICE, 51)
    x, weight, bias = x.detach(), weight.detach(), bias.detach()
    second = torch.randn_like(x) * 0.5 + 0.2
    update = second if op == "add_layer_norm" else None
    gate = second if op == "gated_rms_norm" else None

    def call(x, weight, bias, eps=1e-5, update=update, gate=gate):
        if op == "layer_norm":
            return layer_norm(x, weight, bias, eps)
        if op == "add_layer_norm":
            return add_layer_norm(x, update, weight, bias, eps)
        return rms_norm(x, weight, eps, gate)

    def expected(x, weight, bias, eps=1e-5, update=update, gate=gate):
        x64, w64, b64 = (t.double().cpu() for t in (x, weight, bias))
        if op == "layer_norm":
            return (layer_norm_reference(x64, w64, b64, eps),)
        if op == "add_layer_norm":
            return add_layer_norm_reference(x64, update.double().cpu(), w64, b64, eps)
        return (rms_norm_reference(x64, w64, eps, None if gate is None else gate.double().cpu()),)

    offset = torch.empty(x.numel() + 2, dtype=x.dtype, device=x.device)[2:].view(x.shape)  # 8 bytes off
    offset.copy_(x)
    calls = [  # (inputs, how many checks so far)
        (dict(x=x, weight=weight, bias=bias), 1),
        (dict(x=x, weight=weight, bias=bias), 1),  # kept
        (dict(x=_fresh(x), weight=_fresh(weight), bias=_fresh(bias)), 1),  # new tensors, same key: kept
        (dict(x=x, weight=weight, bias=bias, eps=0.5), 2),  # eps
        (dict(x=x.half(), weight=weight, bias=bias, update=None if update is None else update.half(),
              gate=None if gate is None else gate.half()), 3),  # dtype
        (dict(x=x[:2], weight=weight, bias=bias, update=None if update is None else update[:2],
              gate=None if gate is None else gate[:2]), 4),  # shape
        (dict(x=offset, weight=weight, bias=bias), 5),  # alignment
        (dict(x=offset, weight=weight, bias=bias), 5),
    ]
    set_backend("triton")
    try:
        with torch.no_grad():
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            for inputs, expected_checks in calls:
                got = call(**inputs)
                got = got if isinstance(got, tuple) else (got,)
                tol = 1e-2 if inputs["x"].dtype == torch.float16 else 1e-5
                for a, b in zip(got, expected(**inputs), strict=True):
                    assert relative_error(a.cpu(), b) < tol
                assert len(checks) == expected_checks
        assert len(function._KEPT.launches) == 5
        trained = weight.clone().requires_grad_()
        for _ in range(2):  # a gradient to record: checked every time, nothing kept
            call(x, trained, bias)
        assert len(checks) == 7 and len(function._KEPT.launches) == 5
    finally:
        set_backend("auto")


@needs_kernels
def test_kept_launches_follow_the_backend_choice(monkeypatch):
    """A kept launch is not used once the backend choice says the reference: the reference runs."""
    from vitzoo.ops.layer_norm import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    references = []
    reference = function.layer_norm_reference
    monkeypatch.setattr(function, "layer_norm_reference", lambda *a: references.append(1) or reference(*a))
    x, weight, bias = torch.randn(2, 5, 16, device=DEVICE), torch.randn(16, device=DEVICE), None
    try:
        with torch.no_grad():
            set_backend("triton")
            for _ in range(2):
                layer_norm(x, weight, bias)
            assert len(function._KEPT.launches) == 1 and not references
            set_backend("reference")
            expected = layer_norm(x, weight, bias)
            assert references == [1]
            set_backend("triton")
            assert relative_error(layer_norm(x, weight, bias), expected) < 1e-5
            assert references == [1]
    finally:
        set_backend("auto")


@needs_kernels
def test_contiguous_rows_with_an_odd_stride_on_a_size_one_dim():
    """A contiguous (B, 1, N) tensor may carry any stride on its size-1 dim; its rows are still N apart."""
    set_backend("triton")
    try:
        gen = torch.Generator().manual_seed(19)
        x = (torch.randn(6 * 8, generator=gen) * 2 + 0.5).as_strided((6, 1, 8), (8, 1, 1)).to(DEVICE)
        weight, bias = torch.randn(8, generator=gen).to(DEVICE), torch.randn(8, generator=gen).to(DEVICE)
        assert x.is_contiguous() and x.stride(-2) != 8
        with torch.no_grad():
            out = layer_norm(x, weight, bias, eps=1e-5)
            total, normed = add_layer_norm(x, x, weight, bias, eps=1e-5)
    finally:
        set_backend("auto")
    x64, w64, b64 = (t.double().cpu() for t in (x, weight, bias))
    assert relative_error(out.cpu(), layer_norm_reference(x64, w64, b64, 1e-5)) < 1e-5
    assert relative_error(normed.cpu(), layer_norm_reference(2 * x64, w64, b64, 1e-5)) < 1e-5
    assert torch.equal(total.cpu(), (2 * x).cpu())


def _gated_inputs(shape, with_weight, dtype, device, seed):
    """RMS-norm inputs and a gate of x's shape, a strided slice of a wider projection (as DeltaNet's gate is not)."""
    (x, weight, _), grad = _inputs(shape, with_weight, False, dtype, device, seed, strided=True)
    gen = torch.Generator().manual_seed(seed + 1)
    gate = (torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64) * 3)[..., shape[-1]:]
    return [x, weight, gate.to(device, dtype).requires_grad_()], grad


def _run_gated(fn, tensors, grad, eps):
    x, weight, gate = tensors
    out = fn(x, weight, eps=eps, gate=gate)
    live = [t for t in tensors if t is not None]
    return out, torch.autograd.grad(out, live, grad)


@needs_kernels
@pytest.mark.parametrize("shape, with_weight", [((5, 11, 64), True), ((3, 13), False), ((2, 40, 24), True)])
def test_gated_rms_norm_kernel_matches_float64_reference(shape, with_weight):
    """rms_norm(x, weight) * silu(gate) in one pass: output and the gradients of x, weight and gate."""
    set_backend("triton")
    try:
        tensors, grad = _gated_inputs(shape, with_weight, torch.float32, DEVICE, 17 + shape[-1])
        reference_tensors = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]
        out, grads = _run_gated(rms_norm, tensors, grad, 1e-5)
        ref_out, ref_grads = _run_gated(rms_norm_reference, reference_tensors, grad.double().cpu(), 1e-5)
    finally:
        set_backend("auto")
    assert out.dtype == torch.float32 and out.shape == torch.Size(shape)
    assert_matches_reference(out, grads, ref_out, ref_grads, 1e-5)


@needs_kernels
def test_gated_inference_launch_matches_reference(monkeypatch):
    set_backend("triton")
    try:
        (x, weight, gate), _ = _gated_inputs((3, 17, 40), True, torch.float32, DEVICE, 21)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        with torch.no_grad():
            out = rms_norm(x, weight, eps=1e-5, gate=gate)
    finally:
        set_backend("auto")
    expected = rms_norm_reference(*[t.detach().double().cpu() for t in (x, weight)], 1e-5,
                                  gate.detach().double().cpu())
    assert relative_error(out.cpu(), expected) < 1e-5


@needs_cuda
def test_gated_bf16_at_model_size():
    """DeltaNet-T's output norm: bf16 heads of 64 (32 x 197 tokens, 3 heads), fp32 weight, bf16 gate."""
    tensors, grad = _gated_inputs((32, 197, 3, 64), True, torch.bfloat16, "cuda", 23)
    reference_tensors = [t.detach().double().cpu().requires_grad_() for t in tensors]
    out, grads = _run_gated(rms_norm, tensors, grad, 1e-5)
    ref_out, ref_grads = _run_gated(rms_norm_reference, reference_tensors, grad.double().cpu(), 1e-5)
    assert out.dtype == torch.bfloat16
    for got, expected in zip((out, *grads), (ref_out, *ref_grads), strict=True):
        assert relative_error(got.float().cpu(), expected) < 1e-2


def test_gate_of_another_shape_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"gate must have x's shape \(2, 3, 8\)"):
        rms_norm(torch.randn(2, 3, 8), gate=torch.randn(2, 3, 4))


def _add_inputs(shape, with_affine, dtype, device, seed, strided=False):
    """x and an update of its shape (the update a strided slice when asked), the affine parameters, and upstream
    gradients for both outputs (the sum and its norm)."""
    (x, weight, bias), grad = _inputs(shape, with_affine, with_affine, dtype, device, seed, strided)
    gen = torch.Generator().manual_seed(seed + 1)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64) * 1.5 - 0.3
    update = (wide[..., shape[-1]:] if strided else wide[..., :shape[-1]].contiguous()).to(device, dtype)
    total_grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    return [x, update.requires_grad_(), weight, bias], (total_grad, grad)


def _run_add(fn, tensors, grads, eps, outputs=(0, 1)):
    outs = fn(*tensors, eps=eps)
    live = [t for t in tensors if t is not None]
    chosen = [outs[i] for i in outputs]
    return outs, torch.autograd.grad(chosen, live, [grads[i] for i in outputs], allow_unused=True)


def _float64(tensors):
    return [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]


@needs_kernels
@pytest.mark.parametrize("shape, with_affine, strided", [((3, 5, 7), True, False), ((2, 33, 37), True, True),
                                                          ((70, 192), True, False), ((4, 9, 64), False, True)])
@pytest.mark.parametrize("outputs", [(0, 1), (1,), (0,)])
def test_add_layer_norm_kernel_matches_float64_reference(shape, with_affine, strided, outputs):
    """Both outputs and every gradient, with upstream gradients through the sum, the norm or both."""
    set_backend("triton")
    try:
        tensors, grads = _add_inputs(shape, with_affine, torch.float32, DEVICE, 31 + shape[-1], strided)
        outs, got = _run_add(add_layer_norm, tensors, grads, 1e-5, outputs)
        ref_outs, expected = _run_add(add_layer_norm_reference, _float64(tensors), [g.double().cpu() for g in grads],
                                      1e-5, outputs)
    finally:
        set_backend("auto")
    for out, ref in zip(outs, ref_outs, strict=True):
        assert out.dtype == torch.float32 and out.shape == torch.Size(shape)
        assert relative_error(out.cpu(), ref) < 1e-5
    for grad, ref in zip(got, expected, strict=True):
        if ref is None:  # the affine parameters when only the sum is used: no gradient, or a zero one
            assert grad is None or not grad.any()
        else:
            assert relative_error(grad.cpu(), ref) < 1e-5


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_add_layer_norm_equals_the_add_then_the_norm(dtype, monkeypatch):
    """The sum is x + update rounded to the dtype, and the norm is the layer-norm kernel's of that rounded sum: the
    fused path gives the separate add and norm bit for bit (inference launch, poisoned buffers)."""
    set_backend("triton")
    try:
        (x, update, weight, bias), _ = _add_inputs((3, 17, 40), True, dtype, DEVICE, 41)
        with torch.no_grad():
            separate = x + update
            expected = layer_norm(separate, weight, bias)
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            total, normed = add_layer_norm(x, update, weight, bias)
    finally:
        set_backend("auto")
    assert total.dtype == normed.dtype == dtype
    assert torch.equal(total, separate)
    assert torch.equal(normed, expected)


@needs_cuda
def test_add_layer_norm_bf16_at_model_size_and_compiled():
    """DeiT-T's residual stream (32 x 197 tokens of 192, bf16, fp32 affine) against float64, eager and compiled."""
    tensors, grads = _add_inputs((32, 197, 192), True, torch.bfloat16, "cuda", 43)
    outs, got = _run_add(add_layer_norm, tensors, grads, 1e-6)
    ref_outs, expected = _run_add(add_layer_norm_reference, _float64(tensors), [g.double().cpu() for g in grads], 1e-6)
    for value, ref in zip((*outs, *got), (*ref_outs, *expected), strict=True):
        assert relative_error(value.float().cpu(), ref) < 1e-2
    compiled_outs, compiled_grads = _run_add(torch.compile(add_layer_norm, fullgraph=True), tensors, grads, 1e-6)
    for value, eager in zip((*compiled_outs, *compiled_grads), (*outs, *got), strict=True):
        torch.testing.assert_close(value, eager)


def test_update_of_another_shape_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"update must have x's shape \(2, 3, 8\)"):
        add_layer_norm(torch.randn(2, 3, 8), torch.randn(2, 3, 4))


def test_integer_input_is_refused_by_every_entry_point():
    x = torch.arange(24).reshape(2, 3, 4)
    for op, call in (("layer_norm", lambda: layer_norm(x, torch.ones(4))), ("rms_norm", lambda: rms_norm(x)),
                     ("add_layer_norm", lambda: add_layer_norm(x, x))):
        with pytest.raises(ValueError, match=rf"^{op}: x has dtype torch.int64; use float16, bfloat16, float32"):
            call()


def test_input_checks_trace_in_a_fullgraph_compile():
    """The dtype and shape checks are plain Python on tensor metadata: torch.compile traces them without a break."""
    x, weight, bias = torch.randn(2, 3, 8), torch.randn(8), torch.randn(8)
    compiled = torch.compile(lambda *args: (layer_norm(*args), rms_norm(args[0], args[1])), fullgraph=True,
                             backend="eager")
    got = compiled(x, weight, bias)
    torch.testing.assert_close(got[0], layer_norm_reference(x, weight, bias))
    torch.testing.assert_close(got[1], rms_norm_reference(x, weight))
