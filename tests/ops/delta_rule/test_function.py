"""The Triton delta rule against the float64 recurrent reference: under the Triton interpreter on CPU
(``test_interp_*``; ``tests/conftest.py`` sets TRITON_INTERPRET=1 before triton is imported) and on the GPU (bf16 at
real sizes, torch.compile; skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.delta_rule import (
    delta_rule_bidirectional,
    delta_rule_bidirectional_reference,
    delta_rule_recurrent_reference,
    delta_rule_triton,
    l2_normalize,
)
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error

from .cases import bidirectional_recurrent, make_inputs, needs_cuda, needs_interpreter


def _raises(*args, **kwargs):
    raise AssertionError("the training forward's autograd function ran for inputs that need no gradient")


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
def test_interp_kernel_matches_recurrent_reference(n, d, dv, monkeypatch):
    """dv=72: the chunk-parallel kernels take the whole value dim as a masked block of 128, the two recurrences
    split it into value blocks of 64 (the second one partial). Every buffer the op allocates starts as NaN, so one
    the kernels leave partly unwritten shows in the outputs."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: poison(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: poison(empty_like(*args, **kwargs)))
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
@pytest.mark.parametrize("one_pass", [True, False], ids=["one_pass", "three_kernels"])
@pytest.mark.parametrize("directions", ["both", "forward", "reverse"])
@pytest.mark.parametrize("n,dv", [(7, 16), (65, 72), (197, 24)])
def test_interp_inference_matches_recurrent_reference(n, dv, directions, one_pass, monkeypatch):
    """Inputs that need no gradient take the inference forward, which keeps nothing: the recurrence and the output in
    one kernel while the sequences fill the GPU (on the interpreter: always), else the training forward's three
    kernels (forced here by a GPU of 10^6 multiprocessors). dv=72 runs two value blocks (the second partial);
    n=65 and 197 end on a partial chunk, which the reversed scan meets first; q, k, v are strided views into
    NaN-filled buffers. The public entry keeps its launches (:func:`_bound_inference`); the plain inference forward
    (:func:`_delta_rule_infer`, the custom op's body) is called as well."""
    from vitzoo.ops.delta_rule import function, heuristics
    from vitzoo.ops.delta_rule.function import _bound_inference, _delta_rule_infer

    if not one_pass:
        monkeypatch.setattr(heuristics, "_programs_to_fill", lambda device: 10 ** 6)
    assert heuristics.one_pass_inference(2 * 2, dv, torch.device("cpu")) == one_pass
    q, k, v, beta = make_inputs(2, n, 2, 16, dv=dv, seed=n + dv)
    if directions == "both":
        ref = bidirectional_recurrent(q, k, v, beta)
    else:
        qn, kn = l2_normalize(q), l2_normalize(k)
        ref = delta_rule_recurrent_reference(qn, kn, v, beta, reverse=directions == "reverse")
    inputs = [poisoned_view(t.float(), pad=3) for t in (q, k, v)] + [beta.float()]
    # the public entry must take the inference forward: the training forward's autograd function may not run
    monkeypatch.setattr(function._DeltaRuleFunction, "apply", _raises)
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    infer_calls = []
    monkeypatch.setattr(function, "_delta_rule_infer",
                        lambda *args, **kwargs: infer_calls.append("infer") or _delta_rule_infer(*args, **kwargs))
    monkeypatch.setattr(function, "_bound_inference",
                        lambda *args, **kwargs: infer_calls.append("bound") or _bound_inference(*args, **kwargs))
    out = delta_rule_triton(*inputs, directions=directions)
    assert infer_calls == ["bound"]
    first_dir, num_dirs = {"both": (0, 2), "forward": (0, 1), "reverse": (1, 1)}[directions]
    plain = _delta_rule_infer(*inputs, 16 ** -0.5, True, first_dir, num_dirs, direct_launch=True)
    for got in (out, plain):
        assert got.dtype == torch.float32 and not got.isnan().any()
        assert relative_error(got, ref) < 1e-5


