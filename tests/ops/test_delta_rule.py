"""Delta rule: references against each other, the Triton kernel against the float64 recurrent reference.

Three groups:
- CPU reference tests (float64), run in the ordinary pytest process.
- Triton-interpreter tests (``test_interp_*``): on a CPU-only machine ``tests/conftest.py`` sets TRITON_INTERPRET=1
  before triton is imported, so the kernels run in the interpreter in this same process.
- GPU tests (bf16 at real sizes, torch.compile), skipped without CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

from vitzoo.ops import set_backend, triton_available
from vitzoo.ops.delta_rule import heuristics
from vitzoo.ops.delta_rule import (
    delta_rule_bidirectional,
    delta_rule_bidirectional_reference,
    delta_rule_chunked_reference,
    delta_rule_recurrent_reference,
    delta_rule_triton,
    l2_normalize,
    unit_lower_inverse,
)
from vitzoo.ops.testing import relative_error

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1" and triton_available() and not torch.cuda.is_available()
needs_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="needs the Triton interpreter: TRITON_INTERPRET=1 before triton is imported, on CPU"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(b, n, h, d, dtype=torch.float64, device="cpu", dv=None, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k = (torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, n, h, dv or d, generator=g, dtype=torch.float64)
    beta = torch.rand(b, n, h, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, beta)]


def bidirectional_recurrent(q, k, v, beta, scale=None):
    """The specification written out: both scans with the token-loop reference on L2-normalised q and k."""
    q, k = l2_normalize(q), l2_normalize(k)
    fwd = delta_rule_recurrent_reference(q, k, v, beta, scale=scale)
    bwd = delta_rule_recurrent_reference(q, k, v, beta, scale=scale, reverse=True)
    return 0.5 * (fwd + bwd)


# ------------------------------------------------------------------------------------------------ CPU references

@pytest.mark.parametrize("n", [1, 7, 64, 65, 197])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_equals_recurrent(n, reverse):
    q, k, v, beta = make_inputs(2, n, 2, 16, dv=24, seed=n)
    q, k = l2_normalize(q), l2_normalize(k)
    ref = delta_rule_recurrent_reference(q, k, v, beta, reverse=reverse)
    out = delta_rule_chunked_reference(q, k, v, beta, reverse=reverse)
    assert out.shape == (2, n, 2, 24) and out.dtype == torch.float64
    assert relative_error(out, ref) < 1e-12


def test_chunked_equals_recurrent_unnormalised_keys_and_small_chunks():
    q, k, v, beta = make_inputs(1, 37, 3, 8, seed=3)
    k = 0.3 * k  # ||k||^2 beta < 2 keeps the recurrence contractive without normalising
    ref = delta_rule_recurrent_reference(q, k, v, beta, scale=0.7)
    for chunk in (4, 16, 64):
        assert relative_error(delta_rule_chunked_reference(q, k, v, beta, scale=0.7, chunk_size=chunk), ref) < 1e-12


def test_reverse_scan_is_flipped_forward_scan():
    q, k, v, beta = make_inputs(2, 23, 2, 16, seed=1)
    q, k = l2_normalize(q), l2_normalize(k)
    rev = delta_rule_recurrent_reference(q, k, v, beta, reverse=True)
    flipped = delta_rule_recurrent_reference(q.flip(1), k.flip(1), v.flip(1), beta.flip(1)).flip(1)
    torch.testing.assert_close(rev, flipped, rtol=1e-12, atol=1e-12)


def test_recurrent_reference_is_the_delta_rule():
    q, k, v, beta = make_inputs(1, 5, 1, 4, seed=2)
    state = torch.zeros(4, 4, dtype=torch.float64)
    for t in range(5):
        kt, vt, bt = k[0, t, 0], v[0, t, 0], beta[0, t, 0]
        state = (torch.eye(4, dtype=torch.float64) - bt * torch.outer(kt, kt)) @ state + bt * torch.outer(kt, vt)
    expected_last = state.T @ (q[0, 4, 0] * 0.5)
    out = delta_rule_recurrent_reference(q, k, v, beta)
    torch.testing.assert_close(out[0, 4, 0], expected_last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 65, 197])
def test_bidirectional_reference_is_mean_of_scans(n):
    q, k, v, beta = make_inputs(1, n, 2, 24, seed=n)
    out = delta_rule_bidirectional_reference(q, k, v, beta)
    assert relative_error(out, bidirectional_recurrent(q, k, v, beta)) < 1e-12
    unnormalised = delta_rule_bidirectional_reference(0.2 * q, 0.2 * k, v, beta, qk_l2norm=False, scale=1.0)
    expected = 0.5 * (delta_rule_recurrent_reference(0.2 * q, 0.2 * k, v, beta, scale=1.0)
                      + delta_rule_recurrent_reference(0.2 * q, 0.2 * k, v, beta, scale=1.0, reverse=True))
    assert relative_error(unnormalised, expected) < 1e-12


@pytest.mark.parametrize("c", [1, 2, 3, 7, 16, 33, 64])
def test_unit_lower_inverse_equals_triangular_solve(c):
    """The product-form inverse the references use (ONNX has no triangular solve) is the exact (I + A)^-1."""
    generator = torch.Generator().manual_seed(c)
    a = 0.5 * torch.randn(2, 3, c, c, dtype=torch.float64, generator=generator).tril(-1)
    eye = torch.eye(c, dtype=torch.float64)
    expected = torch.linalg.solve_triangular(eye + a, eye.expand_as(a), upper=False, unitriangular=True)
    assert relative_error(unit_lower_inverse(a), expected) < 1e-13


def test_dispatch_on_cpu_uses_reference():
    set_backend("reference")
    q, k, v, beta = make_inputs(1, 9, 2, 16, dtype=torch.float32)
    torch.testing.assert_close(delta_rule_bidirectional(q, k, v, beta),
                               delta_rule_bidirectional_reference(q, k, v, beta))


def test_gradcheck_references():
    q, k, v, beta = (t.requires_grad_() for t in make_inputs(1, 7, 1, 4, seed=4))
    assert torch.autograd.gradcheck(
        lambda *x: delta_rule_bidirectional_reference(*x), (q, k, v, beta), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda *x: delta_rule_chunked_reference(*x, chunk_size=4, reverse=True), (q, k, v, beta), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda *x: delta_rule_recurrent_reference(*x), (q, k, v, beta), eps=1e-6, atol=1e-6)


def test_bad_shapes_raise():
    q, k, v, beta = make_inputs(1, 5, 2, 8)
    with pytest.raises(ValueError, match="beta"):
        delta_rule_bidirectional_reference(q, k, v, beta[:, :4])
    with pytest.raises(ValueError, match="same shape"):
        delta_rule_chunked_reference(q, k[..., :4], v, beta)


# ------------------------------------------------------------------------------------ Triton under the interpreter

def poisoned_view(t: torch.Tensor, pad: int) -> torch.Tensor:
    """``t`` as a strided view into a NaN-filled buffer that is wider on D and H: any read outside the view is NaN."""
    b, n, h, d = t.shape
    buf = torch.full((b, n, h + 1, d + pad), float("nan"), dtype=t.dtype)
    view = buf[:, :, :h, :d]
    view.copy_(t)
    return view


@needs_interpreter
@pytest.mark.parametrize("d,dv", [(16, 16), (24, 24), (32, 32), (16, 72)])
@pytest.mark.parametrize("n", [1, 7, 64, 65, 197])
def test_interp_kernel_matches_recurrent_reference(n, d, dv):
    """dv=72: the chunk-parallel kernels take the whole value dim as a masked block of 128, the two recurrences
    split it into value blocks of 64 (the second one partial)."""
    b, h = (2, 2) if n < 100 else (1, 2)
    q, k, v, beta = make_inputs(b, n, h, d, dv=dv, seed=10 * n + d)
    grad = torch.randn(b, n, h, dv, dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    ref = bidirectional_recurrent(*leaves)
    ref.backward(grad)

    inputs = [poisoned_view(t.float(), pad=5).requires_grad_() for t in (q, k, v)] + [beta.float().requires_grad_()]
    out = delta_rule_triton(*inputs)
    assert out.dtype == torch.float32 and out.shape == (b, n, h, dv)
    out.backward(poisoned_view(grad.float(), pad=3))
    assert not out.isnan().any()
    assert relative_error(out, ref) < 1e-5
    for name, got, want in zip("qkvb", inputs, leaves, strict=True):
        assert not got.grad.isnan().any(), name
        assert relative_error(got.grad, want.grad) < 1e-5, name


@needs_interpreter
@pytest.mark.parametrize("directions", ["forward", "reverse"])
def test_interp_one_direction_and_no_l2norm(directions):
    q, k, v, beta = make_inputs(1, 70, 2, 16, seed=7)
    q, k = 0.3 * q, 0.3 * k
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    ref = delta_rule_recurrent_reference(*leaves, scale=0.9, reverse=directions == "reverse")
    grad = torch.randn_like(ref)
    ref.backward(grad)
    inputs = [t.float().requires_grad_() for t in (q, k, v, beta)]
    out = delta_rule_triton(*inputs, scale=0.9, qk_l2norm=False, directions=directions)
    out.backward(grad.float())
    assert relative_error(out, ref) < 1e-5
    for got, want in zip(inputs, leaves, strict=True):
        assert relative_error(got.grad, want.grad) < 1e-5


@needs_interpreter
def test_interp_half_inputs_and_expanded_grad():
    set_backend("triton")  # delta_rule_bidirectional dispatches on it
    q, k, v, beta = make_inputs(1, 33, 2, 16, seed=8)
    ref = bidirectional_recurrent(q, k, v, beta)
    out = delta_rule_bidirectional(*(t.half() for t in (q, k, v, beta)))
    assert out.dtype == torch.float16 and relative_error(out, ref) < 3e-3
    inputs = [t.float().requires_grad_() for t in (q, k, v, beta)]
    delta_rule_bidirectional(*inputs).sum().backward()  # a stride-0 incoming gradient
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    bidirectional_recurrent(*leaves).sum().backward()
    for got, want in zip(inputs, leaves, strict=True):
        assert relative_error(got.grad, want.grad) < 1e-5


@needs_interpreter
@pytest.mark.parametrize("n", [49, 197])
def test_interp_fp16_products_forward_and_gradients(n):
    """fp16 inputs take the 16-bit product path (hi/lo splits of the fp32 operands in the WY kernel, see _dot_split;
    T^T saved in fp16 for the backward), which the interpreter runs correctly for fp16 (not bf16). The reference sees
    the same fp16-rounded values in float64, so the error measured is the kernels' own arithmetic."""
    q, k, v, beta = (t.half().double() for t in make_inputs(1, n, 2, 32, seed=n))
    grad = torch.randn(1, n, 2, 32, dtype=torch.float64).half()
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    ref = bidirectional_recurrent(*leaves)
    ref.backward(grad.double())
    inputs = [t.half().requires_grad_() for t in (q, k, v, beta)]
    out = delta_rule_triton(*inputs)
    out.backward(grad)
    assert out.dtype == torch.float16
    errors = {"o": relative_error(out, ref)}
    errors |= {f"d{x}": relative_error(g.grad, w.grad) for x, g, w in zip("qkvb", inputs, leaves, strict=True)}
    assert all(e < 1.5e-3 for e in errors.values()), errors


