"""Start states for the learned envs: recorded episodes of a trajectory store, or a caller's history.

A start is a history of real rows to assimilate with `WorldModel.observe` (so the twin begins synced to
the real system), ending at the row the episode starts from. `RecordedStarts` draws them from a store:
vector stores small enough for `cache_bytes` are read into memory once; larger stores and image stores
are read on demand, one episode slice per start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore, episode_index

DEFAULT_CACHE_BYTES = 256 << 20  # vector stores up to a few million rows are held in memory


@dataclass
class History:
    """Real rows to assimilate for a batch of starts, `(B, T, …)`, padded on the left.

    Padding rows repeat the first real row with `is_first` set, so `observe` resets its belief on
    each of them and the padding has no effect.
    """

    obs: np.ndarray
    """(B, T, obs_dim) float32 vectors, or (B, T, H, W, C) uint8 images."""
    prev_action: np.ndarray
    """(B, T, action_dim) float32 or (B, T) int64: the action taken *before* each row (WorldModel convention)."""
    is_first: np.ndarray
    """(B, T) bool: the belief restarts at this row."""
    episode: np.ndarray
    """(B,) int64 episode position in the store, -1 for a caller-supplied history."""
    t: np.ndarray
    """(B,) int64 row of the start within its episode (the last history row)."""

    @property
    def last_obs(self) -> np.ndarray:
        """(B, …) the observation each start begins from."""
        return self.obs[:, -1]

    @staticmethod
    def from_arrays(obs: Any, action: Any, *, image: bool, action_shape: tuple[int, ...], batch: int,
                    is_first: Any = None) -> History:
        """A caller's history: `obs` (T, …) or (batch, T, …); store-aligned `action` (action[k] taken at
        obs[k]) with T or T-1 rows, the action at the last row being unknown and unused. Discrete
        actions (`action_shape == ()`) may also come in the store's layout with a trailing 1."""
        discrete = action_shape == ()
        obs = np.asarray(obs, np.uint8 if image else np.float32)
        act = np.asarray(action, np.int64 if discrete else np.float32)
        if obs.ndim == (4 if image else 2):  # one history for every sub-env
            obs = np.repeat(obs[None], batch, axis=0)
            act = np.repeat(act.reshape(-1, *action_shape)[None], batch, axis=0)
        elif discrete and act.ndim == 3:
            act = act[..., 0]
        t_len = obs.shape[1]
        if obs.shape[0] != batch or act.shape[0] != batch:
            raise InputError(
                f"reset options['history']: obs has batch {obs.shape[0]}, action batch {act.shape[0]}; "
                f"expected {batch} (one per sub-env) or no batch dimension")
        if t_len < 1:
            raise InputError("reset options['history']['obs'] has no rows; expected at least one observation")
        if act.shape[1] not in (t_len, t_len - 1):
            raise InputError(
                f"reset options['history']: {t_len} obs rows but {act.shape[1]} action rows; expected "
                f"{t_len - 1} or {t_len} (store-aligned: action[k] is taken at obs[k])")
        prev = np.zeros((batch, t_len, *action_shape), np.int64 if discrete else np.float32)
        prev[:, 1:] = act[:, : t_len - 1]
        first = np.zeros((batch, t_len), bool)
        if is_first is not None:
            first[:] = np.asarray(is_first, bool).reshape(-1, t_len)
        first[:, 0] = True
        return History(
            obs=np.ascontiguousarray(obs), prev_action=prev, is_first=first,
            episode=np.full(batch, -1, np.int64), t=np.full(batch, t_len - 1, np.int64),
        )


