"""generate's memory is one block of scenarios, whatever `samples` (issue 13, "Bounded memory"), and a
request whose block cannot fit the budget is refused before any file is written.

Peak memory is traced with tracemalloc: numpy arrays, zarr's encoded chunks and the summary's copies are
Python allocations, so a run that held more than one block would show it (the control case proves it).
"""

from __future__ import annotations

import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import normalization_for, split_episodes
from scenarios import MemoryBudgetError, ScenarioSpec, block_bytes, generate, parse_spec_text, summarize
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

HORIZON = 50


def spec_for(samples: int, block_trajectories: int) -> ScenarioSpec:
    """Two interventions from every 4th row of four episodes: 2 × 4 × 8 = 64 scenarios."""
    starts = ", ".join(f"{{every: 4, episode: {e}}}" for e in range(4))
    return parse_spec_text(textwrap.dedent(f"""
        horizon: {HORIZON}
        samples: {samples}
        context: 4
        block_trajectories: {block_trajectories}
        starts: [{starts}]
        interventions:
          factual: {{}}
          push: {{constant: {{action_0: 0.5}}}}
    """), "memory.yaml")


@pytest.fixture
def model_and_store(tiny_store: Callable[..., object]) -> tuple[EnsembleWorldModel, TrajectoryStore]:
    tiny = tiny_store(episodes=[30] * 4)
    store = TrajectoryStore.open(tiny.path)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    norm = normalization_for(store, split_episodes(store, 0)["train"])
    return EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema, norm).eval(), store


def peak_bytes(model: EnsembleWorldModel, store: TrajectoryStore, spec: ScenarioSpec, out: Path) -> int:
    """Traced peak of generating and summarizing the store."""
    tracemalloc.start()
    try:
        generate(spec, model, store, out, attrs={}, progress=False)
        summarize(out, spec)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_samples(model_and_store: tuple[EnsembleWorldModel, TrajectoryStore],
                                           tmp_path: Path) -> None:
    model, store = model_and_store
    small = peak_bytes(model, store, spec_for(8, 128), tmp_path / "s8.zarr")
    large = peak_bytes(model, store, spec_for(32, 128), tmp_path / "s32.zarr")  # 4x the samples, same blocks
    # Control: the same 4x request in one block holds everything at once; the probe must see that.
    whole = peak_bytes(model, store, spec_for(32, 64 * 32), tmp_path / "whole.zarr")
    assert whole > 2.5 * small, (small, whole)
    assert large < 1.6 * small, f"4x the samples took {large / small:.2f}x the peak memory ({small} -> {large} B)"


def test_request_that_cannot_fit_is_refused_before_writing(
        model_and_store: tuple[EnsembleWorldModel, TrajectoryStore], tmp_path: Path) -> None:
    model, store = model_and_store
    spec = spec_for(32, 128)
    need = block_bytes(spec, store.schema, 64)
    out = tmp_path / "refused.zarr"
    with pytest.raises(MemoryBudgetError) as err:
        generate(spec, model, store, out, attrs={}, progress=False, max_memory=need - 1)
    message = str(err.value)
    assert "memory.yaml" in message and "4 scenario(s) × 32 samples × 50 steps" in message
    assert "--max-memory" in message and "block_trajectories (now 128)" in message
    assert not out.exists()
    generate(spec, model, store, out, attrs={}, progress=False, max_memory=need)  # the estimate itself fits
    assert out.exists()


def test_samples_beyond_a_block_name_samples(model_and_store: tuple[EnsembleWorldModel, TrajectoryStore],
                                             tmp_path: Path) -> None:
    """When one scenario's samples alone exceed the block, the advice is fewer samples or a shorter horizon."""
    model, store = model_and_store
    with pytest.raises(MemoryBudgetError, match=r"lower samples \(now 256\) or horizon \(now 50\)"):
        generate(spec_for(256, 128), model, store, tmp_path / "x.zarr", attrs={}, progress=False, max_memory=1 << 20)
    assert not (tmp_path / "x.zarr").exists()
