"""The Triton kernel of one RandAugment layer: a program owns a tile of one image's pixels, all three channels, and
applies that image's op (a uniform branch per program), reading uint8 and writing uint8.

Each op does the reference's arithmetic in the reference's order (launched without fused multiply-adds), so the
point and colour ops give the reference's integers exactly: Pillow's L conversion and the 3x3 smoothing in integer
arithmetic (exact, as the reference's float sums are), the blends, stretches and thresholds in float32. The affine
ops map each pixel centre through the image's matrix in float64 as the reference does; the bilinear and bicubic taps
follow ``grid_sample`` (border padding, cubic a = -0.75), whose float32 coordinates may differ from the reference's
in the last bit, so a filtered pixel can land one grey level away where its value is within a rounding step of .5.
"""
import triton
import triton.language as tl

from .reference import OP_CODES

# the op codes, read from the reference's table so the two cannot disagree
AUTO_CONTRAST = tl.constexpr(OP_CODES["auto_contrast"])
EQUALIZE = tl.constexpr(OP_CODES["equalize"])
INVERT = tl.constexpr(OP_CODES["invert"])
POSTERIZE = tl.constexpr(OP_CODES["posterize"])
SOLARIZE = tl.constexpr(OP_CODES["solarize"])
SOLARIZE_ADD = tl.constexpr(OP_CODES["solarize_add"])
COLOR = tl.constexpr(OP_CODES["color"])
CONTRAST = tl.constexpr(OP_CODES["contrast"])
BRIGHTNESS = tl.constexpr(OP_CODES["brightness"])
SHARPNESS = tl.constexpr(OP_CODES["sharpness"])
AFFINE_NEAREST = tl.constexpr(OP_CODES["affine_nearest"])  # the affine codes come last: the kernel tests >=
AFFINE_BILINEAR = tl.constexpr(OP_CODES["affine_bilinear"])
AFFINE_BICUBIC = tl.constexpr(OP_CODES["affine_bicubic"])
CUBIC_A = tl.constexpr(-0.75)
PARAMS = tl.constexpr(8)  # per image: op code, argument, the six affine coefficients


@triton.jit
def _blend(degenerate, v, factor):
    # Image.blend truncates towards zero and clips; after the clip to [0, 255] floor is the same
    return tl.minimum(tl.maximum(tl.floor(degenerate + factor * (v - degenerate)), 0.0), 255.0)