class RecordedStarts:
    """Recorded states of a store's committed episodes, and the history leading to each.

    A random start is a row drawn uniformly over all rows that have a next row (every recorded
    state that a transition leaves from), so long episodes are drawn in proportion to their length.
    """

    def __init__(self, store: TrajectoryStore, history: int, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if history < 1:
            raise InputError(f"history={history}: need at least 1 row (the start state itself)")
        self.store = store
        self.schema = store.schema
        self.history = int(history)
        self.image_obs = self.schema.image_obs
        self.discrete = self.schema.discrete
        table = store.episodes()
        self.ids = table["id"].to_numpy()
        self.ep_start = table["start"].to_numpy(np.int64)
        self.ep_length = table["length"].to_numpy(np.int64)
        # Rows 0..length-2 of each episode have a transition out of them.
        self.n_starts = np.maximum(self.ep_length - 1, 0)
        self.cum = np.cumsum(self.n_starts)
        if not len(self.cum) or self.cum[-1] == 0:
            raise InputError(f"{store.path}: no committed episode with at least one transition to start from")
        self.obs_var = "image" if self.image_obs else "obs"
        num_rows = int(self.ep_start[-1] + self.ep_length[-1])
        row_bytes = 4 * (self.schema.obs_dim + self.schema.action_dim)
        self.cached = not self.image_obs and num_rows * row_bytes <= cache_bytes
        if self.cached:
            # Small vector store: one read at construction, then every reset is pure numpy indexing.
            self.obs_rows = store.read_rows("obs", 0, num_rows).astype(np.float32)
            self.action_rows = self._actions(store.read_rows("action", 0, num_rows))

    @property
    def num_episodes(self) -> int:
        return len(self.ids)

    def _actions(self, rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].astype(np.int64) if self.discrete else rows.astype(np.float32)

    # ------------------------------------------------------------------ choosing starts
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` random recorded states: (episode positions, rows within the episodes)."""
        u = rng.integers(0, self.cum[-1], size=n)
        episode = np.searchsorted(self.cum, u, side="right")
        t = u - (self.cum[episode] - self.n_starts[episode])
        return episode.astype(np.int64), t.astype(np.int64)

    def resolve(self, episode: int | str | Sequence[int | str], t: int | Sequence[int], n: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """Episode positions and rows for `{"episode": …, "t": …}`: one value for all `n` starts or one each.

        `episode` is a position or an id; negative `t` counts from the episode's end, as in Python.
        """
        eps = list(episode) if isinstance(episode, Sequence) and not isinstance(episode, str) else [episode] * n
        ts = list(np.atleast_1d(np.asarray(t, np.int64)))
        if len(ts) == 1:
            ts = ts * n
        if len(eps) != n or len(ts) != n:
            raise InputError(f"reset options: {len(eps)} episodes and {len(ts)} times for {n} sub-envs; "
                             f"give one value for all or one per sub-env")
        pos = np.array([self._position(e) for e in eps], np.int64)
        rows = np.array(ts, np.int64)
        length = self.ep_length[pos]
        rows = np.where(rows < 0, rows + length, rows)
        bad = np.flatnonzero((rows < 0) | (rows >= length))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"reset options: t={ts[i]} is outside episode {eps[i]!r} of {self.store.path}, "
                             f"which has rows 0..{int(length[i]) - 1}")
        return pos, rows

    def _position(self, episode: int | str) -> int:
        """The store position of an episode given by position or id (the store's one lookup rule)."""
        try:
            return episode_index(self.ids, episode, where=self.store.path)
        except (KeyError, IndexError) as err:
            raise type(err)(f"reset options: {err.args[0]}") from None

    # ------------------------------------------------------------------ reading histories
    def history_for(self, episode: np.ndarray, t: np.ndarray) -> History:
        """Up to `history` rows ending at row t of each episode, left-padded to a common length."""
        span = np.minimum(t + 1, self.history)  # real rows per start
        t_len = int(span.max())
        lo = t - span + 1  # first real row (episode-relative)
        k = np.arange(t_len)
        # Row index per (start, k), padding clamped onto the first real row.
        local = np.maximum(t[:, None] - (t_len - 1) + k[None, :], lo[:, None])  # (B, T)
        is_first = local == lo[:, None]
        global_rows = self.ep_start[episode][:, None] + local
        if self.cached:
            obs = self.obs_rows[global_rows]
            prev = self.action_rows[np.maximum(global_rows - 1, 0)]
        else:
            obs, prev = self._read(episode, lo, t, local)
        prev[is_first] = 0  # the action before a first row is unknown; `observe` ignores it
        return History(obs=obs, prev_action=prev, is_first=is_first, episode=episode.copy(), t=t.copy())

    def _read(self, episode: np.ndarray, lo: np.ndarray, t: np.ndarray, local: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """On-demand reads for stores too large to cache: one contiguous slice per start."""
        obs_parts, act_parts = [], []
        for b in range(len(episode)):
            a = int(self.ep_start[episode[b]])
            first = max(int(lo[b]) - 1, 0)  # one more row for the action before the first obs row
            obs = self.store.read_rows(self.obs_var, a + first, a + int(t[b]) + 1)
            act = self._actions(self.store.read_rows("action", a + first, a + int(t[b]) + 1))
            rel = local[b] - first
            obs_parts.append(obs[rel])
            act_parts.append(act[np.maximum(rel - 1, 0)])
        return np.stack(obs_parts), np.stack(act_parts)
