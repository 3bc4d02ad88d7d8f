"""An FMU as the physics prior of the hybrid model (worldmodel/physics.py), and gradient-free calibration
of its parameters to a recorded store.

The FMU's observed outputs are its state (they must be variables whose start value can be set, as the
states of a Modelica or Simulink export are): `step(x, u, params, dt)` re-initializes the FMU at `x`
with `params`, applies `u` for `dt` and reads the outputs back. It is not differentiable, so the
hybrid's residual learns the gap between the FMU and the data, and the FMU's own parameters are
calibrated without gradients (scipy `least_squares` on short horizons of the store):

    python -m worldmodel.fmu_prior --fmu osc.fmu --config prior.yaml --store osc.zarr --out calibrated.yaml

The prior's parameters are the FMU config's `parameters`: a `[low, high]` range is calibrated within
those bounds (starting from its middle), a number is a known constant. A hybrid config names the prior
as `module:Class` constructed with no arguments, so a user module makes the class for one FMU:

    # my_priors.py
    from worldmodel.fmu_prior import fmu_prior
    OscillatorPrior = fmu_prior("osc.fmu", "calibrated.yaml")   # prior: "my_priors:OscillatorPrior"
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.errors import InputError, run_cli
from fmu.config import FMUConfig, load_fmu_config
from fmu.model import FMUError
from fmu.simulator import FMUSimulator
from worldmodel.physics import PhysicalParameter


class FMUPrior:
    """A discrete-time physics prior backed by one FMU instance; batch rows are simulated one after another."""

    def __init__(self, fmu: str | Path, config: str | Path | FMUConfig) -> None:
        self.config = config if isinstance(config, FMUConfig) else load_fmu_config(config)
        self.state_names = [o.name for o in self.config.observations]
        self.action_names = [a.name for a in self.config.actions]
        # The simulator sets every state and parameter explicitly at each step: nothing is drawn.
        fixed = self.config.model_copy(update={
            "parameters": {n: _middle(v) for n, v in self.config.parameters.items()},
            "start": {**{n: _middle(v) for n, v in self.config.start.items()}, **{n: 0.0 for n in self.state_names}},
        })
        try:
            self.simulator = FMUSimulator(fmu, fixed, instance_name="twinworld-prior")
        except FMUError as err:
            raise FMUError(f"FMU prior: {err} (the prior sets every observed output as a start value, so each "
                           "must be a state with initial='exact' or 'approx')") from err
        units = {n: v.unit for n, v in self.simulator.fmu.parameters.items()}
        self.parameters: dict[str, PhysicalParameter] = {
            name: (PhysicalParameter(_middle(value), value[0], value[1], units[name]) if isinstance(value, tuple)
                   else PhysicalParameter(float(value), unit=units[name], learnable=False))
            for name, value in self.config.parameters.items()
        }

    def obs_to_state(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def state_to_obs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor], dt: float) -> torch.Tensor:
        """(B, state_dim) state, (B, action_dim) action -> (B, state_dim) state one `dt` later (no gradient)."""
        batch = x.shape[0]
        states = x.detach().to("cpu", torch.float64).numpy()
        actions = u.detach().to("cpu", torch.float64).reshape(batch, -1).numpy()
        values = {name: np.broadcast_to(torch.as_tensor(v).detach().to("cpu", torch.float64).numpy(), (batch,))
                  for name, v in params.items() if name in self.parameters}
        out = np.empty_like(states)
        for b in range(batch):  # one FMU instance: rows one after another
            self.simulator.reset(values={**dict(zip(self.state_names, states[b], strict=True)),
                                         **{n: v[b] for n, v in values.items()}})
            out[b] = self.simulator.step(actions[b], float(dt))
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)

    def close(self) -> None:
        self.simulator.close()


def _middle(value: float | tuple[float, float]) -> float:
    return float(sum(value) / 2) if isinstance(value, tuple) else float(value)


def fmu_prior(fmu: str | Path, config: str | Path, name: str = "FMUPriorOf") -> type[FMUPrior]:
    """A prior class for one FMU and config, constructible with no arguments (what `load_prior` does).
    Relative paths are resolved now, so the class finds its FMU from any working directory."""
    fmu_path, config_path = Path(fmu).resolve(), Path(config).resolve()

    def __init__(self: FMUPrior) -> None:
        FMUPrior.__init__(self, fmu_path, config_path)

    return type(name, (FMUPrior,), {"__init__": __init__, "__doc__": f"The FMU {fmu_path} as a physics prior."})


@dataclass
class Calibration:
    """Calibrated parameter values with their units, and how well the FMU then follows the data."""

    values: dict[str, float]
    units: dict[str, str]
    initial: dict[str, float]
    rmse: float
    """Root mean squared error over the windows, in units of each channel's standard deviation."""
    evaluations: int

    def lines(self) -> list[str]:
        """One `name: value unit (from initial)` line per calibrated parameter."""
        return [f"{n}: {v:.6g} {self.units[n]} (from {self.initial[n]:.6g})".replace("  ", " ")
                for n, v in self.values.items()]


