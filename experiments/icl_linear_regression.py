"""In-context linear regression with one layer of linear attention and one layer of H3.

Reproduces the two claims of Li, Rawat & Oymak, "Fine-grained Analysis of In-context Linear Estimation: Data,
Architecture, and Beyond" (NeurIPS 2024) with the zoo's own pieces:

1. a one-layer linear attention trained on in-context linear regression reaches the test error of the optimal
   one-step preconditioned gradient descent (PGD) predictor  y = x_q^T W X^T y / n;
2. a one-layer H3 reaches the same error on i.i.d. data, and because its convolution filter can weight the
   samples by position it matches the optimal *sample-weighted* PGD  y = x_q^T W X^T (omega * y) / n  and beats
   linear attention when the context is not identically distributed along the sequence.

Data: tokens z_i = [x_i; y_i] (i < n) followed by the query token [x_q; 0]; x ~ N(0, Sigma) in d dims,
w ~ N(0, I) per sequence, y = w.x + noise. Regimes: 'iid'; 'task_switch' (the samples before a switch position
tau ~ U{0..n-1} use an independent w_old, only the later ones share the query's w); 'noise_ramp' (noise std
growing linearly along the context; the query keeps the base noise).

Models (single head of width d + 1, no biases, no residual; prediction = last coordinate of the output at the
query position; everything scaled by 1/n so that the same parameters mean the same PGD step at every n):
    linear attention  vitzoo.ops.linear_attention, identity features, unnormalised; the query's own key is
                      masked out through the op's key_weights, so the query reads the n context tokens only.
    H3                q-gated causal long convolution of the per-head outer products k v^T with the zoo's
                      S4D-Lin DiagonalSSMKernel (forward-direction kernel only) and the zoo's Toeplitz form of
                      the gated long convolution; the query is last and its own key is masked the same way. The
                      shift-SSM on k and the skip D are left out, as in the analysed H3.
Baselines on the same test sequences: PGD with W fitted by least squares on the training distribution (and, for
'iid', the closed form W* = n [(n + 1) Sigma + (tr Sigma + noise) I]^-1), sample-weighted PGD (W and omega fitted by
alternating least squares), OLS (minimum-norm when n < d), ridge with lambda = noise variance, and predict-0.

    python experiments/icl_linear_regression.py --config experiments/icl_config.yaml
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.layers.h3 import SSM_OPTIM, DiagonalSSMKernel  # noqa: E402
from vitzoo.layers.long_conv import gated_long_conv_toeplitz  # noqa: E402
from vitzoo.ops.linear_attention import linear_attention  # noqa: E402

REGIMES = ("iid", "task_switch", "noise_ramp")
LEARNED_MODELS = ("linear_attention", "h3")
# Plot styles: the PGD comparators as wide translucent bands, the trained layers as markers on top of them, so a
# layer that matches its comparator sits inside the band. H3's hollow squares stay visible over linear attention's
# dots where the two coincide (i.i.d. data).
_BAND = {"linewidth": 8, "alpha": 0.28, "solid_capstyle": "round"}
MODEL_STYLES = {
    "pgd": {"color": "tab:blue", **_BAND, "label": "optimal 1-step PGD (fitted W)"},
    "weighted_pgd": {"color": "tab:red", **_BAND, "label": "optimal sample-weighted PGD (fitted W, omega)"},
    "linear_attention": {"color": "tab:blue", "marker": "o", "markersize": 7, "linewidth": 1.5,
                         "label": "linear attention, 1 layer (trained)"},
    "h3": {"color": "tab:red", "marker": "s", "markersize": 10, "markerfacecolor": "none", "markeredgewidth": 2,
           "linewidth": 1.5, "label": "H3, 1 layer (trained)"},
    "ridge": {"color": "tab:green", "marker": "^", "linestyle": ":", "linewidth": 1.6,
              "label": "ridge, lambda = noise var"},
    "ols": {"color": "tab:gray", "marker": "v", "linestyle": ":", "linewidth": 1.6, "label": "OLS (min-norm)"},
    "zero": {"color": "black", "linestyle": "-.", "linewidth": 1.4, "label": "predict 0"},
}


@dataclass
class ICLConfig:
    """Everything one run depends on; see ``experiments/icl_config.yaml`` for the meaning of each field."""

    dim: int = 8
    noise_var: float = 0.1
    covariance: str = "isotropic"  # or 'anisotropic': eigenvalues geometric from 1 down to 1 / condition
    condition: float = 10.0
    context_lengths: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 60])
    regimes: list[str] = field(default_factory=lambda: ["iid", "task_switch"])
    models: list[str] = field(default_factory=lambda: list(LEARNED_MODELS))
    noise_ramp_max_std: float = 1.5
    steps: int = 1000
    batch_size: int = 256
    lr: float = 3e-2
    warmup_steps: int = 100
    ssm_d_state: int = 64
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data_seed: int = 1234
    fit_sequences: int = 50000
    test_sequences: int = 20000
    als_iterations: int = 20
    threads: int = 1
    out_dir: str = "benchmarks/results/icl"
    plot_dir: str = "docs/plots"  # the drawing beside the pages that show it; out_dir holds the measurements

    @classmethod
    def from_yaml(cls, path: str) -> ICLConfig:
        """Read a YAML mapping of field -> value; an unknown key is an error, not a silent default."""
        import yaml

        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}; expected a subset of {sorted(known)}")
        cfg = cls(**raw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Reject values the experiment cannot run with, with one-line messages."""
        bad_regimes = [r for r in self.regimes if r not in REGIMES]
        if bad_regimes:
            raise ValueError(f"regimes {bad_regimes} are not among {REGIMES}")
        bad_models = [m for m in self.models if m not in LEARNED_MODELS]
        if bad_models:
            raise ValueError(f"models {bad_models} are not among {LEARNED_MODELS}")
        if self.covariance not in ("isotropic", "anisotropic"):
            raise ValueError(f"covariance={self.covariance!r}; expected 'isotropic' or 'anisotropic'")
        if self.dim < 1 or min(self.context_lengths) < 1:
            raise ValueError(f"dim and context lengths must be >= 1, got {self.dim} and {self.context_lengths}")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
