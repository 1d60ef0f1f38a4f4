"""The Triton kernels of layer norm and RMS norm over rows of width N: the forward (output, and the per-row mean and
1/std the backward reads) and the backward (dx, and per-program partial sums of dweight and dbias, added up on the
host). RMS: no centring and no bias. GATE: the output times silu(gate) (the gated RMS norm of DeltaNet's output).
ADD: the rows normalised are x + u (a residual update), written out rounded to their dtype and normalised as rounded,
as a separate add and norm would; the backward then adds the gradient that reaches the sum from elsewhere (ds) to dx.
All statistics in fp32."""
import triton
import triton.language as tl


@triton.jit
def _norm_fwd_kernel(
        x_ptr, u_ptr, s_ptr, w_ptr, b_ptr, g_ptr, y_ptr, mean_ptr, rstd_ptr,
        M, N, sx_m, su_m, ss_m, sg_m, sy_m, eps,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, GATE: tl.constexpr, ADD: tl.constexpr,
        SAVE_STATS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    eps = tl.cast(eps, tl.float32)  # fp32 from eager launches, fp64 from Inductor
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if ADD:
        u = tl.load(u_ptr + rows[:, None] * su_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        total = (x + u).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + rows[:, None] * ss_m + cols[None, :], total, mask=mask)
        x = total.to(tl.float32)
    if RMS:
        centred = x
    else:
        mean = tl.sum(x, axis=1) / N
        centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GATE:
        g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = y * g * tl.sigmoid(g)
    tl.store(y_ptr + rows[:, None] * sy_m + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_STATS:
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
        if not RMS:
            tl.store(mean_ptr + rows, mean, mask=row_ok)


@triton.jit
def _norm_bwd_kernel(
        x_ptr, w_ptr, g_ptr, dy_ptr, ds_ptr, dx_ptr, dg_ptr, mean_ptr, rstd_ptr, dw_ptr, db_ptr,
        M, N, sx_m, sg_m, sdy_m, sds_m, sdx_m, sdg_m,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, GATE: tl.constexpr, ADD: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * sx_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * sdy_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        if RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if GATE:
            # y = n silu(g) with n = xhat w (the gate comes with RMS norm only, so no bias): dg = dy n silu'(g), and
            # the norm's own gradient is that of dy silu(g)
            g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(g)
            if HAS_WEIGHT:
                normed = xhat * w[None, :]
            else:
                normed = xhat
            dg = dy * normed * sig * (1.0 + g * (1.0 - sig))
            tl.store(dg_ptr + rows[:, None] * sdg_m + cols[None, :], dg.to(dg_ptr.dtype.element_ty), mask=mask)
            dy = dy * g * sig
        if HAS_WEIGHT:
            wdy = dy * w[None, :]
        else:
            wdy = dy
        # dx = rstd (wdy - xhat mean(xhat wdy) - mean(wdy)); RMS has no mean term
        c1 = tl.sum(xhat * wdy, axis=1) / N
        if RMS:
            dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(wdy, axis=1) / N
            dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if ADD:
            dx += tl.load(ds_ptr + rows[:, None] * sds_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * sdx_m + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            db_acc += tl.sum(dy, axis=0)
    if HAS_WEIGHT:
        tl.store(dw_ptr + pid * N + cols, dw_acc, mask=col_ok)
    if HAS_BIAS:
        tl.store(db_ptr + pid * N + cols, db_acc, mask=col_ok)
