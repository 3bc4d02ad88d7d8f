"""The MLflow run of a `train.py fit | validate | test` command: its name, folder, resume and params.

A fit writes its run id to `OUT_DIR/<run name>/mlflow_run_id`; a fit resumed with `--ckpt_path`
finds it there and continues the same MLflow run, so one training is one run however often it resumes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from tracking.lineage import RUN_ID_FILE
from tracking.logger import BufferedMLflowLogger


def run_name(kind: str, store: str, seed: int) -> str:
    """`<kind>-<store name>-s<seed>`, reduced to characters safe in a folder name."""
    text = f"{kind}-{Path(store.rstrip('/')).stem}-s{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


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
