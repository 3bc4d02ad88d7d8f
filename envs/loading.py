"""What a learned env is built from: a world model, the trajectory store it starts from, and user hooks.

Each argument may come as an object or as a name (checkpoint path or MLflow URI, store path or URL,
`module:function`); these functions turn names into objects and check that model and store fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from data_pipeline.hooks import import_function
from data_pipeline.store import TrajectoryStore
from worldmodel.interface import WorldModel

TransitionFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""f(obs, action, next_obs) -> (B,) values, on batched numpy arrays (a reward or termination formula)."""


def load_model(model: WorldModel | str | os.PathLike, device: str | None) -> WorldModel:
    """A WorldModel from an instance, a checkpoint path or an MLflow URI, in eval mode on `device`."""
    if isinstance(model, str | os.PathLike):
        import worldmodel

        model = worldmodel.load(str(model), map_location=device or "cpu")
    if not isinstance(model, WorldModel):
        raise TypeError(f"model: got {type(model).__name__}; expected a WorldModel, a checkpoint path or an "
                        "MLflow model URI (runs:/…, models:/…)")
    if device is not None and model.device != torch.device(device):
        model = model.to(device)
    return model.eval()


def open_store(store: TrajectoryStore | str | os.PathLike) -> TrajectoryStore:
    """An open TrajectoryStore from an instance or a path / URL."""
    if isinstance(store, TrajectoryStore):
        return store
    if isinstance(store, str | os.PathLike):
        return TrajectoryStore.open(str(store))
    raise TypeError(f"store: got {type(store).__name__}; expected a TrajectoryStore or a path / URL to one")


def transition_fn(spec: str | TransitionFn | None) -> TransitionFn | None:
    """A reward / termination formula from a callable or a `module:function` name (None stays None)."""
    if spec is None or callable(spec):
        return spec
    return import_function(spec)
