"""The Triton kernels of InLine's local-kernel predictor.

``_token_sum_kernel``: one program per (image, block of channels, span of tokens) sums its span in fp32 and writes
that partial sum (spans keep every SM busy at long sequences and small batches, where one program per image and
channel block would walk thousands of tokens alone).
``_predictor_mlp_kernel``: one program per (block of images, group) adds up the group's partial sums into the token
means, multiplies them by W1 (fp32
products, IEEE precision as cuBLAS's fp32 GEMM), adds b1, takes the exact GELU, then walks the second layer's
outputs in blocks, each W2 block times the hidden tile plus b2, and writes every output straight to its tap-major
place (B, k, k, C).
``_predictor_bwd_kernel``: one program per (block of images, group) recomputes the block's means and first layer
from the saved partial sums, walks the second layer's outputs in blocks (the incoming gradient read through its
strides: dW2 and db2 of the block, and the hidden gradient), takes GELU's derivative, then dW1, db1 and the means'
gradient, which it writes divided by N (every token's share). The weight gradients are per image block, summed over
the blocks by the host; every product is fp32 at IEEE precision, and every transposed operand is loaded transposed
from memory rather than transposed in registers."""
import triton
import triton.language as tl


@triton.jit
def _token_sum_kernel(x_ptr, partial_ptr, N, C, SPLITS, sx_b, sx_n, SPAN: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    bi = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_mask = cols < C
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(split * SPAN, split * SPAN + SPAN, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        tile = tl.load(x_ptr + bi * sx_b + tokens[:, None] * sx_n + cols[None, :],
                       mask=(tokens < N)[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(tile, axis=0)
    tl.store(partial_ptr + (bi * SPLITS + split) * C + cols, acc, mask=c_mask)


@triton.jit
def _predictor_mlp_kernel(
        partial_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
        B, C, WIDTH, TAPS, SPLITS, inv_n,
        BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr,
):
    images = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    g = tl.program_id(1)
    dims = tl.arange(0, BLOCK_D)
    b_mask = images < B
    d_mask = dims < WIDTH
    # the group's means (BLOCK_B, BLOCK_D) and W1_g as (in, out): W1[g WIDTH + out, in]
    m = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for split in range(0, SPLITS):
        m += tl.load(partial_ptr + (images[:, None] * SPLITS + split) * C + g * WIDTH + dims[None, :],
                     mask=b_mask[:, None] & d_mask[None, :], other=0.0)
    m = m * inv_n
    w1 = tl.load(w1_ptr + (g * WIDTH + dims[None, :]) * WIDTH + dims[:, None],
                 mask=d_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + g * WIDTH + dims, mask=d_mask, other=0.0).to(tl.float32)
    pre = tl.dot(m, w1, input_precision="ieee") + b1[None, :]
    hidden = 0.5 * pre * (1.0 + tl.erf(pre * 0.7071067811865476))
    for start in range(0, WIDTH * TAPS, BLOCK_J):
        outs = start + tl.arange(0, BLOCK_J)  # outputs of the group: channel outs // TAPS, tap outs % TAPS
        j_mask = outs < WIDTH * TAPS
        # W2_g as (in, out): W2[g WIDTH TAPS + out, in]
        w2 = tl.load(w2_ptr + (g * WIDTH * TAPS + outs[None, :]) * WIDTH + dims[:, None],
                     mask=d_mask[:, None] & j_mask[None, :], other=0.0).to(tl.float32)
        b2 = tl.load(b2_ptr + g * WIDTH * TAPS + outs, mask=j_mask, other=0.0).to(tl.float32)
        y = tl.dot(hidden, w2, input_precision="ieee") + b2[None, :]
        channel = g * WIDTH + outs // TAPS
        tap = outs % TAPS
        tl.store(out_ptr + images[:, None] * (TAPS * C) + (tap * C + channel)[None, :],
                 y.to(out_ptr.dtype.element_ty), mask=b_mask[:, None] & j_mask[None, :])


@triton.jit
def _gelu_derivative(x):
    # d/dx of x Phi(x): Phi(x) + x phi(x)
    return 0.5 * (1.0 + tl.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _predictor_bwd_kernel(
        partial_ptr, w1_ptr, b1_ptr, w2_ptr, dout_ptr, dx_ptr, dparams_ptr,
        B, C, WIDTH, K, SPLITS, inv_n, LENGTH,
        sd_b, sd_c, sd_i, sd_j,
        BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr,
):
    block = tl.program_id(0)
    images = block * BLOCK_B + tl.arange(0, BLOCK_B)
    g = tl.program_id(1)
    dims = tl.arange(0, BLOCK_D)
    b_mask = images < B
    d_mask = dims < WIDTH
    bd_mask = b_mask[:, None] & d_mask[None, :]
    db_mask = d_mask[:, None] & b_mask[None, :]
    dd_mask = d_mask[:, None] & d_mask[None, :]
    taps = K * K
    # the group's means as (image, channel) and as (channel, image)
    m = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    m_t = tl.zeros((BLOCK_D, BLOCK_B), dtype=tl.float32)
    for split in range(0, SPLITS):
        m += tl.load(partial_ptr + (images[:, None] * SPLITS + split) * C + g * WIDTH + dims[None, :],
                     mask=bd_mask, other=0.0)
        m_t += tl.load(partial_ptr + (images[None, :] * SPLITS + split) * C + g * WIDTH + dims[:, None],
                       mask=db_mask, other=0.0)
    m = m * inv_n
    m_t = m_t * inv_n
    # W1_g as (in, out) and (out, in): W1[g WIDTH + out, in]
    w1 = tl.load(w1_ptr + (g * WIDTH + dims[None, :]) * WIDTH + dims[:, None], mask=dd_mask, other=0.0).to(tl.float32)
    w1_t = tl.load(w1_ptr + (g * WIDTH + dims[:, None]) * WIDTH + dims[None, :], mask=dd_mask,
                   other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + g * WIDTH + dims, mask=d_mask, other=0.0).to(tl.float32)
    pre = tl.dot(m, w1, input_precision="ieee") + b1[None, :]
    pre_t = tl.dot(w1_t, m_t, input_precision="ieee") + b1[:, None]
    hidden_t = 0.5 * pre_t * (1.0 + tl.erf(pre_t * 0.7071067811865476))
    # this block's weight gradients: [dW1 (C, WIDTH) | db1 (C) | dW2 (C TAPS, WIDTH) | db2 (C TAPS)]
    row = dparams_ptr + block * LENGTH
    dw2_base = row + C * WIDTH + C
    db2_base = dw2_base + C * taps * WIDTH
    d_hidden = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for start in range(0, WIDTH * taps, BLOCK_J):
        outs = start + tl.arange(0, BLOCK_J)  # outputs of the group: channel outs // TAPS, tap outs % TAPS
        j_mask = outs < WIDTH * taps
        channel = g * WIDTH + outs // taps
        tap = outs % taps
        offsets = channel * sd_c + (tap // K) * sd_i + (tap % K) * sd_j
        dy = tl.load(dout_ptr + images[:, None] * sd_b + offsets[None, :], mask=b_mask[:, None] & j_mask[None, :],
                     other=0.0).to(tl.float32)
        # W2_g as (out, in): W2[g WIDTH TAPS + out, in]
        w2_t = tl.load(w2_ptr + (g * WIDTH * taps + outs[:, None]) * WIDTH + dims[None, :],
                       mask=j_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        d_hidden += tl.dot(dy, w2_t, input_precision="ieee")
        dw2 = tl.dot(hidden_t, dy, input_precision="ieee")  # (in, out)
        tl.store(dw2_base + (g * WIDTH * taps + outs[None, :]) * WIDTH + dims[:, None], dw2,
                 mask=d_mask[:, None] & j_mask[None, :])
        tl.store(db2_base + g * WIDTH * taps + outs, tl.sum(dy, axis=0), mask=j_mask)
    d_pre = tl.where(bd_mask, d_hidden * _gelu_derivative(pre), 0.0)
    dw1 = tl.dot(m_t, d_pre, input_precision="ieee")  # (in, out)
    tl.store(row + (g * WIDTH + dims[None, :]) * WIDTH + dims[:, None], dw1, mask=dd_mask)
    tl.store(row + C * WIDTH + g * WIDTH + dims, tl.sum(d_pre, axis=0), mask=d_mask)
    d_mean = tl.dot(d_pre, w1_t, input_precision="ieee")  # (image, in)
    tl.store(dx_ptr + images[:, None] * C + g * WIDTH + dims[None, :], (d_mean * inv_n).to(dx_ptr.dtype.element_ty),
             mask=bd_mask)
