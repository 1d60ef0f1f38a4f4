"""The Triton kernel of normalisation and random erasing: a program owns a tile of one (image, channel) plane, reads
uint8 and writes float32 (or rounds to bfloat16 or float16 once, storing); in an image with a rectangle it draws the
fill of the tile's pixels inside it from the reference's counter-based hash (integer arithmetic in int64, exact), so
no noise tensor is written or read. With a batch mix it computes the mirrored image's tile the same way and blends or
boxes the two, so mixup costs no pass of its own over the float32 batch."""
import triton
import triton.language as tl

from .reference import ERASE_MODES

CONST = tl.constexpr(ERASE_MODES.index("const"))  # the kernel's MODE is the mode's place in ERASE_MODES
RAND = tl.constexpr(ERASE_MODES.index("rand"))
BLEND, BOX = tl.constexpr(1), tl.constexpr(2)  # the kernel's MIX: 0 no mix, 1 mixup, 2 cutmix


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _hash(counter, key):
    return _mix32(_mix32((counter & 0xFFFFFFFF) ^ key) ^ (counter >> 32))


@triton.jit
def _normal(index, key):
    u1 = (_hash(2 * index, key).to(tl.float32) + 1.0) * 2.3283064365386963e-10
    u2 = _hash(2 * index + 1, key).to(tl.float32) * 2.3283064365386963e-10
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def _plane_tile(x_ptr, rect_ptr, mean_ptr, std_ptr, image, channel, C, W, hw, offs, mask, key, ERASE: tl.constexpr,
                MODE: tl.constexpr):
    """The normalised (and erased) values of pixels ``offs`` of one (image, channel) plane."""
    plane = image * C + channel
    base = plane.to(tl.int64) * hw
    v = tl.load(x_ptr + base + offs, mask=mask, other=0).to(tl.float32)
    # to_tensor then Normalize, each division correctly rounded as PyTorch's
    value = tl.math.div_rn(tl.math.div_rn(v, 255.0) - tl.load(mean_ptr + channel), tl.load(std_ptr + channel))
    if ERASE:
        height = tl.load(rect_ptr + image * 4 + 2)
        if height > 0:
            top = tl.load(rect_ptr + image * 4)
            left = tl.load(rect_ptr + image * 4 + 1)
            width = tl.load(rect_ptr + image * 4 + 3)
            row = offs // W
            col = offs % W
            inside = (row >= top) & (row < top + height) & (col >= left) & (col < left + width)
            if MODE == CONST:
                fill = tl.zeros_like(value)
            elif MODE == RAND:
                fill = tl.zeros_like(value) + _normal(plane.to(tl.int64), key)
            else:
                fill = _normal(base + offs, key)
            value = tl.where(inside, fill, value)
    return value


@triton.jit
def _bf16_bits(value):
    """float32 ``value`` rounded to the nearest bfloat16, ties to even, as its 16 bits: in integers, because the
    interpreter's bfloat16 conversion truncates where the GPU's rounds (the values are finite)."""
    bits = value.to(tl.uint32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)


@triton.jit(do_not_specialize=["B", "C", "H", "W", "key", "lam", "lam_other", "top", "bottom", "left", "right"])
def _normalize_erase_kernel(x_ptr, out_ptr, rect_ptr, mean_ptr, std_ptr, B, C, H, W, key, lam, lam_other, top,
                            bottom, left, right, ERASE: tl.constexpr, MODE: tl.constexpr, MIX: tl.constexpr,
                            BLOCK: tl.constexpr):
    plane = tl.program_id(1)  # image * C + channel
    image = plane // C
    channel = plane % C
    hw = H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    value = _plane_tile(x_ptr, rect_ptr, mean_ptr, std_ptr, image, channel, C, W, hw, offs, mask, key, ERASE, MODE)
    # the same pixels of the image at the mirrored place in the batch, normalised and erased too
    if MIX == BLEND:  # timm's x * lam + x.flip(0) * (1 - lam), each product rounded
        other = _plane_tile(x_ptr, rect_ptr, mean_ptr, std_ptr, B - 1 - image, channel, C, W, hw, offs, mask, key,
                            ERASE, MODE)
        value = value * lam + other * lam_other
    elif MIX == BOX:  # only the box's pixels are read from the mirrored image
        row = offs // W
        col = offs % W
        box = (row >= top) & (row < bottom) & (col >= left) & (col < right)
        other = _plane_tile(x_ptr, rect_ptr, mean_ptr, std_ptr, B - 1 - image, channel, C, W, hw, offs, mask & box,
                            key, ERASE, MODE)
        value = tl.where(box, other, value)
    if out_ptr.dtype.element_ty == tl.bfloat16:
        value = _bf16_bits(value).to(tl.bfloat16, bitcast=True)
    tl.store(out_ptr + plane.to(tl.int64) * hw + offs, value, mask=mask)
