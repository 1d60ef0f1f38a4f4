"""The pages' commands match the code: every ``--flag`` that README.md, CONTRIBUTING.md or docs/*.md pass to one of
the project's commands is an option of that command (its ``--help`` lists it), and every ``key=value`` they pass to
the training commands is a config key."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# console scripts and module entry points: "module:function"
ENTRY_POINTS = {
    "vitzoo-models": "vitzoo.report.model_table:main",
    "vitzoo-train": "vitzoo.train.cli:train_main",
    "python train.py": "vitzoo.train.cli:train_main",
    "vitzoo-eval": "vitzoo.train.cli:eval_main",
    "python eval.py": "vitzoo.train.cli:eval_main",
    "vitzoo-convert": "vitzoo.convert:main",
    "vitzoo-bench": "vitzoo.bench.sweep:main",
    "python -m vitzoo.bench.sweep": "vitzoo.bench.sweep:main",
    "vitzoo-pareto": "vitzoo.report.pareto:main",
    "vitzoo-speed-report": "vitzoo.report.speed_report:main",
    "python -m vitzoo.report": "vitzoo.report.__main__:main",
}
# the repository's own scripts, run by path
SCRIPT = re.compile(r"python3? ((?:scripts|benchmarks|experiments)/[\w/]+\.py)")
# `accelerate launch [its own flags] train.py ...`: only what follows the script is the script's
ACCELERATE = re.compile(r"accelerate launch\b.*?\b(train\.py|eval\.py)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OVERRIDE = re.compile(r"(?<![\w=/.-])([a-z_][a-z0-9_]*)=")
# the commands whose key=value arguments are TrainConfig overrides
TAKE_OVERRIDES = ("python train.py", "vitzoo-train", "scripts/fashion_mnist_zoo.py", "scripts/fashion_mnist_study.py")


def _chunks(text: str) -> list[str]:
    """The page's code: each line of its fenced blocks (backslash continuations joined) and each inline code span."""
    chunks, fenced = [], re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    for block in fenced:
        chunks += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return chunks + re.findall(r"`([^`\n]+)`", prose)


def _commands(chunk: str) -> list[tuple[str, str]]:
    """(entry point or script path, the text of its arguments) for each command in ``chunk``: the arguments end at
    the next command, a comment, a pipe or a command separator."""
    commands = []
    for part in re.split(r"&&|;|\s\|\s", re.split(r"\s#", chunk)[0]):
        part = ACCELERATE.sub(lambda match: f"python {match.group(1)}", part)
        starts = sorted([(match.start(), match.end(), name) for name in ENTRY_POINTS
                         for match in re.finditer(rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", part)]
                        + [(match.start(), match.end(), match.group(1)) for match in SCRIPT.finditer(part)])
        for i, (_, end, name) in enumerate(starts):
            commands.append((name, part[end:starts[i + 1][0] if i + 1 < len(starts) else len(part)]))
    return commands


def _entry(name: str) -> Callable[[], object]:
    if name in ENTRY_POINTS:
        module, function = ENTRY_POINTS[name].split(":")
        return getattr(importlib.import_module(module), function)
    module_name = "docs_command_" + re.sub(r"\W", "_", name)
    spec = importlib.util.spec_from_file_location(module_name, ROOT / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


@cache
def _help(name: str) -> str:
    """What ``<name> --help`` prints (run in this process, with ``sys.argv`` set as the command line would)."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [name, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            _entry(name)()
    finally:
        sys.argv = argv
    return out.getvalue()


def _documented_flags() -> dict[tuple[str, str], set[str]]:
    """{(page, command): the flags the page passes to it}."""
    flags: dict[tuple[str, str], set[str]] = {}
    for page in PAGES:
        for chunk in _chunks(page.read_text(encoding="utf-8")):
            for name, arguments in _commands(chunk):
                flags.setdefault((page.relative_to(ROOT).as_posix(), name), set()).update(FLAG.findall(arguments))
    return flags


def test_the_pages_pass_their_commands_only_options_those_commands_have():
    documented = _documented_flags()
    assert len(documented) > 15, "the pages' commands were not found"
    scripts = {name for _, name in documented if name not in ENTRY_POINTS}
    assert all((ROOT / name).is_file() for name in scripts), sorted(n for n in scripts if not (ROOT / n).is_file())
    missing = [f"{page}: {name} {flag}" for (page, name), flags in sorted(documented.items())
               for flag in sorted(flags) if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", _help(name))]
    assert not missing, "options the pages use that the commands do not have:\n" + "\n".join(missing)


def test_the_pages_override_only_config_keys():
    from vitzoo.train.config import TrainConfig

    overrides = {(page.relative_to(ROOT).as_posix(), key) for page in PAGES
                 for chunk in _chunks(page.read_text(encoding="utf-8")) for name, arguments in _commands(chunk)
                 if name in TAKE_OVERRIDES for key in OVERRIDE.findall(arguments)}
    assert overrides, "the pages' overrides were not found"
    assert not [f"{page}: {key}=" for page, key in sorted(overrides) if key not in TrainConfig.keys()]
    assert OVERRIDE.findall(" --config c.yaml grad_accum=8 model_kwargs={a: 1} --out=x") == ["grad_accum",
                                                                                            "model_kwargs"]


def test_the_check_sees_an_option_a_command_lacks():
    (name, arguments), = _commands("vitzoo-bench --compare --no-such-option 3  # comment --ignored")
    assert name == "vitzoo-bench" and FLAG.findall(arguments) == ["--compare", "--no-such-option"]
    assert "--compare" in _help(name) and "--no-such-option" not in _help(name)
    # accelerate's own flags stay with accelerate; two commands on one line keep their own flags
    assert _commands("accelerate launch --multi_gpu train.py --config c.yaml") == [
        ("python train.py", " --config c.yaml")]
    assert [(n, FLAG.findall(a)) for n, a in _commands("python train.py --config x && vitzoo-eval --checkpoint y")] \
        == [("python train.py", ["--config"]), ("vitzoo-eval", ["--checkpoint"])]
    assert _chunks("a `vitzoo-eval --model m` b\n```bash\nvitzoo-bench \\\n  --compare\n```\n") == [
        "vitzoo-bench    --compare", "vitzoo-eval --model m"]
