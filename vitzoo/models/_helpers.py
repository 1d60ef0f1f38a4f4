"""Helpers shared by the zoo's model families."""
from __future__ import annotations

from pathlib import Path

import torch
from timm.layers import register_notrace_function

_IMAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "state_dict")


def checkpoint_format(path: Path) -> str:
    """``'torch'`` (a zip archive, or a legacy pickle, as ``torch.save`` writes) or ``'safetensors'`` (an 8-byte header
    length, then a JSON header that fits in the file), from the first bytes of ``path``.

    Raises:
        ValueError: one line, for a path that is missing, unreadable or neither kind of checkpoint.
    """
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"
    raise ValueError(f"{path} is not a PyTorch (.pth / .pt) or safetensors checkpoint")


def check_pretrained_available(variant: str, pretrained: bool, kwargs: dict) -> None:
    """Raise a clear error for ``pretrained=True`` when no weights source was given, or the weights file given is
    missing or no checkpoint.

    The zoo publishes no weights yet, and timm would otherwise only log a warning and return a randomly
    initialised model, which is easy to miss; a wrong file would fail deep in the unpickler.
    """
    if not pretrained:
        return
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        if cfg is None:
            continue
        cfg = cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {})
        if any(cfg.get(source) for source in _WEIGHT_SOURCES):
            if cfg.get("file"):
                try:
                    checkpoint_format(Path(cfg["file"]))
                except ValueError as error:
                    raise ValueError(f"{variant}: {error}") from None
            return
    raise ValueError(
        f"{variant} has no published weights; pass your own with timm.create_model('{variant}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='path/to/weights.safetensors')) or use checkpoint_path=..."
    )


def model_name(model: torch.nn.Module) -> str:
    """The registered name of ``model`` (from its pretrained_cfg), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


# A leaf for timm's FX feature extraction: its checks branch on the input's shape and dtype, which FX cannot trace.
@register_notrace_function
def check_images(x: torch.Tensor, in_chans: int, name: str, weight_dtype: torch.dtype | None = None) -> None:
    """Turn shape/dtype mistakes into one-line ValueErrors naming the model (``name``) and what it expects;
    ``weight_dtype``: the model's, which an input outside autocast must match."""
    if not isinstance(x, torch.Tensor):
        hint = "; convert it with torch.from_numpy" if type(x).__module__.startswith("numpy") else ""
        raise ValueError(f"{name} expects a torch.Tensor of images (B, C, H, W), got {type(x).__name__}{hint}")
    if x.dim() != 4:
        raise ValueError(f"{name} expects images of shape (B, C, H, W); got {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        hint = ("it looks channels-last (B, H, W, C): pass x.permute(0, 3, 1, 2)" if x.shape[-1] == in_chans
                else f"create it with in_chans={x.shape[1]}")
        raise ValueError(f"{name} expects {in_chans} input channel(s), got {x.shape[1]}; {hint}")
    if x.dtype not in _IMAGE_DTYPES:
        raise ValueError(f"{name} expects a floating-point input (float16/bfloat16/float32/float64), got {x.dtype}")
    if weight_dtype is not None and x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} has {weight_dtype} weights but got a {x.dtype} input; convert it with "
                         f"x.to({weight_dtype}) or run the model under torch.autocast")


class CheckpointLayoutError(ValueError):
    """A checkpoint whose keys do not fit the model; the message is one line naming the keys at fault."""


# Wrappers of the training scripts' checkpoints, plain weights before EMA ones.
_STATE_DICT_WRAPPERS = ("model", "state_dict", "model_ema", "state_dict_ema")


def unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The weights inside a training checkpoint: the first of ``model`` / ``state_dict`` / ``model_ema`` /
    ``state_dict_ema`` that holds a dict (else ``checkpoint`` itself), with DDP's ``module.`` prefix removed."""
    for key in _STATE_DICT_WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _key_list(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def check_state_dict_keys(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, layout: str) -> None:
    """Raise :class:`CheckpointLayoutError` unless ``state_dict`` has exactly ``model``'s keys."""
    expected = model.state_dict().keys()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    if missing or unexpected:
        parts = [f"missing {_key_list(missing)}"] if missing else []
        parts += [f"unexpected {_key_list(unexpected)}"] if unexpected else []
        raise CheckpointLayoutError(
            f"{model_name(model)}: the checkpoint ({layout} layout) does not fit the model: {'; '.join(parts)}"
        )
