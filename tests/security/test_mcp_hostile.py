"""An agent's hostile call to the MCP server is refused before it costs memory (twin/mcp, docs/agents.md):
a scenario spec's `context` is capped like the tools' `context` argument, so `simulate` with
`context: 1e12` is a LimitError naming the cap, not an attempt to read a trillion rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from twin.mcp.limits import MAX_CONTEXT, LimitError
from twin.mcp.tools import TwinConfig, TwinTools


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> TwinTools:
    """An untrained tiny ensemble over 2 random-action Pendulum-v1 episodes of 30 steps (seeded)."""
    from data_pipeline.record import record
    from data_pipeline.store import TrajectoryStore
    from data_pipeline.windows import normalization_for
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    tmp = tmp_path_factory.mktemp("mcp-hostile")
    record("Pendulum-v1", 2, str(tmp / "p.zarr"), seed=0, max_episode_steps=30, progress=False).close()
    store = TrajectoryStore.open(str(tmp / "p.zarr"))
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema,
                               normalization_for(store, np.arange(store.num_episodes)))
    model.save(str(tmp / "model.pt"))
    return TwinTools(TwinConfig(model=str(tmp / "model.pt"), store=str(tmp / "p.zarr"), out=tmp / "out"))


SPEC = {"horizon": 3, "samples": 2, "starts": [{"episode": 0, "t": 10}], "interventions": {"factual": {}}}


def test_a_spec_context_beyond_the_cap_is_refused_before_rows_are_read(tools: TwinTools) -> None:
    with pytest.raises(LimitError, match=f"context 1000000000000 is over the server's cap of {MAX_CONTEXT}"):
        tools.simulate({**SPEC, "context": 10**12})
    assert not list(tools.out.glob("[0-9]*-simulate"))  # refused before a call folder was made


def test_a_spec_within_the_caps_still_runs(tools: TwinTools) -> None:
    result = tools.simulate({**SPEC, "context": 4})
    assert Path(result.output).is_dir() and len(result.scenarios) == 1
