"""Train, validate and test world models; train intervention policies in the learned environment.

    python train.py fit --config configs/pendulum/ensemble.yaml --data.store p.zarr
    python train.py fit --config configs/pendulum/ensemble.yaml --data.store p.zarr --ckpt_path last
    python train.py validate --config configs/pendulum/rssm.yaml --data.store p.zarr --ckpt_path CKPT
    python train.py test --config configs/pendulum/rssm.yaml --data.store p.zarr --ckpt_path CKPT
    python train.py policy --config configs/pendulum/policy.yaml --model MODEL

`fit`/`validate`/`test` are LightningCLI: every key of the YAML is also a flag (`--model.lr 3e-4`,
`--trainer.max_epochs 5`, `--trainer.accelerator gpu --trainer.precision bf16-mixed`,
`--trainer.devices 2 --trainer.strategy ddp`, `--checkpoint.every_n_train_steps 500`), and `--help`
lists them all. Model dimensions come from the store. Runs are tracked in MLflow (`MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`).
`fit` ends by printing `model_uri: …`, `checkpoint: …` (the self-describing model file) and
`lightning_checkpoint: …` (for `--ckpt_path`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from data_pipeline.datamodule import WindowDataModule
from tracking.logger import BufferedMLflowLogger
from worldmodel.lightning import WorldModelModule


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class TwinCLI(LightningCLI):
    """LightningCLI with twinworld's tracking, checkpoint layout and the end-of-fit model logging."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--mlflow.experiment", default="twinworld", help="MLflow experiment name")
        parser.add_argument("--mlflow.registered_model_name", default="twinworld-worldmodel",
                            help="Model Registry name the trained model is registered under ('' to skip)")
        parser.add_argument("--mlflow.run_name", default=None, help="MLflow run name (default: kind-store-seed)")
        parser.add_argument("--out_dir", default="runs",
                            help="where checkpoints go: OUT_DIR/<run name>/ (resume finds last.ckpt there)")
        # Always on, whatever --trainer.callbacks holds (resume needs last.ckpt); `--checkpoint.every_n_train_steps`.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 50,
                             "checkpoint.save_top_k": 1, "checkpoint.monitor": "val/loss", "checkpoint.mode": "min"})

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        store = str(cfg.data.store or "")
        name = cfg.mlflow.run_name or _slug(f"{cfg.model.kind}-{Path(store.rstrip('/')).stem}-s{cfg.model.seed}")
        self.run_name = name
        self.run_dir = Path(cfg.out_dir) / name
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_id_file = self.run_dir / "mlflow_run_id"
        resuming = self.subcommand == "fit" and cfg.get("ckpt_path") and run_id_file.exists()
        self.tracker = BufferedMLflowLogger(
            experiment_name=cfg.mlflow.experiment,
            run_name=f"{self.subcommand}-{self.run_name}",
            run_id=run_id_file.read_text().strip() if resuming else None,
            tags={"twinworld.stage": "model", "twinworld.command": self.subcommand,
                  "data.store": str(cfg.data.store)},
        )
        if self.subcommand == "fit" and self.tracker.run_id is not None:  # None on DDP ranks other than 0
            run_id_file.write_text(self.tracker.run_id)
        trainer = super().instantiate_trainer(**kwargs)
        trainer.loggers = [self.tracker]
        for cb in trainer.checkpoint_callbacks:
            if cb.dirpath is None:
                cb.dirpath = str(self.run_dir)
        return trainer

    def _resolved_config(self) -> str:
        """The resolved config as YAML, `data.storage_options` values masked (they may hold credentials)."""
        config = self.config.clone()
        cfg = config[self.subcommand] if self.subcommand else config
        if cfg.data.get("storage_options"):
            cfg.data.storage_options = {key: "***" for key in cfg.data.storage_options}
        return self.parser.dump(config, skip_none=False)

    def before_fit(self) -> None:
        dm = self.datamodule
        dm.prepare()
        self.tracker.log_hyperparams({"config": self._resolved_config()[:5900]})
        self.tracker.log_hyperparams({
            "data.store": str(dm.hparams.store), "data.fingerprint": dm.fingerprint,
            "data.train_episodes": len(dm.split["train"]), "data.val_episodes": len(dm.split["val"]),
            "data.test_episodes": len(dm.split["test"]), "model.kind": self.model.kind,
            **{f"model.config.{k}": v for k, v in vars(self.model.model_config).items()},
        })

    def after_fit(self) -> None:
        from tracking.publish import publish_model

        if not self.trainer.is_global_zero:  # under DDP, rank 0 alone evaluates, logs and registers the model
            return
        cfg = self.config["fit"]
        outputs = publish_model(
            self.model.model,
            datamodule=self.datamodule,
            tracker=self.tracker,
            run_dir=self.run_dir,
            registered_model_name=cfg.mlflow.registered_model_name,
            resolved_config=self._resolved_config(),
            eval_kwargs={"context": self.model.hparams.eval_context,
                         "horizons": tuple(self.model.hparams.eval_horizons),
                         "samples": self.model.hparams.eval_samples,
                         "max_windows": self.model.hparams.eval_windows},
        )
        last = self.trainer.checkpoint_callback.last_model_path if self.trainer.checkpoint_callback else ""
        if self.trainer.is_global_zero:
            print(f"model_uri: {outputs['model_uri']}")
            print(f"checkpoint: {outputs['checkpoint']}")
            if last:
                print(f"lightning_checkpoint: {last}")
            print(f"run_id: {self.tracker.run_id}")

    def after_validate(self) -> None:
        self.tracker.end_run()

    def after_test(self) -> None:
        self.tracker.end_run()


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] == "policy":
        from policies.cli import main as policy_main

        policy_main(given[1:])
        return
    TwinCLI(
        WorldModelModule,
        WindowDataModule,
        args=argv,  # None: LightningCLI reads sys.argv itself
        seed_everything_default=0,
        save_config_callback=None,  # the resolved config goes to MLflow and the run folder instead
        trainer_defaults={
            "log_every_n_steps": 10,
            "logger": False,  # replaced by the MLflow tracker in instantiate_trainer
        },
    )


if __name__ == "__main__":
    main()
