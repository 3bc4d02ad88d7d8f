"""`train.py policy`: intervention policies trained in the learned environment, and the model-based loop.

    python train.py policy --config configs/pendulum/policy.yaml --model MODEL --store STORE [--iterations K]

Each iteration (MBPO-style): train a stable-baselines3 agent in the vectorized `WorldModel-v0`,
with short model rollouts started from recorded states; evaluate it on the real system (the
Gymnasium id `real_env`, the stand-in for the physical plant) if one is named; then collect
`collect_episodes` real episodes with the policy into the store (append, commit protocol), fine-tune
the world model on the grown store and continue. The learning curve is real return against real
steps used (the store's transitions, random-policy data included). Everything is logged to MLflow;
the policy (zip + JSON) is an artifact and a Model Registry entry. Ends by printing `policy: PATH`,
`policy_uri: …`, `real_return: …`, `real_steps: …`.

`out_dir` must be new or empty; nothing in it is ever deleted. `--resume` continues a killed run from
its last checkpoint in `out_dir` (agent, replay buffer, iteration, model); SIGTERM or SIGUSR1 (a scheduler's
preemption) saves one at the next learned-env step and exits 143 or 138, as `fit` does (docs/training.md).
`--trust-pickle` lets it resume from a checkpoint written before the safe policy format (a stable-baselines3
zip and a pickled replay buffer): loading those runs any code they contain (docs/policy.md).
"""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ArgumentParser

from data_pipeline.specfile import validate_spec
from policies.config import PolicyConfig
from worldmodel.threads import Threads, apply_threads, parse_threads

OUTPUT_KEYS = ("policy", "policy_uri", "real_return", "real_steps", "model", "run_id")


def build_parser() -> ArgumentParser:
    """The `train.py policy` options: `PolicyConfig`'s fields (help from their docstrings), plus --config
    and --resume."""
    parser = ArgumentParser(prog="python train.py policy", description=__doc__,
                            default_config_files=[], env_prefix="TWINWORLD_POLICY")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (keys of PolicyConfig)")
    parser.add_class_arguments(PolicyConfig, as_group=False)
    parser.add_argument("--threads", type=Threads, default="auto",
                        help="torch CPU threads: a number, or auto (one: the agent's MLPs are small; an explicit "
                        "OMP_NUM_THREADS is respected); sets torch_threads")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from out_dir's checkpoint")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow --resume from an old checkpoint (SB3 zip, pickled replay buffer): loading it "
                        "runs any code it contains; only for files you made or trust")
    return parser


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Parse the command line, run the policy loop and print its outputs, one `key: value` a line."""
    from policies.loop import train_policy

    parser = build_parser()
    ns = parser.parse_args(argv)
    resume = bool(ns.pop("resume"))
    trust_pickle = bool(ns.pop("trust_pickle"))
    threads = apply_threads(parse_threads(ns.pop("threads")), kind="policy").threads
    ns.pop("config", None)
    cfg = validate_spec(PolicyConfig, {**ns.as_dict(), "torch_threads": threads}, "train.py policy")
    outputs = train_policy(cfg, resume=resume, trust_pickle=trust_pickle)
    for key in OUTPUT_KEYS:
        print(f"{key}: {outputs[key]}")
    return outputs
