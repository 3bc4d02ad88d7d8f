"""Train, validate and test world models; train intervention policies in the learned environment.

    python train.py fit --config configs/pendulum/ensemble.yaml --data.store p.zarr
    python train.py fit --config configs/pendulum/ensemble.yaml --data.store p.zarr --ckpt_path last
    python train.py validate --config configs/pendulum/rssm.yaml --data.store p.zarr --ckpt_path CKPT
    python train.py test --config configs/pendulum/rssm.yaml --data.store p.zarr --ckpt_path CKPT
    python train.py test --config configs/pendulum/rssm.yaml --data.store p.zarr --ckpt_path CKPT \
        --data.test_store held_out.zarr --data.test_stride 10
    python train.py policy --config configs/pendulum/policy.yaml --model MODEL

`fit`/`validate`/`test` are LightningCLI: every key of the YAML is also a flag (`--model.lr 3e-4`,
`--model.config.hidden 64`, `--trainer.max_epochs 5`, `--trainer.accelerator gpu --trainer.precision
bf16-mixed`, `--trainer.devices 2 --trainer.strategy ddp`, `--checkpoint.every_n_train_steps 500`), and
`--help` lists them all, every model config field included. Model dimensions come from the store.
`fit` runs epochs of one pass over the train split until the validation loss stops improving
(`--early_stopping.patience`), bounded by `--trainer.max_steps` (or max_epochs, max_time); it ends on the best
epoch's weights and prints why it stopped (`stopped: …`, docs/training.md). `test --data.test_store` scores the
model on a separate store of the same schema, with evaluation starts every `--data.test_stride` rows.
Runs are tracked in MLflow (`MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`). `fit` ends by printing
`model_uri: …`, `checkpoint: …` (the self-describing model file) and `lightning_checkpoint: …` (for
`--ckpt_path`). If the tracking server stays away for `--mlflow.publish_timeout_s` at the end, the files
are kept, `model_uri: unpublished (…)` and `publish_later: python -m tracking.publish RUN_DIR` are printed
and the exit code is 75 (docs/cluster.md). Every `--ckpt_path` (a path, `last`, or an http(s)/s3 URL) is
read with `torch.load(weights_only=True)`; a checkpoint that would run code is refused.
"""

from __future__ import annotations

import signal
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from data_pipeline.windows.datamodule import WindowDataModule
from tracking.train_cli import HelpFormatter, TwinCLI
from worldmodel.lightning import Preempted, WorldModelModule


def main(argv: list[str] | None = None) -> int:
    """Run a command; the exit code is 0, or 75 (`tracking.publish.EXIT_PENDING`) for a fit trained and saved
    but not published because the tracking server was away (`python -m tracking.publish RUN_DIR` finishes it)."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] == "policy":
        from policies.cli import main as policy_main

        policy_main(given[1:])
        return 0
    try:
        cli = TwinCLI(
            WorldModelModule,
            WindowDataModule,
            args=argv,  # None: LightningCLI reads sys.argv itself
            seed_everything_default=0,
            save_config_callback=None,  # the resolved config goes to MLflow and the run folder instead
            parser_kwargs={"formatter_class": HelpFormatter},  # subcommand parsers inherit it
            trainer_defaults={"log_every_n_steps": 10, "logger": False},  # the MLflow tracker replaces the logger
        )
    except SIGTERMException as err:  # Lightning's own stop (outside a training batch) would exit 0
        if isinstance(err, Preempted):
            raise
        print("train.py: stopped by SIGTERM outside a training batch; --ckpt_path last resumes from the newest "
              "periodic checkpoint", file=sys.stderr)
        return 128 + signal.SIGTERM
    return cli.exit_code


if __name__ == "__main__":
    from data_pipeline.errors import run_cli

    sys.exit(run_cli(main, "train.py"))
