"""The torch thread count: from the CPUs this process may use (affinity, cgroup quota, SLURM), the user's
OMP_NUM_THREADS, the small-model rule, and `--threads` reaching torch in a real `train.py fit`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO as ROOT
from conftest import TinyStore

from data_pipeline.errors import UserError
from worldmodel.threads import apply_threads, cgroup_cpu_quota, choose_threads, cpu_budget, parse_threads


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose affinity mask allows 8 CPUs."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def write(root: Path, name: str, text: str) -> Path:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(write(tmp_path / "a", "cpu.max", "150000 100000\n")) == 1.5
    assert cgroup_cpu_quota(write(tmp_path / "b", "cpu.max", "max 100000\n")) is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = write(write(tmp_path / "a", "cpu/cpu.cfs_quota_us", "200000\n"), "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root) == 2.0
    unlimited = write(write(tmp_path / "b", "cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
                      "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(unlimited) is None


@pytest.mark.usefixtures("eight_cpus")
def test_fewest_of_affinity_quota_and_slurm(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert cpu_budget({}, none).cpus == 8
    quota = write(tmp_path / "q", "cpu.max", "250000 100000")  # 2.5 CPUs: 3 threads, never 0
    assert cpu_budget({}, quota).cpus == 3
    assert cpu_budget({}, write(tmp_path / "h", "cpu.max", "50000 100000")).cpus == 1
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "2"}, quota).cpus == 2
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "16"}, none).cpus == 8
    choice = choose_threads("auto", environ={}, cgroup_root=quota)
    assert choice.threads == 3
    assert str(choice) == "threads: 3 (affinity 8, cgroup quota 2.5)"


@pytest.mark.usefixtures("eight_cpus")
def test_auto_respects_omp_and_an_explicit_number_wins(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert choose_threads("auto", environ={"OMP_NUM_THREADS": "5"}, cgroup_root=none).threads == 5
    assert choose_threads(2, environ={"OMP_NUM_THREADS": "5"}, cgroup_root=none).threads == 2
    assert choose_threads("auto", environ={"OMP_NUM_THREADS": ""}, cgroup_root=none).threads == 8


@pytest.mark.usefixtures("eight_cpus")
def test_small_sequential_models_get_one_thread_and_processes_share(tmp_path: Path) -> None:
    none = tmp_path / "none"
    for kind, preset in (("ensemble", "small"), ("rssm", "tiny"), ("policy", None)):
        assert choose_threads(kind=kind, preset=preset, environ={}, cgroup_root=none).threads == 1
    assert choose_threads(kind="ensemble", preset="medium", environ={}, cgroup_root=none).threads == 8
    assert choose_threads(kind="diffusion", preset="small", environ={}, cgroup_root=none).threads == 8
    assert choose_threads(processes=2, environ={}, cgroup_root=none).threads == 4


def test_parse_threads() -> None:
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3 and parse_threads(2) == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(UserError, match="--threads"):
            parse_threads(bad)


def test_apply_sets_torch_and_prints_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    try:
        apply_threads(2)
        assert torch.get_num_threads() == 2
        apply_threads(2)
        assert capsys.readouterr().out.count("threads: 2 (--threads") == 1
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_fit_threads_option_reaches_torch(tiny_store: Callable[..., TinyStore], tmp_path: Path) -> None:
    """`train.py fit --threads 1` (the user's OMP_NUM_THREADS says 2) runs torch on 1 thread and says so."""
    store = tiny_store(episodes=4).path
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "2"}
    probe = tmp_path / "probe.py"
    probe.write_text("import lightning as L, torch\n"
                     "class Probe(L.Callback):\n"
                     "    def on_train_start(self, trainer, module):\n"
                     "        print(f'torch_threads: {torch.get_num_threads()}')\n")
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs/pendulum/ensemble.yaml"),
            "--data.store", str(store), "--out_dir", str(tmp_path / "runs"), "--threads", "1",
            "--model.config.preset", "tiny", "--trainer.max_steps", "2", "--data.batches_per_epoch", "2",
            "--data.val_batches", "1", "--data.window", "4", "--model.eval_horizons", "[1]", "--model.eval_samples",
            "2", "--model.eval_context", "2", "--model.eval_windows", "4", "--trainer.enable_progress_bar", "false",
            "--mlflow.registered_model_name", "", "--trainer.callbacks+=probe.Probe"]
    proc = subprocess.run(args, cwd=tmp_path, env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "threads: 1 (--threads" in proc.stdout
    assert "torch_threads: 1" in proc.stdout
