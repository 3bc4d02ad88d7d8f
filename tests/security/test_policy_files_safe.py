"""Policy files never run code (issue 13): a stable-baselines3 zip whose pickled entry would create a
marker file is never unpickled by record, make_policy, a scenario's policy, --resume or the pyfunc, unless
the user passes --trust-pickle; safe policies (safetensors + JSON) act as the agent did; a policy run's
out_dir never loses a file it did not write."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from conftest import subprocess_env

from data_pipeline.errors import UserError
from policies import load_sb3, make_policy, save_sb3

ENVS = {"SAC": "Pendulum-v1", "PPO": "Pendulum-v1", "DQN": "CartPole-v1"}


class _RunsCode:
    """Unpickles as the result of evaluating `code`: a schedule (so SB3 loads on) that first made a marker."""

    def __init__(self, marker: Path) -> None:
        self.code = f"[__import__('pathlib').Path({str(marker)!r}).touch(), lambda _: 0.0][1]"

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (self.code,))


def poison_zip(path: Path, marker: Path) -> None:
    """Replace the zip's cloudpickled `lr_schedule` entry (base64 in its "data" JSON) with `_RunsCode`."""
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    data = json.loads(entries["data"])
    data["lr_schedule"][":serialized:"] = base64.b64encode(cloudpickle.dumps(_RunsCode(marker))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)


def make_agent(algorithm: str) -> Any:
    import stable_baselines3

    env = gym.make(ENVS[algorithm])
    return getattr(stable_baselines3, algorithm)("MlpPolicy", env, seed=0, device="cpu",
                                                 policy_kwargs={"net_arch": [8]})


def zip_only_policy(tmp_path: Path, algorithm: str = "DQN", name: str = "evil") -> tuple[Path, Path]:
    """A poisoned SB3 zip with the JSON that names its algorithm (as a policy saved before the safe format
    has) but no weights; returns (zip, marker)."""
    marker = tmp_path / f"{name}-ran-code"
    path = save_sb3(make_agent(algorithm), tmp_path / f"{name}.zip")
    path.with_suffix(".safetensors").unlink(missing_ok=True)
    info = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({k: info[k] for k in (
        "algorithm", "sb3_version", "observation_space", "action_space")} | {"format": 1}))
    poison_zip(path, marker)
    return path, marker


def _refused(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    text = str(err.value)
    assert isinstance(err.value, UserError), text
    assert str(path) in text and "--trust-pickle" in text and "runs any code" in text, text


@pytest.mark.parametrize("algorithm", ["SAC", "PPO", "DQN"])
def test_safe_policy_acts_as_the_agent_and_never_reads_the_zip(algorithm: str, tmp_path: Path) -> None:
    agent = make_agent(algorithm)
    path = save_sb3(agent, tmp_path / "policy.zip")
    marker = tmp_path / "ran-code"
    poison_zip(path, marker)  # whatever the zip holds, a safe load never opens it
    space = agent.observation_space
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(16)])
    expected, _ = agent.predict(obs, deterministic=True)
    np.testing.assert_array_equal(load_sb3(path).predict(obs, deterministic=True)[0], expected)
    for name in ("policy.zip", "policy.json", "policy.safetensors"):  # any of its files names the policy
        np.testing.assert_array_equal(make_policy(str(tmp_path / name), agent.action_space)(obs), expected)
    from policies.pyfunc import PolicyPyfunc

    pyfunc = PolicyPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={"policy_info": str(path.with_suffix(".json")),
                                                   "policy_weights": str(path.with_suffix(".safetensors"))}))
    np.testing.assert_array_equal(pyfunc.predict(None, obs), expected)
    assert not marker.exists()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format"] == 2 and info["algorithm"] == algorithm and info["policy"] == "MlpPolicy"
    assert info["hyperparameters"]["policy_kwargs"]["net_arch"] == [8]


def test_zip_only_policy_is_refused_by_make_policy_scenarios_and_pyfunc(tmp_path: Path) -> None:
    from data_pipeline.record import record
    from policies.pyfunc import PolicyPyfunc
    from scenarios.rollout import ScenarioRunner
    from scenarios.spec import ScenarioSpec

    path, marker = zip_only_policy(tmp_path)
    space = gym.make("CartPole-v1").action_space
    with pytest.raises(UserError) as err:
        make_policy(str(path), space)
    _refused(err, path)
    with pytest.raises(UserError) as err:
        load_sb3(path)
    _refused(err, path)
    # A scenario spec's `policy:` goes through the runner's make_policy.
    store = record("CartPole-v1", 1, str(tmp_path / "c.zarr"), seed=0, max_episode_steps=5, progress=False)
    spec = ScenarioSpec.model_validate({"starts": [{"episode": 0, "t": 1}],
                                        "interventions": {"p": {"policy": str(path)}}})
    runner = ScenarioRunner(spec, model=None, store=store, points=[])  # type: ignore[arg-type]
    with pytest.raises(UserError) as err:
        runner.policy(str(path), seed=0)
    _refused(err, path)
    store.close()
    # The MLflow pyfunc of a model logged as a zip only.
    with pytest.raises(UserError) as err:
        PolicyPyfunc().load_context(SimpleNamespace(artifacts={"policy": str(path),
                                                               "policy_info": str(path.with_suffix(".json"))}))
    _refused(err, path)
    assert not marker.exists()


