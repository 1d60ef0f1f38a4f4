"""Parameter counts and GMACs of the paper variants against the papers' tables (within 3%)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm

import vitzoo  # noqa: F401
from vitzoo.flops import count_gmacs

# InLine README table (LeapLabTHU/InLine): params (M), FLOPs = MACs (G).
INLINE_PUBLISHED = {
    "inline_deit_tiny_patch16_224": (6.5, 1.1),
    "inline_deit_small_patch16_288": (16.7, 5.0),
    "inline_deit_base_patch16_448": (23.8, 17.2),
}
# timm's results CSVs for the DeiT baselines (param_count, infer_gmacs).
DEIT_PUBLISHED = {
    "softmax_deit_tiny_patch16_224": (5.72, 1.26),
    "softmax_deit_small_patch16_224": (22.05, 4.61),
}


@pytest.mark.parametrize("name", [*INLINE_PUBLISHED, *DEIT_PUBLISHED])
def test_params_and_gmacs_match_published(name):
    params_m, gmacs = {**INLINE_PUBLISHED, **DEIT_PUBLISHED}[name]
    model = timm.create_model(name)
    measured_params = sum(p.numel() for p in model.parameters()) / 1e6
    measured_gmacs = count_gmacs(model)
    assert measured_params == pytest.approx(params_m, rel=0.03)
    assert measured_gmacs == pytest.approx(gmacs, rel=0.03)


def test_counting_macs_warns_about_nothing_the_user_can_fix():
    """fvcore's import-time torch.jit.script deprecation stays out of the user's output (a fresh process, since the
    warning comes once per import)."""
    code = ("import timm, vitzoo\nfrom vitzoo.flops import count_gmacs\n"
            "model = timm.create_model('softmax_deit_tiny_patch16_224', img_size=32, patch_size=8, depth=1)\n"
            "count_gmacs(model, (3, 32, 32))")
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
