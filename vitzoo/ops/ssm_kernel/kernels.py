"""The Triton kernels of the SSM convolution kernels: one program per row (a direction of a head) holds every mode in
one tile. Forward: the modes' ZOH coefficients, then K(l) for the lags in blocks. Backward: the same coefficients, four
sums over the lags per mode (of dK e^(x l) cos(y l), sin(y l), and both times l), then the chain rule back through the
coefficients to the parameters, per mode. All arithmetic in fp32.

Toeplitz lags (H3's two directions of a head in one lag vector, [Kf(L-1) .. Kf(1), Kf(0) + Kb(0) (+ skip),
Kb(1) .. Kb(L-1)]): a forward program per head and block of lags computes both directions there and writes each lag
in its place; the backward (LAGS) reads each row's gradient from that vector, reversed for the forward direction, so
neither the concatenation nor the flip is a tensor of its own."""
import triton
import triton.language as tl


@triton.jit
def _expm1(x):
    # exp(x) - 1 without the cancellation near 0 (Kahan's form for |x| < 1)
    u = tl.exp(x)
    exact = u == 1.0
    small = tl.where(exact, x, (u - 1.0) * x / tl.log(tl.where(exact, 2.0, u)))
    return tl.where(tl.abs(x) < 1.0, small, u - 1.0)


