"""Live stream (issue 13, "one bad input never costs data"): a bad message of any kind is refused, counted
and named while the stream goes on and keeps every good sample; a far timestamp (a glitch, a clock jump)
does not make later samples "late"; SIGTERM / SIGINT exit 0 with everything committed while stdin is
still open; random bytes and random JSON never escape the decoder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import subprocess_env
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stream_helpers import PENDULUM_SPEC, committed_steps, pendulum_samples, stored_series, wait_for

from data_pipeline.info import validate_store
from data_pipeline.ingest import ChannelRanges, IngestSpec
from data_pipeline.store import TrajectoryStore
from data_pipeline.stream import StreamConfig, StreamDataError, StreamIngest, StreamStats, decode, open_or_create

GOOD = 40
"""Good samples per stream: 100.00 s to 101.95 s, 0.05 s apart, each with a seq."""


@cache
def good_samples() -> tuple[str, ...]:
    return tuple(json.dumps(s) for s in pendulum_samples(GOOD, seed=7))


@cache
def spec_file(root: str) -> str:
    path = Path(root) / "spec.yaml"
    path.write_text(yaml.safe_dump(PENDULUM_SPEC))
    return str(path)


def run_stream(tmp: Path, payloads: list[bytes | str], config: StreamConfig | None = None) -> StreamStats:
    """Feed `payloads` as messages 1, 2, … arriving 50 ms apart, polling as `run` does, then shut down."""
    spec_path = spec_file(str(tmp.parent))
    spec = IngestSpec.from_yaml(spec_path)
    out = str(tmp / "s.zarr")
    store = open_or_create(out, spec, spec_path, "test")
    try:
        ingest = StreamIngest(spec, store, "test", config or StreamConfig(reorder_window=0.2, commit_seconds=0))
        for i, payload in enumerate(payloads):
            ingest.feed(payload, arrival=i * 0.05)
            if i % 4 == 3:
                ingest.poll(i * 0.05)
        ingest.finish()
        return ingest.stats
    finally:
        store.close()


@cache
def clean_series(root: str) -> tuple[np.ndarray, np.ndarray]:
    """Time and obs the good samples alone give: what every stream with bad messages mixed in must store."""
    tmp = Path(root) / "clean"
    tmp.mkdir()
    stats = run_stream(tmp, list(good_samples()))
    assert stats.rejected == stats.late == stats.skewed == 0
    obs, _, time_ns, _ = stored_series(str(tmp / "s.zarr"))
    assert len(time_ns) == GOOD
    return time_ns, obs


def assert_keeps_every_good_sample(tmp: Path) -> None:
    time_ns, obs = clean_series(str(tmp.parent))
    got_obs, _, got_time, _ = stored_series(str(tmp / "s.zarr"))
    np.testing.assert_array_equal(got_time, time_ns)
    np.testing.assert_array_equal(got_obs, obs)
    assert validate_store(str(tmp / "s.zarr"))["status"] == "ok"


# ---------------------------------------------------------------------- one bad message of each kind
BAD_MESSAGES = [  # (name, payload, words the refusal must hold)
    ("invalid_utf8", b'{"t": 100.1, "theta_dot": 0.5, "name": "\xff\xfe"}', ["not UTF-8", "byte 0xff"]),
    ("time_1e300", '{"t": 1e300, "theta_dot": 0.5}', ["key 't' is 1e+300", "int64 nanoseconds"]),
    ("time_int64_overflow", '{"t": 9223372037, "theta_dot": 0.5}', ["key 't' is 9223372037", "int64"]),
    ("time_huge_int", '{"t": 1' + "0" * 400 + ', "theta_dot": 0.5}', ["key 't' is 1000", "int64 nanoseconds"]),
    ("time_inf", '{"t": Infinity, "theta_dot": 0.5}', ["key 't' is inf", "finite"]),
    ("time_nan", '{"t": NaN, "theta_dot": 0.5}', ["key 't' is nan", "finite"]),
    ("deep_nesting", "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    ("value_list", '{"t": 100.1, "theta_dot": [0.5]}', ["key 'theta_dot' is [0.5]", "expected a number"]),
    ("value_string", '{"t": 100.1, "theta_dot": "0.5"}', ["key 'theta_dot' is '0.5'", "expected a number"]),
    ("time_string", '{"t": "100.1", "theta_dot": 0.5}', ["key 't' is '100.1'", "expected a finite number"]),
    ("top_level_array", "[1, 2, 3]", ["is int", "expected a JSON object"]),
    ("value_beyond_float32", '{"t": 100.1, "reward": 1e300}', ["key 'reward' is 1e+300", "float32"]),
    ("value_huge_int", '{"t": 100.1, "reward": 1' + "0" * 400 + "}", ["key 'reward' is 1000", "float32"]),
    ("number_5000_digits", '{"t": 100.1, "reward": ' + "9" * 5000 + "}", ["too long to read"]),
    ("seq_object", '{"t": 100.1, "seq": {"a": 1}, "theta_dot": 0.5}', ["key 'seq' is {'a': 1}", "integer"]),
    ("huge_message", '{"t": 100.1, "pad": "' + "x" * (2 << 20) + '"}', ["larger than 1048576 bytes"]),
]


@pytest.mark.parametrize(("name", "payload", "words"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_one_bad_message_is_refused_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      name: str, payload: bytes | str, words: list[str]) -> None:
    good = list(good_samples())
    stats = run_stream(tmp_path, [*good[:20], payload, *good[20:]])  # the bad one is message 21
    assert stats.rejected == 1 and stats.late == 0 and stats.skewed == 0, stats
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("stream: rejected: ")]
    assert line.startswith(("stream: rejected: message 21: ", "stream: rejected: message 21 item 0: ")), line
    assert "expected" in line, line
    assert len(line) < 400, line  # a huge message is named, not printed
    for word in words:
        assert word in line, (word, line)
    assert_keeps_every_good_sample(tmp_path)


# ---------------------------------------------------------------------- far timestamps
def shifted(sample: dict, dt: float) -> str:
    """The sample `dt` seconds later, with a new sequence number."""
    return json.dumps({**sample, "t": round(sample["t"] + dt, 6), "seq": sample["seq"] + 1000})


@pytest.mark.parametrize("glitch_at", [0, 15], ids=["first_sample", "mid_stream"])
@pytest.mark.parametrize("offset", [3.0e6, -90.0, 30.0], ids=["far_future", "far_past", "thirty_s"])
def test_a_glitched_timestamp_does_not_make_later_samples_late(tmp_path: Path, glitch_at: int, offset: float) -> None:
    good = list(good_samples())
    glitch = json.loads(good[glitch_at])
    glitch.update(t=glitch["t"] + offset, seq=10_000)
    stats = run_stream(tmp_path, [*good[:glitch_at], json.dumps(glitch), *good[glitch_at:]])
    assert stats.late == 0 and stats.rejected == 0, stats
    assert stats.skewed == (0 if glitch_at == 0 else 1)  # a first-sample glitch is left behind by the jump back
    assert stats.jumps == (1 if glitch_at == 0 else 0)
    assert_keeps_every_good_sample(tmp_path)


@pytest.mark.parametrize("jump", [7200.0, -50.0], ids=["forward", "backward"])
def test_a_clock_jump_is_followed_and_nothing_is_lost(tmp_path: Path, jump: float) -> None:
    good = list(good_samples())
    after = [shifted(s, jump) for s in pendulum_samples(GOOD, seed=8)]
    stats = run_stream(tmp_path, [*good, *after])
    assert stats.late == stats.skewed == stats.rejected == 0 and stats.jumps == 1, stats
    _, _, time_ns, table = stored_series(str(tmp_path / "s.zarr"))
    assert len(table) == 2 and len(time_ns) == 2 * GOOD
    assert validate_store(str(tmp_path / "s.zarr"))["status"] == "ok"


# ---------------------------------------------------------------------- signals with stdin open
def _stream_cmd(spec: str, out: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline", "stream", "--source", "-", "--spec", spec, "--out", out,
            "--status-every", "0", "--reorder-window", "0.2", "--commit-interval", "0"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_stdin_still_open_exits_0_and_commits_everything(tmp_path: Path, sig: int) -> None:
    """The producer keeps the pipe open: a reader blocked in sys.stdin made the interpreter abort at exit."""
    out = str(tmp_path / "s.zarr")
    err = tmp_path / "stream.err"
    proc = subprocess.Popen(_stream_cmd(spec_file(str(tmp_path)), out), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err.open("w"), env=subprocess_env())
    try:
        assert proc.stdin is not None and proc.stdout is not None
        wait_for(lambda: "stream: reading stdin" in err.read_text() or proc.poll() is not None, 60.0, "start")
        lines = [s.encode() for s in good_samples()]
        proc.stdin.write(b"\n".join([*lines[:20], b'{"t": 101.0, "x": "\xff"}', *lines[20:]]) + b"\n")
        proc.stdin.flush()
        wait_for(lambda: "rejected: message 21" in err.read_text(), 60.0, "the messages to be read")
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=60)  # stdin stays open: never communicate(), which would close it
        stdout = proc.stdout.read().decode()
    finally:
        proc.kill()
    assert proc.returncode == 0, err.read_text()
    keys = dict(line.split(": ", 1) for line in stdout.splitlines())
    assert keys["committed_steps"] == str(GOOD) and keys["rejected"] == "1" and keys["skewed"] == "0", stdout
    assert committed_steps(out) == GOOD


def test_an_endless_line_on_stdin_is_refused_with_bounded_reading(tmp_path: Path) -> None:
    out = str(tmp_path / "s.zarr")
    good = good_samples()
    text = "\n".join([*good[:10], '{"t": 100.5, "pad": "' + "x" * (3 << 20) + '"}', *good[10:]]) + "\n"
    proc = subprocess.run(_stream_cmd(spec_file(str(tmp_path)), out), input=text.encode(), capture_output=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"rejected: message 11: larger than 1048576 bytes" in proc.stderr
    with TrajectoryStore.open(out) as store:
        assert store.num_steps == GOOD


# ---------------------------------------------------------------------- random input
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["t", "seq", "cos_theta", "sin_theta", "theta_dot", "torque", "reward"]) | st.text(max_size=4),
        inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=64) | JSON.map(json.dumps) | JSON.map(lambda v: json.dumps(v).encode()))
def test_decoder_returns_samples_or_refuses_whatever_it_gets(payload: bytes | str) -> None:
    spec = _spec()
    try:
        samples = decode(payload, spec, where="message 1", max_bytes=1 << 20)
    except StreamDataError as err:
        assert str(err).startswith("message 1") and "expected" in str(err)
        return
    for s in samples:
        assert -(2**63) < s.time_ns < 2**63 and s.values.shape == (5,) and np.isfinite(s.values).any()
        assert ChannelRanges.of(spec).first_violation(s.values[:, None]) is None


@cache
def _spec() -> IngestSpec:
    return IngestSpec.from_dict(PENDULUM_SPEC)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.tuples(st.integers(0, GOOD), st.binary(max_size=32) | JSON.map(json.dumps)),
                    min_size=1, max_size=4, unique_by=lambda b: b[0]))
def test_random_messages_between_good_ones_cost_no_good_sample(tmp_path_factory: pytest.TempPathFactory,
                                                                bad: list[tuple[int, bytes | str]]) -> None:
    lo, hi = json.loads(good_samples()[0])["t"], json.loads(good_samples()[-1])["t"]
    skew = StreamConfig(reorder_window=0.2).max_skew_s(_spec())
    for _, payload in bad:  # a random message that is itself a plausible sample would rightly be stored
        try:
            decoded = decode(payload, _spec())
        except StreamDataError:
            continue
        assume(len(decoded) < 3 and all(not lo - skew - 1 <= s.time_ns / 1e9 <= hi + skew + 1 for s in decoded))
    tmp = tmp_path_factory.mktemp("random")
    messages: list[bytes | str] = list(good_samples())
    for at, payload in sorted(bad, reverse=True):
        messages.insert(at, payload)
    stats = run_stream(tmp, messages)
    assert stats.late == 0, stats
    assert_keeps_every_good_sample(tmp)