def test_record_cli_refuses_a_zip_only_policy(tmp_path: Path) -> None:
    path, marker = zip_only_policy(tmp_path)
    out = tmp_path / "r.zarr"
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", "CartPole-v1", "--episodes",
                           "1", "--policy", str(path), "--out", str(out), "--no-progress"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert str(path) in last and "--trust-pickle" in last, proc.stderr[-2000:]
    assert not marker.exists() and not out.exists()


def test_trust_pickle_loads_a_zip_and_runs_its_code(tmp_path: Path) -> None:
    """The documented risk: with trust_pickle (--trust-pickle) the zip loads, and the code in it runs."""
    from policies.convert import main as convert

    path, marker = zip_only_policy(tmp_path)
    policy = make_policy(str(path), gym.make("CartPole-v1").action_space, trust_pickle=True)
    assert marker.exists()
    obs = np.zeros((2, 4), np.float32)
    expected = policy(obs)
    # Converted once (under the same flag), the policy loads safely ever after.
    marker.unlink()
    with pytest.raises(SystemExit):
        convert([str(path)])  # the flag is required
    assert not marker.exists()
    assert convert([str(path), "--trust-pickle"]) == 0 and marker.exists()
    marker.unlink()
    poison_zip(path, marker)
    np.testing.assert_array_equal(make_policy(str(path), gym.make("CartPole-v1").action_space)(obs), expected)
    assert not marker.exists()


@pytest.fixture
def untrained_model(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny (unfitted) world model over a small Pendulum store: (model file, store)."""
    from data_pipeline.record import record
    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    store = tmp_path / "data" / "p.zarr"
    record("Pendulum-v1", 2, str(store), seed=0, max_episode_steps=20, progress=False).close()
    dm = WindowDataModule(store=str(store), window=4, batch_size=4, batches_per_epoch=1)
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), dm.schema, dm.normalization)
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    model.eval().save(str(path))
    return path, store


def _policy_config(model: Path, store: Path, out_dir: str) -> Any:
    from policies.config import PolicyConfig

    return PolicyConfig(model=str(model), store=str(store), algorithm="SAC", timesteps=8, num_envs=1,
                        rollout_horizon=4, eval_episodes=1, checkpoint_every=0, registered_policy_name="",
                        hyperparameters={"learning_starts": 4, "batch_size": 4, "policy_kwargs": {"net_arch": [8]}},
                        out_dir=out_dir)


def test_resume_refuses_an_old_zip_checkpoint(untrained_model: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dir written before the safe format (agent.zip + agent.json + replay_buffer.pkl) resumes only
    with --trust-pickle."""
    from policies.loop import train_policy

    model, store = untrained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "run"
    out.mkdir()
    path, marker = zip_only_policy(out, algorithm="SAC", name="agent")
    buffer_marker = tmp_path / "buffer-ran-code"
    (out / "replay_buffer.pkl").write_bytes(cloudpickle.dumps(_RunsCode(buffer_marker)))
    (out / "state.json").write_text(json.dumps({"model": str(model), "iteration": 0, "iteration_steps": 4}))
    with pytest.raises(UserError) as err:
        train_policy(_policy_config(model, store, str(out)), resume=True)
    _refused(err, path)
    assert not marker.exists() and not buffer_marker.exists()
    # Trusted, the old checkpoint loads onto the learned env, and its pickles run.
    from envs.sb3 import make_sb3_env
    from policies.checkpoint import load_agent

    venv = make_sb3_env(str(model), str(store), num_envs=1, seed=0, reward_fn="envs.rewards:pendulum",
                        max_episode_steps=4)
    with pytest.raises(Exception):  # noqa: B017 - the pickled "buffer" runs its code, then is no buffer
        load_agent(path, venv, trust_pickle=True)
    assert marker.exists() and buffer_marker.exists()


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_dir_is_never_deleted(untrained_model: tuple[Path, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out_dir .` with the user's files, the model's own directory, a non-empty directory: refused before
    anything is written, every file still there."""
    from policies.loop import train_policy

    model, store = untrained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "plan.txt").write_text("the user's own file")
    (work / "results.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(work)
    before = _digest(tmp_path)
    with pytest.raises(UserError, match=r"out_dir \.: not empty \(notes, results\.csv\); .*--resume"):
        train_policy(_policy_config(model, store, "."))
    with pytest.raises(UserError, match=r"out_dir \.: nothing to resume \(no state\.json"):
        train_policy(_policy_config(model, store, "."), resume=True)
    for out_dir in (str(model.parent), str(tmp_path)):  # the model's run directory, and one above it
        for resume in (False, True):
            with pytest.raises(UserError, match=rf"out_dir {out_dir}: contains the world model .*model\.pt"):
                train_policy(_policy_config(model, store, out_dir), resume=resume)
    assert _digest(tmp_path) == before


@pytest.mark.parametrize("name", ["builtins.eval", "os.system", "torch.nn.functional.relu", "torch.optim._secret"])
def test_policy_json_names_classes_only_from_the_allowed_namespaces(name: str, tmp_path: Path) -> None:
    """A JSON's `policy_kwargs` class is looked up by name in torch.nn / torch.optim / SB3's torch_layers,
    never imported: anything else is refused, naming the file and key."""
    path = save_sb3(make_agent("DQN"), tmp_path / "policy.zip")
    info = json.loads(path.with_suffix(".json").read_text())
    info["hyperparameters"]["policy_kwargs"]["activation_fn"] = name
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"policy\.json: key 'hyperparameters\.policy_kwargs\.activation_fn' is"):
        load_sb3(path)
