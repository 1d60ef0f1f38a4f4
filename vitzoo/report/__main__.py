"""Regenerate every table and plot of README.md and docs/benchmarks.md from the committed results.

    python -m vitzoo.report              # rewrite the generated sections and redraw the plots (needs matplotlib)
    python -m vitzoo.report --no-plots   # the tables only

Each generated section sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` lines; what is outside the
markers is written by hand. ``tests/report/test_main.py`` checks that the committed README.md and
docs/benchmarks.md equal what this gives from the committed results.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitzoo.report import fashion_mnist, model_table, speed_report, zoo_sweep
from vitzoo.report._readme import replace_between_markers

RESULTS = Path("benchmarks/results")
COMPARE = speed_report.CURRENT
COMPARE_SECTIONS = speed_report.SECTIONS
ZOO_SWEEP = RESULTS / "zoo_sweep" / "h200.csv"
FASHION_MNIST_ZOO = RESULTS / "fashion_mnist_zoo" / "cpu.csv"
STUDY = RESULTS / "fashion_mnist_study"
COMPILE = RESULTS / "compile_models" / "h200.json"
# the ImageNet-shaped runs per GPU: (results file, its docs table's markers, the comparison file and section (None:
# its main rows) whose CUDA-graph inference rows at 224 px are its plot's x axis, measured on the same kind of GPU)
FASHION_IMAGENET = (
    (RESULTS / "fashion_imagenet" / "h200.json", fashion_mnist.IMAGENET_SHAPE_MARKERS,
     RESULTS / "compare" / "h200.json", None),
    (RESULTS / "fashion_imagenet" / "h100.json", fashion_mnist.IMAGENET_SHAPE_H100_MARKERS,
     RESULTS / "compare" / "h100.json", "train_224_current"),
)
# the ImageNet-shaped runs through the recipes' full length (stability): results file and section
RECIPE_LENGTH = (RESULTS / "fashion_imagenet" / "h100.json", "recipe_length_30_epochs")
DATA_PIPELINE = RESULTS / "data_pipeline" / "cpu.json"
DATA_PIPELINE_GPU = RESULTS / "data_pipeline" / "h100.json"
TRAINING_PROFILES = (RESULTS / "profile_training" / "h200.json", RESULTS / "profile_training" / "h100.json")
OFFICIAL = RESULTS / "official_speed" / "h100.json"
# the drawings of the results, beside the pages that show them (benchmarks/results holds the measurements only)
PLOTS = Path("docs/plots")


def _plot_prefix(results: Path) -> Path:
    """The start of the plots' paths of a results file: ``docs/plots/<benchmark>_<file stem>``."""
    return PLOTS / f"{results.parent.name}_{results.stem}"


def _plot_path(results: Path, name: str) -> Path:
    """Where the plot ``name`` of a results file goes: ``docs/plots/<benchmark>_<file stem>_<name>.png``."""
    prefix = _plot_prefix(results)
    return prefix.with_name(f"{prefix.name}_{name}.png")


