"""QT-ViT: the attention math against explicit O(N^2) references, fidelity to the paper's table, timm contract.

Run with ``OMP_NUM_THREADS=1``; the whole file takes well under a minute on two CPU cores.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.flops import count_macs, macs_by_operator
from vitzoo.layers.quadratic_taylor import QuadraticTaylorAttention, QuadraticTaylorCore, QuadraticTaylorLiteMLA
from vitzoo.models.vitzoo_efficientvit import QtVit, QtVitLarge
from vitzoo.ops import linear_attention_reference
from vitzoo.report.published import load_published

# Paper Table 1 (= official README): params (M), MACs (G) at 224.
# QT-ViT paper Table 1: (params M, MACs G), from the zoo's sourced table of published numbers.
PUBLISHED = {name: (r.params_m, r.gmacs) for name, r in load_published().items() if name.startswith("qtvit_")}
TOLERANCE = 0.03


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Explicit references (float64, O(N^2), written from the official code's description, not from our module code)
# ---------------------------------------------------------------------------------------------------------------
def _qt_feature(x: torch.Tensor) -> torch.Tensor:
    """Official order: L2-normalise, square, L2-normalise."""
    x = x / x.norm(dim=-1, keepdim=True)
    x = x * x
    return x / x.norm(dim=-1, keepdim=True)


def _qt_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
    """(B, N, H, D) -> (B, N, H, D): sim = <phi(q), phi(k)> + c^2, rows normalised, then applied to v."""
    sim = torch.einsum("bnhd,bmhd->bhnm", _qt_feature(q), _qt_feature(k)) + const**2
    attn = sim / sim.sum(dim=-1, keepdim=True)
    return torch.einsum("bhnm,bmhd->bnhd", attn, v)


def _shortcut_explicit(v: torch.Tensor, norm: torch.nn.BatchNorm1d) -> torch.Tensor:
    """GELU(BN(v)) with training-mode statistics over batch, tokens and heads, per head-dim channel."""
    rows = v.reshape(-1, v.shape[-1])
    mean, var = rows.mean(0), rows.var(0, unbiased=False)
    return F.gelu((v - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)


def _randomise_core(core: QuadraticTaylorCore, gen: torch.Generator) -> None:
    """Move c and the BN affine away from their init so that the test sees them."""
    with torch.no_grad():
        core.const.fill_(0.7)
        core.v_norm.weight.copy_(1 + 0.3 * torch.randn(core.v_norm.weight.shape, generator=gen, dtype=torch.float64))
        core.v_norm.bias.copy_(0.2 * torch.randn(core.v_norm.bias.shape, generator=gen, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# QT core math
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 49, 197])
@pytest.mark.parametrize("head_dim", [16, 32])
def test_qt_core_matches_explicit_similarity(n: int, head_dim: int) -> None:
    gen = _seeded(n + head_dim)
    core = QuadraticTaylorCore(head_dim, dtype=torch.float64)
    _randomise_core(core, gen)
    q, k, v = (torch.randn(2, n, 3, head_dim, generator=gen, dtype=torch.float64, requires_grad=True) for _ in "qkv")

    out = core(q, k, v)
    expected = _qt_attention_explicit(q, k, v, core.const) + _shortcut_explicit(v, core.v_norm)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    params = (q, k, v, core.const, core.v_norm.weight)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, params, grad_out)
    expected_grads = torch.autograd.grad(expected, params, grad_out)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_qt_feature_similarity_is_bounded_below_by_const() -> None:
    """sim(q, k) = <phi(q), phi(k)> + c^2 with <phi, phi> in [0, 1]: every weight is positive even for c -> 0."""
    gen = _seeded(1)
    q, k = (torch.randn(1, 50, 2, 16, generator=gen, dtype=torch.float64) for _ in "qk")
    dot = torch.einsum("bnhd,bmhd->bhnm", _qt_feature(q), _qt_feature(k))
    assert dot.min() >= 0 and dot.max() <= 1 + 1e-12
    # A query attending to itself has the largest possible similarity (Cauchy-Schwarz on unit vectors).
    torch.testing.assert_close(torch.einsum("bnhd,bnhd->bhn", _qt_feature(q), _qt_feature(q)),
                               torch.ones(1, 2, 50, dtype=torch.float64))


def test_deit_qt_attention_contract() -> None:
    with pytest.raises(TypeError):
        QuadraticTaylorAttention(64, num_heads=4, not_an_option=1)
    with pytest.raises(ValueError, match="divisible"):
        QuadraticTaylorAttention(64, num_heads=5)
    with pytest.raises(ValueError, match="tokens"):
        QuadraticTaylorAttention(64, num_heads=4)(torch.randn(1, 10, 64), (3, 3), num_prefix_tokens=0)
    meta = QuadraticTaylorAttention(64, num_heads=4, device="meta")
    assert all(t.device.type == "meta" for t in [*meta.parameters(), *meta.buffers()])
    meta.init_weights()  # must not touch data on meta


def _lite_mla_explicit(m: QuadraticTaylorLiteMLA, x: torch.Tensor) -> torch.Tensor:
    """The official relu_linear_att data flow: (B, E, 3*dim, HW) head layout, APE on k, BN2d over (B*E, dim, H, W)."""
    b, _, h, w = x.shape
    qkv = m.qkv(x)
    qkv = torch.cat([qkv] + [op(qkv) for op in m.aggreg], dim=1)
    qkv = qkv.reshape(b, -1, 3 * m.dim, h * w).transpose(-1, -2)
    q, k, v = qkv[..., :m.dim], qkv[..., m.dim:2 * m.dim], qkv[..., 2 * m.dim:]
    heads = q.shape[1]
    pos = m.key_pos_embed
    if pos.shape[-2:] != (h, w):
        pos = F.interpolate(pos, size=(h, w), mode="bicubic")
    k = k + pos.reshape(1, heads, m.dim, h * w).transpose(-1, -2)
    as_bnhd = lambda t: t.permute(0, 2, 1, 3)  # noqa: E731  (B, E, N, D) <-> (B, N, E, D)
    out = as_bnhd(_qt_attention_explicit(as_bnhd(q), as_bnhd(k), as_bnhd(v), m.core.const))
    v_map = v.transpose(-1, -2).reshape(b * heads, m.dim, h, w)
    norm = m.core.v_norm
    v_map = F.gelu(F.batch_norm(v_map, None, None, norm.weight, norm.bias, training=True, eps=norm.eps))
    out = out + v_map.reshape(b, heads, m.dim, h * w).transpose(-1, -2)
    return m.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


@pytest.mark.parametrize("grid", [(7, 7), (14, 14), (16, 16), (8, 12)])
def test_lite_mla_matches_official_layout(grid: tuple[int, int]) -> None:
    """Stored APE at 14x14; 7x7, 16x16 (256 input at stride 16) and non-square maps resample it bicubically."""
    gen = _seeded(3)
    m = QuadraticTaylorLiteMLA(64, 64, dim=16, pos_embed_size=14, dtype=torch.float64).train()
    assert m.key_pos_embed.shape == (1, 2 * 4 * 16, 14, 14)
    _randomise_core(m.core, gen)
    with torch.no_grad():
        m.key_pos_embed.normal_(generator=gen)
    x = torch.randn(2, 64, *grid, generator=gen, dtype=torch.float64, requires_grad=True)

    out = m(x)
    expected = _lite_mla_explicit(m, x)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)
    params = (x, m.key_pos_embed, m.core.const)
    grads = torch.autograd.grad(out.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_ape_resampled_at_256() -> None:
    """qtvit_1 at 256: stride-16 maps are 16x16 and stride-32 maps 8x8; the stored APEs are 14x14 and 7x7."""
    model = timm.create_model("qtvit_1").eval()
    mlas = [m for m in model.modules() if isinstance(m, QuadraticTaylorLiteMLA)]
    assert {tuple(m.key_pos_embed.shape[-2:]) for m in mlas} == {(14, 14), (7, 7)}
    with torch.no_grad():
        for m in mlas:
            m.key_pos_embed.normal_(generator=_seeded(4))
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].shape[-2:]))) for m in mlas]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 256, 256, generator=_seeded(5)))
    for h in hooks:
        h.remove()
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert {tuple(size) for _, size in seen} == {(16, 16), (8, 8)}
    mod, size = seen[0]
    tokens = mod._key_pos_embed(tuple(size))
    resampled = F.interpolate(mod.key_pos_embed, size=tuple(size), mode="bicubic")
    torch.testing.assert_close(tokens, resampled.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], -1, mod.dim))


# ---------------------------------------------------------------------------------------------------------------
# Fidelity to the paper: parameters and MACs
# ---------------------------------------------------------------------------------------------------------------
def test_einsum_handle_counts_linear_attention_exactly() -> None:
    """The four einsums of the reference: state and output N*K*Dv MACs each, key sum and normaliser N*K each."""
    b, n, h, d = 2, 49, 4, 16

    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return linear_attention_reference(q, k, v, feature_map="qt", feature_const=1.0, normalize=True)

    total = count_macs(Op(), tuple(torch.randn(b, n, h, d) for _ in "qkv"))
    features = d + 1  # the appended constant
    analytic = b * h * n * features * (2 * d + 2)
    # Depending on numpy's path, the normaliser may add one MAC per query for its sum over the W = 1 weighting.
    assert analytic <= total <= analytic + b * h * n


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_param_count_matches_paper(name: str) -> None:
    model = timm.create_model(name, device="meta")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / PUBLISHED[name][0] - 1) < TOLERANCE, f"{name}: {params:.2f}M vs {PUBLISHED[name][0]}M"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_gmacs_match_paper(name: str) -> None:
    """fvcore total within 3%. fvcore also counts BatchNorm/LayerNorm/pooling (+1.8% on qtvit_1, under 0.5% on the
    rest); conv + linear + attention alone are within 1% of the paper's rounded numbers."""
    torch.manual_seed(0)
    by_op = macs_by_operator(timm.create_model(name), torch.randn(1, 3, 224, 224))
    gmacs = sum(by_op.values()) / 1e9
    assert by_op["einsum"] > 0, "the attention was not counted"
    published = PUBLISHED[name][1]
    assert abs(gmacs / published - 1) < TOLERANCE, f"{name}: {gmacs:.3f} vs {published} GMACs"
    mac_ops = (by_op["conv"] + by_op["linear"] + by_op["einsum"]) / 1e9
    assert abs(mac_ops / published - 1) < 0.01, f"{name}: conv+linear+einsum {mac_ops:.3f} vs {published} GMACs"


