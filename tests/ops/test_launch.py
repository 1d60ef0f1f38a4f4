"""The cached Triton launcher (:mod:`vitzoo.ops.launch`): a cached launch must run exactly the compiled kernel that
Triton itself would launch, with the arguments in Triton's order. On the CPU a stand-in kernel records what each path
receives; on a GPU the ops' outputs through the cache are compared with Triton's own launches."""
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from tests.ops.markers import DEVICE, needs_cuda, needs_kernels
from vitzoo.ops import launch
from vitzoo.ops.launch import CachedLauncher


def _param(name, constexpr=False, default=None, has_default=False):
    return SimpleNamespace(name=name, is_constexpr=constexpr, default=default, has_default=has_default)


class StandInKernel:
    """A Triton JITFunction's surface: ``params``, and ``kernel[grid](...)`` that "compiles" once per specialisation
    and returns the compiled kernel, whose ``run`` records the raw launches."""

    params = [_param("x_ptr"), _param("n"), _param("scale"), _param("BLOCK", True),
              _param("FLAG", True, default=7, has_default=True)]

    def __init__(self):
        self.triton_launches, self.raw_launches = [], []
        self.compiled = SimpleNamespace(run=lambda *a: self.raw_launches.append(a), function="fn",
                                        packed_metadata="meta")

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.triton_launches.append((grid, args, kwargs))
            return self.compiled
        return call


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(launch, "_hooks_installed", lambda: False)
    stand_in = StandInKernel()
    return stand_in, CachedLauncher(stand_in, current_device=lambda: 0, current_stream=lambda device: 1234)


def test_repeated_signature_launches_the_cached_kernel_with_triton_argument_order(kernel):
    stand_in, cached = kernel
    x = torch.randn(64)
    cached[(3, 2)](x, 33, 0.5, BLOCK=16)
    assert len(stand_in.triton_launches) == 1 and not stand_in.raw_launches
    cached[(5, 2)](x, 33, 0.25, BLOCK=16)  # another grid and another float value: the same binary
    assert len(stand_in.triton_launches) == 1
    (raw,) = stand_in.raw_launches
    # grid padded to 3 dims, stream, function, metadata, no launch metadata or hooks, then every parameter in order,
    # the constexprs from the keywords and their defaults
    assert raw == (5, 2, 1, 1234, "fn", "meta", None, None, None, x, 33, 0.25, 16, 7)


def test_what_triton_specialises_on_misses_the_cache(kernel):
    stand_in, cached = kernel
    buffer = torch.randn(80)
    aligned, misaligned = buffer[:64], buffer[2:66]  # 8-byte offset: aligned to 8 bytes, not to 16
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    calls = [
        ((aligned, 33, 0.5), dict(BLOCK=16)),
        ((misaligned, 33, 0.5), dict(BLOCK=16)),  # alignment
        ((aligned.half(), 33, 0.5), dict(BLOCK=16)),  # dtype
        ((aligned, 32, 0.5), dict(BLOCK=16)),  # an int's value
        ((aligned, True, 0.5), dict(BLOCK=16)),  # a bool where an int was (Triton types it i1, not i32)
        ((aligned, 33, 0.5), dict(BLOCK=32)),  # a constexpr
        ((aligned, 33, 0.5), dict(BLOCK=16, FLAG=1)),  # a defaulted constexpr given
        ((aligned, 33, 0.5), dict(BLOCK=16, num_warps=8)),  # a launch option
    ]
    for args, kwargs in calls:
        cached[(1,)](*args, **kwargs)
    assert len(stand_in.triton_launches) == len(calls) and not stand_in.raw_launches
    for args, kwargs in calls:
        cached[(1,)](*args, **kwargs)
    assert len(stand_in.triton_launches) == len(calls) and len(stand_in.raw_launches) == len(calls)


def test_another_device_misses_the_cache(monkeypatch):
    monkeypatch.setattr(launch, "_hooks_installed", lambda: False)
    stand_in, device = StandInKernel(), [0]
    cached = CachedLauncher(stand_in, current_device=lambda: device[0], current_stream=lambda d: d)
    x = torch.randn(16)
    cached[(1,)](x, 3, 1.0, BLOCK=16)
    device[0] = 1
    cached[(1,)](x, 3, 1.0, BLOCK=16)
    assert len(stand_in.triton_launches) == 2 and not stand_in.raw_launches


def test_runtime_argument_by_keyword_is_never_cached(kernel):
    stand_in, cached = kernel
    x = torch.randn(16)
    for scale in (0.5, 2.0):
        cached[(1,)](x, 3, scale=scale, BLOCK=16)
    assert len(stand_in.triton_launches) == 2 and not stand_in.raw_launches


def test_installed_launch_hooks_take_triton_path(kernel, monkeypatch):
    stand_in, cached = kernel
    x = torch.randn(16)
    cached[(1,)](x, 3, 1.0, BLOCK=16)
    monkeypatch.setattr(launch, "_hooks_installed", lambda: True)
    cached[(1,)](x, 3, 1.0, BLOCK=16)
    assert len(stand_in.triton_launches) == 2 and not stand_in.raw_launches


def test_bound_launch_repeats_the_compiled_kernel_with_new_arguments(kernel):
    stand_in, cached = kernel
    x, y = torch.randn(64), torch.randn(64)
    bound = cached.bind((3, 2), (x, 33, 0.5), dict(BLOCK=16))
    assert len(stand_in.triton_launches) == 1 and not stand_in.raw_launches  # the first launch: Triton's path
    bound(y, 33, 0.25)
    assert len(stand_in.triton_launches) == 1
    assert stand_in.raw_launches == [(3, 2, 1, 1234, "fn", "meta", None, None, None, y, 33, 0.25, 16, 7)]


