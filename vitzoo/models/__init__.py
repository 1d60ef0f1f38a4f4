"""Model families; importing this package registers every vitzoo model with timm."""
import timm

from . import vitzoo_efficientvit, vitzoo_vit

MODEL_MODULES = tuple(m.__name__.rsplit(".", 1)[-1] for m in (vitzoo_vit, vitzoo_efficientvit))


def list_models(pattern: str = "") -> list[str]:
    """All vitzoo model names registered with timm, optionally filtered by an fnmatch pattern (e.g. ``'inline_*'``)."""
    return sorted(name for module in MODEL_MODULES for name in timm.list_models(pattern, module=module))
