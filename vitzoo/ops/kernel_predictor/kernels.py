"""The Triton kernels of InLine's local-kernel predictor.

``_token_sum_kernel``: one program per (image, block of channels, span of tokens) sums its span in fp32 and writes
that partial sum (spans keep every SM busy at long sequences and small batches, where one program per image and
channel block would walk thousands of tokens alone).
``_predictor_mlp_kernel``: one program per (block of images, group) adds up the group's partial sums into the token
means, multiplies them by W1 (fp32
products, IEEE precision as cuBLAS's fp32 GEMM), adds b1, takes the exact GELU, then walks the second layer's
outputs in blocks, each W2 block times the hidden tile plus b2, and writes every output straight to its tap-major
place (B, k, k, C)."""
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
