"""The anomaly score store: one row of scores per mirrored instant, in a Zarr v3 group beside the data.

    scores = ScoreStore(ScoreStore.path_for("plant.zarr"), channels, attrs)   # plant.anomaly.zarr
    scores.append(time_ns, step)          # buffered
    scores.flush()                        # written (at each commit of the data), then published
    xr.open_zarr("plant.anomaly.zarr")    # any xarray user reads it
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError

from data_pipeline.store.codecs import compressors, consolidate
from data_pipeline.store.lock import acquire_writer_lock, release_writer_lock
from data_pipeline.store.overwrite import TITLES, OutputExistsError, check_output, kind_of
from data_pipeline.store.paths import zarr_path
from twin.anomaly import ScoreStep


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
        try:
            existing: zarr.Group | None = zarr.open_group(zarr_path(path), mode="r+", zarr_format=3,
                                                          use_consolidated=False)
        except (FileNotFoundError, GroupNotFoundError):
            existing = None
        # Ours: titled so, or (written before the title) holding exactly the score arrays.
        if existing is not None and kind_of(dict(existing.attrs)) != "scores" \
                and not {*self.DATA_VARS, "time"} <= set(existing.array_keys()):
            release_writer_lock(self._lock)
            raise OutputExistsError(f"{path} holds a Zarr group that is not twinworld anomaly scores; scores "
                                    "are written only into their own store: move it or choose another store")
        if existing is not None:
            self.group = existing
            stored = [str(c) for c in np.asarray(self._array("obs_channel")[:])]
            if stored != list(obs_channels):
                raise ValueError(f"{path}: scores are for channels {stored}; this twin scores {obs_channels}")
            n = min(self._array(v).shape[0] for v in (*self.DATA_VARS, "time"))
            for v in (*self.DATA_VARS, "time"):  # cut the rows of a flush a crash interrupted
                self._array(v).resize((n, *self._array(v).shape[1:]))
        else:
            try:  # never over user files: only into nothing, or an empty directory
                check_output(path, "scores", overwrite=False)
            except OutputExistsError:
                release_writer_lock(self._lock)
                raise
            self.group = zarr.open_group(zarr_path(path), mode="w", zarr_format=3,
                                         attributes={"title": TITLES["scores"]})
            self._create(obs_channels)
        self.group.attrs.update(attrs)
        times = self._array("time")
        self.last_time: int | None = int(np.asarray(times[-1])) if times.shape[0] else None
        self._pending: list[tuple[int, float, float, np.ndarray, bool]] = []
        self._publish()

    def _array(self, name: str) -> zarr.Array:
        """One of the group's arrays (a group member that is not an array means the path holds something else)."""
        arr = self.group[name]
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{self.path}: {name!r} is a group; expected an array (is this a score store?)")
        return arr

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
        self._array("time").attrs["unit"] = "ns since 1970-01-01T00:00:00Z (int64, no datetime encoding)"
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
            self._array(name).append(data[name], axis=0)
        self._array("time").append(np.asarray(cols[0], np.int64), axis=0)  # last: it makes the rows visible
        self._publish()

    def _publish(self) -> None:
        consolidate(self.group)

    def close(self) -> None:
        """Flush and release the writer lock."""
        self.flush()
        release_writer_lock(self._lock)
        self._lock = None

