"""One scenario set from spec to finished store: starts, blocks, imagined arrays, the written store.

`generate` is what generate.py calls on every rank; it is also the library entry point (tests and
benchmarks call it with a model and a store already open).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from data_pipeline.store import TrajectoryStore
from data_pipeline.store.lock import acquire_writer_lock, release_writer_lock
from data_pipeline.store.overwrite import check_not_an_input, check_output
from data_pipeline.validate import check_schema_compatible
from scenarios.rollout import ScenarioRunner, check_memory, memory_budget
from scenarios.spec import ScenarioSpec
from scenarios.starts import StartPoint, resolve_starts
from scenarios.store import (
    ScenarioIndex,
    ScenarioWriter,
    block_ranges,
    create_scenario_store,
    finish_scenario_store,
)
from worldmodel.interface import WorldModel


def scenario_index(spec: ScenarioSpec, points: list[StartPoint]) -> ScenarioIndex:
    """The scenarios of a spec, start-major: every start × every intervention."""
    pairs = [(p, iv) for p in points for iv in spec.interventions]
    return ScenarioIndex(
        name=[f"{p.label}/{iv.name}" for p, iv in pairs],
        start=[p.label for p, _ in pairs],
        intervention=[iv.name for _, iv in pairs],
        start_episode=[p.episode for p, _ in pairs],
        start_episode_id=[p.episode_id for p, _ in pairs],
        start_t=[p.t for p, _ in pairs],
        start_time=[p.time_ns for p, _ in pairs],
    )


def generate(
    spec: ScenarioSpec,
    model: WorldModel,
    store: TrajectoryStore,
    out: str | Path,
    *,
    attrs: dict[str, object],
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    overwrite: bool = False,
    progress: bool = True,
    max_memory: int | None = None,
) -> ScenarioIndex:
    """Write the scenario store at `out`; this rank imagines its contiguous share of the blocks.

    Rank 0 creates the store and holds its writer lock to the end; every rank must call this (it
    synchronizes with `barrier`). `out` may not be (or hold, or lie inside) the source store, and
    `overwrite` replaces only a scenario store (data_pipeline/store/overwrite.py). Memory holds one block
    at a time; a block over `max_memory` bytes (default: half the available RAM) is refused before
    anything is written.
    """
    check_not_an_input(out, {"--store": store.path})
    lock = acquire_writer_lock(str(out)) if rank == 0 else None
    try:
        return _write_scenarios(spec, model, store, out, attrs=attrs, rank=rank, world_size=world_size,
                                barrier=barrier, overwrite=overwrite, progress=progress, max_memory=max_memory)
    finally:
        release_writer_lock(lock)


def _write_scenarios(
    spec: ScenarioSpec,
    model: WorldModel,
    store: TrajectoryStore,
    out: str | Path,
    *,
    attrs: dict[str, object],
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    overwrite: bool,
    progress: bool,
    max_memory: int | None,
) -> ScenarioIndex:
    """The body of `generate`, with the writer lock held on rank 0."""
    spec.check(store.schema)
    check_schema_compatible(store.schema, model.schema, use="model", where=f"--store {store.path}")
    points = resolve_starts(spec, store)
    index = scenario_index(spec, points)
    check_memory(spec, store.schema, len(index), memory_budget() if max_memory is None else max_memory)
    blocks = block_ranges(len(index), spec.block_scenarios)
    check_output(out, "scenario", overwrite=overwrite)
    barrier()  # every rank has looked at `out` before rank 0 creates it
    if rank == 0:
        attrs = {"store": str(store.path), "store_fingerprint": store.fingerprint(), **attrs,
                 "obs_std": [float(x) for x in model.normalization.obs_std], "spec": spec.text,
                 "seed": spec.seed, "horizon": spec.horizon, "samples": spec.samples, "context": spec.context,
                 "model_type": model.model_type}
        create_scenario_store(out, index, store.schema, samples=spec.samples, horizon=spec.horizon,
                              block=spec.block_scenarios, overwrite=overwrite, attrs=attrs)
    barrier()
    mine = range(rank * len(blocks) // world_size, (rank + 1) * len(blocks) // world_size)
    runner = ScenarioRunner(spec, model, store, points, spec.uncertainty)
    writer = ScenarioWriter(out)
    total = sum(blocks[k][1] - blocks[k][0] for k in mine)
    with tqdm(total=total, unit="scenario", desc="scenarios", disable=not progress or rank != 0) as bar:
        for k in mine:
            a, b = blocks[k]
            writer.write(a, runner.run(k, a, b))
            bar.update(b - a)
    barrier()
    if rank == 0:
        finish_scenario_store(out)
    barrier()
    return index
