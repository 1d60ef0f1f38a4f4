"""FEM's kernels (the values before its prior, the output after it) against the float64 references, forward and every
gradient.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.free_energy import (
    free_energy_mix,
    free_energy_mix_reference,
    free_energy_values,
    free_energy_values_reference,
)
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _value_inputs(b, n, h, dv, dtype, device, seed, scale):
    """v a slice of a fused projection (token stride (2 + 1) H Dv), as the mixer passes it; ``scale`` large enough
    clips some of it (|beta v| > 40)."""
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randn(b, n, 3, h, dv, generator=gen, dtype=torch.float64) * scale).to(device, dtype)[:, :, 2]
    beta = (0.5 + 2.5 * torch.rand(h, dv, generator=gen, dtype=torch.float64)).to(device, dtype)
    grad = torch.randn(b, n, h, 2 * dv, generator=gen, dtype=torch.float64)
    return [t.detach().requires_grad_() for t in (v, beta)], grad


VALUE_CASES = [  # (b, n, h, dv, scale)
    (2, 37, 3, 24, 1.0),            # odd N in one block, a head dim below its tile
    (1, 130, 2, 16, 20.0),          # tokens over three blocks, a quarter of the values clipped
    (3, 9, 2, 5, 3.0),              # a tiny head dim
]


@needs_kernels
@pytest.mark.parametrize("b, n, h, dv, scale", VALUE_CASES)
def test_values_kernel_matches_float64_reference(b, n, h, dv, scale):
    set_backend("triton")
    try:
        tensors, grad = _value_inputs(b, n, h, dv, torch.float32, DEVICE, 3 * n + dv, scale)
        reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
        values, shift = free_energy_values(*tensors)
        ref_values, ref_shift = free_energy_values_reference(*reference)
        grads = torch.autograd.grad(values, tensors, grad.to(values.device, values.dtype))
        ref_grads = torch.autograd.grad(ref_values, reference, grad)
    finally:
        set_backend("auto")
    assert values.dtype == shift.dtype == torch.float32 and not shift.requires_grad
    assert values.shape == (b, n, h, 2 * dv) and shift.shape == (b, 1, h, dv)
    assert relative_error(values.cpu(), ref_values) < 1e-5 and relative_error(shift.cpu(), ref_shift) < 1e-6
    for name, got, expected in zip(("v", "beta"), grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5, name
    if scale > 10:  # clipping is exercised: some v get no gradient, and beta's gradient has the bounds' part
        assert (ref_grads[0] == 0).float().mean() > 0.1


@needs_kernels
@pytest.mark.parametrize("b, n, h, programs", [(1, 300, 2, 64), (2, 200, 1, 8)])
def test_values_forward_split_over_token_chunks_matches_float64_reference(b, n, h, programs, monkeypatch):
    """Where the (batch, head) programs alone would leave the GPU idle, the values' forward runs two launches over
    chunks of tokens (five and four chunks here): values, shift, gradients and the kept inference launches (allocator
    poisoned) against float64."""
    from vitzoo.ops.free_energy import function, heuristics

    monkeypatch.setattr(heuristics, "_INTERPRETER_PROGRAMS", programs)
    monkeypatch.setattr(heuristics, "VALUES_SPLIT_MIN_BLOCKS", 2)  # these short sequences split too
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    assert heuristics.values_chunks(b * h, n, torch.device(DEVICE))[0] > 1
    tensors, grad = _value_inputs(b, n, h, 16, torch.float32, DEVICE, n + programs, 20.0)
    reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
    expected = free_energy_values_reference(*reference)
    ref_grads = torch.autograd.grad(expected[0], reference, grad)
    set_backend("triton")
    try:
        values, shift = free_energy_values(*tensors)
        grads = torch.autograd.grad(values, tensors, grad.to(values.device, values.dtype))
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        with torch.no_grad():
            kept = [free_energy_values(*[t.detach().clone() for t in tensors]) for _ in range(2)]
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 1
    for got_values, got_shift in ((values, shift), *kept):
        assert relative_error(got_values.cpu(), expected[0]) < 1e-5
        assert relative_error(got_shift.cpu(), expected[1]) < 1e-6
    for name, got, want in zip(("v", "beta"), grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), want) < 1e-5, name


@needs_kernels
def test_values_kernel_writes_the_dtype_asked_for():
    """Values in bf16 (the dtype a bf16 prior reads): the kernel rounds its fp32 result once, and takes a bf16
    gradient."""
    set_backend("triton")
    try:
        tensors, grad = _value_inputs(2, 37, 3, 24, torch.float32, DEVICE, 31, 20.0)
        reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
        values, _ = free_energy_values(*tensors, torch.bfloat16)
        grads = torch.autograd.grad(values, tensors, grad.to(values.device, values.dtype))
        ref_values, _ = free_energy_values_reference(*reference)
        ref_grads = torch.autograd.grad(ref_values, reference, grad.bfloat16().double())
    finally:
        set_backend("auto")
    assert values.dtype == torch.bfloat16
    assert relative_error(values.float().cpu(), ref_values) < 1e-2
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5


@needs_kernels
def test_values_kernel_writes_every_output(monkeypatch):
    set_backend("triton")
    try:
        tensors, grad = _value_inputs(2, 70, 2, 16, torch.float32, DEVICE, 3, 20.0)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        values, shift = free_energy_values(*tensors)
        grads = torch.autograd.grad(values, tensors, grad.to(values.device, values.dtype))
        with torch.no_grad():
            inference = free_energy_values(*tensors)
    finally:
        set_backend("auto")
    assert all(torch.isfinite(t).all() for t in (values, shift, *grads, *inference))


def _inputs(b, n, h, dv, dtype, device, seed, gate_scale=2.0, empty_reads=0.0):
    """Fresh random inputs as the mixer passes them, never zeros: the read in the layout of the softmax prior's output
    (a transposed (B, H, N, 2 Dv)), the gate logits a slice of a wider projection; ``empty_reads`` of the exponential
    reads are exactly 0 (a linear prior with no mass), ``gate_scale`` reaches softplus's linear branch (x > 20)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, h, n, dv, generator=gen, dtype=torch.float64)
    exp_read = torch.exp(-5 * torch.rand(b, h, n, dv, generator=gen, dtype=torch.float64))
    exp_read = torch.where(torch.rand(exp_read.shape, generator=gen, dtype=torch.float64) < empty_reads, 0.0, exp_read)
    read = torch.cat([mean, exp_read], dim=-1).to(device, dtype).transpose(1, 2)
    shift = (torch.rand(b, 1, h, dv, generator=gen, dtype=torch.float64) * 6 - 3).to(device, dtype)
    beta = (0.5 + 2.5 * torch.rand(h, dv, generator=gen, dtype=torch.float64)).to(device, dtype)
    wide = torch.randn(b, n, 2 * h * dv + 3, generator=gen, dtype=torch.float64) * gate_scale
    gate_logits = wide.to(device, dtype)[..., 3:]
    read, beta, gate_logits = (t.detach().requires_grad_() for t in (read, beta, gate_logits))
    grad = torch.randn(b, n, h * dv, generator=gen, dtype=torch.float64)
    return (read, shift, beta, gate_logits), grad


