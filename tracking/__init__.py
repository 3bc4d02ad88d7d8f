"""MLflow tracking, at the side of the layers: the buffered logger, lineage and model publishing.

| module | job |
| --- | --- |
| `logger.py` | `BufferedMLflowLogger`: batched metrics that survive a tracking server outage; `tracking_uri` |
| `train_cli.py` | `TwinCLI`, behind `train.py fit/validate/test`: LightningCLI with tracking and publishing |
| `runs.py` | the MLflow run of a `train.py` command: its name, folder, resume, params; names from the store |
| `publish.py` | the end of a fit: save, evaluate, log, register the pyfunc model (retried); publishing later |
| `pyfunc.py` | the MLflow pyfunc flavour of a world model (history and actions in, trajectories out) |
| `lineage.py` | which MLflow run produced a model (`model_run_id`, `lineage_tags`) |

Names are imported from their modules (`from tracking.logger import BufferedMLflowLogger`), not
re-exported here: logger and publish import lightning and mlflow, which `tracking.lineage` users need not
pay for.
"""
