"""Every command line answers --help, and the trainer a recipe's mistake, without importing torch or the model
families: what makes them instant (bench/cli_startup.py times them). Checked by what is imported, not by the clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Importing any of these takes from a tenth of a second (scipy) to seconds (torch, timm, diffusers) on a small CPU.
HEAVY = ("torch", "timm", "diffusers", "accelerate", "open_clip", "webdataset", "sklearn", "scipy", "faiss", "fastapi")


def cli_modules() -> list[str]:
    """Every module of the project with a command line (a ``main`` run under ``if __name__ == "__main__"``; a
    package's ``__main__`` by its own name, which ``python -m PACKAGE`` runs)."""
    found = []
    for package in ("multimodal", "eval", "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            if "def main(" in text and '__name__ == "__main__"' in text:
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


# In a fresh interpreter: MODULE.main(ARGV), then which of HEAVY it imported, and what it printed, as JSON.
_PROBE = """
import contextlib, importlib, io, json, sys
heavy, module, argv = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    importlib.import_module(module).main(argv)
print(json.dumps({"heavy": [m for m in heavy if m in sys.modules], "printed": out.getvalue()}))
"""


def probe(module: str, *argv: str) -> tuple[dict, str]:
    """(what the probe found, what the command wrote to stderr)."""
    command = [sys.executable, "-c", _PROBE, json.dumps(HEAVY), module, *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_every_command_line_is_found() -> None:
    modules = cli_modules()
    assert {
        "training.train",
        "multimodal.generate",
        "eval.zeroshot",
        "eval.classify",
        "multimodal.data.shapes",
    } <= set(modules)


@pytest.mark.parametrize("module", cli_modules())
def test_help_imports_nothing_heavy(module: str) -> None:
    out, _ = probe(module, "--help")
    assert "usage:" in out["printed"]
    assert out["heavy"] == [], f"python -m {module} --help imports {out['heavy']}"


def test_a_recipe_mistake_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: {name: clip}\ntrain: {stepz: 3}\n")
    out, stderr = probe("training.train", str(recipe))
    assert "unknown config key 'train.stepz'; did you mean 'train.steps'?" in stderr
    assert out["heavy"] == []
