"""scenarios/ and generate.py: the scenario spec, the scenario store, validity against the model evaluation,
the CLI.

A tiny ensemble is trained once per session on a small recorded Pendulum-v1 store (a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import generate
from data_pipeline.record import record
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import normalization_for, split_episodes
from data_pipeline.windows.fixed import eval_windows
from scenarios.rollout import block_seed
from scenarios.run import generate as generate_scenarios
from scenarios.spec import Condition, Outcome, ScenarioSpecError, load_spec, parse_spec_text
from scenarios.starts import resolve_starts
from scenarios.summary import summarize
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.evaluation import evaluate, rollout_samples
from worldmodel.interface import WorldModel

REPO = Path(__file__).resolve().parents[2]


def child_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["OMP_NUM_THREADS"] = "1"
    return env


@dataclass
class Trained:
    store_path: str
    model_path: str
    model: WorldModel
    store: TrajectoryStore
    split: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny ensemble fitted to 10 random-action Pendulum-v1 episodes of 60 steps (seeded)."""
    torch.set_num_threads(1)  # the machine is shared: one thread is faster than two contended ones
    tmp = tmp_path_factory.mktemp("generate")
    path = str(tmp / "pendulum.zarr")
    record("Pendulum-v1", 10, path, max_episode_steps=60, progress=False)
    store = TrajectoryStore.open(path)
    split = split_episodes(store, 0)
    torch.manual_seed(0)
    norm = normalization_for(store, split["train"])
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema, norm)
    windows = eval_windows(store, split["train"], 16, 1000)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(400):
        loss, _ = model.loss(windows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model_path = str(tmp / "model.pt")
    model.save(model_path)
    return Trained(path, model_path, model, store, split)


def run(trained: Trained, spec_text: str, out: Path, seed: int | None = None) -> xr.Dataset:
    spec = parse_spec_text(textwrap.dedent(spec_text), "test.yaml")
    if seed is not None:
        spec = spec.with_seed(seed)
    generate_scenarios(spec, trained.model, trained.store, out, attrs={"model": "test"}, progress=False)
    return xr.open_zarr(out)


SPEC = """
    horizon: 10
    samples: 8
    seed: 3
    context: 4
    starts:
      - {episode: 0, t: 5}
      - {every: 20, episode: 1}
    interventions:
      factual: {}
      push_plus: {constant: {torque: 2.0}}
      push_minus: {constant: {torque: -2.0}}
    outcomes:
      fast: {condition: "abs(theta_dot) > 4", when: any}
    summary: {channels: [theta_dot], times: [5, 10]}
"""


# ------------------------------------------------------------------------------------------ spec
def test_shipped_specs_parse_and_check(trained: Trained) -> None:
    spec = load_spec(REPO / "configs/scenarios/pendulum.yaml")
    spec.check(trained.store.schema)
    assert spec.factual is not None and spec.factual.name == "factual"
    names = [i.name for i in spec.interventions]
    assert "full_torque" in names and "speed_sensor_drift" in names
    drift = spec.interventions[names.index("speed_sensor_drift")]
    assert drift.obs_offset == {"theta_dot": 0.5} and not drift.is_factual
    kick = spec.interventions[names.index("kick_then_brake")]
    recorded = np.full((30, 1), 0.25)
    planned = kick.apply(recorded, ["torque"])[:, 0]
    assert planned[0] == 2.0 and planned[15] == -2.0 and planned[25] == 0.25  # null: back to recorded
    cart = load_spec(REPO / "configs/scenarios/cartpole.yaml")
    assert [o.name for o in cart.outcomes] == ["pole_falls", "leaves_track"]


# (spec text, key path the error names, what it says was expected). Messages follow data_pipeline.specfile:
# "<file>: key '<path>' is <found>; <expected>" (or "... is missing" / "... is not a known key").
BAD_SPECS = [
    ("interventions: {f: {}}", "key 'starts' is missing", ""),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\nhorizon: -1",
     "key 'horizon' is -1", "greater than or equal to 1"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\nhorizon: '5'", "key 'horizon' is '5'", "valid integer"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\nclip_actions: 1",
     "key 'clip_actions' is 1", "valid boolean"),
    ("starts: [{episod: 0}]\ninterventions: {f: {}}", "key 'starts.0' is {'episod': 0}",
     "expected one of {episode: E, t: T}"),
    ("starts: [{episode: 0, t: 1, x: 2}]\ninterventions: {f: {}}", "key 'starts.0.x' is not a known key", ""),
    ("starts: [{episode: 0, every: 5, to: -1}]\ninterventions: {f: {}}", "key 'starts.0.to' is -1",
     "greater than or equal to 0"),
    ("starts: [{every: 5}]\ninterventions: {f: {}}", "key 'starts.0.episode' is missing", ""),
    ("starts: [{sample: 3, split: holdout}]\ninterventions: {f: {}}", "key 'starts.0.split' is 'holdout'",
     "'train', 'val', 'test' or 'all'"),
    ("starts: []\ninterventions: {f: {}}", "key 'starts' is []", "at least 1 item"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {}", "key 'interventions' is {}", "at least 1 item"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {'a b': {}}", "key 'interventions.a b.[key]' is 'a b'",
     "expected a name of letters, digits"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {constnt: {torque: 1}}}",
     "key 'interventions.p.constnt' is not a known key", ""),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {constant: {}}}", "key 'interventions.p.constant' is {}",
     "expected {channel: number, ...}"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {schedule: {torque: [[5, 1], [2, 0]]}}}",
     "key 'interventions.p.schedule.torque' is [[5, 1], [2, 0]]", "steps [5, 2]; expected strictly increasing"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {constant: {torque: high}}}",
     "key 'interventions.p.constant.torque' is 'high'", "valid number"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {constant: {torque: .inf}}}",
     "key 'interventions.p.constant.torque' is inf", "finite number"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {policy: a:b, constant: {torque: 1}}}",
     "key 'interventions.p' is", "a policy sets every actuator"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {p: {constant: {torque: 1}, scale: {torque: 2}}}",
     "key 'interventions.p' is", "channel 'torque' is set by ['constant', 'scale/offset']; expected one of"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\n"
     "outcomes: {x: \"__import__('os').system('ls') > 1\"}",
     "key 'outcomes.x.condition' is \"__import__", "expected '<channel> <op> <number>'"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\noutcomes: {x: {condition: 'a > 1', when: often}}",
     "key 'outcomes.x.when' is 'often'", "'any', 'end' or 'fraction'"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\nhorizon: 5\nsummary: {times: [10]}",
     "key 'summary.times.0' is 10", "expected a step in 1..horizon=5"),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}, f: {}}", "duplicate key 'f'", ""),
    ("starts: [{episode: 0, t: 1}]\ninterventions: {f: {}}\nsplit: {test_fraction: 1.5}",
     "key 'split.test_fraction' is 1.5", "less than 1"),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD_SPECS)
