"""RSSM imagination and training cost against the RSSM before issue 18, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_rssm.py            # small preset, 1024 envs, batch 16 x 64
    python benchmarks/bench_rssm.py --quick --no-record          # a smoke run (tiny sizes, no table rows)

The "before" model is `worldmodel/rssm.py` as of `--before` (a git revision), imported from `git show` under
another module name and given the same weights, so both run in this process on the same inputs. Measures:
ms per imagined step at `--envs` for the RSSM before and for each `uncertainty` choice now, beside the small
ensemble's (the issue's target: RSSM <= 3x the ensemble), and world-model gradient steps/s (loss, backward,
Adam) at batch `--batch` x `--window`. Pendulum-sized spaces (3 observation channels, 1 action); the weights
are untrained, which costs the same as trained ones. Records rows in BENCHMARKS.md (`## bench_rssm`).

`--sheeprl PYTHON` also times sheeprl's DreamerV3 world-model update at the same sizes, in a virtual environment
of its own that reuses this one's torch and lightning (sheeprl is no dependency of the project):

    python -m venv /tmp/sheeprl && python -c "import site; print(site.getsitepackages()[0])" \
        > "$(/tmp/sheeprl/bin/python -c 'import site; print(site.getsitepackages()[0])')/project.pth"
    /tmp/sheeprl/bin/pip install sheeprl==0.8.4
    OMP_NUM_THREADS=1 python benchmarks/bench_rssm.py --sheeprl /tmp/sheeprl/bin/python
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from gymnasium import spaces

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

from data_pipeline.schema import StoreSchema  # noqa: E402
from data_pipeline.windows.batch import Batch, Normalization  # noqa: E402
from worldmodel.base import ModelBase  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel, Uncertainty, uncertainty_mode  # noqa: E402
from worldmodel.rssm import RSSMConfig, RSSMWorldModel  # noqa: E402

BEFORE = "b1b77f1"
"""The last commit before issue 18's RSSM work."""


def spaces_and_units() -> tuple[StoreSchema, Normalization]:
    schema = StoreSchema.from_spaces(spaces.Box(-8.0, 8.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (1,), np.float32),
                                     dt=0.05)
    norm = Normalization(obs_mean=[0.0] * 3, obs_std=[1.0] * 3, obs_min=[-8.0] * 3, obs_max=[8.0] * 3,
                         action_mean=[0.0], action_std=[1.0], action_min=[-2.0], action_max=[2.0],
                         reward_mean=-5.0, reward_std=3.0, reward_min=-16.0, reward_max=0.0, num_actions=0)
    return schema, norm


def before_module(revision: str) -> ModuleType:
    """`worldmodel/rssm.py` at `revision`, imported as `rssm_before`."""
    source = subprocess.run(["git", "show", f"{revision}:worldmodel/rssm.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_rssm_")) / "rssm_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rssm_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rssm_before"] = module
    spec.loader.exec_module(module)
    return module


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each function: the best over `rounds` of the mean over `repeats` calls. The rounds
    take the functions in turn, so a load that comes and goes on a shared CPU falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / repeats)
    return best


def stepper(model: ModelBase, envs: int, uncertainty: Uncertainty) -> Callable[[], None]:
    """One imagined step of `envs` trajectories per call, continuing from a state after two observed steps
    (`uncertainty` is ignored by a model without the choice, as the RSSM before)."""
    model.eval()
    obs = torch.zeros(envs, 2, 3)
    act = torch.zeros(envs, 2, 1)
    first = torch.tensor([[True, False]]).expand(envs, -1)
    with torch.inference_mode():
        holder = {"state": model.observe(model.initial_state(envs), obs, act, first)}
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        with torch.inference_mode(), uncertainty_mode(model, uncertainty):
            holder["state"], _ = model.step(holder["state"], act[:, 0], gen)

    return one


