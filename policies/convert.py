"""Convert a stable-baselines3 zip you trust into a twinworld policy file, once:

    python -m policies.convert agent.zip --trust-pickle [--algorithm SAC]

Writes `agent.safetensors` and `agent.json` beside the zip (SB3 re-saves the zip itself), after which every
twinworld command (record, scenario specs, the pyfunc) loads the policy without unpickling anything.
Loading the zip unpickles it, which runs any code it contains: hence the explicit `--trust-pickle`.
`--algorithm` names the SB3 class for a zip without twinworld's JSON (SB3 zips do not say reliably).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.errors import UserError, run_cli
from policies.files import ALGORITHMS, info_path, load_sb3, save_sb3


def convert(path: str | Path, algorithm: str | None = None) -> Path:
    """Load the zip `path` with stable-baselines3 (running its pickled code) and save it in the safe format."""
    import stable_baselines3

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such policy zip")
    if algorithm is not None:
        agent = getattr(stable_baselines3, algorithm).load(str(path), device="cpu")
    elif info_path(path).exists():
        agent = load_sb3(path, trust_pickle=True)
    else:
        raise UserError(f"{path}: no {info_path(path).name} beside it to name the algorithm; pass --algorithm "
                        f"(one of {', '.join(ALGORITHMS)})")
    return save_sb3(agent, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zip", help="stable-baselines3 policy zip")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=None, help="its SB3 class, if it has no JSON")
    parser.add_argument("--trust-pickle", action="store_true", required=True,
                        help="required: loading the zip runs any code it contains")
    args = parser.parse_args(argv)
    print(f"policy: {convert(args.zip, args.algorithm)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(), "python -m policies.convert"))