def test_bad_spec_names_key_and_expectation(text: str, key: str, expected: str) -> None:
    with pytest.raises(ScenarioSpecError) as err:
        parse_spec_text(text, "bad.yaml")
    message = str(err.value)
    assert key in message and expected in message and message.startswith("bad.yaml"), message
    assert "\n" not in message


def test_spec_defaults_and_empty_sections() -> None:
    spec = parse_spec_text("starts: [{episode: ep-7, every: 4, from: 2}, {history: h.npz}]\n"
                           "interventions: {factual: , drift: {obs_offset: {x: 0.5}}}\noutcomes:\nsummary:\n"
                           "horizon: 12", "d.yaml", base=Path("/specs"))
    assert (spec.samples, spec.context, spec.seed, spec.block_trajectories, spec.clip_actions) == (32, 8, 0, 4096, True)
    assert spec.summary_times == (12,) and spec.summary_channels == () and spec.outcomes == ()
    assert [i.name for i in spec.interventions] == ["factual", "drift"] and spec.factual is spec.interventions[0]
    every, history = spec.starts
    assert (every.key, every.episode, every.first, every.last) == ("starts.0", "ep-7", 2, None)
    assert history.key == "starts.1" and history.path == str(Path("/specs/h.npz"))
    assert spec.with_seed(5).seed == 5 and spec.with_seed(5).source == "d.yaml" and spec.seed == 0
    assert "horizon: 12" in spec.with_seed(5).text


