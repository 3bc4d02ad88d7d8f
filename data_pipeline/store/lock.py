"""The one-writer lock of a store (DESIGN, Trust): an OS file lock beside the store, through `filelock`.

The lock is an flock, so the OS frees it when its holder dies, however it dies. Object storage has no
lock: one writer by convention (docs/data-format.md).
"""

from __future__ import annotations

import os

from filelock import FileLock, Timeout

from data_pipeline.errors import UserError
from data_pipeline.store.paths import lock_path_of


class StoreLockedError(UserError, RuntimeError):
    """Another process (or another handle in this one) holds the store's writer lock."""


class WriterLock:
    """The held writer lock of one local store; `release()` frees it (idempotent)."""

    def __init__(self, store_path: str, lock: FileLock) -> None:
        self.store_path = store_path
        self._lock: FileLock | None = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None


def _write_pid(fd: int) -> None:
    """Record the holder's pid in the lock file, so a refused writer can be told who holds it."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def acquire_writer_lock(path: str) -> WriterLock | None:
    """Take the writer lock of the store at `path` without waiting; None for object storage.

    Raises StoreLockedError naming the store and the lock file when another writer holds it.
    """
    lock_path = lock_path_of(path)
    if lock_path is None:
        return None
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0, is_singleton=False, thread_local=False, preserve_lock_file=True,
                    on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = lock_path.read_text(errors="replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise StoreLockedError(
            f"{path} is open for writing by another process (pid {holder}, lock file {lock_path}); "
            "a store has one writer: close it or wait for that process to end"
        ) from None
    return WriterLock(str(path), lock)


def release_writer_lock(lock: WriterLock | None) -> None:
    """Release a lock from `acquire_writer_lock` (None is a no-op)."""
    if lock is not None:
        lock.release()
