"""Diffusion world model: accuracy, coverage and cost of sampler / noise-scale variants, side by side (issue 18).

    python benchmarks/bench_diffusion.py                                   # 40 Pendulum episodes, all variants
    python benchmarks/bench_diffusion.py --steps 200 --variants shipped --max-windows 16 --no-record  # quick

Every variant starts from the shipped config (configs/pendulum/diffusion.yaml: its model config, lr,
window and batch size) with a few fields overridden, trains the same fixed number of AdamW steps on the
same random-policy Pendulum-v1 store (a fixed budget, not early stopping, so the rows compare like with
like), is calibrated on the val split as `train.py fit` does, and is scored on the test split: NRMSE at
h1 / h10 / h50, coverage90 at h10 / h50 (after calibration), the cost of one imagined step at batch 1024.
References in the same run: the ensemble (small preset, bench_models' recipe, same steps) for accuracy
and an RSSM (small preset; its step cost does not depend on its weights) for cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_models import step_cost  # noqa: E402
from bench_models import train as train_reference  # noqa: E402
from common import machine, record_rows, table_header, table_row  # noqa: E402  (benchmarks/common.py)

from data_pipeline.windows.datamodule import WindowDataModule  # noqa: E402
from tracking.publish import evaluate_split  # noqa: E402
from worldmodel.calibration import calibrate_split  # noqa: E402
from worldmodel.diffusion import DiffusionWorldModel  # noqa: E402
from worldmodel.lightning import WorldModelModule  # noqa: E402

SHIPPED = ROOT / "configs" / "pendulum" / "diffusion.yaml"

# Overrides of the shipped config. "before": the shipped config of the base commit (σ_data 0.5 against a
# target whose std is ~0.18, DIAMOND's training σ, 4 spread samples), with the noise embedding recomputed per
# row, as the base commit did. "previous": the config shipped before the per-channel target scale (σ_data 0.2
# for the z-scored residual, history 4). Variants in UNSCALED keep `target_scale` at 1 (the residual denoised
# in z-scores, as before the scale existed), so their rows reproduce the ones recorded then; the others
# denoise the residual in units of its per-channel std. "lr" overrides the config's learning rate.
PREVIOUS = dict(sigma_data=0.2, train_sigma_mean=-1.8, num_steps=2, sigma_min=0.05, spread_samples=2, history=4)
SCALED = dict(num_steps=2, spread_samples=2, history=4)
VARIANTS: dict[str, dict[str, Any]] = {
    "before": dict(sigma_data=0.5, train_sigma_mean=-0.4, num_steps=3, sigma_min=2e-3, spread_samples=4, history=4),
    "shipped": {},
    "previous": PREVIOUS,
    "edm-s1": dict(sigma_data=0.2, train_sigma_mean=-1.8, num_steps=3, sigma_min=2e-3, spread_samples=1, history=4),
    "edm-2step-s1": {**PREVIOUS, "spread_samples": 1},
    "edm-2step-s2": PREVIOUS,
    "edm-s2": dict(sigma_data=0.2, train_sigma_mean=-1.8, num_steps=3, sigma_min=2e-3, spread_samples=2, history=4),
    "scaled-s02": PREVIOUS,
    "scaled-s1": dict(SCALED, sigma_data=1.0, train_sigma_mean=-0.2, sigma_min=0.25),
    "scaled-s1-edm": dict(SCALED, sigma_data=1.0, train_sigma_mean=-0.5, sigma_min=0.25),
    "scaled-s1-edm-lr1e3": dict(SCALED, sigma_data=1.0, train_sigma_mean=-0.5, sigma_min=0.25, lr=1e-3),
    "scaled-s05-edm": dict(SCALED, sigma_data=0.5, train_sigma_mean=-1.2, sigma_min=0.125),
    "scaled-s05-edm-smin005": dict(SCALED, sigma_data=0.5, train_sigma_mean=-1.2, sigma_min=0.05),
}

UNSCALED = {"before", "previous", "edm-s1", "edm-2step-s1", "edm-2step-s2", "edm-s2"}

COLUMNS = ("date", "machine", "command", "model", "config", "train steps", "nRMSE h1", "h10", "h50",
           "h10 / ensemble h10", "cov90 h10 before → after calibration", "cov90 h50 before → after",
           "ms/step @1024", "step / RSSM step")


def shipped() -> dict[str, Any]:
    with open(SHIPPED) as f:
        return yaml.safe_load(f)


class Unscaled(L.Callback):
    """Keep the diffusion model's residual target in z-scores: `target_scale` 1, marked as measured."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        assert isinstance(model, DiffusionWorldModel) and model.scaled
        model.target_scale.fill_(1.0)
        model.target_scale_set.fill_(True)