@pytest.mark.parametrize(("text", "message"), [
    ("interventions: {p: {constant: {torq: 1}}}", "interventions.p.constant.torq: unknown actuator channel; "
                                                  "expected one of ['torque']"),
    ("interventions: {p: {obs_offset: {speed: 1}}}",
     "interventions.p.obs_offset.speed: unknown observed channel"),
    ("interventions: {f: {}}\noutcomes: {o: 'omega > 2'}", "outcomes.o.condition.omega: unknown channel"),
    ("interventions: {f: {}}\nsummary: {channels: [theta]}",
     "summary.channels.theta: unknown observed channel"),
])
def test_spec_channels_are_checked_against_the_store(trained: Trained, text: str, message: str) -> None:
    spec = parse_spec_text("starts: [{episode: 0, t: 1}]\n" + text, "bad.yaml")
    with pytest.raises(ScenarioSpecError, match=None) as err:
        spec.check(trained.store.schema)
    assert message in str(err.value)


def test_start_errors_name_the_key(trained: Trained, tmp_path: Path) -> None:
    text = "starts: [{episode: 0, t: 1}, {episode: 1, t: 500}]\ninterventions: {f: {}}"
    spec = parse_spec_text(text, "s.yaml")
    with pytest.raises(ScenarioSpecError, match=r"^s\.yaml: starts\.1\.t: row 500 is past the end of episode 1 "
                                                r"\(61 rows\); expected 0\.\.60"):
        resolve_starts(spec, trained.store)
    spec = parse_spec_text("starts: [{episode: 99, t: 1}]\ninterventions: {f: {}}", "s.yaml")
    with pytest.raises(ScenarioSpecError, match=r"starts\.0\.episode: episode 99 out of range"):
        resolve_starts(spec, trained.store)


def test_condition_grammar_and_outcome_probabilities() -> None:
    c = Condition.parse("abs(theta_dot) >= 6.5e0", "k")
    assert (c.channel, c.op, c.value, c.absolute) == ("theta_dot", ">=", 6.5, True)
    assert Condition.parse("x<-1", "k") == Condition("x", "<", -1.0)
    for bad in ("x > y", "x >> 1", "1 > x", "x > 1; import os", "abs(x > 1"):
        with pytest.raises(ScenarioSpecError):
            Condition.parse(bad, "k")
    values = np.array([[[0.0, 7.0, 0.0], [0.0, 0.0, 0.0]]])  # (n=1, samples=2, time=3)
    cond = Condition("v", ">", 6.0)
    assert Outcome(condition=cond, when="any").probability(values)[0] == 0.5
    assert Outcome(condition=cond, when="end").probability(values)[0] == 0.0
    assert Outcome(condition=cond, when="fraction").probability(values)[0] == pytest.approx(1 / 6)
    assert Outcome.model_validate("abs(v) > 6").condition == Condition("v", ">", 6.0, absolute=True)


# ------------------------------------------------------------------------------------------ outputs
def test_more_torque_raises_angular_speed(trained: Trained, tmp_path: Path) -> None:
    ds = run(trained, SPEC, tmp_path / "s.zarr")
    speed = ds["obs"].sel(obs_channel="theta_dot")
    for start in np.unique(ds["start"].values):
        plus = speed.sel(scenario=f"{start}/push_plus").isel(time=slice(4, 10)).median("sample")
        minus = speed.sel(scenario=f"{start}/push_minus").isel(time=slice(4, 10)).median("sample")
        assert (plus > minus).all(), f"{start}: +2 N*m does not spin faster than -2 N*m"
    applied = ds["action"].sel(scenario=ds["intervention"] == "push_plus")
    assert float(applied.min()) == float(applied.max()) == 2.0


