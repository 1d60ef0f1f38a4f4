"""The Triton kernels of linear attention: one forward and one backward kernel whose constexpr switches cover the
whole family (see :mod:`.reference` for the maths and :mod:`.function` for how they are launched).

Pass 1 (keys) accumulates, per weighting w, the raw fp32 sums S_w = sum_i a_iw phi_i v_i^T, z_w = sum_i a_iw phi_i,
u_w = sum_i a_iw v_i, s_w = sum_i a_iw, plus the unweighted key sum; centring, the scale and the constant feature are
folded in afterwards (F_w = scale (S_w - kbar u_w^T), y_w = scale (z_w - kbar s_w), constant terms c^2 u_w, c^2 s_w),
so K and V are read once and queries and keys enter unscaled. Every sum over tokens is a tensor-core product (with a
one-hot column for the vector sums), and tiles stay in the input dtype until then. Pass 2 (queries) reads F_w, y_w.
When there are enough (batch, head) pairs to fill the GPU one program does both passes and the states never leave
the chip; otherwise pass 1 is split over N with fp32 atomics into a zeroed state buffer and pass 2 runs as a second
launch (DO_STATE / DO_OUTPUT). The backward mirrors this: the query pass takes g F_w^T and g . num_w = phi . (g F_w^T)
(the numerator is not recomputed), writes dq (and dquery_weights) and accumulates dF_w, dy_w, dr_w, dzc_w; the key
pass writes dk, dv (and dkey_weights); the centring's mean term and the constant's gradient come from the states.

PREC selects the products: 'ieee' / 'tf32' multiply fp32 operands, 'bf16' multiplies bf16 operands (the fp32 states
rounded to bf16 once); every accumulator is fp32.
"""
import triton
import triton.language as tl


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
def _feature_fwd(x, eps, col_ok, FEATURE: tl.constexpr):
    # identity and ReLU stay in the input dtype (exact); the normalising maps work in fp32
    if FEATURE == 1:
        y = tl.maximum(x, 0.0)
    elif FEATURE == 4:
        # ReLU + eps rounded once to the input dtype, as the PyTorch expression rounds it; the padded columns stay 0
        y = tl.where(col_ok[None, :], tl.maximum(x.to(tl.float32), 0.0) + eps, 0.0).to(x.dtype)
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
    elif FEATURE == 4:  # phi > 0 everywhere: the mask comes from x
        dx = tl.where(x > 0, g, 0.0)
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
    if PREC == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc=acc)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc, input_precision=PREC)
    return out


@triton.jit
def _state_operand(x, PREC: tl.constexpr):
    # an fp32 state (or state gradient) as a product operand: rounded to bf16 once for bf16 products (about the
    # bf16 output's own rounding), used whole at the other precisions
    if PREC == "bf16":
        out = x.to(tl.bfloat16)
    else:
        out = x
    return out


@triton.jit
def _dot_state(a, s, PREC: tl.constexpr):
    # a @ s: a data-like operand times a state operand from _state_operand
    if PREC == "bf16":
        out = tl.dot(a.to(tl.bfloat16), s, out_dtype=tl.float32)
    else:
        out = tl.dot(a.to(tl.float32), s, input_precision=PREC)
    return out


@triton.jit
def _columns(x, PREC: tl.constexpr):
    # (len, 16) operand holding x in its first columns (hi, lo halves in bf16): a product with it sums over the
    # rows of the other operand on the tensor cores, and tl.sum(result, 1) recovers the vector exactly
    cols = tl.arange(0, 16)[None, :]
    if PREC == "bf16":
        high = x.to(tl.bfloat16).to(tl.float32)
        out = tl.where(cols == 0, high[:, None], tl.where(cols == 1, (x - high)[:, None], 0.0))
    else:
        out = tl.where(cols == 0, x[:, None], 0.0)
    return out


@triton.jit
def _rows(x, PREC: tl.constexpr):
    # (16, len): the transpose of _columns
    rows = tl.arange(0, 16)[:, None]
    if PREC == "bf16":
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
    # F^T rounded from the transposed fp32 F (the backward's dnum F^T): transposing the bf16 operand instead gave a
    # wrong dk and a failed launch with Triton 3.6 on the H200
    return _state_operand(f, PREC), _state_operand(tl.trans(f), PREC), _columns(y, PREC), y, c2 * u, c2 * total


@triton.jit
def _denominator(den, eps, CLAMP: tl.constexpr):
    # the normaliser: den + eps, or max(den, eps) (FEM's released linear prior)
    if CLAMP:
        return tl.maximum(den, eps)
    return den + eps


