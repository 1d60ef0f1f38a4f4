"""The Triton kernels of the local convolution: the fused forward (also the dx of the backward, with the kernel
flipped) and the per-program partial sums of dw.

A forward program owns a band of ``ROWS`` grid rows, ``BLOCK_W`` columns and ``BLOCK_C`` channels and walks down the
grid rows; the row index and its bounds are scalars, only the column shifts are masked per element. With K = 3 (every
mixer's) it walks the input rows, reads each once (its three column shifts) and adds its three tap rows into the
output rows below, at and above it, keeping two rows of partial sums and the nine taps in registers. Other K walk the
output rows and read the K * K shifted tiles around each (the rows just read serve most of them from the cache).
With channel-contiguous weights (taps outer) a tap is one vector load, where a (C, K, K) layout costs a scalar load
per channel and tap. The dw program for K = 3 walks a forward band's input rows the same way, with the three gradient
rows they meet rolling beside them, and writes one row of partial sums per tap; for other K it owns a tile of grid
positions.

FLIP: read the kernel flipped in both grid directions (the transposed convolution of dx) through its strides, with
no flipped copy. PREFIX: how the prefix tokens are written (0 zeros, 1 copied from x, 2 copied from the residual).
ACT: 0 none, 1 SiLU on the output, 2 the SiLU's backward: the output is the incoming gradient (read through the
residual's pointer) times silu' of the recomputed pre-activation."""
import triton
import triton.language as tl


@triton.jit
def _shifted_row(base, r, cols, offs_c, s_n, H, W, tile_mask, dj: tl.constexpr):
    # grid row r of the (columns, channels) tile, shifted by dj columns, zero outside the grid
    cc = cols + dj
    ok = (r >= 0) & (r < H) & (cc >= 0) & (cc < W)
    ptrs = base + (r * W + cc)[:, None] * s_n + offs_c[None, :]
    return tl.load(ptrs, mask=ok[:, None] & tile_mask, other=0.0).to(tl.float32)


@triton.jit
def _row_shifts(base, r, cols, offs_c, s_n, H, W, tile_mask):
    # grid row r shifted by -1, 0 and +1 columns (a 3-wide kernel's three taps of that row)
    return (_shifted_row(base, r, cols, offs_c, s_n, H, W, tile_mask, -1),
            _shifted_row(base, r, cols, offs_c, s_n, H, W, tile_mask, 0),
            _shifted_row(base, r, cols, offs_c, s_n, H, W, tile_mask, 1))


@triton.jit
def _shifted_tile(base, row, col, offs_c, s_n, H, W, valid, c_mask, di: tl.constexpr, dj: tl.constexpr):
    # the (positions, channels) tile of the grid shifted by (di, dj), zero outside the grid
    r = row + di
    cc = col + dj
    ok = valid & (r >= 0) & (r < H) & (cc >= 0) & (cc < W)
    ptrs = base + (r * W + cc)[:, None] * s_n + offs_c[None, :]
    return tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _activation(pre, grad_ptrs, mask, ACT: tl.constexpr):
    # ACT 1: silu(pre); ACT 2: grad * silu'(pre), the incoming gradient read at grad_ptrs
    sig = tl.sigmoid(pre)
    if ACT == 1:
        out = pre * sig
    else:
        grad = tl.load(grad_ptrs, mask=mask, other=0.0).to(tl.float32)
        out = grad * sig * (1.0 + pre * (1.0 - sig))
    return out


