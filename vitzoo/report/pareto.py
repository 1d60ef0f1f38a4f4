"""Pareto front of top-1 accuracy against measured throughput, and the zoo's speed plots.

Inputs are CSVs: benchmark rows from ``vitzoo-bench`` (``infer_samples_per_sec`` per model and size) and accuracy
rows from ``vitzoo-eval`` (``model, top1, ..., img_size, dataset``), plus the papers' ImageNet-1k numbers shipped in
``published_imagenet.csv``. Accuracy keeps its origin everywhere: published numbers are labelled "published", ours
"measured", and a front is only computed within one origin and dataset (a Fashion-MNIST and an ImageNet top-1 are not
comparable). Outputs, PNG and SVG: ``top1_vs_throughput``, ``throughput_vs_resolution``, ``latency_vs_resolution``,
``throughput_vs_gmacs``; CSVs: ``pareto_front.csv`` (the front) and ``joined.csv`` (every joined point).

Example::

    vitzoo-pareto --bench benchmarks/results/zoo_sweep/h200.csv --results results/eval.csv --out plots/
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitzoo.bench.common import read_csvs, write_csv
from vitzoo.registry import family_of
from vitzoo.report.published import load_published

_NATIVE_RES = re.compile(r"_(\d+)$")
_SIZE_NAMES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}
# Fixed colours per family so a family looks the same in every plot; the softmax baselines are dark.
_FAMILY_COLORS = {
    "softmax": "#000000", "timm deit": "#7f7f7f", "linear": "#1f77b4", "inline": "#ff7f0e", "qt": "#2ca02c",
    "zeros": "#d62728", "fem": "#9467bd", "fem_softmax": "#8c564b", "deltanet": "#e377c2", "h3": "#17becf",
    "qtvit": "#bcbd22", "timm efficientvit": "#aec7e8",
}
_EXTRA_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
BENCH_KEYS = ("infer_img_size", "infer_samples_per_sec", "infer_latency_p50_ms", "param_count", "infer_gmacs",
               "precision", "compile", "device")
FRONT_COLUMNS = ("group", "accuracy", "dataset", "model", "label", "top1", "top1_std", *BENCH_KEYS, "on_front")


# ----------------------------------------------------------------------------------------------------------------------
# reading and joining


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN counts as missing


def measured_bench_rows(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Benchmark rows with a positive inference throughput (an ``oom (train)`` row still has one)."""
    return [row for row in rows if (_float(row.get("infer_samples_per_sec")) or 0) > 0]


def select_config(rows: Sequence[dict[str, str]], precision: str | None = None, compile_mode: str | None = None,
                  device: str | None = None) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Keep one measurement setting (precision, compile, device) so plots never mix eager with compiled numbers.

    Unset arguments take the most common value among the rows that match the set ones.
    """
    wanted = {"precision": precision, "compile": compile_mode, "device": device}
    chosen: dict[str, str] = {}
    selected = list(rows)
    for key, value in wanted.items():
        if value is None:
            counts = Counter(row.get(key, "") for row in selected)
            value = counts.most_common(1)[0][0] if counts else ""
        chosen[key] = value
        selected = [row for row in selected if row.get(key, "") == value]
    return selected, chosen


def native_resolution(model: str) -> int:
    """A model's evaluation resolution: its registered input size, else the name's ``_<res>`` suffix, else 224."""
    try:
        import timm

        import vitzoo  # noqa: F401  (registers the models)

        cfg = timm.models.get_pretrained_cfg(model)
        if cfg is not None:
            return int(cfg.input_size[-1])
    except Exception:  # the name may not be registered here; fall back to the name
        pass
    match = _NATIVE_RES.search(model)
    return int(match.group(1)) if match else 224


@dataclass
class AccuracyPoint:
    """One top-1 number with where it came from."""

    model: str
    top1: float
    img_size: int
    accuracy: str  # 'published' or 'measured'
    dataset: str
    top1_std: float | None = None  # spread over seeds, when the row is a mean (the Fashion-MNIST study's summary)


def published_points() -> list[AccuracyPoint]:
    """The papers' ImageNet-1k top-1 from ``published_imagenet.csv``."""
    return [AccuracyPoint(name, result.top1, native_resolution(name), "published", "ImageNet-1k")
            for name, result in load_published().items()]


