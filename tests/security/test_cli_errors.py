"""Every command line prints a user error as one line `PROG: error: …` naming the file, field or row and
what was expected, exits 1 (2 for bad usage) and shows no traceback; TWINWORLD_DEBUG=1 shows it
(issue 13, "Errors a person can read"). Each case runs the command as a subprocess with a typical bad
input: a missing file, a malformed spec, a store of another system for the model, a bad option value.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import normalization_for, split_episodes
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel


@dataclass
class Files:
    model: str
    store: str
    other_store: str
    """A store of another system: 4 observation channels where the model knows 3."""
    spec: str
    tmp: Path


@pytest.fixture
def files(tiny_store: Callable[..., object], tmp_path: Path) -> Files:
    tiny = tiny_store(episodes=[20] * 4, name="plant.zarr")
    other = tiny_store(episodes=[20] * 2, obs_dim=4, name="other.zarr")
    store = TrajectoryStore.open(tiny.path)  # type: ignore[attr-defined]
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema,
                               normalization_for(store, split_episodes(store, 0)["train"]))
    model.save(str(tmp_path / "model.pt"))
    spec = tmp_path / "scenarios.yaml"
    spec.write_text("horizon: 5\nsamples: 4\ncontext: 2\nstarts: [{episode: 0, t: 3}]\ninterventions: {factual: {}}\n")
    return Files(str(tmp_path / "model.pt"), tiny.path, other.path, str(spec), tmp_path)  # type: ignore[attr-defined]


def run(args: list[str], tmp: Path, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env.pop("TWINWORLD_DEBUG", None)
    if debug:
        env["TWINWORLD_DEBUG"] = "1"
    return subprocess.run([sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess[str], prog: str, *fragments: str, log: bool = False) -> str:
    """Exit 1, no traceback, and stderr's one line is `PROG: error: …` holding every fragment. With `log`,
    informational lines before it (Lightning's and MLflow's start-up log) are allowed; the error is the last."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert log or len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------------- python -m data_pipeline


