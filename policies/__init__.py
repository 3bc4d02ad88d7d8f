"""Intervention policies: behaviour policies, the model-based policy loop, policy files.

| module | job |
| --- | --- |
| `behaviour.py` | `make_policy`: `random`, a policy file or `module:function`, batched (record, generate) |
| `files.py` | `save_sb3` / `load_sb3`: safetensors weights + the JSON that rebuilds the agent (+ SB3's zip) |
| `hyperparameters.py` | an agent's constructor arguments as plain JSON and back (no pickle, no imports by name) |
| `convert.py` | `python -m policies.convert X.zip --trust-pickle`: a trusted SB3 zip into the safe format, once |
| `evaluation.py` | `real_return` (the one real-env return loop), `model_return` (in the learned env) |
| `config.py` | `PolicyConfig`: the typed options of `train.py policy` |
| `loop.py` | `train_policy`: the MBPO-style loop (train in the model, evaluate, collect, refit), MLflow |
| `refit.py` | `refit`: fine-tune the world model on the grown store |
| `checkpoint.py` | `check_out_dir`, `LoopState`, `save_agent` / `load_agent`, `IterationCheckpoint`: resumable runs |
| `cli.py` | `main`: `python train.py policy` |
| `pyfunc.py` | the MLflow pyfunc flavour of a saved policy (loaded by MLflow from its path) |

The package imports only the light modules; `policies.loop` and `policies.cli` import
stable-baselines3 and Lightning, so they are imported by name where needed.
"""

from policies.behaviour import Agent, Policy, deterministic_policy, make_policy
from policies.config import PolicyConfig
from policies.evaluation import model_return, real_return
from policies.files import PolicyInfo, UnsafePolicyError, info_path, load_sb3, read_policy_info, save_sb3, weights_path

__all__ = ["Agent", "Policy", "PolicyConfig", "PolicyInfo", "UnsafePolicyError", "deterministic_policy", "info_path",
           "load_sb3", "make_policy", "model_return", "read_policy_info", "real_return", "save_sb3", "weights_path"]