def _run(fn, tensors, grad):
    out = fn(*tensors)
    read, _, beta, gate_logits = tensors
    return out, torch.autograd.grad(out, (read, beta, gate_logits), grad.to(out.device, out.dtype))


CASES = [  # (b, n, h, dv, gate_scale, empty_reads)
    (2, 37, 3, 24, 2.0, 0.0),       # odd N in one block, a head dim below its tile
    (1, 130, 2, 16, 12.0, 0.1),     # tokens over three blocks, softplus's linear branch, empty reads
    (3, 9, 2, 5, 1.0, 0.0),         # tokens of several batches in one block, a tiny head dim
]


@needs_kernels
@pytest.mark.parametrize("b, n, h, dv, gate_scale, empty_reads", CASES)
def test_kernel_matches_float64_reference(b, n, h, dv, gate_scale, empty_reads):
    set_backend("triton")
    try:
        tensors, grad = _inputs(b, n, h, dv, torch.float32, DEVICE, 5 * n + dv, gate_scale, empty_reads)
        reference = [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in tensors]
        out, grads = _run(free_energy_mix, tensors, grad)
        ref_out, ref_grads = _run(free_energy_mix_reference, reference, grad)
    finally:
        set_backend("auto")
    assert out.dtype == torch.float32 and out.shape == (b, n, h * dv)
    assert relative_error(out.cpu(), ref_out) < 1e-5
    for name, got, expected in zip(("read", "beta", "gate_logits"), grads, ref_grads, strict=True):
        assert got.shape == expected.shape, name
        assert relative_error(got.cpu(), expected) < 1e-5, name


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """Outputs are fresh buffers: poisoning the allocator's memory must not leak into them."""
    set_backend("triton")
    try:
        tensors, grad = _inputs(2, 70, 2, 16, torch.float32, DEVICE, 3)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        out, grads = _run(free_energy_mix, tensors, grad)
    finally:
        set_backend("auto")
    assert all(torch.isfinite(t).all() for t in (out, *grads))


@needs_kernels
def test_inference_launch_matches_reference():
    set_backend("triton")
    try:
        tensors, _ = _inputs(2, 70, 2, 16, torch.float32, DEVICE, 5)
        with torch.no_grad():
            out = free_energy_mix(*tensors)
    finally:
        set_backend("auto")
    expected = free_energy_mix_reference(*[t.detach().double().cpu() for t in tensors])
    assert relative_error(out.cpu(), expected) < 1e-5


