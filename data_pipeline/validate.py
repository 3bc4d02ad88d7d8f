"""Validation of episodes before anything is written.

Every check raises `DataValidationError` naming where the data came from (file or source), the
field (variable or channel), the row, and what was expected. Nothing is written when a check fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema


class DataValidationError(UserError, ValueError):
    """Bad input data: the message names the source, field, row and what was expected."""


def _where(ep: Episode, source: str | None) -> str:
    src = source or ep.source or "<episode>"
    return f"{src}" + (f" (episode {ep.episode_id})" if ep.episode_id else "")


def _first_bad_cell(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first True in a 2-D `mask`."""
    row, col = np.argwhere(mask)[0]
    return int(row), int(col)


def validate_rows(
    schema: StoreSchema,
    *,
    where: str,
    action: np.ndarray,
    reward: np.ndarray,
    obs: np.ndarray | None = None,
    image: np.ndarray | None = None,
    time: np.ndarray | None = None,
    row0: int = 0,
    ends_episode: bool = True,
    prev_time: int | None = None,
) -> None:
    """Check a block of consecutive rows of one episode against the schema.

    `row0` is the block's first row within its episode (so messages name episode rows);
    `ends_episode` says whether the block's last row is the episode's last (whose action and reward
    are ignored); `prev_time` is the time of the row just before the block, so time stays
    strictly increasing across blocks of a streamed episode.
    """
    n = reward.shape[0]
    if reward.ndim != 1:
        raise DataValidationError(f"{where}: field 'reward' has shape {reward.shape}; expected ({n},)")
    body = slice(0, n - 1) if ends_episode else slice(0, n)  # rows whose action and reward count

    if schema.obs_dim:
        if obs is None:
            raise DataValidationError(
                f"{where}: field 'obs' is missing; expected ({n}, {schema.obs_dim}) float32"
            )
        if obs.shape != (n, schema.obs_dim):
            raise DataValidationError(
                f"{where}: field 'obs' has shape {obs.shape}; expected ({n}, {schema.obs_dim}) "
                f"for channels {schema.obs_channels}"
            )
        if not (np.issubdtype(obs.dtype, np.floating) or np.issubdtype(obs.dtype, np.integer)):
            raise DataValidationError(
                f"{where}: field 'obs' has dtype {obs.dtype}; expected floats (stored as float32)"
            )
        # Checked as stored (float32), so a float64 beyond float32's range is caught too.
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(obs.astype(np.float32, copy=False))
        if bad.any():
            row, col = _first_bad_cell(bad)
            raise DataValidationError(
                f"{where}: channel '{schema.obs_channels[col]}' of field 'obs' is {obs[row, col]} at row "
                f"{row0 + row}; expected a finite float32 number (choose a nan_policy in the ingest spec "
                "to mask or fill)"
            )
    elif obs is not None and obs.size:
        raise DataValidationError(
            f"{where}: field 'obs' given but the store has no vector observation channels"
        )

    if schema.image_shape is not None:
        want = (n, *schema.image_shape)
        if image is None or image.shape != want or image.dtype != np.uint8:
            got = None if image is None else f"shape {image.shape} {image.dtype}"
            raise DataValidationError(f"{where}: field 'image' is {got}; expected shape {want} uint8")
    elif image is not None:
        raise DataValidationError(f"{where}: field 'image' given but the store has no image observations")

    if action.shape != (n, schema.action_dim):
        raise DataValidationError(
            f"{where}: field 'action' has shape {action.shape}; expected ({n}, {schema.action_dim}) "
            f"for channels {schema.action_channels}"
        )
    if schema.discrete:
        if not np.issubdtype(action.dtype, np.integer):
            raise DataValidationError(
                f"{where}: field 'action' has dtype {action.dtype}; "
                "expected integers for a Discrete action space"
            )
        n_actions = int(schema.action_space["n"])
        start = int(schema.action_space.get("start", 0))
        values = action[body, 0]
        bad = (values < start) | (values >= start + n_actions)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{where}: channel '{schema.action_channels[0]}' of field 'action' is {values[row]} at row "
                f"{row0 + row}; expected an integer in [{start}, {start + n_actions}) "
                f"(only the episode's last row holds {DISCRETE_FILL})"
            )
    else:
        if not (np.issubdtype(action.dtype, np.floating) or np.issubdtype(action.dtype, np.integer)):
            raise DataValidationError(
                f"{where}: field 'action' has dtype {action.dtype}; expected floats (stored as float32)"
            )
        bad = ~np.isfinite(action[body].astype(np.float32, copy=False))
        if bad.any():
            row, col = _first_bad_cell(bad)
            raise DataValidationError(
                f"{where}: channel '{schema.action_channels[col]}' of field 'action' is "
                f"{action[row, col]} at row {row0 + row}; expected a finite number "
                "(only the episode's last row is NaN)"
            )
    bad = ~np.isfinite(reward[body].astype(np.float32, copy=False))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{where}: field 'reward' is {reward[row]} at row {row0 + row}; expected a finite number "
            "(only the episode's last row is NaN)"
        )

    if time is not None:
        if time.shape != (n,) or not np.issubdtype(time.dtype, np.integer):
            raise DataValidationError(
                f"{where}: field 'time' has shape {time.shape} dtype {time.dtype}; expected ({n},) int64 ns"
            )
        t = time.astype(np.int64) if prev_time is None else np.r_[np.int64(prev_time), time.astype(np.int64)]
        step = np.diff(t)
        if (step <= 0).any():
            i = int(np.flatnonzero(step <= 0)[0])  # t[i] then t[i + 1]
            row = row0 + i + (0 if prev_time is not None else 1)
            kind = "duplicate" if step[i] == 0 else "decreasing"
            raise DataValidationError(
                f"{where}: field 'time' is {kind} at row {row} ({t[i]} then {t[i + 1]} ns); "
                "expected strictly increasing timestamps"
            )


