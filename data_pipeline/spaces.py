"""Gymnasium spaces to and from plain JSON-able dicts, for store attrs and model files.

Only what a physical system's log needs: Box (vector or image) and Discrete.
Infinite bounds are written as the strings "inf" / "-inf" so the result is strict JSON.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import numpy as np
from gymnasium import spaces


def _encode_bounds(values: np.ndarray) -> list:
    return [v if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in values.astype(float).ravel().tolist()]


def _decode_bounds(values: list, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    flat = np.array([float(v) for v in values], dtype=np.float64)
    return flat.reshape(shape).astype(dtype)


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A JSON-able description of a Box or Discrete space."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _encode_bounds(space.low),
            "high": _encode_bounds(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise TypeError(
        f"unsupported space {type(space).__name__}: twinworld stores Box (vector or image) and Discrete spaces"
    )


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    """Rebuild a space written by `space_to_dict`."""
    kind = data.get("type")
    if kind == "Box":
        shape = tuple(int(s) for s in data["shape"])
        dtype = np.dtype(data["dtype"])
        return spaces.Box(
            low=_decode_bounds(data["low"], shape, dtype),
            high=_decode_bounds(data["high"], shape, dtype),
            shape=shape,
            dtype=dtype,
        )
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    raise ValueError(f"space description has type {kind!r}; expected 'Box' or 'Discrete'")


def is_image_space(space: spaces.Space) -> TypeGuard[spaces.Box]:
    """True for uint8 Box spaces shaped (height, width, channels)."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
