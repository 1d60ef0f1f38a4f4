"""The Triton kernel of x + GELU(v * scale + shift): a program owns a tile of rows and channels of the (rows, C)
views of x, v and the output, whose row strides are the host's (v is typically a strided slice of a fused
projection), and reads the tile's scale and shift once."""
import triton
import triton.language as tl


@triton.jit
def _affine_gelu_add_kernel(
        x_ptr, v_ptr, scale_ptr, shift_ptr, out_ptr,
        R, C, sx_r, sv_r, so_r,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cols < C
    mask = (rows < R)[:, None] & c_mask[None, :]
    rows = rows.to(tl.int64)
    scale = tl.load(scale_ptr + cols, mask=c_mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + cols, mask=c_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + rows[:, None] * sv_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * sx_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    pre = v * scale[None, :] + shift[None, :]
    out = x + 0.5 * pre * (1.0 + tl.erf(pre * 0.7071067811865476))
    tl.store(out_ptr + rows[:, None] * so_r + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
