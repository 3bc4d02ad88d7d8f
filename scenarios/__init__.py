"""Counterfactual scenarios (docs/scenarios.md): what a world model imagines from recorded starting
points under interventions, written to a scenario store (DESIGN contract 6). generate.py is the CLI.

| module | job |
| --- | --- |
| `spec.py` | the scenario spec: pydantic models read from YAML (starts, summary, split; the whole set) |
| `interventions.py` | what changes in a scenario and how it turns recorded actions / observations into its own |
| `outcomes.py` | outcome checks: the condition grammar, probabilities over samples; `ScenarioSpecError` |
| `starts.py` | starting points resolved against a trajectory store; history files; the rows each start needs |
| `rollout.py` | the sampler loop: interventions applied, futures imagined per block (open or closed loop); its memory |
| `run.py` | `generate`: one scenario set from spec to finished store, on each rank |
| `ranks.py` | where a run executes: one process on a device, or DDP ranks launched by Lightning Fabric |
| `store.py` | the scenario store: layout, creation, block writes, typed reads |
| `summary.py` | the summary table, calibration against the recorded future, their text forms |
| `plots.py` | fan charts per starting point |
| `track.py` | the MLflow run of a generate.py run |

Dependencies point one way: outcomes, interventions ← spec ← starts ← rollout ← run; store ← run,
summary, plots; track uses spec (and tracking/, lazily, as it pulls in Lightning).
"""

from scenarios.interventions import Intervention
from scenarios.outcomes import Condition, Outcome, ScenarioSpecError
from scenarios.plots import plot_fans
from scenarios.rollout import (
    MemoryBudgetError,
    ScenarioRunner,
    block_bytes,
    block_seed,
    check_memory,
    imagine_block,
    memory_budget,
)
from scenarios.run import generate, scenario_index
from scenarios.spec import (
    EveryStart,
    ExplicitStart,
    HistoryStart,
    SampleStart,
    ScenarioSpec,
    SplitSpec,
    load_spec,
    parse_spec,
    parse_spec_text,
)
from scenarios.starts import StartData, StartPoint, load_starts, read_history, resolve_starts
from scenarios.store import (
    LAYOUT_VERSION,
    ScenarioIndex,
    ScenarioWriter,
    block_ranges,
    create_scenario_store,
    finish_scenario_store,
)
from scenarios.summary import format_calibration, format_summary, held_out, summarize
from scenarios.track import run_metrics, track_run

__all__ = [
    "LAYOUT_VERSION", "Condition", "EveryStart", "ExplicitStart", "HistoryStart", "Intervention", "MemoryBudgetError",
    "Outcome", "SampleStart", "ScenarioIndex", "ScenarioRunner", "ScenarioSpec", "ScenarioSpecError", "ScenarioWriter",
    "SplitSpec", "StartData", "StartPoint", "block_bytes", "block_ranges", "block_seed", "check_memory",
    "create_scenario_store", "finish_scenario_store", "format_calibration", "format_summary", "generate", "held_out",
    "imagine_block", "load_spec", "load_starts", "memory_budget", "parse_spec", "parse_spec_text", "plot_fans",
    "read_history", "resolve_starts", "run_metrics", "scenario_index", "summarize", "track_run",
]
