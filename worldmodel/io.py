"""Loading world models from a file or an MLflow URI, with no code execution.

Model files (written by `ModelBase.save`, worldmodel/base.py) hold only tensors and JSON strings, and
are read with `torch.load(weights_only=True)`, also when they come from MLflow (the checkpoint
artifact is fetched, then loaded the same way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization
from worldmodel.base import FORMAT, ModelBase
from worldmodel.kinds import build_model, config_from_file

MODEL_FILE = "model.pt"  # name of the checkpoint inside an MLflow model or run artifact dir


def resolve_model_file(source: str) -> Path:
    """A local model file for a path, a directory holding `model.pt`, or an MLflow URI."""
    if source.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    else:
        local = Path(source)
    if local.is_dir():
        hits = sorted(local.rglob(MODEL_FILE))
        if not hits:
            raise FileNotFoundError(f"{source}: no {MODEL_FILE} inside (expected a twinworld model)")
        local = hits[0]
    if not local.exists():
        raise FileNotFoundError(f"{source}: no such model file")
    return local


def read_checkpoint(source: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The model file's dict, from a model file or from a Lightning checkpoint of train.py."""
    path = resolve_model_file(source)
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        # A Lightning .ckpt of train.py holds the model file's dict under "twinworld_model".
        if isinstance(data, dict) and isinstance(data.get("twinworld_model"), dict):
            return data["twinworld_model"]
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a twinworld model file (format {found!r}; expected {FORMAT!r})")
    return data


def load(source: str, map_location: str | torch.device = "cpu") -> ModelBase[Any]:
    """Rebuild any world model from its file alone: a path, a Lightning checkpoint of train.py,
    or an MLflow model URI (`runs:/…`, `models:/…`). A config key the model does not know is an error."""
    data = read_checkpoint(source, map_location)
    config = config_from_file(data["model_type"], json.loads(data["config"]), source)
    schema = StoreSchema.from_attrs(json.loads(data["schema"]))
    normalization = Normalization.from_dict(json.loads(data["normalization"]))
    model = build_model(data["model_type"], config, schema, normalization)
    model.load_state_dict(data["state_dict"])
    model.to(map_location)
    model.eval()
    return model
