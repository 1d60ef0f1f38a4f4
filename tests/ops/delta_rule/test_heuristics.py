"""The delta rule's launch heuristics."""
import torch

from vitzoo.ops.delta_rule import heuristics


def test_recurrences_split_the_value_dim_only_to_give_every_sm_a_program(monkeypatch):
    """Value blocks of the two recurrences: the whole value dim (up to 64) while (batch, head, direction) sequences
    alone give each of the S multiprocessors a program; halved below that, down to SEQ_BV_MIN."""
    monkeypatch.setattr(heuristics, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert heuristics.block_sizes(64, 64, 192, gpu) == (64, 64, 64)  # N=3137 in the benchmark: 16 x 6 x 2 sequences
    assert heuristics.block_sizes(64, 64, 131, gpu) == (64, 64, 32)
    assert heuristics.block_sizes(64, 64, 48, gpu) == (64, 64, heuristics.SEQ_BV_MIN)  # N=12545: 4 x 6 x 2
    assert heuristics.block_sizes(48, 128, 192, gpu) == (64, 128, 64)  # value dims above 64 always take blocks of 64
