"""After training: write the model file, evaluate on the test split, and publish to MLflow.

Publishing logs the model file and the resolved config as artifacts, the evaluation as metrics, the
store's path and fingerprint (dataset lineage), and the model as an MLflow pyfunc model registered
in the Model Registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow

from tracking.logger import BufferedMLflowLogger, tracking_uri
from worldmodel.base import ModelBase
from worldmodel.evaluation import evaluate_split, format_table
from worldmodel.io import MODEL_FILE

__all__ = ["evaluate_split", "log_pyfunc", "publish_model"]

# The pyfunc (tracking/pyfunc.py) rebuilds the model through these packages, bundled as code.
PACKAGE_DIRS = [Path(__file__).resolve().parent.parent / name for name in ("worldmodel", "data_pipeline", "tracking")]


def log_pyfunc(model_file: Path, registered_model_name: str | None) -> str:
    """Log the model as an MLflow pyfunc model in the active run; return its URI (registered if named)."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc.py")),
        artifacts={"checkpoint": str(model_file)},
        code_paths=[str(p) for p in PACKAGE_DIRS],
        pip_requirements=["torch==2.13.0", "numpy", "gymnasium", "zarr>=3", "xarray", "pandas"],
        registered_model_name=registered_model_name or None,
    )
    if registered_model_name and info.registered_model_version is not None:
        return f"models:/{registered_model_name}/{info.registered_model_version}"
    return info.model_uri


def publish_model(
    model: ModelBase[Any],
    *,
    datamodule: Any,
    tracker: BufferedMLflowLogger,
    run_dir: Path,
    registered_model_name: str | None,
    resolved_config: str,
    eval_kwargs: dict[str, Any],
) -> dict[str, str]:
    """Save, evaluate, log and register a trained model; return its `checkpoint` and `model_uri`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model_file = run_dir / MODEL_FILE
    model.eval()
    model.save(str(model_file))
    metrics = evaluate_split(model, datamodule, "test", **eval_kwargs)
    if metrics:
        print(format_table(metrics, eval_kwargs["horizons"]))
        tracker.log_metrics({f"test_eval/{k}": v for k, v in metrics.items()})
    tracker.flush()
    (run_dir / "config.yaml").write_text(resolved_config)
    mlflow.set_tracking_uri(tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with mlflow.start_run(run_id=tracker.run_id):
        mlflow.set_tags({"data.store": str(datamodule.hparams.store), "data.fingerprint": datamodule.fingerprint,
                         "model.kind": model.model_type})
        mlflow.log_artifact(str(model_file), artifact_path="checkpoint")
        mlflow.log_artifact(str(run_dir / "config.yaml"), artifact_path="config")
        model_uri = log_pyfunc(model_file, registered_model_name)
    tracker.end_run()
    return {"checkpoint": str(model_file), "model_uri": model_uri}
