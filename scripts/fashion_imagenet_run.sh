#!/usr/bin/env bash
# Accuracy of every family's tiny model at ImageNet shape (224 px, the ImageNet recipes) on ImageNet-shaped
# Fashion-MNIST, for the accuracy-vs-speed plot. Written for a GPU machine (docs/benchmarks.md: what it measured).
#
# 1. Builds the image folder (scripts/make_fashion_imagenet.py: 256 px RGB JPEGs, 60000 train / 10000 val) from
#    the four Fashion-MNIST idx .gz files, unless --data already holds a finished build (its COMPLETE file, which
#    records --per-class; a build with another --per-class is refused).
#    With --packed, then packs it once into DATA_packed (vitzoo-pack: decoded pixels, for crop_on_device runs whose
#    workers then copy instead of decoding), which the runs and evaluations read with dataset=packed.
# 2. Trains each (family, seed) with `accelerate launch train.py --config configs/fashion_imagenet/<family>.yaml
#    --data-dir DATA --output RUNS/<family>-seed<k> --resume auto seed=<k>`: one process per run, --runs-per-gpu
#    runs per GPU (default 1), --gpus x --runs-per-gpu runs at a time. Each run folder gets train.py's config.yaml,
#    log.jsonl, summary.csv and checkpoints/; beside it, RUNS/<family>-seed<k>.util.csv holds the GPU's utilisation
#    while the run trained (nvidia-smi every 250 ms, where there is one).
# 3. Evaluates each finished run's last checkpoint on val with eval.py (the EMA weights where the recipe keeps an
#    EMA: qt, qtvit_1) and appends the row to RESULTS (timm's results columns + vitzoo's; one row per run, the
#    checkpoint column names the run folder and so the seed; evaluations take turns on a lock, as eval.py replaces
#    the CSV to append). Then RUNS/<family>-seed<k>.done is written.
#
# Rerunning the same command continues: finished runs (.done) are skipped, interrupted ones resume from their newest
# checkpoint (every 2000 updates and each epoch end), so the work can be spread over several calls of a time-limited
# machine (e.g. `timeout 540 bash scripts/fashion_imagenet_run.sh ...`: a stopped script stops its runs). A failed run leaves RUNS/<family>-seed<k>.failed and its log; the others go on and the script exits 1.
#
#   bash scripts/fashion_imagenet_run.sh                                  # all 10 models, seed 0, 30 epochs
#   bash scripts/fashion_imagenet_run.sh --seeds "0 1 2" --gpus 8
#   bash scripts/fashion_imagenet_run.sh --families "linear softmax" --epochs 3 -- workers=12
#
# Options:
#   --families "F ..."  config names in configs/fashion_imagenet (default: every DeiT family of vitzoo.registry and
#                       qtvit_1)
#   --seeds "S ..."     seeds (default 0)
#   --epochs N          epochs (default: the configs' 30); warm-up and cool-down epochs are scaled by N/30, as the
#                       configs scale the ImageNet recipe's
#   --gpus N            GPUs to use, run slot i on GPU i mod N (default: the number of GPUs nvidia-smi lists, else 1)
#   --runs-per-gpu K    runs sharing each GPU at once (default 1); a graphed DeiT-T run whose loader sets its pace
#                       leaves most of a large GPU idle, so two or three can share one (give each fewer workers)
#   --fm-dir DIR        folder of the idx .gz files (default /usr/share/datasets/fashion-mnist if present, else
#                       device_carry/fashion-mnist, git-ignored, for copies carried to the GPU machine)
#   --data DIR          the image folder (default data/fashion_imagenet)
#   --per-class N       build at most N images per class and split (default: all; use another --data for subsets)
#   --packed            train and evaluate from a packed store of the folder (DATA_packed, made once); pass
#                       crop_on_device=true (and augment_on_device=true) among the overrides to crop on the device
#   --runs DIR          run folders (default runs/fashion_imagenet/e<epochs>)
#   --results CSV       eval rows (default results/fashion_imagenet.csv)
#   --dry-run           print the runs (<family>-seed<k>) the options select, one a line, and exit
#   -- key=value ...    train.py config overrides for every run
#
# Then fold the runs and a vitzoo-bench CSV of the same models at 224 px into the results file (and its plot):
#   python scripts/fashion_imagenet_results.py --runs RUNS --eval RESULTS --bench BENCH.csv --git-revision REV \
#       --out benchmarks/results/fashion_imagenet/<gpu>.json && python -m vitzoo.report
set -euo pipefail
cd "$(dirname "$0")/.."

