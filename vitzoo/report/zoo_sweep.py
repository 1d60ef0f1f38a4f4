"""Tables and plots of a whole-zoo ``vitzoo-bench`` sweep (``scripts/benchmark_zoo.sh``): img/s per resolution with
the ratio to the softmax twin of the same size, per model size, and every family at 224.

Eager rows in the sweep's most common precision are used; for a (model, resolution) measured more than once the
newest row wins, as in ``vitzoo.report.pareto``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitzoo.bench.common import read_csvs
from vitzoo.registry import DEIT_FAMILIES, FAMILIES
from vitzoo.report import pareto

MARKERS = ("<!-- zoo-tables:start -->", "<!-- zoo-tables:end -->")
SIZES = (224, 384, 512, 768, 1024)
_PLOTS = ("throughput_vs_resolution", "top1_vs_throughput")

Results = dict[tuple[str, int], dict[str, str]]


def load(path: Path) -> Results:
    """``{(model, resolution): row}`` of the measured eager rows, the newest per pair."""
    rows, _ = pareto.select_config(pareto.measured_bench_rows(read_csvs([path])), compile_mode="none")
    return {(row["model"], int(row["infer_img_size"])): row for row in sorted(rows, key=lambda r: r["date"])}


def _value(results: Results, model: str, size: int, column: str = "infer_samples_per_sec") -> float | None:
    row = results.get((model, size))
    return float(row[column]) if row and row.get(column) else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or reference is None else f"{value / reference:.2f}"


def _name(model: str) -> str:
    return f"`{model}` (timm)" if not model.startswith(tuple(FAMILIES)) else f"`{model}`"


def size_table(results: Results, models: Sequence[str], twin: str | None) -> str:
    """img/s at every resolution, the ratio to ``twin`` at each (none: no ratio column), training img/s at the
    smallest and largest resolution."""
    lines = [f"| model | infer img/s {' / '.join(map(str, SIZES))} |" + (" vs softmax twin |" if twin else "")
             + f" train img/s {SIZES[0]} / {SIZES[-1]} |", "|---|---|" + ("---|" if twin else "") + "---|"]
    for model in models:
        infer = [_value(results, model, size) for size in SIZES]
        cells = [" / ".join(map(_number, infer))]
        if twin:
            cells.append(" / ".join(_ratio(value, _value(results, twin, size)) for value, size in zip(
                infer, SIZES, strict=True)))
        cells.append(" / ".join(_number(_value(results, model, size, "train_samples_per_sec"))
                                for size in (SIZES[0], SIZES[-1])))
        lines.append(f"| {_name(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(results: Results) -> str:
    """Every DeiT-style family at 224, tiny / small / base, with the ratio to the softmax twin of the same size."""
    sizes = ("tiny", "small", "base")
    lines = ["| family | tiny: infer img/s (vs softmax twin) | small | base | train img/s tiny / small / base |",
             "|---|---|---|---|---|"]
    for name in DEIT_FAMILIES:
        family, cells, train = FAMILIES[name], [], []
        for size in sizes:
            value = _value(results, family.model_name(size), 224)
            twin = _value(results, FAMILIES["softmax"].model_name(size), 224)
            cells.append("-" if value is None else f"{_number(value)} ({_ratio(value, twin)}x)")
            train.append(_number(_value(results, family.model_name(size), 224, "train_samples_per_sec")))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {' / '.join(train)} |")
    return "\n".join(lines)


def to_markdown(results: Results) -> str:
    """The tiny, small and base tables (zoo models, then timm's DeiT of that size; the tiny one also with QT-ViT-1
    and EfficientViT-B1), the hybrid table (QT-ViT-2..6, EfficientViT-B2/B3) and the per-family table at 224."""
    sections = []
    for size, title in (("tiny", "The tiny set across resolutions:"),
                        ("small", "The small variants (twin: softmax DeiT-S; `-`: not measured, the device time ran "
                                  "out):"),
                        ("base", "The base variants (twin: softmax DeiT-B):")):
        models = [FAMILIES[name].model_name(size) for name in DEIT_FAMILIES]
        models.append(FAMILIES["softmax"].sizes[size].timm_model)
        if size == "tiny":
            models += [FAMILIES["qtvit"].model_name("1"), FAMILIES["qtvit"].sizes["1"].timm_model]
        sections += [title, size_table(results, models, FAMILIES["softmax"].model_name(size))]
    hybrid = [FAMILIES["qtvit"].model_name(size) for size in list(FAMILIES["qtvit"].sizes)[1:]]
    hybrid += [f"efficientvit_{name}" for name in ("b2", "b3")]
    sections += ["QT-ViT-2..6 and timm's EfficientViT-B2/B3 (hybrid conv + attention models, no softmax twin):",
                 size_table(results, hybrid, None),
                 "Every family at 224, with the ratio to its softmax twin of the same size:",
                 family_table(results)]
    return "\n\n".join(sections)


def plot(path: Path, out: Path) -> list[Path]:
    """The sweep's throughput-vs-resolution plot and the published top-1 vs throughput Pareto plot, written as
    ``<out>_<plot>.png``."""
    return pareto.save_plots([path], [], {stem: out.with_name(f"{out.name}_{stem}.png") for stem in _PLOTS})
