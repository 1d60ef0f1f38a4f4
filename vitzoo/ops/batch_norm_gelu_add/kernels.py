"""The Triton kernel of x + GELU(BatchNorm(v)) in eval mode: a program owns a tile of rows and channels of the
(rows, H, D) views of x, v and the output, read through their row and head strides (v is typically a strided slice
of a fused projection), with channel c of a row being head c // D, channel c mod D; it folds its channels'
statistics and affine parameters itself, so no launch or kept tensor is needed for them."""
import triton
import triton.language as tl


@triton.jit
def _batch_norm_gelu_add_kernel(
        x_ptr, v_ptr, mean_ptr, var_ptr, weight_ptr, bias_ptr, out_ptr,
        R, C, D, eps, sx_r, sx_h, sv_r, sv_h, so_r, so_h,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cols < C
    mask = (rows < R)[:, None] & c_mask[None, :]
    rows = rows.to(tl.int64)
    channel = cols % D
    head = cols // D
    scale = 1.0 / tl.sqrt(tl.load(var_ptr + channel, mask=c_mask, other=1.0).to(tl.float32) + eps)
    if HAS_WEIGHT:
        scale = scale * tl.load(weight_ptr + channel, mask=c_mask, other=0.0).to(tl.float32)
    shift = -tl.load(mean_ptr + channel, mask=c_mask, other=0.0).to(tl.float32) * scale
    if HAS_BIAS:
        shift = shift + tl.load(bias_ptr + channel, mask=c_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + rows[:, None] * sv_r + (head * sv_h + channel)[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * sx_r + (head * sx_h + channel)[None, :], mask=mask, other=0.0).to(tl.float32)
    pre = v * scale[None, :] + shift[None, :]
    out = x + 0.5 * pre * (1.0 + tl.erf(pre * 0.7071067811865476))
    tl.store(out_ptr + rows[:, None] * so_r + (head * so_h + channel)[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)