def validate_episode(
    ep: Episode,
    schema: StoreSchema,
    *,
    source: str | None = None,
    min_transitions: int = 1,
    existing_ids: Iterable[str] = (),
) -> None:
    """Check one whole episode against the store schema; raise `DataValidationError` on the first problem."""
    where = _where(ep, source)
    n = ep.num_rows
    if ep.reward.ndim != 1:
        raise DataValidationError(f"{where}: field 'reward' has shape {ep.reward.shape}; expected (rows,)")
    if n - 1 < min_transitions:
        raise DataValidationError(
            f"{where}: episode has {max(n - 1, 0)} transitions ({n} rows); "
            f"expected at least {min_transitions} (min_transitions)"
        )
    for name in ("terminated", "truncated"):
        arr = np.asarray(getattr(ep, name))
        if arr.shape != (n,):
            raise DataValidationError(f"{where}: field '{name}' has shape {arr.shape}; expected ({n},)")
        if arr[:-1].any():
            row = int(np.flatnonzero(arr[:-1])[0])
            raise DataValidationError(
                f"{where}: field '{name}' is set at row {row}; expected it only on the last row ({n - 1})"
            )
    validate_rows(schema, where=where, obs=ep.obs, image=ep.image, action=np.asarray(ep.action),
                  reward=np.asarray(ep.reward), time=None if ep.time is None else np.asarray(ep.time))
    if ep.episode_id is not None and ep.episode_id in set(existing_ids):
        raise DataValidationError(
            f"{where}: episode_id {ep.episode_id!r} is already in the store; expected a new id"
        )


SchemaUse = Literal["append", "model"]

# The fields each use depends on, in the order they are checked (the first difference is reported).
_APPEND_FIELDS = ("obs_channels", "obs_units", "action_channels", "action_units", "image_shape",
                  "observation_space", "action_space", "reward_unit", "dt")


def _fields(schema: StoreSchema, use: SchemaUse) -> list[tuple[str, Any]]:
    """(name, value) of the fields `use` depends on, in the order they are checked."""
    if use == "append":
        return [(name, getattr(schema, name)) for name in _APPEND_FIELDS]
    return [
        ("obs_channels", schema.obs_channels),
        ("action_channels", schema.action_channels),
        ("image_shape", schema.image_shape),
        ("action_space", schema.gym_action_space()),
        ("observation_space shape", schema.gym_observation_space().shape),
    ]


def _same(name: str, a: Any, b: Any) -> bool:
    if name == "dt":
        return abs(a - b) <= 1e-12 * max(1.0, a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return bool(a == b)


def check_schema_compatible(store: StoreSchema, other: StoreSchema, *, use: SchemaUse, where: str) -> None:
    """Refuse `other` where it differs from the store's schema in a field that `use` depends on.

    - `use="append"`: data written into the store (`other` is the incoming data's schema) must match
      it in every field the store records: channel names and units, image shape, both spaces, reward
      unit and dt. A difference is schema drift.
    - `use="model"`: a model trained on data of schema `other` runs on the store when channel names,
      image shape, action space and observation-space shape agree (units and dt may differ).

    Raises DataValidationError (a ValueError) naming `where`, the field, both values and what is expected.
    """
    for (name, a), (_, b) in zip(_fields(store, use), _fields(other, use), strict=True):
        if _same(name, a, b):
            continue
        if use == "model":
            raise DataValidationError(
                f"{where}: the model was trained on {name} {b}, but the store has {a}; "
                "use the store the model was trained on (or one with the same schema)"
            )
        unit = " s" if name == "dt" else ""
        raise DataValidationError(
            f"{where}: schema field '{name}' is {b}{unit}; the store has {a}{unit} (schema drift on append)"
        )
