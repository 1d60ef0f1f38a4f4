#!/usr/bin/env bash
# Benchmark the whole zoo (every registered vitzoo ImageNet variant plus timm's DeiT-T/S/B and EfficientViT-B1/2/3)
# at 224..1024, write the CSVs, then draw every plot from them.
#
#   bash scripts/benchmark_zoo.sh                      # full sweep (GPU), then the plots if matplotlib is there
#   bash scripts/benchmark_zoo.sh --quick              # tiny models + a few baselines at 224, 512, 1024
#   bash scripts/benchmark_zoo.sh --sizes "224 384"    # cut the sweep to fit a time budget (one CSV per call)
#   bash scripts/benchmark_zoo.sh --plots-only --out runs/zoo_sweep/<date>-h200   # plots from existing CSVs
#
# The committed sweep is benchmarks/results/zoo_sweep/<gpu>.csv: the CSVs of one --out folder in one file (header
# once), with GPU, versions, dates, commands and revisions in <gpu>.json beside it; `python -m vitzoo.report` draws
# the plots docs/benchmarks.md shows from it.
#
# Options:
#   --out DIR            working folder (default runs/zoo_sweep/<UTC date>-<gpu>, e.g. runs/zoo_sweep/2026-11-29-h200)
#   --quick              tiny variants of every family, qtvit_1, deit_tiny, efficientvit_b1; sizes 224 512 1024
#   --sizes "A B ..."    resolutions (default 224 384 512 768 1024)
#   --models "P ..."     model names / fnmatch patterns (default: all vitzoo + the timm baselines)
#   --compile "M ..."    torch.compile modes besides eager, e.g. "default" (compiling costs ~0.5-1 min per model+size)
#   --precision "P ..."  fp32 / tf32 / bf16 (default bf16 on GPU, fp32 on CPU)
#   --time-budget S      seconds for this call's sweep; pairs not started by then are recorded as skipped (540)
#   --resume             keep the measured rows already in the CSV(s) of --tag and benchmark only the rest (a sweep
#                        spread over several calls: same --out, --tag and --gpus each time)
#   --gpus N             split the models over N GPUs, one process each (CUDA_VISIBLE_DEVICES=i, vitzoo-bench
#                        --shard i/N), each writing <tag>-gpu<i>.csv; the plots read them all
#   --tag NAME           CSV name inside --out (default: bench-<sizes>[-quick]); calls with other tags add files
#   --plots-only         skip the benchmark; redraw the plots from the CSVs in --out
#   --no-plots           only benchmark (e.g. on the GPU machine: plots are drawn on the CPU machine afterwards)
#   --bench-args "..."   extra vitzoo-bench options, e.g. "--model-kwargs depth=2 --batch-size 64"
#   --results "CSV ..."  vitzoo-eval result CSVs with measured top-1 for the Pareto plot
#
# On the GPU machine (no registry there): fvcore's wheels travel in the git-ignored device_carry/ folder and are
# installed into /tmp/site when fvcore is missing. The benchmark never imports matplotlib;
# when it is missing the plots are skipped and the command to draw them later is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

# an explicit PYTHON wins; else the active virtual environment's, else the repository's .venv, else python3
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

RESULTS_DIR="" QUICK=0 PLOTS_ONLY=0 PLOTS=1 TAG="" SIZES="224 384 512 768 1024" MODELS="" COMPILE="" PRECISION=""
BUDGET=540 RESULTS="" EXTRA="" GPUS=1 RESUME=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) RESULTS_DIR=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --sizes) SIZES=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        --compile) COMPILE=$2; shift 2 ;;
        --precision) PRECISION=$2; shift 2 ;;
        --time-budget) BUDGET=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --gpus) GPUS=$2; shift 2 ;;
        --resume) RESUME=--resume; shift ;;
        --plots-only) PLOTS_ONLY=1; shift ;;
        --no-plots) PLOTS=0; shift ;;
        --bench-args) EXTRA=$2; shift 2 ;;
        --results) RESULTS=$2; shift 2 ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "benchmark_zoo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! "$PYTHON" -c "import fvcore" 2>/dev/null; then
    wheels=$(ls device_carry/fvcore-*.whl device_carry/iopath-*.whl device_carry/yacs-*.whl \
             device_carry/termcolor-*.whl 2>/dev/null || true)
    if [ -n "$wheels" ]; then
        # shellcheck disable=SC2086  # one word per wheel
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site $wheels
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
        echo "benchmark_zoo.sh: fvcore is missing and device_carry/ holds no fvcore wheels (GMACs need them)" >&2
        exit 1
    fi
fi

if [ -z "$RESULTS_DIR" ]; then
    device_tag=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower() \
if torch.cuda.is_available() else 'cpu')")
    RESULTS_DIR="runs/zoo_sweep/$(date -u +%Y-%m-%d)-$device_tag"
fi
mkdir -p "$RESULTS_DIR"

if [ "$QUICK" = 1 ]; then
    MODELS=${MODELS:-"*_deit_tiny_patch16_224 qtvit_1 deit_tiny_patch16_224 efficientvit_b1"}
    [ "$SIZES" = "224 384 512 768 1024" ] && SIZES="224 512 1024"
fi
MODELS=${MODELS:-"all-vitzoo deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224 \
efficientvit_b1 efficientvit_b2 efficientvit_b3"}

if [ "$PLOTS_ONLY" = 0 ]; then
    if [ -z "$TAG" ]; then
        TAG="bench-$(echo "$SIZES" | tr ' ' '-')"
        if [ "$QUICK" = 1 ]; then TAG="$TAG-quick"; fi
    fi
    set -f  # the model patterns reach python unexpanded
    run_shard() {  # run_shard <csv name> [extra vitzoo-bench options]
        local name=$1
        shift
        # shellcheck disable=SC2086  # word splitting of the lists is intended
        "$PYTHON" -m vitzoo.bench.sweep --models $MODELS --img-sizes $SIZES --compile none $COMPILE \
            ${PRECISION:+--precision $PRECISION} --scale-batch --max-phase-seconds 2 --time-budget "$BUDGET" \
            --results-file "$RESULTS_DIR/$name.csv" $RESUME $EXTRA "$@" 2>"$RESULTS_DIR/$name.log" \
            || { tail -n 20 "$RESULTS_DIR/$name.log" >&2; return 1; }
        tr '\r' '\n' <"$RESULTS_DIR/$name.log" | grep -v -i warn | tail -n 1 >&2 || true  # tqdm's last state
        echo "wrote $RESULTS_DIR/$name.csv"
    }
    if [ "$GPUS" = 1 ]; then
        run_shard "$TAG"
    else
        pids=()
        for ((i = 0; i < GPUS; i++)); do
            CUDA_VISIBLE_DEVICES=$i run_shard "$TAG-gpu$i" --shard "$i/$GPUS" &
            pids+=($!)
        done
        failed=0
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
        [ "$failed" = 0 ] || { echo "benchmark_zoo.sh: a shard failed (its log is above)" >&2; exit 1; }
    fi
    set +f
fi

if [ "$PLOTS" = 1 ] && "$PYTHON" -c "import matplotlib" 2>/dev/null; then
    # shellcheck disable=SC2086
    "$PYTHON" -m vitzoo.report.pareto --bench "$RESULTS_DIR" ${RESULTS:+--results $RESULTS} --out "$RESULTS_DIR/plots"
else
    echo "plots not drawn here; draw them (on a machine with matplotlib) with:"
    echo "  bash scripts/benchmark_zoo.sh --plots-only --out $RESULTS_DIR"
fi
