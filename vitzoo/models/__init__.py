"""Model families; importing this package registers every vitzoo model with timm."""
import timm

from . import efficientvit, vit

MODEL_MODULES = (vit.__name__.rsplit(".", 1)[-1], efficientvit.__name__.rsplit(".", 1)[-1])


def list_models(pattern: str = "") -> list[str]:
    """All vitzoo model names registered with timm, optionally filtered by an fnmatch pattern (e.g. ``'inline_*'``)."""
    return sorted(name for module in MODEL_MODULES for name in timm.list_models(pattern, module=module))