def render(root: Path) -> dict[Path, str]:
    """``{page: its new text}`` for README.md and docs/benchmarks.md of the repository at ``root``."""
    readme, docs = root / "README.md", root / "docs" / "benchmarks.md"
    comparison = speed_report.load(root / COMPARE)  # the summary, the speed tables and the two-process table
    sections = speed_report.load(root / COMPARE_SECTIONS)  # the sizes and compiled-training tables
    readme_text = readme.read_text()
    readme_text = replace_between_markers(readme_text, model_table.MARKERS,
                                          model_table.to_markdown(model_table.load_counts(root / model_table.COUNTS)))
    readme_text = replace_between_markers(readme_text, fashion_mnist.BUDGET_MARKERS,
                                          fashion_mnist.budget_table(FASHION_MNIST_ZOO, root))
    study_table = fashion_mnist.study_table(root / STUDY / "runs.csv", [root / STUDY / "bench.csv"])
    readme_text = replace_between_markers(readme_text, fashion_mnist.STUDY_MARKERS, study_table)
    readme_text = replace_between_markers(readme_text, speed_report.SUMMARY_MARKERS,
                                          speed_report.summary_table(comparison, COMPARE))
    docs_text = docs.read_text()
    docs_text = replace_between_markers(docs_text, speed_report.MARKERS,
                                        speed_report.to_markdown(comparison))
    docs_text = replace_between_markers(docs_text, fashion_mnist.STUDY_MARKERS, study_table)
    docs_text = replace_between_markers(docs_text, speed_report.PROCESSES_MARKERS, speed_report.processes_table(
        comparison[speed_report.PROCESSES_SECTION], "infer", "none", COMPARE, speed_report.PROCESSES_SECTION))
    docs_text = replace_between_markers(docs_text, speed_report.SIZES_MARKERS, speed_report.sizes_table(
        sections[speed_report.SIZES_SECTION]))
    docs_text = replace_between_markers(docs_text, speed_report.COMPILED_TRAIN_MARKERS, speed_report.processes_table(
        sections[speed_report.COMPILED_TRAIN_SECTION], "train", "default", COMPARE_SECTIONS,
        speed_report.COMPILED_TRAIN_SECTION))
    for markers, section, phase in speed_report.H100_CURRENT_TABLES:
        docs_text = replace_between_markers(docs_text, markers, speed_report.processes_table(
            sections[section], phase, "cuda-graph", COMPARE_SECTIONS, section))
    docs_text = replace_between_markers(docs_text, speed_report.OFFICIAL_MARKERS, speed_report.official_table(
        speed_report.load(root / OFFICIAL), OFFICIAL))
    docs_text = replace_between_markers(docs_text, speed_report.COMPILE_MARKERS,
                                        speed_report.compile_table(speed_report.load(root / COMPILE)))
    for results, markers, _, _ in FASHION_IMAGENET:
        docs_text = replace_between_markers(docs_text, markers, fashion_mnist.imagenet_shape_table(root / results))
    docs_text = replace_between_markers(docs_text, fashion_mnist.RECIPE_LENGTH_MARKERS,
                                        fashion_mnist.recipe_length_table(root / RECIPE_LENGTH[0], RECIPE_LENGTH[1]))
    docs_text = replace_between_markers(docs_text, fashion_mnist.PIPELINE_MARKERS,
                                        fashion_mnist.pipeline_table(root / DATA_PIPELINE))
    docs_text = replace_between_markers(docs_text, fashion_mnist.GPU_PIPELINE_MARKERS,
                                        fashion_mnist.pipeline_table(root / DATA_PIPELINE_GPU))
    profiles = fashion_mnist.training_profile_table([root / path for path in TRAINING_PROFILES], TRAINING_PROFILES)
    docs_text = replace_between_markers(docs_text, fashion_mnist.TRAINING_PROFILE_MARKERS, profiles)
    docs_text = replace_between_markers(docs_text, zoo_sweep.MARKERS,
                                        zoo_sweep.to_markdown(zoo_sweep.load(root / ZOO_SWEEP)))
    return {readme: readme_text, docs: docs_text}


def plot(root: Path) -> list[Path]:
    """Redraw the plots the two pages show: the comparison's throughput and latency, the zoo sweep's throughput and
    Pareto plots, and the top-1 vs throughput plots of the ImageNet-shaped runs and the Fashion-MNIST study."""
    from vitzoo.report import pareto

    comparison = speed_report.load(root / COMPARE)
    compare_plot, latency_plot = root / _plot_path(COMPARE, "throughput"), root / _plot_path(COMPARE, "latency")
    compare_plot.parent.mkdir(parents=True, exist_ok=True)
    speed_report.plot_throughput(comparison, compare_plot)
    speed_report.plot_latency(comparison, latency_plot)
    written = [compare_plot, latency_plot,
               *zoo_sweep.plot(root / ZOO_SWEEP, root / _plot_prefix(ZOO_SWEEP))]
    for results, _, speeds, section in FASHION_IMAGENET:
        measured = speed_report.load(root / speeds)
        rows = measured["rows"] if section is None else [
            row for part in measured[section]["parts"] for row in part["rows"]]
        written += fashion_mnist.imagenet_shape_plot(root / results, root / _plot_path(results, "top1_vs_throughput"),
                                                     speed_report.graphed_inference({"rows": rows}, 224))
    study = root / STUDY
    written += pareto.save_plots([study / "bench.csv"], [study / "runs.csv"],
                                 {"top1_vs_throughput": root / _plot_path(STUDY / "runs.csv", "top1_vs_throughput")},
                                 use_published=False, reference="softmax")
    return written


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m vitzoo.report``."""
    parser = argparse.ArgumentParser(prog="python -m vitzoo.report", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: the current folder)")
    parser.add_argument("--no-plots", action="store_true", help="rewrite the tables only")
    args = parser.parse_args(argv)
    for page, text in render(args.root).items():
        page.write_text(text)
        print(f"wrote {page}")
    if not args.no_plots:
        for path in plot(args.root):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
