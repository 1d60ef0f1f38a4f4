"""ZeroS's weighting kernels against the float64 reference, forward and every gradient.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error
from vitzoo.ops.zeros_weights import zeros_weights, zeros_weights_reference

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(b, n, h, d, gates, log_tau, dtype, device, seed):
    """Fresh random inputs as the mixer passes them: u a strided slice of the fused projection, never zeros."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, n, 4, h, d, generator=gen, dtype=torch.float64)
    u = wide.to(device, dtype)[:, :, 3]  # unit stride on d, token stride 4 h d
    gate_logits = (torch.randn(b, n, gates, h, generator=gen, dtype=torch.float64) * 2).to(device, dtype)
    mu = torch.randn(h, d, generator=gen, dtype=torch.float64).to(device, torch.float32)
    log_tau = torch.tensor(log_tau, dtype=torch.float64).to(device, torch.float32)
    tensors = [t.detach().requires_grad_() for t in (u, gate_logits, mu, log_tau)]
    grads = [torch.randn(b, n, h, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    return tensors, grads


def _run(fn, tensors, grads):
    key_weights, query_weights = fn(*tensors)
    weights = (key_weights, query_weights)
    outputs_grads = [g.to(w.device, w.dtype) for g, w in zip(grads, weights, strict=True)]
    return weights, torch.autograd.grad(weights, tensors, outputs_grads)


CASES = [  # (b, n, h, d, gates, log_tau)
    (2, 37, 3, 24, 2, [0.3, -1.2, 2.0]),            # odd N in one block, odd-ish head dim
    (1, 130, 2, 16, 3, [0.0, 1.5]),                  # N over three blocks, the zero-order gate
    (2, 9, 2, 8, 2, [35.0, -60.0]),                  # log tau outside the clamp: no gradient reaches it
]


@needs_kernels
@pytest.mark.parametrize("b, n, h, d, gates, log_tau", CASES)
def test_kernel_matches_float64_reference(b, n, h, d, gates, log_tau):
    set_backend("triton")
    try:
        tensors, grads = _inputs(b, n, h, d, gates, log_tau, torch.float32, DEVICE, 7 * n + d)
        reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
        weights, tensor_grads = _run(zeros_weights, tensors, grads)
        ref_weights, ref_grads = _run(zeros_weights_reference, reference, grads)
    finally:
        set_backend("auto")
    for got, expected in zip(weights, ref_weights, strict=True):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert relative_error(got.cpu(), expected) < 1e-5
    for name, got, expected in zip(("u", "gate_logits", "mu", "log_tau"), tensor_grads, ref_grads, strict=True):
        assert got.shape == expected.shape, name
        if expected.abs().max() == 0:  # log tau outside the clamp
            assert (got == 0).all(), name
        else:
            assert relative_error(got.cpu(), expected) < 1e-5, name


@needs_kernels
@pytest.mark.parametrize("b, n, h, gates, programs", [
    (1, 300, 2, 2, 64),   # five chunks of 64 tokens, the last partial
    (1, 130, 1, 3, 3),    # two chunks of 128 tokens, the zero-order gate
    (2, 200, 1, 2, 8),    # four chunks per sequence, two sequences
])
def test_forward_split_over_token_chunks_matches_float64_reference(b, n, h, gates, programs, monkeypatch):
    """Where the (batch, head) programs alone would leave the GPU idle, the forward runs three launches over chunks
    of tokens; its weights, what it saves for the backward (so every gradient), and its kept inference launches
    (allocator poisoned) against float64."""
    from vitzoo.ops.zeros_weights import function, heuristics

    monkeypatch.setattr(heuristics, "_INTERPRETER_PROGRAMS", programs)
    monkeypatch.setattr(heuristics, "SPLIT_MIN_BLOCKS", 2)  # these short sequences split too
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    assert heuristics.forward_chunks(b * h, n, torch.device(DEVICE))[0] > 1
    tensors, grads = _inputs(b, n, h, 16, gates, [0.4] * h, torch.float32, DEVICE, n + programs)
    reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
    ref_weights, ref_grads = _run(zeros_weights_reference, reference, grads)
    set_backend("triton")
    try:
        weights, tensor_grads = _run(zeros_weights, tensors, grads)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        with torch.no_grad():
            kept = [zeros_weights(*[t.detach().clone() for t in tensors]) for _ in range(2)]
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 1
    for got, expected in zip((*weights, *kept[0], *kept[1]), ref_weights * 3, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5
    for name, got, expected in zip(("u", "gate_logits", "mu", "log_tau"), tensor_grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5, name


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """Outputs are fresh buffers: poisoning the allocator's memory must not leak into them."""
    set_backend("triton")
    try:
        tensors, grads = _inputs(2, 70, 2, 16, 3, [0.5, -0.5], torch.float32, DEVICE, 3)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        weights, tensor_grads = _run(zeros_weights, tensors, grads)
    finally:
        set_backend("auto")
    assert all(torch.isfinite(t).all() for t in (*weights, *tensor_grads))


@needs_cuda
def test_bf16_at_model_size():
    """bf16 u and gate logits at ZeroS-T size (32 x 197 tokens, 3 heads of 64) against float64."""
    tensors, grads = _inputs(32, 197, 3, 64, 2, [0.0, 0.7, -0.3], torch.bfloat16, "cuda", 11)
    reference = [t.detach().double().cpu().requires_grad_() for t in tensors]
    weights, tensor_grads = _run(zeros_weights, tensors, grads)
    ref_weights, ref_grads = _run(zeros_weights_reference, reference, grads)
    for got, expected in zip((*weights, *tensor_grads), (*ref_weights, *ref_grads), strict=True):
        assert relative_error(got.float().cpu(), expected) < 1e-2


@needs_cuda
def test_torch_compile_fullgraph_traces_the_reference():
    """Under torch.compile the op is its PyTorch reference, fused by Inductor: no graph break, the eager kernels'
    values."""
    tensors, grads = _inputs(4, 50, 3, 64, 2, [0.0, 0.7, -0.3], torch.bfloat16, "cuda", 13)
    eager, eager_grads = _run(zeros_weights, tensors, grads)
    compiled, compiled_grads = _run(torch.compile(zeros_weights, fullgraph=True), tensors, grads)
    for got, expected in zip((*compiled, *compiled_grads), (*eager, *eager_grads), strict=True):
        assert relative_error(got.float(), expected.float()) < 1e-2  # bf16 gradients: rounding may differ


def test_bad_shapes_are_one_line_errors():
    u = torch.randn(2, 5, 3, 8)
    with pytest.raises(ValueError, match=r"gate_logits must be \(B, N, 2 or 3, H\)"):
        zeros_weights(u, torch.randn(2, 5, 4, 3), torch.randn(3, 8), torch.zeros(3))
    with pytest.raises(ValueError, match=r"mu must be \(3, 8\)"):
        zeros_weights(u, torch.randn(2, 5, 2, 3), torch.randn(8), torch.zeros(3))


@needs_kernels
def test_inference_launch_matches_reference():
    set_backend("triton")
    try:
        tensors, _ = _inputs(2, 70, 2, 16, 3, [0.5, -0.5], torch.float32, DEVICE, 5)
        with torch.no_grad():
            weights = zeros_weights(*tensors)
    finally:
        set_backend("auto")
    expected = zeros_weights_reference(*[t.detach().double().cpu() for t in tensors])
    for got, want in zip(weights, expected, strict=True):
        assert relative_error(got.cpu(), want) < 1e-5


@needs_kernels
def test_inference_calls_reuse_their_kept_launch(monkeypatch):
    """An eager call without gradients and with the key of an earlier one skips the checks and repeats the kept
    launch on its own tensors (every buffer poisoned); another gate count is checked again; every call matches
    float64."""
    from vitzoo.ops.zeros_weights import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a: checks.append(1) or check(*a))
    set_backend("triton")
    try:
        with torch.no_grad():
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            for seed, gates, expected_checks in [(1, 3, 1), (2, 3, 1), (3, 2, 2), (4, 2, 2)]:
                tensors, _ = _inputs(2, 37, 2, 16, gates, [0.5, -0.5], torch.float32, DEVICE, seed)
                weights = zeros_weights(*tensors)
                expected = zeros_weights_reference(*[t.detach().double().cpu() for t in tensors])
                for got, want in zip(weights, expected, strict=True):
                    assert relative_error(got.cpu(), want) < 1e-5
                assert len(checks) == expected_checks
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 2
