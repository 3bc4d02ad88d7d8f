"""`python -m twin.dashboard` in a real browser: the server runs as a subprocess on a free loopback port, headless
Chromium (selenium, /usr/bin/chromedriver) opens the page, finds the tabs, the channel names and the plot
canvases, sees the Live view's counters climb while a stream is fed (no reload), and saves screenshots.
Bad input (a missing store, a store of the wrong kind) is one line and exit 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import subprocess_env
from stream_helpers import PENDULUM_SPEC, free_port, pendulum_samples, wait_for

from data_pipeline.errors import run_cli
from data_pipeline.ingest import IngestSpec
from data_pipeline.schema import Episode
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import normalization_for
from scenarios.run import generate
from scenarios.spec import parse_spec_text
from twin.dashboard.__main__ import check_host, main
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("TWINWORLD_DASHBOARD_SHOTS", "")) if os.environ.get("TWINWORLD_DASHBOARD_SHOTS") else None
"""Where screenshots go besides the test's tmp dir (docs/images when refreshing the docs' pictures)."""
T0 = 1_700_000_000 * 10**9
SCENARIO_SPEC = """
    horizon: 10
    samples: 8
    seed: 3
    context: 4
    starts:
      - {episode: 0, t: 5}
      - {episode: 1, t: 10}
    interventions:
      factual: {}
      push_plus: {constant: {torque: 2.0}}
      push_minus: {constant: {torque: -2.0}}
    outcomes:
      fast: {condition: "abs(theta_dot) > 4", when: any}
    summary: {channels: [theta_dot], times: [5, 10]}
