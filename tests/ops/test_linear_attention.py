"""The fused Triton linear-attention kernels against the float64 PyTorch reference.

On a machine without CUDA the kernels run under the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
triton is first imported, which ``tests/conftest.py`` does (and this module repeats, for runs without the conftest).
GPU-only tests (bf16 at real sizes, ``torch.compile``, long sequences) are skipped without CUDA.
"""
import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

from vitzoo.ops import linear_attention_reference, set_backend, triton_available  # noqa: E402
from vitzoo.ops.testing import const_grad_terms, relative_error  # noqa: E402

# the package's name is also the re-exported function's: reach the modules through importlib
la = importlib.import_module("vitzoo.ops.linear_attention.function")
heuristics = importlib.import_module("vitzoo.ops.linear_attention.heuristics")
HAS_CUDA = torch.cuda.is_available()
INTERPRETED = (
    not HAS_CUDA and triton_available() and type(la._linear_attention_fwd_kernel).__name__ == "InterpretedFunction"
)
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter on a CPU-only machine")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _triton_backend():
    set_backend("triton")


# ------------------------------------------------------------------------------------------------ configurations
def _config(name: str, n: int, dk: int, device, requires_grad: bool = True, const_dtype=torch.float32):
    """(op kwargs, number of weightings or None, Dv) for each way the mixers call the op."""
    if name == "relu":
        return dict(feature_map="relu", normalize=True), None, dk
    if name == "inline":
        return dict(feature_map="identity", center_keys=True, scale=dk**-0.5 / n, feature_const=n**-0.5), None, dk
    if name == "qt":
        const = torch.tensor(0.6, device=device, dtype=const_dtype, requires_grad=requires_grad)
        return dict(feature_map="qt", feature_const=const, normalize=True, eps=1e-6), None, dk
    if name == "zeros":
        return dict(feature_map="l2norm"), 3, dk
    if name == "fem":
        return dict(feature_map="relu", normalize=True), None, 2 * dk
    if name == "combo":  # every switch at once: W=2, centring, learnable constant, normaliser
        const = torch.tensor(1.1, device=device, dtype=const_dtype, requires_grad=requires_grad)
        kwargs = dict(feature_map="l2norm", center_keys=True, feature_const=const, normalize=True, scale=0.7)
        return kwargs, 2, dk
    raise ValueError(name)


def _inputs(config: str, b: int, n: int, h: int, dk: int, dtype, device, layout: str = "fused", std: float = 1.0,
            requires_grad: bool = True):
    """Fresh random q, k, v (and weights) as the mixers pass them: strided views, never zeros."""
    const_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    kwargs, weightings, dv = _config(config, n, dk, device, requires_grad, const_dtype)
    if layout == "fused" and dv == dk:  # timm-style fused qkv: (B, N, 3, H, D) -> three strided views
        qkv = (torch.randn(b, n, 3, h, dk, device=device) * std).to(dtype)
        q, k, v = (qkv[:, :, i].detach().requires_grad_(requires_grad) for i in range(3))
    elif layout == "channel_first":  # EfficientViT: (B, H, D, N) channel-first -> D stride N
        q, k = ((torch.randn(b, h, dk, n, device=device) * std).to(dtype).permute(0, 3, 1, 2) for _ in range(2))
        v = (torch.randn(b, h, dv, n, device=device) * std).to(dtype).permute(0, 3, 1, 2)
        q, k, v = (t.detach().requires_grad_(requires_grad) for t in (q, k, v))
    else:
        q, k = ((torch.randn(b, n, h, dk, device=device) * std).to(dtype) for _ in range(2))
        v = (torch.randn(b, n, h, dv, device=device) * std).to(dtype)
        q, k, v = (t.detach().requires_grad_(requires_grad) for t in (q, k, v))
    key_weights = query_weights = None
    if weightings == 3:  # ZeroS: key weights (e^s, s, 1), signed per-query coefficients
        s = torch.randn(b, n, h, device=device) * 0.5
        key_weights = torch.stack([s.exp(), s, torch.ones_like(s)], dim=-1).to(dtype)
        query_weights = torch.randn(b, n, h, 3, device=device).to(dtype)
    elif weightings:  # positive weights keep the normaliser away from zero
        key_weights = (torch.rand(b, n, h, weightings, device=device) + 0.5).to(dtype)
        query_weights = (torch.rand(b, n, h, weightings, device=device) + 0.5).to(dtype)
    if key_weights is not None:
        key_weights.requires_grad_(requires_grad)
        query_weights.requires_grad_(requires_grad)
    return (q, k, v, key_weights, query_weights), kwargs


