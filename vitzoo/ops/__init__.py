"""Fused token-mixing ops with their PyTorch references, and the training pipeline's device stage.

One package per op (``linear_attention``, ``delta_rule``, ``local_conv``, ``layer_norm`` with RMS norm,
``zeros_weights``, ``free_energy``, ``ssm_kernel``, ``toeplitz_attention``, ``batch_norm_gelu_add``,
``kernel_predictor``; ``resized_crop``, ``rand_augment`` and ``normalize_erase``), each split into ``reference``
(the specification, in PyTorch), ``kernels`` (Triton), ``heuristics`` (launch settings) and ``function`` (custom
ops, autograd function, public entry points); ``utils`` holds the backend selection and what the ops share. The
reference is the specification; the kernel must equal it. ``docs/kernels.md`` describes the design.

The public functions are re-exported here, so ``vitzoo.ops.linear_attention`` and ``vitzoo.ops.local_conv`` are the
functions; their packages are reached with ``from vitzoo.ops.linear_attention import ...`` or ``importlib``.
"""
from .batch_norm_gelu_add import batch_norm_gelu_add, batch_norm_gelu_add_reference
from .delta_rule import (
    delta_rule_bidirectional,
    delta_rule_bidirectional_reference,
    delta_rule_chunked_reference,
    delta_rule_recurrent_reference,
)
from .free_energy import (
    free_energy_mix,
    free_energy_mix_reference,
    free_energy_reads,
    free_energy_values,
    free_energy_values_reference,
)
from .kernel_predictor import predict_local_kernels, predict_local_kernels_reference
from .layer_norm import (
    add_layer_norm,
    add_layer_norm_reference,
    layer_norm,
    layer_norm_reference,
    rms_norm,
    rms_norm_reference,
)
from .linear_attention import FEATURE_MAPS, linear_attention, linear_attention_reference
from .local_conv import local_conv, local_conv_reference
from .normalize_erase import normalize_erase, normalize_erase_reference
from .rand_augment import rand_augment_layer, rand_augment_layer_reference
from .resized_crop import resized_crops, resized_crops_reference
from .ssm_kernel import ssm_kernels, ssm_kernels_reference, ssm_toeplitz_lags, ssm_toeplitz_lags_reference
from .toeplitz_attention import toeplitz_attention, toeplitz_attention_reference
from .utils import get_backend, kernel_backend, set_backend, triton_available, use_backend
from .zeros_weights import zeros_weights, zeros_weights_reference

__all__ = [
    "FEATURE_MAPS",
    "batch_norm_gelu_add",
    "batch_norm_gelu_add_reference",
    "delta_rule_bidirectional",
    "delta_rule_bidirectional_reference",
    "delta_rule_chunked_reference",
    "delta_rule_recurrent_reference",
    "free_energy_mix",
    "free_energy_mix_reference",
    "free_energy_reads",
    "free_energy_values",
    "free_energy_values_reference",
    "get_backend",
    "kernel_backend",
    "add_layer_norm",
    "add_layer_norm_reference",
    "layer_norm",
    "layer_norm_reference",
    "linear_attention",
    "linear_attention_reference",
    "local_conv",
    "local_conv_reference",
    "normalize_erase",
    "normalize_erase_reference",
    "predict_local_kernels",
    "predict_local_kernels_reference",
    "rand_augment_layer",
    "rand_augment_layer_reference",
    "resized_crops",
    "resized_crops_reference",
    "rms_norm",
    "rms_norm_reference",
    "set_backend",
    "ssm_kernels",
    "ssm_kernels_reference",
    "ssm_toeplitz_lags",
    "ssm_toeplitz_lags_reference",
    "toeplitz_attention",
    "toeplitz_attention_reference",
    "triton_available",
    "use_backend",
    "zeros_weights",
    "zeros_weights_reference",
]
