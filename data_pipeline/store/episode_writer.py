"""One episode written row by row (live sources): validated blocks, committed at the end.

`EpisodeWriter` drives the store through its public writer API only (`write_rows`,
`commit_episodes`, `discard_uncommitted`), the same steps `TrajectoryStore.append` takes.
"""

from __future__ import annotations

import time as _time
import uuid
from typing import Any, Protocol

import numpy as np

from data_pipeline.schema import DISCRETE_FILL, StoreSchema
from data_pipeline.store.layout import episode_rows
from data_pipeline.store.table import TableRow
from data_pipeline.validate import DataValidationError, validate_rows


class RowSink(Protocol):
    """What an EpisodeWriter needs of a store (a `TrajectoryStore` open for writing)."""

    path: str
    schema: StoreSchema

    @property
    def num_steps(self) -> int: ...

    def write_rows(self, rows: dict[str, np.ndarray]) -> None: ...

    def commit_episodes(self, rows: list[TableRow]) -> None: ...

    def discard_uncommitted(self) -> int: ...


class EpisodeWriter:
    """Rows of one open episode, added one at a time; written in blocks, committed at the end.

    Made by `TrajectoryStore.episode_writer()`. A row of the wrong shape is refused by `add()` (the
    episode goes on); every block is validated before it is written (rows numbered within the episode,
    time increasing across blocks), and a block that fails drops the whole episode. The newest row
    always stays in memory, so the episode's final row is written once, by `commit()`, with its end
    flags and its NaN / -1 action and reward. Only `commit()` makes the episode visible to readers;
    `abort()` (or an exception inside `with`) drops the rows already written.
    """

    def __init__(self, store: RowSink, *, episode_id: str | None, source: str, seed: int,
                 start_time: int | None, flush_rows: int, min_transitions: int) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be ≥ 1, got {flush_rows}")
        self.store = store
        self.episode_id = episode_id if episode_id is not None else uuid.uuid4().hex[:12]
        self.source = source
        self.seed = seed
        self.start_time = start_time
        self.flush_rows = flush_rows
        self.min_transitions = min_transitions
        self.written = 0  # rows already in the store (uncommitted)
        self.finished = False
        """True once committed or aborted; the store then accepts other writes again."""
        self._start_row = store.num_steps
        self._rows: list[dict[str, Any]] = []
        self._timed: bool | None = None  # whether rows carry their own time
        self._last_time: int | None = None

    @property
    def where(self) -> str:
        return f"{self.source or '<stream>'} (episode {self.episode_id})"

    @property
    def num_rows(self) -> int:
        return self.written + len(self._rows)

    @property
    def pending(self) -> int:
        """Rows held in memory, not yet written: at most `flush_rows + 1`."""
        return len(self._rows)

    def add(
        self,
        *,
        obs: np.ndarray | list[float] | None = None,
        image: np.ndarray | None = None,
        action: np.ndarray | list[float] | float | int | None = None,
        reward: float | None = None,
        time: int | None = None,
    ) -> None:
        """Add the next row: the observation, the action taken at it and the reward that followed.

        The final row carries no action or reward (pass None). Give `time` (int64 ns) on every row
        or on none; without it rows are `dt` apart from `start_time` (default: the first add).
        """
        self._require_open()
        row = self.num_rows
        schema = self.store.schema
        obs_shape = None if obs is None else np.shape(obs)
        if schema.obs_dim and obs_shape != (schema.obs_dim,):
            raise DataValidationError(
                f"{self.where}: field 'obs' has shape {obs_shape} at row {row}; "
                f"expected ({schema.obs_dim},) for channels {schema.obs_channels}"
            )
        image_shape = None if image is None else np.shape(image)
        if schema.image_shape and image_shape != tuple(schema.image_shape):
            raise DataValidationError(
                f"{self.where}: field 'image' has shape {image_shape} at row {row}; "
                f"expected {tuple(schema.image_shape)} uint8"
            )
        if self._timed is None:
            self._timed = time is not None
            if not self._timed and self.start_time is None:
                self.start_time = _time.time_ns()
        if self._timed != (time is not None):
            raise DataValidationError(
                f"{self.where}: field 'time' is {'missing' if time is None else 'given'} at row {row}; "
                "expected it on every row or on none"
            )
        self._rows.append({"obs": obs, "image": image, "action": action, "reward": reward, "time": time})
        if len(self._rows) > self.flush_rows:
            try:
                self._write(self._rows[:-1], last=False)
            except BaseException:  # the episode cannot be completed correctly: drop it
                self.abort()
                raise
            self._rows = self._rows[-1:]

    def _write(self, rows: list[dict[str, Any]], last: bool, terminated: bool = False,
               truncated: bool = False) -> None:
        """Validate then write a block of rows (uncommitted)."""
        schema = self.store.schema
        n = len(rows)
        fill = DISCRETE_FILL if schema.discrete else np.nan
        action = np.stack([np.full(schema.action_dim, fill) if r["action"] is None
                           else np.atleast_1d(np.asarray(r["action"])) for r in rows])
        reward = np.array([np.nan if r["reward"] is None else r["reward"] for r in rows], np.float64)
        obs = np.asarray([r["obs"] for r in rows]) if schema.obs_dim else None
        image = np.asarray([r["image"] for r in rows]) if schema.image_shape else None
        if self._timed:
            time = np.asarray([r["time"] for r in rows], np.int64)
        else:
            assert self.start_time is not None  # set by the first untimed add()
            dt_ns = round(schema.dt * 1e9)
            time = self.start_time + dt_ns * (self.written + np.arange(n, dtype=np.int64))
        validate_rows(schema, where=self.where, obs=obs, image=image, action=action, reward=reward, time=time,
                      row0=self.written, ends_episode=last, prev_time=self._last_time)
        block = episode_rows(schema, action=action, reward=reward, obs=obs, image=image, time=time,
                             first=self.written == 0, last=last, terminated=terminated, truncated=truncated)
        self.store.write_rows(block)
        if self.start_time is None:
            self.start_time = int(time[0])
        self.written += n
        self._last_time = int(time[-1])

    def commit(self, terminated: bool = False, truncated: bool = False) -> str:
        """Write the remaining rows and commit the episode; return its id."""
        self._require_open()
        if self.num_rows - 1 < self.min_transitions:
            n = self.num_rows
            self.abort()
            raise DataValidationError(
                f"{self.where}: episode has {max(n - 1, 0)} transitions ({n} rows); "
                f"expected at least {self.min_transitions} (min_transitions)"
            )
        try:
            self._write(self._rows, last=True, terminated=terminated, truncated=truncated)
            assert self.start_time is not None  # set by the first written block
            self.store.commit_episodes([TableRow(id=self.episode_id, start=self._start_row, length=self.written,
                                                 source=self.source, seed=self.seed, start_time=self.start_time)])
        except BaseException:
            self.abort()
            raise
        self._finish()
        return self.episode_id

    def abort(self) -> None:
        """Drop this episode: rows already written are cut off; the store is as before the episode began."""
        if self.finished:
            return
        self._finish()
        self.store.discard_uncommitted()

    def _require_open(self) -> None:
        if self.finished:
            raise RuntimeError(f"{self.store.path}: episode {self.episode_id} is already finished")

    def _finish(self) -> None:
        self.finished = True
        self._rows = []

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            if not self.finished:
                self.commit()
        else:
            self.abort()
