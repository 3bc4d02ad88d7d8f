"""twin/mcp: the MCP server driven by the SDK's own client over stdio, as an agent would drive it.

One agent session (a server subprocess, `python -m twin.mcp`) calls every tool once with good arguments
and several times with bad ones; the tests check its answers. The session's calls and answers are the
transcript of docs/agents.md:

    TWINWORLD_TRANSCRIPT=docs/agents.md pytest tests/twin/test_mcp.py -k transcript
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from stream_helpers import PENDULUM_SPEC, free_port, pendulum_samples, wait_for

REPO = Path(__file__).resolve().parents[2]

SPEC: dict[str, Any] = {
    "horizon": 10, "samples": 16, "seed": 3, "context": 4,
    "starts": [{"episode": 0, "t": 5}, {"episode": 2, "t": 12}],
    "interventions": {"factual": {}, "push": {"constant": {"torque": 2.0}}},
    "outcomes": {"fast": "abs(theta_dot) > 4"},
    "summary": {"channels": ["theta_dot"], "times": [5, 10]},
}


def child_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return env


@dataclass
class Twin:
    tmp: Path
    store: str
    model: str
    policy: str
    live: Path
    live_spec: Path


@pytest.fixture(scope="module")
def twin_files(tmp_path_factory: pytest.TempPathFactory) -> Twin:
    """A tiny ensemble fitted to 6 random-action Pendulum-v1 episodes of 40 steps, and an (untrained) SAC
    policy saved as safe policy files (seeded)."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    from data_pipeline.record import record
    from data_pipeline.store import TrajectoryStore
    from data_pipeline.windows import normalization_for
    from data_pipeline.windows.fixed import eval_windows
    from policies.files import save_sb3
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    tmp = tmp_path_factory.mktemp("mcp")
    store_path = str(tmp / "pendulum.zarr")
    record("Pendulum-v1", 6, store_path, max_episode_steps=40, progress=False)
    store = TrajectoryStore.open(store_path)
    torch.manual_seed(0)
    every = np.arange(store.num_episodes)  # not a split: episode ids (and so splits) are new each recording
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema, normalization_for(store, every))
    windows = eval_windows(store, every, 16, 1000)
    assert windows is not None
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        loss, _ = model.loss(windows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    agent = SAC("MlpPolicy", gym.make("Pendulum-v1"), policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    policy = str(save_sb3(agent, tmp / "policy.zip"))
    live, live_spec = tmp / "plant.jsonl", tmp / "plant.yaml"  # the plant's stream: JSON lines in a file
    live.write_text("".join(json.dumps(s) + "\n" for s in pendulum_samples(60, seed=7)))
    live_spec.write_text(yaml.safe_dump(PENDULUM_SPEC))
    return Twin(tmp, store_path, model.save(str(tmp / "model.pt")), policy, live, live_spec)


# ---------------------------------------------------------------------------------- the agent session
@dataclass
class Call:
    tool: str
    arguments: dict[str, Any]
    error: bool
    text: str
    data: Any = None


@dataclass
class Session:
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def answer(self, tool: str, index: int = 0) -> Call:
        return [c for c in self.calls if c.tool == tool][index]


BAD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("simulate", {"spec": {**SPEC, "horizon": "5"}}),
    ("simulate", {"spec": {**SPEC, "interventions": {"x": {"constant": {"thrust": 1.0}}}}}),
    ("simulate", {"spec": {**SPEC, "interventions": {"hook": {"policy": "os:system"}}}}),
    ("simulate", {"spec": {**SPEC, "starts": [{"history": "/etc/passwd.npz"}]}}),
    ("simulate", {"spec": {**SPEC, "samples": 100_000}}),
    ("simulate", {"spec": {**SPEC, "horizon": 200, "samples": 256}}),
    ("compare_interventions", {"interventions": {"push": {"constant": {"torque": 2}}}, "outcome": "speed > 3"}),
    ("compare_interventions", {"interventions": {"push": {"constant": {"torque": 2}}}, "outcome": "theta_dot >> 3"}),
    ("recommend_intervention", {"episode": 99}),
    ("recommend_intervention", {"horizon": 0}),
]


async def agent_session(twin: Twin, out: Path, errlog: Path) -> Session:
    """What an agent does: list the tools, read the cards, call every tool, then make mistakes."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable, cwd=str(REPO), env=child_env(twin.tmp),
        args=["-m", "twin.mcp", "--model", twin.model, "--store", twin.store, "--policy", twin.policy,
              "--out", str(out), "--threads", "1", "--live", f"file:{twin.live}", "--live-spec", str(twin.live_spec)])
    session = Session()
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            session.tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
            for res in (await client.list_resources()).resources:
                content = (await client.read_resource(str(res.uri))).contents[0]
                session.resources[str(res.uri)] = getattr(content, "text", "")

            async def call(tool: str, arguments: dict[str, Any]) -> None:
                result = await client.call_tool(tool, arguments)
                text = "".join(getattr(c, "text", "") for c in result.content)
                session.calls.append(Call(tool, arguments, result.is_error, text, result.structured_content))

            await call("describe_twin", {})
            await call("simulate", {"spec": SPEC})
            await call("compare_interventions", {
                "interventions": {"push": {"constant": {"torque": 2.0}}, "brake": {"constant": {"torque": -2.0}},
                                  "half": {"scale": {"torque": 0.5}}},
                "outcome": "abs(theta_dot) > 5", "episode": 2, "t": 12, "horizon": 15, "samples": 32})
            await call("recommend_intervention", {"episode": 2, "t": 12, "horizon": 15, "samples": 8,
                                                  "avoid": "abs(theta_dot) > 5", "method": "cem"})
            await call("recommend_intervention", {"episode": 2, "t": 12, "horizon": 15, "samples": 8})
            for _ in range(60):  # the live mirror commits about every second
                result = await client.call_tool("current_state", {})
                if not result.is_error:
                    break
                await anyio.sleep(0.5)
            await call("current_state", {})
            for tool, arguments in BAD_CALLS:
                await call(tool, arguments)
            await call("describe_twin", {})  # the server is still up after every error
    return session


@pytest.fixture(scope="module")
def session(twin_files: Twin) -> Session:
    out = twin_files.tmp / "mcp-out"
    return anyio.run(agent_session, twin_files, out, twin_files.tmp / "server.log")


# ---------------------------------------------------------------------------------- tests
def test_every_tool_and_resource_is_offered_with_a_typed_schema(session: Session) -> None:
    assert set(session.tools) == {"describe_twin", "current_state", "simulate", "compare_interventions",
                                  "recommend_intervention"}
    schema = session.tools["recommend_intervention"]["properties"]
    assert schema["horizon"]["minimum"] == 1 and "description" in schema["avoid"]
    assert schema["method"]["enum"] == ["auto", "policy", "cem"]
    assert set(session.resources) == {"twin://data-card", "twin://model-card"}
    assert json.loads(session.resources["twin://data-card"])["episodes"] == 6
    assert json.loads(session.resources["twin://model-card"])["model_kind"] == "ensemble"


def test_describe_twin(session: Session) -> None:
    d = session.answer("describe_twin")
    assert not d.error
    obs = {c["name"]: c for c in d.data["observations"]}
    assert obs["theta_dot"]["unit"] == "rad/s" and obs["theta_dot"]["high"] == 8.0
    assert d.data["actions"][0]["name"] == "torque" and d.data["dt"] == pytest.approx(0.05)
    assert d.data["limits"]["max_samples"] == 256 and d.data["advice_only"] is True
    assert d.data["store"]["episodes"] == 6 and d.data["policy"].endswith("policy.zip")


def test_current_state_follows_the_live_source(session: Session, twin_files: Twin) -> None:
    s = session.answer("current_state")
    assert not s.error, s.text
    assert s.data["source"] == f"live file:{twin_files.live}"
    sent = {round(x["theta_dot"], 5): x for x in pendulum_samples(60, seed=7)}
    row = sent[round(s.data["observation"]["theta_dot"], 5)]  # a row the plant sent, on its time
    assert s.data["observation"]["cos_theta"] == pytest.approx(row["cos_theta"], abs=1e-6)
    assert s.data["time"].startswith(str(np.datetime64(int(round(row["t"] * 1e9)), "ns"))[:19])
    assert all(b["std"] > 0 for b in s.data["belief"]) and np.isfinite(s.data["anomaly"]["score"])
    assert (twin_files.tmp / "mcp-out" / "live.zarr").is_dir()  # mirrored into the server's own folder


def test_current_state_of_the_store(twin_files: Twin) -> None:
    """Without --live: the last committed row of the store, the belief about the next and its anomaly score."""
    import worldmodel
    from data_pipeline.store import TrajectoryStore
    from twin.anomaly import AnomalyConfig
    from twin.mcp.state import latest_state

    store = TrajectoryStore.open(twin_files.store)
    s = latest_state(worldmodel.load(twin_files.model), store, AnomalyConfig(window=4), 1e9, "store")
    last = store.read_rows("obs", store.num_steps - 1, store.num_steps)[0]
    assert list(s.observation.values()) == pytest.approx(last.tolist())
    assert s.row == 40 and s.anomaly.scored_rows == 41 and s.anomaly.window == 4 and not s.anomaly.alert
    assert all(b.std is not None and b.std > 0 for b in s.belief) and s.anomaly.score is not None


def test_simulate_matches_generate_py(session: Session, twin_files: Twin) -> None:
    """The same spec and seed through generate.py's command line gives the same quantiles."""
    import generate

    answer = session.answer("simulate")
    assert not answer.error, answer.text
    spec = twin_files.tmp / "spec.yaml"
    spec.write_text(json.dumps(SPEC))  # JSON is YAML
    out = twin_files.tmp / "cli.zarr"
    generate.main(["--config", str(spec), "--model", twin_files.model, "--store", twin_files.store, "--out", str(out),
                   "--no-mlflow", "--no-progress", "--threads", "1"])  # the command line, in this process
    table = pd.read_csv(twin_files.tmp / "cli.summary.csv").set_index("scenario")
    assert [s["scenario"] for s in answer.data["scenarios"]] == list(table.index)
    for s in answer.data["scenarios"]:
        for col, value in s["quantiles"].items():
            assert value == pytest.approx(table.loc[s["scenario"], col], rel=1e-5, abs=1e-6), col
        assert s["outcomes"]["fast"] == pytest.approx(table.loc[s["scenario"], "P(fast)"])
    charts = answer.data["fan_charts"]
    assert len(charts) == 2 and all(Path(c).is_file() and c.startswith(str(twin_files.tmp / "mcp-out"))
                                    for c in charts)
    assert answer.data["calibration"][0]["horizon"] == 1


def test_compare_ranks_by_the_outcome_with_uncertainty(session: Session) -> None:
    c = session.answer("compare_interventions")
    assert not c.error, c.text
    ranking = c.data["ranking"]
    assert len(ranking) == 4  # 3 candidates + the factual replay
    assert ranking[0]["intervention"] == "brake" and ranking[0]["difference_to_factual"] < 0  # braking slows it
    probs = [r["probability"] for r in ranking]
    assert probs == sorted(probs) and [r["rank"] for r in ranking] == [1, 2, 3, 4]
    for r in ranking:
        lo, hi = r["interval90"]
        assert lo <= r["probability"] <= hi and r["std_error"] >= 0
    assert next(r for r in ranking if r["intervention"] == "factual")["difference_to_factual"] == 0


def test_recommend_plans_in_the_model_and_with_the_policy(session: Session) -> None:
    cem = session.answer("recommend_intervention", 0)
    assert not cem.error, cem.text
    assert cem.data["method"] == "cem" and len(cem.data["plan"]) == 15
    assert all(-2.0 <= a[0] <= 2.0 for a in cem.data["plan"])  # inside the actuator's range
    assert cem.data["plans_evaluated"] == 32 * 3 + 2 and cem.data["advice_only"] is True
    p, b = cem.data["predicted"], cem.data["baseline"]
    assert p["p_avoid"] < b["p_avoid"]  # the recorded actions speed the pendulum up; the plan brakes
    policy = session.answer("recommend_intervention", 1)
    assert not policy.error, policy.text
    assert policy.data["method"] == "policy" and len(policy.data["plan"]) == 15


@pytest.mark.parametrize(("index", "expected"), [
    (0, "key 'horizon' is '5'"),
    (1, "unknown actuator channel"),
    (2, "runs no other policy files or hooks"),
    (3, "history files are not read"),
    (4, "samples 100000 is over the server's cap of 256"),
    (5, "over the server's cap of 200000 per call"),
    (6, "unknown channel"),
    (7, "condition 'theta_dot >> 3'"),
    (8, "episode"),
    (9, "horizon"),
])
def test_bad_arguments_are_clear_tool_errors(session: Session, index: int, expected: str) -> None:
    tool, arguments = BAD_CALLS[index]
    call = [c for c in session.calls if c.tool == tool and c.arguments == arguments][0]
    assert call.error and expected in call.text, call.text
    assert "Traceback" not in call.text
    assert not session.calls[-1].error  # the server answered again afterwards


def test_nothing_is_written_outside_the_output_folder(session: Session, twin_files: Twin) -> None:
    from data_pipeline.store import TrajectoryStore

    out = twin_files.tmp / "mcp-out"
    assert (out / ".twinworld-mcp").exists()
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # (and the mirror's lock file)
    assert visible == ["0000-simulate", "0001-simulate", "live.zarr"]
    assert TrajectoryStore.open(twin_files.store).num_episodes == 6  # the source is only read


def test_calibration_sets_the_alarm_and_hooks_are_refused(twin_files: Twin, tmp_path: Path) -> None:
    """--calibration brings the threshold and score window; --policy takes safe policy files only."""
    from twin.anomaly import Calibration
    from twin.mcp.tools import ToolInputError, TwinConfig, TwinTools

    calibration = Calibration(threshold=-1e9, false_alarm_rate=0.01, config={"window": 2}).save(tmp_path / "cal.json")
    tools = TwinTools(TwinConfig(model=twin_files.model, store=twin_files.store, out=tmp_path / "out",
                                 calibration=str(calibration)))
    anomaly = tools.current_state().anomaly
    assert anomaly.threshold == -1e9 and anomaly.window == 2 and anomaly.alert  # every score is over it
    assert tools.describe().calibration["threshold"] == -1e9  # type: ignore[index]
    with pytest.raises(ToolInputError, match="runs no module:function hooks"):
        TwinTools(TwinConfig(model=twin_files.model, store=twin_files.store, out=tmp_path / "out2",
                             policy="os:system"))


def test_a_users_folder_is_never_written_into(tmp_path: Path) -> None:
    from twin.mcp.tools import ToolInputError, prepare_out

    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ToolInputError, match="is not an output folder of twin.mcp"):
        prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    fresh = prepare_out(tmp_path / "new")
    assert prepare_out(fresh) == fresh  # its own folder again: fine