def test_scenario_store_layout(trained: Trained, tmp_path: Path) -> None:
    ds = run(trained, SPEC, tmp_path / "s.zarr")
    n_starts = 1 + 3  # episode 0 at t=5; episode 1 at t=3, 23, 43
    assert dict(ds.sizes) == {"scenario": 3 * n_starts, "sample": 8, "time": 10, "obs_channel": 3,
                              "action_channel": 1}
    assert ds["obs"].dims == ("scenario", "sample", "time", "obs_channel")
    assert ds["action"].dims == ("scenario", "sample", "time", "action_channel")
    for name in ("reward", "terminated", "uncertainty"):
        assert ds[name].dims == ("scenario", "sample", "time")
    assert ds["factual_obs"].dims == ("scenario", "time", "obs_channel")
    assert list(ds["obs_channel"].values) == ["cos_theta", "sin_theta", "theta_dot"]
    assert ds["scenario"].values[0] == "ep0@t5/factual"
    assert list(ds["intervention"].values[:3]) == ["factual", "push_plus", "push_minus"]
    assert list(ds["start_t"].values[::3]) == [5, 3, 23, 43]
    # start_episode is the position in the store's episode table (as in the env's reset info), start_episode_id
    # the episode's id.
    episodes = trained.store.episodes()
    assert list(ds["start_episode"].values[::3]) == [0, 1, 1, 1] and ds["start_episode"].dtype == np.int64
    assert list(ds["start_episode_id"].values[::3]) == [episodes["id"].iloc[e] for e in (0, 1, 1, 1)]
    assert ds.attrs["layout_version"] == "1.1" and "start_episode_index" not in ds.coords
    assert ds.attrs["complete"] and ds.attrs["seed"] == 3 and "push_plus" in ds.attrs["spec"]
    assert ds.attrs["store_fingerprint"] is not None and ds.attrs["model"] == "test"
    # The recorded future: rows t+1..t+H of the episode, NaN past its end (episode 1 at t=43: 17 rows left).
    ep1 = trained.store.read_episode(1)
    np.testing.assert_array_equal(ds["factual_obs"].sel(scenario="ep1@t23/factual").values, ep1.obs[24:34])
    last = ds["factual_obs"].sel(scenario="ep1@t43/factual").values
    assert np.isfinite(last[:ep1.num_rows - 1 - 43]).all() and np.isnan(last[ep1.num_rows - 1 - 43:]).all()
    np.testing.assert_array_equal(ds["start_obs"].sel(scenario="ep1@t23/factual").values, ep1.obs[23])
    # Factual actions are the recorded ones.
    np.testing.assert_array_equal(ds["action"].sel(scenario="ep1@t23/factual").isel(sample=0).values,
                                  ep1.action[23:33])
    assert np.isfinite(ds["obs"].values).all()


def test_same_seed_same_store_other_seed_differs(trained: Trained, tmp_path: Path) -> None:
    a = run(trained, SPEC, tmp_path / "a.zarr")
    b = run(trained, SPEC, tmp_path / "b.zarr")
    xr.testing.assert_identical(a.load(), b.load())
    c = run(trained, SPEC, tmp_path / "c.zarr", seed=4)
    assert not np.array_equal(a["obs"].values, c["obs"].values)


def test_blocks_do_not_change_the_result_across_processes(trained: Trained, tmp_path: Path) -> None:
    """Splitting the blocks over ranks (rank 1 then rank 0, as two processes would) gives the same store."""
    spec = parse_spec_text(textwrap.dedent(SPEC) + "block_trajectories: 16\n", "t.yaml")  # 2 a block
    one = tmp_path / "one.zarr"
    generate_scenarios(spec, trained.model, trained.store, one, attrs={}, progress=False)
    two = tmp_path / "two.zarr"
    generate_scenarios(spec, trained.model, trained.store, two, attrs={}, rank=0, world_size=2, progress=False)
    generate_scenarios(spec, trained.model, trained.store, two, attrs={}, rank=1, world_size=2, progress=False,
                      overwrite=True)  # rank 1 writes its region into rank 0's store (no re-create)
    xr.testing.assert_identical(xr.open_zarr(one).load(), xr.open_zarr(two).load())


