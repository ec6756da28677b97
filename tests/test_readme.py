"""The README's commands, checked without running them (``make readme-check`` runs them after ``make demo``):
every module and script exists, every CLI accepts its arguments, every recipe loads with its overrides, and every
run a command reads is one that ``make demo`` makes or that a README command before it trains or saves."""

from __future__ import annotations

import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.readme import Command, readme_commands
from training.config import TrainConfig

RUN_ARGS = ("checkpoint", "judge")  # CLI options that name a run (or a saved pipeline) to read


def demo_runs() -> set[str]:
    """The run folders ``make demo`` writes, from the Makefile's demo target."""
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^demo:.*?(?=^\S)", makefile, re.S | re.M).group(0)
    names = {f"runs/{n}" for n in re.findall(r"run\.name=([\w.-]+)", target)}
    return names | set(re.findall(r"run\.out_dir=(\S+)", target))


def module_and_args(command: Command) -> tuple[str | None, list[str]]:
    """(module, its arguments) of ``python -m M ...`` or ``accelerate launch ... -m M ...``; (None, argv) otherwise."""
    argv = command.argv
    if "-m" in argv:
        i = argv.index("-m")
        return argv[i + 1], argv[i + 2 :]
    return None, argv


def parsed_args(module_name: str, args: list[str], monkeypatch: pytest.MonkeyPatch):
    """What the CLI's parser makes of ``args``: its ``run`` is replaced by a recorder, so nothing runs."""
    module = importlib.import_module(module_name)
    monkeypatch.setattr("multimodal.cli.configure_threads", lambda threads: threads)  # keep this process's threads
    seen = []
    monkeypatch.setattr(module, "run", seen.append)
    assert module.main(args) == 0
    return seen[0]


def readable(path: str, made: set[str]) -> bool:
    """A run or saved pipeline that exists by then: made, or the folder above made runs (an unCLIP run root)."""
    path = path.rstrip("/")
    return path in made or any(m.startswith(path + "/") for m in made)


def test_every_readme_command_parses_and_reads_only_runs_that_exist_by_then(monkeypatch):
    made = demo_runs()
    assert {"runs/clip-shapes-demo", "runs/unclip-demo/prior", "runs/judge-shapes-demo"} <= made
    checked = 0
    for command in readme_commands():
        where = f"README.md:{command.line}: {command.text[:100]}"
        if command.kind == "python":
            compile(command.text, where, "exec")
            for path in re.findall(r"[\"'](runs/[^\"']+)[\"']", command.text):
                assert readable(path, made), f"{where}: reads {path}, which neither make demo nor the README makes"
            for path in re.findall(r"save_pretrained\([\"']([^\"']+)", command.text):
                made.add(path)
            checked += 1
            continue
        if command.template:
            continue
        module, args = module_and_args(command)
        if module is None:  # a script, e.g. python bench/generate.py
            script = next(a for a in args[1:] if a.endswith(".py"))
            assert (REPO / script).is_file(), f"{where}: no {script}"
            for flag, value in itertools.pairwise(args):
                if flag == "--checkpoint":
                    assert readable(value, made), f"{where}: reads {value}, which does not exist by then"
        elif module == "training.train":
            recipe, overrides = args[0], [a for a in args[1:] if "=" in a]
            assert (REPO / recipe).is_file(), f"{where}: no recipe {recipe}"
            cfg = TrainConfig.load(REPO / recipe, overrides)
            if getattr(cfg.task, "clip", None) is not None:
                assert readable(cfg.task.clip, made), f"{where}: task.clip={cfg.task.clip} does not exist by then"
            made.add(str(cfg.run_dir))
        else:
            parsed = parsed_args(module, args, monkeypatch)
            for name in RUN_ARGS:
                value = getattr(parsed, name, None)
                for run in value if isinstance(value, list) else [] if value is None else [value]:  # --judge twice
                    assert readable(str(run), made), f"{where}: reads {run}, which does not exist by then"
            if getattr(parsed, "save", None):
                made.add(parsed.save)
            if module == "eval.experts" and parsed.command in ("merge", "extract"):  # they write a run folder
                made.add(parsed.out)
        checked += 1
    assert checked >= 20  # the README's commands were found (bash lines and python blocks)


def test_extraction_joins_continued_lines_and_skips_the_quick_start(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "```bash\nmake demo   # the demo\npython -m eval.zeroshot \\\n    --checkpoint runs/x  # a comment\n```\n"
        "text\n```python\nprint(1)\n```\n```\nnot a command\n```\n"
    )
    commands = readme_commands(readme)
    assert [(c.kind, c.line) for c in commands] == [("bash", 3), ("python", 8)]
    assert commands[0].argv == shlex.split("python -m eval.zeroshot --checkpoint runs/x")
    assert Command("bash", "train data.dataset=/path/to/card.yaml", 1).template
