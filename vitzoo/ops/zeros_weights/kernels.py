"""The Triton kernels of ZeroS's weightings: one program per (batch, head) walks the tokens in blocks.

Forward: the token sum of u, the logits with their running max and sum of exponentials (stored for the backward), then
the key and query weights; where the (batch, head) programs would leave the GPU idle (high resolutions, small
batches), the same three steps run as three launches over chunks of tokens, each chunk's sums and statistics
combined by the next launch. Backward: the gate gradients and the two token sums the logits' gradient needs, then the
logits' gradient and sum_i ds_i u_i, then du; the prior's gradients (mu, log tau) per (batch, head), summed on the
host. All arithmetic in fp32.
"""
import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _program(H, D, BLOCK_D: tl.constexpr):
    # this program's (batch, head) and the head-dim lanes
    pid = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    return pid, pid // H, pid % H, offs_d, offs_d < D


@triton.jit
def _u_tile(u_base, offs_n, offs_d, su_n, n_ok, d_ok):
    return tl.load(u_base + offs_n[:, None] * su_n + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _prior(mu_ptr, log_tau_ptr, head, offs_d, d_ok, D, log_tau_min, log_tau_max):
    log_tau = tl.load(log_tau_ptr + head).to(tl.float32)
    tau = tl.exp(tl.minimum(tl.maximum(log_tau, log_tau_min), log_tau_max))
    mu = tl.load(mu_ptr + head * D + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    return log_tau, tau, mu


@triton.jit
def _u_sum(u_base, lo, hi, offs_d, su_n, d_ok, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # sum of u over tokens [lo, hi)
    usum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        usum += tl.sum(_u_tile(u_base, offs_n, offs_d, su_n, offs_n < hi, d_ok), axis=0)
    return usum


@triton.jit
def _logits(u_base, s_base, ubar, lo, hi, offs_d, su_n, d_ok, scale, BLOCK_N: tl.constexpr):
    # the logits of tokens [lo, hi), stored, with their max, the sum of their exponentials relative to it (rescaled
    # online, as in a softmax) and their sum
    m = -float("inf")
    esum = 0.0
    ssum = 0.0
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        s = -tl.sum(_u_tile(u_base, offs_n, offs_d, su_n, n_ok, d_ok) * ubar[None, :], axis=1) * scale
        tl.store(s_base + offs_n, s, mask=n_ok)
        s = tl.where(n_ok, s, -float("inf"))
        new_m = tl.maximum(m, tl.max(s, axis=0))
        esum = esum * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m), axis=0)
        m = new_m
        ssum += tl.sum(tl.where(n_ok, s, 0.0), axis=0)
    return m, esum, ssum


@triton.jit
def _write_weights(g_ptr, kw_ptr, qw_ptr, s_base, b, head, lo, hi, N, H, sg_b, sg_n, sg_g, sg_h, m, esum, mean,
                   ZERO_ORDER: tl.constexpr, BLOCK_N: tl.constexpr):
    # the key and query weights of tokens [lo, hi)
    g_base = g_ptr + b * sg_b + head * sg_h
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        s = tl.load(s_base + offs_n, mask=n_ok, other=0.0)
        w_base = ((b * N + offs_n) * H + head) * 3
        tl.store(kw_ptr + w_base, tl.exp(s - m), mask=n_ok)
        tl.store(kw_ptr + w_base + 1, s - mean, mask=n_ok)
        tl.store(kw_ptr + w_base + 2, tl.full((BLOCK_N,), 1.0, tl.float32), mask=n_ok)
        sigma1 = _sigmoid(tl.load(g_base + offs_n * sg_n, mask=n_ok, other=0.0).to(tl.float32))
        sigmah = _sigmoid(tl.load(g_base + offs_n * sg_n + sg_g, mask=n_ok, other=0.0).to(tl.float32))
        gamma = -sigmah / N
        if ZERO_ORDER:  # + tanh(g0) / N, tanh as 2 sigmoid(2x) - 1
            g0 = tl.load(g_base + offs_n * sg_n + 2 * sg_g, mask=n_ok, other=0.0).to(tl.float32)
            gamma += (2.0 * _sigmoid(2.0 * g0) - 1.0) / N
        tl.store(qw_ptr + w_base, sigmah / esum, mask=n_ok)
        tl.store(qw_ptr + w_base + 1, (sigma1 - sigmah) / N, mask=n_ok)
        tl.store(qw_ptr + w_base + 2, gamma, mask=n_ok)


@triton.jit
def _zeros_weights_fwd_kernel(
        u_ptr, g_ptr, mu_ptr, log_tau_ptr, kw_ptr, qw_ptr, s_ptr, stats_ptr, ubar_ptr, part_ptr,
        N, H, D, su_b, su_n, su_h, sg_b, sg_n, sg_g, sg_h, scale, log_tau_min, log_tau_max, CHUNK, SPLITS,
        STAGE: tl.constexpr, ZERO_ORDER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # STAGE 0: one program per (batch, head) walks all tokens three times. Split over SPLITS chunks of CHUNK tokens
    # (program (batch, head), chunk), three launches: 1 the chunk's sum of u, 2 ubar from every chunk's sum, the
    # chunk's logits and their statistics, 3 the statistics of every chunk combined, the chunk's weights. A chunk's
    # partials are a row of part: [sum of u (D) | max logit | sum of exponentials | sum of logits].
    pid, b, head, offs_d, d_ok = _program(H, D, BLOCK_D)
    u_base = u_ptr + b * su_b + head * su_h
    s_base = s_ptr + pid * N
    lo = tl.program_id(1) * CHUNK  # STAGE 0 is launched with one chunk of CHUNK = N tokens
    hi = tl.minimum(lo + CHUNK, N)
    row = part_ptr + (pid * SPLITS + tl.program_id(1)) * (D + 3)
    rows = part_ptr + (pid * SPLITS + tl.arange(0, BLOCK_N)) * (D + 3)  # every chunk's row (SPLITS <= BLOCK_N)
    rows_ok = tl.arange(0, BLOCK_N) < SPLITS
    if STAGE == 1:
        tl.store(row + offs_d, _u_sum(u_base, lo, hi, offs_d, su_n, d_ok, BLOCK_N, BLOCK_D), mask=d_ok)
    else:
        if STAGE == 0:
            usum = _u_sum(u_base, lo, hi, offs_d, su_n, d_ok, BLOCK_N, BLOCK_D)
        if STAGE == 2:
            usum = tl.sum(tl.load(rows[:, None] + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0),
                          axis=0)
        if STAGE != 3:
            log_tau, tau, mu = _prior(mu_ptr, log_tau_ptr, head, offs_d, d_ok, D, log_tau_min, log_tau_max)
            ubar = (tau * mu + usum) / (tau + N)
            if tl.program_id(1) == 0:
                tl.store(ubar_ptr + pid * D + offs_d, ubar, mask=d_ok)
            m, esum, ssum = _logits(u_base, s_base, ubar, lo, hi, offs_d, su_n, d_ok, scale, BLOCK_N)
        if STAGE == 2:
            tl.store(row + D, m)
            tl.store(row + D + 1, esum)
            tl.store(row + D + 2, ssum)
        else:
            if STAGE == 3:  # every chunk's statistics, combined
                m_part = tl.load(rows + D, mask=rows_ok, other=-float("inf"))
                m = tl.max(m_part, axis=0)
                esum = tl.sum(tl.where(rows_ok, tl.load(rows + D + 1, mask=rows_ok, other=0.0) * tl.exp(m_part - m),
                                       0.0), axis=0)
                ssum = tl.sum(tl.load(rows + D + 2, mask=rows_ok, other=0.0), axis=0)
            if tl.program_id(1) == 0:
                tl.store(stats_ptr + pid * 2, m)
                tl.store(stats_ptr + pid * 2 + 1, esum)
            _write_weights(g_ptr, kw_ptr, qw_ptr, s_base, b, head, lo, hi, N, H, sg_b, sg_n, sg_g, sg_h, m, esum,
                           ssum / N, ZERO_ORDER, BLOCK_N)


@triton.jit
def _logit_grad(s_ptr, dkw_ptr, w_base, pid, N, offs_n, n_ok, m, d_esum, mean_ddelta):
    # ds_i = (dk_e,i + dE) e_i + dk_delta,i - mean(dk_delta): e_i = exp(s_i - m) feeds the first key weight and E
    s = tl.load(s_ptr + pid * N + offs_n, mask=n_ok, other=0.0)
    d_e = tl.load(dkw_ptr + w_base, mask=n_ok, other=0.0)
    d_delta = tl.load(dkw_ptr + w_base + 1, mask=n_ok, other=0.0)
    return tl.where(n_ok, (d_e + d_esum) * tl.exp(s - m) + d_delta - mean_ddelta, 0.0)


@triton.jit
def _zeros_weights_bwd_kernel(
        u_ptr, g_ptr, mu_ptr, log_tau_ptr, s_ptr, stats_ptr, ubar_ptr, dkw_ptr, dqw_ptr,
        du_ptr, dg_ptr, dmu_ptr, dlog_tau_ptr,
        N, H, D, su_b, su_n, su_h, sg_b, sg_n, sg_g, sg_h, sdu_b, sdu_n, sdu_h, sdg_b, sdg_n, sdg_g, sdg_h,
        scale, log_tau_min, log_tau_max,
        ZERO_ORDER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, b, head, offs_d, d_ok = _program(H, D, BLOCK_D)
    m = tl.load(stats_ptr + pid * 2)
    esum = tl.load(stats_ptr + pid * 2 + 1)
    ubar = tl.load(ubar_ptr + pid * D + offs_d, mask=d_ok, other=0.0)

    # gate gradients, sum_t dalpha_t sigmah_t (for dE) and sum_i dk_delta,i (for the centring)
    g_base = g_ptr + b * sg_b + head * sg_h
    dg_base = dg_ptr + b * sdg_b + head * sdg_h
    alpha_sum = 0.0
    ddelta_sum = 0.0
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        w_base = ((b * N + offs_n) * H + head) * 3
        d_alpha = tl.load(dqw_ptr + w_base, mask=n_ok, other=0.0)
        d_beta = tl.load(dqw_ptr + w_base + 1, mask=n_ok, other=0.0)
        d_gamma = tl.load(dqw_ptr + w_base + 2, mask=n_ok, other=0.0)
        sigma1 = _sigmoid(tl.load(g_base + offs_n * sg_n, mask=n_ok, other=0.0).to(tl.float32))
        sigmah = _sigmoid(tl.load(g_base + offs_n * sg_n + sg_g, mask=n_ok, other=0.0).to(tl.float32))
        alpha_sum += tl.sum(d_alpha * sigmah, axis=0)
        d_sigmah = d_alpha / esum - d_beta / N - d_gamma / N
        d_sigma1 = d_beta / N
        out_ty = dg_ptr.dtype.element_ty
        tl.store(dg_base + offs_n * sdg_n, (d_sigma1 * sigma1 * (1.0 - sigma1)).to(out_ty), mask=n_ok)
        tl.store(dg_base + offs_n * sdg_n + sdg_g, (d_sigmah * sigmah * (1.0 - sigmah)).to(out_ty), mask=n_ok)
        if ZERO_ORDER:
            g0 = tl.load(g_base + offs_n * sg_n + 2 * sg_g, mask=n_ok, other=0.0).to(tl.float32)
            t = 2.0 * _sigmoid(2.0 * g0) - 1.0
            tl.store(dg_base + offs_n * sdg_n + 2 * sdg_g, (d_gamma / N * (1.0 - t * t)).to(out_ty), mask=n_ok)
        ddelta_sum += tl.sum(tl.load(dkw_ptr + w_base + 1, mask=n_ok, other=0.0), axis=0)
    d_esum = -alpha_sum / (esum * esum)
    mean_ddelta = ddelta_sum / N

    # d ubar = -scale sum_i ds_i u_i
    u_base = u_ptr + b * su_b + head * su_h
    d_ubar = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        ds = _logit_grad(s_ptr, dkw_ptr, ((b * N + offs_n) * H + head) * 3, pid, N, offs_n, n_ok, m, d_esum,
                         mean_ddelta)
        d_ubar += tl.sum(ds[:, None] * _u_tile(u_base, offs_n, offs_d, su_n, n_ok, d_ok), axis=0)
    d_ubar = -d_ubar * scale

    # du_i = -scale ds_i ubar + d ubar / (tau + N): directly, and through the token sum in ubar
    log_tau, tau, mu = _prior(mu_ptr, log_tau_ptr, head, offs_d, d_ok, D, log_tau_min, log_tau_max)
    through_sum = d_ubar / (tau + N)
    du_base = du_ptr + b * sdu_b + head * sdu_h
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        ds = _logit_grad(s_ptr, dkw_ptr, ((b * N + offs_n) * H + head) * 3, pid, N, offs_n, n_ok, m, d_esum,
                         mean_ddelta)
        du = -scale * ds[:, None] * ubar[None, :] + through_sum[None, :]
        tl.store(du_base + offs_n[:, None] * sdu_n + offs_d[None, :], du.to(du_ptr.dtype.element_ty),
                 mask=n_ok[:, None] & d_ok[None, :])
    # the prior: ubar = (tau mu + U) / (tau + N), tau = exp(clamp(log tau)) (no gradient outside the clamp)
    tl.store(dmu_ptr + pid * D + offs_d, d_ubar * tau / (tau + N), mask=d_ok)
    d_tau = tl.sum(tl.where(d_ok, d_ubar * (mu - ubar), 0.0), axis=0) / (tau + N)
    inside = (log_tau >= log_tau_min) & (log_tau <= log_tau_max)
    tl.store(dlog_tau_ptr + pid, tl.where(inside, d_tau * tau, 0.0))
