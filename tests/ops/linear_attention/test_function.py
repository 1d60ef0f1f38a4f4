"""The fused Triton linear-attention kernels against the float64 PyTorch reference, and the op's dispatch.

Without CUDA the kernels run under the Triton interpreter; GPU-only tests (bf16 at real sizes, ``torch.compile``,
long sequences) are skipped without CUDA.
"""
import zlib

import pytest
import torch

from vitzoo.ops import linear_attention_reference
from vitzoo.ops.launch import KeptLaunches

from .cases import (
    check_against_reference,
    function,
    grad_leaves,
    make_inputs,
    needs_cuda,
    needs_interpreter,
    reference_kwargs,
    rel_err,
)

# ------------------------------------------------------------------------------------------ interpreter (CPU CI)
TOLERANCES = {torch.float32: (1e-5, 3e-5), torch.float16: (1e-3, 2e-3)}  # (forward, gradients)
CPU_CASES = [
    # (config, B, N, H, Dk, dtype, layout); B*H <= 2 at N >= 197 splits N (see heuristics), B*H = 4 keeps one program
    ("relu", 1, 1, 2, 16, torch.float32, "fused"),
    ("relu", 1, 49, 2, 24, torch.float16, "fused"),
    ("relu", 1, 197, 2, 64, torch.float32, "fused"),
    ("relu", 1, 577, 2, 48, torch.float16, "fused"),
    ("relu", 2, 197, 2, 16, torch.float32, "channel_first"),
    ("inline", 1, 1, 2, 16, torch.float32, "fused"),
    ("inline", 1, 49, 2, 48, torch.float32, "channel_first"),
    ("inline", 1, 197, 2, 24, torch.float16, "fused"),
    ("inline", 1, 577, 2, 64, torch.float32, "fused"),
    ("qt", 1, 1, 2, 64, torch.float16, "fused"),
    ("qt", 1, 49, 2, 16, torch.float32, "fused"),
    ("qt", 1, 197, 2, 48, torch.float16, "fused"),
    ("qt", 1, 577, 2, 24, torch.float32, "fused"),
    ("zeros", 1, 1, 2, 48, torch.float32, "fused"),
    ("zeros", 1, 49, 2, 24, torch.float32, "fused"),
    ("zeros", 1, 197, 2, 16, torch.float16, "fused"),
    ("zeros", 1, 577, 2, 64, torch.float32, "fused"),
    ("fem", 1, 1, 2, 48, torch.float16, "separate"),
    ("fem", 1, 49, 2, 16, torch.float32, "channel_first"),
    ("fem", 1, 197, 2, 24, torch.float32, "separate"),
    ("fem", 1, 577, 2, 16, torch.float16, "separate"),
    ("fem_prior", 1, 49, 2, 24, torch.float32, "separate"),
    ("fem_prior", 1, 197, 2, 16, torch.float16, "channel_first"),
    ("combo", 1, 49, 2, 24, torch.float32, "fused"),
    ("combo", 1, 197, 2, 16, torch.float16, "fused"),
    ("combo", 2, 197, 2, 48, torch.float32, "fused"),
]


@needs_interpreter
# The interpreter casts every lane of a tile before the masked store, padding rows too: past N the keys are zero, and
# the l2norm feature's gradient there (the centring term over a zero norm) overflows fp16 in lanes that are never
# written. What is written is compared with the reference below, so a real overflow still fails.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("config,b,n,h,dk,dtype,layout", CPU_CASES,
                         ids=[f"{c[0]}-N{c[2]}-d{c[4]}-{str(c[5])[6:]}-{c[6]}" for c in CPU_CASES])
def test_matches_reference(poisoned, config, b, n, h, dk, dtype, layout):
    torch.manual_seed(zlib.crc32(f"{config}{n}{dk}{layout}".encode()))
    tensors, kwargs = make_inputs(config, b, n, h, dk, dtype, "cpu", layout)
    tol, grad_tol = TOLERANCES[dtype]
    if n == 1 and kwargs.get("normalize"):
        # one token: out = v x/(x + eps), so dq and dk are differences of O(1/x) terms that cancel to O(eps/x^2)
        grad_tol *= 10
    check_against_reference(tensors, kwargs, tol, grad_tol)


@needs_interpreter
@pytest.mark.parametrize("config", ["relu", "inline", "zeros"])
def test_inference_path_matches_reference(poisoned, config):
    """Without grad the fused kernel keeps the states on chip (nothing is saved for a backward)."""
    tensors, kwargs = make_inputs(config, 2, 61, 2, 24, torch.float32, "cpu", requires_grad=False)
    with torch.no_grad():
        check_against_reference(tensors, kwargs, 1e-5, 1e-5, backward=False)


