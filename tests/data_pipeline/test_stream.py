"""Streaming ingest: decoding, reordering, the CSV ingest's resampling rules, segment commits, and real
sources (a followed file, stdin, an MQTT broker) in subprocesses stopped by SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import subprocess_env
from stream_helpers import PENDULUM_SPEC, Publisher, committed_steps, pendulum_samples, stored_series, wait_for

from data_pipeline.ingest import IngestSpec, episodes_of, read_log
from data_pipeline.store import TrajectoryStore
from data_pipeline.stream import ReorderBuffer, Sample, StreamConfig, StreamDataError, StreamIngest, decode
from data_pipeline.validate import DataValidationError


def write_spec(tmp_path: Path, spec: dict = PENDULUM_SPEC) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def scramble(samples: list[dict], seed: int = 0, span: int = 4, duplicates: int = 10) -> list[dict]:
    """Out of order within blocks of `span` messages, plus `duplicates` repeated messages."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, len(samples), span):
        block = samples[i : i + span]
        out += [block[j] for j in rng.permutation(len(block))]
    for j in rng.choice(len(samples) - 1, duplicates, replace=False):
        out.insert(int(j) + 2, samples[int(j)])  # a repeat arriving a little later
    return out


def expected_rows(samples: list[dict], spec_path: str, tmp_path: Path):
    """What the CSV ingest makes of the same samples: the reference for the stream."""
    csv = tmp_path / "reference.csv"
    pd.DataFrame(sorted({s["seq"]: s for s in samples}.values(), key=lambda s: s["t"])).drop(columns="seq") \
        .to_csv(csv, index=False)
    spec = IngestSpec.from_yaml(spec_path)
    (ep,) = episodes_of(read_log(str(csv), "csv", spec), spec, spec.schema({}))
    return ep


# ---------------------------------------------------------------------- units
def test_decode_maps_columns_and_names_bad_keys(tmp_path: Path) -> None:
    spec = IngestSpec.from_yaml(write_spec(tmp_path))
    (s,) = decode(b'{"t": 1.5, "seq": 3, "cos_theta": 1.0, "torque": null}', spec)
    assert s.time_ns == 1_500_000_000 and s.seq == 3
    assert s.values[0] == 1.0 and np.isnan(s.values[1:]).all()
    assert len(decode('[{"t": 1, "theta_dot": 0.5}, {"t": 2, "theta_dot": 0.6}]', spec)) == 2
    with pytest.raises(StreamDataError, match="key 'theta_dot' is 9.0; expected a number in \\[-8.0, 8.0\\]"):
        decode('{"t": 1, "theta_dot": 9}', spec)
    with pytest.raises(StreamDataError, match="key 't' \\(timestamp.column\\) is missing"):
        decode('{"time": 1, "theta_dot": 0.1}', spec)
    with pytest.raises(StreamDataError, match="key 'torque' is 'high'; expected a number"):
        decode('{"t": 1, "torque": "high"}', spec)
    with pytest.raises(StreamDataError, match="not JSON"):
        decode("t=1", spec)


@pytest.mark.parametrize(("timestamp", "times"), [
    ({"column": "t", "unit": "s"}, [0.1, 0.30000000000000004, 1.0000000005, 2]),
    ({"column": "t", "unit": "ms"}, [100, 250, 1000, 2500]),
    ({"column": "t", "unit": "datetime", "format": "%d/%m/%Y %H:%M:%S.%f"},
     ["01/05/2024 12:00:00.100000", "01/05/2024 12:00:00.250000", "01/05/2024 12:00:01.000000",
      "01/05/2024 12:00:02.500000"]),
])
def test_stream_and_csv_ingest_read_time_and_ranges_alike(tmp_path: Path, timestamp: dict, times: list) -> None:
    """One home for the rules (data_pipeline.ingest.readings): the same timestamps give the same ns, and
    the same out-of-range reading is refused with the same expectation."""
    spec_dict = {"timestamp": timestamp, "dt": 0.05,
                 "observation": {"channels": [{"column": "x", "low": 0, "high": 1}]},
                 "action": {"type": "discrete", "n": 3, "start": 1, "channels": ["u"]}}
    spec = IngestSpec.from_yaml(write_spec(tmp_path, spec_dict))
    rows = [{"t": t, "x": 0.5, "u": 2} for t in times]
    csv = tmp_path / "log.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    from_csv = read_log(str(csv), "csv", spec).time_ns
    from_stream = [s.time_ns for r in rows for s in decode(json.dumps(r), spec)]
    assert from_stream == from_csv.tolist()
    for bad, expected in (({"x": 1.5}, "expected a number in [0.0, 1.0] (low/high of channel 'x')"),
                          ({"u": 4}, "expected an integer in [1, 3] (action.n/start of channel 'u')"),
                          ({"u": 1.5}, "expected an integer in [1, 3] (action.n/start of channel 'u')")):
        with pytest.raises(StreamDataError) as streamed:
            decode(json.dumps({**rows[0], **bad}), spec)
        pd.DataFrame([rows[0], {**rows[1], **bad}]).to_csv(csv, index=False)
        with pytest.raises(DataValidationError) as ingested:
            read_log(str(csv), "csv", spec)
        assert expected in str(streamed.value) and expected in str(ingested.value)


