"""Fixtures of the linear-attention tests."""
import pytest
import torch

from vitzoo.ops import set_backend

from .cases import function


@pytest.fixture(autouse=True)
def _triton_backend():
    set_backend("triton")


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels must fully overwrite starts as NaN."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(function, "_empty", nan_empty)

