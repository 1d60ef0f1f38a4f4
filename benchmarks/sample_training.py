"""Where a training process's threads spend their time, sampled from outside while it trains at full speed.

``benchmarks/profile_training.py`` instruments every operation, and its cost falls unevenly on the threads (most on
the decoding thread's per-image operations), so its stage times can name the wrong limit. This script starts
``train.py`` (its ``--config``, ``--data-dir`` and ``key=value`` overrides, in a temporary folder), waits for the end
of its first ``--after-epochs`` epochs (the loader's start, CUDA-graph capture and kernel tuning), and samples it
with `py-spy <https://github.com/benfred/py-spy>`_ (``pip install py-spy``; it reads the process's memory, so the
host must allow ptrace) twice, ``--seconds`` each at ``--rate`` Hz:

- every thread whether it runs or waits (``--idle``): per thread, the share of its samples in which each frame
  (``function (file:line)``) was on its stack (the frames on nearly every sample, such as the thread's entry, are
  left out), and for a thread whose samples are nearly all one waiting frame, that it waited;
- only the thread holding the GIL (``--gil``): each thread's share of the sampling ticks (``rate x seconds``) in
  which it held the GIL; the rest of a busy thread's time is C++ that released it (or waiting to take it back).

``--native`` adds the C/C++ frames to both (where a thread waits inside PyTorch or the CUDA driver); py-spy then
pauses the process for each sample, which slows it, so sample at a lower ``--rate`` (e.g. 100). The training is
stopped after the samples. The summary is merged into ``--out`` (one entry per config, model and overrides, each with
its provenance; ``--label`` keeps entries of the same run apart, such as the code before and after a change)::

    python benchmarks/sample_training.py --config configs/fashion_imagenet/softmax.yaml --data-dir data/fim \\
        --out benchmarks/results/sample_training/h100.json \\
        -- workers=12 decode_on_device=true augment_on_device=true cuda_graph=true

``--from-raw IDLE GIL`` summarises two raw sample files made by hand (``py-spy record --pid PID --idle --threads -f
raw`` and the same with ``--gil``, at ``--rate`` for ``--seconds``) instead of starting a run; ``--git-revision`` and
``--info`` then give their provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitzoo.bench.common import environment, git_revision, merge_run, write_json  # noqa: E402
from vitzoo.train.config import ConfigError, first_line, load_config  # noqa: E402

# a frame on at least this share of a thread's samples is its entry or loop, not where its time goes
_EVERYWHERE = 0.995
# a thread with at least this share of its samples in one innermost frame spent the sampling waiting there
_WAITING = 0.99
# a results file holds one entry per config file, model, overrides and label
RUN_KEY = ("config_file", "model", "overrides", "label")
TOP = 40  # frames kept per thread


def _thread_name(header: str) -> str:
    """``thread (1617): MainThread`` -> ``MainThread``; an unnamed ``thread (862)`` keeps its header."""
    return header.split(": ", 1)[1] if ": " in header else header


def read_raw(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy's raw (collapsed stack) output: per thread name, (frames outermost first, sample count) pairs."""
    threads: dict[str, list[tuple[list[str], int]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        header, *frames = stack.split(";")
        threads.setdefault(_thread_name(header), []).append((frames, int(count)))
    return threads


def summarise(idle: dict[str, list[tuple[list[str], int]]], gil: dict[str, list[tuple[list[str], int]]],
              ticks: int, top: int = TOP) -> dict[str, Any]:
    """Per thread of the ``--idle`` samples ``idle``: its samples, the share of ``ticks`` in which ``gil`` has it
    holding the GIL, and its ``top`` frames by the share of its samples that have them on the stack; the threads that
    spent the sampling in one waiting frame are listed apart (threads of one name are counted together)."""
    threads: dict[str, Any] = {}
    waiting: dict[str, str] = {}
    for name, stacks in sorted(idle.items()):
        samples = sum(count for _, count in stacks)
        held = sum(count for _, count in gil.get(name, []))
        innermost = Counter()
        on_stack = Counter()
        for frames, count in stacks:
            if frames:
                innermost[frames[-1]] += count
            for frame in set(frames):
                on_stack[frame] += count
        leaf, leaf_count = innermost.most_common(1)[0] if innermost else ("", 0)
        if leaf_count >= _WAITING * samples and not held:
            waiting[name] = leaf
            continue
        frames = [{"frame": frame, "percent": round(100 * count / samples, 1)}
                  for frame, count in on_stack.most_common() if count < _EVERYWHERE * samples][:top]
        threads[name] = {"samples": samples, "gil_percent": round(100 * held / ticks, 1), "frames": frames}
    return {"threads": threads, "waiting_threads": waiting}


def find_py_spy(path: str | None = None) -> str | None:
    """``path``, else py-spy on PATH, else the one installed beside this Python (a virtual environment's)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = path or shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    return found if found and Path(found).exists() else None


def _wait_for_epochs(log: Path, epochs: int, process: subprocess.Popen, timeout: float) -> None:
    """Return once ``log`` (train.py's log.jsonl) records ``epochs`` evaluations; raise if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the training run ended (exit code {process.returncode}) before {epochs} epoch(s)")
        if log.exists():
            done = sum(json.loads(line).get("event") == "eval" for line in log.read_text().splitlines() if line)
            if done >= epochs:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the training run did not finish {epochs} epoch(s) in {timeout:.0f} s")


def sample_run(config_path: str | None, data_dir: str | None, overrides: list[str], py_spy: str,
               after_epochs: int, seconds: int, rate: int, native: bool, timeout: float,
               top: int = TOP) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the run in a temporary folder, sample it as the module says, stop it; return (the summary, the run's
    configuration)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "run"
        # epochs enough never to end while sampled (the run is stopped after the samples)
        run_overrides = [*overrides, f"epochs={after_epochs + 100}", "progress=false", "checkpoint_interval=0"]
        config = load_config(config_path, run_overrides, data_dir=data_dir, output=str(output))
        command = [sys.executable, str(ROOT / "train.py"), "--output", str(output), *run_overrides]
        if config_path:
            command[2:2] = ["--config", config_path]
        if data_dir:
            command[2:2] = ["--data-dir", data_dir]
        with (Path(folder) / "train.log").open("w") as log:
            # a session of its own: the loader's workers are stopped with it
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            _wait_for_epochs(output / "log.jsonl", after_epochs, process, timeout)
            raw = {}
            for mode in ("idle", "gil"):
                raw[mode] = Path(folder) / f"{mode}.txt"
                record = [py_spy, "record", "--pid", str(process.pid), f"--{mode}", "--threads", "--rate", str(rate),
                          "--duration", str(seconds), "--format", "raw", "--output", str(raw[mode])]
                # py-spy reads C++ stacks only from a paused process; Python stacks it reads while the run goes on
                record.append("--native" if native else "--nonblocking")
                done = subprocess.run(record, capture_output=True, text=True, timeout=seconds + 120)
                if done.returncode != 0 or not raw[mode].exists():
                    raise RuntimeError(f"py-spy could not sample the run: {first_line(done.stderr.strip() or '?')}")
            if process.poll() is not None:
                raise RuntimeError("the training run ended while it was sampled; give it more data or epochs")
            summary = summarise(read_raw(raw["idle"]), read_raw(raw["gil"]), rate * seconds, top)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return summary, config


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="train.py config YAML")
    parser.add_argument("--data-dir", help="the run's data folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="results JSON: one entry per (config, model, overrides, label), each with its provenance")
    parser.add_argument("--after-epochs", type=int, default=1, help="epochs trained before sampling (default 1)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each of the two samplings (default 4)")
    parser.add_argument("--rate", type=int, default=400, help="samples per second (default 400)")
    parser.add_argument("--native", action="store_true", help="also sample C/C++ frames")
    parser.add_argument("--top", type=int, default=TOP, help=f"frames kept per thread (default {TOP})")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the epochs (default 1800)")
    parser.add_argument("--py-spy", help="the py-spy executable (default: on PATH, else beside this Python)")
    parser.add_argument("--from-raw", nargs=2, type=Path, metavar=("IDLE", "GIL"),
                        help="summarise these two raw py-spy files instead of sampling a run")
    parser.add_argument("--git-revision", help="with --from-raw: the code revision the sampled run used")
    parser.add_argument("--info", type=Path, help="with --from-raw: JSON of the sampled machine's provenance fields")
    parser.add_argument("--label", default="",
                        help="names the entry beside others of the same run (e.g. the code before a change)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train.py config overrides")
    args = parser.parse_args(argv)
    if min(args.after_epochs, args.seconds, args.rate, args.top) < 1:
        parser.error("--after-epochs, --seconds, --rate and --top take positive integers")
    command = "python benchmarks/sample_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sampling = {"rate_hz": args.rate, "seconds": args.seconds, "after_epochs": args.after_epochs,
                "native": args.native}
    try:
        if args.from_raw:
            missing = [str(path) for path in args.from_raw if not path.exists()]
            if missing:
                raise RuntimeError(f"{', '.join(missing)} does not exist")
            summary = summarise(read_raw(args.from_raw[0]), read_raw(args.from_raw[1]), args.rate * args.seconds,
                                args.top)
            config = load_config(args.config, args.overrides, data_dir=args.data_dir)
            info = (json.loads(args.info.read_text()) if args.info else {}) | {
                "command": command, "git_revision": args.git_revision or "",
                "note": "samples recorded by hand (py-spy record --idle / --gil, as this script does), summarised here"}
        else:
            py_spy = find_py_spy(args.py_spy)
            if py_spy is None:
                raise RuntimeError("py-spy not found: pip install py-spy, or pass --py-spy PATH")
            summary, config = sample_run(args.config, args.data_dir, args.overrides, py_spy,
                                         args.after_epochs, args.seconds, args.rate, args.native, args.timeout,
                                         args.top)
            import torch

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            info = environment(device) | {"command": command, "git_revision": git_revision(),
                                          "cpu_count": os.cpu_count()}
    except (ConfigError, ValueError, RuntimeError) as error:
        parser.error(first_line(error))
    run = {"config_file": args.config, "model": config.model, "overrides": args.overrides, "label": args.label,
           "info": info, "sampling": sampling, **summary}
    write_json(args.out, merge_run(args.out, run, RUN_KEY))
    for name, thread in summary["threads"].items():
        print(f"{name}: {thread['samples']} samples, GIL {thread['gil_percent']}%")
        for frame in thread["frames"][:8]:
            print(f"  {frame['percent']:5.1f}%  {frame['frame']}")
    if summary["waiting_threads"]:
        print(f"waiting all the time: {', '.join(summary['waiting_threads'])}")


if __name__ == "__main__":
    main()