@pytest.mark.parametrize(("policy", "expected"), [("error", None), ("drop", []), ("fill", [-1.0, 0.5]),
                                                  ("interpolate", [np.nan, 0.5])])
def test_decode_applies_the_nan_policy(tmp_path: Path, policy: str, expected: list | None) -> None:
    """A written NaN follows nan_policy as in the CSV ingest; a live `interpolate` leaves it to the resampling."""
    spec_dict = {**PENDULUM_SPEC, "nan_policy": policy, **({"fill_value": -1.0} if policy == "fill" else {})}
    spec = IngestSpec.from_yaml(write_spec(tmp_path, spec_dict))
    message = '{"t": 1, "cos_theta": NaN, "sin_theta": 0.5}'
    if expected is None:
        with pytest.raises(StreamDataError, match="key 'cos_theta' is nan; expected a finite number"):
            decode(message, spec)
        return
    samples = decode(message, spec)
    assert [s.values[:2].tolist() for s in samples] == ([] if not expected else [pytest.approx(expected, nan_ok=True)])


def test_reorder_buffer_sorts_merges_and_flags() -> None:
    buf = ReorderBuffer(window=1.0)

    def sample(t: float, seq: int | None, value: float, k: int = 0) -> Sample:
        v = np.full(2, np.nan)
        v[k] = value
        return Sample(time_ns=round(t * 1e9), values=v, seq=seq, arrival=0.0)

    assert buf.push(sample(0.2, 2, 2.0)) == "ok"
    assert buf.push(sample(0.1, 1, 1.0)) == "ok"
    assert buf.push(sample(0.1, 1, 1.0)) == "duplicate"  # same seq
    assert buf.push(sample(0.1, None, 5.0, k=1)) == "ok"  # same instant, another channel: merged
    assert buf.push(sample(0.1, None, 5.0, k=1)) == "duplicate"  # same time and channels, no seq
    assert buf.pop_ready(now=0.5) == []  # still inside the window
    buf.push(sample(1.15, 3, 3.0))  # stream time moves on: 0.1 leaves (0.2 is still within 1 s of 1.15)
    (first,) = buf.pop_ready(now=0.5)
    assert first.time_ns == 100_000_000 and first.values.tolist() == [1.0, 5.0]
    assert buf.push(sample(0.05, 9, 0.5)) == "late"
    assert [s.time_ns for s in buf.pop_ready(now=2.0)] == [200_000_000, 1_150_000_000]  # waited 1 s


