"""Model families; importing this package registers every vitzoo model with timm."""
from . import efficientvit, vit  # noqa: F401
