"""The Triton kernels of the bidirectional delta rule (see :mod:`.reference` for the maths, :mod:`.function` for
the launches).

Both scan directions share the chunk boundaries: chunk c holds tokens c*C .. c*C+C-1. The reversed scan walks the
chunks from last to first and, inside a chunk, the tokens from last to first, so its partial chunk comes first and
is padded at the front with k = 0, beta = 0 tokens, which leave the state unchanged. Inside a chunk every matrix is
kept in token order; for the reversed scan "earlier" means "later in token order", so its triangular masks are the
transposes of the forward scan's. With aligned chunks one program of a chunk-parallel kernel serves both directions
from one load of its tokens and writes every output once (no atomics, no zero-filled accumulators).

Per direction and chunk (S: the state entering the chunk in that direction's order), kernel by kernel:
  _delta_rule_wy_kernel:      A = strict(diag(beta) K K^T), T = (I + A)^-1, W = T diag(beta) K, U = T diag(beta) V
  _delta_rule_states_kernel:  V' = U - W S, S_next = S + K^T V'
  _delta_rule_output_kernel:  O = scale (Q S + causal(Q K^T) V'), averaged over the directions
Inference (nothing saved for a backward) runs the last two as one pass, no states or V' written:
  _delta_rule_scan_output_kernel: per chunk in scan order V' = U - W S, O += scale (Q S + causal(Q K^T) V'),
                                  S_next = S + K^T V'
Backward: the state gradients in reverse scan order, then every input gradient chunk-parallel:
  _delta_rule_dstates_kernel: dV' = scale causal(Q K^T)^T dO + K dS_next, dS = dS_next + scale Q^T dO - W^T dV'
  _delta_rule_grads_kernel:   dQ, dK, dV, dbeta from the saved W, U, S, V', T^T and the state gradients
Only the two state kernels are sequential, with two dependent products per chunk. Like fla, the saved W, U, states
and V' and T^T are held in the input dtype (T^T is an operand of 16-bit products only).
"""
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
def _dot_split(a, b, DOT_MODE: tl.constexpr):
    """a @ b for an fp32 a and a b that is exact in the 16-bit dot dtype. a is split into 16-bit hi + lo halves:
    two 16-bit products, about fp32 accurate (tf32 keeps 10 mantissa bits), with 16-bit operands in shared
    memory. The fp32 dot modes run one product."""
    if DOT_MODE == 1 or DOT_MODE == 2:
        hi = _narrow(a, DOT_MODE)
        return _dot(hi, b, DOT_MODE) + _dot(_narrow(a - hi.to(tl.float32), DOT_MODE), b, DOT_MODE)
    else:
        return _dot(a, b, DOT_MODE)


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
def _scan_masks(BT: tl.constexpr, REV):
    """(strict, causal) over a chunk in token order: [i, j] is set when token j comes before token i in the scan
    (strict) or is token i (causal); REV (0 or 1, compile-time or not) picks the scan direction."""
    ahead = (tl.arange(0, BT)[None, :] - tl.arange(0, BT)[:, None]) * (1 - 2 * REV)
    return ahead < 0, ahead <= 0


@triton.jit
def _unit_lower_inverse(a, BT: tl.constexpr, LOG2_BT: tl.constexpr):
    """(I + a)^-1 for a strictly lower-triangular (BT, BT) fp32 tile.

    Recursive block inversion: X holds the inverses of the diagonal blocks of size 2^l; the blocks of size
    2^(l+1) follow from [[X1, 0], [A21, X2]]^-1 = [[X1, 0], [-X2 A21 X1, X2]], i.e. X <- X - X A_off X with
    A_off the lower-left sub-blocks. Every intermediate is a block of the true inverse, so nothing grows.
    """
    rows = tl.arange(0, BT)[:, None]
    cols = tl.arange(0, BT)[None, :]
    # level 0 needs no product: with X = I it gives I - A_off
    pairs = ((rows >> 1) == (cols >> 1)) & ((rows & 1) == 1) & ((cols & 1) == 0)
    x = tl.where(rows == cols, 1.0, 0.0) - tl.where(pairs, a, 0.0)
    for lvl in tl.static_range(1, LOG2_BT):
        same_block = (rows >> (lvl + 1)) == (cols >> (lvl + 1))
        lower_left = (((rows >> lvl) & 1) == 1) & (((cols >> lvl) & 1) == 0)
        x = x - tl.dot(tl.dot(x, tl.where(same_block & lower_left, a, 0.0)), x)
    return x


