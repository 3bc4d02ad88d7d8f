"""Released samples onto the store's grid: the CSV ingest's resampling, applied as samples arrive.

Grid instants sit on whole multiples of `dt`; `interpolate` / `hold` use the ingest's own
`resample_group`; a channel silent for longer than its `max_gap` splits the episode into pieces.
The rows come out as `Block`s, store-aligned, for the segment writer and for consumers such as the
live twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipeline.ingest import IngestSpec, resample_group
from data_pipeline.schema import DISCRETE_FILL, StoreSchema
from data_pipeline.stream.messages import Sample


@dataclass
class Block:
    """Consecutive grid rows of one piece of the stream, store-aligned (action[k] taken at obs[k])."""

    label: str
    time: np.ndarray
    """(n,) int64 ns."""
    obs: np.ndarray
    """(n, obs_dim) float32."""
    action: np.ndarray
    """(n, action_dim) float32, or (n, 1) int64 for Discrete actions."""
    reward: np.ndarray
    """(n,) float32."""
    starts_piece: bool = False
    """The first row begins a new piece (after a gap, a new episode label, or the stream's start)."""
    ends_piece: bool = False
    """The piece ends after the last row (a gap, a new episode label or the end of the stream)."""
    arrival: float = 0.0
    """time.monotonic() of the latest message that went into these rows."""

    def __len__(self) -> int:
        return int(self.time.shape[0])


class Resampler:
    """The CSV ingest's resampling (docs/ingest.md), applied to samples arriving in time order.

    A piece starts once every channel has reported; its grid instants are whole multiples of `dt`
    from the latest first reading. A grid instant is emitted once it is final: every `interpolate`
    channel has a reading at or after it, and the stream has passed it for `hold` channels (whose
    value holds for at most `max_gap`). A channel silent for longer than its group's `max_gap`
    ends the piece at the earliest channel's last reading before the gap; samples inside the gap are
    dropped, as the CSV ingest drops the rows inside a gap.
    """

    def __init__(self, spec: IngestSpec, schema: StoreSchema) -> None:
        self.spec = spec
        self.schema = schema
        self.dt_ns = round(spec.dt * 1e9)
        groups = [g for g, _ in spec.channels()]
        self.groups = groups
        self.max_gap_ns = np.array([round(spec.max_gap_of(g) * 1e9) for g in groups], np.int64)
        self.interp = np.array([spec.resample_of(g) == "interpolate" for g in groups])
        self.n_obs, self.n_act = len(spec.observation.channels), len(spec.action.channels)
        self.label: str | None = None
        self._raw_last = np.full(len(groups), -1, np.int64)  # last reading per channel (gaps), -1: none
        self._new_piece()

    def _new_piece(self) -> None:
        self._times: list[int] = []
        self._values: list[np.ndarray] = []
        self._first = np.full(len(self.groups), -1, np.int64)
        self._last = np.full(len(self.groups), -1, np.int64)
        self.next_grid: int | None = None
        self._started = False  # a row of this piece was emitted
        self._arrival = 0.0

    def push(self, samples: list[Sample]) -> list[Block]:
        """Add released samples (time order); return the rows that became final."""
        blocks: list[Block] = []
        for s in samples:
            if self.label is None:
                self.label = s.episode
            elif s.episode != self.label:  # a new episode label: end the piece, forget gap state
                blocks += self._finish_piece(None)
                self.label = s.episode
                self._raw_last[:] = -1
            has = np.isfinite(s.values)
            silent = (self._raw_last >= 0) & (s.time_ns - self._raw_last > self.max_gap_ns)
            inside_gap = (silent & ~has).any()  # strictly inside some channel's gap
            gap_ended = (silent & has).any()
            if inside_gap or gap_ended:
                gap_start = int(self._raw_last[silent].min())
                blocks += self._finish_piece(gap_start)
            self._raw_last[has] = s.time_ns
            if inside_gap:
                continue
            self._times.append(s.time_ns)
            self._values.append(s.values)
            self._first[has & (self._first < 0)] = s.time_ns
            self._last[has] = s.time_ns
            self._arrival = max(self._arrival, s.arrival)
            if self.next_grid is None and (self._first >= 0).all():
                start = int(self._first.max())
                self.next_grid = -(-start // self.dt_ns) * self.dt_ns
        if samples:
            blocks += self._emit(self._ready_until(samples[-1].time_ns), ends=False)
        return blocks

    def finish(self) -> list[Block]:
        """End the stream: emit what the CSV ingest would for the last piece."""
        return self._finish_piece(None)

    def end_piece(self) -> list[Block]:
        """End the piece at a clock jump: emit its rows and forget the gap state (times start afresh)."""
        blocks = self._finish_piece(None)
        self._raw_last[:] = -1
        return blocks

    def _ready_until(self, now_ns: int) -> int:
        """The last grid instant that is final at stream time `now_ns`."""
        bound = now_ns
        if self.interp.any():
            bound = min(bound, int(self._last[self.interp].min()))
        hold = ~self.interp
        if hold.any():
            bound = min(bound, int((self._last[hold] + self.max_gap_ns[hold]).min()))
        return bound

    def _finish_piece(self, gap_start: int | None) -> list[Block]:
        """Emit the rest of the current piece (rows up to the earliest last reading) and start anew."""
        if gap_start is not None and self._times:
            keep = np.asarray(self._times) <= gap_start  # readings inside the gap are not part of the piece
            self._times = [t for t, k in zip(self._times, keep, strict=True) if k]
            self._values = [v for v, k in zip(self._values, keep, strict=True) if k]
            if self._values:
                vals = np.stack(self._values)
                times = np.asarray(self._times)
                self._last = np.array([times[np.isfinite(vals[:, k])].max(initial=-1)
                                       for k in range(vals.shape[1])], np.int64)
        blocks = []
        if self.next_grid is not None and (self._last >= 0).all():
            blocks = self._emit(int(self._last.min()), ends=True)
        if blocks:
            blocks[-1].ends_piece = self._started
        elif self._started:  # the piece's rows were all emitted already: an empty block carries the end
            blocks = [self._empty_block(ends=True)]
        self._new_piece()
        return blocks

    def _empty_block(self, ends: bool) -> Block:
        act_dtype = np.int64 if self.schema.discrete else np.float32
        return Block(label=self.label or "", time=np.zeros(0, np.int64),
                     obs=np.zeros((0, self.n_obs), np.float32),
                     action=np.zeros((0, 1 if self.schema.discrete else self.n_act), act_dtype),
                     reward=np.zeros(0, np.float32), ends_piece=ends, arrival=self._arrival)

    def _emit(self, until_ns: int, ends: bool) -> list[Block]:
        if self.next_grid is None or until_ns < self.next_grid:
            return []
        n = (until_ns - self.next_grid) // self.dt_ns + 1
        grid_ns = self.next_grid + self.dt_ns * np.arange(n, dtype=np.int64)
        times = np.asarray(self._times, np.int64)
        data = np.stack(self._values, axis=1)  # (K, R), channel-major as the ingest's RawLog
        t_ref = times[0]
        axis = (times - t_ref) / 1e9
        grid = (grid_ns - t_ref) / 1e9
        keep = np.ones(times.size, bool)
        spec = self.spec
        o, a = self.n_obs, self.n_obs + self.n_act
        obs = resample_group(data[:o], spec.observation.resample, spec.max_gap_of("observation"), axis, keep,
                              grid)
        act = resample_group(data[o:a], spec.action.resample, spec.max_gap_of("action"), axis, keep, grid)
        if spec.reward is not None:
            rew = resample_group(data[a:], spec.reward.resample, spec.max_gap_of("reward"), axis, keep, grid)[:, 0]
        else:
            rew = np.zeros(n, np.float32)
        if self.schema.discrete:
            act = np.where(np.isfinite(act), np.round(act), DISCRETE_FILL).astype(np.int64)
        block = Block(label=self.label or "", time=grid_ns, obs=obs, action=act, reward=rew,
                      starts_piece=not self._started, ends_piece=ends, arrival=self._arrival)
        self._started = True
        self.next_grid = int(grid_ns[-1]) + self.dt_ns
        self._trim()
        return [block]

    def _trim(self) -> None:
        """Forget readings no future grid instant needs: keep each channel's last one before next_grid."""
        if len(self._times) < 64 or self.next_grid is None:
            return
        times = np.asarray(self._times, np.int64)
        vals = np.stack(self._values)
        cut = len(times)
        for k in range(vals.shape[1]):
            idx = np.flatnonzero(np.isfinite(vals[:, k]) & (times <= self.next_grid))
            cut = min(cut, int(idx[-1]) if idx.size else 0)
        if cut > 0:
            del self._times[:cut]
            del self._values[:cut]
