"""The delta-rule references against each other and against the rule written out (float64, CPU)."""
from __future__ import annotations

import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.delta_rule import (
    delta_rule_bidirectional,
    delta_rule_bidirectional_reference,
    delta_rule_chunked_reference,
    delta_rule_recurrent_reference,
    l2_normalize,
    unit_lower_inverse,
)
from vitzoo.ops.testing import relative_error

from .cases import bidirectional_recurrent, make_inputs, needs_interpreter


@pytest.mark.parametrize("n", [1, 7, 64, 65, 197])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_equals_recurrent(n, reverse):
    q, k, v, beta = make_inputs(2, n, 2, 16, dv=24, seed=n)
    q, k = l2_normalize(q), l2_normalize(k)
    ref = delta_rule_recurrent_reference(q, k, v, beta, reverse=reverse)
    out = delta_rule_chunked_reference(q, k, v, beta, reverse=reverse)
    assert out.shape == (2, n, 2, 24) and out.dtype == torch.float64
    assert relative_error(out, ref) < 1e-12


def test_bidirectional_reference_beta_logits_are_the_sigmoid():
    q, k, v, beta = make_inputs(1, 20, 2, 8, seed=4)
    logits = 6 * beta - 3
    ref = bidirectional_recurrent(q, k, v, torch.sigmoid(logits))
    assert relative_error(delta_rule_bidirectional_reference(q, k, v, logits, beta_logits=True), ref) < 1e-12
    assert relative_error(delta_rule_bidirectional(q, k, v, logits, beta_logits=True), ref) < 1e-12


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


@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_reference_is_the_delta_rule(reverse):
    """Every output token of both scan directions against the rule written out per (batch, head), with a scale."""
    b, n, h, dk, dv, scale = 2, 6, 3, 4, 5, 0.7
    q, k, v, beta = make_inputs(b, n, h, dk, dv=dv, seed=2)
    expected = torch.empty(b, n, h, dv, dtype=torch.float64)
    eye = torch.eye(dk, dtype=torch.float64)
    for i in range(b):
        for j in range(h):
            state = torch.zeros(dk, dv, dtype=torch.float64)
            for t in (reversed(range(n)) if reverse else range(n)):
                kt, vt, bt = k[i, t, j], v[i, t, j], beta[i, t, j]
                state = (eye - bt * torch.outer(kt, kt)) @ state + bt * torch.outer(kt, vt)
                expected[i, t, j] = state.T @ (scale * q[i, t, j])
    out = delta_rule_recurrent_reference(q, k, v, beta, scale=scale, reverse=reverse)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("backend, dtype", [
    ("auto", torch.float32),
    ("auto", torch.float64),
    pytest.param("triton", torch.float64, marks=needs_interpreter),
])
def test_dispatch_on_cpu_uses_reference(monkeypatch, backend, dtype):
    """CPU tensors never reach the kernels' entry point under the default backend, nor float64 under any backend."""
    from vitzoo.ops.delta_rule import function

    def no_kernels(*args, **kwargs):
        raise AssertionError("the Triton entry point ran")

    monkeypatch.setattr(function, "delta_rule_triton", no_kernels)
    set_backend(backend)
    q, k, v, beta = make_inputs(1, 9, 2, 16, dtype=dtype)
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