@triton.jit
def _chunk_program(N, H, BT: tl.constexpr):
    """(chunk, b*H + h, b, h, chunks) of a chunk-parallel program; grid (chunks, B*H)."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    return c, i_bh, i_bh // H, i_bh % H, tl.cdiv(N, BT)


@triton.jit
def _scan_program(N, H, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DK: tl.constexpr,
                  DV: tl.constexpr, FIRST_DIR: tl.constexpr):
    """(b, h, reversed?, chunks, work-tensor row, key offsets, value offsets, state mask) of a program of the two
    recurrences; grid (value blocks, B*H, directions)."""
    i_v, i_bh, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    return (i_bh // H, i_bh % H, FIRST_DIR + i_d, tl.cdiv(N, BT), _direction_row(i_d, i_bh), offs_k, offs_v,
            _rows_mask(offs_k < DK, offs_v, DV))


@triton.jit
def _direction_row(i_d, i_bh):
    """Row of direction i_d (0 = the first one run) and sequence b*H + h in the per-direction work tensors."""
    return (i_d * tl.num_programs(1) + i_bh).to(tl.int64)


@triton.jit
def _chunk_tokens(c, N, BT: tl.constexpr):
    tok = c * BT + tl.arange(0, BT)
    return tok, tok < N


@triton.jit
def _rows_mask(valid, offs, D: tl.constexpr):
    # head dims are compile-time: a block that tiles the dim exactly needs no column mask, so accesses vectorise
    if tl.constexpr(D) % offs.shape[0] == 0:
        return valid[:, None]
    else:
        return valid[:, None] & (offs[None, :] < D)


@triton.jit
def _load_rows(ptr, sb, sn, sh, i_b, i_h, tok, valid, offs, D: tl.constexpr):
    rows = ptr + i_b * sb + i_h * sh + tok[:, None] * sn + offs[None, :]
    return tl.load(rows, mask=_rows_mask(valid, offs, D), other=0.0).to(tl.float32)


@triton.jit
def _normalize_rows(x, L2NORM: tl.constexpr):
    """(x / sqrt(|x|^2 + eps), 1 / sqrt(|x|^2 + eps)) when L2NORM, else (x, 1)."""
    if L2NORM:
        r = 1.0 / tl.sqrt(tl.sum(x * x, 1) + 1e-6)
        return x * r[:, None], r
    else:
        return x, tl.sum(x * 0.0, 1) + 1.0


@triton.jit
def _load_normalized(ptr, sb, sn, sh, i_b, i_h, tok, valid, offs, D: tl.constexpr, L2NORM: tl.constexpr):
    """q or k rows in fp32, L2-normalised when L2NORM, and their row scales (see _normalize_rows)."""
    return _normalize_rows(_load_rows(ptr, sb, sn, sh, i_b, i_h, tok, valid, offs, D), L2NORM)


@triton.jit
def _load_qk_operands(q_ptr, sqb, sqn, sqh, k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK: tl.constexpr,
                      L2NORM: tl.constexpr, DOT_MODE: tl.constexpr):
    """A chunk's q and k rows (L2-normalised when L2NORM) held as dot operands."""
    q, _ = _load_normalized(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK, L2NORM)
    k, _ = _load_normalized(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK, L2NORM)
    return _narrow(q, DOT_MODE), _narrow(k, DOT_MODE)


@triton.jit
def _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid, BETA_LOGITS: tl.constexpr):
    """The chunk's write strengths in fp32: sigmoid of the stored values with BETA_LOGITS (0 on padded tokens)."""
    beta = tl.load(beta_ptr + i_b * sbb + i_h * sbh + tok * sbn, mask=valid, other=0.0).to(tl.float32)
    if BETA_LOGITS:
        beta = tl.where(valid, tl.sigmoid(beta), 0.0)
    return beta


