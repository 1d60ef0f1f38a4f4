"""The delta rule (DeltaNet) as a chunked scan, and its bidirectional form for images.

Per (batch, head), with a state S in R^{d_k x d_v} starting at zero and tokens taken in scan order:

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T        o_t = S_t^T (scale q_t)

Chunked form (WY / UT transform; C tokens per chunk, S_0 the state entering the chunk):

    A   = tril(diag(beta) K K^T, -1)            T = (I + A)^-1
    U   = T diag(beta) (V - K S_0)              (the per-token corrections, "new values")
    O   = scale (Q S_0 + tril(Q K^T) U)         S_C = S_0 + K^T U

Images have no causal order, so :func:`delta_rule_bidirectional` averages the scan in token order with the scan in
reversed order (flipped back). Every Triton launch runs both directions (the direction is a grid axis; the reversed
order is index arithmetic, no flipped copies), and the two outputs meet by fp32 atomic adds. Two Triton paths:

- fused: one program per (value block, batch*head, direction) walks all chunks of its sequence, carrying S on chip
  (meant for short ViT sequences, N ~ 197). Correct under the interpreter; on the H200 with Triton 3.6 it failed at
  chunk 64 and passed at chunk 32 (see the launch settings below), so 'auto' does not take it on CUDA yet.
- chunked: T per chunk in parallel, then the only sequential kernel (the state entering each chunk), then outputs
  per chunk in parallel; the backward likewise (a sequential state-gradient kernel, then per-chunk gradients).
  Verified on the H200 against float64 and fla (bf16, d=64, N up to 12545).

The L2 normalisation of q and k and the beta scaling are fused into the kernels (no extra pass).

Layout is (B, N, H, D) with any strides and a unit stride on D; beta is (B, N, H). Accumulation is fp32 whatever
the input dtype (float64 inputs stay float64 in the references).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import _interpreting, cdiv, kernel_backend, next_power_of_2, triton_available

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_L2_EPS = 1e-6  # q / sqrt(sum(q^2) + eps), as fla's fused L2 norm
_DIRECTIONS = {"both": (0, 2), "forward": (0, 1), "reverse": (1, 1)}  # (first direction, number of directions)
CHUNK = 64


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"delta rule expects q, k, v of shape (B, N, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise ValueError(f"delta rule: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"delta rule: v must share (B, N, H) with q; got v {tuple(v.shape)} and q {tuple(q.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"delta rule: beta must be (B, N, H) = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"delta rule: {name} has dtype {t.dtype}; use float16, bfloat16, float32 or float64")


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + 1e-6) over the last dim: the normalisation the fused kernels apply to q and k."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + _L2_EPS)


# ---------------------------------------------------------------------------------------------------------------------
# References (the specification)
# ---------------------------------------------------------------------------------------------------------------------

def delta_rule_recurrent_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        reverse: bool = False,
) -> torch.Tensor:
    """Token-by-token delta rule; q and k are used as given. Returns (B, N, H, Dv) in v's dtype.

    Args:
        q, k: (B, N, H, Dk). v: (B, N, H, Dv). beta: (B, N, H), the write strength in (0, 1).
        scale: multiplies q; default Dk^-1/2.
        reverse: scan from the last token to the first; outputs stay in the original token order.
    """
    _check_inputs(q, k, v, beta)
    acc = _acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    b, n, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = [None] * n
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        k_t, v_t, beta_t = k[:, t], v[:, t], beta[:, t, :, None]
        # S <- S + beta k (v - S^T k)^T, which is (I - beta k k^T) S + beta k v^T
        correction = beta_t * (v_t - torch.einsum("bhkv,bhk->bhv", state, k_t))
        state = state + k_t.unsqueeze(-1) * correction.unsqueeze(-2)
        out[t] = torch.einsum("bhkv,bhk->bhv", state, q[:, t])
    return torch.stack(out, dim=1).to(v.dtype)


def delta_rule_chunked_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        reverse: bool = False,
        chunk_size: int = CHUNK,
) -> torch.Tensor:
    """The WY / UT chunked delta rule in plain PyTorch (any N; padded internally); contract as the recurrent one."""
    _check_inputs(q, k, v, beta)
    acc = _acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    if reverse:
        q, k, v, beta = q.flip(1), k.flip(1), v.flip(1), beta.flip(1)
    b, n, h, dk = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, n)  # a sequence shorter than one chunk is one chunk of its own length: no padded work
    pad = -n % c
    # Padded tokens have k = 0 and beta = 0: they neither change the state nor feed real outputs.
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    beta = F.pad(beta, (0, 0, 0, pad))
    nc = (n + pad) // c
    # (B, H, NC, C, D)
    q, k, v = (t.reshape(b, nc, c, h, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    beta = beta.reshape(b, nc, c, h).permute(0, 3, 1, 2)
    eye = torch.eye(c, dtype=acc, device=q.device)
    strict = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    a = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2))).masked_fill(~strict, 0)
    t_inv = torch.linalg.solve_triangular(eye + a, eye.expand_as(a), upper=False, unitriangular=True)
    w = t_inv @ (beta.unsqueeze(-1) * k)  # U = T diag(beta) V - W S_0
    u = t_inv @ (beta.unsqueeze(-1) * v)
    qk = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
    state = q.new_zeros(b, h, dk, dv)
    out = []
    for i in range(nc):
        new_v = u[:, :, i] - w[:, :, i] @ state
        out.append(q[:, :, i] @ state + qk[:, :, i] @ new_v)
        state = state + k[:, :, i].transpose(-1, -2) @ new_v
    o = torch.stack(out, dim=2).permute(0, 2, 3, 1, 4).reshape(b, nc * c, h, dv)[:, :n]
    if reverse:
        o = o.flip(1)
    return o.to(out_dtype)


def delta_rule_bidirectional_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
) -> torch.Tensor:
    """Plain PyTorch :func:`delta_rule_bidirectional` (same arguments), built on the chunked reference."""
    _check_inputs(q, k, v, beta)
    if qk_l2norm:
        q, k = l2_normalize(q.to(_acc_dtype(q))), l2_normalize(k.to(_acc_dtype(k)))
    fwd = delta_rule_chunked_reference(q, k, v, beta, scale=scale)
    bwd = delta_rule_chunked_reference(q, k, v, beta, scale=scale, reverse=True)
    return (0.5 * (fwd.to(_acc_dtype(fwd)) + bwd.to(_acc_dtype(bwd)))).to(v.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------------

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _dot(a, b, DOT_MODE: tl.constexpr):
        # DOT_MODE 0: fp32 operands at the default precision (tf32 on the GPU; true fp32 under the interpreter,
        # where bf16 dots are wrong), used only on operands that are not transposed views, since tf32 dots of a
        # tl.trans operand gave wrong results and illegal accesses with Triton 3.6 on the H200;
        # 1: bf16 operands; 2: fp16 operands; 3: fp32 operands, IEEE precision (fp32 inputs on the GPU).
        # The accumulator is fp32 in every mode.
        if DOT_MODE == 1:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        elif DOT_MODE == 2:
            return tl.dot(a.to(tl.float16), b.to(tl.float16))
        elif DOT_MODE == 3:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a.to(tl.float32), b.to(tl.float32))

    @triton.jit
    def _unit_lower_inverse(a, BT: tl.constexpr, LOG2_BT: tl.constexpr):
        """(I + a)^-1 for a strictly lower-triangular (BT, BT) fp32 tile.

        Recursive block inversion: X holds the inverses of the diagonal blocks of size 2^l; the blocks of size
        2^(l+1) follow from [[X1, 0], [A21, X2]] -> [[X1, 0], [-X2 A21 X1, X2]], i.e. X <- X - X A_off X with
        A_off the lower-left sub-blocks. Every intermediate is a block of the true inverse, so nothing grows.
        """
        rows = tl.arange(0, BT)[:, None]
        cols = tl.arange(0, BT)[None, :]
        x = tl.where(rows == cols, 1.0, 0.0)
        for lvl in tl.static_range(LOG2_BT):
            same_block = (rows >> (lvl + 1)) == (cols >> (lvl + 1))
            lower_left = (((rows >> lvl) & 1) == 1) & (((cols >> lvl) & 1) == 0)
            a_off = tl.where(same_block & lower_left, a, 0.0)
            x = x - tl.dot(tl.dot(x, a_off), x)
        return x

    @triton.jit
    def _chunk_rows(c, N, rev, BT: tl.constexpr):
        """Token indices of scan chunk c (reversed order is index arithmetic) and which of them exist."""
        pos = c * BT + tl.arange(0, BT)
        return tl.where(rev == 1, N - 1 - pos, pos), pos < N

    @triton.jit
    def _load_rows(ptr, sb, sn, sh, i_b, i_h, tok, valid, offs, D: tl.constexpr):
        # head dims are compile-time: a block that covers the whole dim needs no column mask, so loads vectorise
        if D == offs.shape[0]:
            mask = valid[:, None]
        else:
            mask = valid[:, None] & (offs[None, :] < D)
        rows = ptr + i_b * sb + i_h * sh + tok[:, None] * sn + offs[None, :]
        return tl.load(rows, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _normalize_rows(x, L2NORM: tl.constexpr):
        """(x / sqrt(|x|^2 + eps), 1 / sqrt(|x|^2 + eps)) when L2NORM, else (x, 1)."""
        if L2NORM:
            r = 1.0 / tl.sqrt(tl.sum(x * x, 1) + 1e-6)
            return x * r[:, None], r
        else:
            return x, tl.sum(x * 0.0, 1) + 1.0

    @triton.jit
    def _narrow(x, DOT_MODE: tl.constexpr):
        """Hold a tile in the dot operand dtype: half the registers, and no repeated casts at every dot."""
        if DOT_MODE == 1:
            return x.to(tl.bfloat16)
        elif DOT_MODE == 2:
            return x.to(tl.float16)
        else:
            return x

    @triton.jit
    def _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid):
        return tl.load(beta_ptr + i_b * sbb + i_h * sbh + tok * sbn, mask=valid, other=0.0).to(tl.float32)

    @triton.jit
    def _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v):
        return (seq * nt + c) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]

    @triton.jit
    def _fp32_scalars(scale, out_weight):
        # fp32 from eager launches, fp64 from Inductor (fp64 would break the loops' carried types)
        return tl.cast(scale, tl.float32), tl.cast(out_weight, tl.float32)

    @triton.jit(do_not_specialize=["N"])
    def _delta_rule_fwd_kernel(
            q_ptr, k_ptr, v_ptr, beta_ptr, o_ptr, h_ptr, t_ptr,
            sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sbb, sbn, sbh,
            N, H, DK: tl.constexpr, DV: tl.constexpr, NV, scale, out_weight, first_dir,
            BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            L2NORM: tl.constexpr, STORE: tl.constexpr, PARALLEL: tl.constexpr, DOT_MODE: tl.constexpr,
    ):
        """Outputs of one (value block, batch*head, direction).

        Fused path (PARALLEL=False; grid (NV, B*H, dirs)): the program walks all chunks in scan order carrying the
        state on chip, computing T itself; with STORE it saves the state entering every chunk (h) and T (t) for the
        backward. Chunk-parallel path (PARALLEL=True; grid (NV * chunks, B*H, dirs)): one chunk per program, its
        entering state and T read from h and t (written by the two kernels below).
        o (fp32, contiguous, zeroed) receives out_weight * o_dir by atomic add, so the two directions of one launch
        sum without a second pass.
        """
        scale, out_weight = _fp32_scalars(scale, out_weight)
        i_bh, i_d = tl.program_id(1), tl.program_id(2)
        i_b, i_h = i_bh // H, i_bh % H
        rev = first_dir + i_d
        nt = tl.cdiv(N, BT)
        if PARALLEL:
            i_v = tl.program_id(0) % NV
            c_lo = tl.program_id(0) // NV
            c_hi = c_lo + 1
        else:
            i_v = tl.program_id(0)
            c_lo = 0
            c_hi = nt
        offs_t = tl.arange(0, BT)
        offs_k = tl.arange(0, BK)
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_kv = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
        strict = offs_t[:, None] > offs_t[None, :]
        causal = offs_t[:, None] >= offs_t[None, :]
        seq = (i_d * tl.num_programs(1) + i_bh).to(tl.int64)
        state = tl.zeros([BK, BV], dtype=tl.float32)
        for c in range(c_lo, c_hi):
            tok, valid = _chunk_rows(c, N, rev, BT)
            q, _ = _normalize_rows(_load_rows(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            k, _ = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            q = _narrow(q, DOT_MODE)
            k = _narrow(k, DOT_MODE)
            v = _narrow(_load_rows(v_ptr, svb, svn, svh, i_b, i_h, tok, valid, offs_v, DV), DOT_MODE)
            beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid)
            t_offs = (seq * nt + c) * BT * BT + offs_t[:, None] * BT + offs_t[None, :]
            if PARALLEL:
                state = tl.load(h_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v), mask=mask_kv, other=0.0)
                t_inv = tl.load(t_ptr + t_offs)
            else:
                kk = _dot(k, tl.trans(k), DOT_MODE)
                t_inv = _unit_lower_inverse(tl.where(strict, beta[:, None] * kk, 0.0), BT, LOG2_BT)
                if STORE:
                    tl.store(h_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v), state, mask=mask_kv)
                    if i_v == 0:
                        tl.store(t_ptr + t_offs, t_inv)
            resid = beta[:, None] * (v - _dot(k, state, DOT_MODE))
            new_v = _dot(t_inv, resid, 0)
            qk = tl.where(causal, _dot(q, tl.trans(k), DOT_MODE), 0.0)
            o = scale * (_dot(q, state, DOT_MODE) + _dot(qk, new_v, DOT_MODE))
            o_offs = ((i_b * N + tok.to(tl.int64)) * H + i_h)[:, None] * DV + offs_v[None, :]
            tl.atomic_add(o_ptr + o_offs, out_weight * o, mask=valid[:, None] & (offs_v[None, :] < DV))
            if not PARALLEL:
                state = state + _dot(tl.trans(k), new_v, DOT_MODE)

    @triton.jit(do_not_specialize=["N"])
    def _delta_rule_t_kernel(
            k_ptr, beta_ptr, t_ptr, skb, skn, skh, sbb, sbn, sbh, N, H, DK: tl.constexpr, first_dir,
            BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
    ):
        """Chunk-parallel path, step 1: T = (I + tril(diag(beta) K K^T, -1))^-1 per chunk; grid (chunks, B*H, dirs)."""
        c, i_bh, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = i_bh // H, i_bh % H
        nt = tl.cdiv(N, BT)
        offs_t = tl.arange(0, BT)
        tok, valid = _chunk_rows(c, N, first_dir + i_d, BT)
        k, _ = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, tl.arange(0, BK), DK), L2NORM)
        k = _narrow(k, DOT_MODE)
        beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid)
        a = tl.where(offs_t[:, None] > offs_t[None, :], beta[:, None] * _dot(k, tl.trans(k), DOT_MODE), 0.0)
        seq = (i_d * tl.num_programs(1) + i_bh).to(tl.int64)
        tl.store(t_ptr + (seq * nt + c) * BT * BT + offs_t[:, None] * BT + offs_t[None, :],
                 _unit_lower_inverse(a, BT, LOG2_BT))

    @triton.jit(do_not_specialize=["N"])
    def _delta_rule_states_kernel(
            k_ptr, v_ptr, beta_ptr, h_ptr, t_ptr, skb, skn, skh, svb, svn, svh, sbb, sbn, sbh,
            N, H, DK: tl.constexpr, DV: tl.constexpr, first_dir,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
    ):
        """Chunk-parallel path, step 2 (the only sequential part): the state entering every chunk, into h.

        S_next = S + K^T T diag(beta) (V - K S); grid (NV, B*H, dirs).
        """
        i_v, i_bh, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = i_bh // H, i_bh % H
        nt = tl.cdiv(N, BT)
        offs_t = tl.arange(0, BT)
        offs_k = tl.arange(0, BK)
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_kv = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
        seq = (i_d * tl.num_programs(1) + i_bh).to(tl.int64)
        state = tl.zeros([BK, BV], dtype=tl.float32)
        for c in range(nt):
            tok, valid = _chunk_rows(c, N, first_dir + i_d, BT)
            k, _ = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            k = _narrow(k, DOT_MODE)
            v = _load_rows(v_ptr, svb, svn, svh, i_b, i_h, tok, valid, offs_v, DV)
            beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid)
            t_inv = tl.load(t_ptr + (seq * nt + c) * BT * BT + offs_t[:, None] * BT + offs_t[None, :])
            tl.store(h_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v), state, mask=mask_kv)
            new_v = _dot(t_inv, beta[:, None] * (v - _dot(k, state, DOT_MODE)), 0)
            state = state + _dot(tl.trans(k), new_v, DOT_MODE)

    @triton.jit(do_not_specialize=["N"])
    def _delta_rule_dstates_kernel(
            q_ptr, k_ptr, beta_ptr, do_ptr, t_ptr, dh_ptr,
            sqb, sqn, sqh, skb, skn, skh, sbb, sbn, sbh, sdb, sdn, sdh,
            N, H, DK: tl.constexpr, DV: tl.constexpr, scale, out_weight, first_dir,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
    ):
        """Chunk-parallel backward, step 1 (sequential, reverse scan order): the gradient of the state leaving
        every chunk, into dh. dS_0 = s Q^T dO + dS - K^T diag(beta) T^T (s tril(QK^T)^T dO + K dS); grid (NV, B*H,
        dirs). It needs no forward state: the delta rule is linear in S."""
        scale, out_weight = _fp32_scalars(scale, out_weight)
        i_v, i_bh, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i_b, i_h = i_bh // H, i_bh % H
        nt = tl.cdiv(N, BT)
        offs_t = tl.arange(0, BT)
        offs_k = tl.arange(0, BK)
        offs_v = i_v * BV + tl.arange(0, BV)
        mask_kv = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
        causal = offs_t[:, None] >= offs_t[None, :]
        seq = (i_d * tl.num_programs(1) + i_bh).to(tl.int64)
        dstate = tl.zeros([BK, BV], dtype=tl.float32)
        for cc in range(nt):
            c = nt - 1 - cc
            tok, valid = _chunk_rows(c, N, first_dir + i_d, BT)
            q, _ = _normalize_rows(_load_rows(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            k, _ = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            q = _narrow(q, DOT_MODE)
            k = _narrow(k, DOT_MODE)
            beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid)
            do = _narrow(_load_rows(do_ptr, sdb, sdn, sdh, i_b, i_h, tok, valid, offs_v, DV) * out_weight, DOT_MODE)
            # T^T read by transposed addressing (a plain load), not tl.trans: see _dot.
            t_inv_t = tl.load(t_ptr + (seq * nt + c) * BT * BT + offs_t[None, :] * BT + offs_t[:, None])
            tl.store(dh_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v), dstate, mask=mask_kv)
            qk = tl.where(causal, _dot(q, tl.trans(k), DOT_MODE), 0.0)
            d_new_v = scale * _dot(tl.trans(qk), do, DOT_MODE) + _dot(k, dstate, DOT_MODE)
            dv = beta[:, None] * _dot(t_inv_t, d_new_v, 0)
            dstate = dstate + scale * _dot(tl.trans(q), do, DOT_MODE) - _dot(tl.trans(k), dv, DOT_MODE)

    @triton.jit(do_not_specialize=["N"])
    def _delta_rule_bwd_kernel(
            q_ptr, k_ptr, v_ptr, beta_ptr, do_ptr, h_ptr, t_ptr, dh_ptr, dq_ptr, dk_ptr, dv_ptr, dbeta_ptr,
            sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sbb, sbn, sbh, sdb, sdn, sdh,
            N, H, DK: tl.constexpr, DV: tl.constexpr, NV, scale, out_weight, first_dir,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, PARALLEL: tl.constexpr,
            DOT_MODE: tl.constexpr,
    ):
        """Gradients of one (value block, batch*head, direction).

        Fused path: the program walks the chunks in reverse scan order carrying dS, the gradient of the state
        leaving the chunk. Chunk-parallel path: one chunk per program, dS read from dh. Per chunk (S_0 from h,
        T from t, dO = out_weight * grad):
            dQ = s (dO S_0^T + tril(dO U^T) K)        dU = s tril(Q K^T)^T dO + K dS
            dR = T^T dU    (R = diag(beta)(V - K S_0), U = T R)
            dA = -tril(dR U^T, -1) -> d beta, and dK through A = tril(diag(beta) K K^T, -1)
            dS_0 = s Q^T dO + dS - K^T diag(beta) dR
        dq, dk, dv, dbeta (fp32, contiguous, zeroed) are summed over directions and value blocks by atomic add,
        after the L2-norm backward (linear in the incoming gradient, so it may be applied per part).
        """
        scale, out_weight = _fp32_scalars(scale, out_weight)
        i_bh, i_d = tl.program_id(1), tl.program_id(2)
        i_b, i_h = i_bh // H, i_bh % H
        rev = first_dir + i_d
        nt = tl.cdiv(N, BT)
        if PARALLEL:
            i_v = tl.program_id(0) % NV
            c_first = tl.program_id(0) // NV
            n_chunks = 1
        else:
            i_v = tl.program_id(0)
            c_first = nt - 1
            n_chunks = nt
        offs_t = tl.arange(0, BT)
        offs_k = tl.arange(0, BK)
        offs_v = i_v * BV + tl.arange(0, BV)
        strict = offs_t[:, None] > offs_t[None, :]
        causal = offs_t[:, None] >= offs_t[None, :]
        mask_kv = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
        dstate = tl.zeros([BK, BV], dtype=tl.float32)
        seq = (i_d * tl.num_programs(1) + i_bh).to(tl.int64)
        for cc in range(n_chunks):
            c = c_first - cc
            tok, valid = _chunk_rows(c, N, rev, BT)
            q, _ = _normalize_rows(_load_rows(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            k, _ = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
            q = _narrow(q, DOT_MODE)
            k = _narrow(k, DOT_MODE)
            v = _load_rows(v_ptr, svb, svn, svh, i_b, i_h, tok, valid, offs_v, DV)
            beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid)
            do = _narrow(_load_rows(do_ptr, sdb, sdn, sdh, i_b, i_h, tok, valid, offs_v, DV) * out_weight, DOT_MODE)
            s_offs = _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v)
            state = tl.load(h_ptr + s_offs, mask=mask_kv, other=0.0)
            if PARALLEL:
                dstate = tl.load(dh_ptr + s_offs, mask=mask_kv, other=0.0)
            t_offs = (seq * nt + c) * BT * BT
            t_inv = tl.load(t_ptr + t_offs + offs_t[:, None] * BT + offs_t[None, :])
            t_inv_t = tl.load(t_ptr + t_offs + offs_t[None, :] * BT + offs_t[:, None])  # T^T: see _dot
            # Recompute the forward pieces of this chunk.
            kk = _dot(k, tl.trans(k), DOT_MODE)
            v_minus = v - _dot(k, state, DOT_MODE)
            new_v = _dot(t_inv, beta[:, None] * v_minus, 0)
            qk = tl.where(causal, _dot(q, tl.trans(k), DOT_MODE), 0.0)
            # Output read: O = s (Q S_0 + tril(QK^T) U).
            d_qk = tl.where(causal, _dot(do, tl.trans(new_v), DOT_MODE), 0.0) * scale
            dq = scale * _dot(do, tl.trans(state), DOT_MODE) + _dot(d_qk, k, DOT_MODE)
            dk = _dot(tl.trans(d_qk), q, DOT_MODE)
            d_new_v = scale * _dot(tl.trans(qk), do, DOT_MODE) + _dot(k, dstate, DOT_MODE)
            # State write: S_C = S_0 + K^T U.
            dk += _dot(new_v, tl.trans(dstate), DOT_MODE)
            # U = T R: dR = T^T dU, dA = -tril(dR U^T, -1).
            d_resid = _dot(t_inv_t, d_new_v, 0)
            dv = beta[:, None] * d_resid
            d_a = -tl.where(strict, _dot(d_resid, tl.trans(new_v), DOT_MODE), 0.0)
            dbeta = tl.sum(d_resid * v_minus, 1) + tl.sum(d_a * kk, 1)
            d_kk = beta[:, None] * d_a
            dk += _dot(d_kk, k, DOT_MODE) + _dot(tl.trans(d_kk), k, DOT_MODE)
            dk -= _dot(dv, tl.trans(state), DOT_MODE)
            if not PARALLEL:
                dstate = dstate + scale * _dot(tl.trans(q), do, DOT_MODE) - _dot(tl.trans(k), dv, DOT_MODE)
            if L2NORM:  # y = x r with r = (|x|^2 + eps)^-1/2: dx = r (dy - y (y . dy)), y re-read in fp32
                q, rq = _normalize_rows(_load_rows(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
                k, rk = _normalize_rows(_load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK), L2NORM)
                dq = rq[:, None] * (dq - q * tl.sum(dq * q, 1)[:, None])
                dk = rk[:, None] * (dk - k * tl.sum(dk * k, 1)[:, None])
            row = (i_b * N + tok.to(tl.int64)) * H + i_h
            mask_k = valid[:, None] & (offs_k[None, :] < DK)
            tl.atomic_add(dq_ptr + row[:, None] * DK + offs_k[None, :], dq, mask=mask_k)
            tl.atomic_add(dk_ptr + row[:, None] * DK + offs_k[None, :], dk, mask=mask_k)
            mask_v = valid[:, None] & (offs_v[None, :] < DV)
            tl.atomic_add(dv_ptr + row[:, None] * DV + offs_v[None, :], dv, mask=mask_v)
            tl.atomic_add(dbeta_ptr + row, dbeta, mask=valid)


def _dot_mode(dtype: torch.dtype) -> int:
    if _interpreting():
        return 0
    return {torch.float32: 3, torch.bfloat16: 1, torch.float16: 2}[dtype]


def _block_sizes(dk: int, dv: int, num_seqs: int, device: torch.device) -> tuple[int, int, int]:
    """(BK, BV for kernels that walk the chunks in sequence, BV for chunk-parallel kernels).

    Value columns evolve independently, so a sequential kernel may split them into blocks to get more programs
    when there are few (batch, head, direction) sequences, at the price of re-reading the keys per block; it
    splits no further than SEQ_BV_MIN (see the launch settings below for why that is 64 for now).
    """
    bk = max(16, next_power_of_2(dk))
    bv_parallel = min(64, max(16, next_power_of_2(dv)))
    bv_seq = bv_parallel
    while bv_seq > max(16, SEQ_BV_MIN) and num_seqs * cdiv(dv, bv_seq) < 2 * _multiprocessors(device):
        bv_seq //= 2
    return bk, bv_seq, bv_parallel


def _use_chunk_parallel(n: int, dk: int, dv: int, num_seqs: int, device: torch.device) -> bool:
    """Which path 'auto' takes. On CUDA: the fused one for short sequences (N <= FUSED_MAX_N) at head dim 64, the
    only head dim where it was verified on the H200 (it gave a wrong forward at d=24 there at chunk 64, cause not
    found); the chunk-parallel one otherwise. Elsewhere (the interpreter): the fused path while there are enough
    sequences to fill the device, else the chunk-parallel one."""
    if device.type == "cuda":
        return not (n <= FUSED_MAX_N and dk == dv == 64)
    return cdiv(n, KERNEL_CHUNK) >= 4 and num_seqs < 4 * _multiprocessors(device)


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _fused_options(chunk_parallel: bool) -> dict[str, int]:
    return {} if chunk_parallel or FUSED_NUM_STAGES is None else {"num_stages": FUSED_NUM_STAGES}


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride()[:3])


# Launch settings of the Triton path. The kernels take any power-of-two chunk >= 16; the chunk of the references
# (CHUNK) is fixed at 64 as in fla. benchmarks/delta_rule.py times the alternatives: on the H200 (bf16, d=64,
# 2026-11-29) chunk 32 beat chunk 64 at every N (chunked path, fwd+bwd 3.18 vs 3.88 ms at N=197, 4.19 vs 4.15 at
# 12545), the fused path at chunk 32 was fastest up to N=785 (2.86 / 2.72 ms), and chunk 64 at d=128 needs more
# shared memory than the H200 has (256 KB in the chunk-parallel forward).
KERNEL_CHUNK = 32
FUSED_MAX_N = 1024
NUM_WARPS = 4
# Value blocks of 16 in the backward kernels gave NaN gradients and illegal memory accesses with Triton 3.6 on the
# H200 (2026-11-29); until that is understood the sequential kernels do not split the value dim below 64.
SEQ_BV_MIN = 64
# The fused path on the H200 (Triton 3.6, bf16, d=64, 2026-11-29): with chunk 64 its backward asked for 270 KB of
# shared memory at BV=64 (OutOfResources) and raised illegal memory accesses at BV=16/32, and its forward gave a
# wrong output at d=24; with chunk 32 (BV=64) it passed the float64 check (N=197 and 3137).
# FUSED_NUM_STAGES (None = Triton's default software pipelining) is the knob for the next attempt at chunk 64.
FUSED_NUM_STAGES = None


if triton_available():

    @torch.library.triton_op("vitzoo::delta_rule_fwd", mutates_args=())
    def _delta_rule_fwd_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int, store: bool, chunk_parallel: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        chunk = KERNEL_CHUNK
        nt = cdiv(n, chunk)
        bk, bv_seq, bv_par = _block_sizes(dk, dv, b * h * num_dirs, q.device)
        store = store or chunk_parallel
        o = torch.zeros(b, n, h, dv, device=q.device, dtype=torch.float32)
        if store:
            states = torch.empty(num_dirs, b * h, nt, dk, dv, device=q.device, dtype=torch.float32)
            t_invs = torch.empty(num_dirs, b * h, nt, chunk, chunk, device=q.device, dtype=torch.float32)
        else:
            states = q.new_empty(0, dtype=torch.float32)
            t_invs = q.new_empty(0, dtype=torch.float32)
        common = dict(BT=chunk, BK=bk, L2NORM=qk_l2norm, DOT_MODE=_dot_mode(q.dtype), num_warps=NUM_WARPS)
        if chunk_parallel:
            torch.library.wrap_triton(_delta_rule_t_kernel)[(nt, b * h, num_dirs)](
                k, beta, t_invs, *_strides(k), *beta.stride(), n, h, dk, first_dir,
                LOG2_BT=chunk.bit_length() - 1, **common,
            )
            torch.library.wrap_triton(_delta_rule_states_kernel)[(cdiv(dv, bv_seq), b * h, num_dirs)](
                k, v, beta, states, t_invs, *_strides(k), *_strides(v), *beta.stride(), n, h, dk, dv, first_dir,
                BV=bv_seq, **common,
            )
        bv = bv_par if chunk_parallel else bv_seq
        nv = cdiv(dv, bv)
        torch.library.wrap_triton(_delta_rule_fwd_kernel)[(nv * nt if chunk_parallel else nv, b * h, num_dirs)](
            q, k, v, beta, o, states, t_invs, *_strides(q), *_strides(k), *_strides(v), *beta.stride(),
            n, h, dk, dv, nv, scale, 1.0 / num_dirs, first_dir,
            LOG2_BT=chunk.bit_length() - 1, BV=bv, STORE=store, PARALLEL=chunk_parallel, **common,
            **_fused_options(chunk_parallel),
        )
        return o.to(v.dtype), states, t_invs

    @torch.library.triton_op("vitzoo::delta_rule_bwd", mutates_args=())
    def _delta_rule_bwd_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, grad: torch.Tensor,
            states: torch.Tensor, t_invs: torch.Tensor, scale: float, qk_l2norm: bool, first_dir: int, num_dirs: int,
            chunk_parallel: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        chunk = t_invs.shape[-1]  # the forward's chunk
        nt = cdiv(n, chunk)
        bk, bv_seq, bv_par = _block_sizes(dk, dv, b * h * num_dirs, q.device)
        dq = torch.zeros(b, n, h, dk, device=q.device, dtype=torch.float32)
        dk_ = torch.zeros(b, n, h, dk, device=q.device, dtype=torch.float32)
        dv_ = torch.zeros(b, n, h, dv, device=q.device, dtype=torch.float32)
        dbeta = torch.zeros(b, n, h, device=q.device, dtype=torch.float32)
        common = dict(BT=chunk, BK=bk, L2NORM=qk_l2norm, DOT_MODE=_dot_mode(q.dtype), num_warps=NUM_WARPS)
        if chunk_parallel:
            dstates = torch.empty_like(states)
            torch.library.wrap_triton(_delta_rule_dstates_kernel)[(cdiv(dv, bv_seq), b * h, num_dirs)](
                q, k, beta, grad, t_invs, dstates, *_strides(q), *_strides(k), *beta.stride(), *_strides(grad),
                n, h, dk, dv, scale, 1.0 / num_dirs, first_dir, BV=bv_seq, **common,
            )
        else:
            dstates = states  # not read on the fused path
        bv = bv_par if chunk_parallel else bv_seq
        nv = cdiv(dv, bv)
        torch.library.wrap_triton(_delta_rule_bwd_kernel)[(nv * nt if chunk_parallel else nv, b * h, num_dirs)](
            q, k, v, beta, grad, states, t_invs, dstates, dq, dk_, dv_, dbeta,
            *_strides(q), *_strides(k), *_strides(v), *beta.stride(), *_strides(grad),
            n, h, dk, dv, nv, scale, 1.0 / num_dirs, first_dir, BV=bv, PARALLEL=chunk_parallel, **common,
            **_fused_options(chunk_parallel),
        )
        return dq.to(q.dtype), dk_.to(k.dtype), dv_.to(v.dtype), dbeta.to(beta.dtype)

    def _setup_context(ctx, inputs, output) -> None:
        q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, store, chunk_parallel = inputs
        _, states, t_invs = output
        ctx.save_for_backward(q, k, v, beta, states, t_invs)
        ctx.args = (scale, qk_l2norm, first_dir, num_dirs, chunk_parallel)

    def _backward(ctx, grad_o, grad_states, grad_t_invs):
        q, k, v, beta, states, t_invs = ctx.saved_tensors
        if grad_o.stride(-1) != 1:  # e.g. the stride-0 gradient of a .sum()
            grad_o = grad_o.contiguous()
        if states.numel() == 0:
            raise RuntimeError("delta rule: the forward ran without storing states (no input required grad)")
        grads = _delta_rule_bwd_op(q, k, v, beta, grad_o, states, t_invs, *ctx.args)
        return (*grads, None, None, None, None, None, None)

    _delta_rule_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def delta_rule_triton(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
        directions: str = "both",
        path: str = "auto",
) -> torch.Tensor:
    """The Triton delta rule: 'both' (average of the two scan orders), 'forward' or 'reverse' (one scan).

    fp32 / fp16 / bf16 inputs; returns v's dtype. Head dims up to 128 (any size; powers of two are fastest).
    ``path``: 'fused' (one program walks a whole sequence), 'chunked' (chunk-parallel kernels around a sequential
    state recurrence, for few long sequences) or 'auto'.
    """
    _check_inputs(q, k, v, beta)
    if not triton_available():
        raise RuntimeError("delta_rule_triton needs triton")
    if q.dtype == torch.float64:
        raise ValueError("delta_rule_triton: float64 is not supported; use the reference")
    if q.shape[-1] > 128 or v.shape[-1] > 128:
        raise ValueError(f"delta_rule_triton supports head dims up to 128, got {q.shape[-1]} and {v.shape[-1]}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("delta_rule_triton needs a unit stride on the head dim of q, k and v")
    if directions not in _DIRECTIONS:
        raise ValueError(f"delta_rule_triton: directions={directions!r} is not one of {tuple(_DIRECTIONS)}")
    first_dir, num_dirs = _DIRECTIONS[directions]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    store = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, beta))
    if path not in ("auto", "fused", "chunked"):
        raise ValueError(f"delta_rule_triton: path={path!r} is not 'auto', 'fused' or 'chunked'")
    b, n, h, dk = q.shape
    num_seqs = b * h * num_dirs
    chunk_parallel = path == "chunked" or (
        path == "auto" and _use_chunk_parallel(n, dk, v.shape[-1], num_seqs, q.device)
    )
    o, _, _ = _delta_rule_fwd_op(q, k, v, beta, scale, qk_l2norm, first_dir, num_dirs, store, chunk_parallel)
    return o


def delta_rule_bidirectional(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor,
        *,
        scale: float | None = None,
        qk_l2norm: bool = True,
) -> torch.Tensor:
    """Bidirectional delta rule: 0.5 * (scan in token order + scan in reversed order, flipped back).

    Args:
        q, k: (B, N, H, Dk); L2-normalised per head inside the op when ``qk_l2norm`` (fused in the kernel).
        v: (B, N, H, Dv).
        beta: (B, N, H), write strengths in (0, 1).
        scale: multiplies q; default Dk^-1/2.
        qk_l2norm: normalise q and k to unit length first.

    Returns:
        (B, N, H, Dv) in v's dtype. Runs the Triton kernel when ``kernel_backend(q.device) == 'triton'`` and the
        inputs are not float64; otherwise :func:`delta_rule_bidirectional_reference`.
    """
    if kernel_backend(q.device) == "triton" and q.dtype != torch.float64:
        return delta_rule_triton(q, k, v, beta, scale=scale, qk_l2norm=qk_l2norm, directions="both")
    return delta_rule_bidirectional_reference(q, k, v, beta, scale=scale, qk_l2norm=qk_l2norm)
