"""Non-causal linear attention: one op family for every linear mixer in the zoo.

Per (batch, head), with a feature map phi and an optional appended constant feature c:

    sim(q, k)  = scale * phi(q) . phi~(k) + c^2          phi~(k_i) = phi(k_i) - mean_j phi(k_j) if center_keys
    state_w    = sum_i a_{i,w} [phi~(k_i), c] v_i^T       (w = 1..W weightings, a = key_weights)
    z_w        = sum_i a_{i,w} [phi~(k_i), c]
    num_t      = sum_w b_{t,w} [sqrt(scale) phi(q_t), c]^T state_w   (b = query_weights)
    out_t      = num_t / (sum_w b_{t,w} [...]^T z_w + eps)   if normalize else num_t

How the mixers use it (see ``vitzoo/mixers``):
    ReLU linear   feature_map='relu', normalize=True
    InLine        identity, center_keys=True, scale=d^-1/2 / N, feature_const=N^-1/2 (weights sum to 1)
    QT            feature_map='qt' (x^2 / ||x^2||), feature_const=learnable c, normalize=True
    ZeroS         feature_map='l2norm', W=3 key weights (e^s, s, 1) and per-query coefficients
    FEM (linear)  feature_map='relu', normalize=True, on doubled values [v, exp(beta v - M)]

Layout is the one the mixers produce from a fused qkv projection: (B, N, H, D), any strides with a unit
stride on D. Accumulation is fp32 whatever the input dtype (float64 inputs stay float64 in the reference).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._backend import _interpreting, cdiv, kernel_backend, next_power_of_2

FEATURE_MAPS = ("identity", "relu", "l2norm", "qt")
_FEATURE_EPS = 1e-12  # guards the L2 norms of 'l2norm' and 'qt' (as F.normalize)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_weights: torch.Tensor | None,
        query_weights: torch.Tensor | None,
        feature_map: str,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"linear_attention expects q, k, v of shape (B, N, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise ValueError(
            f"linear_attention: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"linear_attention: v must share (B, N, H) with q; got v {tuple(v.shape)} and q {tuple(q.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"linear_attention: {name} has dtype {t.dtype}; use float16, bfloat16, float32 or float64")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"linear_attention: feature_map={feature_map!r} is not one of {FEATURE_MAPS}")
    if (key_weights is None) != (query_weights is None):
        raise ValueError("linear_attention: key_weights and query_weights must be given together")
    if key_weights is not None:
        expected = (*q.shape[:3], key_weights.shape[-1])
        if key_weights.dim() != 4 or key_weights.shape != expected or query_weights.shape != expected:
            raise ValueError(
                f"linear_attention: key_weights and query_weights must both be (B, N, H, W) = {expected}; got "
                f"{tuple(key_weights.shape)} and {tuple(query_weights.shape)}"
            )


def apply_feature_map(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """The elementwise / per-token feature maps phi, in the precision of ``x``."""
    if feature_map == "identity":
        return x
    if feature_map == "relu":
        return F.relu(x)
    if feature_map == "l2norm":
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_FEATURE_EPS)
    if feature_map == "qt":
        # QT-ViT's normalise -> square -> normalise equals square -> normalise: the first norm cancels.
        sq = x * x
        return sq / sq.norm(dim=-1, keepdim=True).clamp_min(_FEATURE_EPS)
    raise ValueError(f"feature_map={feature_map!r} is not one of {FEATURE_MAPS}")


def linear_attention_reference(
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
) -> torch.Tensor:
    """Plain PyTorch linear attention, the specification of :func:`linear_attention` (same arguments)."""
    _check_inputs(q, k, v, key_weights, query_weights, feature_map)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out_dtype = v.dtype
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    phi_q = apply_feature_map(q, feature_map) * scale**0.5
    phi_k = apply_feature_map(k, feature_map) * scale**0.5
    if center_keys:
        phi_k = phi_k - phi_k.mean(dim=1, keepdim=True)
    if feature_const is not None:
        const = torch.as_tensor(feature_const, dtype=acc, device=q.device).reshape(1, 1, 1, 1)
        phi_q = torch.cat([phi_q, const.expand(*phi_q.shape[:3], 1)], dim=-1)
        phi_k = torch.cat([phi_k, const.expand(*phi_k.shape[:3], 1)], dim=-1)
    if key_weights is None:
        a = torch.ones(*q.shape[:3], 1, dtype=acc, device=q.device)
        b = a
    else:
        a, b = key_weights.to(acc), query_weights.to(acc)
    state = torch.einsum("bnhw,bnhk,bnhv->bhwkv", a, phi_k, v)
    out = torch.einsum("bnhw,bnhk,bhwkv->bnhv", b, phi_q, state)
    if normalize:
        z = torch.einsum("bnhw,bnhk->bhwk", a, phi_k)
        den = torch.einsum("bnhw,bnhk,bhwk->bnh", b, phi_q, z)
        out = out / (den.unsqueeze(-1) + eps)
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Triton implementation: one forward and one backward kernel whose constexpr switches cover the whole family.
#
# Pass 1 (keys) accumulates, per weighting w, the raw fp32 sums S_w = sum_i a_iw phi_i v_i^T, z_w = sum_i a_iw phi_i,
# u_w = sum_i a_iw v_i, s_w = sum_i a_iw, plus the unweighted key sum; centring and the constant feature are folded
# in afterwards from these sums (S~_w = S_w - kbar u_w^T, z~_w = z_w - kbar s_w, constant row c u_w), so K and V are
# read once. Pass 2 (queries) reads the states. When there are enough (batch, head) pairs to fill the GPU one
# program does both passes and the states never leave the chip; otherwise pass 1 is split over N with fp32 atomics
# into a zeroed state buffer and pass 2 runs as a second launch. The backward mirrors this: the query pass rebuilds
# the output, writes dq (and dquery_weights) and accumulates dS_w, dz_w, dr_w = sum_t b_tw dnum_t, dzc_w; the key pass
# writes dk, dv (and dkey_weights); the centring's mean term and the constant's gradient come from the states.
# ---------------------------------------------------------------------------------------------------------------
try:
    import triton
    import triton.language as tl
except ImportError:  # the module stays importable; kernel_backend() then always picks the reference
    triton = None

_FEATURE_CODES = {name: code for code, name in enumerate(FEATURE_MAPS)}  # identity 0, relu 1, l2norm 2, qt 3
_MAX_HEAD_DIM = 128
_MAX_WEIGHTINGS = 3
_INTERPRETER_PROGRAMS = 4  # the "GPU size" the split heuristic assumes under TRITON_INTERPRET=1 (CPU tests)
_PROGRAMS_PER_SM = 4  # split N until B*H*splits reaches this many programs per SM (H200 sweep: 4 beats 2)
# benchmark-only knobs (benchmarks/linear_attention.py --sweep): fixed launch configs, dot precision
_LAUNCH_OVERRIDE: dict[bool, tuple[int, int, int]] | None = None
_PREC_OVERRIDE: str | None = None


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels fully overwrite comes from here (the tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _state_size(weightings: int, dk: int, dv: int) -> int:
    """fp32 words per (batch, head): W x (S: dk x dv, u: dv, z: dk, s: 1) followed by the key sum (dk)."""
    return weightings * (dk * dv + dv + dk + 1) + dk


def _padded(dim: int) -> int:
    return max(16, next_power_of_2(dim))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _launch_params(dkp: int, dvp: int, weightings: int, backward: bool, split: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages): one fixed config per shape class, no autotuning. ``split``: the sequence is
    divided over several programs (B*H alone does not fill the GPU)."""
    if _interpreting():
        return 64, 4, 1
    if _LAUNCH_OVERRIDE is not None:
        return _LAUNCH_OVERRIDE[backward]
    if dkp * dvp > 64 * 64 or weightings > 1:  # more state per program: smaller tiles, fewer pipeline stages
        return (32, 8, 2) if backward else (64, 8, 2)
    # Three stages keep two K/V tiles in flight. Backward: 32-token tiles when each program walks a whole sequence,
    # 64 when the sequence is split (H200 launch sweep in benchmarks/NOTES.md).
    if backward:
        return (64, 4, 3) if split else (32, 4, 3)
    return 64, 4, 3