def summarize_seeds(rows: Iterable[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per (model, dataset, size) of result rows that repeat a model over seeds (a study's ``runs.csv``): its
    first row, with ``top1`` the mean over the seeds and ``top1_std`` (empty for one seed), ``top1_min``,
    ``top1_max`` and ``seeds`` (their count) added."""
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if _float(row.get("top1")) is not None and row.get("model"):
            groups[(row["model"], row.get("dataset", ""), row.get("img_size", ""))].append(row)
    summary = []
    for group in groups.values():
        top1 = [float(row["top1"]) for row in group]
        summary.append(group[0] | {
            "top1": round(statistics.fmean(top1), 3),
            "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else "",
            "top1_min": min(top1), "top1_max": max(top1), "seeds": len(top1),
        })
    return summary


def measured_points(rows: Iterable[dict[str, str]]) -> list[AccuracyPoint]:
    """Top-1 from ``vitzoo-eval`` rows; for repeated (model, dataset, size) the last row (the newest) wins, unless
    every row names its seed (a study's ``runs.csv``): then each model's point is the mean over its seeds, with their
    standard deviation."""
    rows = list(rows)
    if rows and all(row.get("seed", "") != "" for row in rows):
        rows = summarize_seeds(rows)
    latest: dict[tuple[str, str, int], AccuracyPoint] = {}
    for row in rows:
        top1 = _float(row.get("top1"))
        if top1 is None or not row.get("model"):
            continue
        size = _float(row.get("img_size"))
        img_size = int(size) if size else native_resolution(row["model"])
        dataset = _dataset_name(row.get("dataset", ""))
        latest[(row["model"], dataset, img_size)] = AccuracyPoint(row["model"], top1, img_size, "measured", dataset,
                                                                  _float(row.get("top1_std")))
    return list(latest.values())


def _dataset_name(value: str) -> str:
    if value in ("fashion_mnist", "fashion-mnist"):
        return "Fashion-MNIST"
    return Path(value).name or value or "unknown dataset"


def join(points: Iterable[AccuracyPoint], bench: Sequence[dict[str, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Pair each accuracy point with the benchmark row of the same model at the same resolution.

    Returns the joined rows and ``model@size (origin)`` for each point without a benchmark row. Several rows for one
    pair (repeated runs) resolve to the newest by ``date``.
    """
    by_key: dict[tuple[str, int], dict[str, str]] = {}
    for row in sorted(bench, key=lambda r: r.get("date", "")):
        size = _float(row.get("infer_img_size"))
        if size:
            by_key[(row["model"], int(size))] = row
    joined, missing = [], []
    for point in points:
        row = by_key.get((point.model, point.img_size))
        if row is None:
            missing.append(f"{point.model}@{point.img_size} ({point.accuracy})")
            continue
        joined.append({
            "group": f"{point.dataset} top-1 ({point.accuracy})", "accuracy": point.accuracy,
            "dataset": point.dataset, "model": point.model, "label": short_label(point.model, point.img_size),
            "top1": point.top1, "top1_std": "" if point.top1_std is None else point.top1_std,
            **{key: row.get(key, "") for key in BENCH_KEYS},
        })
    return joined, missing


# ----------------------------------------------------------------------------------------------------------------------
# the front


def pareto_mask(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """True for points no other point dominates, maximising both coordinates.

    A point is dominated when another is at least as good in both and strictly better in one; equal points are
    all on the front.
    """
    return [
        not any(xj >= xi and yj >= yi and (xj > xi or yj > yi) for xj, yj in zip(xs, ys, strict=True))
        for xi, yi in zip(xs, ys, strict=True)
    ]


def mark_front(joined: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``on_front`` on each joined row, computing the front within each accuracy group."""
    for group in sorted({row["group"] for row in joined}):
        members = [row for row in joined if row["group"] == group]
        mask = pareto_mask([float(r["infer_samples_per_sec"]) for r in members], [float(r["top1"]) for r in members])
        for row, on_front in zip(members, mask, strict=True):
            row["on_front"] = on_front
    return joined


# ----------------------------------------------------------------------------------------------------------------------
# names, families, colours


def size_group(model: str) -> str:
    """'tiny' / 'small' / 'base' for DeiT-style names, 'hybrid' for the EfficientViT-style ones."""
    for size in _SIZE_NAMES:
        if f"_{size}_" in model or model.endswith(f"_{size}"):
            return size
    return "hybrid"


def short_label(model: str, img_size: int | None = None) -> str:
    """A compact plot label: ``inline-S@288``, ``DeiT-T (timm)``, ``EffViT-B1 (timm)``, ``QT-ViT-1``."""
    fam = family_of(model)
    size = size_group(model)
    if fam == "timm deit":
        label = f"DeiT-{_SIZE_NAMES.get(size, size)} (timm)"
    elif fam == "timm efficientvit":
        label = f"EffViT-{model.split('_')[1].upper()} (timm)"
    elif fam == "qtvit":
        label = f"QT-ViT-{model.split('_')[1]}"
    elif size in _SIZE_NAMES:
        label = f"{fam}-{_SIZE_NAMES[size]}"
    else:
        label = model
    if img_size is not None and img_size != 224:
        label += f"@{img_size}"
    return label


def family_colors(families: Iterable[str]) -> dict[str, str]:
    """A colour per family: the fixed palette first, then extra colours for unknown families."""
    colors, extra = {}, iter(_EXTRA_COLORS * 4)
    for fam in sorted(set(families)):
        colors[fam] = _FAMILY_COLORS.get(fam) or next(extra)
    return colors


# ----------------------------------------------------------------------------------------------------------------------
# plotting (matplotlib is imported here only: the benchmark machine may not have it)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], colors: Sequence[str],
                 obstacles: Sequence[tuple[float, float]] = (), fontsize: float = 7.5) -> None:
    """Label every point, moving labels around their point (with a leader line when far) so they do not overlap.

    Greedy: each label tries positions at growing distance around its point and takes the first whose box stays
    inside the axes and clear of the markers, the ``obstacles`` (data points, e.g. samples along a drawn line) and
    the labels already placed; if none is clear, the one with the least overlap. Call after the layout is final.
    """
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()  # the layout (tight_layout, legends outside) must be settled before measuring boxes
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    px_per_pt = fig.dpi / 72
    display = [tuple(p) for p in ax.transData.transform(list(zip(xs, ys, strict=True)))] if len(xs) else []
    marker, dot = 4.5 * px_per_pt, 1.5 * px_per_pt
    taken = [(px - marker, py - marker, px + marker, py + marker) for px, py in display]
    if len(obstacles):
        taken += [(px - dot, py - dot, px + dot, py + dot) for px, py in ax.transData.transform(list(obstacles))]

    def overlap(box, other):
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        return w * h if w > 0 and h > 0 else 0.0

    candidates = []
    for radius in (6, 12, 20, 30, 44):
        for dx, dy in ((1, 0), (1, -1), (-1, 0), (-1, -1), (0, 1), (0, -1), (1, 1), (-1, 1)):
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            candidates.append((dx * radius, dy * radius, ha, va, radius))
    # Points with many close neighbours first: they have the fewest free spots.
    crowd = [sum(abs(x - u) + abs(y - v) < 60 * px_per_pt for u, v in display) for x, y in display]
    for i in sorted(range(len(texts)), key=lambda i: -crowd[i]):
        best = None
        for dx, dy, ha, va, radius in candidates:
            arrow = dict(arrowstyle="-", color="0.6", lw=0.6, shrinkA=0, shrinkB=4) if radius >= 20 else None
            ann = ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, color=colors[i], arrowprops=arrow, zorder=5)
            ann.update_positions(renderer)  # the text box only (Annotation's own extent includes the leader line)
            extent = Text.get_window_extent(ann, renderer)
            box = (extent.x0 - 1, extent.y0 - 1, extent.x1 + 1, extent.y1 + 1)
            outside = box[0] < axes_box.x0 or box[2] > axes_box.x1 or box[1] < axes_box.y0 or box[3] > axes_box.y1
            cost = sum(overlap(box, other) for other in taken) + (1e9 if outside else 0.0)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _kilo(value: float, _pos: int | None = None) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _log_axis(axis) -> None:
    # Ticks at 1-2-5 steps with plain labels ('20k'), instead of crowded '3x10^4' minor labels.
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_kilo))
    axis.set_minor_formatter(NullFormatter())


def _axes_grid(plt, count: int, width: float = 6.4, height: float = 4.6):
    cols = min(count, 2)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return fig, list(axes.flat[:count])


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _setting_text(setting: dict[str, str]) -> str:
    return f"{setting.get('device', '')}, {setting.get('precision', '')}, compile={setting.get('compile', '')}"


def plot_front(joined: list[dict[str, Any]], setting: dict[str, str], out_dir: Path,
               reference: str | None = None) -> list[Path]:
    """Top-1 against inference throughput (log x), one panel per accuracy group, the front drawn and outlined; the
    spread over seeds as error bars where known; ``reference`` (a family) as a dashed line at its top-1."""
    import numpy as np
    from matplotlib.lines import Line2D

    plt = _pyplot()
    groups = sorted({row["group"] for row in joined})
    if not groups:
        return []
    colors = family_colors(family_of(row["model"]) for row in joined)
    fig, axes = _axes_grid(plt, len(groups), width=7.5, height=5.5)
    panels = []
    for ax, group in zip(axes, groups, strict=True):
        rows = [row for row in joined if row["group"] == group]
        xs = [float(r["infer_samples_per_sec"]) for r in rows]
        ys = [float(r["top1"]) for r in rows]
        front = sorted((x, y) for x, y, r in zip(xs, ys, rows, strict=True) if r["on_front"])
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="0.35", lw=1.2, zorder=2)
        for fam in sorted({family_of(r["model"]) for r in rows}):
            pts = [(x, y, r["on_front"]) for x, y, r in zip(xs, ys, rows, strict=True) if family_of(r["model"]) == fam]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[60 if p[2] else 30 for p in pts],
                       color=colors[fam], edgecolors=["black" if p[2] else "none" for p in pts], linewidths=1.2,
                       zorder=3)
        spread = [(x, y, float(r["top1_std"])) for x, y, r in zip(xs, ys, rows, strict=True) if r["top1_std"] != ""]
        if spread:
            ax.errorbar([p[0] for p in spread], [p[1] for p in spread], yerr=[p[2] for p in spread], fmt="none",
                        ecolor="0.5", elinewidth=0.9, capsize=2.5, zorder=2.5)
        refs = [y for y, r in zip(ys, rows, strict=True) if reference and family_of(r["model"]) == reference]
        if refs:
            ax.axhline(max(refs), color=colors[reference], ls="--", lw=0.9, zorder=1)
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        _pad_limits(ax, xs, ys, log_x=True)
        ax.set_xlabel("inference throughput (img/s, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{group} vs throughput\n({_setting_text(setting)}; black outline = on the front)", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        families = sorted({family_of(r["model"]) for r in rows})
        handles = [Line2D([], [], color="0.35", lw=1.2, label="Pareto front")]
        if refs:
            handles.append(Line2D([], [], color=colors[reference], ls="--", lw=0.9, label=f"{reference} (reference)"))
        if spread:
            handles.append(Line2D([], [], color="0.5", lw=0.9, marker="_", label="+- 1 std over seeds"))
        handles += [Line2D([], [], ls="", marker="o", color=colors[fam], label=fam) for fam in families]
        ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="family",
                  title_fontsize=8)
        # Samples along the front line (even in log x) keep labels off it.
        line = []
        for (x0, y0), (x1, y1) in zip(front[:-1], front[1:], strict=True):
            t = np.linspace(0, 1, 25)
            line += list(zip(np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0))), y0 + t * (y1 - y0), strict=True))
        if refs:  # and off the reference line
            low, high = ax.get_xlim()
            line += [(x, max(refs)) for x in np.geomspace(low, high, 60)]
        panels.append((ax, xs, ys, rows, line))
    fig.tight_layout()
    for ax, xs, ys, rows, line in panels:
        place_labels(ax, xs, ys, [r["label"] for r in rows], [colors[family_of(r["model"])] for r in rows], line)
    paths = _save(fig, out_dir, "top1_vs_throughput")
    plt.close(fig)
    return paths


def _pad_limits(ax, xs: Sequence[float], ys: Sequence[float], log_x: bool = False, log_y: bool = False) -> None:
    # Fixed limits with room for labels: annotations placed later must not move the axes.
    def padded(values, log):
        lo, hi = min(values), max(values)
        if log:
            span = max(hi / lo, 1.5)
            return lo / span**0.12, hi * span**0.12
        span = max(hi - lo, 1e-6 + abs(hi) * 0.02)
        return lo - 0.12 * span, hi + 0.12 * span

    if xs:
        ax.set_xlim(*padded(xs, log_x))
        ax.set_ylim(*padded(ys, log_y))


def plot_vs_resolution(bench: list[dict[str, str]], setting: dict[str, str], out_dir: Path, column: str,
                       ylabel: str, stem: str, title: str) -> list[Path]:
    """``column`` against input resolution: one panel per model size, one line per model, log y."""
    plt = _pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for row in bench:
        value = _float(row.get(column))
        if value and value > 0:
            series.setdefault(row["model"], []).append((int(float(row["infer_img_size"])), value))
    if not series:
        return []
    sizes = [s for s in ("tiny", "small", "base", "hybrid") if any(size_group(m) == s for m in series)]
    colors = family_colors(family_of(m) for m in series)
    fig, axes = _axes_grid(plt, len(sizes))
    all_res = sorted({res for points in series.values() for res, _ in points})
    for ax, size in zip(axes, sizes, strict=True):
        models = sorted((m for m in series if size_group(m) == size), key=lambda m: (family_of(m), m))
        for k, model in enumerate(models):
            points = sorted(series[model])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=_MARKERS[k % len(_MARKERS)], ms=4,
                    lw=1.4, color=colors[family_of(model)], label=short_label(model))
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_xticks(all_res)
        ax.set_xticklabels([str(r) for r in all_res])
        ax.set_xlabel("input resolution (px, square)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {size} models", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{title} ({_setting_text(setting)})", fontsize=11)
    fig.tight_layout()
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


def plot_vs_gmacs(bench: list[dict[str, str]], setting: dict[str, str], out_dir: Path) -> list[Path]:
    """Inference throughput against MACs per image (log-log), one line per model through its resolutions."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    series: dict[str, list[tuple[float, float, int]]] = {}
    for row in bench:
        gmacs, speed = _float(row.get("infer_gmacs")), _float(row.get("infer_samples_per_sec"))
        if gmacs and speed:
            series.setdefault(row["model"], []).append((gmacs, speed, int(float(row["infer_img_size"]))))
    if not series:
        return []
    colors = family_colors(family_of(m) for m in series)
    fig, ax = plt.subplots(figsize=(9, 6))
    for model in sorted(series, key=lambda m: (family_of(m), m)):
        points = sorted(series[model])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=_MARKERS["tsbh".index(size_group(model)[0])],
                ms=4, lw=1.0, alpha=0.85, color=colors[family_of(model)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis)
    _log_axis(ax.yaxis)
    ax.set_xlabel("compute per image (GMACs, 1 FMA = 1 MAC; log scale)")
    ax.set_ylabel("inference throughput (img/s, log scale)")
    ax.set_title(f"Throughput vs compute over resolutions ({_setting_text(setting)})\n"
                 "markers: o tiny, s small, ^ base, D hybrid", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=colors[fam], lw=1.5, label=fam) for fam in sorted(colors)]
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="family",
              title_fontsize=8)
    fig.tight_layout()
    paths = _save(fig, out_dir, "throughput_vs_gmacs")
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# command line


def make_report(bench_paths: Sequence[str | Path], result_paths: Sequence[str | Path], out_dir: Path,
                use_published: bool = True, precision: str | None = None, compile_mode: str | None = None,
                device: str | None = None, reference: str | None = None) -> dict[str, Any]:
    """Join, compute the fronts, write the CSVs and every plot into ``out_dir``; returns what was made."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bench_all = measured_bench_rows(read_csvs(bench_paths))
    if not bench_all:
        raise ValueError(f"no benchmark row with a measured throughput in {list(map(str, bench_paths))}")
    bench, setting = select_config(bench_all, precision, compile_mode, device)
    points = measured_points(read_csvs(result_paths)) if result_paths else []
    if use_published:
        points += published_points()
    joined, missing = join(points, bench)
    mark_front(joined)
    write_csv(out_dir / "joined.csv", joined, FRONT_COLUMNS)
    front = sorted((row for row in joined if row["on_front"]),
                   key=lambda r: (r["group"], -float(r["infer_samples_per_sec"])))
    write_csv(out_dir / "pareto_front.csv", front, FRONT_COLUMNS)
    plots = plot_front(joined, setting, out_dir, reference)
    plots += plot_vs_resolution(bench, setting, out_dir, "infer_samples_per_sec",
                                "inference throughput (img/s, log scale)", "throughput_vs_resolution",
                                "Inference throughput vs resolution")
    plots += plot_vs_resolution(bench, setting, out_dir, "infer_latency_p50_ms",
                                "latency, batch 1, median (ms, log scale)", "latency_vs_resolution",
                                "Batch-1 latency vs resolution")
    plots += plot_vs_gmacs(bench, setting, out_dir)
    return {"setting": setting, "joined": joined, "front": front, "missing": missing, "plots": plots}


def save_plots(bench_paths: Sequence[str | Path], result_paths: Sequence[str | Path], targets: dict[str, Path],
               **options: Any) -> list[Path]:
    """Make the report in a scratch folder and keep only the PNGs named in ``targets`` (``{plot stem: path}``), as
    the committed results do; ``options`` are :func:`make_report`'s."""
    written = []
    with tempfile.TemporaryDirectory() as folder:
        make_report(bench_paths, result_paths, Path(folder), **options)
        for stem, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / f"{stem}.png", target)
            written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The ``vitzoo-pareto`` argument parser."""
    parser = argparse.ArgumentParser(prog="vitzoo-pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", nargs="+", required=True, help="benchmark CSVs or folders of them")
    parser.add_argument("--results", nargs="*", default=[],
                        help="vitzoo-eval result CSVs (measured top-1); when every row names its seed (a study's "
                             "runs.csv), each model is plotted at its mean over the seeds, with their spread")
    parser.add_argument("--no-published", action="store_true", help="leave out the papers' published top-1")
    parser.add_argument("--precision", help="benchmark precision to use (default: the most common)")
    parser.add_argument("--compile", help="benchmark compile mode to use (default: the most common)")
    parser.add_argument("--device", help="benchmark device name to use (default: the most common)")
    parser.add_argument("--reference", metavar="FAMILY",
                        help="draw this family's top-1 as a dashed reference line (e.g. softmax)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the plots and CSVs")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``vitzoo-pareto`` / ``python -m vitzoo.report.pareto``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in [*args.bench, *args.results]:
        if not Path(path).exists():
            parser.error(f"{path} does not exist; pass vitzoo-bench CSVs to --bench, vitzoo-eval CSVs to --results")
    try:
        report = make_report(args.bench, args.results, args.out, not args.no_published, args.precision, args.compile,
                             args.device, args.reference)
    except ValueError as error:
        parser.error(str(error))
    print(f"setting: {_setting_text(report['setting'])}")
    for row in report["front"]:
        print(f"front  {row['group']:<34} {row['model']:<36} top-1 {row['top1']:>6}  "
              f"{float(row['infer_samples_per_sec']):>10.1f} img/s")
    if report["missing"]:
        print(f"no benchmark row at the evaluated size for {len(report['missing'])} accuracy points: "
              + "; ".join(report["missing"]))
    for path in report["plots"]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
