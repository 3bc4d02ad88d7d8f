"""Data pipeline benchmark: ingest, window sampling and memory, each side by side with its baseline.

    python benchmarks/bench_data.py                  # full: 1,000,000 steps (a few minutes on 2 cores)
    python benchmarks/bench_data.py --steps 100000   # reduced, quick
    python benchmarks/bench_data.py --no-record      # print only; by default it records rows
    python benchmarks/bench_data.py --only ingest    # (a) alone: seconds, not minutes

Each run records rows in BENCHMARKS.md (latest first).

(a) ingest: TrajectoryStore.append in batches of episodes vs one bulk zarr write of the same arrays with
    the same codecs and chunks (target ≥ 0.5×);
(b) window sampling (batch 64, window 64, 32 float32 channels): WindowSampler vs one zarr read per
    window and variable (naive) and vs numpy gathers from arrays already in memory (target ≥ 10× naive);
(c) peak resident memory of a fresh process sampling a store 4× larger than its cache budget
    (target: within the budget plus a fixed overhead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from gymnasium import spaces
from zarr.codecs import Crc32cCodec, ZstdCodec

from data_pipeline.record import FLUSH_BYTES
from data_pipeline.schema import Episode, StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import WINDOW_VARS, ChunkCache, WindowSampler, to_batch

ROOT = Path(__file__).resolve().parent.parent

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

VERSIONS = f"zarr {zarr.__version__}"


def make_episodes(steps: int, episode_steps: int, channels: int, action_dim: int, seed: int) -> list[Episode]:
    """Random episodes of `episode_steps` transitions (episode_steps + 1 rows) adding up to ≥ `steps` rows."""
    rng = np.random.default_rng(seed)
    rows = episode_steps + 1
    n = -(-steps // rows)
    return [
        Episode(
            obs=rng.standard_normal((rows, channels), np.float32),
            action=rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
            reward=rng.standard_normal(rows, np.float32),
            terminated=np.zeros(rows, bool),
            truncated=np.arange(rows) == rows - 1,
            episode_id=f"ep{i:06d}",
            start_time=i * rows * 50_000_000,
        )
        for i in range(n)
    ]


def bench_ingest(path: Path, episodes: list[Episode], schema: StoreSchema, per_append: int,
                 repeats: int = 1) -> dict:
    """Median of `repeats` rounds of: appending `episodes` in batches, then one bulk write of the same
    arrays (same codecs and chunks) into a bare zarr group."""
    runs = [_ingest_once(path, episodes, schema, per_append) for _ in range(repeats)]
    append_s, bulk_s = float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs]))
    n = sum(ep.num_rows for ep in episodes)
    return {"rows": n, "append_s": append_s, "bulk_s": bulk_s, "append_rows_s": n / append_s,
            "bulk_rows_s": n / bulk_s, "ratio": bulk_s / append_s}


def _ingest_once(
    path: Path, episodes: list[Episode], schema: StoreSchema, per_append: int
) -> tuple[float, float]:
    store = TrajectoryStore.create(path, schema, overwrite=True)
    t0 = time.perf_counter()
    for i in range(0, len(episodes), per_append):
        store.append(episodes[i : i + per_append])
    t_append = time.perf_counter() - t0
    rows = {v: store.read_rows(v, 0, store.num_steps) for v in store.step_vars}
    table = store.episodes()
    chunks = {v: store.array(v).chunks for v in store.step_vars}
    store.close()

    bulk_path = path.with_name(path.name + ".bulk")
    shutil.rmtree(bulk_path, ignore_errors=True)
    t0 = time.perf_counter()
    group = zarr.open_group(str(bulk_path), mode="w", zarr_format=3)
    for v, data in rows.items():
        arr = group.create_array(v, shape=data.shape, chunks=chunks[v], dtype=data.dtype,
                                 compressors=[ZstdCodec(level=3), Crc32cCodec()])
        arr[:] = data
    for col in ("id", "start", "length", "source", "seed", "start_time"):  # the episode table
        data = table[col].to_numpy(object if col in ("id", "source") else np.int64)
        dtype = str if col in ("id", "source") else data.dtype
        group.create_array(f"episode_{col}", shape=data.shape, chunks=(4096,), dtype=dtype)[:] = data
    t_bulk = time.perf_counter() - t0
    shutil.rmtree(bulk_path, ignore_errors=True)
    return t_append, t_bulk


def bench_sampling(path: Path, window: int, batch: int, n_batches: int, naive_batches: int,
                   cache_bytes: int, repeats: int) -> dict:
    """ms per batch of the sampler (cache holding the store, and a cache 4× smaller), naive per-window
    reads and numpy gathers from memory; rounds interleave the methods and the median round counts, so
    a noisy shared machine slows all of them alike."""
    store = TrajectoryStore.open(path)
    table = store.episodes()
    starts, lengths = table["start"].to_numpy(np.int64), table["length"].to_numpy(np.int64)
    variables = [v for v in WINDOW_VARS if store.has(v)]
    store_bytes = ChunkCache.chunk_bytes(store) / store.attrs["chunk_steps"] * store.num_steps
    rng = np.random.default_rng(1)

    def random_starts() -> np.ndarray:
        e = rng.integers(0, len(starts), batch)
        return starts[e] + rng.integers(0, lengths[e] - window + 1)

    def make(budget: int) -> tuple[WindowSampler, float]:
        t0 = time.perf_counter()  # construction and the first batch: the initial load
        sampler = WindowSampler(store, starts, lengths, window=window, batch_size=batch, cache_bytes=budget,
                                seed=0)
        first = to_batch(sampler.next_arrays(), store)
        assert first.obs.shape == (batch, window, store.schema.obs_dim)
        return sampler, time.perf_counter() - t0

    full, t_first = make(cache_bytes)
    quarter_bytes = max(int(store_bytes / 4), 4 * ChunkCache.chunk_bytes(store))  # 4 chunks: rotation's floor
    quarter, _ = make(quarter_bytes)
    data = {v: store.read_rows(v, 0, store.num_steps) for v in variables}

    def per_batch(fn: object, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e3 * (time.perf_counter() - t0) / n

    def naive() -> None:  # one zarr read per window and variable, then a numpy stack
        s = random_starts()
        rows = {v: np.stack([store.read_rows(v, int(a), int(a) + window) for a in s]) for v in variables}
        to_batch(rows, store)

    def memory() -> None:  # the whole store already in numpy arrays, one fancy-index gather per variable
        idx = random_starts()[:, None] + np.arange(window)
        to_batch({v: data[v][idx] for v in variables}, store)

    rounds = {"sampler_ms": [], "quarter_ms": [], "naive_ms": [], "memory_ms": []}
    for _ in range(repeats):
        rounds["sampler_ms"].append(per_batch(lambda: to_batch(full.next_arrays(), store), n_batches))
        rounds["quarter_ms"].append(per_batch(lambda: to_batch(quarter.next_arrays(), store), n_batches))
        rounds["naive_ms"].append(per_batch(naive, naive_batches))
        rounds["memory_ms"].append(per_batch(memory, n_batches))
    r = {k: float(np.median(v)) for k, v in rounds.items()}
    return {**r, "first_batch_s": t_first, "vs_naive": r["naive_ms"] / r["sampler_ms"],
            "quarter_vs_naive": r["naive_ms"] / r["quarter_ms"],
            "vs_memory": r["memory_ms"] / r["sampler_ms"],
            "store_mb": store_bytes / 2**20, "quarter_mb": quarter_bytes / 2**20, "fits": not full.rotating}


def child_rss(path: str, cache_bytes: int, window: int, batch: int, n_batches: int) -> None:
    """Run in a fresh process: peak RSS while sampling, relative to the RSS after imports and open."""
    import psutil

    proc = psutil.Process()
    store = TrajectoryStore.open(path)
    table = store.episodes()
    starts, lengths = table["start"].to_numpy(np.int64), table["length"].to_numpy(np.int64)
    base = proc.memory_info().rss
    sampler = WindowSampler(store, starts, lengths, window=window, batch_size=batch, cache_bytes=cache_bytes,
                            seed=0)
    peak = base
    t0 = time.perf_counter()
    for _ in range(n_batches):
        b = to_batch(sampler.next_arrays(), store)
        peak = max(peak, proc.memory_info().rss)
        del b
    elapsed = time.perf_counter() - t0
    cache = sum(buf.nbytes for buf in sampler.cache.buffers.values())
    print(json.dumps({"base": base, "peak": peak, "cache": cache, "chunks_read": sampler.cache.chunks_read,
                      "passes": sampler.passes, "ms_per_batch": 1e3 * elapsed / n_batches,
                      "batch_bytes": sum(a.nbytes for a in sampler.next_arrays().values())}))


def bench_memory(path: Path, store_mb: float, window: int, batch: int, n_batches: int) -> dict:
    store = TrajectoryStore.open(path)
    # A quarter of the store, but at least the 4 chunks rotation needs (binding only for tiny stores).
    cache_bytes = max(int(store_mb * 2**20 / 4), 4 * ChunkCache.chunk_bytes(store))
    cmd = [sys.executable, __file__, "--child-rss", str(path), "--cache-bytes", str(cache_bytes),
           "--window", str(window), "--batch", str(batch), "--sampler-batches", str(n_batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory benchmark subprocess failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 2**20
    return {"budget_mb": cache_bytes / mb, "cache_mb": r["cache"] / mb, "base_mb": r["base"] / mb,
            "peak_delta_mb": (r["peak"] - r["base"]) / mb,
            "overhead_mb": (r["peak"] - r["base"] - cache_bytes) / mb,
            "batch_mb": r["batch_bytes"] / mb, "passes": r["passes"], "ms_per_batch": r["ms_per_batch"]}


def _sampling_rows(path: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """(b) and (c) on the store that (a) wrote, as table rows."""
    sampling = bench_sampling(path, args.window, args.batch, args.sampler_batches, args.naive_batches,
                              int(args.cache_mb * 2**20), args.repeats)
    memory = bench_memory(path, sampling["store_mb"], args.window, args.batch, args.sampler_batches)
    print(f"store: {sampling['store_mb']:.0f} MiB of window variables; machine: {machine(VERSIONS)}")
    return [
        ("(b) ms per batch",
         f"sampler {sampling['sampler_ms']:.2f} (first batch {sampling['first_batch_s']:.1f} s)",
         f"naive {sampling['naive_ms']:.0f}; in-memory {sampling['memory_ms']:.2f}",
         f"{sampling['vs_naive']:.0f}x naive; {sampling['vs_memory']:.2f}x memory", "≥ 10x naive"),
        (f"(b) ms per batch, store {sampling['store_mb'] / sampling['quarter_mb']:.1f}x cache",
         f"sampler {sampling['quarter_ms']:.2f}",
         f"naive {sampling['naive_ms']:.0f}", f"{sampling['quarter_vs_naive']:.0f}x naive", "≥ 10x naive"),
        (f"(c) peak RSS, store {sampling['store_mb'] / memory['budget_mb']:.1f}x cache",
         f"+{memory['peak_delta_mb']:.0f} MiB over base "
         f"({memory['ms_per_batch']:.2f} ms/batch, {memory['passes']} passes)",
         f"budget {memory['budget_mb']:.0f} MiB", f"overhead {memory['overhead_mb']:+.0f} MiB",
         "budget + fixed"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1_000_000, help="rows in the benchmark store")
    p.add_argument("--episode-steps", type=int, default=1000, help="transitions per episode")
    p.add_argument("--channels", type=int, default=32, help="float32 observation channels")
    p.add_argument("--action-dim", type=int, default=4, help="float32 action channels")
    p.add_argument("--append-mb", type=float, default=FLUSH_BYTES / 2**20,
                   help="data per TrajectoryStore.append call (default: what `record` flushes at)")
    p.add_argument("--single-appends", type=int, default=20,
                   help="episodes appended one per call, to show the fixed cost of an append")
    p.add_argument("--window", type=int, default=64, help="rows per window")
    p.add_argument("--batch", type=int, default=64, help="windows per batch")
    p.add_argument("--cache-mb", type=float, default=512.0, help="sampler cache budget for (b)")
    p.add_argument("--sampler-batches", type=int, default=300, help="batches timed for the sampler and numpy")
    p.add_argument("--naive-batches", type=int, default=5, help="batches timed for naive per-window reads")
    p.add_argument("--workdir", type=Path, default=None, help="store location (default: temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md it records rows in")
    p.add_argument("--repeats", type=int, default=3, help="rounds per measurement (best / median counts)")
    p.add_argument("--no-record", action="store_true", help="print only, record nothing")
    p.add_argument("--only", choices=["ingest"], default=None, help="run only part (a), the ingest comparison")
    p.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.cache_bytes, args.window, args.batch, args.sampler_batches)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    path = workdir / "bench.zarr"
    schema = StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (args.channels,), np.float32),
                                     spaces.Box(-1, 1, (args.action_dim,), np.float32), dt=0.05)
    episodes = make_episodes(args.steps, args.episode_steps, args.channels, args.action_dim, seed=0)
    row_bytes = 4 * (args.channels + args.action_dim + 1) + 4 + 8  # obs, action, reward, 4 flags, time
    per_append = max(1, int(args.append_mb * 2**20 // (row_bytes * (args.episode_steps + 1))))
    ingest = bench_ingest(path, episodes, schema, per_append, args.repeats)
    single = bench_ingest(workdir / "single.zarr", episodes[: args.single_appends], schema, 1)
    shutil.rmtree(workdir / "single.zarr", ignore_errors=True)
    del episodes
    n = ingest["rows"]
    table = [
        ("(a) ingest rows/s", f"append {ingest['append_rows_s']:,.0f} ({per_append} episodes per call)",
         f"bulk write {ingest['bulk_rows_s']:,.0f}", f"{ingest['ratio']:.2f}x", "≥ 0.5x"),
        (f"(a) ingest rows/s, 1 episode per call, {args.single_appends} episodes",
         f"append {single['append_rows_s']:,.0f} "
         f"({1e3 * single['append_s'] / args.single_appends:.0f} ms per call)",
         f"bulk write {single['bulk_rows_s']:,.0f}", f"{single['ratio']:.2f}x", "(information)"),
    ]
    if args.only == "ingest":
        print(f"store: {n} rows, {args.channels} obs + {args.action_dim} action channels; "
              f"machine: {machine(VERSIONS)}")
    else:
        table += _sampling_rows(path, args)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in table:
        print(f"{row[0]:<30} {row[1]:<48} {row[2]:<40} {row[3]:<32} {row[4]}")
    if not args.no_record:
        command = "python benchmarks/bench_data.py" + "".join(f" {a}" for a in sys.argv[1:])
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip() or "?"
        date = dt.date.today().isoformat()
        where = machine(VERSIONS)
        record_rows(args.out, "bench_data", [[date, name, where, f"`{command}` ({n:,} rows, at {commit})", *rest]
                                            for name, *rest in table])
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
