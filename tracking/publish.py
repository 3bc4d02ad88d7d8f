"""After training: calibrate the model's bands, write the model file, evaluate on the test split, and publish
to MLflow; or publish later.

Publishing logs the model file and the resolved config as artifacts, the evaluation as metrics, the
store's path and fingerprint (dataset lineage), and the model as an MLflow pyfunc model registered
in the Model Registry.

Everything local comes first: the model file, `config.yaml` and `publish.json` (what to publish, where,
under which run) are in the run folder before the tracking server is asked for anything. The server's
part is retried with a backoff for a bounded time; a server that stays away costs no file, and

    python -m tracking.publish RUNS/<run name>

publishes later what the fit could not (undelivered metrics from the spool included) and marks the run
FINISHED. Run twice, it publishes once: a registered model version is recorded in `publish.json` as soon
as it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mlflow

from data_pipeline.errors import UserError, run_cli
from data_pipeline.store.files import atomic_write
from tracking.logger import BufferedMLflowLogger
from worldmodel.base import ModelBase
from worldmodel.calibration import calibrate_split
from worldmodel.evaluation import evaluate_split, explain_evaluation
from worldmodel.io import MODEL_FILE

__all__ = ["EXIT_PENDING", "PUBLISH_FILE", "PublishPending", "PublishRequest", "evaluate_split", "log_pyfunc",
           "publish_model", "publish_run_dir"]

# The pyfunc (tracking/pyfunc.py) rebuilds the model through these packages, bundled as code.
PACKAGE_DIRS = [Path(__file__).resolve().parent.parent / name for name in ("worldmodel", "data_pipeline", "tracking")]
PUBLISH_FILE = "publish.json"
DEFAULT_TIMEOUT_S = 120.0
EXIT_PENDING = 75  # sysexits.h EX_TEMPFAIL: trained and saved, not published; retry the publishing, not the fit

T = TypeVar("T")


class PublishPending(UserError):
    """The tracking server could not be reached in time; the run folder holds everything to publish later."""

    def __init__(self, run_dir: Path, reason: str) -> None:
        self.run_dir, self.reason = run_dir, reason
        super().__init__(f"{run_dir}: not published ({reason}); the model file and the config are kept there. "
                         f"Publish later with: {publish_command(run_dir)}")


@dataclass
class PublishRequest:
    """`publish.json`: what a fit publishes and where; `model_uri` is set once the model is logged."""

    run_id: str
    tracking_uri: str
    registered_model_name: str | None
    tags: dict[str, str]
    spool_dir: str
    model_uri: str | None = None
    published: bool = False
    attempts: list[str] = field(default_factory=list)  # why earlier attempts failed, newest last

    @classmethod
    def read(cls, run_dir: Path) -> PublishRequest:
        path = run_dir / PUBLISH_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {PUBLISH_FILE} (expected the run folder of a `train.py fit`, "
                            "OUT_DIR/<run name>, which has model.pt, config.yaml and publish.json)")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: not a publish request of train.py ({err})") from err

    def write(self, run_dir: Path) -> None:
        atomic_write(run_dir / PUBLISH_FILE, lambda tmp: tmp.write_text(json.dumps(asdict(self), indent=2)))


def publish_command(run_dir: Path) -> str:
    return f"python -m tracking.publish {run_dir}"


def absolute_uri(uri: str) -> str:
    """A tracking URI that means the same from any folder: `sqlite:///mlflow.db` becomes absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


