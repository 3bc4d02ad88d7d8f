"""Intervention policies: behaviour policies, the model-based policy loop, policy files.

| module | job |
| --- | --- |
| `behaviour.py` | `make_policy`: `random`, an SB3 zip or `module:function` as a batched policy (record, generate) |
| `files.py` | `save_sb3` / `load_sb3`: a policy zip with the JSON that names its algorithm and spaces |
| `evaluation.py` | `real_return` (the one real-env return loop), `model_return` (in the learned env) |
| `config.py` | `PolicyConfig`: the typed options of `train.py policy` |
| `loop.py` | `train_policy`: the MBPO-style loop (train in the model, evaluate, collect, refit), MLflow |
| `refit.py` | `refit`: fine-tune the world model on the grown store |
| `checkpoint.py` | `LoopState`, `IterationCheckpoint`: resumable runs |
| `cli.py` | `main`: `python train.py policy` |
| `pyfunc.py` | the MLflow pyfunc flavour of a saved policy (loaded by MLflow from its path) |

The package imports only the light modules; `policies.loop` and `policies.cli` import
stable-baselines3 and Lightning, so they are imported by name where needed.
"""

from policies.behaviour import Agent, Policy, deterministic_policy, make_policy
from policies.config import PolicyConfig
from policies.evaluation import model_return, real_return
from policies.files import PolicyInfo, info_path, load_sb3, read_policy_info, save_sb3

__all__ = ["Agent", "Policy", "PolicyConfig", "PolicyInfo", "deterministic_policy", "info_path", "load_sb3",
           "make_policy", "model_return", "read_policy_info", "real_return", "save_sb3"]