@triton.jit
def _smoothed(channel_ptr, v, row, col, H, W, mask):
    """ImageFilter.SMOOTH of one channel (border pixels keep their value): round((sum of 9 + 4 * centre) / 13)."""
    interior = mask & (row > 0) & (row < H - 1) & (col > 0) & (col < W - 1)
    total = 4 * v.to(tl.int32)
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            total += tl.load(channel_ptr + (row + dy - 1) * W + (col + dx - 1), mask=interior, other=0).to(tl.int32)
    return tl.where(interior, ((2 * total + 13) // 26).to(tl.float32), v)


@triton.jit
def _cubic_weights(t):
    # grid_sample's cubic convolution coefficients (a = -0.75) for the four taps around t in [0, 1)
    x1 = t + 1.0
    w0 = ((CUBIC_A * x1 - 5.0 * CUBIC_A) * x1 + 8.0 * CUBIC_A) * x1 - 4.0 * CUBIC_A
    w1 = ((CUBIC_A + 2.0) * t - (CUBIC_A + 3.0)) * t * t + 1.0
    x2 = 1.0 - t
    w2 = ((CUBIC_A + 2.0) * x2 - (CUBIC_A + 3.0)) * x2 * x2 + 1.0
    x3 = x2 + 1.0
    w3 = ((CUBIC_A * x3 - 5.0 * CUBIC_A) * x3 + 8.0 * CUBIC_A) * x3 - 4.0 * CUBIC_A
    return w0, w1, w2, w3


@triton.jit
def _bicubic(channel_ptr, ix, iy, H, W, mask):
    x0 = tl.floor(ix)
    y0 = tl.floor(iy)
    wx0, wx1, wx2, wx3 = _cubic_weights(ix - x0)
    wy0, wy1, wy2, wy3 = _cubic_weights(iy - y0)
    x0 = x0.to(tl.int32)
    y0 = y0.to(tl.int32)
    c0 = tl.minimum(tl.maximum(x0 - 1, 0), W - 1)
    c1 = tl.minimum(tl.maximum(x0, 0), W - 1)
    c2 = tl.minimum(tl.maximum(x0 + 1, 0), W - 1)
    c3 = tl.minimum(tl.maximum(x0 + 2, 0), W - 1)
    result = tl.zeros_like(ix)
    for i in tl.static_range(4):
        r = tl.minimum(tl.maximum(y0 - 1 + i, 0), H - 1) * W
        row = (tl.load(channel_ptr + r + c0, mask=mask, other=0).to(tl.float32) * wx0
               + tl.load(channel_ptr + r + c1, mask=mask, other=0).to(tl.float32) * wx1
               + tl.load(channel_ptr + r + c2, mask=mask, other=0).to(tl.float32) * wx2
               + tl.load(channel_ptr + r + c3, mask=mask, other=0).to(tl.float32) * wx3)
        if i == 0:
            result = row * wy0
        elif i == 1:
            result = result + row * wy1
        elif i == 2:
            result = result + row * wy2
        else:
            result = result + row * wy3
    return result


@triton.jit
def _bilinear(channel_ptr, ix, iy, H, W, mask):
    ix = tl.minimum(tl.maximum(ix, 0.0), (W - 1).to(tl.float32))
    iy = tl.minimum(tl.maximum(iy, 0.0), (H - 1).to(tl.float32))
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    right = mask & (x0 + 1 < W)
    below = mask & (y0 + 1 < H)
    nw = tl.load(channel_ptr + y0 * W + x0, mask=mask, other=0).to(tl.float32)
    ne = tl.load(channel_ptr + y0 * W + x0 + 1, mask=right, other=0).to(tl.float32)
    sw = tl.load(channel_ptr + (y0 + 1) * W + x0, mask=below, other=0).to(tl.float32)
    se = tl.load(channel_ptr + (y0 + 1) * W + x0 + 1, mask=right & below, other=0).to(tl.float32)
    wx = ix - fx
    wy = iy - fy
    return (nw * ((fx + 1.0 - ix) * (fy + 1.0 - iy)) + ne * (wx * (fy + 1.0 - iy))
            + sw * ((fx + 1.0 - ix) * wy) + se * (wx * wy))


@triton.jit(do_not_specialize=["H", "W"])  # sizes of 1 would otherwise become constants without .to()
def _rand_augment_layer_kernel(
        x_ptr, out_ptr, params_ptr, contrast_ptr, stretch_ptr, lut_ptr, fill_ptr, H, W, BLOCK: tl.constexpr,
):
    image = tl.program_id(1)
    hw = H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    row = offs // W
    col = offs % W
    r_ptr = x_ptr + image.to(tl.int64) * 3 * hw
    g_ptr = r_ptr + hw
    b_ptr = g_ptr + hw
    op = tl.load(params_ptr + image * PARAMS).to(tl.int32)
    arg = tl.load(params_ptr + image * PARAMS + 1).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0).to(tl.float32)
    if op == AUTO_CONTRAST:
        s = stretch_ptr + image * 9  # per channel: scale, lo * scale, whether hi > lo
        r = tl.where(tl.load(s + 2) != 0, tl.minimum(tl.maximum(tl.floor(r * tl.load(s) - tl.load(s + 1)), 0.0),
                                                     255.0), r)
        g = tl.where(tl.load(s + 5) != 0, tl.minimum(tl.maximum(tl.floor(g * tl.load(s + 3) - tl.load(s + 4)), 0.0),
                                                     255.0), g)
        b = tl.where(tl.load(s + 8) != 0, tl.minimum(tl.maximum(tl.floor(b * tl.load(s + 6) - tl.load(s + 7)), 0.0),
                                                     255.0), b)
    elif op == EQUALIZE:
        lut = lut_ptr + image * 768
        r = tl.load(lut + r.to(tl.int32), mask=mask, other=0).to(tl.float32)
        g = tl.load(lut + 256 + g.to(tl.int32), mask=mask, other=0).to(tl.float32)
        b = tl.load(lut + 512 + b.to(tl.int32), mask=mask, other=0).to(tl.float32)
    elif op == INVERT:
        r = 255.0 - r
        g = 255.0 - g
        b = 255.0 - b
    elif op == POSTERIZE:
        drop = tl.minimum(tl.maximum(8.0 - arg, 0.0), 8.0).to(tl.int32)
        r = ((r.to(tl.int32) >> drop) << drop).to(tl.float32)
        g = ((g.to(tl.int32) >> drop) << drop).to(tl.float32)
        b = ((b.to(tl.int32) >> drop) << drop).to(tl.float32)
    elif op == SOLARIZE:
        r = tl.where(r >= arg, 255.0 - r, r)
        g = tl.where(g >= arg, 255.0 - g, g)
        b = tl.where(b >= arg, 255.0 - b, b)
    elif op == SOLARIZE_ADD:
        r = tl.where(r < 128.0, tl.minimum(r + arg, 255.0), r)
        g = tl.where(g < 128.0, tl.minimum(g + arg, 255.0), g)
        b = tl.where(b < 128.0, tl.minimum(b + arg, 255.0), b)
    elif op == COLOR:
        grey = ((r.to(tl.int32) * 19595 + g.to(tl.int32) * 38470 + b.to(tl.int32) * 7471 + 32768) >> 16).to(tl.float32)
        r = _blend(grey, r, arg)
        g = _blend(grey, g, arg)
        b = _blend(grey, b, arg)
    elif op == CONTRAST:
        mean = tl.load(contrast_ptr + image)
        r = _blend(mean, r, arg)
        g = _blend(mean, g, arg)
        b = _blend(mean, b, arg)
    elif op == BRIGHTNESS:
        r = _blend(0.0, r, arg)
        g = _blend(0.0, g, arg)
        b = _blend(0.0, b, arg)
    elif op == SHARPNESS:
        r = _blend(_smoothed(r_ptr, r, row, col, H, W, mask), r, arg)
        g = _blend(_smoothed(g_ptr, g, row, col, H, W, mask), g, arg)
        b = _blend(_smoothed(b_ptr, b, row, col, H, W, mask), b, arg)
    elif op >= AFFINE_NEAREST:
        m = params_ptr + image * PARAMS + 2
        xs = col.to(tl.float64) + 0.5
        ys = row.to(tl.float64) + 0.5
        px = tl.load(m) * xs + tl.load(m + 1) * ys + tl.load(m + 2)
        py = tl.load(m + 3) * xs + tl.load(m + 4) * ys + tl.load(m + 5)
        width = W.to(tl.float64)
        height = H.to(tl.float64)
        inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        if op == AFFINE_NEAREST:  # the pixel the point falls in
            cell = (tl.minimum(tl.maximum(tl.floor(py), 0.0), height - 1) * width
                    + tl.minimum(tl.maximum(tl.floor(px), 0.0), width - 1)).to(tl.int32)
            r = tl.load(r_ptr + cell, mask=mask, other=0).to(tl.float32)
            g = tl.load(g_ptr + cell, mask=mask, other=0).to(tl.float32)
            b = tl.load(b_ptr + cell, mask=mask, other=0).to(tl.float32)
        else:
            # the reference's grid (float64 -> float32), unnormalised as grid_sample does without aligned corners
            ix = (((2.0 * px / width - 1.0).to(tl.float32) + 1.0) * W.to(tl.float32) - 1.0) * 0.5
            iy = (((2.0 * py / height - 1.0).to(tl.float32) + 1.0) * H.to(tl.float32) - 1.0) * 0.5
            if op == AFFINE_BILINEAR:
                r = _bilinear(r_ptr, ix, iy, H, W, mask)
                g = _bilinear(g_ptr, ix, iy, H, W, mask)
                b = _bilinear(b_ptr, ix, iy, H, W, mask)
            else:
                r = _bicubic(r_ptr, ix, iy, H, W, mask)
                g = _bicubic(g_ptr, ix, iy, H, W, mask)
                b = _bicubic(b_ptr, ix, iy, H, W, mask)
            r = tl.minimum(tl.maximum(tl.floor(r + 0.5), 0.0), 255.0)
            g = tl.minimum(tl.maximum(tl.floor(g + 0.5), 0.0), 255.0)
            b = tl.minimum(tl.maximum(tl.floor(b + 0.5), 0.0), 255.0)
        r = tl.where(inside, r, tl.load(fill_ptr))
        g = tl.where(inside, g, tl.load(fill_ptr + 1))
        b = tl.where(inside, b, tl.load(fill_ptr + 2))
    o_ptr = out_ptr + image.to(tl.int64) * 3 * hw
    tl.store(o_ptr + offs, r.to(tl.uint8), mask=mask)
    tl.store(o_ptr + hw + offs, g.to(tl.uint8), mask=mask)
    tl.store(o_ptr + 2 * hw + offs, b.to(tl.uint8), mask=mask)


# The whole-image statistics of auto-contrast, equalize and contrast, from per-image histograms: 256 levels of R, G, B
# and Pillow's L, counted by _image_histograms_kernel and turned into the layer kernel's inputs by
# _image_statistics_kernel, only for the images whose op reads them (two launches for any mix of ops).
LEVELS = tl.constexpr(256)
HIST_ROWS = tl.constexpr(4)  # R, G, B, L
HIST_BLOCKS = tl.constexpr(8)  # pixel blocks a histogram program counts before adding its counts to the image's


@triton.jit(do_not_specialize=["H", "W"])
def _image_histograms_kernel(x_ptr, params_ptr, hist_ptr, H, W, BLOCK: tl.constexpr):
    image = tl.program_id(1)
    op = tl.load(params_ptr + image * PARAMS).to(tl.int32)
    if (op == AUTO_CONTRAST) | (op == EQUALIZE) | (op == CONTRAST):
        hw = H * W
        r_ptr = x_ptr + image.to(tl.int64) * 3 * hw
        hist = hist_ptr + image * HIST_ROWS * LEVELS
        zeros = tl.zeros([2 * LEVELS], dtype=tl.int32)
        hr, hg, hb, hl = zeros, zeros, zeros, zeros
        for i in tl.static_range(HIST_BLOCKS):
            offs = (tl.program_id(0) * HIST_BLOCKS + i) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < hw
            r = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.int32)
            g = tl.load(r_ptr + hw + offs, mask=mask, other=0).to(tl.int32)
            b = tl.load(r_ptr + 2 * hw + offs, mask=mask, other=0).to(tl.int32)
            if op == CONTRAST:
                grey = (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16
                hl += tl.histogram(tl.where(mask, grey, LEVELS), 2 * LEVELS)
            else:
                hr += tl.histogram(tl.where(mask, r, LEVELS), 2 * LEVELS)
                hg += tl.histogram(tl.where(mask, g, LEVELS), 2 * LEVELS)
                hb += tl.histogram(tl.where(mask, b, LEVELS), 2 * LEVELS)
        bins = tl.arange(0, 2 * LEVELS)
        stored = bins < LEVELS
        if op == CONTRAST:
            tl.atomic_add(hist + 3 * LEVELS + bins, hl, mask=stored)
        else:
            tl.atomic_add(hist + bins, hr, mask=stored)
            tl.atomic_add(hist + LEVELS + bins, hg, mask=stored)
            tl.atomic_add(hist + 2 * LEVELS + bins, hb, mask=stored)


@triton.jit(do_not_specialize=["pixels"])
def _image_statistics_kernel(params_ptr, hist_ptr, contrast_ptr, stretch_ptr, lut_ptr, pixels):
    image = tl.program_id(0)
    op = tl.load(params_ptr + image * PARAMS).to(tl.int32)
    hist = hist_ptr + image * HIST_ROWS * LEVELS
    levels = tl.arange(0, LEVELS)
    if op == CONTRAST:
        # the mean L rounded half up, in integers: floor(sum / n + 1/2) = (2 sum + n) // (2 n)
        total = tl.sum(tl.load(hist + 3 * LEVELS + levels).to(tl.int64) * levels)
        n = pixels.to(tl.int64)
        tl.store(contrast_ptr + image, ((2 * total + n) // (2 * n)).to(tl.float32))
    elif op == AUTO_CONTRAST:
        for channel in tl.static_range(3):
            present = tl.load(hist + channel * LEVELS + levels) > 0
            lo = tl.min(tl.where(present, levels, LEVELS), axis=0)
            hi = tl.max(tl.where(present, levels, -1), axis=0)
            scale = tl.math.div_rn(255.0, tl.maximum(hi - lo, 1).to(tl.float32))
            s = stretch_ptr + image * 9 + channel * 3
            tl.store(s, scale)
            tl.store(s + 1, lo.to(tl.float32) * scale)
            tl.store(s + 2, (hi > lo).to(tl.float32))
    elif op == EQUALIZE:
        for channel in tl.static_range(3):
            counts = tl.load(hist + channel * LEVELS + levels)
            last = tl.max(tl.where(counts > 0, levels, -1), axis=0)  # the highest level present
            step = (pixels - tl.sum(tl.where(levels == last, counts, 0), axis=0)) // 255
            before = tl.cumsum(counts, axis=0) - counts  # pixels below each level
            lut = tl.minimum((step // 2 + before) // tl.maximum(step, 1), 255)
            tl.store(lut_ptr + image * 768 + channel * LEVELS + levels, tl.where(step > 0, lut, levels))