def test_data_pipeline_missing_store_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.zarr")
    export = ["export", "minari", missing, "--dataset-id", "twinworld/tiny-random-v0"]
    for command in (["info", missing], ["validate", missing], export):
        proc = run(["-m", "data_pipeline", *command], tmp_path)
        assert_one_line(proc, "python -m data_pipeline", missing, "no trajectory store")
    proc = run(["-m", "data_pipeline", "info", missing], tmp_path, debug=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no trajectory store" in proc.stderr


def test_data_pipeline_bad_usage_exits_2_with_usage(tmp_path: Path) -> None:
    proc = run(["-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes", "two", "--out", "x.zarr"],
               tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("usage: ") and "argument --episodes: invalid int value: 'two'" in proc.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_data_pipeline_malformed_spec_and_unknown_env(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("time: t\ntime: t2\n")  # a duplicate key
    (tmp_path / "log.csv").write_text("t,x\n0,1\n")
    proc = run(["-m", "data_pipeline", "ingest", "csv", "log.csv", "--spec", str(spec), "--out", "x.zarr"], tmp_path)
    assert_one_line(proc, "python -m data_pipeline", str(spec), "time")
    proc = run(["-m", "data_pipeline", "record", "--env", "NoSuchEnv-v0", "--episodes", "1", "--out", "y.zarr"],
               tmp_path)
    assert_one_line(proc, "python -m data_pipeline", "--env NoSuchEnv-v0", "doesn't exist")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_data_pipeline_bad_hook_and_bad_source_are_one_line(tmp_path: Path) -> None:
    """A misnamed `module:function` policy and a malformed stream source: InputError, not a traceback."""
    proc = run(["-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes", "1",
                "--policy", "no_such_module_tw:act", "--out", "y.zarr"], tmp_path)
    assert_one_line(proc, "python -m data_pipeline", "no_such_module_tw:act", "cannot import module")
    spec = tmp_path / "spec.yaml"
    spec.write_text("timestamp: {column: t, unit: s}\ndt: 0.1\nobservation: {channels: [{column: x, unit: m}]}\n"
                    "action: {channels: [{column: u, unit: N}]}\n")
    proc = run(["-m", "data_pipeline", "stream", "--source", "mqtt://127.0.0.1", "--spec", str(spec),
                "--out", "s.zarr"], tmp_path)
    assert_one_line(proc, "python -m data_pipeline", "mqtt://127.0.0.1", "expected mqtt://")
    assert not (tmp_path / "y.zarr").exists() and not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------------------------------------ generate.py


def test_generate_refuses_a_store_of_another_system(files: Files) -> None:
    out = files.tmp / "scenarios.zarr"
    proc = run([str(REPO / "generate.py"), "--config", files.spec, "--model", files.model, "--store",
                files.other_store, "--out", str(out), "--no-mlflow", "--no-progress"], files.tmp)
    assert_one_line(proc, "generate.py", f"--store {files.other_store}", "obs_channels", "the store has")
    assert not out.exists()


@pytest.mark.slow  # three generate.py start-ups (~10 s)
def test_generate_missing_spec_and_memory_budget(files: Files) -> None:
    out = files.tmp / "scenarios.zarr"
    common = ["--model", files.model, "--store", files.store, "--out", str(out), "--no-mlflow", "--no-progress"]
    proc = run([str(REPO / "generate.py"), "--config", str(files.tmp / "nope.yaml"), *common], files.tmp)
    assert_one_line(proc, "generate.py", "nope.yaml", "no such scenario spec")
    proc = run([str(REPO / "generate.py"), "--config", files.spec, "--max-memory", "1K", *common], files.tmp)
    assert_one_line(proc, "generate.py", files.spec, "needs about", "over the memory budget", "--max-memory")
    assert not out.exists()
    proc = run([str(REPO / "generate.py"), "--config", files.spec, "--max-memory", "lots", *common], files.tmp)
    assert proc.returncode == 2 and "argument --max-memory: 'lots'; expected a size" in proc.stderr


# ----------------------------------------------------------------------------------- twin.calibrate, twin.live


@pytest.mark.slow  # four model loads in subprocesses (~10 s)
@pytest.mark.parametrize("module", ["twin.calibrate", "worldmodel.anomaly"])
def test_calibrate_bad_option_and_wrong_store(files: Files, module: str) -> None:
    cal = files.tmp / "cal.json"
    proc = run(["-m", module, "--model", files.model, "--store", files.store, "--window", "0", "--out", str(cal)],
               files.tmp)
    assert_one_line(proc, f"python -m {module}", "window=0", "expected at least 1")
    proc = run(["-m", module, "--model", files.model, "--store", files.other_store, "--out", str(cal)], files.tmp)
    assert_one_line(proc, f"python -m {module}", f"--store {files.other_store}", "obs_channels")
    assert not cal.exists()


@pytest.mark.slow  # two model loads in subprocesses (~10 s)
@pytest.mark.parametrize("module", ["twin.live", "envs.live"])
def test_live_missing_and_malformed_spec(files: Files, module: str) -> None:
    common = ["--model", files.model, "--source", "-", "--store", str(files.tmp / "live.zarr"), "--no-mlflow"]
    proc = run(["-m", module, "--spec", str(files.tmp / "nope.yaml"), *common], files.tmp)
    assert_one_line(proc, f"python -m {module}", "nope.yaml")
    spec = files.tmp / "live.yaml"
    spec.write_text("time: t\nobs: {x: m}\n")
    proc = run(["-m", module, "--spec", str(spec), *common], files.tmp)
    assert_one_line(proc, f"python -m {module}", str(spec), "'time'", "expected")
    assert not (files.tmp / "live.zarr").exists()


def test_bad_calibration_file_names_the_file(tmp_path: Path) -> None:
    """`--calibration` that is not JSON is a user error naming the file, not a JSONDecodeError."""
    from twin.anomaly import AnomalyError, Calibration

    bad = tmp_path / "cal.json"
    bad.write_text("{not json")
    with pytest.raises(AnomalyError, match="cal.json: not a calibration file"):
        Calibration.load(bad)


# ------------------------------------------------------------------------------------------------------ train.py


@pytest.mark.slow  # three Lightning start-ups (~20 s)
def test_train_missing_store_and_policy_on_wrong_store(files: Files) -> None:
    proc = run([str(REPO / "train.py"), "fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"),
                "--data.store", str(files.tmp / "missing.zarr"), "--trainer.max_epochs", "1",
                "--out_dir", str(files.tmp / "runs")], files.tmp)
    assert_one_line(proc, "train.py", "missing.zarr", "no trajectory store", log=True)
    proc = run([str(REPO / "train.py"), "policy", "--model", files.model, "--store", files.other_store,
                "--out_dir", str(files.tmp / "policy")], files.tmp)
    assert_one_line(proc, "train.py", f"store {files.other_store}", "obs_channels", log=True)
    proc = run([str(REPO / "train.py"), "fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"),
                "--data.store", str(files.tmp / "missing.zarr"), "--trainer.max_epochs", "1",
                "--out_dir", str(files.tmp / "runs")], files.tmp, debug=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