@triton.jit
def _scratch_offsets(seq, N, tok, offs, D: tl.constexpr):
    """Rows of a per-direction work tensor (directions, B*H, N, D), contiguous; seq = direction * B*H + b*H+h."""
    return (seq * N + tok[:, None]) * D + offs[None, :]


@triton.jit
def _grad_offsets(i_b, i_h, N, H, tok, offs, D: tl.constexpr):
    """Rows of a contiguous (B, N, H, D) gradient."""
    return ((i_b * N + tok[:, None].to(tl.int64)) * H + i_h) * D + offs[None, :]


@triton.jit
def _state_offsets(seq, nt, c, DK: tl.constexpr, DV: tl.constexpr, offs_k, offs_v):
    return (seq * nt + c) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]


@triton.jit
def _t_offsets(seq, nt, c, BT: tl.constexpr):
    """The saved T^T block of a chunk and direction (row-major)."""
    rows = tl.arange(0, BT)[:, None]
    cols = tl.arange(0, BT)[None, :]
    return (seq * nt + c) * BT * BT + rows * BT + cols


@triton.jit
def _fp32(x):
    # fp32 from eager launches, fp64 from Inductor (fp64 would break the loops' carried types)
    return tl.cast(x, tl.float32)


@triton.jit(do_not_specialize=["N"])
def _delta_rule_wy_kernel(
        k_ptr, v_ptr, beta_ptr, w_ptr, u_ptr, t_ptr,
        skb, skn, skh, svb, svn, svh, sbb, sbn, sbh,
        N, H, DK: tl.constexpr, DV: tl.constexpr,
        BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        FIRST_DIR: tl.constexpr, NUM_DIRS: tl.constexpr, L2NORM: tl.constexpr, STORE_T: tl.constexpr,
        DOT_MODE: tl.constexpr, BETA_LOGITS: tl.constexpr,
):
    """W = T diag(beta) K and U = T diag(beta) V of one chunk in every direction, and with STORE_T the T^T the
    backward reads; grid (chunks, B*H).

    One inversion serves both directions. With L = strict_lower(K K^T) and D = diag(beta), the forward scan's
    T = (I + D L)^-1 and the reversed one's (I + D L^T)^-1 = I - D T^T L^T (push-through identity), so
    T_rev^T = I - L T D costs one product. K enters as its raw 16-bit rows times the L2-norm row scale r
    (W = T diag(beta r) K_raw), so every product with K or V has one exact 16-bit operand (see _dot_split); the
    transposes of T_rev^T happen on the fp32 tile before its 16-bit split, never on a tf32 operand (see _dot).
    Every tile is loaded and stored in row layout (transposed addressing made this kernel L1-bound).
    """
    c, i_bh, i_b, i_h, nt = _chunk_program(N, H, BT)
    tok, valid = _chunk_tokens(c, N, BT)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    k_raw = _load_rows(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK)
    k, r = _normalize_rows(k_raw, L2NORM)
    beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid, BETA_LOGITS)
    k_op = _narrow(k, DOT_MODE)
    k_raw_op = _narrow(k_raw, DOT_MODE)  # exact: the 16-bit input itself
    v = _narrow(_load_rows(v_ptr, svb, svn, svh, i_b, i_h, tok, valid, offs_v, DV), DOT_MODE)
    strict_lower = _scan_masks(BT, 0)[0]
    kk_lower = tl.where(strict_lower, _dot(k_op, tl.trans(k_op), DOT_MODE), 0.0)
    t_fwd = _unit_lower_inverse(beta[:, None] * kk_lower, BT, LOG2_BT)
    mask_k = _rows_mask(valid, offs_k, DK)
    mask_v = _rows_mask(valid, offs_v, DV)
    if FIRST_DIR == 0:
        seq = _direction_row(0, i_bh)
        w = _dot_split(t_fwd * (beta * r)[None, :], k_raw_op, DOT_MODE)
        u = _dot_split(t_fwd * beta[None, :], v, DOT_MODE)
        tl.store(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), w.to(w_ptr.dtype.element_ty), mask=mask_k)
        tl.store(u_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), u.to(u_ptr.dtype.element_ty), mask=mask_v)
        if STORE_T:
            tl.store(t_ptr + _t_offsets(seq, nt, c, BT), tl.trans(t_fwd).to(t_ptr.dtype.element_ty))
    if FIRST_DIR + NUM_DIRS == 2:
        seq = _direction_row(1 - FIRST_DIR, i_bh)
        eye = tl.where(tl.arange(0, BT)[:, None] == tl.arange(0, BT)[None, :], 1.0, 0.0)
        t_rev_t = eye - _dot(kk_lower, t_fwd, 0) * beta[None, :]
        w = _dot_split(tl.trans(t_rev_t * (r * beta)[:, None]), k_raw_op, DOT_MODE)
        u = _dot_split(tl.trans(t_rev_t * beta[:, None]), v, DOT_MODE)
        tl.store(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), w.to(w_ptr.dtype.element_ty), mask=mask_k)
        tl.store(u_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), u.to(u_ptr.dtype.element_ty), mask=mask_v)
        if STORE_T:
            tl.store(t_ptr + _t_offsets(seq, nt, c, BT), t_rev_t.to(t_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["N"])
def _delta_rule_states_kernel(
        k_ptr, w_ptr, u_ptr, h_ptr, vn_ptr, skb, skn, skh,
        N, H, DK: tl.constexpr, DV: tl.constexpr,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIRST_DIR: tl.constexpr, L2NORM: tl.constexpr,
        DOT_MODE: tl.constexpr,
):
    """The forward recurrence, in scan order: the state entering every chunk (into h) and V' = U - W S (into
    vn); grid (value blocks, B*H, directions). Value columns evolve independently, hence the value blocks."""
    i_b, i_h, rev, nt, seq, offs_k, offs_v, mask_kv = _scan_program(N, H, BT, BK, BV, DK, DV, FIRST_DIR)
    state = tl.zeros([BK, BV], dtype=tl.float32)
    for j in range(nt):
        c = j + rev * (nt - 1 - 2 * j)
        tok, valid = _chunk_tokens(c, N, BT)
        k, _ = _load_normalized(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK, L2NORM)
        w = tl.load(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), mask=_rows_mask(valid, offs_k, DK),
                    other=0.0)
        u = tl.load(u_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=_rows_mask(valid, offs_v, DV),
                    other=0.0)
        state_op = _narrow(state, DOT_MODE)
        tl.store(h_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v),
                 state_op.to(h_ptr.dtype.element_ty), mask=mask_kv)
        new_v = _narrow(u.to(tl.float32) - _dot(w, state_op, DOT_MODE), DOT_MODE)
        tl.store(vn_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), new_v.to(vn_ptr.dtype.element_ty),
                 mask=_rows_mask(valid, offs_v, DV))
        state += _dot(tl.trans(_narrow(k, DOT_MODE)), new_v, DOT_MODE)