@pytest.mark.slow
def test_a_users_folder_or_unsafe_policy_is_refused_at_start(twin_files: Twin) -> None:
    user = twin_files.tmp / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for extra, expected in [(["--out", str(user)], "is not an output folder of twin.mcp"),
                            (["--policy", "os:system"], "runs no module:function hooks")]:
        proc = subprocess.run([sys.executable, "-m", "twin.mcp", "--model", twin_files.model, "--store",
                               twin_files.store, *extra], cwd=REPO, env=child_env(twin_files.tmp),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_streamable_http_on_loopback(twin_files: Twin) -> None:
    """`--http`: the same tools over streamable HTTP, bound to 127.0.0.1 only."""
    import socket

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "twin.mcp", "--model", twin_files.model, "--store",
                             twin_files.store, "--out", str(twin_files.tmp / "http-out"), "--http", "--port",
                             str(port), "--threads", "1"], cwd=REPO, env=child_env(twin_files.tmp),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    async def ask() -> tuple[bool, Any]:
        async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            result = await client.call_tool("describe_twin", {})
            return result.is_error, result.structured_content

    try:
        wait_for(listening, timeout=120, what="the MCP server's HTTP port")
        error, data = anyio.run(ask)
        assert not error and data["model_kind"] == "ensemble"
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in out.splitlines()] == [f"127.0.0.1:{port}"]  # the local address
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_timeout_and_one_call_at_a_time() -> None:
    import time

    from twin.mcp.limits import LimitError, Limits, Runner

    runner = Runner(Limits(timeout_s=0.2))

    async def calls() -> tuple[str, str]:
        with pytest.raises(LimitError) as slow:
            await runner.run(lambda: time.sleep(1.0))
        with pytest.raises(LimitError) as busy:  # the abandoned computation still runs
            await runner.run(lambda: 1)
        await anyio.sleep(1.0)
        assert await runner.run(lambda: 2) == 2
        return str(slow.value), str(busy.value)

    slow, busy = anyio.run(calls)
    assert "ran past the server's timeout of 0.2 s" in slow and "still finishing" in busy


