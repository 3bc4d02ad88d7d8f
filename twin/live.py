"""The live twin: a world model kept in sync with a running system, scoring how surprising each step is.

    python -m envs.live --model model.pt --spec spec.yaml --source mqtt://127.0.0.1:1883/plant/pendulum \
        --store live.zarr --calibration calibration.json --alert-topic plant/alerts

It mirrors the source into the store (`data_pipeline.stream`), feeds every new step to a `Twin`,
scores the step's surprise under the twin's one-step prediction (`worldmodel.anomaly`), writes the
scores beside the store (`live.anomaly.zarr`), logs them to MLflow and prints (or publishes) alerts.
From Python:

    twin = Twin(model)                                  # batch=B mirrors B systems side by side
    twin.observe(obs, action_before)                    # each new step (the action taken before obs)
    pred = twin.predict(action)                         # the next observation under the action taken now
    env.reset(options={"history": twin.history()})      # hand the twin's state to WorldModel-v0
    twin.save_history("now.npz")                        # ... or to generate.py ({history: now.npz})

See docs/live-twin.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from data_pipeline.schema import DISCRETE_FILL
from data_pipeline.store.codecs import compressors, consolidate
from data_pipeline.store.files import atomic_write
from data_pipeline.store.lock import acquire_writer_lock, release_writer_lock
from data_pipeline.store.paths import is_url
from worldmodel.anomaly import AnomalyConfig, AnomalyScorer, Calibration, ScoreStep, pool
from worldmodel.interface import Prediction, WorldModel, repeat_state


class Twin:
    """A world model's belief about B running systems, updated one real step at a time.

    `observe(obs, action_before)` assimilates the newest observation (the action is the one taken
    *before* it, as in `WorldModel.observe`); `predict(action)` is the one-step prediction of the next
    observation under the action taken now, pooled over `particles` belief copies. Feeding an
    episode step by step gives the same predictions as `WorldModel.observe` over the whole history.
    The last `history` rows are kept for `history()` / `save_history()`.
    """

    def __init__(self, model: WorldModel | str, batch: int = 1, history: int = 256, particles: int = 1,
                 device: str | None = None, seed: int = 0) -> None:
        from envs.loading import load_model

        if batch < 1 or history < 2 or particles < 1:
            raise ValueError(f"Twin: batch={batch}, history={history}, particles={particles}; expected "
                             "batch ≥ 1, history ≥ 2, particles ≥ 1")
        self.model = load_model(model, device)
        self.batch, self.particles, self.capacity = batch, particles, history
        self.obs_dim = self.model.obs_dim
        self.discrete = self.model.discrete
        self.action_shape: tuple[int, ...] = () if self.discrete else (self.model.schema.action_dim,)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = self.model.initial_state(batch * particles)
        self._fresh = np.ones(batch, bool)  # the next observe starts a new belief
        self.steps = 0
        # History rows live in buffers of twice the capacity: rows are appended at `_end` and, when the
        # buffer is full, the newest `history - 1` rows move to the front (amortized O(1) per step).
        self._obs = np.zeros((batch, 2 * history, self.obs_dim), np.float32)
        self._fill = DISCRETE_FILL if self.discrete else np.nan
        self._act = np.full((batch, 2 * history, *self.action_shape), self._fill,
                            np.int64 if self.discrete else np.float32)
        self._first = np.zeros((batch, 2 * history), bool)
        self._len = np.zeros(batch, np.int64)  # rows seen per system, at most `history`
        self._end = 0  # next row of the buffers (all systems observe together)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self, index: np.ndarray | list[int] | None = None) -> None:
        """Forget the belief of these systems (all by default): their next `observe` starts afresh."""
        self._fresh[slice(None) if index is None else np.asarray(index)] = True

    def _rows(self, x: Any, dtype: type, shape: tuple[int, ...], name: str) -> np.ndarray:
        x = np.asarray(x, dtype)
        if x.shape == shape:
            x = x[None]
        if x.shape != (self.batch, *shape):
            raise ValueError(f"Twin: {name} has shape {x.shape}; expected {(self.batch, *shape)} "
                             f"(systems × channels) or {shape} for a single system")
        return x

    @torch.inference_mode()
    def observe(self, obs: Any, action_before: Any = None, is_first: Any = None) -> None:
        """Assimilate the newest observation `(B, obs_dim)` of each system.

        `action_before` `(B, action_dim)` (or `(B,)` Discrete) is the action taken at the previous
        observation; None only where the belief starts afresh (the first step, after `reset`, or where
        `is_first` `(B,)` is set).
        """
        obs = self._rows(obs, np.float32, (self.obs_dim,), "obs")
        first = self._fresh.copy()
        if is_first is not None:
            first |= np.asarray(is_first, bool).reshape(self.batch)
        act_dtype = np.int64 if self.discrete else np.float32
        if action_before is None:
            if not first.all():
                raise ValueError("Twin.observe: action_before is None for a system that is not starting afresh; "
                                 "pass the action taken at its previous observation")
            prev = np.zeros((self.batch, *self.action_shape), act_dtype)
        else:
            prev = self._rows(action_before, act_dtype, self.action_shape, "action_before")
        p = self.particles
        if first.any():  # the action before a first row is unknown; `observe` ignores it there
            prev = np.where(first.reshape(-1, *[1] * len(self.action_shape)), 0, prev).astype(act_dtype)
        if p > 1:
            obs, prev, first_p = np.repeat(obs, p, 0), np.repeat(prev, p, 0), np.repeat(first, p)
        else:
            first_p = first
        state_obs = torch.from_numpy(obs[:, None]).to(self.device)
        state_prev = torch.from_numpy(prev[:, None]).to(self.device)
        state_first = torch.from_numpy(first_p[:, None]).to(self.device)
        if first.all():
            self.state = self.model.initial_state(self.batch * p)
        self.state = self.model.observe(self.state, state_obs, state_prev, state_first)
        self._record(obs[::p], prev[::p], first)
        self._fresh[:] = False
        self.steps += 1

    def _record(self, obs: np.ndarray, prev: np.ndarray, first: np.ndarray) -> None:
        """Append a history row; the previous row's action becomes `prev` (store-aligned history)."""
        if self._end == 2 * self.capacity:  # full: keep the newest history - 1 rows, at the front
            keep = slice(self._end - self.capacity + 1, self._end)
            n = self.capacity - 1
            self._obs[:, :n], self._act[:, :n], self._first[:, :n] = \
                self._obs[:, keep], self._act[:, keep], self._first[:, keep]
            self._end = n
        e = self._end
        if e > 0:  # the action taken at the previous row (left as is where the belief restarts)
            has_prev = ~first
            if has_prev.all():
                self._act[:, e - 1] = prev
            else:
                self._act[has_prev, e - 1] = prev[has_prev]
        self._obs[:, e] = obs
        self._act[:, e] = self._fill
        self._first[:, e] = first
        self._end = e + 1
        self._len = np.minimum(self._len + 1, self.capacity)

    @torch.inference_mode()
    def predict(self, action: Any, generator: torch.Generator | None = None) -> Prediction:
        """The one-step prediction `(B, …)` of the next observation under `action` taken now.

        Does not move the belief (the next real observation does that). With particles > 1 the
        prediction is their mixture: mean of means, std from the mean variance and the means' spread.
        """
        if self._fresh.any():
            raise RuntimeError("Twin.predict before observe: the twin has no belief yet for some systems")
        act = self._rows(action, np.int64 if self.discrete else np.float32, self.action_shape, "action")
        self._act[:, self._end - 1] = act  # the action taken at the newest row
        act_t = torch.from_numpy(act if self.particles == 1 else np.repeat(act, self.particles, 0)).to(self.device)
        _, pred = self.model.step(self.state, act_t, generator or self.generator)
        if self.particles == 1:
            return pred
        b, p = self.batch, self.particles
        mean, std = pool(pred, b, p)

        def avg(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, p, *x.shape[1:]).float().mean(1)

        return Prediction(obs=pred.obs.reshape(b, p, *pred.obs.shape[1:])[:, 0],
                          obs_mean=torch.from_numpy(mean).float(), obs_std=torch.from_numpy(std).float(),
                          reward=avg(pred.reward), terminated=avg(pred.terminated),
                          uncertainty=avg(pred.uncertainty))

    @torch.inference_mode()
    def track(self, obs: Any, action: Any, action_before: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Observe T new rows of one system and predict each next one: the live loop for a block of rows.

        `obs` (T, obs_dim) and `action` (T, …) store-aligned (action[t] taken at obs[t]);
        `action_before` is the action taken before obs[0] (None where the belief starts afresh).
        Returns the pooled prediction for the row after each one: mean and std, (T, obs_dim) each.
        Same as `observe` + `predict` row by row; for models whose belief is just the last
        observation (checked once, numerically: the ensemble) the T predictions are one batched call.
        """
        if self.batch != 1:
            raise ValueError(f"Twin.track mirrors one system; this twin has batch={self.batch}")
        act_dtype = np.int64 if self.discrete else np.float32
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        action = np.asarray(action, act_dtype).reshape(len(obs), *self.action_shape)
        t_len = len(obs)
        if t_len == 0:
            return np.zeros((0, self.obs_dim)), np.zeros((0, self.obs_dim))
        if not self.model.markov or t_len == 1:
            means, stds = [], []
            prev = action_before
            for t in range(t_len):
                self.observe(obs[t], prev)
                pred = self.predict(action[t])
                means.append(pred.obs_mean.float().numpy()[0])
                stds.append(pred.obs_std.float().numpy()[0])
                prev = action[t]
            return np.stack(means).astype(np.float64), np.stack(stds).astype(np.float64)
        # Markov belief: row t's belief comes from row t alone, so all T rows are one batch of T * P.
        p = self.particles
        for t in range(t_len - 1):  # history bookkeeping of all but the last row (observe does the last)
            prev = action_before if t == 0 else action[t - 1]
            first = self._fresh.copy() if t == 0 else np.zeros(1, bool)
            if prev is None and not first.all():
                raise ValueError("Twin.track: action_before is None for a system that is not starting afresh")
            self._record(obs[t : t + 1], np.zeros((1, *self.action_shape), act_dtype) if prev is None
                         else np.asarray(prev, act_dtype).reshape(1, *self.action_shape), first)
            self._act[:, self._end - 1] = action[t]
            self._fresh[:] = False
            self.steps += 1
        self.observe(obs[-1], action_before if t_len == 1 else action[-2])
        self._act[:, self._end - 1] = action[-1]
        rows = repeat_state(self.state, t_len)  # (P * T) rows: particle-major, then time
        rows = self.model.observe(
            rows, torch.from_numpy(np.tile(obs, (p, 1))[:, None]).to(self.device),
            torch.zeros((p * t_len, 1, *self.action_shape), dtype=torch.int64 if self.discrete else torch.float32,
                        device=self.device),
            torch.ones(p * t_len, 1, dtype=torch.bool, device=self.device))
        _, pred = self.model.step(rows, torch.from_numpy(np.tile(action, (p, *[1] * (action.ndim - 1))))
                                  .to(self.device), self.generator)
        mean = pred.obs_mean.float().cpu().numpy().astype(np.float64).reshape(p, t_len, -1)
        std = pred.obs_std.float().cpu().numpy().astype(np.float64).reshape(p, t_len, -1)
        if p == 1:
            return mean[0], std[0]
        return mean.mean(0), np.sqrt((std**2).mean(0) + mean.var(0))


    def history(self, index: int | None = 0) -> dict[str, np.ndarray]:
        """The rows the twin has seen, for `env.reset(options={"history": …})`.

        `{"obs": (T, obs_dim), "action": (T, …), "is_first": (T,)}` for system `index` (or with a
        leading batch dimension for `index=None`, when every system has seen as many rows); actions
        store-aligned (action[k] taken at obs[k]), the newest row's action the one passed to the last
        `predict` (NaN, Discrete -1, where not known).
        """
        end = self._end
        if index is None:
            n = int(self._len.min())
            if n != int(self._len.max()):
                raise ValueError("Twin.history(None): systems have seen different numbers of rows; "
                                 "ask for one system at a time")
            rows = slice(end - n, end)
            return {"obs": self._obs[:, rows].copy(), "action": self._act[:, rows].copy(),
                    "is_first": self._first[:, rows].copy()}
        n = int(self._len[index])
        if n == 0:
            raise RuntimeError(f"Twin.history({index}): the twin has not observed system {index} yet")
        rows = slice(end - n, end)
        first = self._first[index, rows].copy()
        first[0] = True  # the history starts the belief, also where older rows were dropped
        return {"obs": self._obs[index, rows].copy(), "action": self._act[index, rows].copy(), "is_first": first}

    def save_history(self, path: str | os.PathLike, index: int = 0) -> str:
        """Write system `index`'s history as a generate.py history file (`obs` (T, D), `action` (T, A))."""
        h = self.history(index)
        action = h["action"].reshape(len(h["obs"]), -1).astype(np.float64)
        if self.discrete:
            action[action < 0] = np.nan
        # a reader never sees a half-written file
        atomic_write(path, lambda tmp: np.savez(tmp, obs=h["obs"], action=action, is_first=h["is_first"]))
        return str(path)


# ---------------------------------------------------------------------- scores beside the store
class ScoreStore:
    """Anomaly scores in a companion Zarr v3 group beside the trajectory store (`NAME.anomaly.zarr`).

    One row per mirrored grid instant, indexed by `time` (int64 ns, the data rows' `time`), so
    `xr.open_zarr(scores).sel(time=ds.time.values)` lines scores up with the data. Variables:
    `surprise` (time), `score` (time), `contribution` (time, obs_channel), `alert` (time). Rows are
    buffered and written by `flush()`, `time` last, then the metadata is consolidated, so plain xarray
    readers see whole flushes; opening for writing cuts a flush a crash interrupted.
    """

    CHUNK = 65536
    DATA_VARS = ("surprise", "score", "contribution", "alert")

    def __init__(self, path: str, obs_channels: list[str], attrs: dict[str, Any]) -> None:
        self.path = path
        self._lock = acquire_writer_lock(path)
        exists = not is_url(path) and os.path.exists(os.path.join(path, "zarr.json"))
        if exists:
            self.group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
            stored = [str(c) for c in self.group["obs_channel"][:]]
            if stored != list(obs_channels):
                raise ValueError(f"{path}: scores are for channels {stored}; this twin scores {obs_channels}")
            n = min(self.group[v].shape[0] for v in (*self.DATA_VARS, "time"))
            for v in (*self.DATA_VARS, "time"):
                self.group[v].resize((n, *self.group[v].shape[1:]))
        else:
            self.group = zarr.open_group(path, mode="w", zarr_format=3)
            self._create(obs_channels)
        self.group.attrs.update(attrs)
        self.last_time = int(self.group["time"][-1]) if self.group["time"].shape[0] else None
        self._pending: list[tuple[int, float, float, np.ndarray, bool]] = []
        self._publish()

    @staticmethod
    def path_for(store_path: str) -> str:
        """`plant.zarr` → `plant.anomaly.zarr` (beside it)."""
        base = str(store_path).rstrip("/")
        return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + ".anomaly.zarr"

    def _create(self, channels: list[str]) -> None:
        codecs = compressors(3)
        d = len(channels)
        specs = {"time": ((), "int64", 0), "surprise": ((), "float32", np.nan), "score": ((), "float32", np.nan),
                 "contribution": ((d,), "float32", np.nan), "alert": ((), "bool", False)}
        long_names = {"time": "time of the mirrored row, ns since 1970-01-01T00:00:00Z (as the store's `time`)",
                      "surprise": "sum over channels of the per-channel surprise of the step",
                      "score": "surprise averaged over the last `window` steps (compared with `threshold`)",
                      "contribution": "per-channel surprise: Gaussian NLL in units of the channel's training std",
                      "alert": "score above the calibrated threshold"}
        for name, (shape, dtype, fill) in specs.items():
            arr = self.group.create_array(name, shape=(0, *shape), chunks=(self.CHUNK, *shape), dtype=dtype,
                                          fill_value=fill, dimension_names=["time", "obs_channel"][: 1 + len(shape)],
                                          **codecs)
            arr.attrs["long_name"] = long_names[name]
        self.group["time"].attrs["unit"] = "ns since 1970-01-01T00:00:00Z (int64, no datetime encoding)"
        ch = self.group.create_array("obs_channel", shape=(d,), chunks=(d,), dtype=str,
                                     dimension_names=["obs_channel"])
        ch[:] = np.array(channels, dtype=object)

    def append(self, time_ns: int, step: ScoreStep, index: int = 0) -> None:
        """Buffer one row of system `index` (rows at or before the newest stored time are skipped)."""
        if self.last_time is not None and time_ns <= self.last_time:
            return
        self._pending.append((time_ns, float(step.surprise[index]), float(step.score[index]),
                              step.contributions[index].astype(np.float32), bool(step.alert[index])))
        self.last_time = time_ns

    def flush(self) -> None:
        """Write the buffered rows (data first, `time` last) and publish the snapshot."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        cols = list(zip(*rows, strict=True))
        data = {"surprise": np.asarray(cols[1], np.float32), "score": np.asarray(cols[2], np.float32),
                "contribution": np.stack(cols[3]), "alert": np.asarray(cols[4], bool)}
        for name in self.DATA_VARS:
            self.group[name].append(data[name], axis=0)
        self.group["time"].append(np.asarray(cols[0], np.int64), axis=0)
        self._publish()

    def _publish(self) -> None:
        consolidate(self.group)

    def close(self) -> None:
        self.flush()
        release_writer_lock(self._lock)
        self._lock = None


# ---------------------------------------------------------------------- the running mirror
@dataclass
class LiveStats:
    steps: int = 0
    """Rows mirrored and scored."""
    alerts: int = 0
    """Rising edges: the score went above the threshold."""
    alert_steps: int = 0
    """Rows whose score was above the threshold."""
    latest_score: float = float("nan")
    max_score: float = float("nan")
    """Highest score since the last MLflow log."""


class LiveMirror:
    """Feeds the stream's new rows to the twin, scores them and hands the scores on (store, alerts, MLflow)."""

    def __init__(self, twin: Twin, scorer: AnomalyScorer, scores: ScoreStore | None = None,
                 alert: Any = None, channels: list[str] | None = None) -> None:
        self.twin = twin
        self.scorer = scorer
        self.scores = scores
        self.alert = alert or (lambda message: None)
        self.channels = channels or [str(i) for i in range(twin.obs_dim)]
        self.stats = LiveStats()
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._prev_action: np.ndarray | None = None
        self._above = False

    def on_blocks(self, blocks: list) -> None:
        for block in blocks:
            if block.starts_piece:  # after a gap the belief starts afresh
                self.twin.reset()
                self.scorer.reset()
                self._pending, self._prev_action = None, None
            if len(block):
                action = block.action[:, 0] if self.twin.discrete else block.action
                mean, std = self.twin.track(block.obs, action, self._prev_action)
                for i in range(len(block)):
                    self._score(int(block.time[i]), block.obs[i])
                    self._pending = (mean[i : i + 1], std[i : i + 1])
                self._prev_action = action[-1]
            if block.ends_piece:
                self._pending = None

    def _score(self, time_ns: int, obs: np.ndarray) -> None:
        mean, std = self._pending if self._pending is not None else (None, None)
        out = self.scorer.score(mean, std, obs[None])
        s = self.stats
        s.steps += 1
        score = float(out.score[0])
        if math.isfinite(score):
            s.latest_score = score
            s.max_score = score if not math.isfinite(s.max_score) else max(s.max_score, score)
        if self.scores is not None:
            self.scores.append(time_ns, out)
        above = bool(out.alert[0])
        s.alert_steps += above
        if above and not self._above:  # one alert per excursion above the threshold
            s.alerts += 1
            contrib = out.contributions[0]
            top = sorted(zip(self.channels, contrib.tolist(), strict=True), key=lambda kv: -kv[1])
            self.alert({"time": time_ns, "score": score, "threshold": self.scorer.threshold,
                        "channels": {k: round(v, 4) for k, v in top}})
        self._above = above


class MlflowLog:
    """Aggregated live metrics to MLflow, once per interval (per-step scores go to the score store)."""

    def __init__(self, params: dict[str, Any], experiment: str = "twinworld-live", every: float = 5.0) -> None:
        from tracking.logger import BufferedMLflowLogger

        self.logger = BufferedMLflowLogger(experiment_name=experiment, run_name=f"live-{Path(params['store']).stem}",
                                           flush_interval_s=every)
        self.logger.log_hyperparams(params)
        self.every = every
        self._last = 0.0

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def log(self, mirror: LiveMirror, stream_stats: Any, now: float, force: bool = False) -> None:
        if not force and now - self._last < self.every:
            return
        self._last = now
        s = mirror.stats
        metrics = {"twin/steps": s.steps, "twin/lag_s": stream_stats.lag_s(), "anomaly/alerts": s.alerts,
                   "anomaly/alert_steps": s.alert_steps, "stream/late": stream_stats.late,
                   "stream/duplicates": stream_stats.duplicates, "stream/committed_steps": stream_stats.committed_steps}
        if math.isfinite(s.latest_score):
            metrics["anomaly/score"] = s.latest_score
        if math.isfinite(s.max_score):
            metrics["anomaly/score_max"] = s.max_score
        s.max_score = float("nan")
        self.logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=s.steps)

    def close(self) -> None:
        self.logger.end_run()