# ---------------------------------------------------------------------------------------------------------------
# timm contract (small inputs)
# ---------------------------------------------------------------------------------------------------------------
def test_registered_names() -> None:
    names = timm.list_models("qtvit_*")
    assert names == [f"qtvit_{i}" for i in range(1, 7)]
    from timm.models._registry import _model_to_module

    assert all(_model_to_module[n] == "vitzoo_efficientvit" for n in names)  # not shadowing any timm model
    cfg = timm.create_model("qtvit_1", device="meta").pretrained_cfg
    assert cfg["crop_pct"] == 0.95 and cfg["input_size"] == (3, 224, 224) and cfg["license"] == "apache-2.0"
    assert timm.create_model("qtvit_2", device="meta").pretrained_cfg["crop_pct"] == 1.0


def test_forward_backward_128() -> None:
    torch.manual_seed(0)
    model = timm.create_model("qtvit_1").train()
    out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1000)
    out.logsumexp(-1).mean().backward()
    mla = next(m for m in model.modules() if isinstance(m, QuadraticTaylorLiteMLA))
    for p in (mla.core.const, mla.key_pos_embed, mla.qkv.conv.weight, model.stem.in_conv.conv.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_large_forward_and_intermediates_128() -> None:
    torch.manual_seed(0)
    model = timm.create_model("qtvit_4", num_classes=10).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert model(x).shape == (1, 10)
    assert [t.shape[-1] for t in inter] == [32, 16, 8, 4]


def test_features_only() -> None:
    model = timm.create_model("qtvit_1", features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_overrides_and_unknown_kwarg() -> None:
    model = timm.create_model("qtvit_1", num_classes=7, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 96)).shape == (1, 7)
    with pytest.raises(TypeError):
        timm.create_model("qtvit_1", not_a_model_arg=1)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_meta_device(name: str) -> None:
    model = timm.create_model(name, device="meta", dtype=torch.float32)
    assert isinstance(model, QtVitLarge if int(name[-1]) > 3 else QtVit)
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


def test_pretrained_without_weights_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file="):
        timm.create_model("qtvit_1", pretrained=True)
    from safetensors.torch import save_file

    source = timm.create_model("qtvit_1")
    with torch.no_grad():
        next(m for m in source.modules() if isinstance(m, QuadraticTaylorLiteMLA)).core.const.fill_(2.5)
    path = tmp_path / "qtvit_1.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = timm.create_model("qtvit_1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_drop_path_keeps_weights_compatible_and_is_stochastic_only_in_training() -> None:
    torch.manual_seed(0)
    plain = timm.create_model("qtvit_1", num_classes=10).eval()
    dropped = timm.create_model("qtvit_1", num_classes=10, drop_path_rate=0.1)
    dropped.load_state_dict(plain.state_dict(), strict=True)  # same keys: drop path has no parameters
    rates = [m.drop_prob for m in dropped.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.1 * (i + 1) / len(rates) for i in range(len(rates))])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(x), plain(x))
        dropped.train()
        torch.manual_seed(1)
        first = dropped(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, dropped(x))


