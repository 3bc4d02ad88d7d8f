"""Which episodes a model sees: the deterministic train / val / test split, and the episodes long enough
to hold a window."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore

SPLITS = ("train", "val", "test")


def _unit_hash(seed: int, episode_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, episode_id) alone, so appends never move an episode."""
    digest = hashlib.blake2b(f"{seed}:{episode_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_episodes(
    store: TrajectoryStore, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Episode positions of the train / val / test split, each sorted.

    Each episode's split is decided by a hash of (seed, episode id): the same seed gives the same split,
    and appending episodes never moves an old one. Guarantees at least one train episode and, with 3 or
    more episodes, at least one val and one test episode (unless its fraction is 0); those few forced
    moves (only where a split would otherwise be empty) take the episode whose hash lies closest to it.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise InputError(
            f"split: val_fraction={val_fraction} and test_fraction={test_fraction} must be ≥ 0 and sum to < 1"
        )
    ids = store.episodes()["id"].tolist()
    u = np.array([_unit_hash(seed, i) for i in ids])
    # 0 train, 1 val, 2 test
    label = np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))

    # Where each split's hash interval lies: a forced move takes the episode whose hash is closest to it.
    bounds = {0: (test_fraction + val_fraction, 1.0), 1: (test_fraction, test_fraction + val_fraction),
              2: (0.0, test_fraction)}

    def move(target: int) -> None:
        # Donors keep at least one episode, except when filling an empty train split.
        floor = 0 if target == 0 else 1
        donors = [k for k in (0, 1, 2) if k != target and (label == k).sum() > floor]
        members = np.flatnonzero(np.isin(label, donors))
        lo, hi = bounds[target]
        distance = np.maximum(np.maximum(lo - u[members], u[members] - hi), 0.0)
        label[members[np.argmin(distance)]] = target

    if len(ids) and not (label == 0).any():
        move(0)
    for target, fraction in ((1, val_fraction), (2, test_fraction)):
        if len(ids) >= 3 and fraction > 0 and not (label == target).any():
            move(target)
    return {name: np.flatnonzero(label == k).astype(np.int64) for k, name in enumerate(SPLITS)}


_warned_short: set[tuple[str, int]] = set()


def usable_episodes(
    store: TrajectoryStore, positions: Sequence[int] | np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) rows of the given episodes that hold at least one window; warns once about the rest."""
    table = store.episodes()
    pos = np.asarray(positions, np.int64)
    starts = table["start"].to_numpy(np.int64)[pos]
    lengths = table["length"].to_numpy(np.int64)[pos]
    keep = lengths >= window
    if not keep.all() and (store.path, window) not in _warned_short:
        _warned_short.add((store.path, window))
        warnings.warn(
            f"{store.path}: {int((~keep).sum())} of {len(pos)} episodes have fewer than window={window} rows "
            f"(shortest {int(lengths.min())}); they are skipped",
            stacklevel=2,
        )
    return starts[keep], lengths[keep]


def fitting_window(lengths: Sequence[int] | np.ndarray, window: int, coverage: float, floor: int = 2) -> int:
    """The requested `window`, shortened where needed so that at least `coverage` of the episodes (given by
    their lengths in rows) hold one; never below `floor` rows (one transition needs 2), nor above `window`.

    A store of short episodes (a balancing task under a random policy: 5–26 rows) would otherwise lose most
    of its data to a window tuned on long ones; a store whose episodes all hold the window keeps it as is.
    `coverage=0` turns the adaptation off.
    """
    n = np.sort(np.asarray(lengths, np.int64))
    if coverage <= 0 or not len(n):
        return window
    # The longest w with #(lengths >= w) >= ceil(coverage * len): the k-th shortest, k = len - ceil(...).
    k = len(n) - int(np.ceil(min(coverage, 1.0) * len(n) - 1e-9))
    return int(max(min(window, int(n[k])), min(floor, window)))


@dataclass(frozen=True)
class DataUsage:
    """How much of a split training actually sees: the episodes holding a window and their transitions."""

    episodes_used: int
    episodes: int
    transitions_used: int
    transitions: int
    window: int
    """Rows per training window, after `fitting_window`."""
    requested_window: int

    @classmethod
    def of(cls, lengths: np.ndarray, window: int, requested_window: int) -> DataUsage:
        """Usage of the episodes with these lengths (rows; an episode of n rows holds n - 1 transitions)."""
        kept = lengths >= window
        return cls(int(kept.sum()), len(lengths), int((lengths[kept] - 1).sum()), int((lengths - 1).sum()),
                   window, requested_window)

    @property
    def fraction(self) -> float:
        return self.transitions_used / self.transitions if self.transitions else 0.0

    def __str__(self) -> str:
        """`93% of transitions (412/443 episodes)`, with the window when it was shortened."""
        text = (f"{self.fraction:.0%} of transitions ({self.episodes_used}/{self.episodes} episodes)")
        if self.window != self.requested_window:
            text += f"; window {self.window} rows, shortened from {self.requested_window} to fit the episodes"
        return text
