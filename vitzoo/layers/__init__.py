"""Token mixers: every module maps (B, N, C) -> (B, N, C) and is built by name with :func:`create_mixer`.

Every mixer is a :class:`vitzoo.layers.base.TokenMixer`, which holds the contracts. Constructor:
``Mixer(dim, num_heads=..., qkv_bias=..., attn_drop=..., proj_drop=..., device=None, dtype=None, **family_options)``;
forward: ``mixer(x, grid_size=(H, W), num_prefix_tokens=P)`` with ``N == P + H * W``. ``attn_drop`` drops attention
probabilities in softmax attention and the mixed values before the output projection in every other mixer.

One module per mixer (``softmax``, ``linear``, ``inline``, ``quadratic_taylor``, ``zeros``, ``fem``, ``deltanet``,
``h3``), beside the pieces they share: ``local_conv`` (depthwise conv on the patch grid), ``long_conv`` (H3's
bidirectional long convolution), ``norms`` (16-bit norms), ``rope`` (axial RoPE), ``kept`` (values kept between
inference forwards: H3's, and the Linear layers' 16-bit weights). Mixer modules are imported lazily
so that ``import vitzoo`` stays cheap.
"""
from __future__ import annotations

import importlib

import torch.nn as nn

MIXERS: dict[str, str] = {
    "softmax": "softmax:SoftmaxAttention",
    "linear": "linear:ReLULinearAttention",
    "inline": "inline:InLineAttention",
    "qt": "quadratic_taylor:QuadraticTaylorAttention",
    "zeros": "zeros:ZeroSAttention",
    "fem": "fem:FreeEnergyMixer",
    "deltanet": "deltanet:BidirectionalDeltaNet",
    "h3": "h3:BidirectionalH3",
}


def get_mixer_class(name: str) -> type[nn.Module]:
    """Return the mixer class registered as ``name``."""
    if name not in MIXERS:
        raise ValueError(f"unknown token mixer {name!r}; choose one of {sorted(MIXERS)}")
    module_name, class_name = MIXERS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)


def create_mixer(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the mixer registered as ``name`` for width ``dim``."""
    return get_mixer_class(name)(dim, **kwargs)
