"""MLflow tracking of a generate.py run: the spec, CSVs and plots as artifacts, outcome probabilities
and calibration as metrics, tags linking the model's run (tracking.lineage) and the source store."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scenarios.spec import ScenarioSpec


def run_metrics(table: pd.DataFrame, calibration: pd.DataFrame) -> dict[str, float]:
    """`outcome/<check>/<scenario>`, `outcome_mean/<check>/<intervention>` and
    `calibration/<metric>/h<step>` from the summary and calibration tables."""
    metrics: dict[str, float] = {}
    for col in [c for c in table.columns if c.startswith("P(") and not c.endswith(":diff")]:
        check = col[2:-1]
        for scenario, p in zip(table["scenario"], table[col], strict=True):
            metrics[f"outcome/{check}/{re.sub(r'[^A-Za-z0-9_./ -]', '_', scenario)}"] = float(p)
        for iv, p in table.groupby("intervention")[col].mean().items():
            metrics[f"outcome_mean/{check}/{iv}"] = float(p)
    for row in calibration.itertuples():
        if row.scenarios > 0:
            for name in ("coverage90", "nrmse", "nrmse_median"):
                metrics[f"calibration/{name}/h{row.horizon}"] = float(getattr(row, name))
    return metrics


def track_run(
    spec: ScenarioSpec,
    *,
    config: str,
    model: str,
    store: str,
    out: str,
    devices: int,
    experiment: str,
    fingerprint: str,
    n_scenarios: int,
    files: dict[str, Path],
    plot_dir: Path | None,
    table: pd.DataFrame,
    calibration: pd.DataFrame,
) -> str:
    """Log the run to MLflow (`MLFLOW_TRACKING_URI`, default sqlite:///mlflow.db); returns the run id."""
    import mlflow
    from mlflow.entities import Metric

    # Imported here: tracking.logger pulls in Lightning, which a run without MLflow never needs.
    from tracking.lineage import lineage_tags
    from tracking.logger import configure_client, tracking_uri

    configure_client()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    tags = {"twinworld.stage": "scenarios", "twinworld.model_uri": model, "data.store": store,
            "data.fingerprint": fingerprint, **lineage_tags(model)}
    metrics = run_metrics(table, calibration)
    with mlflow.start_run(run_name=f"scenarios-{Path(config).stem}-s{spec.seed}", tags=tags) as run:
        mlflow.log_params({"config": config, "model": model, "store": store, "out": out,
                           "seed": spec.seed, "horizon": spec.horizon, "samples": spec.samples,
                           "context": spec.context, "scenarios": n_scenarios, "devices": devices,
                           "interventions": ",".join(i.name for i in spec.interventions)[:6000]})
        mlflow.log_text(spec.text, f"spec/{Path(config).name}")
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="summary")
        if plot_dir is not None:
            mlflow.log_artifacts(str(plot_dir), artifact_path="plots")
        client, now = mlflow.MlflowClient(), int(1000 * time.time())
        rows = [Metric(k, v, now, 0) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(rows), 1000):  # log_batch takes at most 1000 metrics per call
            client.log_batch(run.info.run_id, metrics=rows[i : i + 1000])
        return str(run.info.run_id)
