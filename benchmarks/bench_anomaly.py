"""Anomaly detection with the live twin on Pendulum-v1, and the twin's throughput (issue 9).

    python benchmarks/bench_anomaly.py                 # 100 training episodes, 30 test episodes per fault
    python benchmarks/bench_anomaly.py --episodes 20 --train-steps 300 --test-episodes 5 --no-record   # quick

1. Record ~100 random-policy Pendulum-v1 episodes and train the default ensemble (EnsembleConfig()) on
   them with a plain loop over the model's own loss (elites picked on 10% held-out transitions).
2. Calibrate the threshold for a 1% false-alarm rate on held-out normal episodes.
3. Held-out episodes with a fault from a random time on: a sensor bias on one channel, a stuck sensor,
   the actuator losing half its torque (the real Pendulum simulated with the halved torque; the
   recorded action stays the commanded one). Per fault: AUROC of the per-step score (steps after the
   onset are positive), median detection delay and detection rate at the calibrated threshold, and the
   same for a baseline that thresholds the raw change in observations.
4. Throughput: steps/s of the twin + scoring (B=1, default ensemble), and of the whole pipeline
   (JSON messages → reorder → resample → store → twin → score store), on this CPU.

Prints a table and records rows in BENCHMARKS.md (latest first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import record_rows  # noqa: E402  (benchmarks/common.py)

from data_pipeline.ingest import IngestSpec  # noqa: E402
from data_pipeline.record import record  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from data_pipeline.stream import Block, StreamConfig, StreamIngest  # noqa: E402
from data_pipeline.windows import normalization_for  # noqa: E402
from data_pipeline.windows.batch import Batch  # noqa: E402
from twin.anomaly import AnomalyConfig, AnomalyScorer, calibrate, score_episodes  # noqa: E402
from twin.live import LiveMirror, ScoreStore, Twin  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel  # noqa: E402

FAULTS = ("sensor_bias", "stuck_sensor", "actuator_half_torque")
CHANNELS = ["cos_theta", "sin_theta", "theta_dot"]
BIAS_CHANNEL, BIAS = 2, 0.5  # theta_dot + 0.5 rad/s
STUCK_CHANNEL = 2  # theta_dot frozen at its value at the onset
SPEC = {
    "timestamp": {"column": "t", "unit": "s"}, "dt": 0.05,
    "observation": {"channels": [{"column": "cos_theta", "unit": "1", "low": -1.0, "high": 1.0},
                                 {"column": "sin_theta", "unit": "1", "low": -1.0, "high": 1.0},
                                 {"column": "theta_dot", "unit": "rad/s", "low": -8.0, "high": 8.0}]},
    "action": {"channels": [{"column": "torque", "unit": "N*m", "low": -2.0, "high": 2.0}]},
    "reward": {"column": "reward"},
}


# ---------------------------------------------------------------------- data and model
def train_ensemble(store_path: str, steps: int, seed: int = 0, batch: int = 256) -> EnsembleWorldModel:
    """The default ensemble trained on every episode of the store (10% of transitions for elites)."""
    torch.manual_seed(seed)
    with TrajectoryStore.open(store_path) as store:
        n = store.num_episodes
        norm = normalization_for(store, list(range(n)))
        episodes = list(store.iter_episodes())
        schema = store.schema
    obs = np.concatenate([np.stack([e.obs[:-1], e.obs[1:]], 1) for e in episodes]).astype(np.float32)
    act = np.concatenate([np.stack([e.action[:-1], e.action[:-1]], 1) for e in episodes]).astype(np.float32)
    rew = np.concatenate([np.stack([e.reward[:-1], e.reward[:-1]], 1) for e in episodes]).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(obs))
    val, train = order[: len(order) // 10], order[len(order) // 10:]

    def batch_of(idx: np.ndarray) -> Batch:
        b = len(idx)
        return Batch(obs=torch.from_numpy(obs[idx]), action=torch.from_numpy(act[idx]),
                     reward=torch.from_numpy(rew[idx]), terminated=torch.zeros(b, 2, dtype=torch.bool),
                     is_first=torch.tensor([[True, False]]).repeat(b, 1),
                     is_last=torch.zeros(b, 2, dtype=torch.bool))

    model = EnsembleWorldModel(EnsembleConfig(), schema, norm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        model.train()
        loss, _ = model.loss(batch_of(rng.choice(train, batch)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if (step + 1) % max(steps // 5, 1) == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                _, metrics = model.loss(batch_of(val[:4096]))
            model.end_validation(metrics)
            print(f"  train step {step + 1}/{steps}: val nll {float(metrics['nll']):.3f} "
                  f"mse {float(metrics['mse']):.2e}", flush=True)
    return model.eval()


def rollout(seed: int, fault: str | None, onset: int, steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A random-policy Pendulum-v1 episode (obs (T+1, 3), action (T+1, 1), last action NaN) with a fault."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    o, _ = env.reset(seed=seed)
    obs, act = [o], []
    for t in range(steps):
        a = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
        applied = 0.5 * a if fault == "actuator_half_torque" and t >= onset else a
        o, *_ = env.step(applied)
        obs.append(o)
        act.append(a)
    env.close()
    obs = np.asarray(obs, np.float32)
    act = np.concatenate([np.asarray(act, np.float32), np.full((1, 1), np.nan, np.float32)])
    if fault == "sensor_bias":
        obs[onset:, BIAS_CHANNEL] += BIAS
    elif fault == "stuck_sensor":
        obs[onset:, STUCK_CHANNEL] = obs[onset, STUCK_CHANNEL]
    return obs, act


# ---------------------------------------------------------------------- metrics
def change_scores(episodes: list[tuple[np.ndarray, np.ndarray]], scale: np.ndarray, window: int) -> list[np.ndarray]:
    """Baseline: squared raw change of the observations over the training std of the change, windowed."""
    out = []
    for obs, _ in episodes:
        raw = np.r_[np.nan, (0.5 * (np.diff(obs, axis=0) / scale) ** 2).sum(-1)]
        out.append(moving_mean(raw, window))
    return out


def moving_mean(raw: np.ndarray, window: int) -> np.ndarray:
    out = np.full_like(raw, np.nan, dtype=np.float64)
    for t in range(1, len(raw)):
        out[t] = np.nanmean(raw[max(1, t - window + 1): t + 1])
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive step scores above a negative one (ties count half)."""
    scores = np.r_[pos, neg]
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate(scores: list[np.ndarray], onsets: list[int], threshold: float) -> dict[str, float]:
    pos = np.concatenate([s[o:] for s, o in zip(scores, onsets, strict=True)])
    neg = np.concatenate([s[1:o] for s, o in zip(scores, onsets, strict=True)])
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    delays = []
    for s, o in zip(scores, onsets, strict=True):
        hits = np.flatnonzero(np.nan_to_num(s[o:], nan=-np.inf) > threshold)
        delays.append(float(hits[0]) if hits.size else np.inf)
    delays = np.asarray(delays)
    return {"auroc": auroc(pos, neg), "median_delay": float(np.median(delays)),
            "detected": float(np.isfinite(delays).mean()), "pre_onset_far": float((neg > threshold).mean())}


