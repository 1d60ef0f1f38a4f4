"""The Triton kernels of FEM's two ops, all arithmetic in fp32.

Values: one program per (batch, head) walks the tokens twice, for the max of beta v, then to write the values (where
those programs would leave the GPU idle, two launches over chunks of tokens: the chunks' maxima, then the values); its
backward walks them once and writes per program the partial sums of beta's gradient (summed on the host).
Output: one program per block of tokens and one head. Forward: the free energy from the read, the gates and the
output, one pass. Backward: the same pass again (nothing but the inputs is saved), then the gradients of the read and
the gate logits, and per program the partial sums of beta's gradient over its tokens (summed on the host).
"""
import triton
import triton.language as tl


@triton.jit
def _log1p(x):
    # log(1 + x) to a few ulps for x >= 0 (Kahan): log(u) * x / (u - 1) with u = 1 + x rounded
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * x / tl.where(exact, 1.0, u - 1.0))


@triton.jit
def _clamped_values(v_base, rows, cols, sv_n, N, col_ok, beta, cap):
    mask = (rows < N)[:, None] & col_ok[None, :]
    v = tl.load(v_base + rows[:, None] * sv_n + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return mask, v, tl.minimum(tl.maximum(v, -cap), cap)


@triton.jit
def _values_program(v_ptr, beta_ptr, H, DV, sv_b, sv_h, cap_numerator, BLOCK_D: tl.constexpr):
    # this program's (batch, head), its value channels, their beta and clipping bound, and its values' base pointer
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)  # 64-bit element offsets: the tensors may hold more than 2^31 elements
    head = pid % H
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < DV
    beta = tl.load(beta_ptr + head * DV + cols, mask=col_ok, other=1.0).to(tl.float32)
    return pid, b, head, cols, col_ok, beta, cap_numerator / beta, v_ptr + b * sv_b + head * sv_h


