"""FEM's output: the free energy restored from the prior's read, mixed with the mean by the gates.

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the autograd function and :func:`free_energy_mix`.
"""
from .function import free_energy_mix
from .reference import free_energy_mix_reference, free_energy_reads

__all__ = ["free_energy_mix", "free_energy_mix_reference", "free_energy_reads"]
