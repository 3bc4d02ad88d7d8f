"""Where a store lives: the one home of the local-path test, of a store's real location and of the
writer-lock file's name.

A local store can be spelled many ways: `x`, `./x`, `x/`, an absolute path, a symlink to it, a path
through a symlinked folder, `file://…` and `local://…` (fsspec's two names for its local filesystem).
Every spelling must reach the same lock, so the lock's name derives from the real path.
"""

from __future__ import annotations

import os
from pathlib import Path

from fsspec.core import split_protocol, strip_protocol
from fsspec.implementations.local import LocalFileSystem

LOCAL_PROTOCOLS = tuple(LocalFileSystem.protocol)  # ("file", "local"): fsspec's names for the local disk


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for object-storage and other fsspec URLs (s3://, gs://, memory://); False for local paths
    and for URLs of fsspec's local filesystem (file://, local://)."""
    return local_path(path) is None


def local_path(path: str | os.PathLike[str]) -> Path | None:
    """The local filesystem path of a store (file:// and local:// stripped, as fsspec does), or None for a URL."""
    protocol, _ = split_protocol(str(path))
    if protocol is None:
        return Path(path)
    if protocol in LOCAL_PROTOCOLS:
        return Path(strip_protocol(str(path)))
    return None


def zarr_path(path: str | os.PathLike[str]) -> str:
    """What zarr opens: a plain path for local stores (file:// too), so zarr's LocalStore, whose
    writes are atomic renames, is used; the URL otherwise."""
    local = local_path(path)
    return str(local) if local is not None else str(path)


def real_location(path: str | os.PathLike[str]) -> str:
    """One name per store, whatever its spelling: the real path of a local store (symlinks, `..`, `./`
    and trailing slashes resolved), the URL without a trailing slash otherwise."""
    local = local_path(path)
    if local is None:
        return str(path).rstrip("/")
    return str(local.resolve())


def lock_path_of(path: str | os.PathLike[str]) -> Path | None:
    """The writer-lock file of a local store: `.NAME.writer-lock` beside its real path (None for URLs), the
    same file for every spelling of the store."""
    if local_path(path) is None:
        return None
    real = Path(real_location(path))
    return real.parent / f".{real.name}.writer-lock"
