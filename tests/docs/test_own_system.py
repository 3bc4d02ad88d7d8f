"""docs/own_system.md cannot drift: its spec is the one benchmarks/historian.py writes, and (slow) its four
commands, parsed from the page's code block, run as written on a small generated historian export."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "own_system.md"


def block(marker: str) -> str:
    """The fenced code block right after the HTML comment `<!-- marker: … -->` in the page."""
    found = re.search(rf"<!-- {marker}:[^>]*-->\n```\w*\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"{DOC.name} has no code block after <!-- {marker}: … -->"
    return found.group(1)


def historian_module():  # noqa: ANN201  (a script loaded by path)
    spec = importlib.util.spec_from_file_location("historian", ROOT / "benchmarks" / "historian.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["historian"] = module
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_the_spec_the_example_export_is_written_with() -> None:
    assert block("own-system-spec") == historian_module().SPEC
    commands = block("own-system-commands").strip().splitlines()
    assert [c.split()[:4] for c in commands] == [
        ["python", "-m", "data_pipeline", "ingest"], ["python", "-m", "data_pipeline", "info"],
        ["python", "train.py", "fit", "--config"], ["python", "train.py", "test", "--config"]]
    assert yaml.safe_load(block("own-system-spec"))["sort"] is True


@pytest.mark.slow
def test_the_four_commands_run_as_written(tmp_path: Path) -> None:
    """In a folder with the example export, `configs/` and `train.py` linked from the checkout (where a user
    runs them). Only the fit gets `--trainer.max_steps 40` appended, to keep the test short."""
    historian_module().write_export(tmp_path / "historian", runs=6, seconds=30.0, seed=3)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "train.py").symlink_to(ROOT / "train.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               OMP_NUM_THREADS="1")
    outputs = []
    for line in block("own-system-commands").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "python"
        argv[0] = sys.executable
        if argv[1:3] == ["train.py", "fit"]:
            argv += ["--trainer.max_steps", "40", "--trainer.enable_progress_bar", "false"]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    ingest, info, fit, test = outputs
    assert "store: tank.zarr" in ingest and "episodes: 6" in ingest
    assert re.search(r"obs\s+temperature\s+degC", info) and re.search(r"action\s+valve\s+%", info)
    assert "model_uri: models:/tank-ensemble/1" in fit and re.search(r"^\s+50\s+\d", fit, re.M)
    assert "coverage90" in fit
    assert "test_eval/nrmse/h50" in test
