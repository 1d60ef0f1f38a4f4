"""Model families; importing this package registers every vitzoo model with timm."""
import difflib

import timm

from . import vitzoo_efficientvit, vitzoo_vit

MODEL_MODULES = tuple(m.__name__.rsplit(".", 1)[-1] for m in (vitzoo_vit, vitzoo_efficientvit))


def list_models(pattern: str = "") -> list[str]:
    """All vitzoo model names registered with timm, optionally filtered by an fnmatch pattern (e.g. ``'inline_*'``)."""
    return sorted(name for module in MODEL_MODULES for name in timm.list_models(pattern, module=module))


def similar_models_hint(name: str, count: int = 5) -> str:
    """For a misspelt model name's error: `` (similar: a, b, ...)`` with up to ``count`` registered timm/vitzoo
    names closest to ``name``, or an empty string when none is close."""
    similar = difflib.get_close_matches(name, timm.list_models(), n=count, cutoff=0.6)
    return f" (similar: {', '.join(similar)})" if similar else ""