@triton.jit(do_not_specialize=["N"])
def _delta_rule_output_kernel(
        q_ptr, k_ptr, h_ptr, vn_ptr, o_ptr, sqb, sqn, sqh, skb, skn, skh, sob, son, soh,
        N, H, DK: tl.constexpr, DV: tl.constexpr, scale,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        FIRST_DIR: tl.constexpr, NUM_DIRS: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
):
    """O = scale (Q S + causal(Q K^T) V') of one chunk, averaged over the directions; grid (chunks, B*H)."""
    c, i_bh, i_b, i_h, nt = _chunk_program(N, H, BT)
    tok, valid = _chunk_tokens(c, N, BT)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    mask_kv = _rows_mask(offs_k < DK, offs_v, DV)
    q, k = _load_qk_operands(q_ptr, sqb, sqn, sqh, k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK, L2NORM,
                             DOT_MODE)
    qk = _dot(q, tl.trans(k), DOT_MODE)
    o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_d in tl.static_range(NUM_DIRS):
        causal = _scan_masks(BT, FIRST_DIR + i_d)[1]
        seq = _direction_row(i_d, i_bh)
        state = tl.load(h_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v), mask=mask_kv, other=0.0)
        new_v = tl.load(vn_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=_rows_mask(valid, offs_v, DV),
                        other=0.0)
        o += _dot(q, state, DOT_MODE) + _dot(_narrow(tl.where(causal, qk, 0.0), DOT_MODE), new_v, DOT_MODE)
    o = o * (_fp32(scale) / NUM_DIRS)
    rows = o_ptr + i_b * sob + i_h * soh + tok[:, None] * son + offs_v[None, :]
    tl.store(rows, o.to(o_ptr.dtype.element_ty), mask=_rows_mask(valid, offs_v, DV))


