"""`train.py fit|validate|test`: LightningCLI over the world-model module and the window DataModule, with
MLflow tracking, the run-folder checkpoint layout, checkpoints read with `weights_only=True`, preemption,
the thread choice, names from the store, and the end-of-fit model publishing. `train.py` is its entry
point; the options are documented by `python train.py fit --help`."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from tracking.runs import default_names, fit_params, open_tracker, run_name
from worldmodel.io import checkpoint_error
from worldmodel.kinds import ConfigError, config_fields_help, resolve_config
from worldmodel.lightning import BestWeights, Preemption, SafeCheckpointIO
from worldmodel.threads import Threads, apply_threads, parse_threads


class HelpFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of group descriptions, so the model.config field list reads one field a line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "    ")
                         for line in text.splitlines())


def _cpu_processes(trainer: Any) -> int:
    """Processes of a CPU run on this node (`--trainer.devices N` on CPU: N DDP ranks share the cores)."""
    devices = trainer.get("devices") if hasattr(trainer, "get") else None
    on_cpu = trainer.get("accelerator") == "cpu" if hasattr(trainer, "get") else False
    return devices if on_cpu and isinstance(devices, int) and devices > 1 else 1


class TwinCLI(LightningCLI):
    """LightningCLI with twinworld's tracking, checkpoint layout and the end-of-fit model publishing."""

    exit_code = 0

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--mlflow.experiment", type=str | None, default=None,
                            help="MLflow experiment name (default: the store's system, e.g. cartpole)")
        parser.add_argument("--mlflow.registered_model_name", type=str | None, default=None,
                            help="Model Registry name the trained model is registered under ('' to skip; "
                                 "default: <system>-<kind> from the store, e.g. cartpole-ensemble)")
        parser.add_argument("--threads", type=Threads, default="auto",
                            help="torch CPU threads: a number, or auto (the CPUs this process may use: affinity, "
                                 "cgroup quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS; one for small models)")
        parser.add_argument("--mlflow.run_name", default=None, help="MLflow run name (default: kind-store-seed)")
        parser.add_argument("--mlflow.publish_timeout_s", type=float, default=120.0,
                            help="seconds the end of fit keeps retrying an unreachable tracking server (metrics, "
                                 "model, registry) before it keeps the files and prints how to publish later")
        parser.add_argument("--out_dir", default="runs",
                            help="where checkpoints go: OUT_DIR/<run name>/ (resume finds last.ckpt there)")
        # Always on, whatever --trainer.callbacks holds (resume needs last.ckpt); `--checkpoint.every_n_train_steps`.
        # The best weights have their own checkpoint (best.ckpt, saved at validation: `instantiate_trainer`).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 50,
                             "checkpoint.save_top_k": 0})
        # The budget follows the data: epochs over the train split (--data.batches_per_epoch), stopped when the
        # validation loss stops improving, bounded by --trainer.max_steps / max_epochs / max_time (docs/training.md).
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.mode": "min",
                             "early_stopping.patience": 5, "early_stopping.strict": False})
        parser.add_argument_group("model.config: the fields of each model.kind (set only those that differ "
                                  "from the preset)", description=config_fields_help())

    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a local `--ckpt_path`'s hyperparameters with torch.load(weights_only=True); a file
        # it refuses is reported as a user error naming it, not as torch's traceback.
        try:
            super()._parse_ckpt_path()
        except Exception as err:
            if isinstance(err, OSError):
                raise
            raise checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), err) from err

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        if cfg.get("weights_only") is False:
            self.parser.error("--weights_only false: twinworld reads checkpoints with weights_only=True only "
                              "(a checkpoint that needs more could run code; see docs/cluster.md)")
        if "weights_only" in cfg:
            cfg.weights_only = True  # Lightning's own argument, passed explicitly (SafeCheckpointIO enforces it)
        try:  # a misspelt or mistyped model.config key is a usage error, before anything is built
            resolve_config(cfg.model.kind, cfg.model.config)
        except ConfigError as err:
            self.parser.error(str(err))
        preset = cfg.model.config.get("preset") if cfg.model.config else None
        apply_threads(parse_threads(cfg.threads), kind=cfg.model.kind, preset=preset,
                      processes=_cpu_processes(cfg.trainer))
        if cfg.mlflow.experiment is None or cfg.mlflow.registered_model_name is None:
            names = default_names(cfg.model.kind, str(cfg.data.store or ""), cfg.data.get("storage_options"))
            cfg.mlflow.experiment = cfg.mlflow.experiment or names.experiment
            if cfg.mlflow.registered_model_name is None:
                cfg.mlflow.registered_model_name = names.registered_model
        self.run_name = cfg.mlflow.run_name or run_name(cfg.model.kind, str(cfg.data.store or ""), cfg.model.seed)
        self.run_dir = Path(cfg.out_dir) / self.run_name
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self._cfg()
        self.tracker = open_tracker(self.run_dir, command=str(self.subcommand), experiment=cfg.mlflow.experiment,
                                    name=self.run_name, resume=self.subcommand == "fit" and bool(cfg.get("ckpt_path")),
                                    store=str(cfg.data.store))
        trainer = super().instantiate_trainer(**kwargs)
        trainer.loggers = [self.tracker]
        # SIGTERM / SIGUSR1: save last.ckpt and exit 128 + signal. The connector sets `callbacks`; Trainer does
        # not declare it.
        trainer.callbacks.append(Preemption())  # type: ignore[attr-defined]
        # Every checkpoint load goes through worldmodel.io (weights_only=True), local or URL; a user's own
        # CheckpointIO plugin is kept (it still receives weights_only=True).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(self.run_dir)
        # best.ckpt: the weights of the lowest val/loss, saved right after that validation; the fit ends on them.
        # Appended after --checkpoint, which stays `trainer.checkpoint_callback` (last.ckpt, resume).
        best = ModelCheckpoint(dirpath=str(self.run_dir), filename="best", monitor="val/loss", mode="min",
                               save_top_k=1, save_last=False, enable_version_counter=False)
        self.best_weights = BestWeights(best)
        trainer.callbacks.extend([best, self.best_weights])  # type: ignore[attr-defined]
        return trainer

    def _resolved_config(self) -> str:
        """The resolved config as YAML, `data.storage_options` values masked (they may hold credentials)."""
        config = self.config.clone()
        cfg = config[self.subcommand] if self.subcommand else config
        if cfg.data.get("storage_options"):
            cfg.data.storage_options = {key: "***" for key in cfg.data.storage_options}
        return str(self.parser.dump(config, skip_none=False))

    def before_fit(self) -> None:
        # Lightning's end-of-fit flush tries once: publishing (after_fit) retries for publish_timeout_s.
        self.tracker.finalize_timeout_s = 0.0
        self.datamodule.prepare()
        self.tracker.log_hyperparams({"config": self._resolved_config()[:5900]})
        self.tracker.log_hyperparams(fit_params(self.datamodule, self.model.kind, self.model.model_config))
        usage = self.datamodule.usage  # short episodes are never dropped silently (docs/windows.md)
        print(f"data_used: {usage}", flush=True)
        self.tracker.log_hyperparams({"data_used": f"{usage.fraction:.3f}", "data.window_used": usage.window})

    def after_fit(self) -> None:
        from tracking.publish import EXIT_PENDING, PublishPending, publish_command, publish_model
        from worldmodel.io import MODEL_FILE

        if not self.trainer.is_global_zero:  # under DDP, rank 0 alone evaluates, logs and registers the model
            return
        self.tracker.log_stop(self.best_weights.summary, self.trainer.current_epoch, self.best_weights.best_epoch)
        hp = self.model.hparams
        mlflow_cfg = self.config["fit"].mlflow
        try:
            outputs = publish_model(
                self.model.world_model, datamodule=self.datamodule, tracker=self.tracker, run_dir=self.run_dir,
                registered_model_name=mlflow_cfg.registered_model_name, resolved_config=self._resolved_config(),
                eval_kwargs={"context": hp.eval_context, "horizons": tuple(hp.eval_horizons),
                             "samples": hp.eval_samples, "max_windows": hp.eval_windows},
                timeout_s=mlflow_cfg.publish_timeout_s,
            )
            print(f"model_uri: {outputs['model_uri']}")
        except PublishPending as err:  # trained and saved: an outage costs the publishing, never the fit
            self.exit_code = EXIT_PENDING
            print(f"model_uri: unpublished ({err.reason})")
            print(f"publish_later: {publish_command(self.run_dir)}")
            print(f"train.py: the model is trained and saved but not published: {err}", file=sys.stderr)
            outputs = {"checkpoint": str(self.run_dir / MODEL_FILE)}
        print(f"checkpoint: {outputs['checkpoint']}")
        callback = self.trainer.checkpoint_callback
        last = callback.last_model_path if isinstance(callback, ModelCheckpoint) else ""
        if last:
            print(f"lightning_checkpoint: {last}")
        print(f"run_id: {self.tracker.run_id}")

    def after_validate(self) -> None:
        self.tracker.end_run()

    def after_test(self) -> None:
        self.tracker.end_run()
