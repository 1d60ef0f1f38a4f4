"""vitzoo: linear-attention vision transformers as first-class timm models.

``import vitzoo`` registers every model with timm, so ``timm.create_model('inline_deit_tiny_patch16_224')`` works.
"""
from . import models  # noqa: F401  (registers the models with timm)

__version__ = "0.1.0"
