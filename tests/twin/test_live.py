"""The live twin: belief sync equivalence, hand-off to the env and generate.py, anomaly scores and their
calibration, the score store, MLflow logging, and `python -m twin.live` (alias `python -m envs.live`) end to end."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from conftest import subprocess_env
from stream_helpers import PENDULUM_SPEC, Publisher, committed_steps, pendulum_samples, wait_for

from data_pipeline.ingest import IngestSpec
from data_pipeline.schema import StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.stream import Block
from data_pipeline.windows.batch import Batch, Normalization
from twin import LiveMirror, ScoreStore, Twin
from twin.anomaly import (
    LOG_SQRT_2PI,
    AnomalyConfig,
    AnomalyScorer,
    Calibration,
    calibrate,
    score_episodes,
)
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.interface import WorldModel, previous_actions
from worldmodel.rssm import RSSMConfig, RSSMWorldModel


def norm_for(schema: StoreSchema) -> Normalization:
    d, a = schema.obs_dim, schema.action_dim
    return Normalization(obs_mean=[0.1] * d, obs_std=[0.8] * d, obs_min=[-3.0] * d, obs_max=[3.0] * d,
                         action_mean=[0.0] * a, action_std=[0.5] * a, action_min=[-1.0] * a, action_max=[1.0] * a,
                         reward_mean=0.0, reward_std=1.0, reward_min=-3.0, reward_max=3.0)


def tiny_model(kind: str, schema: StoreSchema, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    if kind == "ensemble":
        return EnsembleWorldModel(EnsembleConfig.preset("tiny"), schema, norm_for(schema)).eval()
    return RSSMWorldModel(RSSMConfig.preset("tiny"), schema, norm_for(schema)).eval()


def episode(schema: StoreSchema, t: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(t, schema.obs_dim)).astype(np.float32)
    action = rng.uniform(-1, 1, size=(t, schema.action_dim)).astype(np.float32)
    return obs, action


def reference(model: WorldModel, obs: np.ndarray, action: np.ndarray, t: int, seed: int):
    """`observe` over rows 0..t at once, then the one-step prediction under action[t] (batched (B, T, …))."""
    o = torch.from_numpy(obs[:, : t + 1])
    a = torch.from_numpy(action[:, : t + 1])
    first = torch.zeros(o.shape[:2], dtype=torch.bool)
    first[:, 0] = True
    with torch.no_grad():
        state = model.observe(model.initial_state(o.shape[0]), o, previous_actions(a, first), first)
        _, pred = model.step(state, a[:, -1], torch.Generator().manual_seed(seed))
    return pred


# ---------------------------------------------------------------------- twin sync
@pytest.mark.parametrize("kind", ["ensemble", "rssm"])
@pytest.mark.parametrize("batch", [1, 2])
def test_twin_step_by_step_equals_whole_history(tiny_schema, kind: str, batch: int) -> None:
    schema = tiny_schema(obs_dim=3, action_dim=2)
    model = tiny_model(kind, schema)
    eps = [episode(schema, 12, seed=b) for b in range(batch)]
    obs, action = np.stack([o for o, _ in eps]), np.stack([a for _, a in eps])
    twin = Twin(model, batch=batch)
    for t in range(obs.shape[1]):
        twin.observe(obs[:, t], None if t == 0 else action[:, t - 1])
        pred = twin.predict(action[:, t], generator=torch.Generator().manual_seed(t))
        ref = reference(model, obs, action, t, seed=t)
        torch.testing.assert_close(pred.obs_mean, ref.obs_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred.obs_std, ref.obs_std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ensemble", "rssm"])
def test_track_equals_observe_then_predict(tiny_schema, kind: str) -> None:
    """`track` (a block of rows; batched for Markov models) gives the row-by-row predictions."""
    schema = tiny_schema(obs_dim=3, action_dim=2)
    model = tiny_model(kind, schema)
    obs, action = episode(schema, 20)
    a, b = Twin(model, particles=2, seed=5), Twin(model, particles=2, seed=5)
    mean1, std1 = a.track(obs[:7], action[:7])
    mean2, std2 = a.track(obs[7:], action[7:], action_before=action[6])
    assert model.markov is (kind == "ensemble")  # declared, not probed
    means, stds = [], []
    for t in range(len(obs)):
        b.observe(obs[t], None if t == 0 else action[t - 1])
        pred = b.predict(action[t])
        means.append(pred.obs_mean[0].numpy())
        stds.append(pred.obs_std[0].numpy())
    np.testing.assert_allclose(np.r_[mean1, mean2], np.stack(means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.r_[std1, std2], np.stack(stds), rtol=1e-5, atol=1e-5)
    for key in ("obs", "action", "is_first"):
        np.testing.assert_array_equal(a.history()[key], b.history()[key])


def test_history_hands_the_state_to_the_env_and_generate(tiny_store, tmp_path: Path) -> None:
    import envs  # noqa: F401  (registers WorldModel-v0)
    from envs.world_model_env import WorldModelEnv
    from scenarios.starts import read_history

    tiny = tiny_store(episodes=2, obs_dim=3, action_dim=2)
    model = tiny_model("ensemble", tiny.schema)
    twin = Twin(model, history=8)
    obs, action = episode(tiny.schema, 11)
    for t in range(len(obs)):
        twin.observe(obs[t], None if t == 0 else action[t - 1])
    twin.predict(action[-1])
    h = twin.history()
    assert h["obs"].shape == (8, 3) and h["is_first"].tolist() == [True] + [False] * 7
    np.testing.assert_array_equal(h["obs"], obs[-8:])
    np.testing.assert_array_equal(h["action"], action[-8:])  # store-aligned, the last one from predict()

    env = WorldModelEnv(model, tiny.path)
    first_obs, info = env.reset(seed=0, options={"history": h})
    np.testing.assert_allclose(first_obs, obs[-1])
    assert info["start_episode"] == -1
    env.step(np.zeros(2, np.float32))

    path = twin.save_history(tmp_path / "now.npz")
    hist_obs, hist_action = read_history(path, tiny.schema, source="spec.yaml", key="starts.0")
    np.testing.assert_array_equal(hist_obs, obs[-8:])
    np.testing.assert_allclose(hist_action, action[-8:])


# ---------------------------------------------------------------------- anomaly scores
def test_scorer_is_the_gaussian_nll_in_training_std_units_averaged_over_the_window(tiny_schema) -> None:
    model = tiny_model("ensemble", tiny_schema(obs_dim=3, action_dim=2))
    scorer = AnomalyScorer(model, AnomalyConfig(window=3, std_floor=0.01), threshold=5.0)
    mean, std = np.zeros((1, 3)), np.full((1, 3), 0.4)
    obs = np.array([[0.8, 0.0, -0.4]])
    first = scorer.score(None, None, obs)
    assert np.isnan(first.surprise).all() and not first.alert.any()
    out = scorer.score(mean, std, obs)
    z, s = obs / 0.8, 0.4 / 0.8  # in units of the channel's training std (0.8)
    expected = 0.5 * (z / s) ** 2 + np.log(s) + LOG_SQRT_2PI
    np.testing.assert_allclose(out.contributions, expected)
    np.testing.assert_allclose(out.surprise, expected.sum(-1))
    big = scorer.score(mean, std, obs * 10)
    np.testing.assert_allclose(big.score, (out.surprise + big.surprise) / 2)  # the window so far
    assert big.alert.all()
    for _ in range(3):
        last = scorer.score(mean, std, obs)
    np.testing.assert_allclose(last.score, out.surprise)  # the outlier left the 3-step window
    normalized = AnomalyScorer(model, AnomalyConfig(kind="normalized")).score(mean, std, obs)
    np.testing.assert_allclose(normalized.contributions, 0.5 * z**2)


def test_score_episodes_and_calibration_match_the_live_mirror(tiny_schema, tmp_path: Path) -> None:
    schema = tiny_schema(obs_dim=3, action_dim=2)
    model = tiny_model("ensemble", schema)
    eps = [episode(schema, 15 + k, seed=k) for k in range(4)]
    config = AnomalyConfig(window=2, false_alarm_rate=0.1)
    batch_scores = score_episodes(model, eps, config)
    scores = ScoreStore(str(tmp_path / "s.anomaly.zarr"), schema.obs_channels, {})
    mirror = LiveMirror(Twin(model), AnomalyScorer(model, config), scores)
    t0 = 0
    for obs, action in eps:  # one piece per episode, as a stream with gaps would give
        n = len(obs)
        mirror.on_blocks([Block(label="", time=t0 + np.arange(n, dtype=np.int64), obs=obs, action=action,
                                reward=np.zeros(n, np.float32), starts_piece=True, ends_piece=True)])
        t0 += 1000
    scores.close()
    ds = xr.open_zarr(tmp_path / "s.anomaly.zarr")
    assert ds.sizes["time"] == sum(len(o) for o, _ in eps)
    np.testing.assert_allclose(ds.surprise.values, np.concatenate([s.surprise for s in batch_scores]), rtol=1e-5)
    np.testing.assert_allclose(ds.score.values, np.concatenate([s.score for s in batch_scores]), rtol=1e-5)

    cal = calibrate(model, eps, config, model_name="tiny")
    finite = np.concatenate([s.score for s in batch_scores])
    finite = finite[np.isfinite(finite)]
    assert cal.steps == finite.size and cal.episodes == 4
    assert (finite > cal.threshold).mean() <= 0.1 < (finite >= cal.threshold).mean() + 0.1
    cal.save(tmp_path / "cal.json")
    again = Calibration.load(tmp_path / "cal.json")
    assert again.threshold == cal.threshold and again.anomaly_config() == config


def test_score_store_appends_resumes_and_cuts_a_torn_flush(tiny_schema, tmp_path: Path) -> None:
    path = ScoreStore.path_for(str(tmp_path / "plant.zarr"))
    assert path.endswith("plant.anomaly.zarr")
    model = tiny_model("ensemble", tiny_schema(obs_dim=3, action_dim=2))
    scorer = AnomalyScorer(model, threshold=5.0)  # surprise 3.4, 4.9, 9.4, … for t = 0, 1, 2, …
    store = ScoreStore(path, ["a", "b", "c"], {"threshold": 5.0})
    for t in range(5):
        store.append(100 + t, scorer.score(np.zeros((1, 3)), np.ones((1, 3)), np.full((1, 3), t)))
    store.append(102, scorer.score(None, None, np.zeros((1, 3))))  # not newer: skipped
    store.close()
    ds = xr.open_zarr(path)  # plain xarray, consolidated snapshot
    assert ds.time.values.tolist() == [100, 101, 102, 103, 104]
    assert ds.contribution.dims == ("time", "obs_channel") and ds.obs_channel.values.tolist() == ["a", "b", "c"]
    assert ds.alert.values.tolist() == [False, False, True, True, True]
    import zarr

    zarr.open_group(path, mode="r+")["score"].append(np.ones(3, np.float32))  # a flush torn by a crash
    again = ScoreStore(path, ["a", "b", "c"], {})
    assert again.last_time == 104 and again.group["score"].shape == (5,)
    again.close()
    with pytest.raises(ValueError, match="scores are for channels"):
        ScoreStore(path, ["x", "y", "z"], {})


@pytest.mark.slow  # ~15 s: MLflow sets up its SQLite tracking database
def test_mlflow_log_records_live_metrics(tiny_schema, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from data_pipeline.stream import StreamStats
    from twin import MlflowLog

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    model = tiny_model("ensemble", tiny_schema(obs_dim=3, action_dim=2))
    mirror = LiveMirror(Twin(model), AnomalyScorer(model, threshold=2.0))
    obs, action = episode(model.schema, 10)
    mirror.on_blocks([Block(label="", time=np.arange(10, dtype=np.int64), obs=obs, action=action,
                            reward=np.zeros(10, np.float32), starts_piece=True)])
    log = MlflowLog({"model": "tiny", "store": "plant.zarr", "threshold": 2.0})
    log.log(mirror, StreamStats(committed_steps=10), now=0.0, force=True)
    log.close()
    run = MlflowClient(uri).get_run(log.run_id)
    assert run.data.metrics["twin/steps"] == 10
    assert run.data.metrics["anomaly/score"] == pytest.approx(mirror.stats.latest_score)
    assert run.data.params["threshold"] == "2.0"


# ---------------------------------------------------------------------- the commands
@pytest.mark.parametrize(("module", "prog"), [("twin.live", "python -m twin.live"),
                                              ("envs.live", "python -m twin.live"),
                                              ("twin.calibrate", "python -m twin.calibrate"),
                                              ("worldmodel.anomaly", "python -m twin.calibrate")])
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # this test process imported them
def test_commands_and_their_aliases_run_as_main(module: str, prog: str, monkeypatch, capsys) -> None:
    """`python -m envs.live` and `python -m worldmodel.anomaly` keep working, as the twin package's commands."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def train_tiny_pendulum(schema: StoreSchema, samples: list[list[dict]], steps: int = 400) -> EnsembleWorldModel:
    """A tiny ensemble fitted to a few Pendulum episodes: good enough to be surprised by a broken sensor."""
    obs = np.concatenate([[[s["cos_theta"], s["sin_theta"], s["theta_dot"]] for s in ep] for ep in samples])
    act = np.concatenate([[[s["torque"]] for s in ep] for ep in samples])
    rew = np.concatenate([[s["reward"] for s in ep] for ep in samples])
    norm = Normalization(obs_mean=obs.mean(0).tolist(), obs_std=obs.std(0).tolist(), obs_min=obs.min(0).tolist(),
                         obs_max=obs.max(0).tolist(), action_mean=act.mean(0).tolist(),
                         action_std=act.std(0).tolist(), action_min=act.min(0).tolist(),
                         action_max=act.max(0).tolist(), reward_mean=float(rew.mean()),
                         reward_std=float(rew.std()), reward_min=float(rew.min()), reward_max=float(rew.max()))
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig(members=3, elites=2, hidden=64, layers=2), schema, norm)
    starts = np.concatenate([np.arange(len(ep) - 1) + sum(len(e) for e in samples[:i])
                             for i, ep in enumerate(samples)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pair = np.stack([starts, starts + 1], 1)
    for _ in range(steps):
        idx = pair[np.random.default_rng(_).integers(len(pair), size=128)]
        b = len(idx)
        flags = torch.zeros(b, 2, dtype=torch.bool)
        batch = Batch(obs=torch.tensor(obs[idx], dtype=torch.float32),
                      action=torch.tensor(act[idx], dtype=torch.float32),
                      reward=torch.tensor(rew[idx], dtype=torch.float32), terminated=flags, is_first=flags,
                      is_last=flags)
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def live_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A spec, a tiny Pendulum ensemble and its calibration (window 3) on normal episodes."""
    from data_pipeline.schema import Episode
    from twin.calibrate import main as calibrate_main

    tmp_path = tmp_path_factory.mktemp("live")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(PENDULUM_SPEC))
    schema = IngestSpec.from_yaml(spec_path).schema({})
    model = train_tiny_pendulum(schema, [pendulum_samples(150, seed=s) for s in range(4)])
    model.save(str(tmp_path / "model.pt"))
    with TrajectoryStore.create(tmp_path / "normal.zarr", schema) as normal:  # normal episodes to calibrate on
        for s in (10, 11, 12):
            ep = pendulum_samples(100, seed=s)
            obs = np.array([[x["cos_theta"], x["sin_theta"], x["theta_dot"]] for x in ep], np.float32)
            act = np.array([[x["torque"]] for x in ep], np.float32)
            rew = np.array([x["reward"] for x in ep], np.float32)
            normal.append(Episode(obs=obs, action=act, reward=rew, terminated=np.zeros(100, bool),
                                  truncated=np.r_[np.zeros(99, bool), True], time=np.arange(100) * 50_000_000))
    assert calibrate_main(["--model", str(tmp_path / "model.pt"), "--store", str(tmp_path / "normal.zarr"),
                           "--split", "all", "--window", "3", "--out", str(tmp_path / "cal.json")]) == 0
    return {"spec": str(spec_path), "model": str(tmp_path / "model.pt"), "calibration": str(tmp_path / "cal.json")}


def faulty_episode(seed: int = 20, onset: int = 80) -> list[dict]:
    live = pendulum_samples(120, seed=seed)
    for s in live[onset:]:
        s["theta_dot"] = min(s["theta_dot"] + 3.0, 8.0)  # the speed sensor gains a bias (within its range)
    return live


def test_live_command_mirrors_scores_and_alerts(tmp_path: Path, live_setup: dict[str, str]) -> None:
    spec_path = live_setup["spec"]
    schema = IngestSpec.from_yaml(spec_path).schema({})
    live = faulty_episode()
    lines = "".join(json.dumps(s) + "\n" for s in live)
    cmd = [sys.executable, "-m", "twin.live", "--model", live_setup["model"], "--spec", spec_path,
           "--source", "-", "--store", str(tmp_path / "live.zarr"), "--calibration", live_setup["calibration"],
           "--history-out", str(tmp_path / "now.npz"), "--no-mlflow", "--status-every", "0"]
    run = subprocess.run(cmd, input=lines, capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert run.returncode == 0, run.stderr
    keys = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert keys["rejected"] == "0", run.stderr
    assert keys["steps"] == "120" and keys["committed_steps"] == "120" and int(keys["alerts"]) >= 1
    alerts = [json.loads(v) for k, v in (line.split(": ", 1) for line in run.stdout.splitlines()) if k == "alert"]
    late = [a for a in alerts if a["time"] >= live[80]["t"] * 1e9 - 1]  # (a 1% false-alarm rate allows a few before)
    assert late and set(late[0]["channels"]) == set(schema.obs_channels)
    data = xr.open_zarr(tmp_path / "live.zarr")
    scores = xr.open_zarr(keys["scores"])
    np.testing.assert_array_equal(scores.time.values, data.time.values)  # one score per mirrored row
    assert scores.alert.values[:80].mean() < 0.2 and scores.alert.values[85:].mean() > 0.8
    hist = np.load(keys["history"])
    np.testing.assert_allclose(hist["obs"][-1], data.obs.values[-1])


@pytest.mark.slow  # ~5 s: a broker, a subprocess and a SIGTERM
def test_live_command_publishes_alerts_over_mqtt_and_stops_on_sigterm(tmp_path: Path, live_setup: dict[str, str],
                                                                       mqtt_broker: int) -> None:
    import signal
    import threading

    import paho.mqtt.client as mqtt

    received: list[dict] = []
    subscribed = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    listener.on_message = lambda c, u, msg: received.append(json.loads(msg.payload))
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.connect("127.0.0.1", mqtt_broker)
    listener.subscribe("plant/alerts", qos=1)
    listener.loop_start()
    out = str(tmp_path / "live.zarr")
    err = tmp_path / "live.err"
    cmd = [sys.executable, "-m", "envs.live", "--model", live_setup["model"], "--spec", live_setup["spec"],
           "--source", f"mqtt://127.0.0.1:{mqtt_broker}/plant/pendulum", "--store", out, "--calibration",
           live_setup["calibration"], "--alert-topic", "plant/alerts", "--no-mlflow", "--status-every", "0.5",
           "--reorder-window", "0.3", "--commit-interval", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err.open("w"), text=True, env=subprocess_env())
    pub = Publisher(mqtt_broker)
    try:
        assert subscribed.wait(10)
        wait_for(lambda: "subscribed to" in err.read_text() or proc.poll() is not None, 60.0, "the subscription")
        assert proc.poll() is None, err.read_text()
        pub.send("plant/pendulum", faulty_episode(seed=21))
        wait_for(lambda: bool(received), 60.0, "an alert on plant/alerts")
        wait_for(lambda: committed_steps(out) >= 100, 60.0, "commits")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        pub.close()
        listener.loop_stop()
        proc.kill()
    assert proc.returncode == 0, err.read_text()
    assert "steps: " in err.read_text() and "lag: " in err.read_text()  # the live status line
    assert {"time", "score", "threshold", "channels"} <= set(received[-1])
    keys = dict(line.split(": ", 1) for line in stdout.splitlines() if not line.startswith("alert: "))
    assert keys["committed_steps"] == "120" and int(keys["alerts"]) >= 1