def _windows(store: Any, horizon: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` (episode row start, length horizon + 1) windows inside committed episodes, drawn with `seed`."""
    episodes = store.episodes()
    spans = [(int(s), int(n)) for s, n in zip(episodes["start"], episodes["length"], strict=True) if n > horizon]
    if not spans:
        raise InputError(f"{store.path}: no episode has more than {horizon} rows; expected a shorter --horizon")
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(spans), size=count)
    return [(spans[i][0] + int(rng.integers(spans[i][1] - horizon)), horizon + 1) for i in picks]


def calibrate(prior: FMUPrior, store_path: str, horizon: int = 20, windows: int = 32, seed: int = 0) -> Calibration:
    """Fit the prior's learnable parameters to the store: from each window's first observation, simulate the
    recorded actions for `horizon` steps and minimize the error to the recorded observations (scaled per
    channel) with scipy's bounded `least_squares` (finite differences: the FMU has no gradients)."""
    from scipy.optimize import least_squares

    from data_pipeline.store import TrajectoryStore

    learn = [n for n, p in prior.parameters.items() if p.learnable]
    if not learn:
        raise InputError("calibrate: the config fixes every parameter; give a [low, high] range to calibrate one")
    store = TrajectoryStore.open(store_path, mode="r")
    try:
        schema = store.schema
        for names, channels, what in ((prior.state_names, schema.obs_channels, "observation"),
                                      (prior.action_names, schema.action_channels, "action")):
            missing = [n for n in names if n not in channels]
            if missing:
                raise InputError(f"{store_path}: has no {what} channel {', '.join(missing)}; expected the FMU "
                                 f"config's {what}s among {', '.join(channels)}")
        obs_cols = [schema.obs_channels.index(n) for n in prior.state_names]
        act_cols = [schema.action_channels.index(n) for n in prior.action_names]
        spans = _windows(store, horizon, windows, seed)
        obs = [store.read_rows("obs", a, a + n)[:, obs_cols].astype(np.float64) for a, n in spans]
        act = [store.read_rows("action", a, a + n)[:, act_cols].astype(np.float64) for a, n in spans]
        dt = float(schema.dt)
    finally:
        store.close()
    scale = np.concatenate(obs).std(axis=0) + 1e-8
    fixed = {n: p.init for n, p in prior.parameters.items() if not p.learnable}
    sim = prior.simulator

    def residuals(theta: np.ndarray) -> np.ndarray:
        out = []
        for o, a in zip(obs, act, strict=True):  # (horizon + 1, obs_dim), (horizon + 1, action_dim)
            sim.reset(values={**dict(zip(prior.state_names, o[0], strict=True)), **fixed,
                              **dict(zip(learn, theta, strict=True))})
            predicted = np.stack([sim.step(a[t], dt) for t in range(horizon)])
            out.append(((predicted - o[1:]) / scale).reshape(-1))
        return np.concatenate(out)

    params = [prior.parameters[n] for n in learn]
    start = np.array([p.init for p in params])
    result = least_squares(residuals, start, bounds=([p.low for p in params], [p.high for p in params]),
                           x_scale="jac", diff_step=1e-4)
    return Calibration(values=dict(zip(learn, map(float, result.x), strict=True)),
                       units={n: prior.parameters[n].unit for n in learn},
                       initial=dict(zip(learn, map(float, start), strict=True)),
                       rmse=float(np.sqrt(np.mean(result.fun**2))), evaluations=int(result.nfev))


def calibrated_config(config: FMUConfig, calibration: Calibration) -> FMUConfig:
    """The config with each calibrated parameter fixed at its value (the prior then holds it constant)."""
    return config.model_copy(update={"parameters": {**config.parameters, **calibration.values}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.fmu_prior", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fmu", required=True, help="the FMI 2.0 co-simulation FMU")
    parser.add_argument("--config", required=True, help="FMU config; parameters given as [low, high] are calibrated")
    parser.add_argument("--store", required=True, help="trajectory store recorded from the system")
    parser.add_argument("--horizon", type=int, default=20, help="steps simulated from each window's start")
    parser.add_argument("--windows", type=int, default=32, help="windows drawn from the store's episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window draw")
    parser.add_argument("--out", default=None,
                        help="write the config with the calibrated values fixed here (an existing file is refused)")
    args = parser.parse_args(argv)
    for option, value in (("--horizon", args.horizon), ("--windows", args.windows)):
        if value < 1:
            raise InputError(f"{option} {value}: expected a positive number of "
                             + ("steps" if option == "--horizon" else "windows"))
    if args.out is not None and Path(args.out).exists():
        raise InputError(f"--out {args.out}: exists; expected a new file (nothing is overwritten)")
    prior = FMUPrior(args.fmu, args.config)
    try:
        result = calibrate(prior, args.store, args.horizon, args.windows, args.seed)
    finally:
        prior.close()
    for line in result.lines():
        print(line)
    print(f"rmse: {result.rmse:.4g} (per-channel std units)")
    print(f"evaluations: {result.evaluations}")
    if args.out is not None:
        import yaml

        from data_pipeline.store.files import atomic_write

        data = calibrated_config(prior.config, result).model_dump(mode="json", exclude_none=True)
        atomic_write(args.out, lambda tmp: tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8"))
        print(f"config: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m worldmodel.fmu_prior"))