@triton.jit(do_not_specialize=["N"])
def _delta_rule_scan_output_kernel(
        q_ptr, k_ptr, w_ptr, u_ptr, o_ptr, sqb, sqn, sqh, skb, skn, skh, sob, son, soh,
        N, H, DK: tl.constexpr, DV: tl.constexpr, scale,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        FIRST_DIR: tl.constexpr, NUM_DIRS: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
):
    """The forward recurrence and the output in one pass, for inference: the states and V' stay in registers
    (the training path writes both and reads them back: at head dim 64 and chunks of 32, 384 values per token and
    head each way, against the 192 of q, k and v); grid (value blocks, B*H).

    A program runs the directions one after the other. The first one's share of O is held in o itself (its dtype)
    until the second adds its own: the same rounding as averaging two 16-bit scans."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    nt = tl.cdiv(N, BT)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    s = _fp32(scale) / NUM_DIRS
    for i_d in tl.static_range(NUM_DIRS):
        rev = FIRST_DIR + i_d
        causal = _scan_masks(BT, rev)[1]
        seq = _direction_row(i_d, i_bh)
        state = tl.zeros([BK, BV], dtype=tl.float32)
        if i_d > 0:
            tl.debug_barrier()  # the first direction's stores to o before any thread reads them back
        for j in range(nt):
            c = j + rev * (nt - 1 - 2 * j)
            tok, valid = _chunk_tokens(c, N, BT)
            mask_v = _rows_mask(valid, offs_v, DV)
            q, k = _load_qk_operands(q_ptr, sqb, sqn, sqh, k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK,
                                     L2NORM, DOT_MODE)
            w = tl.load(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), mask=_rows_mask(valid, offs_k, DK),
                        other=0.0)
            u = tl.load(u_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=mask_v, other=0.0)
            state_op = _narrow(state, DOT_MODE)
            new_v = _narrow(u.to(tl.float32) - _dot(w, state_op, DOT_MODE), DOT_MODE)
            qk = _narrow(tl.where(causal, _dot(q, tl.trans(k), DOT_MODE), 0.0), DOT_MODE)
            o = s * (_dot(q, state_op, DOT_MODE) + _dot(qk, new_v, DOT_MODE))
            rows = o_ptr + i_b * sob + i_h * soh + tok[:, None] * son + offs_v[None, :]
            if i_d > 0:
                o += tl.load(rows, mask=mask_v, other=0.0).to(tl.float32)
            tl.store(rows, o.to(o_ptr.dtype.element_ty), mask=mask_v)
            state += _dot(tl.trans(k), new_v, DOT_MODE)


@triton.jit(do_not_specialize=["N"])
def _delta_rule_dstates_kernel(
        q_ptr, k_ptr, w_ptr, do_ptr, dh_ptr, dvn_ptr, sqb, sqn, sqh, skb, skn, skh, sdb, sdn, sdh,
        N, H, DK: tl.constexpr, DV: tl.constexpr, scale,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        FIRST_DIR: tl.constexpr, NUM_DIRS: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
):
    """The backward recurrence, in reverse scan order: the gradient of the state leaving every chunk (into dh)
    and dV' = s causal(QK^T)^T dO + K dS_next (into dvn), with s = scale / directions; then
    dS = dS_next + s Q^T dO - W^T dV'. Grid (value blocks, B*H, directions)."""
    i_b, i_h, rev, nt, seq, offs_k, offs_v, mask_kv = _scan_program(N, H, BT, BK, BV, DK, DV, FIRST_DIR)
    s = _fp32(scale) / NUM_DIRS
    causal = _scan_masks(BT, rev)[1]
    dstate = tl.zeros([BK, BV], dtype=tl.float32)
    for j in range(nt):
        c = nt - 1 - j + rev * (2 * j + 1 - nt)
        tok, valid = _chunk_tokens(c, N, BT)
        q, k = _load_qk_operands(q_ptr, sqb, sqn, sqh, k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK,
                                 L2NORM, DOT_MODE)
        w = tl.load(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), mask=_rows_mask(valid, offs_k, DK),
                    other=0.0)
        do = _narrow(_load_rows(do_ptr, sdb, sdn, sdh, i_b, i_h, tok, valid, offs_v, DV), DOT_MODE)
        dstate_op = _narrow(dstate, DOT_MODE)
        tl.store(dh_ptr + _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v),
                 dstate_op.to(dh_ptr.dtype.element_ty), mask=mask_kv)
        qk = _narrow(tl.where(causal, _dot(q, tl.trans(k), DOT_MODE), 0.0), DOT_MODE)
        d_new_v = _narrow(s * _dot(tl.trans(qk), do, DOT_MODE) + _dot(k, dstate_op, DOT_MODE), DOT_MODE)
        tl.store(dvn_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), d_new_v.to(dvn_ptr.dtype.element_ty),
                 mask=_rows_mask(valid, offs_v, DV))
        dstate += s * _dot(tl.trans(q), do, DOT_MODE) - _dot(tl.trans(w), d_new_v, DOT_MODE)