class ICLBatch(NamedTuple):
    """A batch of regression prompts: context (x, y) and the query (x_q, y_q)."""

    x: torch.Tensor  # (B, n, d)
    y: torch.Tensor  # (B, n)
    x_query: torch.Tensor  # (B, d)
    y_query: torch.Tensor  # (B,)


def covariance_matrix(cfg: ICLConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sigma: identity, or diagonal with eigenvalues geometric from 1 to 1/condition (rescaled to trace d)."""
    if cfg.covariance == "isotropic":
        return torch.eye(cfg.dim, dtype=dtype)
    eig = torch.logspace(0.0, -math.log10(cfg.condition), cfg.dim, dtype=dtype)
    # Same trace as the isotropic case, so that the signal variance E[y^2] - noise = tr(Sigma) stays d.
    return torch.diag(eig * cfg.dim / eig.sum())


def sample_batch(
        cfg: ICLConfig, regime: str, n: int, batch: int, gen: torch.Generator, dtype: torch.dtype = torch.float32
) -> ICLBatch:
    """Draw ``batch`` independent prompts of context length ``n`` from ``regime``, on CPU, with ``gen``."""
    d = cfg.dim
    sigma_sqrt = covariance_matrix(cfg, dtype).sqrt()  # diagonal, so the elementwise sqrt is the matrix root
    x_all = torch.randn(batch, n + 1, d, generator=gen, dtype=dtype) @ sigma_sqrt
    w = torch.randn(batch, d, generator=gen, dtype=dtype)
    noise = torch.randn(batch, n + 1, generator=gen, dtype=dtype)
    noise_std = torch.full((n + 1,), math.sqrt(cfg.noise_var), dtype=dtype)
    w_per_sample = w.unsqueeze(1).expand(batch, n + 1, d)
    if regime == "task_switch":
        # Samples before tau come from an unrelated task; tau ~ U{0..n-1} leaves at least one sample of the query's.
        w_old = torch.randn(batch, d, generator=gen, dtype=dtype)
        tau = torch.randint(0, n, (batch, 1), generator=gen)
        old = (torch.arange(n + 1).unsqueeze(0) < tau).unsqueeze(-1)
        w_per_sample = torch.where(old, w_old.unsqueeze(1), w_per_sample)
    elif regime == "noise_ramp":
        # Context noise std grows linearly along the sequence, so the samples next to the query are the worst.
        noise_std[:n] = cfg.noise_ramp_max_std * torch.arange(1, n + 1, dtype=dtype) / n
    elif regime != "iid":
        raise ValueError(f"regime={regime!r} is not one of {REGIMES}")
    y_all = (x_all * w_per_sample).sum(-1) + noise * noise_std
    return ICLBatch(x_all[:, :n], y_all[:, :n], x_all[:, n], y_all[:, n])


def prompt_tokens(batch: ICLBatch) -> torch.Tensor:
    """(B, n + 1, d + 1) tokens [x_i; y_i] for the context followed by the query token [x_q; 0]."""
    context = torch.cat([batch.x, batch.y.unsqueeze(-1)], dim=-1)
    query = torch.cat([batch.x_query, torch.zeros_like(batch.y_query).unsqueeze(-1)], dim=-1)
    return torch.cat([context, query.unsqueeze(1)], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# One-layer models
# ---------------------------------------------------------------------------------------------------------------
class _OneLayerICL(nn.Module):
    """Shared projections: W_q, W_k, W_v and the output W_o, all (d + 1) x (d + 1) without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = dim + 1
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def projections(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of ``tokens`` (B, N, d + 1), with the query's (last) key zeroed so it reads the context only."""
        context_mask = torch.ones(tokens.shape[1], 1, dtype=tokens.dtype, device=tokens.device)
        context_mask[-1] = 0.0
        return self.q(tokens), self.k(tokens) * context_mask, self.v(tokens)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """y_q estimate (B,): the last coordinate of the layer's output at the query position."""
        raise NotImplementedError


class LinearAttentionICL(_OneLayerICL):
    """One layer of plain (identity-feature, unnormalised) linear attention through the zoo's op.

    y_q = [W_o sum_i (W_q z_q . W_k z_i) W_v z_i / n]_last over the context i < n. The query's key is masked
    with the op's ``key_weights`` (weight 0), which is how the op expresses "these tokens are not keys".
    """

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        b, num_tokens, width = tokens.shape
        n = num_tokens - 1
        q, k, v = (p(tokens).view(b, num_tokens, 1, width) for p in (self.q, self.k, self.v))
        key_weights = torch.ones(b, num_tokens, 1, 1, dtype=tokens.dtype, device=tokens.device)
        key_weights[:, -1] = 0.0
        out = linear_attention(
            q, k, v, key_weights, torch.ones_like(key_weights), feature_map="identity", normalize=False, scale=1.0 / n
        )
        return self.out(out[:, -1, 0])[:, -1]


class H3ICL(_OneLayerICL):
    """One layer of causal H3: y_t = sum_{s <= t} K(t - s) (q_t . k_s) v_s with a trainable S4D-Lin kernel K.

    Uses the zoo's ``DiagonalSSMKernel`` (its forward-direction kernel; the flipped-direction one is unused and
    set to zero, which makes the zoo's bidirectional Toeplitz form causal) and ``gated_long_conv_toeplitz``.
    At the query (last position) this is sample-weighted linear attention with omega_i = K(n - i).
    """

    def __init__(self, dim: int, d_state: int = 64) -> None:
        super().__init__(dim)
        self.ssm = DiagonalSSMKernel(num_heads=1, d_state=d_state)

    def filter(self, n: int) -> torch.Tensor:
        """The causal kernel K(lag) for lags 0..n, shape (n + 1,)."""
        return self.ssm(n + 1, torch.float32)[0][0]

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1] - 1
        q, k, v = (t.unsqueeze(1) for t in self.projections(tokens))  # (B, 1, N, d + 1)
        kernel_fwd, _ = self.ssm(n + 1, q.dtype)
        out = gated_long_conv_toeplitz(q, k, v, kernel_fwd, torch.zeros_like(kernel_fwd))
        return self.out(out[:, 0, -1] / n)[:, -1]


def build_model(name: str, cfg: ICLConfig, seed: int) -> _OneLayerICL:
    """A fresh model (default PyTorch init; S4D-Lin init for the SSM), initialised from ``seed``."""
    torch.manual_seed(seed)  # the init draws from the global generator; seeding here makes every run repeatable
    if name == "linear_attention":
        return LinearAttentionICL(cfg.dim)
    if name == "h3":
        return H3ICL(cfg.dim, cfg.ssm_d_state)
    raise ValueError(f"model={name!r} is not one of {LEARNED_MODELS}")


def _param_groups(model: nn.Module, lr: float) -> list[dict]:
    # The zoo's SSM parameters carry an optimiser hint (no weight decay, lr capped at 1e-3): honour it.
    hinted = [p for p in model.parameters() if hasattr(p, "_optim")]
    plain = [p for p in model.parameters() if not hasattr(p, "_optim")]
    groups = [{"params": plain, "lr": lr}]
    if hinted:
        groups.append({"params": hinted, "lr": min(lr, SSM_OPTIM["lr"]), "weight_decay": SSM_OPTIM["weight_decay"]})
    return groups


def train_model(model: _OneLayerICL, cfg: ICLConfig, regime: str, n: int, seed: int) -> list[float]:
    """Adam on fresh prompts every step (no data reuse), linear warmup then cosine decay to 0.

    Returns the per-step training losses. The decay to 0 matters: with fresh data the gradient noise otherwise
    keeps the parameters a noise-ball away from the optimum and the error would sit above the PGD floor.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(_param_groups(model, cfg.lr))
    base_lrs = [g["lr"] for g in opt.param_groups]
    losses = []
    for step in range(cfg.steps):
        if step < cfg.warmup_steps:
            factor = (step + 1) / cfg.warmup_steps
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        for group, base in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        batch = sample_batch(cfg, regime, n, cfg.batch_size, gen)
        loss = (model.predict(prompt_tokens(batch)) - batch.y_query).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
def pgd_closed_form(cfg: ICLConfig, n: int) -> torch.Tensor:
    """Optimal W of y = x_q^T W X^T y / n for i.i.d. Gaussian data and w ~ N(0, I).

    W* = E[w g^T] E[g g^T]^-1 with g = X^T y / n; E[w g^T] = Sigma and, from the Wishart moment
    E[(X^T X)^2] = n (n + 1) Sigma^2 + n tr(Sigma) Sigma, E[g g^T] = ((n + 1) Sigma^2 + (tr Sigma + noise) Sigma) / n,
    so W* = n [(n + 1) Sigma + (tr Sigma + noise) I]^-1.
    """
    sigma = covariance_matrix(cfg)
    eye = torch.eye(cfg.dim, dtype=sigma.dtype)
    return n * torch.linalg.inv((n + 1) * sigma + (sigma.trace() + cfg.noise_var) * eye)


def _solve_normal(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Least squares via the normal equations in float64; a 1e-10-relative jitter only guards exact singularity.
    gram = features.T @ features
    jitter = 1e-10 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + jitter, features.T @ target)


def fit_weighted_pgd(
        batch: ICLBatch, iterations: int, weighted: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit y_q ~ x_q^T W sum_i omega_i x_i y_i / n by least squares on ``batch`` (float64).

    With ``weighted=False`` omega = 1 and W is one least-squares solve (d^2 features x_q g^T). Otherwise W and
    omega are fitted by alternating least squares (each half-step is exact, so the loss never goes up), with
    omega rescaled to mean 1 after each omega step to remove the W <-> omega scale ambiguity.

    Returns (W (d, d), omega (n,)).
    """
    x, y, xq, yq = (t.double() for t in batch)
    n, d = x.shape[1], x.shape[2]
    xy = x * y.unsqueeze(-1) / n  # (S, n, d): per-sample GD directions
    omega = torch.ones(n, dtype=torch.float64)
    w_mat = None
    for _ in range(iterations if weighted else 1):
        g = xy.transpose(1, 2) @ omega  # (S, d); a matmul, several times faster than the equivalent einsum
        w_mat = _solve_normal((xq.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, d * d), yq).reshape(d, d)
        if not weighted:
            break
        per_sample = xy @ (xq @ w_mat).unsqueeze(-1)  # (S, n, 1): x_q^T W x_i y_i / n
        per_sample = per_sample.squeeze(-1)
        omega = _solve_normal(per_sample, yq)
        omega = omega / omega.mean()
    if weighted:  # refit W for the final omega so the pair is consistent
        g = xy.transpose(1, 2) @ omega
        w_mat = _solve_normal((xq.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, d * d), yq).reshape(d, d)
    return w_mat, omega


def predict_weighted_pgd(batch: ICLBatch, w_mat: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """x_q^T W sum_i omega_i x_i y_i / n, (S,)."""
    x, y, xq = batch.x.double(), batch.y.double(), batch.x_query.double()
    g = torch.einsum("snd,sn,n->sd", x, y, omega) / x.shape[1]
    return torch.einsum("sa,ab,sb->s", xq, w_mat, g)


def predict_ridge(batch: ICLBatch, lam: float) -> torch.Tensor:
    """x_q^T (X^T X + lam I)^-1 X^T y; lam = 0 gives min-norm OLS (pseudo-inverse) instead."""
    x, y, xq = batch.x.double(), batch.y.double(), batch.x_query.double()
    if lam == 0.0:
        w_hat = (torch.linalg.pinv(x) @ y.unsqueeze(-1)).squeeze(-1)
    else:
        gram = x.transpose(1, 2) @ x + lam * torch.eye(x.shape[2], dtype=x.dtype)
        w_hat = torch.linalg.solve(gram, (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1))
    return (xq * w_hat).sum(-1)


def mse_and_se(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Test MSE and its standard error over the test prompts."""
    sq = (pred.double() - target.double()).square()
    return sq.mean().item(), (sq.std() / math.sqrt(sq.numel())).item()


def paired_diff_se(pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor) -> float:
    """Standard error of MSE(pred) - MSE(ref_pred) on the same prompts (much smaller than either MSE's own SE)."""
    diff = (pred.double() - target.double()).square() - (ref_pred.double() - target.double()).square()
    return (diff.std() / math.sqrt(diff.numel())).item()


@torch.no_grad()
def evaluate_model(model: _OneLayerICL, batch: ICLBatch, chunk: int = 4096) -> torch.Tensor:
    """Model predictions on the test prompts, in chunks to bound memory."""
    tokens = prompt_tokens(batch)
    return torch.cat([model.predict(tokens[i:i + chunk]) for i in range(0, tokens.shape[0], chunk)])


# ---------------------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------------------
def _stream_seed(base: int, regime: str, n: int, purpose: int) -> int:
    # Distinct, reproducible streams per (regime, n, purpose): fit data, test data and training never overlap.
    return base * 1_000_003 + REGIMES.index(regime) * 10_007 + n * 101 + purpose


def run_study(cfg: ICLConfig, log: bool = True) -> list[dict]:
    """Train every model and evaluate every baseline for each regime and context length; returns CSV rows."""
    rows: list[dict] = []
    for regime in cfg.regimes:
        for n in cfg.context_lengths:
            test = sample_batch(cfg, regime, n, cfg.test_sequences,
                                torch.Generator().manual_seed(_stream_seed(cfg.data_seed, regime, n, 1)))
            fit = sample_batch(cfg, regime, n, cfg.fit_sequences,
                               torch.Generator().manual_seed(_stream_seed(cfg.data_seed, regime, n, 2)))
            preds: dict[str, torch.Tensor] = {}
            notes: dict[str, str] = {}
            w_pgd, ones = fit_weighted_pgd(fit, 1, weighted=False)
            preds["pgd"] = predict_weighted_pgd(test, w_pgd, ones)
            w_wpgd, omega = fit_weighted_pgd(fit, cfg.als_iterations, weighted=True)
            preds["weighted_pgd"] = predict_weighted_pgd(test, w_wpgd, omega)
            notes["weighted_pgd"] = "omega(first,mid,last)=" + ",".join(
                f"{omega[i].item():.2f}" for i in (0, n // 2, n - 1))
            if regime == "iid":
                preds["pgd_closed_form"] = predict_weighted_pgd(test, pgd_closed_form(cfg, n), ones)
            preds["ols"] = predict_ridge(test, 0.0)
            preds["ridge"] = predict_ridge(test, cfg.noise_var)
            preds["zero"] = torch.zeros_like(test.y_query)
            del fit
            for name, pred in preds.items():
                rows.append(_row(cfg, name, "baseline", regime, n, cfg.data_seed, pred, preds, test, 0.0,
                                 notes.get(name, "")))
            for name in cfg.models:
                for seed in cfg.seeds:
                    train_seed = _stream_seed(seed, regime, n, 3)
                    model = build_model(name, cfg, train_seed)
                    start = time.perf_counter()
                    losses = train_model(model, cfg, regime, n, train_seed)
                    seconds = time.perf_counter() - start
                    note = f"final_train_loss(last100)={sum(losses[-100:]) / len(losses[-100:]):.4f}"
                    if isinstance(model, H3ICL):
                        with torch.no_grad():
                            k = model.filter(n)
                        # Sample weight of context token i is K(n - i); normalised like omega (mean 1).
                        w = k[1:].flip(0) / k[1:].flip(0).mean()
                        note += ";filter_weights(first,mid,last)=" + ",".join(
                            f"{w[i].item():.2f}" for i in (0, n // 2, n - 1))
                    row = _row(cfg, name, "learned", regime, n, seed, evaluate_model(model, test), preds, test,
                               seconds, note)
                    rows.append(row)
                    if log:
                        print(f"  {regime:11s} n={n:3d} {name:16s} seed={seed} mse={row['test_mse']} "
                              f"(/pgd {row['ratio_to_pgd']}, /wpgd {row['ratio_to_weighted_pgd']}) {seconds:.1f}s",
                              flush=True)
            if log:
                print(f"{regime:11s} n={n:3d} baselines: " + ", ".join(
                    f"{k}={mse_and_se(v, test.y_query)[0]:.4f}" for k, v in preds.items()), flush=True)
    return rows


def _row(cfg: ICLConfig, model: str, kind: str, regime: str, n: int, seed: int, pred: torch.Tensor,
         baselines: dict[str, torch.Tensor], test: ICLBatch, seconds: float, note: str) -> dict:
    # Ratios to both PGD comparators, with the paired standard error of each MSE difference.
    mse, se = mse_and_se(pred, test.y_query)
    pgd_mse = mse_and_se(baselines["pgd"], test.y_query)[0]
    wpgd_mse = mse_and_se(baselines["weighted_pgd"], test.y_query)[0]
    return {
        "model": model, "kind": kind, "regime": regime, "n": n, "d": cfg.dim, "covariance": cfg.covariance,
        "noise_var": cfg.noise_var, "seed": seed, "test_mse": f"{mse:.6f}", "test_mse_se": f"{se:.6f}",
        "ratio_to_pgd": f"{mse / pgd_mse:.4f}",
        "diff_vs_pgd_se": f"{paired_diff_se(pred, baselines['pgd'], test.y_query):.6f}",
        "ratio_to_weighted_pgd": f"{mse / wpgd_mse:.4f}",
        "diff_vs_weighted_pgd_se": f"{paired_diff_se(pred, baselines['weighted_pgd'], test.y_query):.6f}",
        "train_steps": cfg.steps if kind == "learned" else 0, "train_seconds": f"{seconds:.1f}", "note": note,
    }


def write_csv(rows: list[dict], path: str) -> None:
    """Write the result rows (one per model, regime, n, seed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_results(rows: list[dict], cfg: ICLConfig, path_stem: str) -> None:
    """Top: test MSE vs n per regime (log scale). Bottom: each trained layer's MSE over a PGD comparator's."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(model: str, regime: str) -> dict[int, float]:
        # n -> test MSE, the mean over seeds for learned models (baselines have one row per n).
        pts: dict[int, list[float]] = {}
        for r in rows:
            if r["model"] == model and r["regime"] == regime:
                pts.setdefault(r["n"], []).append(float(r["test_mse"]))
        return {n: sum(v) / len(v) for n, v in sorted(pts.items())}

    regimes = cfg.regimes
    fig, axes = plt.subplots(2, len(regimes), figsize=(6.4 * len(regimes), 9.2), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]}, sharey="row")
    titles = {"iid": "i.i.d. context", "task_switch": "task switch at a random position",
              "noise_ramp": "noise growing along the context"}
    for col, regime in enumerate(regimes):
        ax = axes[0, col]
        for model, style in MODEL_STYLES.items():
            pts = curve(model, regime)
            if pts:
                ax.plot(list(pts), list(pts.values()), **style)
        ax.set_yscale("log")
        # OLS explodes near n = d: clip the axis a little above the predict-0 level to keep the rest readable.
        ax.set_ylim(cfg.noise_var * 0.8, max(curve("zero", regime).values()) * 4)
        ax.set_title(f"{titles[regime]}", fontsize=13)
        ax.set_ylabel("test MSE of y_q (log)")

        ax = axes[1, col]
        pgd, wpgd = curve("pgd", regime), curve("weighted_pgd", regime)
        for model, ref_name, ref, style in (
                ("linear_attention", "1-step PGD", pgd, {"linestyle": "-"}),
                ("h3", "1-step PGD", pgd, {"linestyle": "--", "markerfacecolor": "white"}),
                ("h3", "sample-weighted PGD", wpgd, {"linestyle": "-"})):
            pts = curve(model, regime)
            if pts:
                label = f"{model.replace('_', ' ').replace('h3', 'H3')} / {ref_name}"
                base = {k: v for k, v in MODEL_STYLES[model].items() if k not in ("label", "markersize")}
                ax.plot(list(pts), [mse / ref[n] for n, mse in pts.items()], label=label, markersize=6,
                        **{**base, **style})
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_ylabel("MSE ratio (mean of seeds)")
        ax.legend(fontsize=9, loc="lower left")
        for row_ax in axes[:, col]:
            row_ax.set_xticks(cfg.context_lengths)
            row_ax.set_xlabel("context length n")
            row_ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.suptitle(f"One-layer linear attention and H3 on in-context linear regression (vitzoo ops): d={cfg.dim}, "
                 f"noise var {cfg.noise_var}, {cfg.covariance} Sigma, {len(cfg.seeds)} seed(s)", fontsize=13)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(f"{path_stem}.png", dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the study from a YAML config and write the CSV under ``out_dir`` and the plot under ``plot_dir``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "icl_config.yaml"))
    args = parser.parse_args(argv)
    cfg = ICLConfig.from_yaml(args.config)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    rows = run_study(cfg)
    write_csv(rows, os.path.join(cfg.out_dir, "icl_results.csv"))
    plot_results(rows, cfg, os.path.join(cfg.plot_dir, "icl_error_vs_n"))
    print(f"wrote {cfg.out_dir}/icl_results.csv and {cfg.plot_dir}/icl_error_vs_n.png in "
          f"{time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
