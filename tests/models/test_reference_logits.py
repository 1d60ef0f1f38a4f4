"""Every public model computes the logits it computed when the reference values were recorded: a regression guard,
not a correctness check (the values are the code's own output; the mixers and kernels are checked against float64
forms in tests/layers and tests/ops).

Weights are set from the parameter names (a generator seeded per name), not from the models' initialisers, so the
check follows the computation and survives changes in the order modules are built; a renamed parameter, a changed
mixer or a changed backbone all fail it. Regenerate deliberately, after a change that is meant to alter the numbers:
``python tests/models/test_reference_logits.py --write``.
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import pytest
import timm
import torch

import vitzoo

REFERENCE = Path(__file__).parents[1] / "data" / "reference_logits.json"
LOGITS_KEPT = 16  # logits compared per image, plus a sum over all of them


def _set_weights(model: torch.nn.Module) -> None:
    """Deterministic weights from each parameter's name: norms near 1, everything else small."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            values = torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.02
            if param.ndim == 1 and name.endswith("weight"):  # norm scales
                values += 1.0
            param.copy_(values.to(param.dtype))


def reference_logits(name: str) -> list[list[float]]:
    """Logits (the first ``LOGITS_KEPT`` and their total) of ``name`` with name-seeded weights on a seeded batch."""
    model = timm.create_model(name).eval()
    _set_weights(model)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x).double()
    return [row[:LOGITS_KEPT].tolist() + [row.sum().item()] for row in out]


def _models() -> list[str]:
    return vitzoo.list_models()


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[list[float]]]:
    return json.loads(REFERENCE.read_text())


def test_every_public_model_has_reference_logits(recorded):
    assert sorted(recorded) == _models()


@pytest.mark.parametrize("name", _models())
def test_logits_match_recorded_reference(name, recorded):
    torch.manual_seed(0)  # stochastic layers are off in eval; this keeps anything else fixed too
    expected = torch.tensor(recorded[name], dtype=torch.float64)
    actual = torch.tensor(reference_logits(name), dtype=torch.float64)
    torch.testing.assert_close(
        actual, expected, rtol=1e-4, atol=1e-4,
        msg=lambda text: f"{name}'s logits moved since they were recorded ({text}). If the change was meant to alter "
                         "the numbers and the float64 tests of tests/layers and tests/ops pass, record them again "
                         "with --write; otherwise it is a regression.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record the current logits in {REFERENCE}")
    args = parser.parse_args()
    values = {}
    for model_name in _models():
        torch.manual_seed(0)
        values[model_name] = reference_logits(model_name)
        print(model_name, values[model_name][0][:3])
    if args.write:
        REFERENCE.write_text(json.dumps(values, indent=0) + "\n")