def trainer(model: ModelBase, batch: Batch) -> Callable[[], None]:
    """One gradient step (loss, backward, Adam) per call."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def one() -> None:
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return one


SHEEPRL = '''
# sheeprl's DreamerV3 world-model update (its `world_model_learning`: loss, backward, clipping, optimizer step) at
# the small preset's sizes: deter 256, dense 256 x 2 layers, 16 x 16 categoricals, Pendulum-sized vector spaces.
''' + """
import json
import sys
import time
from pathlib import Path

import gymnasium
import hydra
import numpy as np
import sheeprl
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric import Fabric
from omegaconf import OmegaConf

from sheeprl.algos.dreamer_v3.agent import build_agent
from sheeprl.algos.dreamer_v3.dreamer_v3 import world_model_learning
from sheeprl.utils.utils import dotdict

b, t, steps, rounds = (int(x) for x in sys.argv[1:5])
torch.set_num_threads(1)
overrides = ["exp=dreamer_v3", "algo=dreamer_v3_XS", "env=gym", "env.id=Pendulum-v1",
             "algo.cnn_keys.encoder=[]", "algo.cnn_keys.decoder=[]",
             "algo.mlp_keys.encoder=[state]", "algo.mlp_keys.decoder=[state]",
             "algo.world_model.stochastic_size=16", "algo.world_model.discrete_size=16",
             "algo.dense_units=256", "algo.mlp_layers=2",
             f"algo.per_rank_batch_size={b}", f"algo.per_rank_sequence_length={t}",
             "fabric.accelerator=cpu", "fabric.devices=1", "metric.log_level=0"]
with initialize_config_dir(config_dir=str(Path(sheeprl.__file__).parent / "configs"), version_base="1.3"):
    cfg = compose(config_name="config", overrides=overrides)
cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
fabric = Fabric(accelerator="cpu", devices=1)
obs_space = gymnasium.spaces.Dict({"state": gymnasium.spaces.Box(-8.0, 8.0, (3,), np.float32)})
world_model, *_ = build_agent(fabric, [1], True, cfg, obs_space)
opt = hydra.utils.instantiate(cfg.algo.world_model.optimizer, params=world_model.parameters(), _convert_="all")
opt = fabric.setup_optimizers(opt)
g = torch.Generator().manual_seed(0)
data = {"state": torch.randn(t, b, 3, generator=g), "actions": torch.rand(t, b, 1, generator=g) * 2 - 1,
        "rewards": -torch.rand(t, b, 1, generator=g), "terminated": torch.zeros(t, b, 1),
        "truncated": torch.zeros(t, b, 1), "is_first": torch.zeros(t, b, 1)}
params = sum(p.numel() for p in world_model.parameters())
world_model_learning(fabric, cfg, world_model, opt, data)
best = float("inf")
for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(steps):
        world_model_learning(fabric, cfg, world_model, opt, data)
    best = min(best, (time.perf_counter() - t0) / steps)
