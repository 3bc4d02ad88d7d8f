"""Loading world models and checkpoints from a file, a URL or an MLflow URI, with no code execution.

Model files (written by `ModelBase.save`, worldmodel/base.py) hold only tensors and JSON strings, and
Lightning checkpoints of train.py only tensors and plain values. Every checkpoint twinworld reads goes
through `load_checkpoint_file`, which passes `weights_only=True` to `torch.load` explicitly (so neither
torch's default nor `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` can turn unpickling of code back on), also for
files from a URL or from MLflow (fetched first, then loaded the same way). A file that needs more is
refused with a `CheckpointError` that names it, says why and what to do.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from data_pipeline.errors import UserError
from data_pipeline.schema import StoreSchema
from data_pipeline.store.paths import is_url, local_path
from data_pipeline.windows.batch import Normalization
from worldmodel.base import FORMAT, ModelBase
from worldmodel.kinds import build_model, config_from_file

MODEL_FILE = "model.pt"  # name of the checkpoint inside an MLflow model or run artifact dir
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


class CheckpointError(UserError, ValueError):
    """A checkpoint or model file that cannot be loaded safely, or is not what was expected."""


def checkpoint_error(source: str | Path, err: BaseException) -> CheckpointError:
    """The error for a file that `torch.load(weights_only=True)` refused: names it, says why and what to do."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) and found:
        return CheckpointError(
            f"{source}: refused to load this checkpoint: it holds Python objects that run code when unpickled (it "
            f"names {found[1]}). twinworld loads checkpoints with torch.load(weights_only=True), which accepts "
            "tensors, numbers, strings and containers of them only. Use a checkpoint written by train.py "
            "(OUT_DIR/<run>/last.ckpt or model.pt); if you trust this file and its author, load it in Python with "
            "weights_only=False yourself and torch.save its tensors and plain values only.")
    detail = text.rsplit("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0][:200]
    return CheckpointError(f"{source}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail}); "
                           "expected a file written by torch.save, e.g. a train.py last.ckpt or model.pt")


def load_checkpoint_file(source: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)` of a local path, a file:// URL or any fsspec URL (http(s)://, s3://, …).

    A URL is copied to a temporary file first (no cache: the same name from another place is never
    mistaken for it). Raises CheckpointError for a file that would need unpickling of code or is no checkpoint.
    """
    local = local_path(str(source))
    if local is not None:
        return _torch_load(local, source, map_location)
    import fsspec

    with tempfile.TemporaryDirectory(prefix="twinworld-ckpt-") as tmp:
        copy = Path(tmp) / "checkpoint"
        try:
            with fsspec.open(str(source), "rb") as remote, copy.open("wb") as out:
                shutil.copyfileobj(remote, out, 16 << 20)
        except FileNotFoundError as err:
            raise CheckpointError(f"{source}: no such checkpoint ({err})") from err
        return _torch_load(copy, source, map_location)


def _torch_load(path: Path, source: str | Path, map_location: Any) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises UnpicklingError, KeyError, RuntimeError… for files it refuses
        raise checkpoint_error(source, err) from err


def resolve_model_file(source: str) -> Path:
    """A local model file for a path, a directory holding `model.pt`, or an MLflow URI."""
    if source.startswith(MLFLOW_SCHEMES):
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
    """The model file's dict, from a model file or a Lightning checkpoint of train.py: a path, a URL or an
    MLflow URI. Loaded with `weights_only=True` (see `load_checkpoint_file`)."""
    if is_url(source) and not source.startswith(MLFLOW_SCHEMES):
        path: str | Path = source
    else:
        path = resolve_model_file(source)
    data = load_checkpoint_file(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        # A Lightning .ckpt of train.py holds the model file's dict under "twinworld_model".
        if isinstance(data, dict) and isinstance(data.get("twinworld_model"), dict):
            return data["twinworld_model"]
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a twinworld model file (format {found!r}; expected {FORMAT!r})")
    return data


def load(source: str, map_location: str | torch.device = "cpu") -> ModelBase[Any]:
    """Rebuild any world model from its file alone: a path, a Lightning checkpoint of train.py,
    or an MLflow model URI (`runs:/…`, `models:/…`). A config key the model does not know is an error."""
    data = read_checkpoint(source, map_location)
    try:
        config = config_from_file(data["model_type"], json.loads(data["config"]), source)
        schema = StoreSchema.from_attrs(json.loads(data["schema"]))
        normalization = Normalization.from_dict(json.loads(data["normalization"]))
        model = build_model(data["model_type"], config, schema, normalization)
        model.load_state_dict(data["state_dict"])
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as err:  # a damaged or crafted file
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{source}: damaged or incomplete model file ({type(err).__name__}: {detail}); "
                              "expected a model.pt written by train.py (worldmodel.save)") from err
    model.to(map_location)
    model.eval()
    return model