@triton.jit(do_not_specialize=["N"])
def _delta_rule_grads_kernel(
        q_ptr, k_ptr, v_ptr, beta_ptr, do_ptr, w_ptr, u_ptr, h_ptr, vn_ptr, dh_ptr, dvn_ptr, t_ptr,
        dq_ptr, dk_ptr, dv_ptr, dbeta_ptr,
        sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sbb, sbn, sbh, sdb, sdn, sdh,
        N, H, DK: tl.constexpr, DV: tl.constexpr, scale,
        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        FIRST_DIR: tl.constexpr, NUM_DIRS: tl.constexpr, L2NORM: tl.constexpr, DOT_MODE: tl.constexpr,
        BETA_LOGITS: tl.constexpr,
):
    """dq, dk, dv, dbeta of one chunk, summed over the directions; grid (chunks, B*H). Per direction, with
    s = scale / directions, S and dS_next (h, dh), V' and dV' (vn, dvn), W and U (w, u) saved by the forward:
        P = s causal(dO V'^T)     dQ = s dO S^T + P K     dK = P^T Q + V' dS_next^T      (output, state write)
        dW = -dV' S^T, dU = dV'   d(beta K) = T^T dW,  d(beta V) = T^T dU                   (V' = U - W S)
        dA = -strict(T^T (dW (beta K)^T + dU (beta V)^T) T^T) = -strict(d(beta K) W^T + d(beta V) U^T)
        then dbeta and dK through A = strict(diag(beta) K K^T): dK += (G + G^T) K with G = diag(beta) dA.
    P and G enter products with Q and K only, which both directions share, so they are summed over the directions
    first (three products per chunk instead of four per direction). The L2-norm backward (linear in the incoming
    gradient) runs once on the summed dq, dk. With BETA_LOGITS the stored values are logits and dbeta is theirs.
    """
    c, i_bh, i_b, i_h, nt = _chunk_program(N, H, BT)
    s = _fp32(scale) / NUM_DIRS
    tok, valid = _chunk_tokens(c, N, BT)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    mask_k = _rows_mask(valid, offs_k, DK)
    mask_v = _rows_mask(valid, offs_v, DV)
    mask_kv = _rows_mask(offs_k < DK, offs_v, DV)
    k, rk = _load_normalized(k_ptr, skb, skn, skh, i_b, i_h, tok, valid, offs_k, DK, L2NORM)
    beta = _load_beta(beta_ptr, sbb, sbn, sbh, i_b, i_h, tok, valid, BETA_LOGITS)
    do = _narrow(_load_rows(do_ptr, sdb, sdn, sdh, i_b, i_h, tok, valid, offs_v, DV), DOT_MODE)
    k_op = _narrow(k, DOT_MODE)
    kk = _dot(k_op, tl.trans(k_op), DOT_MODE)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    d_beta_v_sum = tl.zeros([BT, BV], dtype=tl.float32)  # d(diag(beta) V) over the directions
    p_sum = tl.zeros([BT, BT], dtype=tl.float32)
    g_sum = tl.zeros([BT, BT], dtype=tl.float32)
    dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_d in tl.static_range(NUM_DIRS):
        strict, causal = _scan_masks(BT, FIRST_DIR + i_d)
        seq = _direction_row(i_d, i_bh)
        s_offs = _state_offsets(seq, nt, c, DK, DV, offs_k, offs_v)
        # ordered so that large tiles die early: S after its two products, d(beta K) before d(beta V)
        state = tl.load(h_ptr + s_offs, mask=mask_kv, other=0.0)
        d_new_v = tl.load(dvn_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=mask_v, other=0.0)
        dq += _dot(do, tl.trans(state), DOT_MODE)
        d_w = -_dot(d_new_v, tl.trans(state), DOT_MODE)
        t_inv_t = tl.load(t_ptr + _t_offsets(seq, nt, c, BT))
        d_beta_k = _dot(t_inv_t, _narrow(d_w, DOT_MODE), DOT_MODE)
        w = tl.load(w_ptr + _scratch_offsets(seq, N, tok, offs_k, DK), mask=mask_k, other=0.0)
        d_a = _dot(_narrow(d_beta_k, DOT_MODE), tl.trans(w), DOT_MODE)
        dk += beta[:, None] * d_beta_k
        dbeta += tl.sum(d_beta_k * k, 1)
        d_beta_v = _dot(t_inv_t, d_new_v, DOT_MODE)
        u = tl.load(u_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=mask_v, other=0.0)
        d_a = -tl.where(strict, d_a + _dot(_narrow(d_beta_v, DOT_MODE), tl.trans(u), DOT_MODE), 0.0)
        d_beta_v_sum += d_beta_v
        dbeta += tl.sum(d_a * kk, 1)
        g_sum += beta[:, None] * d_a
        new_v = tl.load(vn_ptr + _scratch_offsets(seq, N, tok, offs_v, DV), mask=mask_v, other=0.0)
        p_sum += tl.where(causal, _dot(do, tl.trans(new_v), DOT_MODE), 0.0)
        dstate = tl.load(dh_ptr + s_offs, mask=mask_kv, other=0.0)
        dk += _dot(new_v, tl.trans(dstate), DOT_MODE)
    q, rq = _load_normalized(q_ptr, sqb, sqn, sqh, i_b, i_h, tok, valid, offs_k, DK, L2NORM)
    p = _narrow(p_sum * s, DOT_MODE)
    dq = s * dq + _dot(p, k_op, DOT_MODE)
    dk += _dot(tl.trans(p), _narrow(q, DOT_MODE), DOT_MODE)
    dk += _dot(_narrow(g_sum + tl.trans(g_sum), DOT_MODE), k_op, DOT_MODE)
    v = _load_rows(v_ptr, svb, svn, svh, i_b, i_h, tok, valid, offs_v, DV)
    dbeta += tl.sum(d_beta_v_sum * v, 1)
    dv = beta[:, None] * d_beta_v_sum
    if BETA_LOGITS:  # beta = sigmoid(x): dx = dbeta beta (1 - beta)
        dbeta = dbeta * beta * (1.0 - beta)
    if L2NORM:  # y = x r with r = (|x|^2 + eps)^-1/2: dx = r (dy - y (y . dy))
        dq = rq[:, None] * (dq - q * tl.sum(dq * q, 1)[:, None])
        dk = rk[:, None] * (dk - k * tl.sum(dk * k, 1)[:, None])
    tl.store(dq_ptr + _grad_offsets(i_b, i_h, N, H, tok, offs_k, DK), dq.to(dq_ptr.dtype.element_ty), mask=mask_k)
    tl.store(dk_ptr + _grad_offsets(i_b, i_h, N, H, tok, offs_k, DK), dk.to(dk_ptr.dtype.element_ty), mask=mask_k)
    tl.store(dv_ptr + _grad_offsets(i_b, i_h, N, H, tok, offs_v, DV), dv.to(dv_ptr.dtype.element_ty), mask=mask_v)
    rows = (i_b * N + tok.to(tl.int64)) * H + i_h
    tl.store(dbeta_ptr + rows, dbeta.to(dbeta_ptr.dtype.element_ty), mask=valid)
