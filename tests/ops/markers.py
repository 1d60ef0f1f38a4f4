"""What the kernel tests share: where the kernels can run (CUDA, or the Triton interpreter on the CPU) and the skip
markers that follow from it."""
import pytest
import torch

from vitzoo.ops.utils import interpreting, triton_available

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = not HAS_CUDA and triton_available() and interpreting()
DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not (HAS_CUDA or INTERPRETED), reason="needs CUDA or the Triton interpreter")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
