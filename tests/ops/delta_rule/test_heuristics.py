"""The delta rule's launch settings: the per-shape rules, and kernels launched with settings other than the defaults
against the float64 reference (under the Triton interpreter)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vitzoo.ops.delta_rule import heuristics
from vitzoo.ops.delta_rule.heuristics import DEFAULT_LAUNCH, LaunchSettings
from vitzoo.ops.testing import relative_error
from vitzoo.ops.utils import cdiv

from .cases import bidirectional_recurrent, make_inputs, needs_interpreter


def test_recurrences_split_the_value_dim_only_to_give_every_sm_a_program(monkeypatch):
    """Value blocks of the two recurrences: the whole value dim (up to seq_bv_max) while (batch, head, direction)
    sequences alone give each of the S multiprocessors a program; halved below that, down to seq_bv_min."""
    monkeypatch.setattr(heuristics, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert heuristics.block_sizes(64, 64, 192, gpu) == (64, 64, 64)  # N=3137 in the benchmark: 16 x 6 x 2 sequences
    assert heuristics.block_sizes(64, 64, 131, gpu) == (64, 64, 32)
    assert heuristics.block_sizes(64, 64, 48, gpu) == (64, 64, DEFAULT_LAUNCH.seq_bv_min)  # N=12545: 4 x 6 x 2
    assert heuristics.block_sizes(48, 128, 192, gpu) == (64, 128, 64)  # value dims above 64 always take blocks of 64
    assert heuristics.block_sizes(64, 64, 48, gpu, LaunchSettings(seq_bv_min=16)) == (64, 64, 16)
    assert heuristics.block_sizes(64, 64, 48, gpu, LaunchSettings(seq_bv_min=64)) == (64, 64, 64)
    assert heuristics.block_sizes(64, 128, 192, gpu, LaunchSettings(seq_bv_max=128)) == (64, 128, 128)


def test_inference_runs_one_pass_only_while_its_sequences_give_every_sm_a_program(monkeypatch):
    monkeypatch.setattr(heuristics, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert heuristics.one_pass_inference(768, 64, gpu)  # DeltaNet-T at 224 px: batch 256 x 3 heads
    assert heuristics.one_pass_inference(147, 64, gpu)  # at 512 px: batch 49
    assert not heuristics.one_pass_inference(36, 64, gpu)  # at 1024 px: batch 12
    assert heuristics.one_pass_inference(66, 128, gpu)  # two value blocks per sequence
    assert not heuristics.one_pass_inference(66, 128, gpu, LaunchSettings(seq_bv_max=128))
    assert heuristics.one_pass_inference(36, 64, gpu, LaunchSettings(one_pass_fill=0))
    assert not heuristics.one_pass_inference(147, 64, gpu, LaunchSettings(one_pass_fill=2))


def test_chunk_is_the_settings_chunk_or_the_next_power_of_two_of_a_shorter_sequence():
    assert [heuristics.chunk_size(n) for n in (1, 17, 32, 197)] == [16, 32, 32, 32]
    assert [heuristics.chunk_size(n, one_pass=True) for n in (1, 17, 197)] == [16, 16, 16]
    assert heuristics.chunk_size(197, LaunchSettings(inference_chunk=32), one_pass=True) == 32
    assert [heuristics.chunk_size(n, LaunchSettings(chunk=64)) for n in (1, 17, 33, 197)] == [16, 32, 64, 64]
    assert heuristics.chunk_size(197, LaunchSettings(chunk=16)) == 16


def test_settings_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LAUNCH.chunk = 64
    for bad in (dict(chunk=24), dict(chunk=8), dict(seq_bv_max=48), dict(seq_bv_min=8), dict(num_warps=3),
                dict(inference_chunk=12), dict(one_pass_fill=-1)):
        with pytest.raises(ValueError, match="LaunchSettings"):
            LaunchSettings(**bad)


@needs_interpreter
@pytest.mark.parametrize("launch,chunk,value_blocks", [
    (LaunchSettings(chunk=16), 16, 1),
    (LaunchSettings(chunk=64, wy_num_warps=4, grads_num_warps=8), 64, 1),
    (LaunchSettings(seq_bv_max=16, num_warps=2), 32, 3),
], ids=["chunk16", "chunk64", "value_blocks16"])
def test_interp_other_launch_settings_match_the_float64_reference(launch, chunk, value_blocks):
    """The host launches with non-default settings, forward and backward, against the float64 recurrent reference:
    the settings change the launch (the chunk, the recurrences' value blocks over dv=40) and nothing in the result."""
    from vitzoo.ops.delta_rule.function import _delta_rule_bwd, _delta_rule_fwd

    b, n, h, d, dv = 1, 70, 2, 16, 40
    assert heuristics.chunk_size(n, launch) == chunk
    assert cdiv(dv, heuristics.block_sizes(d, dv, b * h * 2, torch.device("cpu"), launch)[2]) == value_blocks
    q, k, v, beta = make_inputs(b, n, h, d, dv=dv, seed=3)
    grad = torch.randn(b, n, h, dv, dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta)]
    ref = bidirectional_recurrent(*leaves)
    ref.backward(grad)

    inputs = [t.float() for t in (q, k, v, beta)]
    scale = d ** -0.5
    o, *saved = _delta_rule_fwd(*inputs, scale, True, 0, 2, direct_launch=True, launch=launch)
    assert saved[-1].shape[-1] == chunk  # T per chunk, saved for the backward
    grads = _delta_rule_bwd(*inputs, grad.float(), *saved, scale, True, 0, 2, direct_launch=True, launch=launch)
    errors = {"o": relative_error(o, ref)}
    errors |= {f"d{x}": relative_error(g, w.grad) for x, g, w in zip("qkvb", grads, leaves, strict=True)}
    assert all(e < 1e-5 for e in errors.values()), errors