# ---------------------------------------------------------------------- throughput
def twin_throughput(model: EnsembleWorldModel, episodes: list[tuple[np.ndarray, np.ndarray]], threshold: float,
                    window: int) -> float:
    """Steps/s of LiveMirror (twin observe + predict + score) over recorded rows, one piece per episode."""
    mirror = LiveMirror(Twin(model), AnomalyScorer(model, AnomalyConfig(window=window), threshold))
    blocks = [Block(label="", time=np.arange(len(o), dtype=np.int64), obs=o, action=np.nan_to_num(a),
                    reward=np.zeros(len(o), np.float32), starts_piece=True, ends_piece=True) for o, a in episodes]
    mirror.on_blocks(blocks[:1])  # warm-up
    t0 = time.perf_counter()
    mirror.on_blocks(blocks)
    return sum(len(b) for b in blocks) / (time.perf_counter() - t0)


def pipeline_throughput(model: EnsembleWorldModel, episodes: list[tuple[np.ndarray, np.ndarray]], threshold: float,
                        window: int, workdir: str) -> tuple[float, int]:
    """Messages/s through the whole live pipeline in one process, store and score store included."""
    import yaml

    spec_path = os.path.join(workdir, "spec.yaml")
    Path(spec_path).write_text(yaml.safe_dump(SPEC))
    spec = IngestSpec.from_yaml(spec_path)
    messages, t = [], 0
    for obs, act in episodes:  # one long run: the episodes back to back on one clock
        for k in range(len(obs) - 1):
            messages.append(json.dumps({"t": round(t * 0.05, 6), "seq": t, "cos_theta": float(obs[k, 0]),
                                        "sin_theta": float(obs[k, 1]), "theta_dot": float(obs[k, 2]),
                                        "torque": float(act[k, 0]), "reward": 0.0}))
            t += 1
    store = TrajectoryStore.create(os.path.join(workdir, "live.zarr"), spec.schema({}))
    scores = ScoreStore(os.path.join(workdir, "live.anomaly.zarr"), CHANNELS, {})
    ingest = StreamIngest(spec, store, "bench", StreamConfig(reorder_window=0.25, commit_seconds=1.0))
    mirror = LiveMirror(Twin(model), AnomalyScorer(model, AnomalyConfig(window=window), threshold), scores)
    t0 = time.perf_counter()
    committed = 0
    for i, m in enumerate(messages):
        ingest.feed(m, arrival=time.monotonic())
        if i % 50 == 49:  # the run loop polls every 50 ms; at 1,000 messages/s that is every 50 messages
            mirror.on_blocks(ingest.poll())
            if ingest.stats.committed_steps != committed:  # as envs.live: scores follow the data's commits
                committed = ingest.stats.committed_steps
                scores.flush()
    mirror.on_blocks(ingest.finish())
    scores.close()
    elapsed = time.perf_counter() - t0
    committed = ingest.stats.committed_steps
    store.close()
    return len(messages) / elapsed, committed