def retry(attempt: Callable[[], T], *, timeout_s: float, what: str, first_wait_s: float = 2.0,
          max_wait_s: float = 30.0) -> T:
    """`attempt()` until it succeeds or `timeout_s` has passed, waiting 2, 4, 8… (≤ `max_wait_s`) seconds
    between tries; the last error is raised. Any exception counts: a tracking server fails in many ways."""
    deadline = time.monotonic() + timeout_s
    wait = first_wait_s
    while True:
        try:
            return attempt()
        except Exception as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            pause = min(wait, max_wait_s, left)
            print(f"mlflow: {what} failed ({type(err).__name__}: {str(err)[:200]}); retrying in {pause:.0f} s",
                  file=sys.stderr)
            time.sleep(pause)
            wait *= 2


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
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, str]:
    """Calibrate (on the validation split), save, evaluate, log and register a trained model; return its
    `checkpoint` and `model_uri`.

    Raises PublishPending (after `timeout_s` of retries) when the tracking server is away; the files stay.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    model_file = run_dir / MODEL_FILE
    model.eval()
    # Calibrated on the validation split before the model file is written, so the file carries it and the
    # test evaluation below measures it on held-out episodes.
    calibration = calibrate_split(model, datamodule, "val", **eval_kwargs)
    print(calibration.report())
    if calibration.after:
        tracker.log_metrics(calibration.metrics())
    model.save(str(model_file))
    evaluation = explain_evaluation(model, datamodule, "test", **eval_kwargs)
    print(evaluation.report())  # the table, and which horizons were dropped; or why evaluation was skipped
    if evaluation.metrics:
        tracker.log_metrics({f"test_eval/{k}": v for k, v in evaluation.metrics.items()})  # spooled on disk too
    from worldmodel.hybrid import HybridWorldModel

    if isinstance(model, HybridWorldModel):  # what the engineer learns: identified parameters, residual fraction
        print(model.describe_text())
        tracker.log_hyperparams(model.describe_params())
        tracker.log_metrics(model.describe_metrics())
    (run_dir / "config.yaml").write_text(resolved_config)
    PublishRequest(
        run_id=tracker.run_id, tracking_uri=absolute_uri(tracker.tracking_uri),
        registered_model_name=registered_model_name or None, spool_dir=str(tracker.spool_dir),
        tags={"data.store": str(datamodule.hparams.store), "data.fingerprint": datamodule.fingerprint,
              "model.kind": model.model_type},
    ).write(run_dir)
    return {"checkpoint": str(model_file), "model_uri": publish_run_dir(run_dir, tracker=tracker, timeout_s=timeout_s)}


def publish_run_dir(run_dir: Path, *, tracker: BufferedMLflowLogger | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S, tracking_uri: str | None = None) -> str:
    """Publish what `run_dir/publish.json` names (metrics left in the spool, tags, artifacts, the pyfunc
    model, the registry) and mark the run FINISHED; return the model URI. Raises PublishPending."""
    request = PublishRequest.read(run_dir)
    if request.published and request.model_uri:
        return request.model_uri
    uri = tracking_uri or request.tracking_uri
    if tracker is None:  # a later process: resume the run's logger, which queues the spool's metrics again
        tracker = BufferedMLflowLogger(run_id=request.run_id, spool_dir=request.spool_dir, tracking_uri=uri,
                                       finalize_timeout_s=0.0)
    tracker.finalize_timeout_s = 0.0  # the retries are ours
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def attempt() -> str:
        _ = tracker.active_run_id  # a resumed logger queues the spool's metrics on first use
        if not tracker.flush():
            raise ConnectionError(f"metrics not delivered: {tracker.last_error}")
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=request.run_id):
            mlflow.set_tags(request.tags)
            mlflow.log_artifact(str(run_dir / MODEL_FILE), artifact_path="checkpoint")
            mlflow.log_artifact(str(run_dir / "config.yaml"), artifact_path="config")
            if request.model_uri is None:  # logged once, also when a later step fails
                request.model_uri = log_pyfunc(run_dir / MODEL_FILE, request.registered_model_name)
                request.write(run_dir)
        tracker.end_run()
        return request.model_uri

    try:
        model_uri = retry(attempt, timeout_s=timeout_s, what=f"publishing {run_dir} to {uri}")
    except Exception as err:
        request.attempts.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {type(err).__name__}: {str(err)[:300]}")
        request.write(run_dir)
        raise PublishPending(run_dir, f"tracking server {uri} unreachable: {type(err).__name__}") from err
    request.published = True
    request.write(run_dir)
    return model_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracking.publish", epilog=f"Exit codes: 0 published, 1 bad run folder, {EXIT_PENDING} tracking "
                                                  "server still unreachable (nothing lost; run it again later).",
        description="Publish a trained model that `train.py fit` could not publish (tracking server away): its "
                    "metrics, model file, config and pyfunc model to the run it trained under, registered under "
                    "the name the fit was given; then mark the run FINISHED. Publishing twice publishes once.")
    parser.add_argument("run_dir", type=Path, help="the fit's run folder, OUT_DIR/<run name> (holds publish.json)")
    parser.add_argument("--timeout_s", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to keep retrying an unreachable tracking server (default: %(default)s)")
    parser.add_argument("--tracking_uri", default=None,
                        help="the tracking server, if it moved (default: the one the fit used, from publish.json)")
    args = parser.parse_args(argv)

    def run() -> int:
        try:
            model_uri = publish_run_dir(args.run_dir, timeout_s=args.timeout_s, tracking_uri=args.tracking_uri)
        except PublishPending as err:
            print(f"python -m tracking.publish: {err}", file=sys.stderr)
            return EXIT_PENDING
        print(f"model_uri: {model_uri}")
        return 0

    return run_cli(run, "python -m tracking.publish")


if __name__ == "__main__":
    sys.exit(main())
