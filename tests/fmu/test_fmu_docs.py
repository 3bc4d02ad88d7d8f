"""docs/fmu.md's worked example runs as written: its files are written and its commands run in order."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fmu.md"


def example_blocks() -> list[tuple[str, str]]:
    """The worked example's (language, text) fenced blocks, in order."""
    text = DOC.read_text(encoding="utf-8").split("## Worked example", 1)[1].split("\n## ", 1)[0]
    return [(lang, body) for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S) if lang != "text"]


def test_the_example_names_each_file_it_writes() -> None:
    files = [body.split("\n", 1)[0] for lang, body in example_blocks() if lang != "bash"]
    assert files == ["# osc.yaml", "# prior.yaml", "# my_priors.py", "# hybrid.yaml", "# scenarios.yaml"]


@pytest.mark.slow
def test_the_worked_example_runs(tmp_path: Path) -> None:
    hybrid = importlib.util.find_spec("worldmodel.hybrid") is not None
    script = ["set -euo pipefail"]
    for lang, body in example_blocks():
        if lang == "bash":
            if "train.py fit" in body and not hybrid:
                break  # the hybrid model kind comes with issue 13's branch: the rest runs once it is merged
            script.append(body)
        else:
            name = body.split("\n", 1)[0][2:].strip()
            (tmp_path / name).write_text(body, encoding="utf-8")
    for script_name in ("train.py", "generate.py"):  # the doc runs them from the repository root
        script = [line.replace(f"python {script_name}", f"python {ROOT / script_name}") for line in script]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is this venv's
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", "PATH": path,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^obs +x +m\b", done.stdout, re.M) and re.search(r"^action +u +N\b", done.stdout, re.M)
    assert re.search(r"^k: 4(\.0+\d*)? N/m", done.stdout, re.M), done.stdout
    assert re.search(r"^c: 0\.4(0*\d*)? N.s/m", done.stdout, re.M), done.stdout
    assert "episodes: 30" in done.stdout
    if not hybrid:
        pytest.skip("ran up to the calibrated prior; the hybrid model kind (worldmodel/hybrid.py) is not here yet")
    assert (tmp_path / "scenarios.zarr").is_dir()
    assert "scenarios:" in done.stdout