def test_bound_launch_takes_triton_path_under_hooks_or_another_device(monkeypatch):
    monkeypatch.setattr(launch, "_hooks_installed", lambda: False)
    stand_in, device = StandInKernel(), [0]
    cached = CachedLauncher(stand_in, current_device=lambda: device[0], current_stream=lambda d: d)
    x = torch.randn(16)
    bound = cached.bind((1,), (x, 3, 1.0), dict(BLOCK=16))
    device[0] = 1
    bound(x, 3, 1.0)
    assert len(stand_in.triton_launches) == 2 and not stand_in.raw_launches
    device[0] = 0
    monkeypatch.setattr(launch, "_hooks_installed", lambda: True)
    bound(x, 3, 1.0)
    assert len(stand_in.triton_launches) == 3 and not stand_in.raw_launches


def test_bound_launch_of_an_uncacheable_call_launches_through_triton(kernel):
    stand_in, cached = kernel
    x = torch.randn(16)
    bound = cached.bind((1,), (x, 3), dict(scale=2.0, BLOCK=16))  # a runtime argument by keyword
    bound(x, 3)
    assert len(stand_in.triton_launches) == 2 and not stand_in.raw_launches
    assert stand_in.triton_launches[1] == ((1,), (x, 3), dict(scale=2.0, BLOCK=16))


@needs_kernels
def test_kept_launches_hold_no_tensors(monkeypatch):
    """What an op keeps for its inference calls holds no tensor: the first call's inputs and outputs are freed."""
    from vitzoo.ops import (
        delta_rule_bidirectional,
        layer_norm,
        linear_attention,
        local_conv,
        set_backend,
        toeplitz_attention,
    )
    from vitzoo.ops.delta_rule import function as delta_rule_function
    from vitzoo.ops.layer_norm import function as layer_norm_function
    from vitzoo.ops.linear_attention import function as linear_attention_function
    from vitzoo.ops.local_conv import function as local_conv_function
    from vitzoo.ops.toeplitz_attention import function as toeplitz_function

    functions = (layer_norm_function, linear_attention_function, local_conv_function, delta_rule_function,
                 toeplitz_function)
    for function in functions:
        monkeypatch.setattr(function, "_KEPT", launch.KeptLaunches())
    set_backend("triton")
    try:
        x, weight = torch.randn(2, 5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
        q, kernel = torch.randn(1, 5, 2, 16, device=DEVICE), torch.randn(1, 16, 3, 3, device=DEVICE)
        beta, lags = torch.randn(1, 5, 2, device=DEVICE), torch.randn(2, 9, device=DEVICE)
        with torch.no_grad():
            outputs = [layer_norm(x, weight, weight), linear_attention(q, q, q, feature_map="relu", normalize=True),
                       local_conv(x, kernel, (2, 2), 1), delta_rule_bidirectional(q, q, q, beta, beta_logits=True),
                       toeplitz_attention(q, q, q, lags)]
        assert all(len(function._KEPT.launches) == 1 for function in functions)
        freed = [weakref.ref(t) for t in (x, weight, q, kernel, beta, lags, *outputs)]
        del x, weight, q, kernel, beta, lags, outputs
        gc.collect()
        assert all(ref() is None for ref in freed)
    finally:
        set_backend("auto")


def test_hook_activity_reads_both_hook_forms():
    assert not launch._active(None)
    assert launch._active(print)
    assert not launch._active(SimpleNamespace(calls=[]))  # an empty hook chain (Triton 3.7 and later)
    assert launch._active(SimpleNamespace(calls=[print]))


@needs_cuda
def test_cached_launches_give_triton_launches_bits(monkeypatch):
    """Two ops' outputs from cached and bound launches equal those of Triton's own launches, bit for bit (which keys
    tell a misaligned pointer apart is the stand-in tests' part: linear attention copies misaligned views first)."""
    from vitzoo.ops import layer_norm, linear_attention
    from vitzoo.ops.layer_norm import function as layer_norm_function
    from vitzoo.ops.layer_norm import kernels as layer_norm_kernels
    from vitzoo.ops.linear_attention import function as linear_attention_function
    from vitzoo.ops.linear_attention import kernels as linear_attention_kernels

    torch.manual_seed(0)
    q, k, v = torch.randn(4, 197, 3, 3, 64, device="cuda", dtype=torch.bfloat16).unbind(2)
    x = torch.randn(4, 197, 192, device="cuda", dtype=torch.bfloat16)
    weight, bias = torch.randn(192, device="cuda"), torch.randn(192, device="cuda")

    def outputs():
        return (linear_attention(q, k, v, feature_map="relu", normalize=True),
                layer_norm(x, weight, bias, 1e-6))

    cached = [outputs() for _ in range(3)]  # the first fills the cache, the others launch from it
    assert all(launch._LAUNCHERS[kernel]._cache for kernel in (linear_attention_kernels._linear_attention_fwd_kernel,
                                                               layer_norm_kernels._norm_fwd_kernel))
    # Triton's own launches: no cached launcher, and none of the launches the ops kept for their inference calls
    monkeypatch.setattr(launch, "cached_launcher", lambda kernel: kernel)
    monkeypatch.setattr(layer_norm_function, "_KEPT", launch.KeptLaunches())
    monkeypatch.setattr(linear_attention_function, "_KEPT", launch.KeptLaunches())
    plain = outputs()
    for got in cached:
        for a, b in zip(got, plain, strict=True):
            assert torch.equal(a, b)
