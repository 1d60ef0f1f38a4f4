"""Linear attention's public entry points: the host launches of the kernels, their ``torch.library`` custom ops, the
autograd function, :func:`linear_attention_triton` and the dispatching :func:`linear_attention`.

Eager calls launch the kernels directly; inside ``torch.compile`` the autograd function calls the custom ops, whose
kernels are launched through ``wrap_triton`` so that Inductor sees them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..launch import KeptLaunches, bind_launch, launcher, tensor_key
from ..utils import KERNEL_DTYPES, check_kernel_qkv, kernel_backend, padded, triton_available
from .heuristics import Launch, backward_launch, dot_precision, forward_launch, state_size
from .reference import FEATURE_MAPS, check_inputs, linear_attention_reference

# identity 0, relu 1, l2norm 2, qt 3, relu_eps 4
_FEATURE_CODES = {name: code for code, name in enumerate(FEATURE_MAPS)}
_MAX_WEIGHTINGS = 3


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels fully overwrite comes from here (the tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _unit_last_stride(*tensors: torch.Tensor) -> bool:
    return all(t.stride(-1) == 1 for t in tensors)


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


def _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps):
    c_ptr = const if const is not None else q  # unused when the constant is a plain float
    a_ptr = key_weights if key_weights is not None else q  # unused without weights (HAS_WEIGHTS=False)
    b_ptr = query_weights if query_weights is not None else q
    return (q, k, v, a_ptr, b_ptr, c_ptr), (float(const_value), float(scale), float(eps))


def _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize, clamp):
    weightings = 1 if key_weights is None else key_weights.shape[-1]
    return dict(
        W=weightings, HAS_WEIGHTS=key_weights is not None, FEATURE=feature, CENTER=center_keys,
        CONST_PTR=const is not None, HAS_CONST=const is not None or const_value != 0.0, NORMALIZE=normalize,
        CLAMP=clamp,
        DKP=padded(q.shape[-1]), DVP=padded(v.shape[-1]),
        PREC=dot_precision(q, k, v),
    )


if triton_available():
    from .kernels import _linear_attention_bwd_kernel, _linear_attention_fwd_kernel

    class _ForwardPlan(NamedTuple):
        """What a forward launch takes from the inputs' shapes, strides and dtypes and from the options: the same
        for every call with the same ones (the kept launches of :func:`linear_attention_triton` repeat it)."""

        out_shape: tuple[int, int, int, int]
        state_shape: tuple[int, int]
        splits: int
        sizes: tuple  # the kernel's arguments after the pointers and the float scalars
        grid: tuple[int, int]
        passes: tuple[tuple[dict, ...], tuple[dict, ...]]  # the launches' keywords, without and with stored states

    def _forward_plan(
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None,
            const: torch.Tensor | None,
            const_value: float,
            feature: int,
            center_keys: bool,
            normalize: bool,
            launch: Launch | None = None,
            clamp: bool = False,
    ) -> _ForwardPlan:
        """The forward's plan; ``launch`` and ``clamp`` as in :func:`_linear_attention_fwd`."""
        batch, n, heads, dk = q.shape
        dv = v.shape[-1]
        meta = _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize, clamp)
        if launch is None:
            launch = forward_launch(batch * heads, n, dk, dv, meta["W"], q.device)
        state_shape = (batch * heads, state_size(meta["W"], dk, dv))
        out_strides = (n * heads * dv, heads * dv, dv, 1)  # a fresh contiguous (B, N, H, Dv) output
        sizes = (
            n, heads, dk, dv, launch.chunk, state_shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *out_strides,
        )
        # the raw sums this configuration reads: z for the normaliser (and, unweighted, the centring's key sum),
        # u for the centring and the constant feature
        need_z = normalize or (center_keys and key_weights is None)
        need_u = center_keys or meta["HAS_CONST"]
        config = dict(NEED_Z=need_z, NEED_U=need_u, UNIT_D=_unit_last_stride(q, k, v), **launch.options(), **meta)
        if launch.splits == 1:
            passes = tuple((dict(DO_STATE=True, DO_OUTPUT=True, STORE_STATE=store, ATOMIC=False, **config),)
                           for store in (False, True))
        else:
            split = (dict(DO_STATE=True, DO_OUTPUT=False, STORE_STATE=True, ATOMIC=True, **config),
                     dict(DO_STATE=False, DO_OUTPUT=True, STORE_STATE=False, ATOMIC=False, **config))
            passes = (split, split)
        return _ForwardPlan((batch, n, heads, dv), state_shape, launch.splits, sizes, (batch * heads, launch.splits),
                            passes)

    def _linear_attention_fwd(
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None,
            const: torch.Tensor | None,
            const_value: float,
            feature: int,
            center_keys: bool,
            scale: float,
            normalize: bool,
            eps: float,
            save_state: bool,
            direct_launch: bool = False,
            launch: Launch | None = None,
            clamp: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (out, raw fp32 states); the states are empty unless ``save_state`` (needed by the backward).

        ``direct_launch``: launch the Triton kernel itself rather than through ``wrap_triton`` (eager callers).
        ``launch``: the launch configuration; by default :func:`.heuristics.forward_launch` decides (the benchmarks
        pass others). ``clamp``: the normaliser is max(den, eps) instead of den + eps."""
        plan = _forward_plan(q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, normalize,
                             launch, clamp)
        out = _empty(plan.out_shape, v.dtype, q.device)
        if plan.splits > 1:
            state = torch.zeros(plan.state_shape, dtype=torch.float32, device=q.device)
        elif save_state:
            state = _empty(plan.state_shape, torch.float32, q.device)
        else:
            state = q.new_empty((0,), dtype=torch.float32)
        pointers, scalars = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)
        args = (*pointers, out, state if state.numel() else out, *scalars, *plan.sizes)
        kernel = launcher(_linear_attention_fwd_kernel, direct_launch)
        for keywords in plan.passes[save_state]:
            kernel[plan.grid](*args, **keywords)
        return out, state

    def _bound_inference(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None, const: torch.Tensor | None, const_value: float, scale: float,
            eps: float, plan: _ForwardPlan,
    ) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """The output of an eager forward without stored states under ``plan``, and ``repeat(q, k, v, key_weights,
        query_weights, const)``, which computes it for other inputs of the same plan key with bound launches
        (:func:`~vitzoo.ops.launch.bind_launch`)."""
        shape, dtype, device = plan.out_shape, v.dtype, q.device

        def buffers() -> tuple[torch.Tensor, torch.Tensor]:
            out = _empty(shape, dtype, device)
            # split passes add their partial states into zeros; a single pass keeps them on chip (out stands in)
            return out, torch.zeros(plan.state_shape, dtype=torch.float32, device=device) if plan.splits > 1 else out

        out, state = buffers()
        pointers, scalars = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)
        bound = [bind_launch(_linear_attention_fwd_kernel, plan.grid, (*pointers, out, state, *scalars, *plan.sizes),
                             keywords) for keywords in plan.passes[False]]

        def repeat(q, k, v, key_weights, query_weights, const):
            out, state = buffers()
            pointers = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)[0]
            for launch in bound:
                launch(*pointers, out, state, *scalars, *plan.sizes)
            return out

        return out, repeat

    def _linear_attention_bwd(
            grad: torch.Tensor,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None,
            const: torch.Tensor | None,
            const_value: float,
            state: torch.Tensor,
            feature: int,
            center_keys: bool,
            scale: float,
            normalize: bool,
            eps: float,
            need_const_grad: bool,
            direct_launch: bool = False,
            launch: Launch | None = None,
            clamp: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (dq, dk, dv, dkey_weights, dquery_weights, per-(batch, head) parts of dconst); absent ones empty.
        ``direct_launch``, ``clamp`` as in the forward; ``launch`` by default from
        :func:`.heuristics.backward_launch`."""
        batch, n, heads, dk = q.shape
        dv = v.shape[-1]
        meta = _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize, clamp)
        if launch is None:
            launch = backward_launch(batch * heads, n, dk, dv, meta["W"], q.device)
        dq = _empty(tuple(q.shape), q.dtype, q.device)
        dkey = _empty(tuple(k.shape), k.dtype, q.device)
        dval = _empty(tuple(v.shape), v.dtype, q.device)
        if key_weights is not None:
            dkw = _empty(tuple(key_weights.shape), key_weights.dtype, q.device)
            dqw = _empty(tuple(query_weights.shape), query_weights.dtype, q.device)
        else:
            dkw, dqw = q.new_empty((0,)), q.new_empty((0,))
        dconst = _empty((batch * heads,), torch.float32, q.device) if need_const_grad else q.new_empty((0,))
        dstate = torch.zeros_like(state) if launch.splits > 1 else state
        pointers, scalars = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)
        args = (
            *pointers, grad, state, dstate, dq, dkey, dval,
            dkw if dkw.numel() else dq, dqw if dqw.numel() else dq,
            dconst if need_const_grad else dq, *scalars, n, heads, dk, dv, launch.chunk, state.shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *_strides4(grad), *_strides4(dq), *_strides4(dval), *_strides4(dkw if dkw.numel() else None),
        )
        kernel = launcher(_linear_attention_bwd_kernel, direct_launch)
        config = dict(NEED_DC=need_const_grad, ROW_SCALED=normalize or key_weights is not None,
                      UNIT_D=_unit_last_stride(q, k, v, grad), **launch.options(), **meta)
        grid = (batch * heads, launch.splits)
        if launch.splits == 1:
            kernel[grid](*args, DO_Q=True, DO_KV=True, **config)
        else:
            kernel[grid](*args, DO_Q=True, DO_KV=False, **config)
            kernel[grid](*args, DO_Q=False, DO_KV=True, **config)
        return dq, dkey, dval, dkw, dqw, dconst

    # The custom ops traced by torch.compile: the default launch, kernels launched through wrap_triton.
    @torch.library.triton_op("vitzoo::linear_attention_fwd", mutates_args=())
    def _linear_attention_fwd_op(
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None,
            const: torch.Tensor | None,
            const_value: float,
            feature: int,
            center_keys: bool,
            scale: float,
            normalize: bool,
            eps: float,
            save_state: bool,
            clamp: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _linear_attention_fwd(q, k, v, key_weights, query_weights, const, const_value, feature, center_keys,
                                     scale, normalize, eps, save_state, clamp=clamp)

    @torch.library.triton_op("vitzoo::linear_attention_bwd", mutates_args=())
    def _linear_attention_bwd_op(
            grad: torch.Tensor,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_weights: torch.Tensor | None,
            query_weights: torch.Tensor | None,
            const: torch.Tensor | None,
            const_value: float,
            state: torch.Tensor,
            feature: int,
            center_keys: bool,
            scale: float,
            normalize: bool,
            eps: float,
            need_const_grad: bool,
            clamp: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _linear_attention_bwd(grad, q, k, v, key_weights, query_weights, const, const_value, state, feature,
                                     center_keys, scale, normalize, eps, need_const_grad, clamp=clamp)

    class _LinearAttentionFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, scale,
                    normalize, eps, save_state, clamp):
            options = (const_value, feature, center_keys, scale, normalize, eps)
            # torch.compile traces the custom op; eager calls skip its dispatch (host time on every call)
            if torch.compiler.is_compiling():
                out, state = _linear_attention_fwd_op(q, k, v, key_weights, query_weights, const, *options,
                                                      save_state, clamp)
            else:
                out, state = _linear_attention_fwd(q, k, v, key_weights, query_weights, const, *options, save_state,
                                                   direct_launch=True, clamp=clamp)
            ctx.save_for_backward(q, k, v, key_weights, query_weights, const, state)
            ctx.options, ctx.clamp = options, clamp
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, key_weights, query_weights, const, state = ctx.saved_tensors
            const_value, feature, center_keys, scale, normalize, eps = ctx.options
            need_const_grad = const is not None and ctx.needs_input_grad[5]
            args = (grad, q, k, v, key_weights, query_weights, const, const_value, state, feature, center_keys, scale,
                    normalize, eps, need_const_grad)
            if torch.compiler.is_compiling():
                dq, dk, dv, dkw, dqw, dconst = _linear_attention_bwd_op(*args, ctx.clamp)
            else:
                dq, dk, dv, dkw, dqw, dconst = _linear_attention_bwd(*args, direct_launch=True, clamp=ctx.clamp)
            if key_weights is None:
                dkw = dqw = None
            dconst = dconst.sum().reshape(const.shape).to(const.dtype) if need_const_grad else None
            return dq, dk, dv, dkw, dqw, dconst, None, None, None, None, None, None, None, None


def _check_kernel_inputs(q, k, v, key_weights, query_weights) -> None:
    check_kernel_qkv("linear_attention_triton", q, k, v)
    if key_weights is None:
        return
    for t in (key_weights, query_weights):
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"linear_attention_triton: weights must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"linear_attention_triton: all inputs must be on {q.device}, got one on {t.device}")
    if not 1 <= key_weights.shape[-1] <= _MAX_WEIGHTINGS:
        raise ValueError(
            f"linear_attention_triton: W={key_weights.shape[-1]} weightings; the kernel supports 1..{_MAX_WEIGHTINGS}"
        )


# The launches kept for eager calls with nothing to differentiate (:func:`_inference_key`).
_KEPT = KeptLaunches()
_NUMBERS = (float, int)


def _aligned(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t``, or a fresh contiguous copy (whose storage starts aligned) when its first element is not 16-byte
    aligned."""
    if t is None or t.data_ptr() % 16 == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _inference_key(q, k, v, key_weights, query_weights, feature_map, feature_const, center_keys, scale, normalize,
                   eps, clamp_denominator) -> tuple | None:
    """The key of an eager inference call's kept launches; None for a call that is not keyed (options that are not plain
    Python values, a constant tensor that needs a cast): it is checked and planned every time."""
    if type(scale) not in _NUMBERS or type(eps) not in _NUMBERS or type(feature_map) is not str \
            or any(type(flag) is not bool for flag in (center_keys, normalize, clamp_denominator)):
        return None
    if isinstance(feature_const, torch.Tensor):
        if feature_const.dtype != torch.float32 or feature_const.device != q.device:
            return None
        const_key = ("tensor", feature_const.shape, feature_const.data_ptr() % 16 == 0)
    elif feature_const is None or type(feature_const) in _NUMBERS:
        const_key = ("value", feature_const)
    else:
        return None
    return (tensor_key(q), tensor_key(k), tensor_key(v), tensor_key(key_weights), tensor_key(query_weights),
            const_key, feature_map, center_keys, scale, normalize, eps, clamp_denominator)


def linear_attention_triton(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_weights: torch.Tensor | None = None,
        query_weights: torch.Tensor | None = None,
        *,
        feature_map: str = "identity",
        feature_const: torch.Tensor | float | None = None,
        center_keys: bool = False,
        scale: float = 1.0,
        normalize: bool = False,
        eps: float = 1e-6,
        clamp_denominator: bool = False,
) -> torch.Tensor:
    """The fused Triton kernels behind :func:`linear_attention` (same arguments; fp16, bf16 or fp32 inputs)."""
    if not triton_available():
        raise RuntimeError("linear_attention_triton needs triton, which is not installed")
    compiling = torch.compiler.is_compiling()
    if not compiling:  # (a traced tensor has no address to look at)
        # Views that do not start on a 16-byte boundary (a slice at an odd offset) made the forward fault on an H100
        # (illegal memory access, Triton 3.6): the kernels read aligned copies of them
        q, k, v, key_weights, query_weights = (_aligned(t) for t in (q, k, v, key_weights, query_weights))
    const_tensor = feature_const if isinstance(feature_const, torch.Tensor) else None
    inputs = (q, k, v, key_weights, query_weights, const_tensor)
    save_state = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    eager_inference = not save_state and not compiling
    key = None
    if eager_inference:
        key = _inference_key(q, k, v, key_weights, query_weights, feature_map, feature_const, center_keys, scale,
                             normalize, eps, clamp_denominator)
        kept = _KEPT.get(key)
        if kept is not None:
            # (a keyed constant is already an fp32 tensor on q's device: its address is what the launch reads)
            return kept(q, k, v, key_weights, query_weights, const_tensor)
    check_inputs(q, k, v, key_weights, query_weights, feature_map, normalize, clamp_denominator,
                 feature_const=feature_const, scale=scale, eps=eps)
    _check_kernel_inputs(q, k, v, key_weights, query_weights)
    const, const_value = None, 0.0
    if const_tensor is not None:  # one element (check_inputs)
        const = const_tensor
        # (each no-op cast or reshape would still be a dispatch of host time)
        if const.device != q.device or const.dtype != torch.float32:
            const = const.to(device=q.device, dtype=torch.float32)
        if const.dim() != 1:
            const = const.reshape(1)
    elif feature_const is not None:
        const_value = float(feature_const)
    feature, center_keys, normalize = _FEATURE_CODES[feature_map], bool(center_keys), bool(normalize)
    clamp = bool(clamp_denominator)
    if eager_inference:
        # nothing to differentiate: launch directly, without the autograd Function's bookkeeping (host time)
        plan = _forward_plan(q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, normalize,
                             clamp=clamp)
        out, repeat = _bound_inference(q, k, v, key_weights, query_weights, const, const_value, scale, eps, plan)
        _KEPT.keep(key, repeat)
        return out
    return _LinearAttentionFunction.apply(
        q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, float(scale), normalize,
        float(eps), save_state, clamp,
    )


def linear_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_weights: torch.Tensor | None = None,
        query_weights: torch.Tensor | None = None,
        *,
        feature_map: str = "identity",
        feature_const: torch.Tensor | float | None = None,
        center_keys: bool = False,
        scale: float = 1.0,
        normalize: bool = False,
        eps: float = 1e-6,
        clamp_denominator: bool = False,
) -> torch.Tensor:
    """Non-causal linear attention over (B, N, H, D) inputs; returns (B, N, H, Dv) in v's dtype.

    Args:
        q, k: queries and keys, (B, N, H, Dk).
        v: values, (B, N, H, Dv); Dv may differ from Dk.
        key_weights: per-key weights a, (B, N, H, W); W states are built, one per weighting.
        query_weights: per-query coefficients b, (B, N, H, W), combining the W reads.
        feature_map: phi applied to q and k: 'identity', 'relu', 'l2norm', 'qt' (square, then L2-normalise) or
            'relu_eps' (ReLU plus ``eps``: FEM's released linear prior).
        feature_const: a constant feature c appended to phi(q) and phi(k) (a float or a 0-dim tensor that may
            require grad); adds c^2 to every similarity.
        center_keys: subtract the token mean of phi(k) (InLine's injective correction).
        scale: multiplies phi(q) . phi(k) (not the constant feature).
        normalize: divide by the same read of the key sum, plus ``eps``.
        eps: added to the normaliser (and the offset of 'relu_eps').
        clamp_denominator: with ``normalize``, divide by max(read, ``eps``) instead of read + ``eps`` (FEM's
            released linear prior).

    Raises:
        ValueError: one line naming the argument: shapes that do not fit, a tensor that is not float16 / bfloat16 /
            float32 / float64, a ``feature_const`` that is neither a real number nor a one-element float tensor, a
            ``scale`` or ``eps`` that is not a finite real number, an unknown ``feature_map``.
    """
    # float64 stays on the reference (the kernels accumulate in fp32), and so do empty inputs (nothing to launch)
    if kernel_backend(q.device) == "triton" and torch.float64 not in (q.dtype, k.dtype, v.dtype) and q.numel() > 0:
        return linear_attention_triton(
            q, k, v, key_weights, query_weights, feature_map=feature_map, feature_const=feature_const,
            center_keys=center_keys, scale=scale, normalize=normalize, eps=eps, clamp_denominator=clamp_denominator,
        )
    return linear_attention_reference(
        q, k, v, key_weights, query_weights, feature_map=feature_map, feature_const=feature_const,
        center_keys=center_keys, scale=scale, normalize=normalize, eps=eps, clamp_denominator=clamp_denominator,
    )