@triton.jit
def _read_den(phi, y_cols, zc, NORMALIZE: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    # one weighting's denominator phi . y (+ c^2 s) for a query tile (zero without the normaliser)
    if NORMALIZE:
        den = tl.sum(_dot_data(phi, y_cols, tl.zeros((BLOCK_N, 16), tl.float32), PREC), 1) + zc
    else:
        den = tl.zeros((BLOCK_N,), tl.float32)
    return den


@triton.jit
def _read(phi, f, y_cols, r, zc, NORMALIZE: tl.constexpr, HAS_CONST: tl.constexpr,
          PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    # one weighting's numerator phi F (+ c^2 u) and denominator phi . y (+ c^2 s) for a query tile
    num = _dot_state(phi, f, PREC)
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
        CLAMP: tl.constexpr,
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
            phi = _feature_fwd(_load_tile(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK, UNIT_D), eps, offs_k < DK,
                               FEATURE)
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
        f0, _, yc0, _, r0, zc0 = _finalize(s0, z0, u0, t0, kbar, c * c, scale, PREC)
        if W >= 2:
            f1, _, yc1, _, r1, zc1 = _finalize(s1, z1, u1, t1, kbar, c * c, scale, PREC)
        if W >= 3:
            f2, _, yc2, _, r2, zc2 = _finalize(s2, z2, u2, t2, kbar, c * c, scale, PREC)
        for start in range(n_begin, n_end, BLOCK_N):
            offs_n = start + rows
            phi = _feature_fwd(_load_tile(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK, UNIT_D), eps, offs_k < DK,
                               FEATURE)
            num, den = _read(phi, f0, yc0, r0, zc0, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
            if HAS_WEIGHTS:
                bw = _load_weight(b_base, offs_n, sb_n, n_end)
                num = num * bw[:, None]
                den = den * bw
            if W >= 2:
                bw = _load_weight(b_base + sb_w, offs_n, sb_n, n_end)
                num_w, den_w = _read(phi, f1, yc1, r1, zc1, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                num += num_w * bw[:, None]
                den += den_w * bw
            if W >= 3:
                bw = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end)
                num_w, den_w = _read(phi, f2, yc2, r2, zc2, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
                num += num_w * bw[:, None]
                den += den_w * bw
            if NORMALIZE:
                num = num * (1.0 / _denominator(den, eps, CLAMP))[:, None]
            _store_rows(o_base, num, offs_n, offs_v, so_n, so_d, n_end, DV, UNIT_D)


@triton.jit
def _query_reads(phi, g, ft, y_cols, r, zc, NORMALIZE: tl.constexpr, HAS_CONST: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    # what the backward needs of one weighting's read of a query tile, without recomputing the numerator:
    # g F^T (the product d phi needs anyway), g . num = phi . (g F^T) (+ g . c^2 u) and the normaliser read
    gf = _dot_state(g, ft, PREC)
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
def _key_grads(phi, v, aw, g_op, gt_op, dv_shift, gy, const_term, kbar_gy, HAS_WEIGHTS: tl.constexpr,
               PREC: tl.constexpr):
    # one weighting's dv and d phi(k) for a key tile, with G = scale dF and gy = scale dy: the centred feature
    # phi - kbar enters as phi G - kbar^T G, the shift folded into dv_shift (which also holds c^2 dr)
    dv_unit = _dot_state(phi, g_op, PREC) + dv_shift[None, :]
    dphi = _dot_state(v, gt_op, PREC) + gy[None, :]
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
    g_op = _state_operand(g, PREC)
    gt_op = _state_operand(tl.trans(g), PREC)  # as F^T in _finalize
    dv_shift = c2 * dr - tl.sum(kbar[:, None] * g, 0)
    # the centring's mean term: (1/N) sum_j dphi_j = G u + gy s (divided by N by the caller)
    mean_part = tl.sum(g * u[None, :], 1) + gy * total
    return g_op, gt_op, gy, dv_shift, c2 * dzc, tl.sum(kbar * gy, 0), mean_part


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
        CLAMP: tl.constexpr,
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
        _, ft0, yc0, y0, r0, zc0 = _finalize(s0, z0, u0, t0, kbar, c2, scale, PREC)
        ds0, dya0, dra0, dzc0 = _zero_sums(DKP, DVP)
        if W >= 2:
            _, ft1, yc1, y1, r1, zc1 = _finalize(s1, z1, u1, t1, kbar, c2, scale, PREC)
            ds1, dya1, dra1, dzc1 = _zero_sums(DKP, DVP)
        if W >= 3:
            _, ft2, yc2, y2, r2, zc2 = _finalize(s2, z2, u2, t2, kbar, c2, scale, PREC)
            ds2, dya2, dra2, dzc2 = _zero_sums(DKP, DVP)
        # With the ReLU, q is loaded one tile ahead by hand: Triton 3.6 pipelines q for the other feature maps
        # but not for this one, so each tile would wait for its own load (H200, N=197: forward+backward 239 us
        # instead of 253; the same prefetch in place of the identity map's pipelined load cost 151 -> 175 us)
        if (FEATURE == 1) or (FEATURE == 4):
            q_next = _load_tile(q_base, n_begin + rows, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
        for start in range(n_begin, n_end, BLOCK_N):
            offs_n = start + rows
            row_mask = (offs_n < n_end).to(tl.float32)
            if (FEATURE == 1) or (FEATURE == 4):
                qt = q_next
                q_next = _load_tile(q_base, offs_n + BLOCK_N, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
            else:
                qt = _load_tile(q_base, offs_n, offs_k, sq_n, sq_d, n_end, DK, UNIT_D)
            phi = _feature_fwd(qt, eps, offs_k < DK, FEATURE)
            g = _load_tile(g_base, offs_n, offs_v, sg_n, sg_d, n_end, DV, UNIT_D)
            gf0, gn0, den0 = _query_reads(phi, g, ft0, yc0, r0, zc0, NORMALIZE, HAS_CONST, PREC, BLOCK_N)
            if HAS_WEIGHTS:
                bw0 = _load_weight(b_base, offs_n, sb_n, n_end)
            else:
                bw0 = row_mask
            den = den0 * bw0
            g_num = gn0 * bw0
            if W >= 2:
                bw1 = _load_weight(b_base + sb_w, offs_n, sb_n, n_end)
                gf1, gn1, den1 = _query_reads(phi, g, ft1, yc1, r1, zc1, NORMALIZE, HAS_CONST, PREC,
                                              BLOCK_N)
                den += den1 * bw1
                g_num += gn1 * bw1
            if W >= 3:
                bw2 = _load_weight(b_base + 2 * sb_w, offs_n, sb_n, n_end)
                gf2, gn2, den2 = _query_reads(phi, g, ft2, yc2, r2, zc2, NORMALIZE, HAS_CONST, PREC,
                                              BLOCK_N)
                den += den2 * bw2
                g_num += gn2 * bw2
            if NORMALIZE:
                inv = 1.0 / _denominator(den, eps, CLAMP)
                dden = -g_num * inv * inv
                if CLAMP:  # max(den, eps) does not move with den below eps (ties pass, as clamp_min's gradient)
                    dden = tl.where(den >= eps, dden, 0.0)
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
        gh0, gth0, gy0, sh0, ct0, kg0, mean_grad = _key_operands(
            ds0, dy0, dr0, dzc0, u0, t0, kbar, c2, scale, PREC)
        if W >= 2:
            gh1, gth1, gy1, sh1, ct1, kg1, mean_part = _key_operands(
                ds1, dy1, dr1, dzc1, u1, t1, kbar, c2, scale, PREC)
            mean_grad += mean_part
        if W >= 3:
            gh2, gth2, gy2, sh2, ct2, kg2, mean_part = _key_operands(
                ds2, dy2, dr2, dzc2, u2, t2, kbar, c2, scale, PREC)
            mean_grad += mean_part
        mean_grad = mean_grad / N
        for start in range(n_begin, n_end, BLOCK_N):
            offs_n = start + rows
            kt = _load_tile(k_base, offs_n, offs_k, sk_n, sk_d, n_end, DK, UNIT_D)
            phi = _feature_fwd(kt, eps, offs_k < DK, FEATURE)
            vt = _load_tile(v_base, offs_n, offs_v, sv_n, sv_d, n_end, DV, UNIT_D)
            if HAS_WEIGHTS:
                aw = _load_weight(a_base, offs_n, sa_n, n_end)
            else:
                aw = (offs_n < n_end).to(tl.float32)
            dv, dphi, daw = _key_grads(phi, vt, aw, gh0, gth0, sh0, gy0, ct0, kg0, HAS_WEIGHTS, PREC)
            if HAS_WEIGHTS:
                _store_weight(da_base, daw, offs_n, sdw_n, n_end)
            if W >= 2:
                aw = _load_weight(a_base + sa_w, offs_n, sa_n, n_end)
                dv_w, dphi_w, daw = _key_grads(phi, vt, aw, gh1, gth1, sh1, gy1, ct1, kg1,
                                               HAS_WEIGHTS, PREC)
                dv += dv_w
                dphi += dphi_w
                _store_weight(da_base + sdw_w, daw, offs_n, sdw_n, n_end)
            if W >= 3:
                aw = _load_weight(a_base + 2 * sa_w, offs_n, sa_n, n_end)
                dv_w, dphi_w, daw = _key_grads(phi, vt, aw, gh2, gth2, sh2, gy2, ct2, kg2,
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