def test_stream_resamples_like_the_csv_ingest_with_gaps_and_multirate(tmp_path: Path) -> None:
    """Multi-rate sensors, a held command and a gap: the stream's rows equal the CSV ingest's episodes."""
    spec_dict = {"timestamp": {"column": "t", "unit": "s"}, "dt": 0.1, "max_gap": 0.35,
                 "observation": {"channels": ["a", "b"]}, "action": {"channels": ["u"], "resample": "hold",
                                                                    "max_gap": 1.0}}
    spec_path = write_spec(tmp_path, spec_dict)
    rng = np.random.default_rng(1)
    rows = []
    for t in np.arange(0.0, 6.0, 0.03):
        if 2.5 < t < 3.2:  # every sensor silent: a gap
            continue
        r = {"t": round(float(t), 4), "a": float(np.sin(t)) + 0.01 * float(rng.normal())}
        if round(t / 0.03) % 3 == 0:
            r["b"] = float(np.cos(2 * t))  # a slower sensor
        if round(t / 0.03) % 5 == 0:
            r["u"] = float(rng.uniform(-1, 1))  # a command, held
        rows.append(r)
    # Every channel reports last: a held command's value is final once stream time passes a grid instant,
    # so at the very end of a stream the CSV ingest (which stops at the command's last reading) may have
    # fewer rows (docs/live-twin.md).
    rows.append({"t": 6.0, "a": float(np.sin(6.0)), "b": float(np.cos(12.0)), "u": 0.5})
    csv = tmp_path / "log.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    spec = IngestSpec.from_yaml(spec_path)
    reference = episodes_of(read_log(str(csv), "csv", spec), spec, spec.schema({}))
    assert len(reference) == 2  # the gap split the log

    store = TrajectoryStore.create(tmp_path / "s.zarr", spec.schema({}))
    ingest = StreamIngest(spec, store, "test", StreamConfig(reorder_window=0.2, commit_seconds=0))
    blocks = []
    for r in scramble([{**r, "seq": i} for i, r in enumerate(rows)], span=3, duplicates=5):
        ingest.feed(json.dumps(r), arrival=0.0)
        blocks += ingest.poll(now=0.0)
    blocks += ingest.finish()
    store.close()
    assert ingest.stats.duplicates == 5 and ingest.stats.late == 0
    assert sum(b.starts_piece for b in blocks) == 2 and sum(b.ends_piece for b in blocks) == 2
    stored = TrajectoryStore.open(tmp_path / "s.zarr")
    assert stored.num_episodes == 2
    for ref, ep in zip(reference, stored.iter_episodes(), strict=True):
        np.testing.assert_array_equal(ep.time, ref.time)
        np.testing.assert_allclose(ep.obs, ref.obs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ep.action, ref.action)