"""

# Collects the text and the canvases of the page, through Panel's shadow roots.
DEEP_TEXT = """
const out = {text: [], canvases: 0};
function walk(node) {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const child of node.childNodes) {
    if (child.nodeType === 3) out.text.push(child.textContent);
    else if (child.nodeType === 1 && child.tagName !== 'STYLE' && child.tagName !== 'SCRIPT') {
      if (child.tagName === 'CANVAS') out.canvases++;
      walk(child);
    }
  }
}
walk(document.body);
return {text: out.text.join(' '), canvases: out.canvases};
"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Pendulum spec, a 4-episode store, an untrained tiny ensemble (seeded) and a scenario store of it."""
    tmp = tmp_path_factory.mktemp("dashboard")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(PENDULUM_SPEC))
    schema = IngestSpec.from_yaml(tmp / "spec.yaml").schema({})
    with TrajectoryStore.create(tmp / "data.zarr", schema) as store:
        for s in range(4):
            ep = pendulum_samples(40, seed=s)
            store.append(Episode(
                obs=np.array([[x["cos_theta"], x["sin_theta"], x["theta_dot"]] for x in ep], np.float32),
                action=np.array([[x["torque"]] for x in ep], np.float32),
                reward=np.array([x["reward"] for x in ep], np.float32), terminated=np.zeros(40, bool),
                truncated=np.r_[np.zeros(39, bool), True], time=T0 + s * 10**10 + np.arange(40) * 50_000_000))
    store = TrajectoryStore.open(tmp / "data.zarr")
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), schema, normalization_for(store, np.arange(4))).eval()
    model.save(str(tmp / "model.pt"))
    spec = parse_spec_text(textwrap.dedent(SCENARIO_SPEC), "dashboard.yaml")
    generate(spec, model, store, tmp / "scenarios.zarr", attrs={"model": "test"}, progress=False)
    store.close()
    return {"dir": tmp, "spec": tmp / "spec.yaml", "store": tmp / "data.zarr", "model": tmp / "model.pt",
            "scenarios": tmp / "scenarios.zarr"}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install "
                    "chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"twinworld-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Server:
    """`python -m twin.dashboard …` on a free loopback port; stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "twin.dashboard", *args, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=subprocess_env())
        wait_for(lambda: "serving" in log.read_text() or self.proc.poll() is not None, 120, "the dashboard to serve")
        assert self.proc.poll() is None, log.read_text()
        assert f"serving http://127.0.0.1:{self.port}/" in log.read_text()  # loopback by default

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def page_state(driver: Any) -> dict[str, Any]:
    return driver.execute_script(DEEP_TEXT)


def counter(driver: Any, name: str) -> int:
    found = re.search(rf"{name}\s+(\d+)", page_state(driver)["text"])
    return int(found[1]) if found else -1


def click_tab(driver: Any, title: str) -> None:
    driver.execute_script("""
    function find(node) {
      if (node.shadowRoot) { const hit = find(node.shadowRoot); if (hit) return hit; }
      for (const c of node.children) {
        if (c.classList && c.classList.contains('bk-tab') && c.textContent.trim() === arguments[0]) return c;
        const hit = find(c); if (hit) return hit;
      }
      return null;
    }
    find(document.body).click();""".replace("arguments[0]", json.dumps(title)))


def shot(driver: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"dashboard_{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
    return path


def lines(samples: list[dict]) -> str:
    return "".join(json.dumps(s) + "\n" for s in samples)


@pytest.mark.slow  # ~40 s on the shared CPU: the server and Chromium start, a stream is fed, three tabs render
def test_dashboard_renders_every_view_and_the_live_view_follows_the_stream(plant: dict[str, Path], browser: Any,
                                                                          tmp_path: Path) -> None:
    feed = tmp_path / "plant.jsonl"
    samples = pendulum_samples(200, seed=7)
    feed.write_text(lines(samples[:60]))
    live_store = tmp_path / "live.zarr"
    server = Server(["--store", str(live_store), "--scenarios", str(plant["scenarios"]), "--live", f"file:{feed}",
                     "--model", str(plant["model"]), "--spec", str(plant["spec"]), "--threshold", "8",
                     "--commit-interval", "1"], tmp_path / "server.log")
    try:
        browser.get(server.url)
        wait_for(lambda: counter(browser, "mirrored steps") > 0, 60, "the first mirrored rows on the page")
        state = page_state(browser)
        for title in ("Live", "Scenario explorer", "Data and model"):
            assert title in state["text"], state["text"][:2000]
        for channel in ("cos_theta", "sin_theta", "theta_dot"):
            assert channel in state["text"]
        assert state["canvases"] >= 4  # three channels and the score: bokeh draws on canvases
        first = counter(browser, "mirrored steps")
        with feed.open("a") as f:  # the plant goes on: the page follows without a reload
            f.write(lines(samples[60:]))
        wait_for(lambda: counter(browser, "mirrored steps") > first + 50, 60, "the page's counter to climb")
        assert counter(browser, "rejected") == 0 and counter(browser, "committed") > 0
        shot(browser, tmp_path, "live")

        click_tab(browser, "Scenario explorer")
        wait_for(lambda: "push_plus" in page_state(browser)["text"] and "coverage90" in page_state(browser)["text"],
                 30, "the scenario explorer")
        text = page_state(browser)["text"]
        assert "P(fast)" in text and "ep0@t5" in text, text  # outcome probabilities; the start picker
        shot(browser, tmp_path, "scenarios")

        click_tab(browser, "Data and model")
        wait_for(lambda: "model card" in page_state(browser)["text"], 30, "the data and model view")
        text = page_state(browser)["text"]
        assert "kind ensemble" in " ".join(text.split()) and "rad/s" in text  # the model card, channel units
    finally:
        code = server.stop()
    assert code == 0, server.log.read_text()
    with TrajectoryStore.open(live_store) as store:  # SIGTERM committed the mirror's open segment
        assert store.num_steps >= 190


@pytest.mark.slow  # ~25 s on the shared CPU: the server and Chromium start
def test_dashboard_data_view_without_live(plant: dict[str, Path], browser: Any, tmp_path: Path) -> None:
    server = Server(["--store", str(plant["store"]), "--model", str(plant["model"])], tmp_path / "server.log")
    try:
        browser.get(server.url)
        wait_for(lambda: "model card" in page_state(browser)["text"], 60, "the page")
        state = page_state(browser)
        assert "Data and model" in state["text"] and "Live" not in state["text"].split("Data and model")[0]
        text = state["text"]
        assert "theta_dot" in text and "episodes: 4" in text and "fingerprint: " in text and "rad/s" in text
        assert "kind ensemble" in " ".join(text.split())
        assert state["canvases"] >= 3  # the coverage histograms
        shot(browser, tmp_path, "data")
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_bad_input_is_one_line_and_exit_1(plant: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "twin.dashboard", "--store", str(tmp_path / "nothing.zarr")],
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    missing = tmp_path / "nothing.zarr"
    assert run.returncode == 1 and run.stderr == (f"python -m twin.dashboard: error: --store {missing}: no such store; "
                                                  "expected a twinworld trajectory store\n")
    cases = [(["--store", str(plant["scenarios"])], "holds a twinworld scenario store; expected a twinworld"),
             (["--store", str(plant["store"]), "--scenarios", str(plant["store"])],
              "holds a twinworld trajectory store; expected a twinworld scenario store"),
             (["--store", str(plant["spec"])], "holds a file; expected a twinworld trajectory store"),
             (["--store", str(plant["dir"])], "holds a directory that is not a twinworld store"),
             (["--store", str(plant["store"]), "--live", "-"], "--live needs --model"),
             (["--store", str(tmp_path / "new.zarr"), "--live", "-", "--model", str(plant["model"]), "--spec",
               str(tmp_path / "missing.yaml")], "--live: ")]  # the mirror's own error, before anything is served
    for args, expected in cases:  # the same path in-process (each subprocess costs seconds of imports)
        assert run_cli(partial(main, args), "python -m twin.dashboard") == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


def test_only_loopback_binds_silently(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        assert check_host(host) == host
    assert capsys.readouterr().err == ""
    assert check_host("0.0.0.0") == "0.0.0.0"
    assert "warning: listening on 0.0.0.0, not loopback" in capsys.readouterr().err


def test_mirror_hands_each_row_with_the_prediction_made_for_it(plant: dict[str, Path]) -> None:
    """`LiveMirror.on_row`, the hook the Live view reads: every row, and the twin's prediction from a row earlier."""
    from data_pipeline.stream import Block
    from twin import AnomalyScorer, LiveMirror, Twin

    twin = Twin(str(plant["model"]))
    mirror = LiveMirror(twin, AnomalyScorer(twin.model, threshold=8.0))
    seen: list[tuple[int, np.ndarray, Any, Any, float]] = []
    mirror.on_row = lambda t, obs, mean, std, out: seen.append((t, obs.copy(), mean, std, float(out.score[0])))
    with TrajectoryStore.open(plant["store"]) as store:
        ep = store.read_episode(0)
    assert ep.obs is not None
    obs, n, time_ns = ep.obs, len(ep.obs), np.asarray(ep.time, np.int64)
    mirror.on_blocks([Block("a", time_ns[:10], obs[:10], ep.action[:10], ep.reward[:10], starts_piece=True),
                      Block("a", time_ns[10:], obs[10:], ep.action[10:], ep.reward[10:], ends_piece=True)])
    assert [t for t, *_ in seen] == time_ns.tolist() and len(seen) == n == mirror.stats.steps
    np.testing.assert_array_equal(np.stack([o for _, o, *_ in seen]), obs)
    assert seen[0][2] is None and np.isnan(seen[0][4])  # a piece's first row has no prediction, no score
    ref = Twin(str(plant["model"]))  # the prediction handed with row k is the one made at row k - 1
    mean, std = ref.track(obs[:5], ep.action[:5])
    np.testing.assert_allclose(seen[3][2][0], mean[2], rtol=1e-5)
    np.testing.assert_allclose(seen[3][3][0], std[2], rtol=1e-5)