@pytest.mark.parametrize(("x", "message"), [
    (torch.randn(1, 1, 64, 64), r"qtvit_1 expects 3 input channel\(s\), got 1; create it with in_chans=1"),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "qtvit_1 expects a floating-point input"),
    (torch.randn(3, 64, 64), r"qtvit_1 expects images of shape \(B, C, H, W\)"),
])
def test_bad_input_errors_name_the_model(x: torch.Tensor, message: str) -> None:
    model = timm.create_model("qtvit_1").eval()
    with pytest.raises(ValueError, match=message):
        model(x)
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(x)


@pytest.mark.parametrize("name, eps", [("qtvit_1", 1e-5), ("qtvit_4", 1e-7), ("qtvit_6", 1e-7)])
def test_every_norm_has_the_official_eps(name: str, eps: float) -> None:
    """The official builder sets eps 1e-7 on every norm of the L series (QT shortcut and head included)."""
    model = timm.create_model(name, device="meta", dtype=torch.float32)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm))]
    assert norms and {m.eps for m in norms} == {eps}


def test_large_shortcut_norm_uses_eps_1e7_in_eval() -> None:
    """The eval-mode core (its one-pass shortcut) with qtvit_4's eps: attention + GELU((v - mean) / sqrt(var + 1e-7)
    w + b), with running variances small enough that eps 1e-5 would be far off."""
    model = timm.create_model("qtvit_4", device="meta", dtype=torch.float32)
    norm_eps = next(m for m in model.modules() if isinstance(m, QuadraticTaylorCore)).v_norm.eps
    assert norm_eps == 1e-7
    core = QuadraticTaylorCore(8, dtype=torch.float64)
    core.v_norm.eps = norm_eps
    gen = _seeded(7)
    _randomise_core(core, gen)
    with torch.no_grad():
        core.v_norm.running_mean.copy_(0.01 * torch.randn(8, generator=gen, dtype=torch.float64))
        core.v_norm.running_var.fill_(1e-6)
    q, k = (torch.randn(2, 9, 2, 8, generator=gen, dtype=torch.float64) for _ in "qk")
    v = 1e-3 * torch.randn(2, 9, 2, 8, generator=gen, dtype=torch.float64)
    norm = core.eval().v_norm
    shortcut = F.gelu((v - norm.running_mean) / torch.sqrt(norm.running_var + 1e-7) * norm.weight + norm.bias)
    expected = _qt_attention_explicit(q, k, v, core.const) + shortcut
    with torch.no_grad():
        torch.testing.assert_close(core(q, k, v), expected, rtol=1e-10, atol=1e-12)




