"""Zarr codecs and metadata consolidation: the one home for every Zarr group twinworld writes
(trajectory stores, scenario stores, anomaly score stores)."""

from __future__ import annotations

import warnings
from typing import Any

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec


def compressors(level: int = 3) -> dict[str, Any]:
    """`create_array` keyword arguments: zstd at `level`, then a crc32c checksum, so a damaged chunk
    is detected on read instead of decoding to wrong numbers."""
    return {"compressors": [ZstdCodec(level=level), Crc32cCodec()]}


def consolidate(group: zarr.Group) -> None:
    """Consolidate the group's metadata in one atomic file write, so a plain `xarray.open_zarr`
    reader sees a complete snapshot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(group.store, zarr_format=3)