def _leaves(tensors, kwargs):
    const = kwargs.get("feature_const")
    return [t for t in (*tensors, const) if isinstance(t, torch.Tensor)]


def _reference_kwargs(kwargs):
    const = kwargs.get("feature_const")
    if isinstance(const, torch.Tensor):
        return dict(kwargs, feature_const=const.detach().double().requires_grad_())
    return kwargs


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref||, with ||ref|| floored at an RMS of 1e-2: gradients that cancel to ~0 (dq at N=1 with
    the normaliser is O(eps)) are judged against O(1) terms, not against their own vanishing size."""
    assert x.shape == ref.shape, (x.shape, ref.shape)
    assert torch.isfinite(x).all(), "non-finite values (unwritten output?)"
    return relative_error(x, ref, floor=1e-2 * max(ref.numel(), 1) ** 0.5)


def _check_against_reference(tensors, kwargs, tol: float, grad_tol: float, backward: bool = True):
    """Forward and every gradient of the Triton path vs the float64 reference on the same inputs."""
    out = la.linear_attention(*tensors, **kwargs)
    assert out.dtype == tensors[2].dtype
    ref_tensors = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    ref_kwargs = _reference_kwargs(kwargs)
    const = kwargs.get("feature_const")
    ref = linear_attention_reference(*ref_tensors, **ref_kwargs)
    err = _rel_err(out, ref)
    assert err <= tol, f"forward rel err {err:.2e} > {tol:.0e}"
    if not backward:
        return
    grad = torch.randn_like(out)
    leaves = _leaves(tensors, kwargs)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, _leaves(ref_tensors, ref_kwargs), grad.double())
    names = ["q", "k", "v", "key_weights", "query_weights", "feature_const"]
    names = [name for name, t in zip(names, (*tensors, const), strict=True) if isinstance(t, torch.Tensor)]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert g.dtype == dict(zip(names, leaves, strict=True))[name].dtype
        if name == "feature_const" and kwargs.get("normalize"):
            _check_const_grad(g, rg, tensors, kwargs, grad, grad_tol)
            continue
        err = _rel_err(g, rg)
        assert err <= grad_tol, f"d{name} rel err {err:.2e} > {grad_tol:.0e}"


def _check_const_grad(g, rg, tensors, kwargs, grad, grad_tol: float) -> None:
    """The normalised read's dL/dc is a difference of two large per-(batch, head) sums (numerator and normaliser
    parts, A ~ -B; on the GPU test's inputs |A| + |B| is 70-260x |A + B|). The kernel gets each sum to fp32-sum
    accuracy, so the error is judged against tol x (|dL/dc| + sum(|A| + |B|) / 100): in bf16 1e-4 of the summands."""
    options = {key: value for key, value in kwargs.items() if key not in ("feature_const", "normalize")}
    term_a, term_b = const_grad_terms(*tensors[:3], grad, kwargs["feature_const"].item(), *tensors[3:5], **options)
    assert torch.allclose((term_a + term_b).sum(), rg.reshape(()), rtol=1e-9), "A + B must equal the reference dL/dc"
    summands = (term_a.abs() + term_b.abs()).sum().item()
    err, allowed = abs(g.item() - rg.item()), grad_tol * (abs(rg.item()) + summands / 100)
    assert err <= allowed, (f"dfeature_const abs err {err:.3e} > {allowed:.3e} (net {rg.item():.3e}, summands "
                            f"{summands:.3e})")


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels must fully overwrite starts as NaN."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(la, "_empty", nan_empty)


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
    ("combo", 1, 49, 2, 24, torch.float32, "fused"),
    ("combo", 1, 197, 2, 16, torch.float16, "fused"),
    ("combo", 2, 197, 2, 48, torch.float32, "fused"),
]


@needs_interpreter
@pytest.mark.parametrize("config,b,n,h,dk,dtype,layout", CPU_CASES,
                         ids=[f"{c[0]}-N{c[2]}-d{c[4]}-{str(c[5])[6:]}-{c[6]}" for c in CPU_CASES])
def test_matches_reference(poisoned, config, b, n, h, dk, dtype, layout):
    torch.manual_seed(zlib.crc32(f"{config}{n}{dk}{layout}".encode()))
    tensors, kwargs = _inputs(config, b, n, h, dk, dtype, "cpu", layout)
    tol, grad_tol = TOLERANCES[dtype]
    if n == 1 and kwargs.get("normalize"):
        # one token: out = v x/(x + eps), so dq and dk are differences of O(1/x) terms that cancel to O(eps/x^2)
        grad_tol *= 10
    _check_against_reference(tensors, kwargs, tol, grad_tol)


@needs_interpreter
@pytest.mark.parametrize("config", ["relu", "inline", "zeros"])
def test_inference_path_matches_reference(poisoned, config):
    """Without grad the fused kernel keeps the states on chip (nothing is saved for a backward)."""
    tensors, kwargs = _inputs(config, 2, 61, 2, 24, torch.float32, "cpu", requires_grad=False)
    with torch.no_grad():
        _check_against_reference(tensors, kwargs, 1e-5, 1e-5, backward=False)


@needs_interpreter
def test_expanded_incoming_grad():
    """``out.sum().backward()`` hands the kernel a stride-0 gradient."""
    tensors, kwargs = _inputs("qt", 1, 150, 2, 16, torch.float32, "cpu")
    la.linear_attention(*tensors, **kwargs).sum().backward()
    ref_tensors = [t.detach().double().requires_grad_() for t in tensors[:3]]
    const = kwargs["feature_const"].detach().double().requires_grad_()
    linear_attention_reference(*ref_tensors, **{**kwargs, "feature_const": const}).sum().backward()
    for t, rt in zip((*tensors[:3], kwargs["feature_const"]), (*ref_tensors, const), strict=True):
        assert _rel_err(t.grad, rt.grad) <= 1e-5


@needs_interpreter
def test_eager_calls_launch_the_kernels_directly(monkeypatch):
    """Eager forward and backward launch the kernels themselves, without the custom op's dispatch or wrap_triton
    (outside a triton_op its tracing path cost ~0.5 ms a call on the H200). torch.compile goes through the custom op
    (test_gpu_torch_compile_fullgraph)."""
    def fail(kernel):
        raise AssertionError("an eager call went through wrap_triton")

    monkeypatch.setattr(torch.library, "wrap_triton", fail)
    tensors, kwargs = _inputs("relu", 1, 40, 2, 16, torch.float32, "cpu")
    la.linear_attention(*tensors, **kwargs).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in tensors if t is not None)


@needs_interpreter
def test_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(la, "linear_attention_triton", lambda *a, **k: calls.append(1) or a[2])
    q = torch.randn(1, 3, 1, 16)
    la.linear_attention(q, q, q)
    assert calls == [1]
    la.linear_attention(q.double(), q.double(), q.double())  # float64 stays on the reference
    assert calls == [1]


@needs_interpreter
@pytest.mark.parametrize("case", ["rank", "dtype", "float64", "head_dim", "weightings", "weights_pair", "const",
                                  "feature_map", "empty"])
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
    with pytest.raises(ValueError):
        la.linear_attention_triton(*args, **kwargs)


@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros", "fem", "combo"])
def test_reference_gradcheck(config):
    """The specification itself is differentiable as written (float64, tiny shapes)."""
    tensors, kwargs = _inputs(config, 1, 5, 2, 3, torch.float64, "cpu", layout="separate")
    leaves = _leaves(tensors, kwargs)
    n_inputs = len([t for t in tensors if t is not None])

    def fn(*xs):
        inputs = list(xs[:n_inputs]) + [None] * (5 - n_inputs)
        kw = dict(kwargs, feature_const=xs[n_inputs]) if len(xs) > n_inputs else kwargs
        return linear_attention_reference(*inputs, **kw)

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-6)


def _launch_both_passes(tensors, kwargs, grad, forward, backward):
    """Output and (dq, dk, dv) of the host launches with the given forward and backward launches."""
    q, k, v = (t.detach() for t in tensors[:3])
    options = (kwargs.get("feature_const", 0.0), la._FEATURE_CODES[kwargs["feature_map"]],
               kwargs.get("center_keys", False), kwargs.get("scale", 1.0), kwargs.get("normalize", False), kwargs.get("eps", 1e-6))
    out, state = la._linear_attention_fwd(q, k, v, None, None, None, *options, True, direct_launch=True,
                                          launch=forward)
    dq, dk, dv, *_ = la._linear_attention_bwd(grad, q, k, v, None, None, None, options[0], state, *options[1:], False,
                                              direct_launch=True, launch=backward)
    return out, dq, dk, dv


SPLIT_SHAPES = [(1, 2, 450), (2, 2, 450), (4, 2, 330)]  # (B, H, N): B*H below and at the interpreter's 4 programs


@needs_interpreter
@pytest.mark.parametrize("config", ["relu", "inline"])
@pytest.mark.parametrize("b,h,n", SPLIT_SHAPES, ids=[f"B{b}-H{h}-N{n}" for b, h, n in SPLIT_SHAPES])
def test_split_and_unsplit_launches_match_reference(poisoned, config, b, h, n):
    """Whatever the heuristics decide, a sequence walked by one program and one split over several (states summed
    with atomics, two launches per pass) give the float64 reference's output and gradients, on both sides of the
    split threshold (B*H programs against the GPU size the heuristics assume)."""
    torch.manual_seed(zlib.crc32(f"split{config}{b}{h}{n}".encode()))
    tensors, kwargs = _inputs(config, b, n, h, 32, torch.float32, "cpu", "separate")
    grad = torch.randn(b, n, h, 32)
    ref_tensors = [t.detach().double().requires_grad_() for t in tensors[:3]]
    ref = linear_attention_reference(*ref_tensors, **kwargs)
    expected = (ref, *torch.autograd.grad(ref, ref_tensors, grad.double()))
    cpu = torch.device("cpu")
    default = (heuristics.forward_launch(b * h, n, 32, 32, 1, cpu), heuristics.backward_launch(b * h, n, 32, 32, 1, cpu))
    assert (default[0].splits > 1) == (b * h < 4), "the shapes must sit on both sides of the split threshold"
    tiles = dict(block_n=64, num_warps=4, num_stages=1)
    launches = {
        "default": default,
        "unsplit": (heuristics.Launch(**tiles, splits=1, chunk=n),) * 2,
        "split": (heuristics.Launch(**tiles, splits=-(-n // 192), chunk=192),) * 2,
    }
    for name, (forward, backward) in launches.items():
        for label, got, want in zip(("out", "dq", "dk", "dv"),
                                    _launch_both_passes(tensors, kwargs, grad, forward, backward), expected,
                                    strict=True):
            err = _rel_err(got, want)
            assert err <= 1e-5, f"{name} launch: {label} rel err {err:.2e}"


# ------------------------------------------------------------------------------------------------------ GPU only
GPU_SIZES = [(64, 197), (16, 785), (8, 3137)]


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros", "fem"])
@pytest.mark.parametrize("b,n", GPU_SIZES, ids=[f"B{b}-N{n}" for b, n in GPU_SIZES])
def test_gpu_bf16_matches_reference(poisoned, config, b, n):
    tensors, kwargs = _inputs(config, b, n, 6, 64, torch.bfloat16, "cuda")
    _check_against_reference(tensors, kwargs, 1e-2, 1e-2)


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "combo"])
def test_gpu_fp32_matches_reference(poisoned, config):
    tensors, kwargs = _inputs(config, 4, 577, 6, 48, torch.float32, "cuda")
    _check_against_reference(tensors, kwargs, 1e-5, 1e-5)


@needs_cuda
def test_gpu_torch_compile_fullgraph():
    tensors, kwargs = _inputs("qt", 8, 197, 6, 64, torch.bfloat16, "cuda")

    def loss_fn(q, k, v, const):
        out = la.linear_attention(q, k, v, **{**kwargs, "feature_const": const})
        return out.float().square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    leaves = [*tensors[:3], kwargs["feature_const"]]
    loss = compiled(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    eager_loss = loss_fn(*leaves)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    assert abs(loss.item() - eager_loss.item()) <= 1e-3 * abs(eager_loss.item())
    for g, eg in zip(grads, eager_grads, strict=True):
        assert _rel_err(g, eg) <= 1e-3


@needs_cuda
@pytest.mark.parametrize("config", ["relu", "inline", "qt"])
def test_gpu_long_sequence_is_finite(config):
    n = 12545
    tensors, kwargs = _inputs(config, 2, n, 6, 64, torch.bfloat16, "cuda", std=3.0)
    out = la.linear_attention(*tensors, **kwargs)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out, _leaves(tensors, kwargs), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    ref = linear_attention_reference(*[t.detach().double() for t in tensors[:3]], **_reference_kwargs(kwargs))
    assert _rel_err(out, ref) <= 1e-2