def test_segments_commit_by_rows_and_keep_every_transition(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    spec = IngestSpec.from_yaml(spec_path)
    samples = pendulum_samples(90)
    store = TrajectoryStore.create(tmp_path / "s.zarr", spec.schema({}))
    ingest = StreamIngest(spec, store, "plc", StreamConfig(reorder_window=0.1, commit_seconds=0, commit_rows=25))
    for s in samples:
        ingest.feed(json.dumps(s), arrival=0.0)
    ingest.poll(now=0.0)
    assert ingest.stats.committed_episodes >= 2  # committed while the stream runs, not only at the end
    ingest.finish()
    store.close()
    obs, action, time_ns, table = stored_series(str(tmp_path / "s.zarr"))
    ref = expected_rows(samples, spec_path, tmp_path)
    np.testing.assert_array_equal(time_ns, ref.time)
    np.testing.assert_allclose(obs, ref.obs, atol=1e-6)
    np.testing.assert_allclose(action[:-1], ref.action[:-1], atol=1e-6)
    assert (table["length"][:-1] == 25).all()
    assert ingest.stats.committed_steps == len(ref.time)  # the rows shared by two segments count once
    assert table["id"].str.startswith("plc@").all() and table["id"].is_unique


# ---------------------------------------------------------------------- processes
def _stream_cmd(source: str, spec: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline", "stream", "--source", source, "--spec", spec, "--out", out,
            "--status-every", "0", *extra]


def test_stdin_stream_cli_ends_at_eof(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    samples = pendulum_samples(60)
    lines = "".join(json.dumps(s) + "\n" for s in scramble(samples, duplicates=3)) + "not json\n"
    out = str(tmp_path / "s.zarr")
    run = subprocess.run(_stream_cmd("-", spec, out), input=lines, capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    keys = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert keys["store"] == out and keys["duplicates"] == "3" and keys["rejected"] == "1"
    assert "rejected: message 64: not JSON" in run.stderr
    obs, _, _, _ = stored_series(out)
    np.testing.assert_allclose(obs, expected_rows(samples, spec, tmp_path).obs, atol=1e-6)


def test_followed_file_commits_on_sigterm(tmp_path: Path) -> None:
    """`file:` follows a growing file; SIGTERM commits what is complete and exits 0."""
    spec = write_spec(tmp_path)
    samples = pendulum_samples(80)
    log = tmp_path / "plant.jsonl"
    log.write_text("")
    out = str(tmp_path / "s.zarr")
    err = tmp_path / "stream.err"
    proc = subprocess.Popen(_stream_cmd(f"file:{log}", spec, out, "--reorder-window", "0.2",
                                        "--commit-interval", "0"),
                            stdout=subprocess.PIPE, stderr=err.open("w"), text=True, env=subprocess_env())
    try:
        wait_for(lambda: "stream: reading file:" in err.read_text() or proc.poll() is not None, 60.0, "start")
        text = "".join(json.dumps(s) + "\n" for s in samples)
        with log.open("a") as f:
            for part in (text[:1000], text[1000:5003], text[5003:]):  # cut mid-line: a partial line waits
                f.write(part)
                f.flush()
                time.sleep(0.3)
        time.sleep(1.0)
        assert committed_steps(out) == 0  # nothing is committed before the signal (no interval, no row limit)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stderr = err.read_text()
    assert proc.returncode == 0, stderr
    assert "committed_steps: 80" in stdout
    obs, _, _, table = stored_series(out)
    assert len(table) == 1
    np.testing.assert_allclose(obs, expected_rows(samples, spec, tmp_path).obs, atol=1e-6)


# ---------------------------------------------------------------------- MQTT
def _start_mqtt_stream(tmp_path: Path, port: int, spec: str, out: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "stream.err"
    proc = subprocess.Popen(_stream_cmd(f"mqtt://127.0.0.1:{port}/plant/pendulum", spec, out, *extra),
                            stdout=subprocess.PIPE, stderr=err.open("w"), text=True, env=subprocess_env())
    wait_for(lambda: "subscribed to" in err.read_text() or proc.poll() is not None, 60.0, "the subscription")
    assert proc.poll() is None, err.read_text()
    return proc, err


def test_mqtt_stream_stores_every_step_once_in_order(tmp_path: Path, mqtt_broker: int) -> None:
    """Jittered, out-of-order and duplicated messages: every grid step is committed once, in order."""
    spec = write_spec(tmp_path)
    samples = pendulum_samples(120, seed=3, jitter=0.2)
    out = str(tmp_path / "live.zarr")
    proc, err = _start_mqtt_stream(tmp_path, mqtt_broker, spec, out, "--reorder-window", "0.5",
                                   "--commit-interval", "0.5", "--commit-rows", "40")
    pub = Publisher(mqtt_broker)
    try:
        pub.send("plant/pendulum", scramble(samples, seed=1, duplicates=12))
        ref = expected_rows(samples, spec, tmp_path)
        wait_for(lambda: committed_steps(out) >= len(ref.time) - 15, 60.0, "segments to be committed")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        pub.close()
        proc.kill()
    assert proc.returncode == 0, err.read_text()
    keys = dict(line.split(": ", 1) for line in stdout.splitlines())
    assert keys["duplicates"] == "12" and keys["late"] == "0"
    obs, action, time_ns, table = stored_series(out)
    assert len(table) >= 2  # committed as segments while streaming
    np.testing.assert_array_equal(time_ns, ref.time)  # every step once, in order
    assert (np.diff(time_ns) == 50_000_000).all()
    np.testing.assert_allclose(obs, ref.obs, atol=1e-6)
    np.testing.assert_allclose(action[:-1], ref.action[:-1], atol=1e-6)


def test_sigkill_loses_nothing_committed(tmp_path: Path, mqtt_broker: int) -> None:
    spec = write_spec(tmp_path)
    samples = pendulum_samples(200, seed=4)
    out = str(tmp_path / "live.zarr")
    proc, err = _start_mqtt_stream(tmp_path, mqtt_broker, spec, out, "--reorder-window", "0.2",
                                   "--commit-interval", "0", "--commit-rows", "20")
    pub = Publisher(mqtt_broker)
    try:
        pub.send("plant/pendulum", samples[:120], pause=0.002)
        wait_for(lambda: committed_steps(out) >= 60, 60.0, "three committed segments")
        with TrajectoryStore.open(out) as store:  # what a reader saw committed just before the crash
            before = [store.read_episode(i) for i in range(store.num_episodes)]
        pub.send("plant/pendulum", samples[120:], pause=0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        pub.close()
        proc.kill()
    with TrajectoryStore.open(out, mode="a") as store:  # recovery truncates the uncommitted tail
        after = [store.read_episode(i) for i in range(store.num_episodes)]
    assert len(after) >= len(before)
    for a, b in zip(before, after, strict=False):
        assert a.episode_id == b.episode_id
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.time, b.time)
        np.testing.assert_array_equal(a.action, b.action)