def train_variant(store: str, steps: int, overrides: dict[str, Any], unscaled: bool = False
                  ) -> tuple[WorldModelModule, WindowDataModule]:
    spec = shipped()
    config = {**spec["model"]["config"], **{k: v for k, v in overrides.items() if k != "lr"}}
    data = spec["data"]
    dm = WindowDataModule(store=store, window=data["window"], batch_size=data["batch_size"], batches_per_epoch=steps,
                          val_batches=4)
    module = WorldModelModule(kind="diffusion", config=config, lr=overrides.get("lr", spec["model"]["lr"]), seed=0)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=4,
                        gradient_clip_val=spec["trainer"]["gradient_clip_val"],
                        callbacks=[Unscaled()] if unscaled else None)
    trainer.fit(module, dm)
    return module, dm


def per_row_noise_embedding(model: DiffusionWorldModel) -> None:
    """Make the denoiser embed the noise level once per row again (the base commit's cost), in place."""
    forward = model.denoiser.forward

    def expanded(x: torch.Tensor, c_noise: torch.Tensor, history: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return forward(x, c_noise.expand(x.shape[0]), history, cond)

    setattr(model.denoiser, "forward", expanded)  # noqa: B010  (an instance attribute shadows the method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/bench_calibration_Pendulum-v1.zarr")
    parser.add_argument("--episodes", type=int, default=40, help="Pendulum episodes recorded when the store is new")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-windows", type=int, default=64, help="test / val windows scored")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (Path(args.store) / "zarr.json").exists():
        subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes",
                        str(args.episodes), "--seed", "0", "--out", args.store, "--no-progress"], check=True)
    kwargs: dict[str, Any] = dict(context=8, horizons=(1, 10, 50), samples=20, max_windows=args.max_windows)

    rssm, _, _ = train_reference("rssm", args.store, 1, "small")
    rssm_cost = step_cost(rssm)
    ensemble, edm, _ = train_reference("ensemble", args.store, args.steps, "small")
    assert ensemble.model is not None
    ens = evaluate_split(ensemble.model.eval(), edm, "test", **kwargs) or {}
    print(f"rssm step {rssm_cost * 1e3:.1f} ms; ensemble h10 {ens['nrmse/h10']:.4f}")
    results: list[tuple[str, str, dict[str, float], dict[str, float], float]] = [
        ("ensemble", "small", ens, ens, step_cost(ensemble))]
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        module, dm = train_variant(args.store, args.steps, VARIANTS[name], unscaled=name in UNSCALED)
        model = module.model
        assert isinstance(model, DiffusionWorldModel)
        model.eval()
        if name == "before":
            per_row_noise_embedding(model)
        before = evaluate_split(model, dm, "test", **kwargs) or {}
        fit = calibrate_split(model, dm, "val", **kwargs)
        after = (evaluate_split(model, dm, "test", **kwargs) or {}) if model.calibrated else before
        cost = step_cost(module)
        overrides = ", ".join([f"{k} {v}" for k, v in VARIANTS[name].items()]
                              + (["residual unscaled"] if name in UNSCALED else [])) or "as shipped"
        print(f"== {name} ({overrides}): h10 {before['nrmse/h10']:.4f}, cov90 h10 {before['coverage90/h10']:.2f} "
              f"→ {after['coverage90/h10']:.2f}, {cost * 1e3:.1f} ms/step; {fit.report()} "
              f"({time.perf_counter() - t0:.0f} s)")
        results.append((name, overrides, before, after or before, cost))

    where = machine(f"torch {torch.__version__}, 1 thread")
    command = "python benchmarks/bench_diffusion.py " + " ".join(sys.argv[1:])
    h10_ref = ens["nrmse/h10"]
    lines = [[str(date.today()), where, command, "ensemble" if name == "ensemble" else f"diffusion {name}",
              overrides, str(args.steps), f"{a['nrmse/h1']:.4f}", f"{a['nrmse/h10']:.4f}", f"{a['nrmse/h50']:.3f}",
              f"{a['nrmse/h10'] / h10_ref:.2f}",
              f"{b['coverage90/h10']:.2f} → {a['coverage90/h10']:.2f}",
              f"{b['coverage90/h50']:.2f} → {a['coverage90/h50']:.2f}",
              f"{cost * 1e3:.1f}", f"{cost / rssm_cost:.2f}"]
             for name, overrides, b, a, cost in results]
    print(table_header(COLUMNS) + "".join(table_row(line) for line in lines))
    if not args.no_record:
        record_rows(ROOT / "BENCHMARKS.md", "bench_diffusion", lines, COLUMNS)


if __name__ == "__main__":
    main()
