"""Validation of episodes before anything is written.

Every check raises `DataValidationError` naming where the data came from (file or source), the
field (variable or channel), the row, and what was expected. Nothing is written when a check fails.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema


class DataValidationError(ValueError):
    """Bad input data: the message names the source, field, row and what was expected."""


def _where(ep: Episode, source: str | None) -> str:
    src = source or ep.source or "<episode>"
    return f"{src}" + (f" (episode {ep.episode_id})" if ep.episode_id else "")


def _first_bad_row(mask: np.ndarray) -> tuple[int, int | None]:
    """Row (and column, for 2-D masks) of the first True in `mask`."""
    idx = np.argwhere(mask)[0]
    return int(idx[0]), (int(idx[1]) if idx.shape[0] > 1 else None)


def validate_episode(
    ep: Episode,
    schema: StoreSchema,
    *,
    source: str | None = None,
    min_transitions: int = 1,
    existing_ids: Iterable[str] = (),
) -> None:
    """Check one episode against the store schema; raise `DataValidationError` on the first problem."""
    where = _where(ep, source)
    n = ep.num_rows
    if ep.reward.ndim != 1:
        raise DataValidationError(f"{where}: field 'reward' has shape {ep.reward.shape}; expected (rows,)")
    if n - 1 < min_transitions:
        raise DataValidationError(
            f"{where}: episode has {n - 1} transitions; expected at least {min_transitions} (min_transitions)"
        )
    for name in ("terminated", "truncated"):
        arr = getattr(ep, name)
        if arr.shape != (n,):
            raise DataValidationError(f"{where}: field '{name}' has shape {arr.shape}; expected ({n},)")
        if np.asarray(arr[:-1]).any():
            row = int(np.flatnonzero(arr[:-1])[0])
            raise DataValidationError(
                f"{where}: field '{name}' is set at row {row}; expected it only on the last row ({n - 1})"
            )

    if schema.obs_dim:
        if ep.obs is None:
            raise DataValidationError(f"{where}: field 'obs' is missing; expected ({n}, {schema.obs_dim}) float32")
        if ep.obs.shape != (n, schema.obs_dim):
            raise DataValidationError(
                f"{where}: field 'obs' has shape {ep.obs.shape}; expected ({n}, {schema.obs_dim}) "
                f"for channels {schema.obs_channels}"
            )
        if not np.issubdtype(ep.obs.dtype, np.floating):
            raise DataValidationError(f"{where}: field 'obs' has dtype {ep.obs.dtype}; expected a float dtype")
        bad = ~np.isfinite(ep.obs)
        if bad.any():
            row, col = _first_bad_row(bad)
            raise DataValidationError(
                f"{where}: channel '{schema.obs_channels[col]}' of field 'obs' is {ep.obs[row, col]} at row "
                f"{row}; expected a finite number (choose a nan_policy in the ingest spec to mask or fill)"
            )
    elif ep.obs is not None and ep.obs.size:
        raise DataValidationError(f"{where}: field 'obs' given but the store has no vector observation channels")

    if schema.image_shape is not None:
        want = (n, *schema.image_shape)
        if ep.image is None or ep.image.shape != want or ep.image.dtype != np.uint8:
            got = None if ep.image is None else (ep.image.shape, str(ep.image.dtype))
            raise DataValidationError(f"{where}: field 'image' is {got}; expected shape {want} uint8")
    elif ep.image is not None:
        raise DataValidationError(f"{where}: field 'image' given but the store has no image observations")

    act = ep.action
    if act.shape != (n, schema.action_dim):
        raise DataValidationError(
            f"{where}: field 'action' has shape {act.shape}; expected ({n}, {schema.action_dim}) "
            f"for channels {schema.action_channels}"
        )
    if schema.discrete:
        if not np.issubdtype(act.dtype, np.integer):
            raise DataValidationError(
                f"{where}: field 'action' has dtype {act.dtype}; expected integers for a Discrete action space"
            )
        n_actions = int(schema.action_space["n"])
        start = int(schema.action_space.get("start", 0))
        body = act[:-1, 0]
        bad = (body < start) | (body >= start + n_actions)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{where}: field 'action' is {body[row]} at row {row}; expected an integer in "
                f"[{start}, {start + n_actions}) (the last row holds {DISCRETE_FILL})"
            )
    else:
        bad = ~np.isfinite(act[:-1])
        if bad.any():
            row, col = _first_bad_row(bad)
            raise DataValidationError(
                f"{where}: channel '{schema.action_channels[col]}' of field 'action' is {act[row, col]} at "
                f"row {row}; expected a finite number (only the last row is NaN)"
            )
    bad = ~np.isfinite(ep.reward[:-1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{where}: field 'reward' is {ep.reward[row]} at row {row}; expected a finite number "
            "(only the last row is NaN)"
        )

    if ep.time is not None:
        if ep.time.shape != (n,) or not np.issubdtype(ep.time.dtype, np.integer):
            raise DataValidationError(
                f"{where}: field 'time' has shape {ep.time.shape} dtype {ep.time.dtype}; expected ({n},) int64 ns"
            )
        step = np.diff(ep.time)
        if (step <= 0).any():
            row = int(np.flatnonzero(step <= 0)[0]) + 1
            kind = "duplicate" if step[row - 1] == 0 else "decreasing"
            raise DataValidationError(
                f"{where}: field 'time' is {kind} at row {row} ({ep.time[row - 1]} then {ep.time[row]} ns); "
                "expected strictly increasing timestamps"
            )

    if ep.episode_id is not None and ep.episode_id in set(existing_ids):
        raise DataValidationError(f"{where}: episode_id {ep.episode_id!r} is already in the store; expected a new id")


def check_schema_matches(stored: StoreSchema, incoming: StoreSchema, *, source: str) -> None:
    """Refuse an append whose schema differs from the store's (schema drift)."""
    for name in ("obs_channels", "obs_units", "action_channels", "action_units", "image_shape"):
        a, b = getattr(stored, name), getattr(incoming, name)
        if (list(a) if a is not None else None) != (list(b) if b is not None else None):
            raise DataValidationError(
                f"{source}: schema field '{name}' is {b}; the store has {a} (schema drift on append)"
            )
    if stored.action_space != incoming.action_space:
        raise DataValidationError(
            f"{source}: action space {incoming.action_space} differs from the store's {stored.action_space}"
        )
    if abs(stored.dt - incoming.dt) > 1e-12 * max(1.0, stored.dt):
        raise DataValidationError(f"{source}: dt is {incoming.dt} s; the store has {stored.dt} s")