# ---------------------------------------------------------------------------------- transcript
def test_transcript(session: Session, twin_files: Twin) -> None:
    """The session as markdown; written to docs/agents.md when TWINWORLD_TRANSCRIPT names it."""
    text = transcript(session, twin_files)
    for tool in session.tools:
        assert f"`{tool}`" in text
    target = os.environ.get("TWINWORLD_TRANSCRIPT")
    if target:
        Path(target).write_text(text)


def compact(value: Any, indent: str = "", width: int = 110) -> str:
    """JSON with numbers to 4 significant digits, each object or list on one line where it fits."""
    if isinstance(value, float):
        return json.dumps(float(f"{value:.4g}"))
    if isinstance(value, dict | list):
        items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        inner = indent + "  "
        parts = [(f"{json.dumps(k)}: " if k is not None else "") + compact(v, inner, width) for k, v in items]
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
        flat = opening + ", ".join(parts) + closing
        if len(indent) + len(flat) <= width and "\n" not in flat:
            return flat
        return opening + "\n" + ",\n".join(inner + p for p in parts) + "\n" + indent + closing
    return json.dumps(value)


def transcript(session: Session, twin: Twin) -> str:
    tmp = str(twin.tmp)

    def show(value: Any, limit: int = 3500) -> str:
        text = compact(value).replace(tmp, "$WORK")
        return text if len(text) <= limit else text[:limit] + "\n… (cut here; the full answer is longer)"

    lines = [textwrap.dedent("""\
        # An agent session with the twin (MCP)

        `python -m twin.mcp` serves the twin to AI agents over the Model Context Protocol (the official `mcp`
        SDK): five tools and two resources (the data card and the model card). Start it for an agent (Claude
        Desktop, an IDE, any MCP client) with one command:

            python -m twin.mcp --model MODEL --store STORE [--policy POLICY.zip] [--calibration CAL.json] \\
                [--live mqtt://HOST:PORT/TOPIC --live-spec SPEC.yaml] [--out DIR]

        It speaks stdio by default; `--http --port 8765` serves streamable HTTP on 127.0.0.1 only.

        - **Advice only.** No tool writes to the plant or publishes to the source; `--live` only reads the
          stream (mirrored into `DIR/live.zarr`). Scenario stores and fan charts go into new call folders
          under `--out` (a new folder, or one the server made before; never a user's folder).
        - **Bounded.** Each call is capped in samples (`--max-samples`, 256), horizon (`--max-horizon`, 200),
          scenarios (`--max-scenarios`, 32) and imagined steps (`--max-steps`, 200000), and ends after
          `--timeout` seconds (60) with a tool error. One computation runs at a time.
        - **Validated.** `simulate` takes a scenario spec as JSON with generate.py's schema and validation
          (docs/scenarios.md) and gives the same numbers as `generate.py` for the same spec and seed; history
          files and policies other than `random` and the server's `--policy` are refused (nothing an agent
          sends is run as code). Every mistake comes back as a tool error with one clear message, and the
          server carries on.

        ## The session

        Written by `TWINWORLD_TRANSCRIPT=docs/agents.md pytest tests/twin/test_mcp.py -k transcript`: the SDK's
        own client (`stdio_client`, `ClientSession`) starts the server with a tiny ensemble fitted to six
        random-action Pendulum-v1 episodes, an untrained SAC policy and a live stream from a file, and makes
        the calls below. The numbers show the shape of the answers, not a good model; they are shown to 4
        significant digits, and `$WORK` is the test's temporary folder.
        """), "### Tools offered", ""]
    lines += [f"- `{name}`: arguments {', '.join(schema.get('properties', {})) or '(none)'}"
              for name, schema in session.tools.items()]
    lines += ["", "### Resources", ""]
    for uri, text in session.resources.items():
        lines += [f"`{uri}`", "", "```json", show(json.loads(text), 1500), "```", ""]
    lines += ["### Calls", ""]
    for i, c in enumerate(session.calls, 1):
        lines += [f"#### {i}. `{c.tool}`{' (refused)' if c.error else ''}", "", "```json", show(c.arguments), "```",
                  "", "tool error:" if c.error else "answer:", ""]
        if c.error:
            lines += ["```text", c.text.replace(tmp, "$WORK"), "```", ""]
        else:
            lines += ["```json", show(c.data), "```", ""]
    return "\n".join(lines)
