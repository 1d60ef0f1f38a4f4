"""FEM's ops around its prior: the values the prior reads (clipped values and their shifted exponentials), and the
output (the free energy restored from the prior's read, mixed with the mean by the gates).

``reference``: the specification in PyTorch; ``kernels``: the Triton kernels; ``heuristics``: their launch shape;
``function``: the autograd functions, :func:`free_energy_values` and :func:`free_energy_mix`.
"""
from .function import free_energy_mix, free_energy_values
from .reference import free_energy_mix_reference, free_energy_reads, free_energy_values_reference

__all__ = ["free_energy_mix", "free_energy_mix_reference", "free_energy_reads", "free_energy_values",
           "free_energy_values_reference"]
