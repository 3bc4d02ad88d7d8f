"""Lineage: which MLflow run produced a model. The one home of the lookup, used by generate.py,
the policy trainer and the live twin to tag their runs with `twinworld.model_run_id`."""

from __future__ import annotations

import re
from pathlib import Path

RUN_ID_FILE = "mlflow_run_id"  # train.py writes it beside the model file it saves


class LineageError(RuntimeError):
    """The model URI names an MLflow object that the tracking server could not resolve."""


def model_run_id(source: str) -> str | None:
    """The MLflow run that produced a model, or None where the model names none.

    `runs:/ID/…` gives ID; `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME` (latest) and
    `models:/m-…` (a logged model) ask the tracking server; a model file or directory gives the
    `mlflow_run_id` file train.py leaves beside it. A failed server lookup raises LineageError naming the
    URI and the cause; the caller decides whether a missing lineage tag is worth stopping for.
    """
    match = re.match(r"runs:/([^/]+)", source)
    if match:
        return match[1]
    if source.startswith("models:/"):
        return _registry_run_id(source)
    path = Path(source)
    marker = (path if path.is_dir() else path.parent) / RUN_ID_FILE
    if not marker.exists():
        return None
    return marker.read_text().strip() or None


def _registry_run_id(source: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tracking.logger import tracking_uri

    client = MlflowClient(tracking_uri())
    ref = source[len("models:/") :].strip("/").split("/")
    try:
        if "@" in ref[0]:
            name, alias = ref[0].split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        if len(ref) > 1 and ref[1].isdigit():
            return client.get_model_version(ref[0], ref[1]).run_id
        if ref[0].startswith("m-"):
            return client.get_logged_model(ref[0]).source_run_id
        versions = client.search_model_versions(f"name='{ref[0]}'")
        return max(versions, key=lambda v: int(v.version)).run_id if versions else None
    except (MlflowException, OSError) as err:
        raise LineageError(f"cannot resolve the MLflow run of {source}: {type(err).__name__}: {err}") from err


def lineage_tags(source: str) -> dict[str, str]:
    """The `twinworld.model_run_id` tag for a run that uses the model `source` ({} where it names no run).

    A failed lookup is printed as a warning and the tag left out: lineage is a tag, and losing it must
    not lose the scenarios or the policy that the run produced.
    """
    import sys

    try:
        run_id = model_run_id(source)
    except LineageError as err:
        print(f"warning: {err}; the run is not tagged with the model's run", file=sys.stderr)
        return {}
    return {"twinworld.model_run_id": run_id} if run_id else {}