def realtime_check(model: EnsembleWorldModel, episodes: list[tuple[np.ndarray, np.ndarray]], workdir: str,
                   rate: float = 1000.0, seconds: float = 10.0) -> tuple[float, float, int]:
    """`python -m envs.live` fed JSON lines on stdin at `rate` per second: (achieved input rate, seconds from
    the last line to the process's exit (drain + commit), rows committed). A mirror that keeps up drains
    in about the reorder window."""
    import yaml

    model_path = os.path.join(workdir, "model.pt")
    model.save(model_path)
    spec_path = os.path.join(workdir, "spec.yaml")
    Path(spec_path).write_text(yaml.safe_dump(SPEC))
    n = int(rate * seconds)
    rows = [(o[k], a[k]) for o, a in episodes for k in range(len(o) - 1)]
    lines = [json.dumps({"t": round(i * 0.05, 6), "seq": i, "cos_theta": float(o[0]), "sin_theta": float(o[1]),
                         "theta_dot": float(o[2]), "torque": float(a[0]), "reward": 0.0}) + "\n"
             for i, (o, a) in enumerate(rows[i % len(rows)] for i in range(n))]
    store = os.path.join(workdir, "realtime.zarr")
    err = open(os.path.join(workdir, "realtime.err"), "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "envs.live", "--model", model_path, "--spec", spec_path,
                             "--source", "-", "--store", store, "--no-mlflow", "--window", "5",
                             "--reorder-window", "0.2", "--status-every", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    while "stream: reading" not in Path(err.name).read_text():
        time.sleep(0.1)
    t0 = time.perf_counter()
    for i in range(0, n, 10):  # bursts of 10 lines every 10 ms
        proc.stdin.write("".join(lines[i : i + 10]))
        proc.stdin.flush()
        delay = t0 + (i + 10) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    sent = time.perf_counter()
    proc.stdin.close()
    stdout = proc.stdout.read()
    proc.wait()
    drain = time.perf_counter() - sent
    keys = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    # Status lines come once a second: the steps mirrored between them is the mirror's rate while fed.
    steps = [int(line.split()[1]) for line in Path(err.name).read_text().splitlines() if line.startswith("steps: ")]
    per_second = np.diff(steps)[1:-1] if len(steps) > 3 else np.zeros(1)
    return n / (sent - t0), float(np.median(per_second)), drain, int(keys.get("committed_steps", 0))


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100, help="random-policy training episodes")
    parser.add_argument("--train-steps", type=int, default=3000, help="gradient steps of 256 transitions")
    parser.add_argument("--calibration-episodes", type=int, default=30, help="held-out normal episodes")
    parser.add_argument("--test-episodes", type=int, default=30, help="held-out episodes per fault")
    parser.add_argument("--windows", default="1,5", help="score windows to report (steps)")
    parser.add_argument("--particles", type=int, default=5, help="belief copies pooled (the ensemble's elites)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary directory)")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_anomaly_")
    store_path = os.path.join(workdir, "pendulum.zarr")
    if not os.path.exists(os.path.join(store_path, "zarr.json")):
        record("Pendulum-v1", args.episodes, store_path, seed=0, progress=False).close()
    t0 = time.perf_counter()
    model = train_ensemble(store_path, args.train_steps)
    train_s = time.perf_counter() - t0
    print(f"trained EnsembleConfig() on {args.episodes} episodes in {train_s:.0f} s")

    rng = np.random.default_rng(123)
    normal = [rollout(10_000 + i, None, 0) for i in range(args.calibration_episodes)]
    tests = {f: [] for f in FAULTS}
    onsets = {f: [] for f in FAULTS}
    for f in FAULTS:
        for i in range(args.test_episodes):
            onset = int(rng.integers(40, 161))
            tests[f].append(rollout(20_000 + 1000 * FAULTS.index(f) + i, f, onset))
            onsets[f].append(onset)
    diffs = np.concatenate([np.diff(o, axis=0) for o, _ in normal])
    change_scale = diffs.std(0) + 1e-6

    rows = []
    for window in [int(w) for w in args.windows.split(",")]:
        config = AnomalyConfig(window=window, false_alarm_rate=0.01, particles=args.particles)
        cal = calibrate(model, normal, config)
        base_norm = change_scores(normal, change_scale, window)
        base_thr = float(np.quantile(np.concatenate([s[1:] for s in base_norm]), 0.99, method="higher"))
        for f in FAULTS:
            twin_scores = [s.score for s in score_episodes(model, tests[f], config)]
            ours = evaluate(twin_scores, onsets[f], cal.threshold)
            base = evaluate(change_scores(tests[f], change_scale, window), onsets[f], base_thr)
            rows.append((window, f, ours, base))
            print(f"window {window} {f:>22}: twin AUROC {ours['auroc']:.3f} delay {ours['median_delay']:.0f} "
                  f"detected {ours['detected']:.0%} | change AUROC {base['auroc']:.3f} delay "
                  f"{base['median_delay']:.0f} detected {base['detected']:.0%}", flush=True)

    default_model = model  # the trained default ensemble (EnsembleConfig())
    twin_rate = twin_throughput(default_model, tests["actuator_half_torque"], cal.threshold, 5)
    pipe_rate, committed = pipeline_throughput(default_model, tests["actuator_half_torque"], cal.threshold, 5,
                                               workdir)
    print(f"throughput: twin + score {twin_rate:,.0f} steps/s; whole pipeline {pipe_rate:,.0f} messages/s "
          f"({committed} rows committed)")
    fed, mirrored, drain, rt_committed = realtime_check(default_model, tests["actuator_half_torque"], workdir)
    print(f"real time: python -m envs.live fed {fed:,.0f} lines/s for 10 s mirrored {mirrored:,.0f} steps/s "
          f"(median per status second); exited {drain:.2f} s after the last line ({rt_committed} rows committed)")

    header = f"{'window':>6} {'fault':>22} | {'AUROC':>6} {'delay':>5} {'det.':>5} {'FAR':>6} | " \
             f"{'AUROC':>6} {'delay':>5} {'det.':>5} {'FAR':>6}"
    print("\n" + " " * 31 + "twin (NLL)" + " " * 22 + "raw change baseline")
    print(header)
    for window, f, ours, base in rows:
        print(f"{window:>6} {f:>22} | {ours['auroc']:6.3f} {ours['median_delay']:5.0f} {ours['detected']:5.0%} "
              f"{ours['pre_onset_far']:6.3f} | {base['auroc']:6.3f} {base['median_delay']:5.0f} "
              f"{base['detected']:5.0%} {base['pre_onset_far']:6.3f}")

    if args.no_record:
        return
    load = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    machine = f"{os.cpu_count()}-core CPU {cpu} (load avg {load:.1f}), torch {torch.__version__}, " \
              f"{args.threads} thread(s)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    cmd = (f"`python benchmarks/bench_anomaly.py` ({args.episodes} train episodes, {args.train_steps} steps, "
           f"{args.test_episodes} test episodes per fault, particles {args.particles}, at {commit})")
    today = date.today().isoformat()
    lines: list[list[str]] = []
    for window, f, ours, base in rows:
        target = "AUROC ≥ 0.95, median delay ≤ 10" if f == "actuator_half_torque" else "(information)"
        lines.append([today, f"{f}, window {window}: AUROC / median delay (steps) / detected", machine, cmd,
                      f"{ours['auroc']:.3f} / {ours['median_delay']:.0f} / {ours['detected']:.0%}",
                      f"raw change {base['auroc']:.3f} / {base['median_delay']:.0f} / {base['detected']:.0%}",
                      f"{ours['auroc'] / max(base['auroc'], 1e-9):.2f}", target])
    lines.append([today, "twin throughput, steps/s (B=1, EnsembleConfig())", machine, cmd, f"{twin_rate:,.0f}",
                  "1,000 incoming", f"{twin_rate / 1000:.2f}", "≥ 1,000"])
    lines.append([today, "whole live pipeline, messages/s (stream + store + twin + scores)", machine, cmd,
                  f"{pipe_rate:,.0f}", "1,000 incoming", f"{pipe_rate / 1000:.2f}", "≥ 1,000"])
    lines.append([today, "python -m envs.live fed JSON lines on stdin for 10 s: steps mirrored per second (median "
                  "over status lines)", machine, cmd, f"{mirrored:,.0f} (exit {drain:.1f} s after the last line, "
                  f"{rt_committed:,} rows committed)", f"fed {fed:,.0f} lines/s", f"{mirrored / fed:.2f}", "≥ 1,000"])
    record_rows(ROOT / "BENCHMARKS.md", "bench_anomaly", lines)


if __name__ == "__main__":
    main()