@triton.jit
def _modes(log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, row, M, BLOCK_M: tl.constexpr):
    offs = tl.arange(0, BLOCK_M)
    ok = offs < M
    idx = row * M + offs
    dt = tl.exp(tl.load(log_dt_ptr + row).to(tl.float32))
    a_re = -tl.exp(tl.load(lar_ptr + idx, mask=ok, other=0.0).to(tl.float32))
    a_im = tl.load(aim_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    # padded modes get B = C = 0, so their coefficients are 0
    b_re = tl.load(b_ptr + 2 * idx, mask=ok, other=0.0).to(tl.float32)
    b_im = tl.load(b_ptr + 2 * idx + 1, mask=ok, other=0.0).to(tl.float32)
    c_re = tl.load(c_ptr + 2 * idx, mask=ok, other=0.0).to(tl.float32)
    c_im = tl.load(c_ptr + 2 * idx + 1, mask=ok, other=0.0).to(tl.float32)
    x = dt * a_re
    y = dt * a_im
    ex = tl.exp(x)
    cos_y = tl.cos(y)
    sin_y = tl.sin(y)
    half = tl.sin(0.5 * y)
    e_re = _expm1(x) * cos_y - 2.0 * half * half
    e_im = ex * sin_y
    cb_re = c_re * b_re - c_im * b_im
    cb_im = c_re * b_im + c_im * b_re
    n_re = cb_re * e_re - cb_im * e_im
    n_im = cb_re * e_im + cb_im * e_re
    a_sq = a_re * a_re + a_im * a_im
    w_re = a_re / a_sq  # w = 1 / A
    w_im = -a_im / a_sq
    coeff_re = n_re * w_re - n_im * w_im
    coeff_im = n_re * w_im + n_im * w_re
    return (ok, idx, dt, a_re, a_im, b_re, b_im, c_re, c_im, x, y, ex, cos_y, sin_y, e_re, e_im, cb_re, cb_im, n_re,
            n_im, w_re, w_im, coeff_re, coeff_im)


@triton.jit
def _kernel_values(x, y, coeff_re, coeff_im, lags):
    # K(l) = 2 sum_n e^(x l) (coeff_re cos(y l) - coeff_im sin(y l)) for a block of lags
    pos = lags.to(tl.float32)[:, None]
    decay = tl.exp(x[None, :] * pos)
    angle = y[None, :] * pos
    terms = decay * (coeff_re[None, :] * tl.cos(angle) - coeff_im[None, :] * tl.sin(angle))
    return 2.0 * tl.sum(terms, 1)


@triton.jit
def _ssm_kernels_fwd_kernel(
        log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, out_ptr, M, L,
        BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    (_, _, _, _, _, _, _, _, _, x, y, _, _, _, _, _, _, _, _, _, _, _, coeff_re,
     coeff_im) = _modes(log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, row, M, BLOCK_M)
    for l0 in range(0, L, BLOCK_L):
        lags = l0 + tl.arange(0, BLOCK_L)
        tl.store(out_ptr + row * L + lags, _kernel_values(x, y, coeff_re, coeff_im, lags), mask=lags < L)


@triton.jit
def _ssm_lags_fwd_kernel(
        log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, skip_ptr, out_ptr, M, L, HEADS,
        HAS_SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # one program per (head, block of lags): rows h (forward direction) and HEADS + h (flipped direction) of the
    # parameters, each at this block's lags; the first block also writes lag zero
    head = tl.program_id(0)
    lags = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    out = out_ptr + head * (2 * L - 1) + (L - 1)  # lag zero's place
    lag_zero = tl.sum(tl.zeros((BLOCK_L,), tl.float32), 0)
    for direction in tl.static_range(2):
        (_, _, _, _, _, _, _, _, _, x, y, _, _, _, _, _, _, _, _, _, _, _, coeff_re,
         coeff_im) = _modes(log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, direction * HEADS + head, M, BLOCK_M)
        values = _kernel_values(x, y, coeff_re, coeff_im, lags)
        # the forward direction's lag l sits l places before lag zero, the flipped direction's l places after
        tl.store(out + (2 * direction - 1) * lags, values, mask=(lags > 0) & (lags < L))
        lag_zero += tl.sum(tl.where(lags == 0, values, 0.0), 0)
    if tl.program_id(1) == 0:
        if HAS_SKIP:
            lag_zero += tl.load(skip_ptr + head).to(tl.float32)
        tl.store(out, lag_zero)


@triton.jit
def _ssm_kernels_bwd_kernel(
        log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, grad_ptr, d_log_dt_ptr, d_lar_ptr, d_aim_ptr, d_b_ptr, d_c_ptr,
        M, L, HEADS, LAGS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    if LAGS:  # row r's gradient of lag l in the Toeplitz lag vector of head r % HEADS (see the module docstring)
        grad_base = grad_ptr + (row % HEADS) * (2 * L - 1) + (L - 1)
        grad_step = tl.where(row < HEADS, -1, 1)
    else:
        grad_base = grad_ptr + row * L
        grad_step = 1
    (ok, idx, dt, a_re, a_im, b_re, b_im, c_re, c_im, x, y, ex, cos_y, sin_y, e_re, e_im, cb_re, cb_im, n_re, n_im,
     w_re, w_im, coeff_re, coeff_im) = _modes(log_dt_ptr, lar_ptr, aim_ptr, b_ptr, c_ptr, row, M, BLOCK_M)
    sum_cos = tl.zeros((BLOCK_M,), tl.float32)
    sum_sin = tl.zeros((BLOCK_M,), tl.float32)
    lag_cos = tl.zeros((BLOCK_M,), tl.float32)
    lag_sin = tl.zeros((BLOCK_M,), tl.float32)
    for l0 in range(0, L, BLOCK_L):
        lags = l0 + tl.arange(0, BLOCK_L)
        grad = tl.load(grad_base + grad_step * lags, mask=lags < L, other=0.0).to(tl.float32)
        pos = lags.to(tl.float32)[:, None]
        weighted = grad[:, None] * tl.exp(x[None, :] * pos)
        angle = y[None, :] * pos
        cos_l = weighted * tl.cos(angle)
        sin_l = weighted * tl.sin(angle)
        sum_cos += tl.sum(cos_l, 0)
        sum_sin += tl.sum(sin_l, 0)
        lag_cos += tl.sum(cos_l * pos, 0)
        lag_sin += tl.sum(sin_l * pos, 0)
    # K(l) = 2 sum_n e^(x l) (coeff_re cos(y l) - coeff_im sin(y l))
    d_coeff_re = 2.0 * sum_cos
    d_coeff_im = -2.0 * sum_sin
    d_x = 2.0 * (coeff_re * lag_cos - coeff_im * lag_sin)
    d_y = -2.0 * (coeff_re * lag_sin + coeff_im * lag_cos)
    # complex chain rule on (re, im) pairs: for f = u v, d u = d f conj(v)
    d_n_re = d_coeff_re * w_re + d_coeff_im * w_im  # coeff = n w
    d_n_im = d_coeff_im * w_re - d_coeff_re * w_im
    d_w_re = d_coeff_re * n_re + d_coeff_im * n_im
    d_w_im = d_coeff_im * n_re - d_coeff_re * n_im
    w2_re = w_re * w_re - w_im * w_im  # w = 1 / A: dA = -dw conj(w^2)
    w2_im = 2.0 * w_re * w_im
    d_a_re = -(d_w_re * w2_re + d_w_im * w2_im)
    d_a_im = -(d_w_im * w2_re - d_w_re * w2_im)
    d_cb_re = d_n_re * e_re + d_n_im * e_im  # n = cb e
    d_cb_im = d_n_im * e_re - d_n_re * e_im
    d_e_re = d_n_re * cb_re + d_n_im * cb_im
    d_e_im = d_n_im * cb_re - d_n_re * cb_im
    d_c_re = d_cb_re * b_re + d_cb_im * b_im  # cb = c b
    d_c_im = d_cb_im * b_re - d_cb_re * b_im
    d_b_re = d_cb_re * c_re + d_cb_im * c_im
    d_b_im = d_cb_im * c_re - d_cb_re * c_im
    # e = exp(x + i y) - 1
    d_x += d_e_re * ex * cos_y + d_e_im * ex * sin_y
    d_y += d_e_im * ex * cos_y - d_e_re * ex * sin_y
    # x + i y = dt A, A = -exp(log_a_real) + i a_imag, dt = exp(log_dt)
    d_a_re += d_x * dt
    d_a_im += d_y * dt
    d_dt = tl.sum(tl.where(ok, d_x * a_re + d_y * a_im, 0.0), 0)
    tl.store(d_log_dt_ptr + row, d_dt * dt)
    tl.store(d_lar_ptr + idx, d_a_re * a_re, mask=ok)
    tl.store(d_aim_ptr + idx, d_a_im, mask=ok)
    tl.store(d_b_ptr + 2 * idx, d_b_re, mask=ok)
    tl.store(d_b_ptr + 2 * idx + 1, d_b_im, mask=ok)
    tl.store(d_c_ptr + 2 * idx, d_c_re, mask=ok)
    tl.store(d_c_ptr + 2 * idx + 1, d_c_im, mask=ok)