@needs_interpreter
def test_interp_mixed_dtypes_raise():
    q, k, v, beta = make_inputs(1, 5, 2, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="share a dtype"):
        delta_rule_triton(q.half(), k, v, beta)


# ------------------------------------------------------------------------------------------------------ GPU only

@needs_cuda
@pytest.mark.parametrize("b,n,h,d", [(8, 197, 6, 64), (2, 785, 6, 64), (1, 3137, 3, 64), (2, 197, 4, 24),
                                     (2, 300, 2, 128)])
def test_gpu_bf16_matches_float64_recurrent(b, n, h, d):
    q, k, v, beta = make_inputs(b, n, h, d, device="cuda", seed=n + d)
    grad = torch.randn(b, n, h, d, dtype=torch.float64, device="cuda")
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    ref = bidirectional_recurrent(*leaves)
    ref.backward(grad)
    inputs = [t.bfloat16().requires_grad_() for t in (q, k, v, beta)]
    out = delta_rule_triton(*inputs)
    out.backward(grad.bfloat16())
    assert out.dtype == torch.bfloat16
    errors = {"o": relative_error(out, ref)}
    errors |= {f"d{x}": relative_error(g.grad, w.grad) for x, g, w in zip("qkvb", inputs, leaves, strict=True)}
    print(f"bf16 B={b} N={n} H={h} d={d} rel err: " + " ".join(f"{key}={e:.2e}" for key, e in errors.items()))
    assert all(e <= 1e-2 for e in errors.values()), errors


