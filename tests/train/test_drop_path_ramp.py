"""drop_path_ramp: EfficientViT's scheduled stochastic depth, every drop-path rate times the progress after warm-up."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import DropPath

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.train.config import load_config
from vitzoo.train.factories import DropPathRamp, RampedDropPath


def _rates(model) -> list[float]:
    return [float(module.rate) if isinstance(module, RampedDropPath) else module.drop_prob
            for module in model.modules() if isinstance(module, (DropPath, RampedDropPath))]


def _tiny(drop_path_rate: float) -> torch.nn.Module:
    return timm.create_model("softmax_deit_tiny_patch16_224", img_size=32, patch_size=8, depth=3,
                             drop_path_rate=drop_path_rate)


def test_rates_are_zero_through_warm_up_then_rise_linearly_to_the_models_own() -> None:
    model = _tiny(0.2)
    full = _rates(model)
    assert max(full) == pytest.approx(0.2) and min(full) > 0
    ramp = DropPathRamp(model, warmup_updates=10, total_updates=30)
    for updates, progress in [(0, 0.0), (10, 0.0), (15, 0.25), (20, 0.5), (30, 1.0), (45, 1.0)]:
        ramp.step(updates)
        assert _rates(model) == pytest.approx([rate * progress for rate in full]), updates
    assert not any(isinstance(module, DropPath) for module in model.modules())


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_a_ramped_drop_path_drops_whole_samples_as_timms_does(scale_by_keep: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(4000, 3, 5, dtype=torch.float64)
    path = RampedDropPath(0.3, scale_by_keep)
    out = path(x)
    dropped = (out == 0).flatten(1).all(1)
    assert 0.27 < dropped.double().mean() < 0.33
    kept_scale = 1 / 0.7 if scale_by_keep else 1.0
    torch.testing.assert_close(out[~dropped], x[~dropped] * kept_scale, rtol=1e-6, atol=0)
    path.rate.fill_(0.0)
    assert torch.equal(path(x), x)
    path.rate.fill_(0.3)
    assert torch.equal(path.eval()(x), x)


def test_a_compiled_model_reads_each_rate_the_ramp_sets_without_recompiling() -> None:
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    model = _tiny(0.5)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = model.eval()(x)
    ramp = DropPathRamp(model.train(), warmup_updates=0, total_updates=10)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        ramp.step(0)  # every rate 0: the training forward is the evaluation's
        torch.testing.assert_close(compiled(x), reference)
        ramp.step(10)  # rates up to 0.5: some of the 8 samples' 3 branches dropped
        assert not torch.allclose(compiled(x), reference)
    assert counter.frame_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
def test_a_graphed_step_reads_each_rate_the_ramp_sets() -> None:
    from vitzoo.train.cuda_graph import graphed_training_forward

    torch.manual_seed(0)
    model = _tiny(0.5).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        reference = model.eval()(x)
    ramp = DropPathRamp(model.train(), warmup_updates=0, total_updates=10)
    forward = graphed_training_forward(model, x, dtype=None)
    ramp.step(0)
    out = forward(x)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), reference)
    ramp.step(10)
    out = forward(x)
    out.sum().backward()
    assert not torch.allclose(out.detach(), reference)


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
    return [float(module.rate) for module, _ in ramp.paths]