def test_empty_batch() -> None:
    model = timm.create_model("qtvit_1", num_classes=10)
    out = model(torch.randn(0, 3, 64, 64))
    assert out.shape == (0, 10)
    out.sum().backward()


@pytest.mark.parametrize(("name", "skip"), [("qtvit_2", 0), ("qtvit_4", 2), ("qtvit_5", 3), ("qtvit_6", 3)])
def test_drop_path_follows_the_official_schedule(name: str, skip: int) -> None:
    """Identity residual blocks of the stages in order: the first ``skip`` (the official L recipes' skip) keep no
    stochastic depth, block i of the other N drops with rate * (i + 1) / N."""
    from timm.models.efficientvit_mit import ResidualBlock

    model = timm.create_model(name, drop_path_rate=0.2, device="meta")
    blocks = [child for parent in model.stages.modules() for child in parent.children()
              if isinstance(child, ResidualBlock) and isinstance(child.shortcut, torch.nn.Identity)]
    rates = [block.drop_path.drop_prob if isinstance(getattr(block, "drop_path", None), DropPath) else 0.0
             for block in blocks]
    others = len(blocks) - skip
    assert rates == pytest.approx([0.0] * skip + [0.2 * (i + 1) / others for i in range(others)])
    with pytest.raises(ValueError, match="drop_path_skip must be >= 0"):
        timm.create_model(name, drop_path_rate=0.2, drop_path_skip=-1, device="meta")
