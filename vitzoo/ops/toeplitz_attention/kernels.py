"""The Triton kernels of Toeplitz-weighted attention (see :mod:`.reference` for the maths and :mod:`.function` for how
they are launched): the forward (which also gives dq: dq_t = sum_s T[t, s] (do_t . v_s) k_s is the forward with q, k,
v replaced by do, v, k), dk with dv, and the lag gradient.

As flash attention without the softmax: a program holds a block of query tokens (forward) or key tokens (dk, dv)
and streams the other side in blocks, so the (N, N) scores never reach memory. The Toeplitz weight of a tile is
gathered from the (2N - 1)-long lag vector (T[t, s] = lags[s - t + N - 1]), never built as a matrix. The lag
gradient dlags[l] = sum over batch and the l-th diagonal of (q_t . k_s)(do_t . v_s) takes programs per
(head, query block, key block) that each sum a share of the batch in registers, then add their tile's diagonals
into the lag vector with fp32 atomics (H N^2 per share, however large the batch).

PREC 'ieee' multiplies fp32 operands exactly (fp32 inputs, and the interpreter, whose 16-bit products are not
reliable); 'native' multiplies the 16-bit inputs on tensor cores. Every accumulator is fp32; the weighted scores are
rounded to the inputs' dtype only as operands of the product with v (or q, k in the backward), as flash attention
rounds its probabilities.
"""
import triton
import triton.language as tl


@triton.jit
def _load(base, offs_n, offs_d, s_n, N, D: tl.constexpr):
    # a (tokens, dim) tile of a (N, D) slice with unit stride along D, zero outside
    mask = (offs_n < N)[:, None] & (offs_d < D)[None, :]
    return tl.load(base + offs_n[:, None] * s_n + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store(base, x, offs_n, offs_d, s_n, N, D: tl.constexpr):
    mask = (offs_n < N)[:, None] & (offs_d < D)[None, :]
    tl.store(base + offs_n[:, None] * s_n + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _weights(lag_base, offs_t, offs_s, N):
    # the (queries, keys) tile of T: lags[s - t + N - 1], zero outside the N x N square
    mask = (offs_t < N)[:, None] & (offs_s < N)[None, :]
    return tl.load(lag_base + (offs_s[None, :] - offs_t[:, None] + N - 1), mask=mask, other=0.0)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    if PREC == "ieee":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _toeplitz_attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr, lags_ptr, out_ptr,
        N, H,
        sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, so_b, so_n, so_h,
        DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, PREC: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load(q_ptr + b * sq_b + h * sq_h, offs_t, offs_dk, sq_n, N, DK)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    lag_base = lags_ptr + h * (2 * N - 1)
    acc = tl.zeros((BLOCK_T, BLOCK_DV), dtype=tl.float32)
    for start in range(0, N, BLOCK_S):
        offs_s = start + tl.arange(0, BLOCK_S)
        k = _load(k_base, offs_s, offs_dk, sk_n, N, DK)
        v = _load(v_base, offs_s, offs_dv, sv_n, N, DV)
        weighted = _dot(q, tl.trans(k), PREC) * _weights(lag_base, offs_t, offs_s, N)
        acc += _dot(weighted.to(v.dtype), v, PREC)
    _store(out_ptr + b * so_b + h * so_h, acc, offs_t, offs_dv, so_n, N, DV)


@triton.jit
def _toeplitz_attention_dkdv_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lags_ptr, dk_ptr, dv_ptr,
        N, H,
        sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sg_b, sg_n, sg_h,
        sdk_b, sdk_n, sdk_h, sdv_b, sdv_n, sdv_h,
        DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, PREC: tl.constexpr,
):
    # dk_s = sum_t T[t, s] (do_t . v_s) q_t, dv_s = sum_t T[t, s] (q_t . k_s) do_t
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load(k_ptr + b * sk_b + h * sk_h, offs_s, offs_dk, sk_n, N, DK)
    v = _load(v_ptr + b * sv_b + h * sv_h, offs_s, offs_dv, sv_n, N, DV)
    q_base = q_ptr + b * sq_b + h * sq_h
    do_base = do_ptr + b * sg_b + h * sg_h
    lag_base = lags_ptr + h * (2 * N - 1)
    dk = tl.zeros((BLOCK_S, BLOCK_DK), dtype=tl.float32)
    dv = tl.zeros((BLOCK_S, BLOCK_DV), dtype=tl.float32)
    for start in range(0, N, BLOCK_T):
        offs_t = start + tl.arange(0, BLOCK_T)
        q = _load(q_base, offs_t, offs_dk, sq_n, N, DK)
        do = _load(do_base, offs_t, offs_dv, sg_n, N, DV)
        weights = _weights(lag_base, offs_t, offs_s, N)  # (queries, keys)
        weighted = _dot(q, tl.trans(k), PREC) * weights
        dv += _dot(tl.trans(weighted.to(do.dtype)), do, PREC)
        grad_scores = _dot(do, tl.trans(v), PREC) * weights
        dk += _dot(tl.trans(grad_scores.to(q.dtype)), q, PREC)
    _store(dk_ptr + b * sdk_b + h * sdk_h, dk, offs_s, offs_dk, sdk_n, N, DK)
    _store(dv_ptr + b * sdv_b + h * sdv_h, dv, offs_s, offs_dv, sdv_n, N, DV)


@triton.jit
def _toeplitz_attention_dlags_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, dlags_ptr,
        N, B, SPLITS,
        sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, sg_b, sg_n, sg_h,
        DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, PREC: tl.constexpr,
):
    # dlags[s - t + N - 1] += sum_b (q_t . k_s)(do_t . v_s) over this (query block, key block) tile of head h, for
    # the images b = split, split + SPLITS, ...
    h = tl.program_id(0) // SPLITS
    split = tl.program_id(0) % SPLITS
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_s = tl.program_id(2) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    for b in range(split, B, SPLITS):
        q = _load(q_ptr + b * sq_b + h * sq_h, offs_t, offs_dk, sq_n, N, DK)
        k = _load(k_ptr + b * sk_b + h * sk_h, offs_s, offs_dk, sk_n, N, DK)
        do = _load(do_ptr + b * sg_b + h * sg_h, offs_t, offs_dv, sg_n, N, DV)
        v = _load(v_ptr + b * sv_b + h * sv_h, offs_s, offs_dv, sv_n, N, DV)
        acc += _dot(q, tl.trans(k), PREC) * _dot(do, tl.trans(v), PREC)
    mask = (offs_t < N)[:, None] & (offs_s < N)[None, :]
    tl.atomic_add(dlags_ptr + h * (2 * N - 1) + (offs_s[None, :] - offs_t[:, None] + N - 1), acc, mask=mask)
