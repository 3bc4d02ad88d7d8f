"""`ingest_file`: CSV / Parquet files (a path or a glob) into a trajectory store, all or nothing.

    python -m data_pipeline ingest csv "logs/*.csv" --spec configs/ingest/example_spec.yaml --out plant.zarr

Everything is read, resampled and validated before the store is created or opened for writing, so
a bad input leaves the store untouched. All episodes go to the store in one `append` call.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time as _time
from typing import Any

import pandas as pd
import pyarrow as pa
import xarray as xr

from data_pipeline.errors import InputError
from data_pipeline.ingest.episodes import episodes_of
from data_pipeline.ingest.log import read_log
from data_pipeline.ingest.spec import IngestSpec
from data_pipeline.schema import Episode
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import DataValidationError, check_schema_compatible, validate_episode

FORMATS = ("csv", "parquet")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file (input logs and spec files, kept in the store's provenance)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def expand_inputs(pattern: str) -> list[str]:
    """The files a path or glob names, sorted; raise if there are none."""
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise FileNotFoundError(f"{pattern}: no such file (or the glob matches no files)")
    return files


def ingest_file(
    fmt: str,
    input: str,
    spec_path: str | os.PathLike[str] | None,
    out: str,
    *,
    overwrite: bool = False,
    append: bool = False,
) -> TrajectoryStore:
    """Ingest the CSV/Parquet file(s) `input` (a path or glob) into the store `out`, as `spec_path` says.

    Returns the store, open for writing (close it when done). Raises `DataValidationError` (bad
    data) or `SpecError` (bad spec) before anything is written, so `out` is untouched on error.
    With `append=True` the store must exist and have the same schema (channels, units, spaces, dt).
    """
    if fmt not in FORMATS:
        raise InputError(f"ingest format {fmt!r}; expected one of {FORMATS}")
    if spec_path is None:
        raise InputError(f"ingest {fmt} needs a spec: --spec SPEC.yaml (see docs/ingest.md)")
    if overwrite and append:
        raise InputError("choose either overwrite or append, not both")
    spec = IngestSpec.from_yaml(spec_path)
    files = expand_inputs(input)
    provenance: dict[str, Any] = {
        "source": "ingest",
        "format": fmt,
        "files": [{"path": f, "sha256": file_sha256(f)} for f in files],
        "spec_path": str(spec_path),
        "spec_sha256": file_sha256(spec_path),
        "spec": spec.raw,
        "ingested_at_ns": _time.time_ns(),
        "versions": {"pandas": pd.__version__, "xarray": xr.__version__, "pyarrow": pa.__version__},
    }
    if spec.reward is None:
        provenance["reward"] = "no reward column in the spec: reward stored as 0"
    schema = spec.schema(provenance)

    episodes: list[Episode] = []
    for f in files:
        episodes.extend(episodes_of(read_log(f, fmt, spec), spec, schema))
    if not episodes:
        raise DataValidationError(
            f"{input}: no episode of at least {spec.min_transitions} transitions (min_transitions) "
            "in the input"
        )

    existing: set[str] = set()
    if append:
        with TrajectoryStore.open(out, mode="r") as stored:
            check_schema_compatible(stored.schema, schema, use="append", where=f"{input} (spec {spec_path})")
            existing = set(stored.episodes()["id"])
    for ep in episodes:
        validate_episode(ep, schema, min_transitions=spec.min_transitions, existing_ids=existing)
        if ep.episode_id is not None:  # always set by episodes_of
            existing.add(ep.episode_id)

    if append:
        store = TrajectoryStore.open(out, mode="a")
    else:
        store = TrajectoryStore.create(out, schema, overwrite=overwrite)
    store.append(episodes, min_transitions=spec.min_transitions)
    if append:
        history = list(store.attrs.get("ingest_appends", []))
        store.set_attr("ingest_appends", [*history, {k: provenance[k] for k in ("files", "spec_sha256",
                                                                                 "ingested_at_ns")}])
    return store