# an explicit PYTHON wins; else the active virtual environment's, else the repository's .venv, else python3
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

FAMILIES=""
SEEDS="0" DRY_RUN="" PACKED="" EPOCHS="" GPUS="" PER_GPU=1 FM_DIR="" DATA=data/fashion_imagenet PER_CLASS="" RUNS="" RESULTS=results/fashion_imagenet.csv
OVERRIDES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --families) FAMILIES=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        --epochs) EPOCHS=$2; shift 2 ;;
        --gpus) GPUS=$2; shift 2 ;;
        --runs-per-gpu) PER_GPU=$2; shift 2 ;;
        --fm-dir) FM_DIR=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --per-class) PER_CLASS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --results) RESULTS=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --packed) PACKED=1; shift ;;
        --) shift; OVERRIDES=("$@"); break ;;
        *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if [ -z "$FAMILIES" ]; then
    FAMILIES=$("$PYTHON" -c 'from vitzoo.registry import DEIT_FAMILIES, FAMILIES
print(*DEIT_FAMILIES, FAMILIES["qtvit"].model_name("1"))')
fi
for value in "$EPOCHS" "$GPUS" "$PER_CLASS" "$PER_GPU"; do
    [[ -z "$value" || "$value" =~ ^[1-9][0-9]*$ ]] \
        || { echo "error: --epochs, --gpus, --runs-per-gpu and --per-class take a positive integer, got $value" >&2
             exit 2; }
done
for family in $FAMILIES; do
    [ -f "configs/fashion_imagenet/$family.yaml" ] \
        || { echo "error: no configs/fashion_imagenet/$family.yaml; families are:" \
                  $(cd configs/fashion_imagenet && ls -- *.yaml | sed 's/\.yaml$//') >&2; exit 2; }
done
if [ -n "$DRY_RUN" ]; then
    for seed in $SEEDS; do
        for family in $FAMILIES; do echo "$family-seed$seed"; done
    done
    exit 0
fi
if [ -z "$GPUS" ]; then
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$GPUS" -gt 0 ] || GPUS=1
fi
if [ -z "$FM_DIR" ]; then
    FM_DIR=/usr/share/datasets/fashion-mnist
    [ -d "$FM_DIR" ] || FM_DIR=device_carry/fashion-mnist
fi
RUNS=${RUNS:-runs/fashion_imagenet/e${EPOCHS:-30}}
mkdir -p "$RUNS" "$(dirname "$RESULTS")"

BUILD="per_class=${PER_CLASS:-all}"
if [ -f "$DATA/COMPLETE" ] && [ "$(cat "$DATA/COMPLETE")" != "$BUILD" ]; then
    echo "error: $DATA was built with $(cat "$DATA/COMPLETE"), not $BUILD; pass another --data" >&2
    exit 2
fi
if [ ! -f "$DATA/COMPLETE" ]; then
    # A build cut off before COMPLETE left a partial folder: rebuild it whole.
    "$PYTHON" scripts/make_fashion_imagenet.py --source "$FM_DIR" --out "$DATA" --jobs "$(nproc)" --overwrite \
        ${PER_CLASS:+--per-class "$PER_CLASS"}
    echo "$BUILD" > "$DATA/COMPLETE"
fi
# where the runs read their images: the folder, or its packed store (vitzoo-pack refuses to overwrite a store, and a
# store exists only once complete)
READ=("$DATA" folder)
if [ -n "$PACKED" ]; then
    READ=("${DATA%/}_packed" packed)
    if [ ! -f "${READ[0]}/store.json" ]; then
        "$PYTHON" -m vitzoo.train.pack "$DATA" "${READ[0]}" --no-progress
    fi
fi

run_one() {  # gpu family seed
    local gpu=$1 family=$2 seed=$3
    local name="$family-seed$seed" config="configs/fashion_imagenet/$family.yaml"
    local args=(seed="$seed") scaled=()
    if [ -n "$EPOCHS" ]; then
        read -ra scaled < <("$PYTHON" -c 'import sys; from vitzoo.train.config import load_config
c, n = load_config(sys.argv[1]), int(sys.argv[2])
print(f"epochs={n} warmup_epochs={c.warmup_epochs * n / c.epochs:g} cooldown_epochs={round(c.cooldown_epochs * n / c.epochs)}")
' "$config" "$EPOCHS")
        args+=("${scaled[@]}")
    fi
    local ema=()
    grep -q '^model_ema: true' "$config" && ema=(--use-ema)
    rm -f "$RUNS/$name.failed"
    echo "start $name on GPU $gpu ($(date -u +%T))"
    # the GPU's utilisation while it trains, every 250 ms, in UTC (scripts/fashion_imagenet_results.py reads it)
    local sampler=""
    if command -v nvidia-smi > /dev/null; then
        TZ=UTC nvidia-smi --id="$gpu" --query-gpu=timestamp,utilization.gpu --format=csv,noheader -lms 250 \
            >> "$RUNS/$name.util.csv" 2> /dev/null &
        sampler=$!
    fi
    local trained=0
    CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
        --dynamo_backend no --mixed_precision no \
        train.py --config "$config" --data-dir "${READ[0]}" --output "$RUNS/$name" --resume auto \
        dataset="${READ[1]}" "${args[@]}" "${OVERRIDES[@]}" progress=false >> "$RUNS/$name.log" 2>&1 || trained=$?
    if [ -n "$sampler" ]; then kill "$sampler" 2> /dev/null || true; fi
    if [ "$trained" -eq 0 ] \
        && CUDA_VISIBLE_DEVICES=$gpu flock "$RUNS/.results.lock" "$PYTHON" eval.py --checkpoint "$RUNS/$name" "${ema[@]}" \
            --dataset "${READ[1]}" --data-dir "${READ[0]}" \
            --results-file "$RESULTS" --workers 8 --no-macs >> "$RUNS/$name.log" 2>&1; then
        date -u +%FT%TZ > "$RUNS/$name.done"
        echo "done  $name ($(date -u +%T))"
    else
        touch "$RUNS/$name.failed"
        echo "FAILED $name: see $RUNS/$name.log" >&2
    fi
}

# One background run per slot (--runs-per-gpu slots per GPU); a slot is free when its run has ended (polled: runs
# last minutes).
# Job control gives each run its own process group, so a stopped script (timeout, Ctrl-C) also stops its trainers
# and their loader workers instead of leaving them to race a rerun on the same run folder.
set -m
declare -a SLOT_PID=()
stop_runs() {
    for pid in "${SLOT_PID[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    echo "stopped; rerun the same command to continue from the newest checkpoints" >&2
    exit 143
}
trap stop_runs INT TERM
for seed in $SEEDS; do
    for family in $FAMILIES; do
        [ -f "$RUNS/$family-seed$seed.done" ] && { echo "skip  $family-seed$seed (done)"; continue; }
        while true; do
            free=""
            for ((i = 0; i < GPUS * PER_GPU; i++)); do
                pid=${SLOT_PID[i]:-}
                if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then free=$i; break; fi
            done
            [ -n "$free" ] && break
            sleep 10
        done
        run_one "$((free % GPUS))" "$family" "$seed" &
        SLOT_PID[free]=$!
    done
done
wait

failed=0
for seed in $SEEDS; do
    for family in $FAMILIES; do
        if [ -f "$RUNS/$family-seed$seed.failed" ]; then failed=$((failed + 1)); fi
    done
done
echo "results: $RESULTS; run folders: $RUNS; failed runs: $failed"
[ "$failed" -eq 0 ]
