"""Model families; importing this package registers every vitzoo model with timm."""
from . import vit  # noqa: F401
