"""What a writer may put a new store in place of (DESIGN, Trust: nothing is deleted that the user did not name).

Every writer of a store (record, ingest, Minari import, the live stream, generate.py) asks `check_output`
before it creates one. A new store goes where nothing is, or into an empty directory. `--overwrite`
replaces only a twinworld store of the same kind, recognized by the attributes of its root `zarr.json`:

| kind | recognized by |
| --- | --- |
| trajectory | `title: "twinworld trajectory store"` and a `schema_version` |
| scenario | `title: "twinworld scenario store"` (older stores: `layout_version` and `block_scenarios`) |
| scores | `title: "twinworld anomaly scores"` |

Anything else is refused whatever the flag says, with what is there: a plain directory of user files,
a file, a symbolic link (its target may be anything, anywhere), a damaged `zarr.json`, a store of the
other kind. Deleting those is left to the user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from data_pipeline.errors import UserError
from data_pipeline.store.paths import local_path, real_location

StoreKind = Literal["trajectory", "scenario", "scores"]
TITLES: dict[StoreKind, str] = {"trajectory": "twinworld trajectory store", "scenario": "twinworld scenario store",
                                "scores": "twinworld anomaly scores"}
_SHOWN_ENTRIES = 4


class OutputExistsError(UserError, FileExistsError):
    """A writer's output path holds something it may not replace (or may replace only with --overwrite)."""


def kind_of(attrs: Any) -> StoreKind | None:
    """The kind of twinworld store whose root group has these attributes (None: no twinworld store)."""
    if not isinstance(attrs, dict):
        return None
    if attrs.get("title") == TITLES["trajectory"] and "schema_version" in attrs:
        return "trajectory"
    if attrs.get("title") == TITLES["scenario"] or {"layout_version", "block_scenarios"} <= attrs.keys():
        return "scenario"
    if attrs.get("title") == TITLES["scores"]:
        return "scores"
    return None


def kind_in(metadata: bytes) -> StoreKind | None:
    """The store kind a root `zarr.json` declares; None for anything else (damaged JSON, an array, no title)."""
    try:
        meta = json.loads(metadata)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    return kind_of(meta.get("attributes"))


def check_output(path: str | os.PathLike[str], kind: StoreKind, *, overwrite: bool,
                 storage_options: dict[str, Any] | None = None) -> bool:
    """Refuse (OutputExistsError) unless a new store of `kind` may be created at `path`.

    Returns True when `path` holds a store of `kind` that `overwrite` allows replacing, False when
    there is nothing to replace (no such path, or an empty directory). Call it with the writer lock held.
    """
    local = local_path(path)
    if local is None:
        return _check_url(str(path), kind, overwrite, storage_options or {})
    if local.is_symlink():  # Path drops a trailing slash, so `link/` is the link itself here
        raise OutputExistsError(
            f"{path} is a symbolic link (to {os.readlink(local)}); a store is written only where its own "
            f"directory is named: name the target itself or choose another --out"
        )
    if not local.exists():
        return False
    if not local.is_dir():
        raise OutputExistsError(
            f"{path} is a file ({local.stat().st_size} bytes), not a {TITLES[kind]}; choose another --out or "
            "remove the file yourself"
        )
    with os.scandir(local) as it:
        entries = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in it)
    if not entries:
        return False
    meta = local / "zarr.json"
    found = kind_in(meta.read_bytes()) if meta.is_file() and not meta.is_symlink() else None
    return _decide(str(path), kind, found, entries, overwrite)


def check_not_an_input(out: str | os.PathLike[str], inputs: dict[str, str | os.PathLike[str]]) -> None:
    """Refuse an output that is also an input (`inputs`: option name to path), by any spelling: the same
    place, a place inside the input, or a place that holds it. Call it before anything is written."""
    where = real_location(out)
    for option, path in inputs.items():
        source = real_location(path)
        if where == source:
            relation = "is"
        elif where.startswith(source.rstrip("/") + "/"):
            relation = "lies inside"
        elif source.startswith(where.rstrip("/") + "/"):
            relation = "holds"
        else:
            continue
        raise OutputExistsError(
            f"--out {out} {relation} the input {option} {path} (real paths {where} and {source}); writing "
            "there would destroy the input, so nothing was written: choose another --out"
        )


def _check_url(url: str, kind: StoreKind, overwrite: bool, storage_options: dict[str, Any]) -> bool:
    """`check_output` for object storage (no links there; a "file" is an object at the store's own key)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url, **storage_options)
    if not fs.exists(root):
        return False
    if fs.isfile(root):
        raise OutputExistsError(f"{url} is an object, not a {TITLES[kind]}; choose another --out")
    entries = sorted(Path(str(p)).name + ("/" if fs.isdir(p) else "") for p in fs.ls(root, detail=False))
    if not entries:
        return False
    try:
        found = kind_in(fs.cat_file(f"{root.rstrip('/')}/zarr.json"))
    except (FileNotFoundError, OSError):
        found = None
    return _decide(url, kind, found, entries, overwrite)


def _decide(path: str, kind: StoreKind, found: StoreKind | None, entries: list[str], overwrite: bool) -> bool:
    """Replace a store of the same kind with `overwrite`; refuse everything else, saying what is there."""
    if found == kind:
        if overwrite:
            return True
        raise OutputExistsError(
            f"{path} already exists; pass --overwrite (overwrite=True) to replace this {TITLES[kind]}, or "
            "choose another path"
        )
    if found is not None:
        what = f"it is a {TITLES[found]}"
    else:
        shown = ", ".join(entries[:_SHOWN_ENTRIES]) + (", …" if len(entries) > _SHOWN_ENTRIES else "")
        what = f"it holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}"
    rule = f"--overwrite replaces only a {TITLES[kind]}; " if overwrite else ""
    raise OutputExistsError(
        f"{path} is not a {TITLES[kind]} ({what}); {rule}nothing was changed: choose another --out or remove "
        "it yourself"
    )