def test_model_card_reads_lineage_evaluation_and_physics(plant: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from twin.dashboard.data import ModelCard, evaluation_table

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a run in files: seconds faster than a new SQLite db
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("fit"))
    client.log_param(run.info.run_id, "data.fingerprint", "abc123")
    for key, value in {"test_eval/nrmse/h5": 0.25, "test_eval/nrmse/h1": 0.1, "val_eval/coverage90/h5": 0.9,
                       "train/loss": 1.0}.items():
        client.log_metric(run.info.run_id, key, value)
    model = tmp_path / "model.pt"
    shutil.copy(plant["model"], model)
    (tmp_path / "mlflow_run_id").write_text(run.info.run_id)  # what train.py leaves beside the model

    class Hybrid:  # a hybrid model reports its identified physical parameters with describe()
        def describe(self) -> dict[str, float]:
            return {"g": 9.81}

    card = ModelCard.load(str(model), Hybrid())
    assert card.kind == "ensemble" and card.run_id == run.info.run_id
    assert card.params["data.fingerprint"] == "abc123"
    assert card.evaluation is not None  # one row per split and metric, one column per horizon
    assert card.evaluation.fillna(-1).to_dict("records") == [
        {"split": "test", "metric": "nrmse", "h1": 0.1, "h5": 0.25},
        {"split": "val", "metric": "coverage90", "h1": -1, "h5": 0.9}]
    per_channel = evaluation_table({"test_eval/nrmse/h5/theta_dot": 0.3})  # (beside nrmse/h5 only in SQLite stores)
    assert per_channel is not None and per_channel.to_dict("records") == [
        {"split": "test", "metric": "nrmse (theta_dot)", "h5": 0.3}]
    assert card.physics == {"g": 9.81}
    assert ModelCard.load(str(plant["model"])).run_id is None  # no lineage: the card says so, no error