@needs_kernels
def test_inference_calls_reuse_their_kept_launches(monkeypatch):
    """Both ops: an eager call without gradients and with the key of an earlier one skips the checks and repeats the
    kept launch on its own tensors; another shape is checked again; every call matches float64 (poisoned buffers)."""
    from vitzoo.ops.free_energy import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    for name in ("check_inputs", "check_value_inputs"):
        check = getattr(function, name)
        monkeypatch.setattr(function, name, lambda *a, check=check: checks.append(1) or check(*a))
    set_backend("triton")
    try:
        with torch.no_grad():
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            for seed, n, expected_checks in [(1, 37, 2), (2, 37, 2), (3, 41, 4), (4, 41, 4)]:
                (v, beta), _ = _value_inputs(2, n, 3, 8, torch.float32, DEVICE, seed, 20.0)
                values, shift = free_energy_values(v, beta)
                expected = free_energy_values_reference(v.detach().double().cpu(), beta.detach().double().cpu())
                assert all(relative_error(a.cpu(), b) < 1e-5 for a, b in zip((values, shift), expected, strict=True))
                tensors, _ = _inputs(2, n, 3, 8, torch.float32, DEVICE, seed)
                out = free_energy_mix(*tensors)
                expected = free_energy_mix_reference(*[t.detach().double().cpu() for t in tensors])
                assert relative_error(out.cpu(), expected) < 1e-5
                assert len(checks) == expected_checks
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 4


@needs_cuda
def test_bf16_at_model_size():
    """bf16 reads and gate logits (what a bf16-autocast FEM-T passes) at FEM-T size (32 x 197 tokens, 3 heads of 32)
    against float64."""
    tensors, grad = _inputs(32, 197, 3, 32, torch.float32, "cuda", 11)
    read, shift, beta, gate_logits = tensors
    tensors = (read.detach().bfloat16().requires_grad_(), shift, beta, gate_logits.detach().bfloat16().requires_grad_())
    reference = [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in tensors]
    out, grads = _run(free_energy_mix, tensors, grad)
    ref_out, ref_grads = _run(free_energy_mix_reference, reference, grad)
    assert out.dtype == torch.bfloat16
    for got, expected in zip((out, *grads), (ref_out, *ref_grads), strict=True):
        assert relative_error(got.float().cpu(), expected) < 1e-2


@needs_cuda
def test_torch_compile_fullgraph_traces_the_reference():
    """Under torch.compile the op is its PyTorch reference, fused by Inductor: no graph break, the eager values."""
    tensors, grad = _inputs(4, 50, 3, 32, torch.float32, "cuda", 13)
    eager, eager_grads = _run(free_energy_mix, tensors, grad)
    compiled, compiled_grads = _run(torch.compile(free_energy_mix, fullgraph=True), tensors, grad)
    for got, expected in zip((compiled, *compiled_grads), (eager, *eager_grads), strict=True):
        assert relative_error(got, expected) < 1e-5


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"v must be \(B, N, H, Dv\) and beta \(H, Dv\)"):
        free_energy_values(torch.randn(2, 5, 3, 4), torch.rand(3, 5))
    (read, shift, beta, gate_logits), _ = _inputs(2, 5, 3, 4, torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match=r"read must be \(B, N, H, 2 Dv\)"):
        free_energy_mix(read[..., :7], shift, beta, gate_logits)
    with pytest.raises(ValueError, match=r"beta must be \(3, 4\)"):
        free_energy_mix(read, shift, beta[:, :3], gate_logits)
    with pytest.raises(ValueError, match=r"gate_logits must be \(2, 5, 24\)"):
        free_energy_mix(read, shift, beta, gate_logits[..., :20])
    with pytest.raises(ValueError, match="shift must not require a gradient"):
        free_energy_mix(read, shift.requires_grad_(), beta, gate_logits)


@needs_kernels
def test_kernel_takes_a_bf16_read():
    """A prior that reads bf16 values returns a bf16 read: the kernels load it as it is and compute in fp32; its
    gradient comes back in bf16."""
    set_backend("triton")
    try:
        (read, shift, beta, gate_logits), grad = _inputs(2, 37, 3, 24, torch.float32, DEVICE, 29)
        read = read.detach().bfloat16().requires_grad_()
        tensors = (read, shift, beta, gate_logits)
        reference = [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in tensors]
        out, grads = _run(free_energy_mix, tensors, grad)
        ref_out, ref_grads = _run(free_energy_mix_reference, reference, grad)
    finally:
        set_backend("auto")
    assert grads[0].dtype == torch.bfloat16
    assert relative_error(out.cpu(), ref_out) < 1e-5
    for got, expected, tol in zip(grads, ref_grads, (1e-2, 1e-5, 1e-5), strict=True):
        assert relative_error(got.float().cpu(), expected) < tol
