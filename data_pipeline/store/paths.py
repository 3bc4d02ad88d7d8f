"""Where a store lives: the one home of the local-path test and of the writer-lock file's name."""

from __future__ import annotations

from pathlib import Path


def is_url(path: str) -> bool:
    """True for object-storage and other fsspec URLs (s3://, gs://, memory://); False for local paths
    and file:// URLs."""
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str) -> Path | None:
    """The local filesystem path of a store (file:// stripped), or None for a URL."""
    path = str(path)
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    return None if is_url(path) else Path(path)


def zarr_path(path: str) -> str:
    """What zarr opens: a plain path for local stores (file:// too), so zarr's LocalStore, whose
    writes are atomic renames, is used; the URL otherwise."""
    local = local_path(path)
    return str(local) if local is not None else str(path)


def lock_path_of(path: str) -> Path | None:
    """The writer-lock file of a local store: `.NAME.writer-lock` beside it (None for URLs)."""
    local = local_path(str(path))
    if local is None:
        return None
    local = local.resolve()
    return local.parent / f".{local.name}.writer-lock"
