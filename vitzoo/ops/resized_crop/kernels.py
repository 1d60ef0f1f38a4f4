"""The Triton kernel of resized crops: a program owns a tile of one output image's pixels, all channels, and
computes each as ``roi_align`` does (aligned boxes, ``ceil(box / size)`` bilinear samples per axis and bin, in
float32 with correctly rounded divisions), mirrored where the image is flipped; reads uint8 and writes uint8."""
import triton
import triton.language as tl


@triton.jit
def _sample(channel_ptr, y, x, H, W, mask):
    """roi_align's bilinear sample at (y, x): 0 beyond one pixel outside the image, edges clamped."""
    height = H.to(tl.float32)
    width = W.to(tl.float32)
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = tl.maximum(y, 0.0)
    x = tl.maximum(x, 0.0)
    y_low = y.to(tl.int32)
    x_low = x.to(tl.int32)
    y_edge = y_low >= H - 1
    x_edge = x_low >= W - 1
    y_low = tl.where(y_edge, H - 1, y_low)
    x_low = tl.where(x_edge, W - 1, x_low)
    y = tl.where(y_edge, y_low.to(tl.float32), y)
    x = tl.where(x_edge, x_low.to(tl.float32), x)
    y_high = tl.where(y_edge, y_low, y_low + 1)
    x_high = tl.where(x_edge, x_low, x_low + 1)
    ly = y - y_low.to(tl.float32)
    lx = x - x_low.to(tl.float32)
    hy = 1.0 - ly
    hx = 1.0 - lx
    v1 = tl.load(channel_ptr + y_low * W + x_low, mask=mask, other=0).to(tl.float32)
    v2 = tl.load(channel_ptr + y_low * W + x_high, mask=mask, other=0).to(tl.float32)
    v3 = tl.load(channel_ptr + y_high * W + x_low, mask=mask, other=0).to(tl.float32)
    v4 = tl.load(channel_ptr + y_high * W + x_high, mask=mask, other=0).to(tl.float32)
    value = hy * hx * v1 + hy * lx * v2 + ly * hx * v3 + ly * lx * v4
    return tl.where(outside, 0.0, value)


@triton.jit
def _round_half_even(v):
    r = tl.floor(v)
    d = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)


@triton.jit(do_not_specialize=["C", "H", "W", "S"])
def _resized_crops_kernel(x_ptr, out_ptr, box_ptr, C, H, W, S, BLOCK: tl.constexpr):
    image = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S * S
    out_row = offs // S
    out_col = offs % S
    box = box_ptr + image * 5  # x0, y0, x1, y1, flip
    start_w = tl.load(box) - 0.5
    start_h = tl.load(box + 1) - 0.5
    roi_w = tl.load(box + 2) - 0.5 - start_w
    roi_h = tl.load(box + 3) - 0.5 - start_h
    flip = tl.load(box + 4) != 0.0
    col = tl.where(flip, S - 1 - out_col, out_col)  # the crop's column this output pixel shows
    size = S.to(tl.float32)
    bin_w = tl.math.div_rn(roi_w, size)
    bin_h = tl.math.div_rn(roi_h, size)
    grid_w = tl.math.ceil(tl.math.div_rn(roi_w, size)).to(tl.int32)
    grid_h = tl.math.ceil(tl.math.div_rn(roi_h, size)).to(tl.int32)
    count = tl.maximum(grid_h * grid_w, 1).to(tl.float32)
    y_base = start_h + out_row.to(tl.float32) * bin_h
    x_base = start_w + col.to(tl.float32) * bin_w
    hw = H * W
    for c in range(0, C):
        channel_ptr = x_ptr + (image.to(tl.int64) * C + c) * hw
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for iy in range(0, grid_h):
            y = y_base + tl.math.div_rn((iy + 0.5) * bin_h, grid_h.to(tl.float32))
            for ix in range(0, grid_w):
                x = x_base + tl.math.div_rn((ix + 0.5) * bin_w, grid_w.to(tl.float32))
                total += _sample(channel_ptr, y, x, H, W, mask)
        value = _round_half_even(tl.math.div_rn(total, count))
        value = tl.minimum(tl.maximum(value, 0.0), 255.0)
        tl.store(out_ptr + (image.to(tl.int64) * C + c) * S * S + offs, value.to(tl.uint8), mask=mask)
