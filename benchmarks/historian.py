"""A heated tank logged by a plant historian: the zoo's CSV system and the sample data of docs/own_system.md.

    python benchmarks/historian.py --out historian/ --runs 6     # writes historian/tank_*.csv and tank_spec.yaml

The plant: a tank filled by a disturbed inflow, drained through an outlet valve, warmed by a heater.
A random operator moves the heater and valve commands every second or so (the random policy of the zoo).
The true signals are simulated on a 10 Hz grid; `export` then writes them as a historian does, with
the artifacts that made real exports fail before issue 14 (each drawn from a seeded RNG):
- clock jitter: every timestamp is off by up to ±`JITTER_S`, written to the millisecond;
- dropped samples: a fraction of the fast sensors' rows are missing;
- multi-rate sensors: the inflow meter reports at 2 Hz in rows of its own (the fast columns empty there),
  so with the jitter some of its rows fall a millisecond behind the row before them;
- out-of-order rows: a few neighbouring rows are written swapped;
- duplicate timestamps: a few rows are written twice at the same instant, the second re-read with noise.
`SPEC` is the ingest spec that turns such an export into a store (sort, duplicates: mean, jitter, bounds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

DT = 0.1  # the simulation and store step, s
JITTER_S = 0.001  # the historian clock's jitter, s
INFLOW_EVERY = 5  # the inflow meter reports every 5th step (2 Hz)
FAST = ["temperature", "level"]  # 10 Hz sensors
COMMANDS = ["heater_pct", "valve_pct"]  # the operator's commands, logged with the fast rows

SPEC = """\
# Ingest spec for a heated tank exported from a plant historian (docs/own_system.md).
timestamp:
  column: t                 # seconds since the start of the run, written to the millisecond
  unit: s
episode_column: run         # one run = one episode
dt: 0.1                     # the store's fixed step, in seconds
sort: true                  # rows come out of the historian out of order: sort each run by time
jitter: 0.002               # the clock's jitter (only used with sort: false: rows this much late are put in place)
duplicates: mean            # a sensor written twice at one instant: average the readings
nan_policy: error           # a written NaN is a bad reading: refuse the file, naming its line
min_transitions: 20
short_episodes: drop        # a piece shorter than 20 steps after a long outage is left out
observation:
  resample: interpolate     # physical quantities: linear in time onto the 0.1 s grid
  max_gap: 1.5              # a sensor silent for longer than 1.5 s splits the run
  channels:
    - {column: temperature, unit: degC, low: 0, high: 100}
    - {column: level, unit: m, low: 0, high: 2.5}
    - {column: inflow, unit: m3/s, low: 0, high: 0.1}    # the 2 Hz meter, in rows of its own
action:
  type: box
  resample: hold            # a command holds until the next one
  max_gap: 1.5
  channels:
    - {column: heater_pct, name: heater, unit: "%", low: 0, high: 100}
    - {column: valve_pct, name: valve, unit: "%", low: 0, high: 100}
"""


def simulate(runs: int, seconds: float, seed: int = 0) -> pd.DataFrame:
    """The true signals of `runs` runs on the DT grid: columns run, t, temperature, level, inflow, commands."""
    rng = np.random.default_rng(seed)
    steps = int(round(seconds / DT)) + 1
    frames = []
    for run in range(runs):
        level, temp, inflow = rng.uniform(0.5, 1.5), rng.uniform(15, 35), 0.02
        heater = valve = 0.0
        rows = np.zeros((steps, 5))
        for k in range(steps):
            if k % 10 == 0 or rng.random() < 0.05:  # the random operator: new commands about once a second
                heater, valve = rng.uniform(0, 100), rng.uniform(0, 100)
            rows[k] = temp, level, inflow, heater, valve
            inflow = float(np.clip(inflow + 0.01 * (0.02 - inflow) + rng.normal(0, 4e-4), 0.005, 0.05))
            outflow = 0.04 * valve / 100 * np.sqrt(level)
            level_rate = inflow - outflow  # tank area 1 m²
            temp_rate = 0.4 * heater / 100 / level - inflow / level * (temp - 15.0) - 0.005 * (temp - 20.0)
            level = float(np.clip(level + DT * level_rate, 0.05, 2.3))  # an overflow weir at 2.3 m
            temp = temp + DT * temp_rate
        frame = pd.DataFrame(rows, columns=["temperature", "level", "inflow", *COMMANDS])
        frame.insert(0, "t", np.arange(steps) * DT)
        frame.insert(0, "run", f"run{run:03d}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def export(truth: pd.DataFrame, seed: int = 0, drop: float = 0.02, swap: float = 0.01,
           duplicate: float = 0.01) -> pd.DataFrame:
    """The rows a historian writes for `truth` (see the module docstring for the artifacts)."""
    rng = np.random.default_rng(seed + 1)
    parts = []
    for _, run in truth.groupby("run", sort=False):
        k = np.arange(len(run))
        fast = run[["run", "t", *FAST, *COMMANDS]].copy()
        fast[FAST] += rng.normal(0, [0.05, 0.002], (len(run), 2))  # sensor noise
        fast = fast[(rng.random(len(run)) >= drop) | (k == 0) | (k == len(run) - 1)].copy()  # dropped samples
        meter = run.loc[k % INFLOW_EVERY == 0, ["run", "t", "inflow"]].copy()
        meter["inflow"] += rng.normal(0, 2e-4, len(meter))
        for rows in (fast, meter):  # each row's clock reading, to the millisecond (written in true order)
            rows["true_t"] = rows["t"]
            rows["t"] = (rows["t"] + rng.uniform(-JITTER_S, JITTER_S, len(rows))).clip(lower=0).round(3)
        dup = fast[rng.random(len(fast)) < duplicate].copy()  # written twice at one instant, re-read with noise
        dup[FAST] += rng.normal(0, [0.05, 0.002], (len(dup), 2))
        rows = pd.concat([fast, dup, meter]).sort_values("true_t", kind="stable")
        order = np.arange(len(rows))
        for i in np.flatnonzero(rng.random(len(rows) - 1) < swap):  # neighbours written swapped
            order[i], order[i + 1] = order[i + 1], order[i]
        parts.append(rows.iloc[order])
    return pd.concat(parts, ignore_index=True)[["run", "t", *FAST, "inflow", *COMMANDS]]


def write_export(out: Path, runs: int, seconds: float = 60.0, seed: int = 0, files: int = 2) -> list[Path]:
    """Write the export of `runs` runs as `files` CSVs (tank_0.csv, …) and the spec as tank_spec.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    rows = export(simulate(runs, seconds, seed), seed)
    names = rows["run"].unique()
    paths = []
    for i, chunk in enumerate(np.array_split(names, min(files, len(names)))):
        path = out / f"tank_{i}.csv"
        rows[rows["run"].isin(chunk)].to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    (out / "tank_spec.yaml").write_text(SPEC)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for tank_*.csv and tank_spec.yaml")
    parser.add_argument("--runs", type=int, default=6, help="runs (episodes) to simulate")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run, s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds < 2 * DT:
        raise SystemExit(f"historian.py: error: --runs {args.runs} and --seconds {args.seconds} must be ≥ 1 and ≥ 0.2")
    for path in write_export(Path(args.out), args.runs, args.seconds, args.seed):
        print(f"csv: {path}")
    print(f"spec: {Path(args.out) / 'tank_spec.yaml'}")


if __name__ == "__main__":
    main()
