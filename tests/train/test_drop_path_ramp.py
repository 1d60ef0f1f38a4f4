"""drop_path_ramp: EfficientViT's scheduled stochastic depth, every drop-path rate times the progress after warm-up."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
from timm.layers import DropPath

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.train.config import load_config
from vitzoo.train.factories import DropPathRamp


def _rates(model) -> list[float]:
    return [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]


def test_rates_are_zero_through_warm_up_then_rise_linearly_to_the_models_own() -> None:
    model = timm.create_model("softmax_deit_tiny_patch16_224", img_size=32, patch_size=8, depth=3,
                              drop_path_rate=0.2)
    full = _rates(model)
    assert max(full) == pytest.approx(0.2) and min(full) > 0
    ramp = DropPathRamp(model, warmup_updates=10, total_updates=30)
    for updates, progress in [(0, 0.0), (10, 0.0), (15, 0.25), (20, 0.5), (30, 1.0), (45, 1.0)]:
        ramp.step(updates)
        assert _rates(model) == pytest.approx([rate * progress for rate in full]), updates


def test_the_training_loop_ramps_before_every_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_runs import write_fashion_mnist_idx

    from vitzoo.train.loop import train

    seen = []
    real_step = DropPathRamp.step
    monkeypatch.setattr(DropPathRamp, "step", lambda self, n: seen.append((n, max(_rates_of(self)))) or
                        real_step(self, n))
    data = write_fashion_mnist_idx(tmp_path / "fm", train=96, val=64)
    config = load_config(None, ["model_kwargs={embed_dim: 32, depth: 2, num_heads: 2}", "precision=fp32",
                                "progress=false", "dataset=fashion_mnist", "img_size=28", "patch_size=7",
                                "train_subset=96", "batch_size=32", "epochs=2", "warmup_epochs=1", "lr=0.001",
                                "workers=0", "drop_path=0.2", "drop_path_ramp=true", "val_subset=64"],
                         model="softmax_deit_tiny_patch16_224", output=str(tmp_path / "run"), data_dir=str(data))
    assert train(config)["num_updates"] == 6
    # 3 updates an epoch: the rates before update n are those of progress (n - 3) / 3, the model's 0.2 at most
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert [rate for _, rate in seen] == pytest.approx([0.2, 0.0, 0.0, 0.0, 0.0, 0.2 / 3])


def _rates_of(ramp: DropPathRamp) -> list[float]:
    """The rates the modules hold before a step (the first step sees the model's own)."""
    return [module.drop_prob for module, _ in ramp.paths]
