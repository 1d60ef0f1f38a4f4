"""vitzoo: linear-attention vision transformers as first-class timm models.

``import vitzoo`` registers every model with timm, so ``timm.create_model('inline_deit_tiny_patch16_224')`` works.
"""
from .models import list_models  # importing the models registers them with timm

__all__ = ["list_models"]

__version__ = "0.1.0"