def _alert_sink(topic: str | None, source: Any) -> Any:
    """Print each alert as `alert: {json}`; also publish it when a topic (or mqtt:// URL) is given."""
    from data_pipeline.stream import MqttSource

    client, target = None, topic
    if topic and topic.startswith("mqtt://"):
        import queue

        client = MqttSource(topic, subscribe=False)
        client.start(queue.Queue())  # a connection of its own, for publishing only
        target = client.topic
    elif topic and isinstance(source, MqttSource):
        client = source
    elif topic:
        raise ValueError(f"--alert-topic {topic!r}: a bare topic needs an mqtt:// source; give a full "
                         "mqtt://HOST:PORT/TOPIC instead")

    def alert(message: dict[str, Any]) -> None:
        text = json.dumps(message)
        print(f"alert: {text}", flush=True)
        if client is not None:
            client.publish(target, text)

    return alert


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    """`python -m envs.live`: stream + twin + anomaly scores until the source ends or SIGINT / SIGTERM."""
    from data_pipeline.ingest_spec import IngestSpec
    from data_pipeline.stream import StreamConfig, StreamIngest, make_source, open_or_create, run
    from envs.loading import check_compatible

    spec = IngestSpec.from_yaml(args.spec)
    twin = Twin(args.model, history=args.history, particles=args.particles, device=args.device)
    model = twin.model
    calibration = Calibration.load(args.calibration) if args.calibration else None
    if calibration is not None:  # the threshold holds for the settings it was calibrated with
        config = calibration.anomaly_config()
        if args.window is not None or args.particles != 1:
            print(f"envs.live: --window / --particles ignored: {args.calibration} was calibrated with "
                  f"window {config.window}, particles {config.particles}", file=sys.stderr)
    else:
        config = AnomalyConfig(window=args.window or 1, particles=args.particles)
    threshold = args.threshold if args.threshold is not None else (calibration.threshold if calibration else None)
    if threshold is None:
        print("envs.live: no --calibration or --threshold: scores are written, no alerts", file=sys.stderr)
    if config.particles != twin.particles:
        twin = Twin(model, history=args.history, particles=config.particles)
    source = make_source(args.source)
    store = open_or_create(args.store, spec, args.spec, source.name)
    scores = None
    mlflow_log = None
    try:
        check_compatible(model.schema, store.schema, f"spec {args.spec} / store {args.store}")
        ingest = StreamIngest(spec, store, source.name, StreamConfig(
            reorder_window=args.reorder_window, commit_seconds=args.commit_interval, commit_rows=args.commit_rows))
        scorer = AnomalyScorer(model, config, threshold)
        scores_path = args.scores or ScoreStore.path_for(args.store)
        scores = ScoreStore(scores_path, list(model.schema.obs_channels), {
            "model": str(args.model), "store": str(args.store), "threshold": threshold if threshold is not None
            else float("inf"), "anomaly_config": json.dumps(config.__dict__), "title": "twinworld anomaly scores"})
        mirror = LiveMirror(twin, scorer, scores, _alert_sink(args.alert_topic, source),
                            list(model.schema.obs_channels))
        if not args.no_mlflow:
            mlflow_log = MlflowLog({"model": str(args.model), "store": str(args.store), "source": source.name,
                                    "threshold": threshold, "window": config.window, "particles": config.particles,
                                    "kind": config.kind})
        last_commit = [ingest.stats.committed_steps]

        def on_blocks(blocks: list) -> None:
            mirror.on_blocks(blocks)
            now = _time.monotonic()
            if ingest.stats.committed_steps != last_commit[0]:  # scores and history follow the data's commits
                last_commit[0] = ingest.stats.committed_steps
                scores.flush()
                if args.history_out and twin.steps:
                    twin.save_history(args.history_out)
            if mlflow_log is not None:
                mlflow_log.log(mirror, ingest.stats, now)

        def status() -> str:
            st = ingest.stats
            return (f"steps: {mirror.stats.steps}  lag: {st.lag_s():.2f} s  score: {mirror.stats.latest_score:.3g}"
                    f" (threshold {threshold if threshold is not None else 'none'})  alerts: {mirror.stats.alerts}"
                    f"  committed: {st.committed_steps}  late: {st.late}  duplicates: {st.duplicates}")

        stats = run(source, ingest, on_blocks=on_blocks, status=status, status_every=args.status_every)
        scores.flush()
        if args.history_out and twin.steps:
            twin.save_history(args.history_out)
        if mlflow_log is not None:
            mlflow_log.log(mirror, stats, _time.monotonic(), force=True)
        return {"store": args.store, "scores": scores_path, "steps": mirror.stats.steps,
                "committed_steps": stats.committed_steps, "alerts": mirror.stats.alerts,
                "late": stats.late, "duplicates": stats.duplicates, "rejected": stats.rejected,
                **({"history": args.history_out} if args.history_out and twin.steps else {}),
                **({"mlflow_run": mlflow_log.run_id} if mlflow_log is not None else {})}
    finally:
        if scores is not None:
            scores.close()
        if mlflow_log is not None:
            mlflow_log.close()
        store.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m envs.live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file or MLflow model URI (runs:/…, models:/…)")
    p.add_argument("--spec", required=True, help="YAML spec mapping JSON keys to channels (docs/ingest.md)")
    p.add_argument("--source", required=True, help="mqtt://HOST:PORT/TOPIC, '-' (JSON lines on stdin) or file:PATH")
    p.add_argument("--store", required=True, help="trajectory store to mirror into (created or appended to)")
    p.add_argument("--calibration", default=None,
                   help="calibration JSON from `python -m worldmodel.anomaly` (threshold and score settings)")
    p.add_argument("--threshold", type=float, default=None, help="alert threshold (overrides the calibration's)")
    p.add_argument("--window", type=int, default=None,
                   help="steps the score averages over (default 1; a calibration brings its own)")
    p.add_argument("--particles", type=int, default=1,
                   help="belief copies pooled per prediction (a calibration brings its own)")
    p.add_argument("--alert-topic", default=None,
                   help="publish alerts as JSON on this topic of the source's broker (or a full mqtt:// URL)")
    p.add_argument("--scores", default=None, help="score store path (default: STORE's name with .anomaly.zarr)")
    p.add_argument("--history-out", default=None,
                   help="keep the twin's recent history in this .npz (a generate.py history file), updated at "
                   "every commit and at exit")
    p.add_argument("--history", type=int, default=256, help="rows of history the twin keeps")
    p.add_argument("--reorder-window", type=float, default=1.0, help="seconds a sample waits for earlier ones")
    p.add_argument("--commit-interval", type=float, default=10.0, help="seconds between segment commits")
    p.add_argument("--commit-rows", type=int, default=0, help="also commit a segment once it has this many rows")
    p.add_argument("--status-every", type=float, default=1.0, help="seconds between status lines; 0: none")
    p.add_argument("--device", default=None, help="torch device of the model (default: cpu)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_live(args)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
