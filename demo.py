"""The end-to-end demo (the README's `make demo`), on embedded defaults: a local Zarr store and MLflow.

    python demo.py [--out demo_out] [--quick]
    python demo.py --hybrid [--out demo_out] [--quick]

`--hybrid` records the same store, then fits the physics-informed hybrid model (docs/hybrid.md: the
Pendulum prior + a learned residual) and prints the physical parameters it identified; nothing else runs.

--out must be missing, empty or an earlier demo output (marked by its `.twinworld-demo` file); there the
demo replaces only what it wrote itself.

1. record a small Pendulum-v1 store with a random policy;
2. fit the ensemble world model on it (train.py fit);
3. generate a counterfactual scenario set with its fan-chart plot (generate.py);
4. train a SAC policy in the learned environment with the model-based loop (train.py policy);
5. evaluate the policy on the real Pendulum-v1 against the random policy, and print a summary.

Every step runs the project's own command line, exactly as a user would, and each is tracked in
MLflow (`mlflow ui --backend-store-uri sqlite:///mlflow.db` to look).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym

from data_pipeline.errors import UserError, run_cli


def run(cmd: list[str]) -> dict[str, str]:
    """Run a command, stream its output, and return its `key: value` result lines."""
    print("\n$ " + " ".join(cmd), flush=True)
    out: dict[str, str] = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:  # shown as it comes, so long steps show their progress
            print(line, end="", flush=True)
            key, sep, value = line.partition(": ")
            if sep and key and " " not in key:
                out[key] = value.strip()
    if proc.returncode != 0:
        raise SystemExit(f"demo: step failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return out


def random_return(episodes: int = 20, seed: int = 1000) -> float:
    """Mean return of the uniform random policy on the real Pendulum-v1 (the policy's baseline)."""
    from policies import real_return
    from policies.behaviour import make_policy

    policy = make_policy("random", gym.make("Pendulum-v1").action_space, seed=seed)
    return real_return(policy, "Pendulum-v1", episodes, seed=seed)


MARKER = ".twinworld-demo"
"""The file that marks a folder as a demo's output, so that the next run may replace what the demo wrote."""
OUTPUTS = ("pendulum.zarr", "runs", "scenarios.zarr", "scenarios.summary.csv", "scenarios.calibration.csv",
           "plots", "policy")
"""What the demo writes into --out (and so all it ever removes there)."""


def prepare_out(out: Path) -> None:
    """Make `out` ready for a run: created if missing or empty; in a previous demo's output (its MARKER file)
    only the demo's own OUTPUTS are removed, other files stay; anything else is refused (nothing deleted)."""
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link (to {os.readlink(out)}); name a real folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            names = sorted(p.name for p in out.iterdir())
            shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
            raise UserError(f"--out {out} is not empty ({len(names)} entries: {shown}) and is no earlier demo output "
                            f"(it has no {MARKER} file); nothing was deleted: choose another --out or remove it "
                            "yourself")
        for name in OUTPUTS:
            path = out / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by demo.py: the next `demo.py --out` here replaces the demo's own "
                              f"outputs ({', '.join(OUTPUTS)}) and leaves other files alone\n")


def hybrid_step(out: Path, store: str, quick: bool, t0: float) -> None:
    """Fit the hybrid model (the Pendulum prior, gravity and actuator gain started 10% and 17% off) and print
    what it identified: the parameters with their spread across members, and the residual's share."""
    fit = [sys.executable, "train.py", "fit", "--config", "configs/pendulum/hybrid.yaml", "--data.store", store,
           "--out_dir", str(out / "runs"), "--mlflow.registered_model_name", "demo-pendulum-hybrid",
           "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
           "--data.batches_per_epoch", "150" if quick else "400"]
    if quick:
        fit += ["--model.config.preset", "tiny", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4"]
    model = run(fit)
    import worldmodel
    from worldmodel.hybrid import HybridWorldModel

    hybrid = worldmodel.load(model["checkpoint"])
    assert isinstance(hybrid, HybridWorldModel)  # configs/pendulum/hybrid.yaml's kind
    print("\n" + "=" * 72)
    print("twinworld hybrid demo: identified physical parameters (Pendulum-v1's true gravity 10, gain 3)")
    print("=" * 72)
    print(hybrid.describe_text())
    print(f"model_uri: {model['model_uri']}")
    print(f"checkpoint: {model['checkpoint']}")
    print(f"elapsed_s: {time.time() - t0:.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out",
                        help="folder for the store, scenarios and plots: missing, empty or an earlier demo output")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (for the test suite)")
    parser.add_argument("--hybrid", action="store_true",
                        help="fit the physics-informed hybrid model instead and print its identified parameters")
    args = parser.parse_args(argv)
    out = Path(args.out)
    prepare_out(out)
    py = sys.executable
    t0 = time.time()
    store = str(out / "pendulum.zarr")

    episodes = "3" if args.quick else "5"
    run([py, "-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes", episodes,
         "--policy", "random", "--seed", "0", "--out", store, "--no-progress"])

    if args.hybrid:
        hybrid_step(out, store, args.quick, t0)
        return

    fit = [py, "train.py", "fit", "--config", "configs/pendulum/ensemble.yaml", "--data.store", store,
           "--out_dir", str(out / "runs"), "--mlflow.registered_model_name", "demo-pendulum-ensemble",
           "--trainer.enable_progress_bar", "false"]
    if not args.quick:  # the demo's budget: a small ensemble, early stopping within 2000 steps (BENCHMARKS.md)
        fit += ["--model.config.preset", "small", "--trainer.max_steps", "2000"]
    if args.quick:
        fit += ["--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch", "5",
                "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4"]
    model = run(fit)

    plots = out / "plots"
    gen = [py, "generate.py", "--config", "configs/scenarios/pendulum.yaml", "--model", model["model_uri"],
           "--store", store, "--out", str(out / "scenarios.zarr"), "--plot", str(plots)]
    scen = run(gen)

    policy_cmd = [py, "train.py", "policy", "--config", "configs/pendulum/policy.yaml",
                  "--model", model["model_uri"], "--store", store, "--out_dir", str(out / "policy")]
    if args.quick:
        policy_cmd += ["--timesteps", "300", "--iterations", "1", "--eval_episodes", "2",
                       "--collect_episodes", "1"]
    policy = run(policy_cmd)

    baseline = random_return(episodes=5 if args.quick else 20)
    print("\n" + "=" * 72)
    print("twinworld demo summary")
    print("=" * 72)
    print(f"store: {store}")
    print(f"model_uri: {model['model_uri']}")
    print(f"checkpoint: {model.get('checkpoint', '')}")
    print(f"scenarios: {scen.get('scenarios', '')}")
    print(f"scenario_plots: {scen.get('plots', plots)}")
    print(f"policy: {policy.get('policy', '')}")
    print(f"policy_uri: {policy.get('policy_uri', '')}")
    print(f"policy_real_return: {policy.get('real_return', '?')}")
    print(f"random_policy_real_return: {baseline:.1f}")
    print(f"real_steps_used: {policy.get('real_steps', '?')}")
    print(f"elapsed_s: {time.time() - t0:.0f}")
    print("mlflow_ui: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)")


if __name__ == "__main__":
    sys.exit(run_cli(main, "demo.py"))
