"""The contracts every mixer shares through ``vitzoo.layers.base.TokenMixer``: constructor, grid check, dropout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dispatch_counting import OpRecorder

from vitzoo.layers import MIXERS, create_mixer, get_mixer_class
from vitzoo.layers.base import Dropout, TokenMixer

DIM, HEADS, GRID = 48, 3, (3, 5)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_constructor_contract(name):
    assert issubclass(get_mixer_class(name), TokenMixer)
    with pytest.raises(TypeError):
        create_mixer(name, 32, num_heads=2, not_an_option=1)
    with pytest.raises(ValueError, match="divisible"):
        create_mixer(name, 30, num_heads=4)
    mixer = create_mixer(name, DIM, num_heads=HEADS, device="meta")
    assert all(p.device.type == "meta" for p in mixer.parameters())


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_grid_mismatch_is_a_clear_error(name):
    mixer = create_mixer(name, DIM, num_heads=HEADS)
    with pytest.raises(ValueError, match="needs 16"):
        mixer(torch.randn(1, 10, DIM), GRID, 1)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_attn_drop_follows_the_shared_rule(name):
    """Eval mode ignores both dropouts. In training, softmax attention drops attention probabilities; every other
    mixer drops its mixed values before ``proj``: out = proj(dropout(mix(x)))."""
    torch.manual_seed(0)
    mixer = create_mixer(name, DIM, num_heads=HEADS, qkv_bias=True, attn_drop=0.5)
    plain = create_mixer(name, DIM, num_heads=HEADS, qkv_bias=True)
    plain.load_state_dict(mixer.state_dict())
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM)
    with torch.no_grad():
        torch.testing.assert_close(mixer.eval()(x, GRID, 1), plain.eval()(x, GRID, 1), rtol=0, atol=0)
        mixer.train()
        torch.manual_seed(1)
        out = mixer(x, GRID, 1)
        torch.manual_seed(1)
        values = mixer.mix(x, GRID, 1)
        if name == "softmax":
            # dropped probabilities: the values are not a masked copy of the undropped mix
            assert mixer.drops_attention_probs and not torch.allclose(out, plain.train()(x, GRID, 1))
        else:
            assert not mixer.drops_attention_probs
            torch.testing.assert_close(out, mixer.proj(F.dropout(values, 0.5, training=True)))


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_mixed_values_come_in_the_dtype_proj_computes_in(name):
    """Under autocast the mixed values are 16-bit, as ``proj`` would cast them (no widening to the fp32 residual
    stream's dtype and back); without autocast they keep ``x``'s dtype."""
    mixer = create_mixer(name, DIM, num_heads=HEADS)
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM)
    with torch.no_grad():
        assert mixer.mix(x, GRID, 1).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert mixer.mix(x, GRID, 1).dtype == torch.bfloat16


@pytest.mark.parametrize("p, training", [(0.0, True), (0.0, False), (0.3, False)])
def test_dropout_with_nothing_to_drop_hands_back_its_input_without_an_op(p, training):
    drop = Dropout(p).train(training)
    x = torch.randn(4, 5)
    # under inference mode (as inference runs) nn.Dropout's no-op reaches the dispatcher as an aten op
    with torch.inference_mode(), OpRecorder() as dispatches:
        out = drop(x)
    assert out is x and dispatches.ops == []


def test_dropout_drops_as_nn_dropout_in_training():
    x = torch.randn(64, 64)
    torch.manual_seed(0)
    expected = torch.nn.Dropout(0.3)(x)
    torch.manual_seed(0)
    out = Dropout(0.3)(x)
    assert torch.equal(out, expected) and (out == 0).any()
