"""The delta rule's entry points: the host launches of the kernels, their ``torch.library`` custom ops, the autograd
function, :func:`delta_rule_triton` and the dispatching :func:`delta_rule_bidirectional`.

Eager calls launch the kernels directly; inside ``torch.compile`` the custom ops run, their kernels launched through
``wrap_triton``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, inference_key, launcher
from ..utils import cdiv, check_kernel_qkv, kernel_backend, triton_available
from .heuristics import DEFAULT_LAUNCH, LaunchSettings, block_sizes, chunk_size, dot_mode, one_pass_inference
from .reference import check_inputs, delta_rule_bidirectional_reference

_DIRECTIONS = {"both": (0, 2), "forward": (0, 1), "reverse": (1, 1)}  # (first direction, number of directions)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride()[:3])


if triton_available():
    from .kernels import (
        _delta_rule_dstates_kernel,
        _delta_rule_grads_kernel,
        _delta_rule_output_kernel,
        _delta_rule_scan_output_kernel,
        _delta_rule_states_kernel,
        _delta_rule_wy_kernel,
    )

    # the training forward's kernels, in launch order (:func:`_three_kernel_launches`)
    _THREE_KERNELS = (_delta_rule_wy_kernel, _delta_rule_states_kernel, _delta_rule_output_kernel)

    def _delta_rule_fwd(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool = False,
            direct_launch: bool = False, launch: LaunchSettings | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training forward: (o, W, U, states, V', T), the last five what the backward reads.

        ``beta_logits``: ``beta`` holds logits, the write strengths are their sigmoid (taken in the kernels).
        ``direct_launch``: launch the Triton kernels themselves rather than through ``wrap_triton`` (eager callers).
        ``launch``: the launch settings; by default :data:`.heuristics.DEFAULT_LAUNCH` (the benchmarks pass others)."""
        launch = DEFAULT_LAUNCH if launch is None else launch
        chunk = chunk_size(q.shape[1], launch)
        return _three_kernel_forward(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits, chunk, True,
                                     direct_launch, launch)

    def _delta_rule_infer(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool = False,
            direct_launch: bool = False, launch: LaunchSettings | None = None,
    ) -> torch.Tensor:
        """The inference forward: o alone, nothing kept for a backward. While the sequences fill the GPU
        (``heuristics.one_pass_inference``) the recurrence and the output run as one kernel; otherwise the training
        forward's three kernels run without saving T. Arguments as :func:`_delta_rule_fwd`'s."""
        launch = DEFAULT_LAUNCH if launch is None else launch
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        if not one_pass_inference(b * h, dv, q.device, launch):
            return _three_kernel_forward(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits,
                                         chunk_size(n, launch), False, direct_launch, launch)[0]
        o, wy, scan = _one_pass_launches(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits, launch)
        for kernel, (grid, args, keywords) in ((_delta_rule_wy_kernel, wy), (_delta_rule_scan_output_kernel, scan)):
            launcher(kernel, direct_launch)[grid](*args, **keywords)
        return o

    def _one_pass_launches(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool, launch: LaunchSettings,
    ) -> tuple[torch.Tensor, tuple, tuple]:
        """The one-pass inference's output buffer and its two launches, the WY kernel's and then the scan's, each
        (grid, arguments, keywords)."""
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        chunk = chunk_size(n, launch, one_pass=True)
        # one program per sequence and value block: both directions run inside it
        bk, bv, bv_seq = block_sizes(dk, dv, b * h, q.device, launch)
        o = torch.empty(b, n, h, dv, device=q.device, dtype=v.dtype)
        common = dict(BT=chunk, BK=bk, FIRST_DIR=first_dir, L2NORM=qk_l2norm, DOT_MODE=dot_mode(q.dtype))
        w, u = _wy_buffers(k, v, num_dirs)
        wy = _wy_launch(k, v, beta, w, u, torch.empty(0, device=q.device, dtype=q.dtype), num_dirs, beta_logits, bv,
                        common, launch)
        scan_args = (q, k, w, u, o, *_strides(q), *_strides(k), *_strides(o), n, h, dk, dv, scale)
        scan = ((cdiv(dv, bv_seq), b * h), scan_args,
                dict(BV=bv_seq, NUM_DIRS=num_dirs, num_warps=launch.num_warps, **common))
        return o, wy, scan

    def _bound_inference(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool,
    ) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """The output of an eager inference call (:func:`_delta_rule_infer` with the default launch), and
        ``repeat(q, k, v, beta)``, which computes it for other inputs of the same key with bound launches."""
        args = (q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)
        b, n, h, _ = q.shape
        if one_pass_inference(b * h, v.shape[-1], q.device, DEFAULT_LAUNCH):
            o, (wy_grid, wy_args, wy_keywords), (scan_grid, scan_args, scan_keywords) = _one_pass_launches(
                *args, DEFAULT_LAUNCH)
            wy = bind_launch(_delta_rule_wy_kernel, wy_grid, wy_args, wy_keywords)
            scan = bind_launch(_delta_rule_scan_output_kernel, scan_grid, scan_args, scan_keywords)
            wy_sizes, scan_sizes = wy_args[6:], scan_args[5:]  # the arguments after the tensors
            o_shape = o.shape

            def repeat(q, k, v, beta):
                w, u = _wy_buffers(k, v, num_dirs)
                o = torch.empty(o_shape, device=q.device, dtype=v.dtype)
                wy(k, v, beta, w, u, torch.empty(0, device=q.device, dtype=q.dtype), *wy_sizes)
                scan(q, k, w, u, o, *scan_sizes)
                return o

            return o, repeat
        chunk = chunk_size(n, DEFAULT_LAUNCH)
        buffers = _three_kernel_buffers(q, v, num_dirs, chunk, False)
        launches = _three_kernel_launches(q, k, v, beta, buffers, *args[4:], chunk, DEFAULT_LAUNCH)
        wy, recurrence, output = (bind_launch(kernel, *launch)
                                  for kernel, launch in zip(_THREE_KERNELS, launches, strict=True))
        # the arguments after each launch's tensors: six for the WY kernel, five for the others
        wy_sizes, recurrence_sizes, output_sizes = (launch_args[tensors:] for (_, launch_args, _), tensors
                                                    in zip(launches, (6, 5, 5), strict=True))

        def repeat(q, k, v, beta):
            o, w, u, states, new_v, t_invs = _three_kernel_buffers(q, v, num_dirs, chunk, False)
            wy(k, v, beta, w, u, t_invs, *wy_sizes)
            recurrence(k, w, u, states, new_v, *recurrence_sizes)
            output(q, k, states, new_v, o, *output_sizes)
            return o

        return buffers[0], repeat

    def _wy_buffers(k: torch.Tensor, v: torch.Tensor, num_dirs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The WY kernel's W and U outputs, uninitialised."""
        b, n, h, dk = k.shape
        return (torch.empty(num_dirs, b * h, n, dk, device=k.device, dtype=k.dtype),
                torch.empty(num_dirs, b * h, n, v.shape[-1], device=k.device, dtype=k.dtype))

    def _wy_launch(
            k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
            t_invs: torch.Tensor, num_dirs: int, beta_logits: bool, bv: int, common: dict, launch: LaunchSettings,
    ) -> tuple[tuple[int, int], tuple, dict]:
        """The WY kernel's (grid, arguments, keywords): (W, U) of every chunk and direction into ``w`` and ``u``, and
        T^T into ``t_invs`` unless it is empty; ``common`` holds the chunk and the other settings the caller's kernels
        share."""
        b, n, h, dk = k.shape
        dv = v.shape[-1]
        chunk = common["BT"]
        return ((cdiv(n, chunk), b * h),
                (k, v, beta, w, u, t_invs, *_strides(k), *_strides(v), *beta.stride(), n, h, dk, dv),
                dict(LOG2_BT=chunk.bit_length() - 1, BV=bv, NUM_DIRS=num_dirs, STORE_T=t_invs.numel() > 0,
                     BETA_LOGITS=beta_logits, num_warps=launch.wy_num_warps, **common))

    def _three_kernel_buffers(
            q: torch.Tensor, v: torch.Tensor, num_dirs: int, chunk: int, store_t: bool,
    ) -> tuple[torch.Tensor, ...]:
        """The three kernels' outputs, uninitialised: (o, W, U, states, V', T); T empty without ``store_t``."""
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        nt = cdiv(n, chunk)
        work = dict(device=q.device, dtype=q.dtype)
        return (torch.empty(b, n, h, dv, device=q.device, dtype=v.dtype),
                torch.empty(num_dirs, b * h, n, dk, **work), torch.empty(num_dirs, b * h, n, dv, **work),
                torch.empty(num_dirs, b * h, nt, dk, dv, **work), torch.empty(num_dirs, b * h, n, dv, **work),
                torch.empty((num_dirs, b * h, nt, chunk, chunk) if store_t else (0,), **work))

    def _three_kernel_launches(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, buffers: tuple[torch.Tensor, ...],
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool, chunk: int,
            launch: LaunchSettings,
    ) -> tuple[tuple, tuple, tuple]:
        """The WY, states and output kernels' launches into ``buffers`` (:func:`_three_kernel_buffers`), each (grid,
        arguments, keywords)."""
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        o, w, u, states, new_v, t_invs = buffers
        bk, bv, bv_seq = block_sizes(dk, dv, b * h * num_dirs, q.device, launch)
        common = dict(BT=chunk, BK=bk, FIRST_DIR=first_dir, L2NORM=qk_l2norm, DOT_MODE=dot_mode(q.dtype))
        wy = _wy_launch(k, v, beta, w, u, t_invs, num_dirs, beta_logits, bv, common, launch)
        recurrence = ((cdiv(dv, bv_seq), b * h, num_dirs), (k, w, u, states, new_v, *_strides(k), n, h, dk, dv),
                      dict(BV=bv_seq, num_warps=launch.num_warps, **common))
        output = ((cdiv(n, chunk), b * h),
                  (q, k, states, new_v, o, *_strides(q), *_strides(k), *_strides(o), n, h, dk, dv, scale),
                  dict(BV=bv, NUM_DIRS=num_dirs, num_warps=launch.num_warps, **common))
        return wy, recurrence, output

    def _three_kernel_forward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool, chunk: int, store_t: bool,
            direct_launch: bool, launch: LaunchSettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(o, W, U, states, V', T) from the WY, states and output kernels; T empty without ``store_t``."""
        buffers = _three_kernel_buffers(q, v, num_dirs, chunk, store_t)
        launches = _three_kernel_launches(q, k, v, beta, buffers, scale, qk_l2norm, first_dir, num_dirs, beta_logits,
                                          chunk, launch)
        for kernel, (grid, args, keywords) in zip(_THREE_KERNELS, launches, strict=True):
            launcher(kernel, direct_launch)[grid](*args, **keywords)
        return buffers

    def _delta_rule_bwd(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, grad: torch.Tensor,
            w: torch.Tensor, u: torch.Tensor, states: torch.Tensor, new_v: torch.Tensor, t_invs: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool = False,
            direct_launch: bool = False, launch: LaunchSettings | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv, dbeta) from the forward's saved tensors. ``direct_launch`` as in the forward; ``launch``
        (default :data:`.heuristics.DEFAULT_LAUNCH`) sets warps and value blocks, while the chunk is the one the
        forward ran with, read from the saved T."""
        launch = DEFAULT_LAUNCH if launch is None else launch
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        chunk = t_invs.shape[-1]
        nt = cdiv(n, chunk)
        bk, bv, bv_seq = block_sizes(dk, dv, b * h * num_dirs, q.device, launch)
        d_states = torch.empty_like(states)
        d_new_v = torch.empty_like(new_v)
        dq = torch.empty(b, n, h, dk, device=q.device, dtype=q.dtype)
        dk_ = torch.empty(b, n, h, dk, device=q.device, dtype=k.dtype)
        dv_ = torch.empty(b, n, h, dv, device=q.device, dtype=v.dtype)
        dbeta = torch.empty(b, n, h, device=q.device, dtype=beta.dtype)
        common = dict(BT=chunk, BK=bk, FIRST_DIR=first_dir, NUM_DIRS=num_dirs, L2NORM=qk_l2norm,
                      DOT_MODE=dot_mode(q.dtype))
        launcher(_delta_rule_dstates_kernel, direct_launch)[(cdiv(dv, bv_seq), b * h, num_dirs)](
            q, k, w, grad, d_states, d_new_v, *_strides(q), *_strides(k), *_strides(grad), n, h, dk, dv, scale,
            BV=bv_seq, num_warps=launch.num_warps, **common,
        )
        launcher(_delta_rule_grads_kernel, direct_launch)[(nt, b * h)](
            q, k, v, beta, grad, w, u, states, new_v, d_states, d_new_v, t_invs, dq, dk_, dv_, dbeta,
            *_strides(q), *_strides(k), *_strides(v), *beta.stride(), *_strides(grad), n, h, dk, dv, scale,
            BV=bv, BETA_LOGITS=beta_logits, num_warps=launch.grads_num_warps, **common,
        )
        return dq, dk_, dv_, dbeta

    # The custom ops traced by torch.compile: the default launch, kernels launched through wrap_triton.
    @torch.library.triton_op("vitzoo::delta_rule_fwd", mutates_args=())
    def _delta_rule_fwd_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _delta_rule_fwd(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)

    @torch.library.triton_op("vitzoo::delta_rule_infer", mutates_args=())
    def _delta_rule_infer_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool,
    ) -> torch.Tensor:
        return _delta_rule_infer(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)

    @torch.library.triton_op("vitzoo::delta_rule_bwd", mutates_args=())
    def _delta_rule_bwd_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, grad: torch.Tensor,
            w: torch.Tensor, u: torch.Tensor, states: torch.Tensor, new_v: torch.Tensor, t_invs: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, beta_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _delta_rule_bwd(q, k, v, beta, grad, w, u, states, new_v, t_invs, scale, qk_l2norm, first_dir,
                               num_dirs, beta_logits)

    class _DeltaRuleFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits):
            # torch.compile traces the custom ops; eager calls launch the kernels directly (no dispatch host time)
            args = (q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)
            o, w, u, states, new_v, t_invs = (_delta_rule_fwd_op(*args) if torch.compiler.is_compiling()
                                              else _delta_rule_fwd(*args, direct_launch=True))
            ctx.save_for_backward(q, k, v, beta, w, u, states, new_v, t_invs)
            ctx.args = (scale, qk_l2norm, first_dir, num_dirs, beta_logits)
            return o

        @staticmethod
        def backward(ctx, grad_o):
            q, k, v, beta, w, u, states, new_v, t_invs = ctx.saved_tensors
            if grad_o.stride(-1) != 1:  # e.g. the stride-0 gradient of a .sum()
                grad_o = grad_o.contiguous()
            args = (q, k, v, beta, grad_o, w, u, states, new_v, t_invs, *ctx.args)
            grads = (_delta_rule_bwd_op(*args) if torch.compiler.is_compiling()
                     else _delta_rule_bwd(*args, direct_launch=True))
            return (*grads, None, None, None, None, None)


# The launches kept for eager inference calls, by the inference_key of q, k, v, beta and the options.
_KEPT = KeptLaunches()


def delta_rule_triton(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
        directions: str = "both",
        beta_logits: bool = False,
) -> torch.Tensor:
    """The Triton delta rule: 'both' (average of the two scan orders), 'forward' or 'reverse' (one scan).
    ``beta_logits``: ``beta`` holds logits; the kernels take their sigmoid.

    fp32 / fp16 / bf16 inputs; returns v's dtype. Head dims up to 128 (any size; powers of two are fastest).
    """
    # plain option values only (a tensor scale is not hashable; its call is checked and launched every time)
    options = (scale, qk_l2norm, directions, beta_logits)
    plain = all(o is None or o.__class__ in (bool, int, float, str) for o in options)
    key = inference_key(q, k, v, beta, options=options) if plain else None
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(q, k, v, beta)
    if not triton_available():
        raise RuntimeError("delta_rule_triton needs triton, which is not installed")
    check_inputs(q, k, v, beta)
    check_kernel_qkv("delta_rule_triton", q, k, v)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("delta_rule_triton needs a unit stride on the head dim of q, k and v")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"delta_rule_triton: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if directions not in _DIRECTIONS:
        raise ValueError(f"delta_rule_triton: directions={directions!r} is not one of {tuple(_DIRECTIONS)}")
    first_dir, num_dirs = _DIRECTIONS[directions]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, beta)):
        return _DeltaRuleFunction.apply(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)
    args = (q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, beta_logits)
    if torch.compiler.is_compiling():
        return _delta_rule_infer_op(*args)
    if key is not None:
        o, repeat = _bound_inference(*args)
        _KEPT.keep(key, repeat)
        return o
    return _delta_rule_infer(*args, direct_launch=True)


def delta_rule_bidirectional(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
        beta_logits: bool = False,
) -> torch.Tensor:
    """Bidirectional delta rule: 0.5 * (scan in token order + scan in reversed order, flipped back).

    Args:
        q, k: (B, N, H, Dk); L2-normalised per head inside the op when ``qk_l2norm`` (fused in the kernels).
        v: (B, N, H, Dv).
        beta: (B, N, H), write strengths in (0, 1), or their logits with ``beta_logits``.
        scale: multiplies q; default Dk^-1/2.
        qk_l2norm: normalise q and k to unit length first.
        beta_logits: the write strengths are sigmoid(beta), taken inside the kernels (no launch of its own).

    Returns:
        (B, N, H, Dv) in v's dtype. Runs the Triton kernels when ``kernel_backend(q.device) == 'triton'`` and the
        inputs are neither float64 nor empty; otherwise :func:`delta_rule_bidirectional_reference`.
    """
    if kernel_backend(q.device) == "triton" and q.dtype != torch.float64 and q.numel() > 0:
        return delta_rule_triton(q, k, v, beta, scale=scale, qk_l2norm=qk_l2norm, directions="both",
                                 beta_logits=beta_logits)
    return delta_rule_bidirectional_reference(q, k, v, beta, scale=scale, qk_l2norm=qk_l2norm, beta_logits=beta_logits)

