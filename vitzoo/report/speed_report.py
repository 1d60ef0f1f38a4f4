"""Speed tables and the throughput- and latency-vs-resolution plots, generated from a ``vitzoo-bench --compare`` JSON.

``python -m vitzoo.report`` puts the tables of the current comparison (:data:`CURRENT`) into docs/benchmarks.md
(between the ``speed-tables`` markers) and its summary into the README, redraws its plots, and renders the sections
of :data:`SECTIONS`; for another result file::

    python -m vitzoo.report.speed_report --results other.json --readme page.md --plot other.png \
        --latency-plot other_latency.png
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitzoo.bench.common import read_json_result
from vitzoo.report._readme import rewrite_between_markers

MARKERS = ("<!-- speed-tables:start -->", "<!-- speed-tables:end -->")
SUMMARY_MARKERS = ("<!-- speed-summary:start -->", "<!-- speed-summary:end -->")
COMPILE_MARKERS = ("<!-- compile-table:start -->", "<!-- compile-table:end -->")
SIZES_MARKERS = ("<!-- sizes-table:start -->", "<!-- sizes-table:end -->")
SIZES_SECTION = "sizes_224"  # the section of SECTIONS with the small and base models
COMPILED_TRAIN_MARKERS = ("<!-- compiled-train-table:start -->", "<!-- compiled-train-table:end -->")
COMPILED_TRAIN_SECTION = "compiled_train_224"  # the section of SECTIONS with the compiled training steps
PROCESSES_MARKERS = ("<!-- processes-table:start -->", "<!-- processes-table:end -->")
PROCESSES_SECTION = "eager_224_two_processes"  # the section of CURRENT measured in two processes
# the H100 tables at the code of CURRENT: (markers, section of SECTIONS, phase), replayed from CUDA graphs
H100_CURRENT_TABLES = (
    (("<!-- h100-current-table:start -->", "<!-- h100-current-table:end -->"), "infer_224_current", "infer"),
    (("<!-- h100-current-train-table:start -->", "<!-- h100-current-train-table:end -->"), "train_224_current",
     "train"),
)
OFFICIAL_MARKERS = ("<!-- official-table:start -->", "<!-- official-table:end -->")
_MODE_NAMES = {"none": "eager", "cuda-graph": "CUDA graph"}
# the comparison of the current code that the README and docs/benchmarks.md show (one file per GPU)
CURRENT = Path("benchmarks/results/compare/h200.json")
# the H100's comparison, whose sections hold the other model sizes and the compiled training steps
SECTIONS = Path("benchmarks/results/compare/h100.json")


def load(path: Path) -> dict[str, Any]:
    """A ``vitzoo-bench --compare`` result file; ValueError with one line when it is missing or not one."""
    return read_json_result(path, ("info", "rows"), "a vitzoo-bench --compare JSON")


def _ok(rows: list[dict], **where: Any) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in where.items())]


def _index(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["model"], r["img_size"]): r for r in rows}


def _ratio(row: dict, other: dict | None, key: str = "img_per_s") -> str:
    return f"{row[key] / other[key]:.2f}x" if other else "-"


def _measured_with(info: dict[str, Any], full: bool = False) -> str:
    """A footer's setting: GPU, versions and date (the code's revisions stay in the results file's ``info``);
    ``full`` adds the host's CPU cores and timm's version."""
    device = f"{info['device']} ({info['cpu_count']} CPU cores)" if full else info["device"]
    timm = f", timm {info['timm']}" if full else ""
    return f"{device}, torch {info['torch']}, triton {info['triton']}{timm}, {info['date'][:10]}"


def graphed_inference(data: dict[str, Any], img_size: int) -> dict[str, float]:
    """Model -> inference img/s replayed from a CUDA graph at ``img_size``, from a comparison's rows: the device's
    time, which repeats across processes where eager rows follow the host."""
    return {row["model"]: row["img_per_s"]
            for row in _ok(data["rows"], phase="infer", compile="cuda-graph", img_size=img_size)}


def _zoo_models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows if r.get("role") == "zoo"))


def inference_table(rows: list[dict]) -> str:
    """img/s per resolution with the ratios to the softmax twin and to timm's model, and the device-time ratio."""
    infer = _ok(rows, phase="infer", compile="none")
    sizes = sorted({r["img_size"] for r in infer})
    by_key = _index(infer)
    lines = ["| model | " + " | ".join(f"{s} px: img/s (x twin, x timm; device x twin)" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for model in _zoo_models(infer) + sorted({r["model"] for r in infer if r.get("role") != "zoo"}):
        cells = []
        for size in sizes:
            row = by_key.get((model, size))
            if row is None:
                cells.append("")
                continue
            twin = by_key.get((row.get("twin_model"), size))
            timm_row = by_key.get((row.get("timm_model"), size))
            # the device-time ratio is what the model would gain with the host out of the way (same batch)
            device = f"{twin['device_ms'] / row['device_ms']:.2f}x" if twin and row.get("device_ms") else "-"
            cells.append(f"{row['img_per_s']:,.0f} ({_ratio(row, twin)}, {_ratio(row, timm_row)}; {device})")
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def host_device_table(rows: list[dict], phase: str, img_size: int, compile_mode: str = "none") -> str:
    """Throughput with its spread, host vs device ms per step, launches and memory at one resolution."""
    selected = _ok(rows, phase=phase, compile=compile_mode, img_size=img_size)
    by_model = {r["model"]: r for r in selected}
    lines = ["| model | batch | img/s (min-max of repeats) | x twin | host ms | device ms | host / device | "
             "launches | peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in selected:
        twin = by_model.get(row.get("twin_model"))
        lines.append(
            f"| `{row['model']}` | {row['batch']} | {row['img_per_s']:,.0f} ({row['img_per_s_min']:,.0f}-"
            f"{row['img_per_s_max']:,.0f}) | {_ratio(row, twin)} | {row['host_ms']:.2f} | {row['device_ms']:.2f} | "
            f"{row['host_ms'] / row['device_ms']:.2f} | {row['launches']:.0f} | {row['peak_mem_mb']:,.0f} |"
        )
    return "\n".join(lines)


def latency_table(rows: list[dict]) -> str:
    """Batch-1 latency p50 / p90, eager, and p50 replayed from a CUDA graph, per resolution."""
    latency = _ok(rows, phase="latency", compile="none")
    sizes = sorted({r["img_size"] for r in latency})
    by_key = _index(latency)
    lines = ["| model | " + " | ".join(f"{s} px: eager p50 / p90, graphed p50 (ms)" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for model in dict.fromkeys(r["model"] for r in latency):
        cells = []
        for size in sizes:
            row = by_key.get((model, size))
            cells.append("" if row is None else f"{row['latency_p50_ms']:.2f} / {row['latency_p90_ms']:.2f}, "
                                                 f"{row.get('graphed_p50_ms', float('nan')):.2f}")
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(data: dict[str, Any], source: Path = CURRENT) -> str:
    """The README's summary: per zoo model, eager inference at the smallest size (with host and device ms) and
    inference replayed from a CUDA graph at every size measured that way, each with the ratios to the softmax twin and
    timm's model."""
    info, rows = data["info"], data["rows"]
    eager = _index(_ok(rows, phase="infer", compile="none"))
    graphed = _index(_ok(rows, phase="infer", compile="cuda-graph"))
    train = {mode: _index(_ok(rows, phase="train", compile=mode)) for mode in ("none", "cuda-graph")}
    eager_size = min(size for _, size in eager)
    graph_sizes = sorted({size for _, size in graphed})
    train_sizes = sorted({size for _, size in train["cuda-graph"]})[:1]
    lines = [f"| model | eager {eager_size} px: img/s, x twin (host / device ms) | "
             + " | ".join(f"CUDA graph {s} px: img/s, x twin, x timm" for s in graph_sizes)
             + "".join(f" | training {s} px, eager / CUDA graph: img/s, x twin" for s in train_sizes) + " |",
             "|---|---|" + "---|" * (len(graph_sizes) + len(train_sizes))]
    for model in _zoo_models(_ok(rows, phase="infer")):
        row = eager.get((model, eager_size))
        cells = ["" if row is None else
                 f"{row['img_per_s']:,.0f}, {_ratio(row, eager.get((row.get('twin_model'), eager_size)))} "
                 f"({row['host_ms']:.1f} / {row['device_ms']:.1f})"]
        for size in graph_sizes:
            row = graphed.get((model, size))
            cells.append("" if row is None else
                         f"{row['img_per_s']:,.0f}, {_ratio(row, graphed.get((row.get('twin_model'), size)))}, "
                         f"{_ratio(row, graphed.get((row.get('timm_model'), size)))}")
        for size in train_sizes:
            pair = [train[mode].get((model, size)) for mode in ("none", "cuda-graph")]
            cells.append(" / ".join("" if row is None else f"{row['img_per_s']:,.0f}, "
                                    f"{_ratio(row, table.get((row.get('twin_model'), size)))}"
                                    for row, table in zip(pair, train.values(), strict=True)))
        lines.append(f"| `{model.replace('_patch16_224', '')}` | " + " | ".join(cells) + " |")
    train_batches = sorted({row["batch"] for row in train["cuda-graph"].values() if row["img_size"] in train_sizes})
    train_note = (f"; training: zero_grad, forward, cross-entropy, backward, AdamW at batch "
                  f"{'/'.join(map(str, train_batches))}" if train_sizes else "")
    lines += ["", f"{_measured_with(info)}: bf16, batch 256 at 224 px and the same tokens per batch above{train_note}, "
              f"median of 3 interleaved repeats in one process per command (`{source.as_posix()}`; its `info` has "
              "the code revisions, the commands and a note on what they left out)."]
    return "\n".join(lines)


def to_markdown(data: dict[str, Any]) -> str:
    """Every speed table of one result file, with the provenance line they were measured with."""
    info, rows = data["info"], data["rows"]
    sections = [
        f"Measured on {_measured_with(info, full=True)}, bf16 autocast, eager unless a table says otherwise, each "
        "model beside its softmax twin and timm's model in one process, interleaved, 3 repeats (the code revisions "
        "and commands: the file's `info`, with a note on what they left out).",
        "**Inference** (batch 256 at 224 and the same tokens per batch above):",
        inference_table(rows),
    ]
    infer_sizes = sorted({r["img_size"] for r in _ok(rows, phase="infer", compile="none")})
    if infer_sizes:
        sections += [f"**Host and device time per inference step at {infer_sizes[0]} px** (host: time to enqueue "
                     "one step, steps back to back; above 1.0 the model is host-bound):",
                     host_device_table(rows, "infer", infer_sizes[0])]
    train_sizes = sorted({r["img_size"] for r in _ok(rows, phase="train", compile="none")})
    if train_sizes:
        sections += [f"**Training step** (zero_grad, forward, cross-entropy, backward, AdamW) at {train_sizes[0]} px:",
                     host_device_table(rows, "train", train_sizes[0])]
    if _ok(rows, phase="latency", compile="none"):
        sections += ["**Batch-1 latency**:", latency_table(rows)]
    for mode in sorted({r["compile"] for r in rows} - {"none"}):
        for phase in ("infer", "train"):
            for size in sorted({r["img_size"] for r in _ok(rows, phase=phase, compile=mode)}):
                title = (f"**{'Inference' if phase == 'infer' else 'Training step'} compiled** "
                         f"(`torch.compile(mode='{mode}', fullgraph=True)`) at {size} px:")
                if mode == "cuda-graph" and phase == "infer":
                    title = (f"**Inference replayed from a CUDA graph** of the eager model (captured once; no host "
                             f"work per step, so the throughput is what the eager kernels cost) at {size} px:")
                elif mode == "cuda-graph":
                    title = (f"**Training step with the forward and backward replayed from CUDA graphs** (as "
                             f"`train.py` with `cuda_graph=true`: cross-entropy and AdamW stay eager) at {size} px:")
                sections += [title, host_device_table(rows, phase, size, mode)]
    return "\n\n".join(sections)


def sizes_table(section: dict[str, Any]) -> str:
    """Inference of the other model sizes (a section whose ``parts`` are compare results, one per size): per zoo
    model, replayed from a CUDA graph with the ratios to its softmax twin and timm's model and the device time, and
    eager with its ratio to the twin and host / device ms."""
    lines = ["| model | px | CUDA graph: img/s | x twin | x timm | device ms "
             "| eager: img/s, x twin (host / device ms) |", "|---|---|---|---|---|---|---|"]
    for part in section["parts"]:
        graphed = _index(_ok(part["rows"], phase="infer", compile="cuda-graph"))
        eager = _index(_ok(part["rows"], phase="infer", compile="none"))
        for model in _zoo_models(part["rows"]):
            for size in sorted(s for m, s in graphed if m == model):
                row, plain = graphed[(model, size)], eager.get((model, size))
                twin, timm_row = graphed.get((row["twin_model"], size)), graphed.get((row["timm_model"], size))
                eager_cell = "-" if plain is None else (
                    f"{plain['img_per_s']:,.0f}, {_ratio(plain, eager.get((plain['twin_model'], size)))} "
                    f"({plain['host_ms']:.1f} / {plain['device_ms']:.1f})")
                lines.append(f"| `{model}` | {size} | {row['img_per_s']:,.0f} | {_ratio(row, twin)} | "
                             f"{_ratio(row, timm_row)} | {row['device_ms']:.2f} | {eager_cell} |")
    info = section["parts"][0]["info"]
    lines += ["", f"{_measured_with(info)}: bf16, batch 256, each size beside its softmax twin and timm's model in one "
              f"process, median of 3 interleaved repeats (`{SECTIONS.as_posix()}`, section `{SIZES_SECTION}`)."]
    return "\n".join(lines)


def processes_table(section: dict[str, Any], phase: str, compile_mode: str, source: Path, name: str) -> str:
    """Rows measured in several processes (a section whose ``parts`` are compare results, one per process): per zoo
    model its img/s with the ratios to the softmax twin and timm's model of its own process, host and device ms and
    launches, and those references' own img/s (host-bound rows move between processes, the references with them).
    The footer names the results file ``source`` and the section ``name`` the rows came from."""
    lines = ["| model | img/s (min-max of repeats) | x twin | x timm | host / device ms | launches | "
             "process: its twin, timm img/s |", "|---|---|---|---|---|---|---|"]
    for number, part in enumerate(section["parts"], 1):
        rows = _ok(part["rows"], phase=phase, compile=compile_mode)
        by_model = {row["model"]: row for row in rows}
        for row in rows:
            if row.get("role") != "zoo":
                continue
            twin, timm_row = by_model.get(row.get("twin_model")), by_model.get(row.get("timm_model"))
            references = ", ".join(f"`{ref['model']}` {ref['img_per_s']:,.0f}" for ref in (twin, timm_row) if ref)
            lines.append(
                f"| `{row['model']}` | {row['img_per_s']:,.0f} ({row['img_per_s_min']:,.0f}-"
                f"{row['img_per_s_max']:,.0f}) | {_ratio(row, twin)} | {_ratio(row, timm_row)} | "
                f"{row['host_ms']:.1f} / {row['device_ms']:.1f} | {row['launches']:.0f} | {number}: {references} |")
    infos = [part["info"] for part in section["parts"]]
    batches = sorted({row["batch"] for part in section["parts"] for row in _ok(part["rows"], phase=phase)})
    repeats = sorted({str(info["config"]["repeats"]) for info in infos if "repeats" in info.get("config", {})})
    lines += ["", f"{_measured_with(infos[0])}: bf16, batch {'/'.join(map(str, batches))}, "
              + (f"{len(infos)} processes one after another" if len(infos) > 1 else "one process") + ", median of "
              f"{'/'.join(repeats) or 'the'} interleaved repeats (`{source.as_posix()}`, section `{name}`)."]
    return "\n".join(lines)


def official_table(data: dict[str, Any], source: Path) -> str:
    """The zoo's models beside the authors' code (``benchmarks/official_speed.py``'s result): per zoo model, phase,
    resolution and mode both img/s, their ratio, and each one's host and device ms per step."""
    rows = _ok(data["rows"])
    index = {(row["model"], row["phase"], row["img_size"], row["compile"]): row for row in rows}
    lines = ["| zoo model | phase | px | mode | batch | zoo img/s | official img/s | x official | "
             "host ms zoo / official | device ms zoo / official |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        official = index.get((row.get("official_model"), row["phase"], row["img_size"], row["compile"]))
        if official is None:
            continue
        lines.append(
            f"| `{row['model']}` | {row['phase']} | {row['img_size']} | "
            f"{_MODE_NAMES.get(row['compile'], row['compile'])} | {row['batch']} | {row['img_per_s']:,.0f} | "
            f"{official['img_per_s']:,.0f} | {_ratio(row, official)} | {row['host_ms']:.1f} / "
            f"{official['host_ms']:.1f} | {row['device_ms']:.2f} / {official['device_ms']:.2f} |")
    info = data["info"]
    lines += ["", f"{_measured_with(info, full=True)}: bf16, the batch of each row (the same tokens per batch at "
              f"every resolution), median of interleaved repeats beside the zoo model's softmax twin and timm's model "
              f"(`{source.as_posix()}`; its `info` has the commands, settings and code revisions)."]
    return "\n".join(lines)


def compile_table(data: dict[str, Any]) -> str:
    """``benchmarks/compile_models.py``'s result: compile time, warnings, eager and compiled img/s and device ms per
    model, with the ratios to the compiled softmax twin and to timm's compiled DeiT."""
    info, rows = data["info"], data["rows"]
    by_name = {row["model"]: row for row in rows if row.get("status") == "ok"}
    twin, timm_model = by_name.get("softmax_deit_tiny_patch16_224"), by_name.get("deit_tiny_patch16_224")
    lines = ["| model | compile s | warnings | eager img/s | eager device ms | compiled img/s | compiled device ms | "
             "step / device time | x softmax twin | x timm DeiT-T |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| `{row['model']}` | {row.get('compile_s', '')} | | | | {row['status']} | | | | |")
            continue
        step_ms = row["batch"] / row["img_per_s"] * 1e3
        lines.append(
            f"| `{row['model']}` | {row['compile_s']:.0f} | {row['warnings']} | {row['eager_img_per_s']:,.0f} | "
            f"{row['eager_device_ms']:.2f} | {row['img_per_s']:,.0f} | {row['device_ms']:.2f} | "
            f"{step_ms / row['device_ms']:.2f} | {_ratio(row, twin)} | {_ratio(row, timm_model)} |"
        )
    first = rows[0] if rows else {}
    lines += ["", f"Measured on {_measured_with(info, full=True)}: inference, bf16 autocast, batch "
              f"{first.get('batch', '')} at {first.get('img_size', '')} px, "
              f"`torch.compile(mode='{first.get('compile', '')}', fullgraph=True)`, one process, models one after "
              "another (not interleaved; one timing of 20 steps each)."]
    return "\n".join(lines)


def _style_panel(ax: Any, ylabel: str, title: str) -> None:
    """A panel against resolution: log scale, axis labels, title, grid and legend."""
    ax.set_yscale("log")
    ax.set_xlabel("resolution (px)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _save_figure(fig: Any, data: dict[str, Any], out: Path) -> None:
    """Title ``fig`` with the result's GPU and date and write it to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    fig.suptitle(f"{data['info']['device']}, {data['info']['date'][:10]}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def plot_throughput(data: dict[str, Any], out: Path) -> None:
    """img/s against resolution, one line per model (log scale), the twins and timm's models dashed: eager, and
    beside it replayed from a CUDA graph when the result has such rows (the device-bound number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [mode for mode in ("none", "cuda-graph") if _ok(data["rows"], phase="infer", compile=mode)]
    fig, axes = plt.subplots(1, len(modes), figsize=(8 * len(modes), 5), dpi=120, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        infer = _ok(data["rows"], phase="infer", compile=mode)
        for model in dict.fromkeys(r["model"] for r in infer):
            points = sorted((r["img_size"], r["img_per_s"]) for r in infer if r["model"] == model)
            role = next(r.get("role") for r in infer if r["model"] == model)
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.2, ls="-" if role == "zoo" else "--",
                    label=model.replace("_patch16_224", ""))
        what = "eager (host-bound: follows the CPU)" if mode == "none" else "replayed from a CUDA graph (device-bound)"
        _style_panel(ax, "images / s (bf16)", f"Inference, same tokens per batch, {what}")
    _save_figure(fig, data, out)


def latency_series(rows: list[dict], graphed: bool) -> dict[str, list[tuple[int, float, float]]]:
    """Per model, (resolution, p50 ms, p90 ms) of its batch-1 latency rows by resolution: eager, or replayed from a
    CUDA graph (``graphed``; rows without graphed numbers are left out)."""
    p50, p90 = ("graphed_p50_ms", "graphed_p90_ms") if graphed else ("latency_p50_ms", "latency_p90_ms")
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in _ok(rows, phase="latency", compile="none"):
        if row.get(p50) is not None:
            series.setdefault(row["model"], []).append((row["img_size"], row[p50], row[p90]))
    return {model: sorted(points) for model, points in series.items()}


def plot_latency(data: dict[str, Any], out: Path) -> None:
    """Batch-1 latency against resolution, median with a bar up to the 90th percentile, one line per model (log
    scale), the twins and timm's models dashed: eager, and replayed from a CUDA graph. Eager, one image's forward
    takes longer to enqueue than to run, so that panel follows the host; the graphed panel is the device's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = {r["model"]: r.get("role") for r in data["rows"]}
    panels = [(graphed, series) for graphed in (False, True) if (series := latency_series(data["rows"], graphed))]
    if not panels:
        raise ValueError("the result has no batch-1 latency rows (vitzoo-bench --compare --phases latency)")
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), dpi=120, squeeze=False)
    for ax, (graphed, series) in zip(axes[0], panels, strict=True):
        for model, points in series.items():
            sizes, p50, p90 = zip(*points, strict=True)
            ax.errorbar(sizes, p50, yerr=[[0.0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]],
                        marker="o", ms=3, lw=1.2, capsize=2, ls="-" if roles.get(model) == "zoo" else "--",
                        label=model.replace("_patch16_224", ""))
        what = ("replayed from a CUDA graph (the device's time)" if graphed else
                "eager (host-bound: the time to enqueue each kernel, which follows the CPU)")
        _style_panel(ax, "latency, batch 1 (ms, median; bar to p90)", f"Batch-1 inference, {what}")
    _save_figure(fig, data, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a vitzoo-bench --compare JSON")
    parser.add_argument("--readme", type=Path, help="rewrite the tables in this markdown file between the markers")
    parser.add_argument("--plot", type=Path, help="write the throughput-vs-resolution plot here (PNG)")
    parser.add_argument("--latency-plot", type=Path, help="write the batch-1 latency-vs-resolution plot here (PNG)")
    args = parser.parse_args(argv)
    try:
        data = load(args.results)
        text = to_markdown(data)
        if args.readme:
            rewrite_between_markers(args.readme, MARKERS, text)
        if args.latency_plot:
            plot_latency(data, args.latency_plot)
        if args.plot:
            plot_throughput(data, args.plot)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if not args.readme:
        print(text)


if __name__ == "__main__":
    main()