@needs_interpreter
@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros"])
def test_inference_calls_reuse_their_checked_plan(poisoned, config, monkeypatch):
    """An eager inference call with the signature of an earlier one skips the input checks and the planning; any
    change of shape, stride, dtype or option value is checked and planned again, and every call matches float64."""
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a, **kw: checks.append(1) or check(*a, **kw))
    tensors, kwargs = make_inputs(config, 2, 37, 2, 16, torch.float32, "cpu", requires_grad=False)
    contiguous = [None if t is None else t.contiguous() for t in tensors]  # other strides, same values
    calls = [
        (tensors, kwargs, 1), (tensors, kwargs, 1),  # the second reuses the first one's plan
        (contiguous, kwargs, 2), (contiguous, kwargs, 2),
        (tensors, {**kwargs, "eps": 0.5}, 3),
        ([None if t is None else t.double().float() + 0.0 for t in tensors], kwargs, 3),  # new tensors, same key
    ]
    with torch.no_grad():
        for inputs, call_kwargs, expected_checks in calls:
            check_against_reference(inputs, call_kwargs, 1e-5, 1e-5, backward=False)
            assert len(checks) == expected_checks
    assert len(function._KEPT.launches) == 3


@needs_interpreter
def test_calls_with_gradients_are_always_checked(monkeypatch):
    """Calls that record a gradient run the checks each time (the cache is for inference)."""
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a, **kw: checks.append(1) or check(*a, **kw))
    tensors, kwargs = make_inputs("relu", 1, 20, 1, 16, torch.float32, "cpu")
    for _ in range(2):
        function.linear_attention(*tensors, **kwargs)
    assert len(checks) == 2


@needs_interpreter
def test_expanded_incoming_grad():
    """``out.sum().backward()`` hands the kernel a stride-0 gradient."""
    tensors, kwargs = make_inputs("qt", 1, 150, 2, 16, torch.float32, "cpu")
    function.linear_attention(*tensors, **kwargs).sum().backward()
    ref_tensors = [t.detach().double().requires_grad_() for t in tensors[:3]]
    const = kwargs["feature_const"].detach().double().requires_grad_()
    linear_attention_reference(*ref_tensors, **{**kwargs, "feature_const": const}).sum().backward()
    for t, rt in zip((*tensors[:3], kwargs["feature_const"]), (*ref_tensors, const), strict=True):
        assert rel_err(t.grad, rt.grad) <= 1e-5


@needs_interpreter
def test_eager_calls_launch_the_kernels_directly(monkeypatch):
    """Eager forward and backward launch the kernels themselves, without the custom op's dispatch or wrap_triton
    (outside a triton_op its tracing path cost ~0.5 ms a call on the H200). torch.compile goes through the custom op
    (test_gpu_torch_compile_fullgraph)."""
    def fail(kernel):
        raise AssertionError("an eager call went through wrap_triton")

    monkeypatch.setattr(torch.library, "wrap_triton", fail)
    tensors, kwargs = make_inputs("relu", 1, 40, 2, 16, torch.float32, "cpu")
    function.linear_attention(*tensors, **kwargs).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in tensors if t is not None)


@needs_interpreter
def test_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(function, "linear_attention_triton", lambda *a, **k: calls.append(1) or a[2])
    q = torch.randn(1, 3, 1, 16)
    function.linear_attention(q, q, q)
    assert calls == [1]
    function.linear_attention(q.double(), q.double(), q.double())  # float64 stays on the reference
    assert calls == [1]


@needs_interpreter
@pytest.mark.parametrize("case", ["rank", "dtype", "float64", "head_dim", "weightings", "weights_pair", "const",
                                  "feature_map", "empty", "clamp_without_normalize"])
def test_bad_inputs_raise_value_error(case):
    q = torch.randn(1, 5, 2, 16)
    args, kwargs = [q, q, q], {}
    if case == "rank":
        args = [q[0], q[0], q[0]]
    elif case == "dtype":
        args = [q.int(), q.int(), q.int()]
    elif case == "float64":
        args = [q.double()] * 3
    elif case == "head_dim":
        big = torch.randn(1, 5, 2, 130)
        args = [big, big, big]
    elif case == "weightings":
        weights = torch.randn(1, 5, 2, 4)
        args += [weights, weights]
    elif case == "weights_pair":
        args += [torch.randn(1, 5, 2, 1)]
    elif case == "const":
        kwargs["feature_const"] = torch.ones(2)
    elif case == "feature_map":
        kwargs["feature_map"] = "elu"
    elif case == "empty":
        args = [q[:, :0]] * 3
    elif case == "clamp_without_normalize":
        kwargs["clamp_denominator"] = True
    with pytest.raises(ValueError):
        function.linear_attention_triton(*args, **kwargs)


