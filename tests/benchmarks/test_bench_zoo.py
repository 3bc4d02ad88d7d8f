"""The zoo benchmark's pieces (issue 14): the historian export has the artifacts it claims and its spec ingests
it (a spec without the messy-log rules does not), the Dict-observation env flattens into named channels,
and the baselines (all transitions, the plain MLP, ridge) score a tiny store; the command line refuses an
unknown system in one line, and (slow) runs one system end to end."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from data_pipeline.errors import UserError
from data_pipeline.ingest import ingest_file
from data_pipeline.record import record
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.datamodule import WindowDataModule
from worldmodel.calibration import calibrate_split, calibration_horizon
from worldmodel.kinds import build_model, model_classes, resolve_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_zoo.py"


def load_script(name: str) -> ModuleType:
    """benchmarks/ is a folder of scripts, not a package: load one by path (bench_zoo puts benchmarks/ on
    sys.path, so its neighbours historian and zoo_envs import)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


zoo = load_script("bench_zoo")
historian = zoo.historian


def test_historian_export_has_every_artifact_it_claims() -> None:
    truth = historian.simulate(runs=2, seconds=60.0, seed=0)
    rows = historian.export(truth, seed=0)
    grid = len(truth) // 2  # instants per run
    for _, run in rows.groupby("run", sort=False):
        t = run["t"].to_numpy()
        fast, meter = run[run["temperature"].notna()], run[run["inflow"].notna()]
        assert (np.diff(t) < -0.05).any(), "out-of-order rows"
        assert ((np.diff(t) < 0) & (np.diff(t) >= -2 * historian.JITTER_S)).any(), "rows a millisecond behind"
        assert (np.abs(t * 10 - np.round(t * 10)) > 1e-6).any(), "clock jitter off the 0.1 s grid"
        assert fast["t"].duplicated().any(), "an instant written twice"
        assert fast["t"].nunique() < grid, "dropped samples"
        assert len(meter) == -(-grid // historian.INFLOW_EVERY), "the inflow meter reports at 2 Hz"
        assert meter[["temperature", "level", "heater_pct"]].isna().all().all(), "in rows of its own"
        assert len(meter.index.intersection(fast.index)) == 0
    # Every artifact is small: the clock is off by at most JITTER_S, values stay in the spec's bounds.
    assert (rows["t"] - (rows["t"] * 10).round() / 10).abs().max() <= historian.JITTER_S + 1e-9
    spec = yaml.safe_load(historian.SPEC)
    for channel in spec["observation"]["channels"] + spec["action"]["channels"]:
        values = rows[channel["column"]].dropna()
        assert values.between(channel["low"], channel["high"]).all(), channel["column"]


def test_historian_spec_ingests_the_export_and_a_spec_without_its_rules_refuses_it(tmp_path: Path) -> None:
    paths = historian.write_export(tmp_path / "h", runs=3, seconds=10.0, seed=1)
    assert [p.name for p in paths] == ["tank_0.csv", "tank_1.csv"]
    out = tmp_path / "tank.zarr"
    ingest_file("csv", str(tmp_path / "h" / "tank_*.csv"), tmp_path / "h" / "tank_spec.yaml", str(out))
    with TrajectoryStore.open(str(out)) as store:
        assert len(store.episodes()) == 3
        assert list(store.schema.obs_channels) == ["temperature", "level", "inflow"]
    strict = yaml.safe_load(historian.SPEC)
    del strict["sort"], strict["duplicates"]
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(strict))
    with pytest.raises(UserError, match="sort"):
        ingest_file("csv", str(tmp_path / "h" / "tank_*.csv"), tmp_path / "strict.yaml", str(tmp_path / "s.zarr"))
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture(scope="module")
def motor_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("zoo") / "motor.zarr")
    record("zoo_envs:TwoMassMotor-v0", episodes=8, out=out, seed=0, max_episode_steps=60, progress=False)
    return out


def test_dict_env_is_recorded_as_flat_named_channels(motor_store: str) -> None:
    with TrajectoryStore.open(motor_store) as store:
        assert list(store.schema.obs_channels) == ["load.speed", "load.twist", "motor.current", "motor.speed"]
        assert store.schema.action_dim == 1
        assert len(store.episodes()) == 8


def test_baselines_score_a_tiny_store(motor_store: str) -> None:
    dm = WindowDataModule(store=motor_store, split_seed=0)
    train = zoo.transitions(dm, "train")
    with TrajectoryStore.open(motor_store) as store:
        lengths = store.episodes()["length"].to_numpy()[dm.split["train"]]
    assert train.batch_size == int((lengths - 1).sum())  # every transition, none across episodes
    model = build_model("ensemble", model_classes("ensemble")[1](), dm.schema, dm.normalization)  # untrained
    mlp, seconds = zoo.fit_mlp(model, train, zoo.transitions(dm, "val"), budget_s=2.0)
    assert seconds < 4.0
    m = zoo.score(model, mlp, zoo.fit_linear(train, model), dm, context=4)
    assert re.fullmatch(r"h10 \(n=\d+\), h50 \(n=\d+\)", str(m["horizons"]))  # 61 rows hold context 4 + 50
    # The motor is nearly linear: the fitted baselines beat persistence by far; the untrained model does not.
    for h in (10, 50):
        assert m[f"ridge/h{h}"] < 0.5 * m[f"persistence/h{h}"]
        assert m[f"mlp/h{h}"] < m[f"persistence/h{h}"]
        assert 0.0 <= m[f"cov90/h{h}"] <= 1.0