def test_policy_history_and_sensor_offset(trained: Trained, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "twin_policies.py").write_text("import numpy as np\n\ndef push(obs):\n"
                                               "    return np.full((len(obs), 1), 2.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = "horizon: 6\nsamples: 4\nseed: 1\ncontext: 3\nstarts: [{episode: 2, t: 10}]\n"
    policy = run(trained, base + "interventions: {p: {policy: 'twin_policies:push'}}", tmp_path / "p.zarr")
    const = run(trained, base + "interventions: {p: {constant: {torque: 2.0}}}", tmp_path / "c.zarr")
    # The closed loop steps the same model with the same noise as the open-loop imagine call.
    np.testing.assert_array_equal(policy["obs"].values, const["obs"].values)
    np.testing.assert_array_equal(policy["action"].values, const["action"].values)

    ep = trained.store.read_episode(2)
    np.savez(tmp_path / "hist.npz", obs=ep.obs[:11], action=ep.action[:11])
    text = base.replace("starts: [{episode: 2, t: 10}]", f"starts: [{{history: {tmp_path / 'hist.npz'}}}]")
    text += "interventions: {f: {}, drift: {obs_offset: {theta_dot: 0.5}}}"
    hist = run(trained, text, tmp_path / "h.zarr")
    assert list(hist["scenario"].values) == ["history:hist/f", "history:hist/drift"]
    assert np.isnan(hist["factual_obs"].values).all() and int(hist["start_episode"][0]) == -1
    assert hist["start_episode_id"].values[0] == ""
    shift = hist["start_obs"].values[1] - hist["start_obs"].values[0]
    np.testing.assert_allclose(shift, [0, 0, 0.5], atol=1e-6)
    assert (hist["action"].values[0] == ep.action[10, 0]).all()  # the last action of the history, held


def test_factual_scenarios_reproduce_the_model_evaluation(trained: Trained, tmp_path: Path) -> None:
    """generate's nRMSE and 90% coverage of factual scenarios equal worldmodel.evaluation's, same windows."""
    context, horizon, samples, seed = 4, 20, 16, 7
    test_eps = trained.split["test"]
    windows = eval_windows(trained.store, test_eps, context + horizon, 256)
    lengths = trained.store.episodes()["length"].to_numpy()
    starts = [f"{{episode: {e}, t: {a + context - 1}}}" for e in test_eps
              for a in range(0, lengths[e] - (context + horizon) + 1, context + horizon)]
    assert len(starts) == windows.batch_size >= 2
    spec = parse_spec_text(f"horizon: {horizon}\nsamples: {samples}\nseed: {seed}\ncontext: {context}\n"
                           f"starts: [{', '.join(starts)}]\ninterventions: {{factual: {{}}}}\n", "v.yaml")
    out = tmp_path / "v.zarr"
    generate_scenarios(spec, trained.model, trained.store, out, attrs={}, progress=False)
    ds = xr.open_zarr(out)
    seed0 = block_seed(seed, 0)  # all scenarios fit one block
    expected = rollout_samples(trained.model, windows, context, horizon, samples, seed0)
    np.testing.assert_array_equal(ds["obs"].values, expected.numpy())
    _, calibration = summarize(out, spec)
    horizons = (1, 5, 10, 20)
    metrics = evaluate(trained.model, windows, context=context, horizons=horizons, samples=samples,
                       seed=seed0)
    std = trained.model.obs_std.numpy()
    truth = windows.obs[:, context:].numpy()
    for h in horizons:
        row = calibration.set_index("horizon").loc[h]
        # evaluate averages in float32: sample - truth loses ~1e-7 of the observations' scale, which is 2e-5 of
        # an nRMSE of 0.002 (a run on a good model failed rel=1e-5 alone), hence the absolute tolerance.
        assert row["nrmse"] == pytest.approx(metrics[f"nrmse/h{h}"], rel=1e-5, abs=1e-6)
        assert row["coverage90"] == pytest.approx(metrics[f"coverage90/h{h}"], rel=1e-6)
        median = np.median(expected.numpy()[:, :, h - 1], axis=1)
        nrmse_median = np.sqrt(((np.sqrt(((median - truth[:, h - 1]) ** 2).mean(0)) / std) ** 2).mean())
        assert row["nrmse_median"] == pytest.approx(nrmse_median, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------ command line
@pytest.mark.slow  # a subprocess run end to end with MLflow (~15 s)
def test_cli_writes_store_summary_plots_and_mlflow_run(trained: Trained, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    out, plots = tmp_path / "cli.zarr", tmp_path / "plots"
    cmd = [sys.executable, str(REPO / "generate.py"), "--config", str(spec), "--model", trained.model_path,
           "--store", trained.store_path, "--out", str(out), "--plot", str(plots), "--no-progress",
           "--accelerator", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line and " " not in
                 line.split(": ", 1)[0])
    assert lines["scenarios"] == str(out) and lines["plots"] == str(plots)
    assert Path(lines["summary"]).exists() and lines["run_id"]
    pngs = sorted(plots.glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    import pandas as pd

    table = pd.read_csv(lines["summary"])
    assert {"theta_dot@10:q05", "theta_dot@10:diff_mean", "P(fast)", "P(fast):diff"} <= set(table.columns)
    assert (table.loc[table["intervention"] == "factual", "theta_dot@10:diff_mean"] == 0).all()
    assert "coverage90" in proc.stdout
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_info = client.get_run(lines["run_id"])
    assert run_info.data.tags["data.fingerprint"] == trained.store.fingerprint()
    assert "outcome_mean/fast/push_plus" in run_info.data.metrics
    arts = {a.path for a in client.list_artifacts(lines["run_id"])}
    assert {"spec", "summary", "plots"} <= arts
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        generate.main(cmd[2:] + ["--no-mlflow"])


@pytest.mark.slow  # two DDP processes (~30 s)
def test_cli_two_processes_give_the_same_store(trained: Trained, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC) + "block_trajectories: 16\n")
    base = [sys.executable, str(REPO / "generate.py"), "--config", str(spec), "--model", trained.model_path,
            "--store", trained.store_path, "--no-progress", "--no-mlflow", "--accelerator", "cpu"]
    proc = subprocess.run(base + ["--out", str(tmp_path / "two.zarr"), "--devices", "2"], cwd=tmp_path,
                          env=child_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scenarios: ") == 1  # only rank 0 reports
    generate.main(base[2:] + ["--out", str(tmp_path / "one.zarr")])
    one, two = xr.open_zarr(tmp_path / "one.zarr").load(), xr.open_zarr(tmp_path / "two.zarr").load()
    xr.testing.assert_identical(one, two)
    assert zarr.open_group(str(tmp_path / "two.zarr"), mode="r").attrs["complete"]


def test_uncertainty_none_gives_the_same_futures_without_the_disagreement(trained: Trained, tmp_path: Path) -> None:
    """`uncertainty: none` runs each sample's own member only: same futures, no stored disagreement."""
    full = run(trained, SPEC, tmp_path / "elites.zarr")
    cheap = run(trained, SPEC + "    uncertainty: none\n", tmp_path / "none.zarr")
    np.testing.assert_allclose(cheap["obs"].values, full["obs"].values, rtol=1e-5, atol=1e-5)
    assert float(np.abs(cheap["uncertainty"].values).max()) == 0.0 < float(full["uncertainty"].values.max())
    with pytest.raises(ScenarioSpecError, match="uncertainty"):
        parse_spec_text(textwrap.dedent(SPEC) + "uncertainty: some\n", "bad.yaml")
