"""The MLflow run of a `train.py fit | validate | test` command: its name, folder, resume and params.

Names come from the data, never from a config: the experiment is the store's system (`cartpole`) and the
registered model `<system>-<kind>` (`cartpole-ensemble`), so one config trains any system and each model
registers under its own system's name (`default_names`); an explicit name on the command line wins.

A fit writes its run id to `OUT_DIR/<run name>/mlflow_run_id`; a fit resumed with `--ckpt_path`
finds it there and continues the same MLflow run, so one training is one run however often it resumes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from data_pipeline.store import TrajectoryStore
from tracking.lineage import RUN_ID_FILE
from tracking.logger import BufferedMLflowLogger


def run_name(kind: str, store: str, seed: int) -> str:
    """`<kind>-<store name>-s<seed>`, reduced to characters safe in a folder name."""
    text = f"{kind}-{Path(store.rstrip('/')).stem}-s{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _slug(text: str) -> str:
    """Lower case, characters other than letters, digits, `_`, `.` and `-` made `-` (MLflow and folder safe)."""
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.")


def system_name(store: str, storage_options: dict[str, Any] | None = None) -> str:
    """The system a store holds: its `system` attr if present, else the Gymnasium id it was recorded from
    without the version (`CartPole-v1` -> `cartpole`), else its folder name without `.zarr`.

    A store that cannot be opened (missing, unreachable) is named by its folder; the command that reads
    it reports the problem with its own message."""
    try:
        with TrajectoryStore.open(store, storage_options=storage_options) as opened:
            attr = opened.attrs.get("system")
            env_id = opened.schema.provenance.get("env_id")
    except Exception:  # noqa: BLE001 - naming never fails a command; reading the store reports it
        attr = env_id = None
    recorded = re.sub(r"-v\d+$", "", env_id.split("/")[-1]) if isinstance(env_id, str) else ""
    folder = Path(store.rstrip("/")).name.removesuffix(".zarr")
    for name in (attr if isinstance(attr, str) else "", recorded, folder):
        if _slug(name):
            return _slug(name)
    return "twinworld"


@dataclass(frozen=True)
class ModelNames:
    """The MLflow experiment and Model Registry name of a model trained on a store."""

    experiment: str
    registered_model: str


def default_names(kind: str, store: str, storage_options: dict[str, Any] | None = None) -> ModelNames:
    """`ModelNames(<system>, <system>-<kind>)` from the store (`system_name`); kind is e.g. `ensemble`, `policy`."""
    system = system_name(store, storage_options)
    return ModelNames(experiment=system, registered_model=f"{system}-{_slug(kind)}")


def open_tracker(run_dir: Path, *, command: str, experiment: str, name: str, resume: bool, store: str
                 ) -> BufferedMLflowLogger:
    """The MLflow logger of a command; `resume` continues the run whose id the folder holds (if any)."""
    run_id_file = run_dir / RUN_ID_FILE
    resuming = resume and run_id_file.exists()
    tracker = BufferedMLflowLogger(
        experiment_name=experiment,
        run_name=f"{command}-{name}",
        run_id=run_id_file.read_text().strip() if resuming else None,
        tags={"twinworld.stage": "model", "twinworld.command": command, "data.store": store},
    )
    run_id = tracker.active_run_id  # None on DDP ranks other than 0
    if command == "fit" and run_id is not None:
        run_id_file.write_text(run_id)
    return tracker


def fit_params(datamodule: Any, kind: str, model_config: Any) -> dict[str, Any]:
    """The params a fit logs: the store (path, fingerprint, split sizes), the model kind and its config."""
    config = asdict(model_config) if is_dataclass(model_config) and not isinstance(model_config, type) else {}
    return {
        "data.store": str(datamodule.hparams.store), "data.fingerprint": datamodule.fingerprint,
        "data.train_episodes": len(datamodule.split["train"]), "data.val_episodes": len(datamodule.split["val"]),
        "data.test_episodes": len(datamodule.split["test"]), "model.kind": kind,
        **{f"model.config.{k}": v for k, v in config.items()},
    }
