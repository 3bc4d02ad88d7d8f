"""`render()` for the learned envs: a plot of each channel over the episode, or the predicted image.

The plot shows the recorded history the episode started from (black) and the imagined steps since
(colour) with a ±2σ band of the model's predictive spread, so a viewer sees where the twin left the
data and how sure it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_ROWS = 4096  # rows kept per sub-env; older imagined rows are dropped beyond this
MAX_PANELS = 18  # channels plotted at most (the first ones)


class Trace:
    """Each sub-env's episode so far (vector observations): recorded history, then imagined rows."""

    def __init__(self, num_envs: int, obs_dim: int, capacity: int = 64) -> None:
        self.obs = np.zeros((num_envs, capacity, obs_dim), np.float32)
        self.std = np.zeros((num_envs, capacity, obs_dim), np.float32)
        self.length = np.zeros(num_envs, np.int64)
        self.real = np.zeros(num_envs, np.int64)  # leading rows that are recorded data
        self.offset = np.zeros(num_envs, np.int64)  # rows dropped from the front (long episodes)
        self.zero = np.zeros(num_envs, np.int64)  # row (counting dropped ones) of the start state

    def _reserve(self, rows: int) -> None:
        cap = self.obs.shape[1]
        if rows <= cap:
            return
        new = max(rows, 2 * cap)
        pad = ((0, 0), (0, new - cap), (0, 0))
        self.obs, self.std = np.pad(self.obs, pad), np.pad(self.std, pad)

    def start(self, index: np.ndarray, obs: np.ndarray, is_first: np.ndarray) -> None:
        """New episodes at `index` from history rows `obs` (B, T, D); leading `is_first` rows are padding
        copies of the first real row (see `envs.starts.History`)."""
        t_len = obs.shape[1]
        self._reserve(t_len)
        # The first real row is the last of the leading run of is_first rows.
        first = np.argmin(np.concatenate([is_first, np.zeros((len(index), 1), bool)], 1), axis=1) - 1
        first = np.maximum(first, 0)
        for b, i in enumerate(index):
            n = t_len - int(first[b])
            self.obs[i, :n] = obs[b, first[b]:]
            self.std[i, :n] = 0.0
            self.length[i] = self.real[i] = n
            self.offset[i] = 0
            self.zero[i] = n - 1

    def append(self, obs: np.ndarray, std: np.ndarray | None, uncertainty: np.ndarray) -> None:
        """One imagined row for every sub-env."""
        full = self.length >= MAX_ROWS
        if full.any():
            drop = MAX_ROWS // 2
            for i in np.flatnonzero(full):
                self.obs[i, : MAX_ROWS - drop] = self.obs[i, drop:MAX_ROWS].copy()
                self.std[i, : MAX_ROWS - drop] = self.std[i, drop:MAX_ROWS].copy()
                self.length[i] -= drop
                self.real[i] = max(int(self.real[i]) - drop, 0)
                self.offset[i] += drop
        self._reserve(int(self.length.max()) + 1)
        rows = np.arange(len(self.length))
        self.obs[rows, self.length] = obs
        self.std[rows, self.length] = 0.0 if std is None else std
        self.length += 1


def _figure_rgb(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_channels(trace: Trace, i: int, channels: list[str], units: list[str], dt: float) -> np.ndarray:
    """An RGB array (H, W, 3) uint8: sub-env `i`'s channels over its episode, time 0 at the start row."""
    from matplotlib.figure import Figure

    n, real = int(trace.length[i]), int(trace.real[i])
    # The start row (last recorded row) is at t = 0; history before it is negative time.
    time = (np.arange(n) + trace.offset[i] - trace.zero[i]) * dt
    shown = min(len(channels), MAX_PANELS)
    cols = min(3, shown)
    rows = math.ceil(shown / cols)
    fig = Figure(figsize=(3.2 * cols, 1.9 * rows + 0.3), dpi=80)
    for c in range(shown):
        ax = fig.add_subplot(rows, cols, c + 1)
        y, s = trace.obs[i, :n, c], trace.std[i, :n, c]
        if real:
            ax.plot(time[:real], y[:real], color="black", lw=1.2, label="recorded")
        sl = slice(max(real - 1, 0), n)  # imagined part, joined to the start row
        ax.fill_between(time[sl], (y - 2 * s)[sl], (y + 2 * s)[sl], color="tab:blue", alpha=0.25, lw=0)
        ax.plot(time[sl], y[sl], color="tab:blue", lw=1.2, label="imagined")
        ax.axvline(0.0, color="grey", lw=0.6, ls=":")
        unit = f" [{units[c]}]" if units[c] else ""
        ax.set_title(f"{channels[c]}{unit}", fontsize=8)
        ax.tick_params(labelsize=6)
    if len(channels) > shown:
        fig.suptitle(f"first {shown} of {len(channels)} channels", fontsize=8)
    fig.tight_layout()
    return _figure_rgb(fig)


def image_frame(image: np.ndarray) -> np.ndarray:
    """An observation image (H, W, C) uint8 as RGB."""
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])