def test_short_test_episodes_score_the_longest_horizon_they_allow_and_say_so(tmp_path: Path) -> None:
    out = str(tmp_path / "short.zarr")
    record("zoo_envs:TwoMassMotor-v0", episodes=10, out=out, seed=0, max_episode_steps=20, progress=False)
    dm = WindowDataModule(store=out, split_seed=0)
    train = zoo.transitions(dm, "train")
    model = build_model("ensemble", model_classes("ensemble")[1](), dm.schema, dm.normalization)
    mlp, _ = zoo.fit_mlp(model, train, zoo.transitions(dm, "val"), budget_s=0.5)
    m = zoo.score(model, mlp, zoo.fit_linear(train, model), dm, context=4)
    assert re.fullmatch(r"h10 \(n=\d+\), h50→17 \(n=\d+\)", str(m["horizons"]))  # 21 rows: context 4 + 17
    assert "model/h50" in m and "cov90/h50" in m
    row = zoo.row("motor", "ensemble", "1 / 1", m, fit_s=10.0, mlp_s=4.0, said="table")
    assert row[3] == m["horizons"] and "wall≤2×MLP NO" in row[-1]


def test_short_episodes_are_scored_where_enough_of_them_reach_not_on_a_few_long_ones() -> None:
    lengths = np.array([6] * 100 + [20] * 5)  # a balancing task: most episodes fall within 6 rows
    assert zoo.horizon(lengths, context=4, target=10) == 2  # 105 hold 4 + 2 rows; only 5 hold 4 + 3
    assert zoo.horizon(np.array([20] * 5), context=4, target=50) == 16  # few episodes: all of them count
    assert zoo.horizon(np.array([60] * 40), context=4, target=50) == 50
    assert zoo.horizon(np.array([4, 3]), context=4, target=10) == 0  # none holds context + 1: said, not scored


def test_calibration_horizon_is_the_one_enough_validation_episodes_reach() -> None:
    lengths = np.array([20] * 40 + [60])  # a short-episode split and one long episode
    # 41 episodes hold 8 + 12 rows; only the long one holds 8 + 13.
    assert calibration_horizon(lengths, context=8, longest=50) == 12
    assert calibration_horizon(np.array([300] * 3), context=8, longest=50) == 50  # long episodes: overlapping starts
    assert calibration_horizon(np.array([10, 12]), context=8, longest=4) == 2  # few windows: as many as 1 step has
    # Three episodes all reach h12, but with one window each; h8 gives two windows of 16 rows in each.
    assert calibration_horizon(np.array([20] * 3), context=8, longest=50) == 8


def test_a_short_episode_split_is_calibrated_not_skipped_for_its_one_long_episode(tmp_path: Path) -> None:
    """CartPole under a random policy: ~22-step episodes, a rare long one. The zoo's cartpole fit skipped its
    calibration ("1 val windows of 44 rows") and covered 100% of the test truth at h10."""
    out = str(tmp_path / "cartpole.zarr")
    record("CartPole-v1", episodes=60, out=out, seed=0, progress=False)
    dm = WindowDataModule(store=out, split_seed=0)
    model = build_model("ensemble", resolve_config("ensemble", {"preset": "tiny"}), dm.schema, dm.normalization)
    fit = calibrate_split(model, dm, "val", context=8, horizons=(1, 5, 10, 25, 50), samples=8, max_windows=64)
    assert fit.after and model.calibrated, fit.report()
    # Fitted at the horizon every val episode reaches (fewer than 32 of them here), with windows from each,
    # not on the long one alone.
    assert fit.windows >= 4 and max(fit.after) < dm.longest_episode("val") - 8


def test_fit_output_without_an_evaluation_is_flagged_silent() -> None:
    assert zoo.evaluation_said("horizon    nrmse   persistence_nrmse\n  1  0.1\n") == "table"
    assert zoo.evaluation_said("evaluation: skipped (the test split holds no episode)\n") == "explained"
    assert zoo.evaluation_said("model_uri: models:/x/1\ncheckpoint: runs/x/model.pt\n") == "SILENT"


def test_reuse_fits_scores_a_previous_fit_without_running_it_again(tmp_path: Path) -> None:
    (tmp_path / "fit.log").write_text("horizon  nrmse\ncheckpoint: runs/x/model.pt\nsome stderr\n")
    (tmp_path / "fit_seconds").write_text("12.5\n")
    no_config = tmp_path / "missing.yaml"  # a real fit of it would fail
    assert zoo.fit(no_config, tmp_path / "s.zarr", tmp_path, [], reuse=True) == (
        tmp_path / "runs/x/model.pt", 12.5, "table")
    (tmp_path / "fit.log").write_text("model_uri: unpublished\n")
    with pytest.raises(UserError, match="printed no 'checkpoint:' line"):
        zoo.fit(no_config, tmp_path / "s.zarr", tmp_path, [], reuse=True)


def test_cli_refuses_an_unknown_system_in_one_line() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--system", "nosuch", "--no-record"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "bench_zoo.py: error: systems ['nosuch']" in done.stderr and "cartpole" in done.stderr


@pytest.mark.slow
def test_cli_runs_one_system_end_to_end(tmp_path: Path) -> None:
    """The command a user (or the lead) runs: a quick store, a real `train.py fit`, the scored row."""
    before = (ROOT / "BENCHMARKS.md").read_bytes()
    done = subprocess.run([sys.executable, str(SCRIPT), "--system", "tank", "--quick", "--no-record", "--out",
                           str(tmp_path), "--fit-args", "--trainer.max_steps 20"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| tank |" in line]
    assert len(table) == 1 and "| ensemble | h10 (n=" in table[0] and "not silent yes" in table[0]
    assert (tmp_path / "tank" / "tank_quick.zarr" / "zarr.json").exists()
    assert (ROOT / "BENCHMARKS.md").read_bytes() == before  # --no-record
