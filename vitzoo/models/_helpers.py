"""Helpers shared by the zoo's model families."""
from __future__ import annotations

_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "state_dict")


def check_pretrained_available(variant: str, pretrained: bool, kwargs: dict) -> None:
    """Raise a clear error for ``pretrained=True`` when no weights source was given.

    The zoo publishes no weights yet, and timm would otherwise only log a warning and return a randomly
    initialised model, which is easy to miss.
    """
    if not pretrained:
        return
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        if cfg is None:
            continue
        cfg = cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {})
        if any(cfg.get(source) for source in _WEIGHT_SOURCES):
            return
    raise ValueError(
        f"{variant} has no published weights; pass your own with timm.create_model('{variant}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='path/to/weights.safetensors')) or use checkpoint_path=..."
    )