# ------------------------------------------------------------------------------------------------------ GPU only
GPU_SIZES = [(64, 197), (16, 785), (8, 3137)]


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros", "fem", "fem_prior"])
@pytest.mark.parametrize("b,n", GPU_SIZES, ids=[f"B{b}-N{n}" for b, n in GPU_SIZES])
def test_gpu_bf16_matches_reference(poisoned, config, b, n):
    tensors, kwargs = make_inputs(config, b, n, 6, 64, torch.bfloat16, "cuda")
    check_against_reference(tensors, kwargs, 1e-2, 1e-2)


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "combo"])
def test_gpu_fp32_matches_reference(poisoned, config):
    tensors, kwargs = make_inputs(config, 4, 577, 6, 48, torch.float32, "cuda")
    check_against_reference(tensors, kwargs, 1e-5, 1e-5)


@needs_cuda
def test_gpu_torch_compile_fullgraph():
    tensors, kwargs = make_inputs("qt", 8, 197, 6, 64, torch.bfloat16, "cuda")

    def loss_fn(q, k, v, const):
        out = function.linear_attention(q, k, v, **{**kwargs, "feature_const": const})
        return out.float().square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    leaves = [*tensors[:3], kwargs["feature_const"]]
    loss = compiled(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    eager_loss = loss_fn(*leaves)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    assert abs(loss.item() - eager_loss.item()) <= 1e-3 * abs(eager_loss.item())
    for g, eg in zip(grads, eager_grads, strict=True):
        assert rel_err(g, eg) <= 1e-3
    # and the compiled path is the op's math: the float64 reference's loss and gradients
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_loss = linear_attention_reference(*ref_leaves[:3], **{**kwargs, "feature_const": ref_leaves[3]}).square().mean()
    assert abs(loss.item() - ref_loss.item()) <= 2e-2 * abs(ref_loss.item())
    for g, rg in zip(grads, torch.autograd.grad(ref_loss, ref_leaves), strict=True):
        assert rel_err(g, rg) <= 2e-2


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "inline", "qt"])
def test_gpu_long_sequence_is_finite(config):
    n = 12545
    tensors, kwargs = make_inputs(config, 2, n, 6, 64, torch.bfloat16, "cuda", std=3.0)
    out = function.linear_attention(*tensors, **kwargs)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out, grad_leaves(tensors, kwargs), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    ref = linear_attention_reference(*[t.detach().double() for t in tensors[:3]], **reference_kwargs(kwargs))
    assert rel_err(out, ref) <= 1e-2


@needs_interpreter
def test_views_off_a_16_byte_boundary_run_on_aligned_copies(monkeypatch):
    """The kernels get 16-byte-aligned copies of views that start off a boundary (the GPU faulted on such views), and
    the result is the reference's."""
    buffer = torch.randn(2 * 23 * 3 * 2 * 16 + 1)
    q, k, v = buffer[1:].view(2, 23, 3, 2, 16).unbind(2)
    assert q.data_ptr() % 16 != 0
    seen = []
    plan = function._forward_plan
    monkeypatch.setattr(function, "_forward_plan", lambda *a, **kw: seen.append(a[:3]) or plan(*a, **kw))
    with torch.no_grad():
        check_against_reference([q, k, v, None, None], dict(feature_map="relu", normalize=True), 1e-5, 1e-5,
                                backward=False)
    assert seen and all(t.data_ptr() % 16 == 0 for t in seen[0])
    aligned = buffer[4:]  # 16 bytes in: used as it is
    assert function._aligned(aligned) is aligned


@needs_interpreter
def test_traced_calls_do_not_read_addresses(monkeypatch):
    """Under torch.compile the tensors are traced (FakeTensors have no address): the alignment copy, which reads
    data pointers, is for eager calls only."""
    def no_address(t):
        raise AssertionError("a traced call looked at a tensor's address")

    monkeypatch.setattr(function, "_aligned", no_address)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(function._LinearAttentionFunction, "apply", lambda *a: "traced")
    q = torch.randn(1, 5, 2, 16)
    assert function.linear_attention_triton(q, q, q) == "traced"


@needs_cuda
@pytest.mark.parametrize("offset", [1, 2, 4])  # bf16 elements: 2, 4 and 8 bytes off the boundary
def test_gpu_views_off_a_16_byte_boundary_match_reference(offset):
    """q, k, v that start off a 16-byte boundary (views at an odd offset into a buffer) run on aligned copies; the
    kernels faulted on them before (illegal memory access, H100, Triton 3.6)."""
    torch.manual_seed(offset)
    buffer = torch.randn(2 * 97 * 3 * 2 * 32 + offset, device="cuda", dtype=torch.bfloat16)
    q, k, v = buffer[offset:].view(2, 97, 3, 2, 32).unbind(2)
    assert q.data_ptr() % 16 != 0
    with torch.no_grad():
        out = function.linear_attention(q, k, v, feature_map="relu", normalize=True)
        torch.cuda.synchronize()
    ref = linear_attention_reference(q.double(), k.double(), v.double(), feature_map="relu", normalize=True)
    assert rel_err(out, ref) <= 1e-2