@triton.jit
def _free_energy_values_fwd_kernel(
        v_ptr, beta_ptr, values_ptr, shift_ptr, part_ptr, N, H, DV, sv_b, sv_n, sv_h, cap_numerator, CHUNK, SPLITS,
        STAGE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # STAGE 0: one program per (batch, head) walks all tokens twice. Split over SPLITS chunks of CHUNK tokens
    # (program (batch, head), chunk), two launches: 1 the chunk's max of beta v into part, 2 every chunk's combined
    # into the shift, the chunk's values.
    pid, b, head, cols, col_ok, beta, cap, v_base = _values_program(v_ptr, beta_ptr, H, DV, sv_b, sv_h,
                                                                     cap_numerator, BLOCK_D)
    lo = tl.program_id(1) * CHUNK  # STAGE 0 is launched with one chunk of CHUNK = N tokens
    hi = tl.minimum(lo + CHUNK, N)
    if STAGE == 2:
        chunks = tl.arange(0, BLOCK_S)
        part = tl.load(part_ptr + (pid * SPLITS + chunks)[:, None] * DV + cols[None, :],
                       mask=(chunks < SPLITS)[:, None] & col_ok[None, :], other=-float("inf"))
        shift = tl.max(part, 0)
    else:
        shift = tl.full((BLOCK_D,), -float("inf"), tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            mask, _, clamped = _clamped_values(v_base, rows, cols, sv_n, hi, col_ok, beta, cap)
            shift = tl.maximum(shift, tl.max(tl.where(mask, beta[None, :] * clamped, -float("inf")), 0))
    if STAGE == 1:
        tl.store(part_ptr + (pid * SPLITS + tl.program_id(1)) * DV + cols, shift, mask=col_ok)
    else:
        shift = tl.where(col_ok, shift, 0.0)
        if tl.program_id(1) == 0:
            tl.store(shift_ptr + pid * DV + cols, shift, mask=col_ok)
        for n0 in range(lo, hi, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            mask, _, clamped = _clamped_values(v_base, rows, cols, sv_n, hi, col_ok, beta, cap)
            offs = ((b * N + rows) * H + head)[:, None] * (2 * DV) + cols[None, :]
            out_type = values_ptr.dtype.element_ty
            tl.store(values_ptr + offs, clamped.to(out_type), mask=mask)
            tl.store(values_ptr + offs + DV, tl.exp(beta[None, :] * clamped - shift[None, :]).to(out_type),
                     mask=mask)


@triton.jit
def _free_energy_values_bwd_kernel(
        v_ptr, beta_ptr, shift_ptr, grad_ptr, dv_ptr, dbeta_ptr, N, H, DV, sv_b, sv_n, sv_h, cap_numerator,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, b, head, cols, col_ok, beta, cap, v_base = _values_program(v_ptr, beta_ptr, H, DV, sv_b, sv_h,
                                                                     cap_numerator, BLOCK_D)
    shift = tl.load(shift_ptr + pid * DV + cols, mask=col_ok, other=0.0)
    d_beta = tl.zeros((BLOCK_D,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        mask, v, clamped = _clamped_values(v_base, rows, cols, sv_n, N, col_ok, beta, cap)
        offs = ((b * N + rows) * H + head)[:, None] * (2 * DV) + cols[None, :]
        d_clamped = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d_scaled = tl.load(grad_ptr + offs + DV, mask=mask, other=0.0).to(tl.float32) * \
            tl.exp(beta[None, :] * clamped - shift[None, :])
        d_clamped += d_scaled * beta[None, :]
        # the clamp passes the gradient to v inside its bounds and to the bound it took outside them (as PyTorch's
        # clamp with tensor bounds); the bounds are +-40 / beta
        inside = (v >= -cap[None, :]) & (v <= cap[None, :])
        d_cap = tl.where(v > cap[None, :], d_clamped, 0.0) - tl.where(v < -cap[None, :], d_clamped, 0.0)
        d_beta += tl.sum(tl.where(mask, d_scaled * clamped - d_cap * cap[None, :] / beta[None, :], 0.0), 0)
        dv_offs = ((b * N + rows) * H + head)[:, None] * DV + cols[None, :]
        tl.store(dv_ptr + dv_offs, tl.where(inside, d_clamped, 0.0).to(dv_ptr.dtype.element_ty), mask=mask)
    tl.store(dbeta_ptr + pid * DV + cols, d_beta, mask=col_ok)


@triton.jit
def _program_tile(T, N, DV, sr_b, sr_n, sr_h, sg_b, sg_n, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # this program's head and token rows (batch, token), their mask, and the read and gate offsets
    head = tl.program_id(1)
    # 64-bit rows: their element offsets may pass 2^31
    rows = (tl.program_id(0) * BLOCK_T).to(tl.int64) + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < T)[:, None] & (cols < DV)[None, :]
    b = rows // N
    n = rows % N
    read_offs = (b * sr_b + n * sr_n + head * sr_h)[:, None] + cols[None, :]
    gate_offs = (b * sg_b + n * sg_n + head * DV)[:, None] + cols[None, :]
    return head, rows, cols, b, mask, read_offs, gate_offs


@triton.jit
def _output_offsets(rows, cols, head, DV, E):
    return (rows * E + head * DV)[:, None] + cols[None, :]


@triton.jit
def _forward_values(read_ptr, shift_ptr, beta_ptr, gate_ptr, b, head, cols, mask, read_offs, gate_offs,
                    H, DV, E, log_eps, gate_floor, tiny, sqrt_dv):
    mean = tl.load(read_ptr + read_offs, mask=mask, other=0.0).to(tl.float32)
    exp_read = tl.load(read_ptr + read_offs + DV, mask=mask, other=1.0).to(tl.float32)
    shift = tl.load(shift_ptr + (b * H * DV + head * DV)[:, None] + cols[None, :], mask=mask, other=0.0)
    beta = tl.load(beta_ptr + head * DV + cols, mask=cols < DV, other=1.0).to(tl.float32)[None, :]
    shift = shift.to(tl.float32)
    x_in = tl.load(gate_ptr + gate_offs, mask=mask, other=0.0).to(tl.float32)
    x_out = tl.load(gate_ptr + gate_offs + E, mask=mask, other=0.0).to(tl.float32)

    log_read = tl.log(tl.maximum(exp_read, tiny))
    floor = log_eps - shift
    restored = tl.maximum(log_read, floor) + _log1p(tl.exp(-tl.abs(log_read - floor)))  # logaddexp
    free_energy = (restored + shift) / beta
    lam = tl.sigmoid(x_in)
    # softplus with PyTorch's threshold (x > 20: x); padded lanes get 0 so they stay out of the norm
    softplus = tl.where(x_out > 20.0, x_out, _log1p(tl.exp(tl.minimum(x_out, 20.0))))
    outer = tl.where(mask, softplus + gate_floor, 0.0)
    # (a token's norm is at least sqrt(d_v) 1e-6; the floor only keeps padded rows finite)
    norm = tl.sqrt(tl.maximum(tl.sum(outer * outer, 1), 1e-30))[:, None]
    gate = outer / norm * sqrt_dv
    mixed = mean + lam * (free_energy - mean)
    return (mean, exp_read, beta, x_out, log_read, restored, free_energy, lam, outer, norm, gate, mixed)


@triton.jit
def _free_energy_mix_fwd_kernel(
        read_ptr, shift_ptr, beta_ptr, gate_ptr, out_ptr,
        T, N, H, DV, E, sr_b, sr_n, sr_h, sg_b, sg_n, log_eps, gate_floor, tiny, sqrt_dv,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head, rows, cols, b, mask, read_offs, gate_offs = _program_tile(
        T, N, DV, sr_b, sr_n, sr_h, sg_b, sg_n, BLOCK_T, BLOCK_D)
    (_, _, _, _, _, _, _, _, _, _, gate, mixed) = _forward_values(
        read_ptr, shift_ptr, beta_ptr, gate_ptr, b, head, cols, mask, read_offs, gate_offs, H, DV, E, log_eps,
        gate_floor, tiny, sqrt_dv)
    tl.store(out_ptr + _output_offsets(rows, cols, head, DV, E), (gate * mixed).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _free_energy_mix_bwd_kernel(
        read_ptr, shift_ptr, beta_ptr, gate_ptr, grad_ptr, dread_ptr, dgate_ptr, dbeta_ptr,
        T, N, H, DV, E, sr_b, sr_n, sr_h, sg_b, sg_n, log_eps, gate_floor, tiny, sqrt_dv,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head, rows, cols, b, mask, read_offs, gate_offs = _program_tile(
        T, N, DV, sr_b, sr_n, sr_h, sg_b, sg_n, BLOCK_T, BLOCK_D)
    (mean, exp_read, beta, x_out, _, restored, free_energy, lam, outer, norm, gate,
     mixed) = _forward_values(read_ptr, shift_ptr, beta_ptr, gate_ptr, b, head, cols, mask, read_offs, gate_offs,
                              H, DV, E, log_eps, gate_floor, tiny, sqrt_dv)
    grad = tl.load(grad_ptr + _output_offsets(rows, cols, head, DV, E), mask=mask, other=0.0).to(tl.float32)

    d_mixed = grad * gate
    # the outer gate: gate = sqrt(d_v) u with u = outer / ||outer||
    unit = outer / norm
    d_unit = sqrt_dv * grad * mixed
    d_outer = (d_unit - unit * tl.sum(unit * d_unit, 1)[:, None]) / norm
    d_x_out = tl.where(mask, d_outer * tl.where(x_out > 20.0, 1.0, tl.sigmoid(x_out)), 0.0)
    d_x_in = d_mixed * (free_energy - mean) * lam * (1.0 - lam)
    d_mean = d_mixed * (1.0 - lam)
    d_free_energy = d_mixed * lam
    d_restored = d_free_energy / beta
    # d restored / d R = exp(log R - restored) / R = exp(-restored) above the clamp of R, 0 below it
    d_exp_read = tl.where(exp_read >= tiny, d_restored * tl.exp(-restored), 0.0)
    d_beta = tl.sum(tl.where(mask, -d_free_energy * free_energy / beta, 0.0), 0)

    dread_offs = (rows * H * 2 * DV + head * 2 * DV)[:, None] + cols[None, :]
    tl.store(dread_ptr + dread_offs, d_mean.to(dread_ptr.dtype.element_ty), mask=mask)
    tl.store(dread_ptr + dread_offs + DV, d_exp_read.to(dread_ptr.dtype.element_ty), mask=mask)
    dgate_offs = (rows * 2 * E + head * DV)[:, None] + cols[None, :]
    tl.store(dgate_ptr + dgate_offs, d_x_in.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_ptr + dgate_offs + E, d_x_out.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dbeta_ptr + (tl.program_id(0) * H + head) * DV + cols, d_beta, mask=cols < DV)
