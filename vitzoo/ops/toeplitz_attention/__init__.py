"""Toeplitz-weighted attention o_t = sum_s T[t, s] (q_t . k_s) v_s with T[t, s] a function of s - t (H3's long
convolution in its attention form): reference, kernels, launch shape, entry point.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the autograd function and :func:`toeplitz_attention`.
"""
from .function import runs_kernels, toeplitz_attention
from .reference import toeplitz_attention_reference, toeplitz_from_lags

__all__ = ["runs_kernels", "toeplitz_attention", "toeplitz_attention_reference", "toeplitz_from_lags"]