@triton.jit
def _write_row(acc, r, row_ok, cols, offs_c, in_cols, bias, res_base, out_base, P, W, sr_n, so_n,
               HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr):
    # bias, residual and activation of output grid row r, then its store (row_ok: a scalar, whether r is written)
    tokens = P + r * W + cols
    tile_mask = in_cols & row_ok
    res_ptrs = res_base + tokens[:, None] * sr_n + offs_c[None, :]
    if HAS_BIAS:
        acc += bias[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(res_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    if ACT != 0:
        acc = _activation(acc, res_ptrs, tile_mask, ACT)
    tl.store(out_base + tokens[:, None] * so_n + offs_c[None, :], acc.to(out_base.dtype.element_ty), mask=tile_mask)


@triton.jit
def _tap(w_base, sw_i, sw_j, c_mask, i: tl.constexpr, j: tl.constexpr):
    return tl.load(w_base + i * sw_i + j * sw_j, mask=c_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _tap_row(w_base, sw_i, sw_j, c_mask, i: tl.constexpr):
    # the three taps of a 3-wide kernel's row i
    return (_tap(w_base, sw_i, sw_j, c_mask, i, 0), _tap(w_base, sw_i, sw_j, c_mask, i, 1),
            _tap(w_base, sw_i, sw_j, c_mask, i, 2))


@triton.jit
def _local_conv_fwd_kernel(
        x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
        C, H, W, P, NUM_BANDS,
        sx_b, sx_n, sw_b, sw_c, sw_i, sw_j, sr_b, sr_n, so_b, so_n,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PREFIX: tl.constexpr, ACT: tl.constexpr,
        FLIP: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    bi = tl.program_id(0) // NUM_BANDS
    band = tl.program_id(0) % NUM_BANDS
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    in_cols = (cols < W)[:, None] & c_mask[None, :]
    x_base = x_ptr + bi * sx_b + P * sx_n
    w_base = w_ptr + bi * sw_b + offs_c * sw_c
    if FLIP:  # tap (i, j) is the kernel's (K - 1 - i, K - 1 - j)
        w_base += (K - 1) * sw_i + (K - 1) * sw_j
        sw_i = -sw_i
        sw_j = -sw_j
    res_base = res_ptr + bi * sr_b
    out_base = out_ptr + bi * so_b
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    first = band * ROWS
    if K == 3:
        # Input rows in order, each read once (its three column shifts): input row r adds its tap rows 0, 1, 2 to
        # output rows r + 1, r, r - 1, and output row r - 1 is then complete. Two rows of partial sums are carried;
        # the nine taps stay in registers. Against one output row at a time (nine shifted loads each) this issues a
        # third of the tile loads.
        w00, w01, w02 = _tap_row(w_base, sw_i, sw_j, c_mask, 0)
        w10, w11, w12 = _tap_row(w_base, sw_i, sw_j, c_mask, 1)
        w20, w21, w22 = _tap_row(w_base, sw_i, sw_j, c_mask, 2)
        above = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)  # output row r - 1, before input row r
        here = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)  # output row r
        left, mid, right = _row_shifts(x_base, first - 1, cols, offs_c, sx_n, H, W, in_cols)
        for step in range(ROWS + 2):
            r = first - 1 + step
            # the next input row is loaded before this one is used, so its loads overlap this row's work (row H,
            # outside the grid, after the band's last: nothing is read)
            following = tl.where(step < ROWS + 1, r + 1, H)
            next_left, next_mid, next_right = _row_shifts(x_base, following, cols, offs_c, sx_n, H, W, in_cols)
            done = above + left * w20 + mid * w21 + right * w22
            _write_row(done, r - 1, (step >= 2) & (r - 1 < H), cols, offs_c, in_cols, bias, res_base, out_base, P, W,
                       sr_n, so_n, HAS_BIAS, HAS_RESIDUAL, ACT)
            above = here + left * w10 + mid * w11 + right * w12
            here = left * w00 + mid * w01 + right * w02
            left, mid, right = next_left, next_mid, next_right
    else:
        for step in range(ROWS):
            r = first + step
            acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
            for i in tl.static_range(K):
                for j in tl.static_range(K):
                    acc += _shifted_row(x_base, r + (i - K // 2), cols, offs_c, sx_n, H, W, in_cols, j - K // 2) \
                        * _tap(w_base, sw_i, sw_j, c_mask, i, j)
            _write_row(acc, r, r < H, cols, offs_c, in_cols, bias, res_base, out_base, P, W, sr_n, so_n,
                       HAS_BIAS, HAS_RESIDUAL, ACT)
    if (band == 0) & (tl.program_id(1) == 0):  # the prefix tokens have no place on the grid
        for t in range(P):
            if PREFIX == 1:
                val = tl.load(x_ptr + bi * sx_b + t * sx_n + offs_c, mask=c_mask, other=0.0)
            elif PREFIX == 2:
                val = tl.load(res_base + t * sr_n + offs_c, mask=c_mask, other=0.0)
            else:
                val = tl.zeros((BLOCK_C,), dtype=tl.float32)
            if ACT != 0:
                val = _activation(val.to(tl.float32), res_base + t * sr_n + offs_c, c_mask, ACT)
            tl.store(out_base + t * so_n + offs_c, val.to(out_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _local_conv_dw_kernel(
        x_ptr, g_ptr, part_ptr,
        C, H, W, P, NUM_TILES,
        sx_b, sx_n, sg_b, sg_n,
        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # partial dw of one (image, tile of positions): part[b, tile, i * K + j, c] = sum_p g[p, c] x[p + (i, j), c]
    bi = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    valid = offs_p < H * W
    row = offs_p // W
    col = offs_p % W
    g = tl.load(g_ptr + bi * sg_b + (P + offs_p)[:, None] * sg_n + offs_c[None, :],
                mask=valid[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
    x_base = x_ptr + bi * sx_b + P * sx_n
    part_base = part_ptr + ((bi * NUM_TILES + pid_p) * K * K) * C + offs_c
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            xs = _shifted_tile(x_base, row, col, offs_c, sx_n, H, W, valid, c_mask, i - K // 2, j - K // 2)
            tl.store(part_base + (i * K + j) * C, tl.sum(xs * g, axis=0), mask=c_mask)


@triton.jit
def _band_grad_row(g_base, r, first, last, cols, offs_c, sg_n, H, W, in_cols):
    # the incoming gradient's grid row r where the band [first, last) owns it, zero elsewhere
    return _shifted_row(g_base, tl.where((r >= first) & (r < last), r, -1), cols, offs_c, sg_n, H, W, in_cols, 0)


@triton.jit
def _zero_tiles(BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    return (tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32), tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32),
            tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32))


@triton.jit
def _local_conv_dw_rows_kernel(
        x_ptr, g_ptr, part_ptr,
        C, H, W, P, NUM_BANDS,
        sx_b, sx_n, sg_b, sg_n,
        ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # partial dw (K = 3) of one (image, band of rows, block of columns):
    # part[b, band * num_column_blocks + column_block, 3 i + j, c] = sum over the tile's p of g[p, c] x[p + (i, j), c].
    # Like the forward, it walks the band's input rows and reads each once (three column shifts): input row s meets
    # the gradient rows s + 1, s and s - 1 through tap rows 0, 1 and 2, and the gradient rows roll along with it.
    bi = tl.program_id(0) // NUM_BANDS
    band = tl.program_id(0) % NUM_BANDS
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    in_cols = (cols < W)[:, None] & c_mask[None, :]
    x_base = x_ptr + bi * sx_b + P * sx_n
    g_base = g_ptr + bi * sg_b + P * sg_n
    first = band * ROWS
    last = tl.minimum(first + ROWS, H)
    # every loop-carried tile starts from a zeros tensor of its own (Triton merges loop-carried values that start as
    # one object: on a GPU the tap row 2 sums came out zero)
    d00, d01, d02 = _zero_tiles(BLOCK_W, BLOCK_C)
    d10, d11, d12 = _zero_tiles(BLOCK_W, BLOCK_C)
    d20, d21, d22 = _zero_tiles(BLOCK_W, BLOCK_C)
    g_above, g_here, _ = _zero_tiles(BLOCK_W, BLOCK_C)  # gradient rows s - 1 and s (the band's rows only)
    left, mid, right = _row_shifts(x_base, first - 1, cols, offs_c, sx_n, H, W, in_cols)
    for step in range(ROWS + 2):
        s = first - 1 + step
        g_below = _band_grad_row(g_base, s + 1, first, last, cols, offs_c, sg_n, H, W, in_cols)
        # the next input row, loaded before this one is used (row H after the band's last: nothing is read)
        following = tl.where(step < ROWS + 1, s + 1, H)
        next_left, next_mid, next_right = _row_shifts(x_base, following, cols, offs_c, sx_n, H, W, in_cols)
        d00 += g_below * left
        d01 += g_below * mid
        d02 += g_below * right
        d10 += g_here * left
        d11 += g_here * mid
        d12 += g_here * right
        d20 += g_above * left
        d21 += g_above * mid
        d22 += g_above * right
        g_above, g_here = g_here, g_below
        left, mid, right = next_left, next_mid, next_right
    tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    part_base = part_ptr + tile * 9 * C + offs_c
    tl.store(part_base + 0 * C, tl.sum(d00, axis=0), mask=c_mask)
    tl.store(part_base + 1 * C, tl.sum(d01, axis=0), mask=c_mask)
    tl.store(part_base + 2 * C, tl.sum(d02, axis=0), mask=c_mask)
    tl.store(part_base + 3 * C, tl.sum(d10, axis=0), mask=c_mask)
    tl.store(part_base + 4 * C, tl.sum(d11, axis=0), mask=c_mask)
    tl.store(part_base + 5 * C, tl.sum(d12, axis=0), mask=c_mask)
    tl.store(part_base + 6 * C, tl.sum(d20, axis=0), mask=c_mask)
    tl.store(part_base + 7 * C, tl.sum(d21, axis=0), mask=c_mask)
    tl.store(part_base + 8 * C, tl.sum(d22, axis=0), mask=c_mask)
