"""Ingest sensor logs (CSV or Parquet, one file or a glob) into a trajectory store (docs/ingest.md).

    python -m data_pipeline ingest csv "logs/*.csv" --spec configs/ingest/example_spec.yaml --out plant.zarr

A YAML spec maps columns to observation / action / reward channels and says how to put irregular,
multi-rate samples onto the fixed step `dt`. The live stream (`data_pipeline.stream`) applies the
same spec with the same rules (`readings`, `resample_group`) to samples as they arrive.

| module | job |
| --- | --- |
| `spec` | `IngestSpec` and its parts: pydantic models of the YAML spec, cross-field rules as validators |
| `readings` | one home for timestamps → int64 ns, channel ranges and the NaN rules (ingest and stream) |
| `timeline` | messy time axes: the spec's `sort`, `jitter` and `duplicates` rules (ingest and stream) |
| `log` | one CSV / Parquet file into a checked `RawLog` (columns, types, time order, bad readings) |
| `resample` | the log's time axis and `resample_group` (interpolate / hold onto the dt grid) |
| `episodes` | a `RawLog` into episodes: split at gaps, grid, minimum length |
| `files` | `ingest_file`: files into a store, all validated before anything is written |
"""

from data_pipeline.ingest.episodes import episodes_of
from data_pipeline.ingest.files import FORMATS, expand_inputs, file_sha256, ingest_file
from data_pipeline.ingest.log import RawLog, read_log
from data_pipeline.ingest.readings import TIME_UNITS, ChannelRanges, ReadingError
from data_pipeline.ingest.resample import resample_group, time_axis
from data_pipeline.ingest.spec import (
    DUPLICATE_RULES,
    GROUPS,
    NAN_POLICIES,
    RESAMPLE_METHODS,
    ActionSpec,
    ChannelSpec,
    GroupSpec,
    IngestSpec,
    RewardSpec,
    SpecError,
    TimestampSpec,
)

__all__ = [
    "DUPLICATE_RULES",
    "FORMATS",
    "GROUPS",
    "NAN_POLICIES",
    "RESAMPLE_METHODS",
    "TIME_UNITS",
    "ActionSpec",
    "ChannelRanges",
    "ChannelSpec",
    "GroupSpec",
    "IngestSpec",
    "RawLog",
    "ReadingError",
    "RewardSpec",
    "SpecError",
    "TimestampSpec",
    "episodes_of",
    "expand_inputs",
    "file_sha256",
    "ingest_file",
    "read_log",
    "resample_group",
    "time_axis",
]
