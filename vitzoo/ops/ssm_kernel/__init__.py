"""The convolution kernels of S4D-Lin diagonal state-space models (H3's long-convolution kernels): reference, kernels,
launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the autograd functions, :func:`ssm_kernels` and :func:`ssm_toeplitz_lags`.
"""
from .function import ssm_kernels, ssm_toeplitz_lags
from .reference import ssm_kernels_reference, ssm_toeplitz_lags_reference, toeplitz_lag_vector

__all__ = ["ssm_kernels", "ssm_kernels_reference", "ssm_toeplitz_lags", "ssm_toeplitz_lags_reference",
           "toeplitz_lag_vector"]