def _splits(bh: int, n: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(number of N-splits, tokens per split): split only when B*H programs cannot fill the GPU."""
    programs = _PROGRAMS_PER_SM * _sm_count(device.index or 0) if device.type == "cuda" else _INTERPRETER_PROGRAMS
    splits = min(cdiv(programs, bh), cdiv(n, 2 * block_n))
    if splits <= 1:
        return 1, n
    chunk = cdiv(cdiv(n, splits), block_n) * block_n
    return cdiv(n, chunk), chunk


def _dot_precision(*tensors: torch.Tensor) -> str:
    """fp32 inputs: exact fp32 products. bf16: bf16 tensor-core products, fp32 states split into two bf16 halves.
    fp16: tf32 (fp32 range, so states never overflow fp16). The interpreter always multiplies in fp32."""
    if _PREC_OVERRIDE is not None:
        return _PREC_OVERRIDE
    if _interpreting() or any(t.dtype == torch.float32 for t in tensors):
        return "ieee"
    return "bf16" if all(t.dtype == torch.bfloat16 for t in tensors) else "tf32"


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


if triton is not None:

    @triton.jit
    def _load_rows(base, offs_n, offs_d, s_n, s_d, n_end, dim):
        mask = (offs_n < n_end)[:, None] & (offs_d < dim)[None, :]
        return tl.load(base + offs_n[:, None] * s_n + offs_d[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _store_rows(base, x, offs_n, offs_d, s_n, s_d, n_end, dim):
        mask = (offs_n < n_end)[:, None] & (offs_d < dim)[None, :]
        tl.store(base + offs_n[:, None] * s_n + offs_d[None, :] * s_d, x.to(base.dtype.element_ty), mask=mask)

    @triton.jit
    def _load_weight(base, offs_n, s_n, n_end, HAS_WEIGHTS: tl.constexpr):
        rows = offs_n < n_end
        if HAS_WEIGHTS:
            weight = tl.load(base + offs_n * s_n, mask=rows, other=0.0).to(tl.float32)
        else:
            weight = rows.to(tl.float32)  # unit weights on real rows, zero on padding
        return weight

    @triton.jit
    def _store_weight(base, x, offs_n, s_n, n_end):
        tl.store(base + offs_n * s_n, x.to(base.dtype.element_ty), mask=offs_n < n_end)

    @triton.jit
    def _load_const(c_ptr, c_value, CONST_PTR: tl.constexpr):
        if CONST_PTR:
            c = tl.load(c_ptr).to(tl.float32)
        else:
            c = c_value
        return c

    @triton.jit
    def _feature_fwd(x, FEATURE: tl.constexpr):
        if FEATURE == 1:
            y = tl.maximum(x, 0.0)
        elif FEATURE == 2:
            y = x / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), 1e-12)[:, None]
        elif FEATURE == 3:
            sq = x * x
            y = sq / tl.maximum(tl.sqrt(tl.sum(sq * sq, 1)), 1e-12)[:, None]
        else:
            y = x
        return y

    @triton.jit
    def _unit_norm_bwd(x, g):
        # y = x / max(||x||, eps): dx = (g - [||x|| > eps] y (y . g)) / max(||x||, eps)
        norm = tl.sqrt(tl.sum(x * x, 1))
        clamped = tl.maximum(norm, 1e-12)
        y = x / clamped[:, None]
        proj = tl.where(norm > 1e-12, tl.sum(y * g, 1), 0.0)
        return (g - y * proj[:, None]) / clamped[:, None]

    @triton.jit
    def _feature_bwd(x, g, FEATURE: tl.constexpr):
        if FEATURE == 1:
            dx = tl.where(x > 0, g, 0.0)
        elif FEATURE == 2:
            dx = _unit_norm_bwd(x, g)
        elif FEATURE == 3:
            dx = 2.0 * x * _unit_norm_bwd(x * x, g)
        else:
            dx = g
        return dx

    @triton.jit
    def _state_ptrs(base, w, W: tl.constexpr, DK, DV, offs_k, offs_v):
        s_ptrs = base + w * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        u_ptrs = base + W * DK * DV + w * DV + offs_v
        z_ptrs = base + W * (DK * DV + DV) + w * DK + offs_k
        sum_ptr = base + W * (DK * DV + DV + DK) + w
        return s_ptrs, z_ptrs, u_ptrs, sum_ptr

    @triton.jit
    def _load_state(base, w, W: tl.constexpr, DK, DV, offs_k, offs_v):
        s_ptrs, z_ptrs, u_ptrs, sum_ptr = _state_ptrs(base, w, W, DK, DV, offs_k, offs_v)
        mk = offs_k < DK
        mv = offs_v < DV
        state = tl.load(s_ptrs, mask=mk[:, None] & mv[None, :], other=0.0)
        return state, tl.load(z_ptrs, mask=mk, other=0.0), tl.load(u_ptrs, mask=mv, other=0.0), tl.load(sum_ptr)

    @triton.jit
    def _store_state(base, w, W: tl.constexpr, DK, DV, offs_k, offs_v, state, z, u, total, ATOMIC: tl.constexpr):
        s_ptrs, z_ptrs, u_ptrs, sum_ptr = _state_ptrs(base, w, W, DK, DV, offs_k, offs_v)
        mk = offs_k < DK
        mv = offs_v < DV
        if ATOMIC:
            tl.atomic_add(s_ptrs, state, mask=mk[:, None] & mv[None, :], sem="relaxed")
            tl.atomic_add(z_ptrs, z, mask=mk, sem="relaxed")
            tl.atomic_add(u_ptrs, u, mask=mv, sem="relaxed")
            tl.atomic_add(sum_ptr, total, sem="relaxed")
        else:
            tl.store(s_ptrs, state, mask=mk[:, None] & mv[None, :])
            tl.store(z_ptrs, z, mask=mk)
            tl.store(u_ptrs, u, mask=mv)
            tl.store(sum_ptr, total)

    @triton.jit
    def _dot_data(a, b, acc, PREC: tl.constexpr):
        # a @ b + acc for two data-like operands (inputs, features, incoming grads)
        if PREC == "bf16":
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc=acc)
        else:
            out = tl.dot(a, b, acc=acc, input_precision=PREC)
        return out

    @triton.jit
    def _dot_state(a, state, PREC: tl.constexpr):
        # a @ state with an fp32 state: in bf16 the state is split into high and low halves (~16 mantissa bits)
        if PREC == "bf16":
            a16 = a.to(tl.bfloat16)
            high = state.to(tl.bfloat16)
            out = tl.dot(a16, high, out_dtype=tl.float32)
            out = tl.dot(a16, (state - high.to(tl.float32)).to(tl.bfloat16), acc=out)
        else:
            out = tl.dot(a, state, input_precision=PREC)
        return out

    @triton.jit
    def _zero_state(DKP: tl.constexpr, DVP: tl.constexpr):
        z = tl.zeros((DKP,), tl.float32)
        return tl.zeros((DKP, DVP), tl.float32), z, tl.zeros((DVP,), tl.float32), tl.sum(z, 0)

    @triton.jit
    def _accumulate_state(phi, v, weight, state, z, u, total, PREC: tl.constexpr):
        weighted = phi * weight[:, None]
        state = _dot_data(tl.trans(weighted), v, state, PREC)
        return state, z + tl.sum(weighted, 0), u + tl.sum(v * weight[:, None], 0), total + tl.sum(weight, 0)

    @triton.jit
    def _finalize_state(state, z, u, total, kbar, c2):
        # centred keys (kbar is zero without centring); the constant feature adds c^2 u to every read and c^2 s to z
        return state - kbar[:, None] * u[None, :], z - kbar * total, c2 * u, c2 * total

    @triton.jit
    def _read_state(phi, state, z, r, zc, PREC: tl.constexpr):
        num = _dot_state(phi, state, PREC) + r[None, :]
        den = tl.sum(phi * z[None, :], 1) + zc
        return num, den

    @triton.jit
    def _query_grads(phi, dnum, dden, weight, num_w, den_w, state, z, ds, dz, dr, dzc, PREC: tl.constexpr):
        dweight = tl.sum(num_w * dnum, 1) + den_w * dden
        dphi = (_dot_state(dnum, tl.trans(state), PREC) + dden[:, None] * z[None, :]) * weight[:, None]
        ds = _dot_data(tl.trans(phi * weight[:, None]), dnum, ds, PREC)
        wden = dden * weight
        return dphi, dweight, ds, dz + tl.sum(phi * wden[:, None], 0), dr + tl.sum(dnum * weight[:, None], 0), \
            dzc + tl.sum(wden, 0)

    @triton.jit
    def _key_grads(phi, v, weight, ds, dz, dr, dzc, c2, PREC: tl.constexpr):
        dv_unit = _dot_state(phi, ds, PREC) + c2 * dr[None, :]
        dweight = tl.sum(dv_unit * v, 1) + tl.sum(phi * dz[None, :], 1) + c2 * dzc
        dphi = (_dot_state(v, tl.trans(ds), PREC) + dz[None, :]) * weight[:, None]
        return dv_unit * weight[:, None], dphi, dweight

    @triton.jit(do_not_specialize=["N", "chunk"])
    def _linear_attention_fwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c_ptr, o_ptr, state_ptr,
            c_value, scale_sqrt, eps, N, H, DK, DV, chunk, state_stride,
            sq_b, sq_n, sq_h, sq_d, sk_b, sk_n, sk_h, sk_d, sv_b, sv_n, sv_h, sv_d,
            sa_b, sa_n, sa_h, sa_w, sb_b, sb_n, sb_h, sb_w, so_b, so_n, so_h, so_d,
            W: tl.constexpr, HAS_WEIGHTS: tl.constexpr, FEATURE: tl.constexpr, CENTER: tl.constexpr,
            CONST_PTR: tl.constexpr, NORMALIZE: tl.constexpr, DO_STATE: tl.constexpr, DO_OUTPUT: tl.constexpr,
            STORE_STATE: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr,
            DVP: tl.constexpr, PREC: tl.constexpr,
    ):
        # float scalars arrive as fp32 from eager launches but as fp64 from Inductor: fix them to fp32
        c_value = tl.cast(c_value, tl.float32)
        scale_sqrt = tl.cast(scale_sqrt, tl.float32)
        eps = tl.cast(eps, tl.float32)
        pid_bh = tl.program_id(0)
        n_begin = tl.program_id(1) * chunk
        n_end = tl.minimum(n_begin + chunk, N)
        bi = (pid_bh // H).to(tl.int64)
        hi = (pid_bh % H).to(tl.int64)
        rows = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, DKP)
        offs_v = tl.arange(0, DVP)
        st_base = state_ptr + pid_bh.to(tl.int64) * state_stride
        ksum_ptrs = st_base + W * (DK * DV + DV + DK + 1) + offs_k

        if DO_STATE:
            k_base = k_ptr + bi * sk_b + hi * sk_h
            v_base = v_ptr + bi * sv_b + hi * sv_h
            a_base = a_ptr + bi * sa_b + hi * sa_h
            s0, z0, u0, t0 = _zero_state(DKP, DVP)
            if W >= 2:
                s1, z1, u1, t1 = _zero_state(DKP, DVP)
            if W >= 3:
                s2, z2, u2, t2 = _zero_state(DKP, DVP)
            ksum = tl.zeros((DKP,), tl.float32)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                phi = _feature_fwd(_load_rows(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK), FEATURE) * scale_sqrt
                vt = _load_rows(v_base, offs_n, offs_v, sv_n, sv_d, n_end, DV)
                if CENTER:
                    ksum += tl.sum(phi, 0)
                aw = _load_weight(a_base, offs_n, sa_n, n_end, HAS_WEIGHTS)
                s0, z0, u0, t0 = _accumulate_state(phi, vt, aw, s0, z0, u0, t0, PREC)
                if W >= 2:
                    aw = _load_weight(a_base + sa_w, offs_n, sa_n, n_end, HAS_WEIGHTS)
                    s1, z1, u1, t1 = _accumulate_state(phi, vt, aw, s1, z1, u1, t1, PREC)
                if W >= 3:
                    aw = _load_weight(a_base + 2 * sa_w, offs_n, sa_n, n_end, HAS_WEIGHTS)
                    s2, z2, u2, t2 = _accumulate_state(phi, vt, aw, s2, z2, u2, t2, PREC)
            if STORE_STATE:
                _store_state(st_base, 0, W, DK, DV, offs_k, offs_v, s0, z0, u0, t0, ATOMIC)
                if W >= 2:
                    _store_state(st_base, 1, W, DK, DV, offs_k, offs_v, s1, z1, u1, t1, ATOMIC)
                if W >= 3:
                    _store_state(st_base, 2, W, DK, DV, offs_k, offs_v, s2, z2, u2, t2, ATOMIC)
                if CENTER:
                    if ATOMIC:
                        tl.atomic_add(ksum_ptrs, ksum, mask=offs_k < DK, sem="relaxed")
                    else:
                        tl.store(ksum_ptrs, ksum, mask=offs_k < DK)
        else:
            s0, z0, u0, t0 = _load_state(st_base, 0, W, DK, DV, offs_k, offs_v)
            if W >= 2:
                s1, z1, u1, t1 = _load_state(st_base, 1, W, DK, DV, offs_k, offs_v)
            if W >= 3:
                s2, z2, u2, t2 = _load_state(st_base, 2, W, DK, DV, offs_k, offs_v)
            if CENTER:
                ksum = tl.load(ksum_ptrs, mask=offs_k < DK, other=0.0)
            else:
                ksum = tl.zeros((DKP,), tl.float32)

        if DO_OUTPUT:
            q_base = q_ptr + bi * sq_b + hi * sq_h
            b_base = b_ptr + bi * sb_b + hi * sb_h
            o_base = o_ptr + bi * so_b + hi * so_h
            c = _load_const(c_ptr, c_value, CONST_PTR)
            kbar = ksum / N
            s0, z0, r0, zc0 = _finalize_state(s0, z0, u0, t0, kbar, c * c)
            if W >= 2:
                s1, z1, r1, zc1 = _finalize_state(s1, z1, u1, t1, kbar, c * c)
            if W >= 3:
                s2, z2, r2, zc2 = _finalize_state(s2, z2, u2, t2, kbar, c * c)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                phi = _feature_fwd(_load_rows(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK), FEATURE) * scale_sqrt
                bw = _load_weight(b_base, offs_n, sb_n, n_end, HAS_WEIGHTS)
                num_w, den_w = _read_state(phi, s0, z0, r0, zc0, PREC)
                num = num_w * bw[:, None]
                den = den_w * bw
                if W >= 2:
                    bw = _load_weight(b_base + sb_w, offs_n, sb_n, n_end, HAS_WEIGHTS)
                    num_w, den_w = _read_state(phi, s1, z1, r1, zc1, PREC)
                    num += num_w * bw[:, None]
                    den += den_w * bw
                if W >= 3:
                    bw = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end, HAS_WEIGHTS)
                    num_w, den_w = _read_state(phi, s2, z2, r2, zc2, PREC)
                    num += num_w * bw[:, None]
                    den += den_w * bw
                if NORMALIZE:
                    num = num / (den + eps)[:, None]
                _store_rows(o_base, num, offs_n, offs_v, so_n, so_d, n_end, DV)

    @triton.jit(do_not_specialize=["N", "chunk"])
    def _linear_attention_bwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c_ptr, g_ptr, state_ptr, dstate_ptr,
            dq_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, dc_ptr,
            c_value, scale_sqrt, eps, N, H, DK, DV, chunk, state_stride,
            sq_b, sq_n, sq_h, sq_d, sk_b, sk_n, sk_h, sk_d, sv_b, sv_n, sv_h, sv_d,
            sa_b, sa_n, sa_h, sa_w, sb_b, sb_n, sb_h, sb_w, sg_b, sg_n, sg_h, sg_d,
            sdk_b, sdk_n, sdk_h, sdk_d, sdv_b, sdv_n, sdv_h, sdv_d, sdw_b, sdw_n, sdw_h, sdw_w,
            W: tl.constexpr, HAS_WEIGHTS: tl.constexpr, FEATURE: tl.constexpr, CENTER: tl.constexpr,
            CONST_PTR: tl.constexpr, NORMALIZE: tl.constexpr, DO_Q: tl.constexpr, DO_KV: tl.constexpr,
            NEED_DC: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
            PREC: tl.constexpr,
    ):
        c_value = tl.cast(c_value, tl.float32)
        scale_sqrt = tl.cast(scale_sqrt, tl.float32)
        eps = tl.cast(eps, tl.float32)
        pid_bh = tl.program_id(0)
        pid_split = tl.program_id(1)
        n_begin = pid_split * chunk
        n_end = tl.minimum(n_begin + chunk, N)
        bi = (pid_bh // H).to(tl.int64)
        hi = (pid_bh % H).to(tl.int64)
        rows = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, DKP)
        offs_v = tl.arange(0, DVP)
        st_base = state_ptr + pid_bh.to(tl.int64) * state_stride
        dst_base = dstate_ptr + pid_bh.to(tl.int64) * state_stride

        s0, z0, u0, t0 = _load_state(st_base, 0, W, DK, DV, offs_k, offs_v)
        if W >= 2:
            s1, z1, u1, t1 = _load_state(st_base, 1, W, DK, DV, offs_k, offs_v)
        if W >= 3:
            s2, z2, u2, t2 = _load_state(st_base, 2, W, DK, DV, offs_k, offs_v)
        if CENTER:
            kbar = tl.load(st_base + W * (DK * DV + DV + DK + 1) + offs_k, mask=offs_k < DK, other=0.0) / N
        else:
            kbar = tl.zeros((DKP,), tl.float32)
        c = _load_const(c_ptr, c_value, CONST_PTR)
        c2 = c * c

        if DO_Q:
            q_base = q_ptr + bi * sq_b + hi * sq_h
            b_base = b_ptr + bi * sb_b + hi * sb_h
            g_base = g_ptr + bi * sg_b + hi * sg_h
            dq_base = dq_ptr + bi * sdk_b + hi * sdk_h
            db_base = db_ptr + bi * sdw_b + hi * sdw_h
            f0, y0, r0, zc0 = _finalize_state(s0, z0, u0, t0, kbar, c2)
            ds0, dz0, dr0, dzc0 = _zero_state(DKP, DVP)
            if W >= 2:
                f1, y1, r1, zc1 = _finalize_state(s1, z1, u1, t1, kbar, c2)
                ds1, dz1, dr1, dzc1 = _zero_state(DKP, DVP)
            if W >= 3:
                f2, y2, r2, zc2 = _finalize_state(s2, z2, u2, t2, kbar, c2)
                ds2, dz2, dr2, dzc2 = _zero_state(DKP, DVP)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                qt = _load_rows(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK)
                phi = _feature_fwd(qt, FEATURE) * scale_sqrt
                g = _load_rows(g_base, offs_n, offs_v, sg_n, sg_d, n_end, DV)
                bw0 = _load_weight(b_base, offs_n, sb_n, n_end, HAS_WEIGHTS)
                num0, den0 = _read_state(phi, f0, y0, r0, zc0, PREC)
                num = num0 * bw0[:, None]
                den = den0 * bw0
                if W >= 2:
                    bw1 = _load_weight(b_base + sb_w, offs_n, sb_n, n_end, HAS_WEIGHTS)
                    num1, den1 = _read_state(phi, f1, y1, r1, zc1, PREC)
                    num += num1 * bw1[:, None]
                    den += den1 * bw1
                if W >= 3:
                    bw2 = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end, HAS_WEIGHTS)
                    num2, den2 = _read_state(phi, f2, y2, r2, zc2, PREC)
                    num += num2 * bw2[:, None]
                    den += den2 * bw2
                if NORMALIZE:
                    inv = 1.0 / (den + eps)
                    dnum = g * inv[:, None]
                    dden = -tl.sum(g * num, 1) * inv * inv
                else:
                    dnum = g
                    dden = tl.zeros((BLOCK_N,), tl.float32)
                dphi, dbw, ds0, dz0, dr0, dzc0 = _query_grads(
                    phi, dnum, dden, bw0, num0, den0, f0, y0, ds0, dz0, dr0, dzc0, PREC)
                if HAS_WEIGHTS:
                    _store_weight(db_base, dbw, offs_n, sdw_n, n_end)
                if W >= 2:
                    dphi_w, dbw, ds1, dz1, dr1, dzc1 = _query_grads(
                        phi, dnum, dden, bw1, num1, den1, f1, y1, ds1, dz1, dr1, dzc1, PREC)
                    dphi += dphi_w
                    _store_weight(db_base + sdw_w, dbw, offs_n, sdw_n, n_end)
                if W >= 3:
                    dphi_w, dbw, ds2, dz2, dr2, dzc2 = _query_grads(
                        phi, dnum, dden, bw2, num2, den2, f2, y2, ds2, dz2, dr2, dzc2, PREC)
                    dphi += dphi_w
                    _store_weight(db_base + 2 * sdw_w, dbw, offs_n, sdw_n, n_end)
                _store_rows(dq_base, _feature_bwd(qt, dphi * scale_sqrt, FEATURE), offs_n, offs_k, sdk_n, sdk_d,
                            n_end, DK)
            if not DO_KV:
                _store_state(dst_base, 0, W, DK, DV, offs_k, offs_v, ds0, dz0, dr0, dzc0, True)
                if W >= 2:
                    _store_state(dst_base, 1, W, DK, DV, offs_k, offs_v, ds1, dz1, dr1, dzc1, True)
                if W >= 3:
                    _store_state(dst_base, 2, W, DK, DV, offs_k, offs_v, ds2, dz2, dr2, dzc2, True)
        else:
            ds0, dz0, dr0, dzc0 = _load_state(dst_base, 0, W, DK, DV, offs_k, offs_v)
            if W >= 2:
                ds1, dz1, dr1, dzc1 = _load_state(dst_base, 1, W, DK, DV, offs_k, offs_v)
            if W >= 3:
                ds2, dz2, dr2, dzc2 = _load_state(dst_base, 2, W, DK, DV, offs_k, offs_v)

        if DO_KV:
            k_base = k_ptr + bi * sk_b + hi * sk_h
            v_base = v_ptr + bi * sv_b + hi * sv_h
            a_base = a_ptr + bi * sa_b + hi * sa_h
            dk_base = dk_ptr + bi * sdk_b + hi * sdk_h
            dv_base = dv_ptr + bi * sdv_b + hi * sdv_h
            da_base = da_ptr + bi * sdw_b + hi * sdw_h
            if CENTER:
                # every key's centred feature moves with the mean: subtract the mean of the centred gradients,
                # (1/N) sum_j dphi~_j = (1/N) sum_w (dS_w u_w + dz_w s_w)
                mean_grad = tl.sum(ds0 * u0[None, :], 1) + dz0 * t0
                if W >= 2:
                    mean_grad += tl.sum(ds1 * u1[None, :], 1) + dz1 * t1
                if W >= 3:
                    mean_grad += tl.sum(ds2 * u2[None, :], 1) + dz2 * t2
                mean_grad = mean_grad / N
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                kt = _load_rows(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK)
                phi = _feature_fwd(kt, FEATURE) * scale_sqrt - kbar[None, :]
                vt = _load_rows(v_base, offs_n, offs_v, sv_n, sv_d, n_end, DV)
                aw = _load_weight(a_base, offs_n, sa_n, n_end, HAS_WEIGHTS)
                dv, dphi, daw = _key_grads(phi, vt, aw, ds0, dz0, dr0, dzc0, c2, PREC)
                if HAS_WEIGHTS:
                    _store_weight(da_base, daw, offs_n, sdw_n, n_end)
                if W >= 2:
                    aw = _load_weight(a_base + sa_w, offs_n, sa_n, n_end, HAS_WEIGHTS)
                    dv_w, dphi_w, daw = _key_grads(phi, vt, aw, ds1, dz1, dr1, dzc1, c2, PREC)
                    dv += dv_w
                    dphi += dphi_w
                    _store_weight(da_base + sdw_w, daw, offs_n, sdw_n, n_end)
                if W >= 3:
                    aw = _load_weight(a_base + 2 * sa_w, offs_n, sa_n, n_end, HAS_WEIGHTS)
                    dv_w, dphi_w, daw = _key_grads(phi, vt, aw, ds2, dz2, dr2, dzc2, c2, PREC)
                    dv += dv_w
                    dphi += dphi_w
                    _store_weight(da_base + 2 * sdw_w, daw, offs_n, sdw_n, n_end)
                if CENTER:
                    dphi -= mean_grad[None, :]
                _store_rows(dk_base, _feature_bwd(kt, dphi * scale_sqrt, FEATURE), offs_n, offs_k, sdk_n, sdk_d,
                            n_end, DK)
                _store_rows(dv_base, dv, offs_n, offs_v, sdv_n, sdv_d, n_end, DV)
            if NEED_DC:
                # c enters every similarity twice (query and key side): dL/dc = 2c sum_w (u_w . dr_w + s_w dzc_w)
                dc = tl.sum(u0 * dr0, 0) + t0 * dzc0
                if W >= 2:
                    dc += tl.sum(u1 * dr1, 0) + t1 * dzc1
                if W >= 3:
                    dc += tl.sum(u2 * dr2, 0) + t2 * dzc2
                tl.store(dc_ptr + pid_bh, 2.0 * c * dc, mask=pid_split == 0)

    def _launcher(kernel, direct_launch: bool):
        # Outside a triton_op, wrap_triton launches through its tracing machinery (~0.5 ms a call on the H200), so a
        # direct eager caller gets the kernel itself; the custom op (what torch.compile traces) needs wrap_triton.
        return kernel if direct_launch else torch.library.wrap_triton(kernel)

    def _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps):
        c_ptr = const if const is not None else q  # unused when the constant is a plain float
        a_ptr = key_weights if key_weights is not None else q  # unused without weights (HAS_WEIGHTS=False)
        b_ptr = query_weights if query_weights is not None else q
        return (q, k, v, a_ptr, b_ptr, c_ptr), (float(const_value), float(scale) ** 0.5, float(eps))

    def _common_meta(q, k, v, key_weights, const, feature, center_keys, normalize):
        weightings = 1 if key_weights is None else key_weights.shape[-1]
        return dict(
            W=weightings, HAS_WEIGHTS=key_weights is not None, FEATURE=feature, CENTER=center_keys,
            CONST_PTR=const is not None, NORMALIZE=normalize, DKP=_padded(q.shape[-1]), DVP=_padded(v.shape[-1]),
            PREC=_dot_precision(q, k, v),
        )

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (out, raw fp32 states); the states are empty unless ``save_state`` (needed by the backward).

        ``direct_launch``: launch the Triton kernel itself rather than through ``wrap_triton`` (eager callers that
        bypass the custom op; see ``_LinearAttentionFunction``)."""
        batch, n, heads, dk = q.shape
        dv = v.shape[-1]
        meta = _common_meta(q, k, v, key_weights, const, feature, center_keys, normalize)
        block_n, num_warps, num_stages = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=False)
        splits, chunk = _splits(batch * heads, n, block_n, q.device)
        out = _empty((batch, n, heads, dv), v.dtype, q.device)
        state_shape = (batch * heads, _state_size(meta["W"], dk, dv))
        if splits > 1:
            state = torch.zeros(state_shape, dtype=torch.float32, device=q.device)
        elif save_state:
            state = _empty(state_shape, torch.float32, q.device)
        else:
            state = q.new_empty((0,), dtype=torch.float32)
        pointers, scalars = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)
        args = (
            *pointers, out, state if state.numel() else out, *scalars, n, heads, dk, dv, chunk, state_shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *_strides4(out),
        )
        kernel = _launcher(_linear_attention_fwd_kernel, direct_launch)
        config = dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, **meta)
        if splits == 1:
            kernel[(batch * heads, 1)](*args, DO_STATE=True, DO_OUTPUT=True, STORE_STATE=save_state, ATOMIC=False,
                                       **config)
        else:
            kernel[(batch * heads, splits)](*args, DO_STATE=True, DO_OUTPUT=False, STORE_STATE=True, ATOMIC=True,
                                            **config)
            kernel[(batch * heads, splits)](*args, DO_STATE=False, DO_OUTPUT=True, STORE_STATE=False, ATOMIC=False,
                                            **config)
        return out, state

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (dq, dk, dv, dkey_weights, dquery_weights, per-(batch, head) parts of dconst); absent ones empty.
        ``direct_launch`` as in the forward."""
        batch, n, heads, dk = q.shape
        dv = v.shape[-1]
        meta = _common_meta(q, k, v, key_weights, const, feature, center_keys, normalize)
        forward_block = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=False)[0]
        split = _splits(batch * heads, n, forward_block, q.device)[0] > 1  # as the forward split it
        block_n, num_warps, num_stages = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=True,
                                                        split=split)
        splits, chunk = _splits(batch * heads, n, block_n, q.device)
        dq = _empty(tuple(q.shape), q.dtype, q.device)
        dkey = _empty(tuple(k.shape), k.dtype, q.device)
        dval = _empty(tuple(v.shape), v.dtype, q.device)
        if key_weights is not None:
            dkw = _empty(tuple(key_weights.shape), key_weights.dtype, q.device)
            dqw = _empty(tuple(query_weights.shape), query_weights.dtype, q.device)
        else:
            dkw, dqw = q.new_empty((0,)), q.new_empty((0,))
        dconst = _empty((batch * heads,), torch.float32, q.device) if need_const_grad else q.new_empty((0,))
        dstate = torch.zeros_like(state) if splits > 1 else state
        pointers, scalars = _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps)
        args = (
            *pointers, grad, state, dstate, dq, dkey, dval, dkw if dkw.numel() else dq, dqw if dqw.numel() else dq,
            dconst if need_const_grad else dq, *scalars, n, heads, dk, dv, chunk, state.shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *_strides4(grad), *_strides4(dq), *_strides4(dval), *_strides4(dkw if dkw.numel() else None),
        )
        kernel = _launcher(_linear_attention_bwd_kernel, direct_launch)
        config = dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, NEED_DC=need_const_grad, **meta)
        if splits == 1:
            kernel[(batch * heads, 1)](*args, DO_Q=True, DO_KV=True, **config)
        else:
            kernel[(batch * heads, splits)](*args, DO_Q=True, DO_KV=False, **config)
            kernel[(batch * heads, splits)](*args, DO_Q=False, DO_KV=True, **config)
        return dq, dkey, dval, dkw, dqw, dconst

    _linear_attention_fwd_op = torch.library.triton_op(
        "vitzoo::linear_attention_fwd", _linear_attention_fwd, mutates_args=()
    )
    _linear_attention_bwd_op = torch.library.triton_op(
        "vitzoo::linear_attention_bwd", _linear_attention_bwd, mutates_args=()
    )

    class _LinearAttentionFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, scale,
                    normalize, eps, save_state):
            # torch.compile traces the custom op; eager calls skip its dispatch (host time on every call)
            compiling = torch.compiler.is_compiling()
            out, state = (_linear_attention_fwd_op if compiling else _linear_attention_fwd)(
                q, k, v, key_weights, query_weights, const, const_value, feature, center_keys, scale, normalize,
                eps, save_state, direct_launch=not compiling,
            )
            ctx.save_for_backward(q, k, v, key_weights, query_weights, const, state)
            ctx.options = (const_value, feature, center_keys, scale, normalize, eps)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, key_weights, query_weights, const, state = ctx.saved_tensors
            const_value, feature, center_keys, scale, normalize, eps = ctx.options
            need_const_grad = const is not None and ctx.needs_input_grad[5]
            compiling = torch.compiler.is_compiling()
            dq, dk, dv, dkw, dqw, dconst = (_linear_attention_bwd_op if compiling else _linear_attention_bwd)(
                grad, q, k, v, key_weights, query_weights, const, const_value, state, feature, center_keys, scale,
                normalize, eps, need_const_grad, direct_launch=not compiling,
            )
            if key_weights is None:
                dkw = dqw = None
            dconst = dconst.sum().reshape(const.shape).to(const.dtype) if need_const_grad else None
            return dq, dk, dv, dkw, dqw, dconst, None, None, None, None, None, None, None


def _check_kernel_inputs(q, k, v, key_weights, query_weights) -> None:
    tensors = [q, k, v] + ([key_weights, query_weights] if key_weights is not None else [])
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"linear_attention_triton: inputs must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"linear_attention_triton: all inputs must be on {q.device}, got one on {t.device}")
    if min(q.shape[:3]) < 1:
        raise ValueError(f"linear_attention_triton: B, N and H must be >= 1, got q of shape {tuple(q.shape)}")
    for name, dim in (("Dk", q.shape[-1]), ("Dv", v.shape[-1])):
        if not 1 <= dim <= _MAX_HEAD_DIM:
            raise ValueError(f"linear_attention_triton: head dim {name}={dim} must be in 1..{_MAX_HEAD_DIM}")
    if key_weights is not None and not 1 <= key_weights.shape[-1] <= _MAX_WEIGHTINGS:
        raise ValueError(
            f"linear_attention_triton: W={key_weights.shape[-1]} weightings; the kernel supports 1..{_MAX_WEIGHTINGS}"
        )


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
) -> torch.Tensor:
    """The fused Triton kernels behind :func:`linear_attention` (same arguments; fp16, bf16 or fp32 inputs)."""
    if triton is None:
        raise RuntimeError("linear_attention_triton needs triton, which is not installed")
    _check_inputs(q, k, v, key_weights, query_weights, feature_map)
    _check_kernel_inputs(q, k, v, key_weights, query_weights)
    const, const_value = None, 0.0
    if isinstance(feature_const, torch.Tensor):
        if feature_const.numel() != 1:
            raise ValueError(
                f"linear_attention: feature_const must be a scalar, got shape {tuple(feature_const.shape)}"
            )
        const = feature_const.to(device=q.device, dtype=torch.float32).reshape(1)
    elif feature_const is not None:
        const_value = float(feature_const)
    inputs = (q, k, v, key_weights, query_weights, const)
    save_state = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _LinearAttentionFunction.apply(
        q, k, v, key_weights, query_weights, const, const_value, _FEATURE_CODES[feature_map], bool(center_keys),
        float(scale), bool(normalize), float(eps), save_state,
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
) -> torch.Tensor:
    """Non-causal linear attention over (B, N, H, D) inputs; returns (B, N, H, Dv) in v's dtype.

    Args:
        q, k: queries and keys, (B, N, H, Dk).
        v: values, (B, N, H, Dv); Dv may differ from Dk.
        key_weights: per-key weights a, (B, N, H, W); W states are built, one per weighting.
        query_weights: per-query coefficients b, (B, N, H, W), combining the W reads.
        feature_map: phi applied to q and k: 'identity', 'relu', 'l2norm' or 'qt' (square, then L2-normalise).
        feature_const: a constant feature c appended to phi(q) and phi(k) (a float or a 0-dim tensor that may
            require grad); adds c^2 to every similarity.
        center_keys: subtract the token mean of phi(k) (InLine's injective correction).
        scale: multiplies phi(q) . phi(k) (not the constant feature).
        normalize: divide by the same read of the key sum, plus ``eps``.
        eps: added to the normaliser.
    """
    # float64 stays on the reference: the kernels accumulate in fp32
    if kernel_backend(q.device) == "triton" and torch.float64 not in (q.dtype, k.dtype, v.dtype):
        return linear_attention_triton(
            q, k, v, key_weights, query_weights, feature_map=feature_map, feature_const=feature_const,
            center_keys=center_keys, scale=scale, normalize=normalize, eps=eps,
        )
    return linear_attention_reference(
        q, k, v, key_weights, query_weights, feature_map=feature_map, feature_const=feature_const,
        center_keys=center_keys, scale=scale, normalize=normalize, eps=eps,
    )