@needs_cuda
def test_gpu_long_sequence_no_nan():
    q, k, v, beta = make_inputs(1, 12545, 2, 64, device="cuda", seed=5)
    ref = delta_rule_bidirectional_reference(q, k, v, beta)
    inputs = [t.bfloat16().requires_grad_() for t in (q, k, v, beta)]
    out = delta_rule_triton(*inputs)
    out.float().square().mean().backward()
    assert not out.isnan().any() and all(not t.grad.isnan().any() for t in inputs)
    print(f"bf16 N=12545 rel err o={relative_error(out, ref):.2e}")
    assert relative_error(out, ref) <= 1e-2


@needs_cuda
def test_gpu_torch_compile():
    q, k, v, beta = make_inputs(4, 197, 6, 64, device="cuda", dtype=torch.bfloat16, seed=6)
    w = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)

    def block(q, k, v, beta):
        return (delta_rule_bidirectional(q, k, v, beta) @ w).float().square().mean()

    outs = []
    for fn in (block, torch.compile(block, fullgraph=True)):
        inputs = [t.clone().requires_grad_() for t in (q, k, v, beta)]
        loss = fn(*inputs)
        loss.backward()
        outs.append([loss] + [t.grad for t in inputs])
    for eager, compiled in zip(*outs, strict=True):
        assert relative_error(compiled, eager) < 1e-3


def test_recurrences_split_the_value_dim_only_to_give_every_sm_a_program(monkeypatch):
    """Value blocks of the two recurrences: the whole value dim (up to 64) while (batch, head, direction) sequences
    alone give each of the S multiprocessors a program; halved below that, down to SEQ_BV_MIN."""
    monkeypatch.setattr(heuristics, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert heuristics.block_sizes(64, 64, 192, gpu) == (64, 64, 64)  # N=3137 in the benchmark: 16 x 6 x 2 sequences
    assert heuristics.block_sizes(64, 64, 131, gpu) == (64, 64, 32)
    assert heuristics.block_sizes(64, 64, 48, gpu) == (64, 64, heuristics.SEQ_BV_MIN)  # N=12545: 4 x 6 x 2
    assert heuristics.block_sizes(48, 128, 192, gpu) == (64, 128, 64)  # value dims above 64 always take blocks of 64
