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

import torch
import torch.nn.functional as F

from ._backend import _interpreting, cdiv, kernel_backend, launcher, multiprocessor_count, next_power_of_2

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
# u_w = sum_i a_iw v_i, s_w = sum_i a_iw, plus the unweighted key sum; centring, the scale and the constant feature are
# folded in afterwards (F_w = scale (S_w - kbar u_w^T), y_w = scale (z_w - kbar s_w), constant terms c^2 u_w, c^2 s_w),
# so K and V are read once and queries and keys enter unscaled. Every sum over tokens is a tensor-core product (with a
# one-hot column for the vector sums), and tiles stay in the input dtype until then. Pass 2 (queries) reads F_w, y_w.
# When there are enough (batch, head) pairs to fill the GPU one program does both passes and the states never leave
# the chip; otherwise pass 1 is split over N with fp32 atomics into a zeroed state buffer and pass 2 runs as a second
# launch. The backward mirrors this: the query pass takes g F_w^T and g . num_w = phi . (g F_w^T) (the numerator is
# not recomputed), writes dq (and dquery_weights) and accumulates dF_w, dy_w, dr_w, dzc_w; the key pass writes dk, dv
# (and dkey_weights); the centring's mean term and the constant's gradient come from the states.
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
# N is split over programs when B*H is below _SPLIT_BELOW[backward] programs per SM, into _PROGRAMS_PER_SM programs
# per SM (H200 sweeps, 2026-11-29/30: the forward's one-program-per-sequence path wins down to 2 per SM, the backward's
# only at 4; split programs do best at 4 per SM)
_SPLIT_BELOW = {False: 2, True: 4}
_PROGRAMS_PER_SM = 4
# benchmark-only knobs (benchmarks/linear_attention.py --sweep): fixed launch configs, and register caps per kernel
# ({backward: maxnreg}, Triton's launch option)
_LAUNCH_OVERRIDE: dict[bool, tuple[int, int, int]] | None = None
_MAX_REGISTERS: dict[bool, int] = {}
# bf16 inputs: products with the fp32 states (and their gradients) as two bf16 halves, about fp32 accurate, instead
# of one bf16 rounding. Off: the single products took forward+backward from 2.75x to 2.50x the byte floor at N=197
# (H200, 2026-11-30) for relative errors of 2.9e-3 instead of 2.3e-3 (the bf16 output's own rounding is ~2e-3).
_SPLIT_STATES = False


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels fully overwrite comes from here (the tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _state_size(weightings: int, dk: int, dv: int) -> int:
    """fp32 words per (batch, head): W x (S: dk x dv, u: dv, z: dk, s: 1) followed by the key sum (dk).

    One weighting: rounded up to a multiple of 16, so that every (batch, head) starts 64-byte aligned and Triton,
    knowing the row stride divides by 16, reads, writes and atomically adds the states 16 bytes at a time (H200:
    ReLU forward 52.8 vs 55.0 us at N=3137, QT and FEM faster too). Not for ZeroS's three weightings, whose split
    forward was slower with it (171 vs 137 us at N=3137)."""
    words = weightings * (dk * dv + dv + dk + 1) + dk
    return cdiv(words, 16) * 16 if weightings == 1 else words


def _padded(dim: int) -> int:
    return max(16, next_power_of_2(dim))


def _launch_params(dkp: int, dvp: int, weightings: int, backward: bool, split: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages): one fixed config per shape class, no autotuning. ``split``: the backward's
    sequence is divided over several programs (two kernels, one per pass)."""
    if _interpreting():
        return 64, 4, 1
    if _LAUNCH_OVERRIDE is not None:
        return _LAUNCH_OVERRIDE[backward]
    if dkp * dvp > 64 * 64 or weightings > 1:  # more state per program: smaller tiles, fewer pipeline stages
        return (32, 8, 2) if backward else (64, 8, 2)
    # Three stages keep two K/V tiles in flight. Backward (H200 sweep, benchmarks/NOTES.md): 32-token tiles when one
    # program walks a whole sequence, 128-token tiles over 8 warps for the split passes; 64-token tiles over 4 warps
    # gave a wrong dk with Triton 3.6 there.
    if backward:
        return (128, 8, 2) if split else (32, 4, 3)
    return 64, 4, 3


def _splits(bh: int, n: int, block_n: int, device: torch.device, backward: bool) -> tuple[int, int]:
    """(number of N-splits, tokens per split): split only when B*H programs cannot fill the GPU."""
    if device.type == "cuda":
        sms = multiprocessor_count(device)
        if bh >= _SPLIT_BELOW[backward] * sms:
            return 1, n
        programs = _PROGRAMS_PER_SM * sms
    else:
        programs = _INTERPRETER_PROGRAMS
    splits = min(cdiv(programs, bh), cdiv(n, 2 * block_n))
    if splits <= 1:
        return 1, n
    chunk = cdiv(cdiv(n, splits), block_n) * block_n
    return cdiv(n, chunk), chunk


def _register_cap(backward: bool) -> dict[str, int]:
    return {"maxnreg": _MAX_REGISTERS[backward]} if backward in _MAX_REGISTERS else {}


def _dot_precision(*tensors: torch.Tensor) -> str:
    """fp32 inputs: exact fp32 products. bf16: bf16 tensor-core products, with the fp32 states rounded to bf16
    ('bf16x1', the default) or split into two bf16 halves ('bf16', see _SPLIT_STATES). fp16: tf32 (fp32 range, so
    states never overflow fp16). The interpreter always multiplies in fp32."""
    if _interpreting() or any(t.dtype == torch.float32 for t in tensors):
        return "ieee"
    if all(t.dtype == torch.bfloat16 for t in tensors):
        return "bf16" if _SPLIT_STATES else "bf16x1"
    return "tf32"


def _unit_last_stride(*tensors: torch.Tensor) -> bool:
    return all(t.stride(-1) == 1 for t in tensors)


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


if triton is not None:

    @triton.jit
    def _tile(base, offs_n, offs_d, s_n, s_d, n_end, dim: tl.constexpr, UNIT_D: tl.constexpr):
        # pointers and mask of a (tokens, dim) tile. A unit stride known at compile time and no column mask when dim
        # is a power of two let the loads and stores run 16 bytes wide (half the registers, far fewer instructions).
        if UNIT_D:
            ptrs = base + offs_n[:, None] * s_n + offs_d[None, :]
        else:
            ptrs = base + offs_n[:, None] * s_n + offs_d[None, :] * s_d
        if dim < offs_d.shape[0]:
            mask = (offs_n < n_end)[:, None] & (offs_d < dim)[None, :]
        else:
            mask = (offs_n < n_end)[:, None]
        return ptrs, mask

    @triton.jit
    def _load_tile(base, offs_n, offs_d, s_n, s_d, n_end, dim: tl.constexpr, UNIT_D: tl.constexpr):
        # kept in the input dtype: the products take 16-bit tiles as they are, so no fp32 copy lives in registers
        ptrs, mask = _tile(base, offs_n, offs_d, s_n, s_d, n_end, dim, UNIT_D)
        return tl.load(ptrs, mask=mask, other=0.0)

    @triton.jit
    def _store_rows(base, x, offs_n, offs_d, s_n, s_d, n_end, dim: tl.constexpr, UNIT_D: tl.constexpr):
        ptrs, mask = _tile(base, offs_n, offs_d, s_n, s_d, n_end, dim, UNIT_D)
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=mask)

    @triton.jit
    def _load_weight(base, offs_n, s_n, n_end):
        return tl.load(base + offs_n * s_n, mask=offs_n < n_end, other=0.0).to(tl.float32)

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
        # identity and ReLU stay in the input dtype (exact); the normalising maps work in fp32
        if FEATURE == 1:
            y = tl.maximum(x, 0.0)
        elif FEATURE == 2:
            xf = x.to(tl.float32)
            y = xf / tl.maximum(tl.sqrt(tl.sum(xf * xf, 1)), 1e-12)[:, None]
        elif FEATURE == 3:
            xf = x.to(tl.float32)
            sq = xf * xf
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
    def _feature_bwd(x, phi, g, FEATURE: tl.constexpr):
        # the ReLU's mask is read off phi = relu(x), already live for the products, so x need not stay in registers
        if FEATURE == 1:
            dx = tl.where(phi > 0, g, 0.0)
        elif FEATURE == 2:
            dx = _unit_norm_bwd(x.to(tl.float32), g)
        elif FEATURE == 3:
            xf = x.to(tl.float32)
            dx = 2.0 * xf * _unit_norm_bwd(xf * xf, g)
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
    def _key_pass_vectors(base, w, W: tl.constexpr, DK, DV, offs_k, offs_v):
        # (u_w, s_w): what the key pass of the backward needs of a weighting's raw sums
        _, _, u, total = _load_state(base, w, W, DK, DV, offs_k, offs_v)
        return u, total

    @triton.jit
    def _load_key_mean(base, W: tl.constexpr, DK, DV, offs_k, N, CENTER: tl.constexpr):
        # kbar, the token mean of phi(k) that centring subtracts (zero without centring)
        if CENTER:
            kbar = tl.load(base + W * (DK * DV + DV + DK + 1) + offs_k, mask=offs_k < DK, other=0.0) / N
        else:
            kbar = tl.zeros((offs_k.shape[0],), tl.float32)
        return kbar

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
        # a @ b + acc for data-like operands (inputs, features, incoming grads): bf16 tensor-core products, or fp32
        # operands at PREC ('tf32' / 'ieee')
        if PREC == "bf16" or PREC == "bf16x1":
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc=acc)
        else:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc, input_precision=PREC)
        return out

    @triton.jit
    def _split(x, PREC: tl.constexpr):
        # an fp32 operand as two bf16 halves (hi + lo keep ~16 mantissa bits), or rounded to bf16 once ('bf16x1';
        # low unused); other precisions use it whole
        if PREC == "bf16":
            high = x.to(tl.bfloat16)
            low = (x - high.to(tl.float32)).to(tl.bfloat16)
        elif PREC == "bf16x1":
            high = x.to(tl.bfloat16)
            low = high
        else:
            high = x
            low = x
        return high, low

    @triton.jit
    def _dot_split(a, high, low, PREC: tl.constexpr):
        # a @ (high + low): a data-like operand times a split fp32 one (states, their gradients)
        if PREC == "bf16":
            a16 = a.to(tl.bfloat16)
            out = tl.dot(a16, low, out_dtype=tl.float32)
            out = tl.dot(a16, high, acc=out)
        elif PREC == "bf16x1":
            out = tl.dot(a.to(tl.bfloat16), high, out_dtype=tl.float32)
        else:
            out = tl.dot(a.to(tl.float32), high, input_precision=PREC)
        return out

    @triton.jit
    def _columns(x, PREC: tl.constexpr):
        # (len, 16) operand holding x in its first columns (hi, lo halves in bf16): a product with it sums over the
        # rows of the other operand on the tensor cores, and tl.sum(result, 1) recovers the vector exactly
        cols = tl.arange(0, 16)[None, :]
        if PREC == "bf16" or PREC == "bf16x1":
            high = x.to(tl.bfloat16).to(tl.float32)
            out = tl.where(cols == 0, high[:, None], tl.where(cols == 1, (x - high)[:, None], 0.0))
        else:
            out = tl.where(cols == 0, x[:, None], 0.0)
        return out

    @triton.jit
    def _rows(x, PREC: tl.constexpr):
        # (16, len): the transpose of _columns
        rows = tl.arange(0, 16)[:, None]
        if PREC == "bf16" or PREC == "bf16x1":
            high = x.to(tl.bfloat16).to(tl.float32)
            out = tl.where(rows == 0, high[None, :], tl.where(rows == 1, (x - high)[None, :], 0.0))
        else:
            out = tl.where(rows == 0, x[None, :], 0.0)
        return out

    @triton.jit
    def _one_hot_sums(col_acc, row_acc):
        # the vectors held by (len, 16) and (16, len) accumulators of products with _columns / _rows operands
        return tl.sum(col_acc, 1), tl.sum(row_acc, 0)

    @triton.jit
    def _key_sum(kacc, z, CENTER: tl.constexpr, HAS_WEIGHTS: tl.constexpr):
        # sum_i phi(k_i), whose mean the centring subtracts: z itself when unweighted; zero without centring
        if not CENTER:
            ksum = tl.zeros_like(z)
        elif HAS_WEIGHTS:
            ksum = tl.sum(kacc, 1)
        else:
            ksum = z
        return ksum

    @triton.jit
    def _accumulate(phi, v, a, s, zacc, uacc, total, n_rows, HAS_WEIGHTS: tl.constexpr, NEED_Z: tl.constexpr,
                    NEED_U: tl.constexpr, PREC: tl.constexpr):
        # one key tile into the raw sums of one weighting: S += (a phi)^T v, z += (a phi)^T 1, u += v^T a, s += sum a.
        # Padded rows have phi = 0 and v = 0, so unweighted sums need no mask.
        if HAS_WEIGHTS:
            s = _dot_data(tl.trans(phi.to(tl.float32) * a[:, None]), v, s, PREC)
            total += tl.sum(a, 0)
        else:
            s = _dot_data(tl.trans(phi), v, s, PREC)
            total += n_rows
        if NEED_Z:
            zacc = _dot_data(tl.trans(phi), _columns(a, PREC), zacc, PREC)
        if NEED_U:
            uacc = _dot_data(_rows(a, PREC), v, uacc, PREC)
        return s, zacc, uacc, total

    @triton.jit
    def _zero_sums(DKP: tl.constexpr, DVP: tl.constexpr):
        return tl.zeros((DKP, DVP), tl.float32), tl.zeros((DKP, 16), tl.float32), tl.zeros((16, DVP), tl.float32), \
            tl.sum(tl.zeros((16,), tl.float32), 0)

    @triton.jit
    def _finalize(state, z, u, total, kbar, c2, scale, PREC: tl.constexpr):
        # the read operands of one weighting, with the scale folded in (queries and keys enter unscaled):
        # F = scale (S - kbar u^T) (centred keys; kbar is zero otherwise), y = scale (z - kbar s), and the constant
        # feature's c^2 u added to every numerator and c^2 s to every denominator
        f = scale * (state - kbar[:, None] * u[None, :])
        y = scale * (z - kbar * total)
        f_hi, f_lo = _split(f, PREC)
        # F^T split from the transposed fp32 F (the backward's dnum F^T): transposing the bf16 halves instead gave a
        # wrong dk and a failed launch with Triton 3.6 on the H200
        ft_hi, ft_lo = _split(tl.trans(f), PREC)
        return f_hi, f_lo, ft_hi, ft_lo, _columns(y, PREC), y, c2 * u, c2 * total

    @triton.jit
    def _read_den(phi, y_cols, zc, NORMALIZE: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
        # one weighting's denominator phi . y (+ c^2 s) for a query tile (zero without the normaliser)
        if NORMALIZE:
            den = tl.sum(_dot_data(phi, y_cols, tl.zeros((BLOCK_N, 16), tl.float32), PREC), 1) + zc
        else:
            den = tl.zeros((BLOCK_N,), tl.float32)
        return den

    @triton.jit
    def _read(phi, f_hi, f_lo, y_cols, r, zc, NORMALIZE: tl.constexpr, HAS_CONST: tl.constexpr,
              PREC: tl.constexpr, BLOCK_N: tl.constexpr):
        # one weighting's numerator phi F (+ c^2 u) and denominator phi . y (+ c^2 s) for a query tile
        num = _dot_split(phi, f_hi, f_lo, PREC)
        if HAS_CONST:
            num += r[None, :]
        den = _read_den(phi, y_cols, zc, NORMALIZE, PREC, BLOCK_N)
        return num, den

    @triton.jit(do_not_specialize=["N", "chunk"])
    def _linear_attention_fwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c_ptr, o_ptr, state_ptr,
            c_value, scale, eps, N, H, DK: tl.constexpr, DV: tl.constexpr, chunk, state_stride,
            sq_b, sq_n, sq_h, sq_d, sk_b, sk_n, sk_h, sk_d, sv_b, sv_n, sv_h, sv_d,
            sa_b, sa_n, sa_h, sa_w, sb_b, sb_n, sb_h, sb_w, so_b, so_n, so_h, so_d,
            W: tl.constexpr, HAS_WEIGHTS: tl.constexpr, FEATURE: tl.constexpr, CENTER: tl.constexpr,
            UNIT_D: tl.constexpr, CONST_PTR: tl.constexpr, HAS_CONST: tl.constexpr, NORMALIZE: tl.constexpr,
            DO_STATE: tl.constexpr, DO_OUTPUT: tl.constexpr, STORE_STATE: tl.constexpr, ATOMIC: tl.constexpr,
            NEED_Z: tl.constexpr, NEED_U: tl.constexpr, BLOCK_N: tl.constexpr,
            DKP: tl.constexpr, DVP: tl.constexpr,
            PREC: tl.constexpr,
    ):
        # float scalars arrive as fp32 from eager launches but as fp64 from Inductor: fix them to fp32
        c_value = tl.cast(c_value, tl.float32)
        scale = tl.cast(scale, tl.float32)
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
            s0, za0, ua0, t0 = _zero_sums(DKP, DVP)
            if W >= 2:
                s1, za1, ua1, t1 = _zero_sums(DKP, DVP)
            if W >= 3:
                s2, za2, ua2, t2 = _zero_sums(DKP, DVP)
            kacc = tl.zeros((DKP, 16), tl.float32)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                n_rows = (tl.minimum(n_end - start, BLOCK_N)).to(tl.float32)
                phi = _feature_fwd(_load_tile(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK, UNIT_D), FEATURE)
                vt = _load_tile(v_base, offs_n, offs_v, sv_n, sv_d, n_end, DV, UNIT_D)
                if HAS_WEIGHTS:
                    aw = _load_weight(a_base, offs_n, sa_n, n_end)
                    if CENTER:  # the unweighted key sum
                        kacc = _dot_data(tl.trans(phi), _columns((offs_n < n_end).to(tl.float32), PREC), kacc, PREC)
                else:
                    aw = (offs_n < n_end).to(tl.float32)
                s0, za0, ua0, t0 = _accumulate(phi, vt, aw, s0, za0, ua0, t0, n_rows, HAS_WEIGHTS, NEED_Z, NEED_U,
                                               PREC)
                if W >= 2:
                    aw = _load_weight(a_base + sa_w, offs_n, sa_n, n_end)
                    s1, za1, ua1, t1 = _accumulate(phi, vt, aw, s1, za1, ua1, t1, n_rows, HAS_WEIGHTS, NEED_Z,
                                                   NEED_U, PREC)
                if W >= 3:
                    aw = _load_weight(a_base + 2 * sa_w, offs_n, sa_n, n_end)
                    s2, za2, ua2, t2 = _accumulate(phi, vt, aw, s2, za2, ua2, t2, n_rows, HAS_WEIGHTS, NEED_Z,
                                                   NEED_U, PREC)
            z0, u0 = _one_hot_sums(za0, ua0)
            if W >= 2:
                z1, u1 = _one_hot_sums(za1, ua1)
            if W >= 3:
                z2, u2 = _one_hot_sums(za2, ua2)
            ksum = _key_sum(kacc, z0, CENTER, HAS_WEIGHTS)
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
            fh0, fl0, _, _, yc0, _, r0, zc0 = _finalize(s0, z0, u0, t0, kbar, c * c, scale, PREC)
            if W >= 2:
                fh1, fl1, _, _, yc1, _, r1, zc1 = _finalize(s1, z1, u1, t1, kbar, c * c, scale, PREC)
            if W >= 3:
                fh2, fl2, _, _, yc2, _, r2, zc2 = _finalize(s2, z2, u2, t2, kbar, c * c, scale, PREC)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                phi = _feature_fwd(_load_tile(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK, UNIT_D), FEATURE)
                num, den = _read(phi, fh0, fl0, yc0, r0, zc0, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                if HAS_WEIGHTS:
                    bw = _load_weight(b_base, offs_n, sb_n, n_end)
                    num = num * bw[:, None]
                    den = den * bw
                if W >= 2:
                    bw = _load_weight(b_base + sb_w, offs_n, sb_n, n_end)
                    num_w, den_w = _read(phi, fh1, fl1, yc1, r1, zc1, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                    num += num_w * bw[:, None]
                    den += den_w * bw
                if W >= 3:
                    bw = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end)
                    num_w, den_w = _read(phi, fh2, fl2, yc2, r2, zc2, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                    num += num_w * bw[:, None]
                    den += den_w * bw
                if NORMALIZE:
                    num = num * (1.0 / (den + eps))[:, None]
                _store_rows(o_base, num, offs_n, offs_v, so_n, so_d, n_end, DV, UNIT_D)

    @triton.jit
    def _query_reads(phi, g, ft_hi, ft_lo, y_cols, r, zc, NORMALIZE: tl.constexpr, HAS_CONST: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_N: tl.constexpr):
        # what the backward needs of one weighting's read of a query tile, without recomputing the numerator:
        # g F^T (the product d phi needs anyway), g . num = phi . (g F^T) (+ g . c^2 u) and the normaliser read
        gf = _dot_split(g, ft_hi, ft_lo, PREC)
        g_num = tl.sum(phi.to(tl.float32) * gf, 1)
        if HAS_CONST:
            g_num += tl.sum(g.to(tl.float32) * r[None, :], 1)
        den = _read_den(phi, y_cols, zc, NORMALIZE, PREC, BLOCK_N)
        return gf, g_num, den

    @triton.jit
    def _query_grads(phi, g, gf, inv, dden, bw, y, ds, dyacc, dracc, dzc, ROW_SCALED: tl.constexpr,
                     NORMALIZE: tl.constexpr, HAS_CONST: tl.constexpr, PREC: tl.constexpr):
        # one weighting's share of d phi(q) for a query tile, and its contributions to dF = sum_t b inv phi^T g,
        # dy = sum_t b dden phi, dr = sum_t b inv g, dzc = sum_t b dden. dnum = inv g is never formed: the row
        # scale goes on phi (ds), on the accumulator (d phi) and into the split row operand (dr), so g feeds the
        # tensor cores as loaded. bw: this weighting's query coefficients (the row mask when unweighted).
        if ROW_SCALED:
            row_scale = bw * inv
            dphi = gf * row_scale[:, None]
            ds = _dot_data(tl.trans(phi.to(tl.float32) * row_scale[:, None]), g, ds, PREC)
        else:
            dphi = gf
            ds = _dot_data(tl.trans(phi), g, ds, PREC)
        if NORMALIZE:
            dphi += (dden * bw)[:, None] * y[None, :]
            dyacc = _dot_data(tl.trans(phi), _columns(dden * bw, PREC), dyacc, PREC)
        if HAS_CONST:
            dracc = _dot_data(_rows(bw * inv, PREC), g, dracc, PREC)
            if NORMALIZE:
                dzc += tl.sum(dden * bw, 0)
        return dphi, ds, dyacc, dracc, dzc

    @triton.jit
    def _key_grads(phi, v, aw, g_hi, g_lo, gt_hi, gt_lo, dv_shift, gy, const_term, kbar_gy, HAS_WEIGHTS: tl.constexpr,
                   PREC: tl.constexpr):
        # one weighting's dv and d phi(k) for a key tile, with G = scale dF and gy = scale dy: the centred feature
        # phi - kbar enters as phi G - kbar^T G, the shift folded into dv_shift (which also holds c^2 dr)
        dv_unit = _dot_split(phi, g_hi, g_lo, PREC) + dv_shift[None, :]
        dphi = _dot_split(v, gt_hi, gt_lo, PREC) + gy[None, :]
        if HAS_WEIGHTS:
            # da = dv_unit . v + (phi - kbar) . gy + c^2 dzc
            daw = tl.sum(dv_unit * v.to(tl.float32), 1) + tl.sum(phi.to(tl.float32) * gy[None, :], 1) \
                + const_term - kbar_gy
            dv_unit = dv_unit * aw[:, None]
            dphi = dphi * aw[:, None]
        else:
            daw = aw  # unweighted: not stored
        return dv_unit, dphi, daw

    @triton.jit
    def _key_operands(ds, dy, dr, dzc, u, total, kbar, c2, scale, PREC: tl.constexpr):
        g = scale * ds
        gy = scale * dy
        g_hi, g_lo = _split(g, PREC)
        gt_hi, gt_lo = _split(tl.trans(g), PREC)  # as F^T in _finalize
        dv_shift = c2 * dr - tl.sum(kbar[:, None] * g, 0)
        # the centring's mean term: (1/N) sum_j dphi_j = G u + gy s (divided by N by the caller)
        mean_part = tl.sum(g * u[None, :], 1) + gy * total
        return g_hi, g_lo, gt_hi, gt_lo, gy, dv_shift, c2 * dzc, tl.sum(kbar * gy, 0), mean_part

    @triton.jit(do_not_specialize=["N", "chunk"])
    def _linear_attention_bwd_kernel(
            q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c_ptr, g_ptr, state_ptr, dstate_ptr,
            dq_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, dc_ptr,
            c_value, scale, eps, N, H, DK: tl.constexpr, DV: tl.constexpr, chunk, state_stride,
            sq_b, sq_n, sq_h, sq_d, sk_b, sk_n, sk_h, sk_d, sv_b, sv_n, sv_h, sv_d,
            sa_b, sa_n, sa_h, sa_w, sb_b, sb_n, sb_h, sb_w, sg_b, sg_n, sg_h, sg_d,
            sdk_b, sdk_n, sdk_h, sdk_d, sdv_b, sdv_n, sdv_h, sdv_d, sdw_b, sdw_n, sdw_h, sdw_w,
            W: tl.constexpr, HAS_WEIGHTS: tl.constexpr, FEATURE: tl.constexpr, CENTER: tl.constexpr,
            UNIT_D: tl.constexpr, CONST_PTR: tl.constexpr, HAS_CONST: tl.constexpr, NORMALIZE: tl.constexpr,
            DO_Q: tl.constexpr, DO_KV: tl.constexpr, NEED_DC: tl.constexpr, ROW_SCALED: tl.constexpr,
            BLOCK_N: tl.constexpr, DKP: tl.constexpr,
            DVP: tl.constexpr, PREC: tl.constexpr,
    ):
        c_value = tl.cast(c_value, tl.float32)
        scale = tl.cast(scale, tl.float32)
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
        kbar = _load_key_mean(st_base, W, DK, DV, offs_k, N, CENTER)
        c = _load_const(c_ptr, c_value, CONST_PTR)
        c2 = c * c

        if DO_Q:
            q_base = q_ptr + bi * sq_b + hi * sq_h
            b_base = b_ptr + bi * sb_b + hi * sb_h
            g_base = g_ptr + bi * sg_b + hi * sg_h
            dq_base = dq_ptr + bi * sdk_b + hi * sdk_h
            db_base = db_ptr + bi * sdw_b + hi * sdw_h
            fh0, fl0, fth0, ftl0, yc0, y0, r0, zc0 = _finalize(s0, z0, u0, t0, kbar, c2, scale, PREC)
            ds0, dya0, dra0, dzc0 = _zero_sums(DKP, DVP)
            if W >= 2:
                fh1, fl1, fth1, ftl1, yc1, y1, r1, zc1 = _finalize(s1, z1, u1, t1, kbar, c2, scale, PREC)
                ds1, dya1, dra1, dzc1 = _zero_sums(DKP, DVP)
            if W >= 3:
                fh2, fl2, fth2, ftl2, yc2, y2, r2, zc2 = _finalize(s2, z2, u2, t2, kbar, c2, scale, PREC)
                ds2, dya2, dra2, dzc2 = _zero_sums(DKP, DVP)
            # With the ReLU, q is loaded one tile ahead by hand: Triton 3.6 pipelines q for the other feature maps
            # but not for this one, so each tile would wait for its own load (H200, N=197: forward+backward 239 us
            # instead of 253; the same prefetch in place of the identity map's pipelined load cost 151 -> 175 us)
            if FEATURE == 1:
                q_next = _load_tile(q_base, n_begin + rows, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                row_mask = (offs_n < n_end).to(tl.float32)
                if FEATURE == 1:
                    qt = q_next
                    q_next = _load_tile(q_base, offs_n + BLOCK_N, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
                else:
                    qt = _load_tile(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
                phi = _feature_fwd(qt, FEATURE)
                g = _load_tile(g_base, offs_n, offs_v, sg_n, sg_d, n_end, DV, UNIT_D)
                gf0, gn0, den0 = _query_reads(phi, g, fth0, ftl0, yc0, r0, zc0, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                if HAS_WEIGHTS:
                    bw0 = _load_weight(b_base, offs_n, sb_n, n_end)
                else:
                    bw0 = row_mask
                den = den0 * bw0
                g_num = gn0 * bw0
                if W >= 2:
                    bw1 = _load_weight(b_base + sb_w, offs_n, sb_n, n_end)
                    gf1, gn1, den1 = _query_reads(phi, g, fth1, ftl1, yc1, r1, zc1, NORMALIZE, HAS_CONST, PREC,
                                                  BLOCK_N)
                    den += den1 * bw1
                    g_num += gn1 * bw1
                if W >= 3:
                    bw2 = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end)
                    gf2, gn2, den2 = _query_reads(phi, g, fth2, ftl2, yc2, r2, zc2, NORMALIZE, HAS_CONST, PREC,
                                                  BLOCK_N)
                    den += den2 * bw2
                    g_num += gn2 * bw2
                if NORMALIZE:
                    inv = 1.0 / (den + eps)
                    dden = -g_num * inv * inv
                else:
                    inv = row_mask
                    dden = row_mask  # unused without the normaliser (den_w are zero)
                dphi, ds0, dya0, dra0, dzc0 = _query_grads(phi, g, gf0, inv, dden, bw0, y0, ds0, dya0, dra0, dzc0,
                                                           ROW_SCALED, NORMALIZE, HAS_CONST, PREC)
                if HAS_WEIGHTS:  # d b_w = (g . num_w) inv + den_w dden
                    _store_weight(db_base, gn0 * inv + den0 * dden, offs_n, sdw_n, n_end)
                if W >= 2:
                    dphi_w, ds1, dya1, dra1, dzc1 = _query_grads(phi, g, gf1, inv, dden, bw1, y1, ds1, dya1, dra1, dzc1,
                                                                 ROW_SCALED, NORMALIZE, HAS_CONST, PREC)
                    dphi += dphi_w
                    _store_weight(db_base + sdw_w, gn1 * inv + den1 * dden, offs_n, sdw_n, n_end)
                if W >= 3:
                    dphi_w, ds2, dya2, dra2, dzc2 = _query_grads(phi, g, gf2, inv, dden, bw2, y2, ds2, dya2, dra2, dzc2,
                                                                 ROW_SCALED, NORMALIZE, HAS_CONST, PREC)
                    dphi += dphi_w
                    _store_weight(db_base + 2 * sdw_w, gn2 * inv + den2 * dden, offs_n, sdw_n, n_end)
                _store_rows(dq_base, _feature_bwd(qt, phi, dphi, FEATURE), offs_n, offs_k, sdk_n, sdk_d, n_end, DK,
                            UNIT_D)
            dy0, dr0 = _one_hot_sums(dya0, dra0)
            if W >= 2:
                dy1, dr1 = _one_hot_sums(dya1, dra1)
            if W >= 3:
                dy2, dr2 = _one_hot_sums(dya2, dra2)
            if not DO_KV:
                _store_state(dst_base, 0, W, DK, DV, offs_k, offs_v, ds0, dy0, dr0, dzc0, True)
                if W >= 2:
                    _store_state(dst_base, 1, W, DK, DV, offs_k, offs_v, ds1, dy1, dr1, dzc1, True)
                if W >= 3:
                    _store_state(dst_base, 2, W, DK, DV, offs_k, offs_v, ds2, dy2, dr2, dzc2, True)
        else:
            ds0, dy0, dr0, dzc0 = _load_state(dst_base, 0, W, DK, DV, offs_k, offs_v)
            if W >= 2:
                ds1, dy1, dr1, dzc1 = _load_state(dst_base, 1, W, DK, DV, offs_k, offs_v)
            if W >= 3:
                ds2, dy2, dr2, dzc2 = _load_state(dst_base, 2, W, DK, DV, offs_k, offs_v)

        if DO_KV:
            k_base = k_ptr + bi * sk_b + hi * sk_h
            v_base = v_ptr + bi * sv_b + hi * sv_h
            a_base = a_ptr + bi * sa_b + hi * sa_h
            dk_base = dk_ptr + bi * sdk_b + hi * sdk_h
            dv_base = dv_ptr + bi * sdv_b + hi * sdv_h
            da_base = da_ptr + bi * sdw_b + hi * sdw_h
            # u, s and kbar are read again rather than kept live through the query loop (sm_90 compile of the
            # centred configuration: 168 registers instead of 192)
            u0, t0 = _key_pass_vectors(st_base, 0, W, DK, DV, offs_k, offs_v)
            if W >= 2:
                u1, t1 = _key_pass_vectors(st_base, 1, W, DK, DV, offs_k, offs_v)
            if W >= 3:
                u2, t2 = _key_pass_vectors(st_base, 2, W, DK, DV, offs_k, offs_v)
            kbar = _load_key_mean(st_base, W, DK, DV, offs_k, N, CENTER)
            gh0, gl0, gth0, gtl0, gy0, sh0, ct0, kg0, mean_grad = _key_operands(
                ds0, dy0, dr0, dzc0, u0, t0, kbar, c2, scale, PREC)
            if W >= 2:
                gh1, gl1, gth1, gtl1, gy1, sh1, ct1, kg1, mean_part = _key_operands(
                    ds1, dy1, dr1, dzc1, u1, t1, kbar, c2, scale, PREC)
                mean_grad += mean_part
            if W >= 3:
                gh2, gl2, gth2, gtl2, gy2, sh2, ct2, kg2, mean_part = _key_operands(
                    ds2, dy2, dr2, dzc2, u2, t2, kbar, c2, scale, PREC)
                mean_grad += mean_part
            mean_grad = mean_grad / N
            for start in range(n_begin, n_end, BLOCK_N):
                offs_n = start + rows
                kt = _load_tile(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK, UNIT_D)
                phi = _feature_fwd(kt, FEATURE)
                vt = _load_tile(v_base, offs_n, offs_v, sv_n, sv_d, n_end, DV, UNIT_D)
                if HAS_WEIGHTS:
                    aw = _load_weight(a_base, offs_n, sa_n, n_end)
                else:
                    aw = (offs_n < n_end).to(tl.float32)
                dv, dphi, daw = _key_grads(phi, vt, aw, gh0, gl0, gth0, gtl0, sh0, gy0, ct0, kg0, HAS_WEIGHTS, PREC)
                if HAS_WEIGHTS:
                    _store_weight(da_base, daw, offs_n, sdw_n, n_end)
                if W >= 2:
                    aw = _load_weight(a_base + sa_w, offs_n, sa_n, n_end)
                    dv_w, dphi_w, daw = _key_grads(phi, vt, aw, gh1, gl1, gth1, gtl1, sh1, gy1, ct1, kg1,
                                                   HAS_WEIGHTS, PREC)
                    dv += dv_w
                    dphi += dphi_w
                    _store_weight(da_base + sdw_w, daw, offs_n, sdw_n, n_end)
                if W >= 3:
                    aw = _load_weight(a_base + 2 * sa_w, offs_n, sa_n, n_end)
                    dv_w, dphi_w, daw = _key_grads(phi, vt, aw, gh2, gl2, gth2, gtl2, sh2, gy2, ct2, kg2,
                                                   HAS_WEIGHTS, PREC)
                    dv += dv_w
                    dphi += dphi_w
                    _store_weight(da_base + 2 * sdw_w, daw, offs_n, sdw_n, n_end)
                if CENTER:
                    dphi -= mean_grad[None, :]
                _store_rows(dk_base, _feature_bwd(kt, phi, dphi, FEATURE), offs_n, offs_k, sdk_n, sdk_d, n_end, DK,
                            UNIT_D)
                _store_rows(dv_base, dv, offs_n, offs_v, sdv_n, sdv_d, n_end, DV, UNIT_D)
            if NEED_DC:
                # c enters every similarity twice (query and key side): dL/dc = 2c sum_w (u_w . dr_w + s_w dzc_w)
                dc = tl.sum(u0 * dr0, 0) + t0 * dzc0
                if W >= 2:
                    dc += tl.sum(u1 * dr1, 0) + t1 * dzc1
                if W >= 3:
                    dc += tl.sum(u2 * dr2, 0) + t2 * dzc2
                tl.store(dc_ptr + pid_bh, 2.0 * c * dc, mask=pid_split == 0)

    def _common_args(q, k, v, key_weights, query_weights, const, const_value, scale, eps):
        c_ptr = const if const is not None else q  # unused when the constant is a plain float
        a_ptr = key_weights if key_weights is not None else q  # unused without weights (HAS_WEIGHTS=False)
        b_ptr = query_weights if query_weights is not None else q
        return (q, k, v, a_ptr, b_ptr, c_ptr), (float(const_value), float(scale), float(eps))

    def _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize):
        weightings = 1 if key_weights is None else key_weights.shape[-1]
        return dict(
            W=weightings, HAS_WEIGHTS=key_weights is not None, FEATURE=feature, CENTER=center_keys,
            CONST_PTR=const is not None, HAS_CONST=const is not None or const_value != 0.0, NORMALIZE=normalize,
            DKP=_padded(q.shape[-1]), DVP=_padded(v.shape[-1]),
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
        meta = _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize)
        block_n, num_warps, num_stages = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=False)
        splits, chunk = _splits(batch * heads, n, block_n, q.device, backward=False)
        if num_stages > 2 and cdiv(chunk, block_n) <= 4 and _LAUNCH_OVERRIDE is None:
            # passes of at most 4 tiles (ViT-sized sequences) gain nothing from a third buffer, and the smaller
            # footprint lets more programs share an SM (H200, N=197: 1.47x the floor with 2 stages, 1.53x with 3)
            num_stages = 2
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
            *pointers, out, state if state.numel() else out, *scalars, n, heads, dk, dv,
            chunk, state_shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *_strides4(out),
        )
        kernel = launcher(_linear_attention_fwd_kernel, direct_launch)
        # the raw sums this configuration reads: z for the normaliser (and, unweighted, the centring's key sum),
        # u for the centring and the constant feature
        need_z = normalize or (center_keys and key_weights is None)
        need_u = center_keys or meta["HAS_CONST"]
        config = dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, NEED_Z=need_z, NEED_U=need_u,
                      UNIT_D=_unit_last_stride(q, k, v), **_register_cap(False), **meta)
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
        meta = _common_meta(q, k, v, key_weights, const, const_value, feature, center_keys, normalize)
        launch = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=True, split=True)
        splits, chunk = _splits(batch * heads, n, launch[0], q.device, backward=True)
        if splits == 1:
            launch = _launch_params(meta["DKP"], meta["DVP"], meta["W"], backward=True)
        block_n, num_warps, num_stages = launch
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
            *pointers, grad, state, dstate, dq, dkey, dval,
            dkw if dkw.numel() else dq, dqw if dqw.numel() else dq,
            dconst if need_const_grad else dq, *scalars, n, heads, dk, dv, chunk, state.shape[1],
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(key_weights), *_strides4(query_weights),
            *_strides4(grad), *_strides4(dq), *_strides4(dval), *_strides4(dkw if dkw.numel() else None),
        )
        kernel = launcher(_linear_attention_bwd_kernel, direct_launch)
        config = dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, NEED_DC=need_const_grad,
                      ROW_SCALED=normalize or key_weights is not None,
                      UNIT_D=_unit_last_stride(q, k, v, grad), **_register_cap(True), **meta)
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
                grad, q, k, v, key_weights, query_weights, const, const_value, state, feature, center_keys,
                scale,
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
    if not save_state and not torch.compiler.is_compiling():
        # nothing to differentiate: launch directly, without the autograd Function's bookkeeping (host time)
        return _linear_attention_fwd(
            q, k, v, key_weights, query_weights, const, const_value, _FEATURE_CODES[feature_map], bool(center_keys),
            float(scale), bool(normalize), float(eps), False, direct_launch=True,
        )[0]
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