print(json.dumps({"steps_per_s": 1.0 / best, "params": params}))
"""


def sheeprl_steps_per_s(python: str, b: int, t: int, steps: int, rounds: int) -> tuple[float, int]:
    """Gradient steps/s and parameter count of sheeprl's DreamerV3 world model, run by `python` (a virtual
    environment of its own: sheeprl is no dependency of this project)."""
    out = subprocess.run([python, "-c", SHEEPRL, str(b), str(t), str(steps), str(rounds)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["steps_per_s"]), int(result["params"])


def make_batch(b: int, t: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(obs=torch.randn(b, t, 3, generator=gen), action=torch.rand(b, t, 1, generator=gen) * 4 - 2,
                 reward=-torch.rand(b, t, generator=gen) * 10, terminated=torch.zeros(b, t, dtype=torch.bool),
                 is_first=is_first, is_last=torch.zeros(b, t, dtype=torch.bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--envs", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8,
                        help="imagined steps per round (a quarter as many gradient steps)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds taking the variants in turn; the best counts")
    parser.add_argument("--before", default=BEFORE, help="git revision of the RSSM to compare against")
    parser.add_argument("--sheeprl", metavar="PYTHON",
                        help="a Python with sheeprl installed: also time its DreamerV3 world-model update")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.quick:
        args.preset, args.envs, args.batch, args.window, args.steps, args.rounds = "tiny", 8, 2, 4, 1, 1

    schema, norm = spaces_and_units()
    torch.manual_seed(0)
    now = RSSMWorldModel(RSSMConfig.preset(args.preset), schema, norm)
    old_cls = before_module(args.before).RSSMWorldModel
    old = old_cls(now.config, schema, norm)
    old.load_state_dict(now.state_dict())
    ens = EnsembleWorldModel(EnsembleConfig.preset("small" if args.preset != "tiny" else "tiny"), schema, norm)

    modes: tuple[Uncertainty, ...] = ("elites", "own", "none")
    steppers = {"RSSM before": stepper(old, args.envs, "elites")}
    steppers |= {f"RSSM {mode}": stepper(now, args.envs, mode) for mode in modes}
    steppers |= {f"ensemble {mode}": stepper(ens, args.envs, mode) for mode in modes}
    step = {name: 1e3 * s for name, s in interleaved(steppers, args.steps, args.rounds).items()}
    batch = make_batch(args.batch, args.window)
    grad = interleaved({"before": trainer(old, batch), "now": trainer(now, batch)}, max(1, args.steps // 4),
                       args.rounds)
    grad_before, grad_now = 1.0 / grad["before"], 1.0 / grad["now"]
    sheeprl = None
    if args.sheeprl:
        sheeprl = sheeprl_steps_per_s(args.sheeprl, args.batch, args.window, max(1, args.steps // 4), args.rounds)

    for name, ms in step.items():
        print(f"{name:18s} {ms:8.2f} ms/step @{args.envs}")
    print(f"gradient steps/s @{args.batch}x{args.window}: before {grad_before:.2f}, now {grad_now:.2f}")
    params = sum(p.numel() for p in now.parameters())
    if sheeprl:
        print(f"sheeprl DreamerV3 world model: {sheeprl[0]:.2f} steps/s ({sheeprl[1]} parameters; ours {params})")
    if args.no_record:
        return
    today = date.today().isoformat()
    where = machine(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); 8 engineers shared the cores")
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_rssm.py " + " ".join(sys.argv[1:])
    rows = [
        (today, f"imagined step @{args.envs}, {args.preset}, RSSM {mode} vs before", where, command,
         f"{step[f'RSSM {mode}']:.2f} ms", f"{step['RSSM before']:.2f} ms",
         f"{step['RSSM before'] / step[f'RSSM {mode}']:.2f}x faster", "")
        for mode in modes
    ] + [
        (today, f"imagined step @{args.envs}, RSSM {mode} / ensemble {mode}", where, command,
         f"{step[f'RSSM {mode}']:.2f} ms", f"{step[f'ensemble {mode}']:.2f} ms",
         f"{step[f'RSSM {mode}'] / step[f'ensemble {mode}']:.2f}x the ensemble", "<= 3x")
        for mode in modes
    ] + [
        (today, f"gradient steps/s @{args.batch}x{args.window}, {args.preset}, vs before", where, command,
         f"{grad_now:.2f}/s", f"{grad_before:.2f}/s", f"{grad_now / grad_before:.2f}x", ""),
    ]
    if sheeprl:
        rows.append((today, f"gradient steps/s @{args.batch}x{args.window}, {args.preset} ({params} parameters) vs "
                     f"sheeprl DreamerV3 world model ({sheeprl[1]} parameters)", where, command,
                     f"{grad_now:.2f}/s", f"{sheeprl[0]:.2f}/s", f"{grad_now / sheeprl[0]:.2f}x", ""))
    record_rows(Path(args.out), "bench_rssm", rows)


if __name__ == "__main__":
    main()