@needs_interpreter
def test_interp_inference_calls_reuse_their_kept_launches(monkeypatch):
    """An inference call with the key of an earlier one skips the checks and repeats the kept launches on its own
    tensors (the outputs and work buffers poisoned): the one-pass path's two, and the three-kernel path's three (a GPU
    of 10^6 multiprocessors); another direction is checked again; every call matches float64."""
    from vitzoo.ops.delta_rule import function, heuristics

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a: checks.append(1) or check(*a))
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    calls = [(1, "both", False, 1), (2, "both", False, 1), (3, "reverse", False, 2), (4, "reverse", False, 2),
             (5, "both", True, 3), (6, "both", True, 3)]
    for seed, directions, three_kernels, expected_checks in calls:
        if three_kernels and seed == 5:  # from here on: the three-kernel path, with nothing kept yet
            monkeypatch.setattr(heuristics, "_programs_to_fill", lambda device: 10 ** 6)
            monkeypatch.setattr(function, "_KEPT", KeptLaunches())
        q, k, v, beta = make_inputs(2, 37, 2, 16, dv=24, seed=seed)
        if directions == "both":
            ref = bidirectional_recurrent(q, k, v, beta)
        else:
            ref = delta_rule_recurrent_reference(l2_normalize(q), l2_normalize(k), v, beta, reverse=True)
        inputs = [poisoned_view(t.float(), pad=3) for t in (q, k, v)] + [beta.float()]
        out = delta_rule_triton(*inputs, directions=directions)
        assert relative_error(out, ref) < 1e-5
        assert len(checks) == expected_checks
        assert len(function._KEPT.launches) == (2 if directions == "reverse" else 1)


@needs_interpreter
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_interp_beta_logits_are_the_sigmoid_of_beta(training):
    """beta_logits=True: the kernels take sigmoid(beta) as the write strengths (forward, and the gradient of the
    logits in training) against the float64 reference fed sigmoid(beta); logits of both signs, a partial chunk."""
    q, k, v, beta = make_inputs(2, 70, 2, 16, dv=24, seed=11)
    logits = 6 * beta - 3
    leaves = [t.detach().requires_grad_() for t in (q, k, v, logits)]
    ref = bidirectional_recurrent(*leaves[:3], torch.sigmoid(leaves[3]))
    inputs = [t.float().requires_grad_(training) for t in (q, k, v, logits)]
    out = delta_rule_triton(*inputs, beta_logits=True)
    assert relative_error(out, ref) < 1e-5
    if training:
        grad = torch.randn_like(ref)
        ref.backward(grad)
        out.backward(grad.float())
        for name, got, want in zip("qkvb", inputs, leaves, strict=True):
            assert relative_error(got.grad, want.grad) < 1e-5, name


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
    # and the compiled path is the op's math: the float64 reference's loss and gradients
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, beta)]
    ref_loss = (delta_rule_bidirectional_reference(*leaves) @ w.double()).square().mean()
    ref_loss.backward()
    for compiled, reference in zip(outs[1], [ref_loss] + [t.grad for t in leaves], strict=True):
        assert relative_error(compiled, reference) < 2e-2


@needs_cuda
@pytest.mark.parametrize("b", [4, 64], ids=["three_kernels", "one_pass"])
def test_gpu_torch_compile_inference(b):
    """The inference forward under torch.compile(fullgraph=True) (its own custom op) against eager: batch 4 x 6
    heads leaves SMs idle (three kernels without T), batch 64 fills them (one pass)."""
    from vitzoo.ops.delta_rule import heuristics

    q, k, v, beta = make_inputs(b, 197, 6, 64, device="cuda", dtype=torch.bfloat16, seed=b)
    assert heuristics.one_pass_inference(b * 6, 64, q.device) == (b == 64)

    def block(q, k, v, beta):
        return delta_rule_bidirectional(q, k, v, beta).float().square().mean(-1)

    with torch.no_grad():
        eager = block(q, k, v, beta)
        compiled = torch.compile(block, fullgraph=True)(q, k, v, beta)
        reference = delta_rule_bidirectional_reference(*(t.double() for t in (q, k, v, beta))).square().mean(-1)
    assert relative_error(compiled, eager) < 1e-3
    assert relative_error(compiled, reference) < 2e-2
